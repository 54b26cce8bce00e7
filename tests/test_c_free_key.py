"""Blocks libc hands rsalloc with glibc's tcache key still in them (a dead
thread's cache emptied into its arena): live blocks, never taken for blocks C
freed (docs/safety.md, "C frees"). Its own file: the getline test in
test_provenance.py depends on the heap's layout at import (the fast-bin bound
that docs/safety.md names)."""

from __future__ import annotations

import ctypes
import sys
import threading

import pytest

import rsalloc
from conftest import LIBC


def block_cache_on() -> bool:
    return rsalloc._rsalloc._block_cache(False)[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's per-thread cache")
def test_blocks_a_dead_threads_cache_left_with_its_key_are_live_blocks() -> None:
    # A thread's glibc cache is emptied into its arena at the thread's exit,
    # each block keeping the cache's key in its second word; the next
    # thread takes that arena, and malloc hands it those blocks as they
    # are. rsalloc clears the key from every block libc gives it, so such a
    # block is not taken for one C freed at its free (and dropped: a leak).
    malloc_ = LIBC.malloc
    malloc_.restype, malloc_.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    LIBC.free.argtypes = [ctypes.c_void_p]

    def fill_and_exit() -> None:
        blocks = [malloc_(64) for _ in range(7)]  # a tcache bin holds 7
        for b in blocks:
            LIBC.free(b)

    seen: list[tuple[int, int]] = []

    def allocate_and_free() -> None:
        q, fence = malloc_(40), malloc_(40)
        LIBC.free(q)
        key = ctypes.c_size_t.from_address(q + 8).value  # the key glibc wrote
        LIBC.free(fence)
        held = [rsalloc.malloc.allocate(64) for _ in range(50)]
        keyed = sum(ctypes.c_size_t.from_address(p.address + 8).value == key for p in held)
        before = rsalloc._rsalloc._block_cache(False)[1]
        for p in held:
            rsalloc.free(p)
        seen.append((keyed, rsalloc._rsalloc._block_cache(False)[1] - before))

    for _ in range(5):
        for target in (fill_and_exit, allocate_and_free):
            t = threading.Thread(target=target)
            t.start()
            t.join()
    assert all(keyed == 0 for keyed, _ in seen), seen
    if block_cache_on():
        assert all(kept == 50 for _, kept in seen), seen
