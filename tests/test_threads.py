"""Real threads: counters stay exact and a block dies exactly once (DESIGN §6)."""

from __future__ import annotations

import sys
import threading
import time

from _native import LIBC

import rsalloc
from rsalloc import DoubleFreeError, Int64, UseAfterFreeError, calloc, free, malloc


def run_threads(n, target):
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)


def test_counters_are_exact_after_threads_hammer_alloc_free():
    before = rsalloc.stats()
    errors = []

    def work(i):
        try:
            held = []
            for k in range(2000):
                alloc = malloc if k % 2 else calloc
                p = alloc(Int64, k % 17)
                if k % 3:
                    held.append(p)
                else:
                    free(p)
            for p in held:
                free(p)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    run_threads(8, work)
    assert errors == []
    after = rsalloc.stats()
    assert after.live_count == before.live_count and after.live_bytes == before.live_bytes
    assert after.total_allocs - before.total_allocs == 8 * 2000
    assert after.total_frees - before.total_frees == 8 * 2000


def test_racing_frees_free_exactly_once_and_reads_never_see_garbage():
    for _ in range(50):
        p = malloc(Int64, 64)
        p[:] = [7] * 64
        outcomes = []
        lock = threading.Lock()

        def race(i):
            try:
                if i % 2:
                    free(p)
                    result = "freed"
                else:
                    result = p[i]  # either the value or UseAfterFreeError
            except (DoubleFreeError, UseAfterFreeError) as e:
                result = type(e).__name__
            with lock:
                outcomes.append(result)

        run_threads(6, race)
        assert outcomes.count("freed") == 1
        assert set(outcomes) <= {"freed", 7, "DoubleFreeError", "UseAfterFreeError"}
        assert not p.alive


class _SleepyPool(rsalloc.Allocator):
    """A Python-defined allocator that lets go of the GIL inside every call,
    so other threads run rsalloc while this one is in the middle of an
    allocation or a free (src/core/serial.rs: what the GIL must cover)."""

    def _raw_alloc(self, nbytes: int, alignment: int) -> int:
        time.sleep(0)  # releases the GIL
        return LIBC.malloc(nbytes) or 0

    def _raw_free(self, address: int) -> None:
        time.sleep(0)
        LIBC.free(address)


def test_threads_interleaving_inside_python_allocator_callbacks_keep_exact_counts():
    pool = _SleepyPool()
    before = rsalloc.stats()
    errors = []

    def work(i):
        try:
            for k in range(300):
                if i % 2:
                    p = pool.allocate(8 + k % 5)
                    p[0] = 1
                    free(p)
                    q = pool.allocate(4).autofree()  # freed by the last reference, in a callback
                    del q
                else:
                    p = malloc.allocate(16)
                    p[0] = 2
                    free(p)
                    with rsalloc.Arena() as a:
                        a.allocate(8)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    run_threads(4, work)
    assert not errors
    after = rsalloc.stats()
    assert after.live_count == before.live_count
    assert after.live_bytes == before.live_bytes
    assert after.total_allocs - before.total_allocs == 4 * 300 * 2
    s = pool.stats()
    assert (s.live_count, s.total_allocs, s.total_frees) == (0, 2 * 300 * 2, 2 * 300 * 2)
