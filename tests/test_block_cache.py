"""The cache of freed small libc blocks (docs/decisions.md, core::block_cache):
what it keeps, and that it changes nothing a program can observe except speed.

Sizes that are 8 more than a multiple of 16 are reused under any malloc,
including valgrind's (whose usable size is the size asked for); under
glibc every size is."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys

import pytest

import rsalloc
from rsalloc import UseAfterFreeError, calloc, free, malloc

from rsalloc._rsalloc import _block_cache

libc = ctypes.CDLL(None)
libc.free.argtypes = [ctypes.c_void_p]
libc.realloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.realloc.restype = ctypes.c_void_p

on = pytest.mark.skipif(not _block_cache()[0], reason="block cache off (PYTHONMALLOC=malloc, RSALLOC_BLOCK_CACHE=0 or not glibc)")


def held() -> int:
    return _block_cache()[1]


def reused(n: int) -> tuple[rsalloc.Pointer, rsalloc.Pointer]:
    """A freed pointer of n bytes and the new allocation given its memory."""
    _block_cache(True)
    p = malloc.allocate(n)
    free(p)
    q = malloc.allocate(n)
    assert q.address == p.address  # the same memory, a new allocation
    return p, q


def churn(n: int, count: int) -> None:
    ps = [malloc.allocate(n) for _ in range(count)]
    for p in ps:
        free(p)


@on
def test_a_freed_block_is_kept_and_calloc_gets_it_back_cleared() -> None:
    _block_cache(True)
    p = malloc.allocate(56)
    ctypes.memset(int(p), 0xAB, 56)
    free(p)
    assert _block_cache()[1:] == (1, 64)  # counted at its class's 64 bytes
    z = calloc.allocate(56)
    assert z.address == p.address
    assert held() == 0
    assert z.read_bytes() == bytes(56)
    free(z)


@on
def test_a_stale_pointer_to_a_reused_block_still_raises() -> None:
    p, q = reused(40)
    q[0] = 7
    with pytest.raises(UseAfterFreeError):
        p[0]
    with pytest.raises(UseAfterFreeError):
        p[0] = 1
    assert q[0] == 7
    free(q)


@on
def test_a_reused_block_handed_to_c_is_c_s_to_realloc_and_free() -> None:
    _, q = reused(104)
    addr = q.detach()
    bigger = libc.realloc(addr, 1 << 20)
    assert bigger
    libc.free(bigger)


@on
def test_the_cache_is_bounded_and_never_counts_as_live() -> None:
    before = rsalloc.stats()
    for n in range(1, 4097, 61):
        churn(n, 20)
        blocks, nbytes = _block_cache()[1:]
        assert nbytes <= 1024 * 1024 and blocks <= 64 * 258
    kept = held()
    churn(4200, 5)
    churn(1 << 16, 5)
    assert held() == kept, "blocks over 4 KiB are never kept for reuse"
    after = rsalloc.stats()
    assert after.live_count == before.live_count and after.live_bytes == before.live_bytes


@on
def test_trim_frees_every_kept_block() -> None:
    churn(32, 4)
    assert held() > 0
    assert _block_cache(True)[1:] == (0, 0)
    free(malloc.allocate(32))  # allocation goes on as before
    assert held() == 1


@on
def test_a_block_freed_when_its_last_export_goes_is_kept_too() -> None:
    _block_cache(True)
    p = malloc.allocate(256)
    view = memoryview(p)
    free(p)
    kept = held()
    assert not p.alive
    view.release()  # the real return of the memory happens here
    assert held() == kept + 1
    free(malloc.allocate(256))


@pytest.mark.parametrize(
    "pythonmalloc, override, expect_on",
    [
        ("malloc", None, False),
        ("malloc_debug", None, False),
        ("pymalloc", None, True),
        ("pymalloc", "0", False),
        ("malloc", "1", True),
        ("pymalloc", "yes", True),  # neither 0 nor 1: the PYTHONMALLOC rule
    ],
)
def test_pythonmalloc_malloc_turns_it_off(pythonmalloc: str, override: str | None, expect_on: bool) -> None:
    """Under valgrind or a sanitizer (run with PYTHONMALLOC=malloc), every free
    must reach libc so that C's use of a freed block is reported;
    RSALLOC_BLOCK_CACHE=0/1 decides instead when set."""
    code = (
        "import rsalloc\n"
        "from rsalloc._rsalloc import _block_cache\n"
        "rsalloc.free(rsalloc.malloc.allocate(64))\n"
        "print(*_block_cache())\n"
    )
    env = dict(os.environ, PYTHONMALLOC=pythonmalloc)
    env.pop("RSALLOC_BLOCK_CACHE", None)
    if override is not None:
        env["RSALLOC_BLOCK_CACHE"] = override
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    enabled, blocks, _ = out.stdout.split()
    if not (sys.platform == "linux" and platform.libc_ver()[0] == "glibc"):
        pytest.skip("no block cache on this platform")
    assert enabled == str(expect_on)
    assert int(blocks) == (1 if expect_on else 0)


def test_arena_first_chunks_are_kept_zeroed() -> None:
    # An arena's first chunk goes back to a small cache at release, zeroed as
    # far as its blocks reached, and the next arena takes it: its memory must
    # read as calloc's, whatever the last arena (or C through it) wrote.
    if not rsalloc._rsalloc._block_cache()[0]:
        pytest.skip("the block cache is off here")
    libc = ctypes.CDLL(None)
    addrs = set()
    for round_ in range(20):
        with rsalloc.Arena() as a:
            blocks = [a.allocate(n) for n in (1, 32, 100, 700)]
            for b in blocks:
                assert b.read_bytes() == bytes(b.nbytes), round_
                libc.memset(b, 0xAB, b.nbytes)  # C dirties every byte it was given
            tail = a.allocate(2000)
            assert tail.read_bytes() == bytes(2000)
            tail.fill(0x5A)
            addrs.add(blocks[0].address)
    assert len(addrs) < 20, "a released first chunk is taken by the next arena"
    rsalloc._rsalloc._block_cache(trim=True)
    with rsalloc.Arena() as a:
        assert a.allocate(64).read_bytes() == bytes(64)


@on
def test_memory_the_cache_holds_back_never_causes_a_memory_error() -> None:
    # Four freed 1 MiB blocks are held back (their starts read back dead);
    # when libc then runs out, rsalloc gives them back and tries again
    # instead of raising MemoryError for memory it only keeps.
    code = """
import resource, rsalloc
from rsalloc import malloc, free, Uint8
blocks = [malloc(Uint8, 1000 * 1000) for _ in range(4)]
for b in blocks:
    b[0] = 1  # touched: mapped
for b in blocks:
    free(b)
with open("/proc/self/statm") as f:
    now = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (now + (1 << 20), resource.RLIM_INFINITY))
p = malloc(Uint8, 3 * 1000 * 1000)
p[len(p) - 1] = 7
print("ok", p[len(p) - 1])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok 7", out.stderr


@on
@pytest.mark.parametrize("size", [24, 200, 4000])
def test_a_cache_filled_by_other_sizes_still_keeps_the_latest_frees(size: int) -> None:
    # Earlier work left the cache at its byte bound with blocks of other
    # sizes (issue 18's CI run: a string array freed after it read back
    # foreign from its 15th string on). The latest frees are still kept.
    bound = 1024 * 1024
    for n in (4096, 3900, 3700, 3500, 3300):
        if n != size:
            churn(n, 64)
    # Then up to the last few bytes, from classes of 32 bytes and up.
    for n in range(24, 1000, 16):
        room = bound - _block_cache()[2]
        if n != size and room >= 32:
            churn(n, min(64, room // (n + 8)))
    assert bound - _block_cache()[2] < 64 * 32, "the 64 frees below do not fit"
    arr = calloc(rsalloc.Pointer[rsalloc.Uint8], 64)
    for i in range(64):
        arr[i] = malloc(rsalloc.Uint8, size)
    for i in range(64):
        free(arr[i])
    for i in range(64):
        stale = arr[i]
        assert not stale.alive, i
        with pytest.raises(UseAfterFreeError):
            stale[0]
    free(arr)
    assert _block_cache()[2] <= 1024 * 1024


@on
def test_blocks_freed_again_after_reuse_read_back_dead() -> None:
    # A block the cache handed out again and that is freed anew is the
    # latest free, whatever other frees came between its two lives: the
    # record of lately freed blocks moved it to the front of its set (it
    # stayed where its first life was, and the next frees in its set
    # pushed it out: issue 18's CI run).
    for _ in range(24):
        first = [malloc.allocate(200) for _ in range(64)]
        for p in first:
            free(p)
        churn(48, 600)  # other frees, in every set
        arr = calloc(rsalloc.Pointer[rsalloc.Uint8], 64)
        for i in range(64):
            arr[i] = malloc(rsalloc.Uint8, 200)
        for i in range(64):
            free(arr[i])
        assert [i for i in range(64) if arr[i].alive] == []
        free(arr)
