"""Byte budgets (DESIGN §4): `a.limited(n)`, `Arena(allocator, limit=n)`,
`Arena(limit=n)` and `rsalloc.set_limit(n)`. A request that would pass a
limit raises MemoryError naming the limit, the live bytes and the request,
and changes nothing."""

from __future__ import annotations

import ctypes
import gc
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _native import LIBC, SQLITE, nothing_changes

import rsalloc
from rsalloc import (
    Allocator,
    Arena,
    ForeignAllocator,
    HeapCorruptionError,
    Int32,
    OwnershipError,
    calloc,
    diagnostic_malloc,
    free,
    malloc,
)


class Pool(Allocator):
    """libc-backed, counting its calls; `_raw_alloc` lets other threads run
    while it works (so racing requests overlap inside an allocation)."""

    def __init__(self, yield_gil: bool = False) -> None:
        super().__init__()
        self.allocs = 0
        self.yield_gil = yield_gil

    def _raw_alloc(self, nbytes: int, alignment: int) -> int:
        self.allocs += 1
        if self.yield_gil:
            time.sleep(0)
        return LIBC.malloc(nbytes) or 0

    def _raw_free(self, address: int) -> None:
        LIBC.free(address)


@pytest.fixture(autouse=True)
def no_collection() -> Iterator[None]:
    """The process-wide counters must move only with this test's blocks: a
    collection freeing an earlier test's garbage (autofree blocks, unreleased
    arenas) in the middle would move them."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
def process_limit() -> Iterator[None]:
    """Leaves no process-wide limit behind, whatever the test did."""
    try:
        yield
    finally:
        rsalloc.set_limit(None)


def test_limited_refuses_with_a_message_naming_limit_live_and_request() -> None:
    lim = malloc.limited(100)
    p = lim.allocate(60)
    with nothing_changes(malloc, lim):
        with pytest.raises(MemoryError) as info:
            lim.allocate(41)
    msg = str(info.value)
    assert "limit of 100 bytes" in msg and "60 bytes live" in msg and "request of 41 bytes" in msg
    q = lim.allocate(40)  # exactly at the limit is fine
    assert lim.stats().live_bytes == 100 and lim.stats().peak_bytes == 100
    free(p)
    free(q)
    s = lim.stats()
    assert (s.live_count, s.live_bytes, s.total_allocs, s.total_frees, s.limit) == (0, 0, 2, 2, 100)


def test_limited_is_an_owner_of_its_own_counted_in_the_allocator_below() -> None:
    lim = malloc.limited(1000)
    before = malloc.stats().live_bytes
    p = lim(Int32, 10)
    assert malloc.stats().live_bytes == before + 40
    assert p.allocator is lim
    with pytest.raises(OwnershipError):
        malloc.free(p)
    q = malloc.allocate(8)
    with pytest.raises(OwnershipError):
        lim.free(q)
    malloc.free(q)
    lim.free(p)
    assert malloc.stats().live_bytes == before
    assert malloc.stats().limit is None and lim.stats().limit == 1000


def test_realloc_counts_the_difference() -> None:
    lim = calloc.limited(100)
    p = lim.allocate(80)
    p = lim.realloc(p, 100)  # 80 -> 100 fits although 80 + 100 would not
    assert p.read_bytes() == bytes(100)
    with nothing_changes(lim):
        with pytest.raises(MemoryError, match="request of 101 bytes"):
            lim.realloc(p, 101)
    assert p.alive
    p = lim.realloc(p, 10)
    other = lim.allocate(90)
    s = lim.stats()
    assert (s.live_bytes, s.peak_bytes) == (100, 100)
    free(p)
    free(other)


def test_nested_limits_all_apply() -> None:
    outer = malloc.limited(64)
    inner = outer.limited(1 << 20)
    p = inner.allocate(64)
    with nothing_changes(outer, inner):
        with pytest.raises(MemoryError, match="limit of 64 bytes"):
            inner.allocate(1)
    assert outer.stats().live_bytes == 64
    free(p)
    assert outer.stats().live_bytes == 0


def test_a_refused_request_never_reaches_a_python_allocator() -> None:
    pool = Pool()
    lim = pool.limited(32)
    p = lim.allocate(32)
    assert pool.allocs == 1
    with pytest.raises(MemoryError):
        lim.allocate(1)
    assert pool.allocs == 1
    lim.free(p)
    assert pool.stats().live_bytes == 0


class Empty(Pool):
    def _raw_alloc(self, nbytes: int, alignment: int) -> int:
        return 0  # out of memory


def test_a_failed_allocation_gives_its_charge_back(process_limit: None) -> None:
    lim = Empty().limited(1000)
    rsalloc.set_limit(rsalloc.stats().live_bytes + 10_000)
    with nothing_changes(lim):
        with pytest.raises(MemoryError, match="out of memory"):
            lim.allocate(100)
    rsalloc.set_limit(None)
    big = malloc.limited(2**63)
    p = big.allocate(8)
    with nothing_changes(big):
        with pytest.raises(MemoryError, match="out of memory"):
            big.realloc(p, 2**62)  # within every limit but the system's
    assert p.alive
    free(p)
    assert lim.stats().peak_bytes == 0


def test_foreign_and_diagnostic_allocators_can_be_limited() -> None:
    sq = ForeignAllocator(SQLITE.sqlite3_malloc64, SQLITE.sqlite3_free)
    lim = sq.limited(16)
    p = lim.allocate(16)
    with pytest.raises(MemoryError):
        lim.allocate(1)
    lim.free(p)

    dlim = diagnostic_malloc.limited(8)
    q = dlim.allocate(8)
    ctypes.memset(q.address + 8, 0, 1)  # one byte past the end
    with pytest.raises(HeapCorruptionError):
        dlim.free(q)
    assert dlim.stats().live_bytes == 0


def test_bad_limits() -> None:
    for bad, exc in ((-1, ValueError), (1.5, TypeError), (True, TypeError), ("1", TypeError), (2**64, OverflowError)):
        with pytest.raises(exc):
            malloc.limited(bad)
        with pytest.raises(exc):
            Arena(limit=bad)
        with pytest.raises(exc):
            rsalloc.set_limit(bad)
    assert rsalloc.stats().limit is None
    np = pytest.importorskip("numpy")
    assert malloc.limited(np.int64(5)).stats().limit == 5  # __index__, as sizes take
    assert Arena(limit=2**64 - 2).stats().limit == 2**64 - 2


def test_bump_arena_limit_counts_bytes_asked_for() -> None:
    with Arena(limit=100) as arena:
        assert arena.stats().limit == 100
        p = arena.allocate(60)
        arena.allocate(1)  # one byte counts one byte, whatever the chunk holds
        with pytest.raises(MemoryError, match="arena's limit of 100 bytes"):
            arena.allocate(40)
        assert (arena.stats().live_bytes, arena.stats().total_allocs) == (61, 2)
        arena.realloc(p, 99)  # counts the difference: 61 - 60 + 99 = 100
        assert arena.stats().live_bytes == 100
        with pytest.raises(MemoryError):
            arena.allocate(1)
    assert Arena().stats().limit is None


def test_wrapping_arena_limit() -> None:
    before = malloc.stats().live_bytes
    arena = Arena(malloc, limit=64)
    p = arena.allocate(40)
    with nothing_changes(malloc):
        with pytest.raises(MemoryError):
            arena.allocate(25)
    p = arena.realloc(p, 64)
    assert arena.stats().live_bytes == 64
    # A detached block leaves the arena's budget (it is malloc's now).
    arena.detach(p)
    arena.allocate(64)
    arena.release_all()
    malloc.free(p)
    assert malloc.stats().live_bytes == before
    with pytest.raises(TypeError, match="limit=N"):
        arena.limited(10)


def test_process_limit(process_limit: None) -> None:
    base = rsalloc.stats().live_bytes
    rsalloc.set_limit(base + 1000)
    assert rsalloc.stats().limit == base + 1000
    p = malloc.allocate(600)
    for make in (lambda: calloc.allocate(401), lambda: Arena().allocate(401), lambda: malloc.limited(10**6).allocate(401)):
        with nothing_changes(malloc, calloc):
            with pytest.raises(MemoryError, match=r"process limit \(rsalloc.set_limit\)"):
                make()
    p = malloc.realloc(p, 1000)  # the difference again
    malloc.free(p)
    rsalloc.set_limit(None)
    assert rsalloc.stats().limit is None
    malloc.free(malloc.allocate(10_000))


def _race(alloc: Allocator | Arena, limit: int, free_through: object) -> tuple[int, int]:
    """8 threads allocate and free random sizes at the limit; returns
    (successes, refusals)."""
    ok = [0] * 8
    refused = [0] * 8
    start = threading.Barrier(8)

    def run(t: int) -> None:
        rng = random.Random(t)
        held = []
        start.wait()
        for _ in range(600):
            try:
                held.append(alloc.allocate(rng.randint(1, limit // 8)))
                ok[t] += 1
            except MemoryError:
                refused[t] += 1
                if held:
                    free(held.pop(rng.randrange(len(held))))
        for p in held:
            free(p)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(ok), sum(refused)


@pytest.mark.parametrize("yield_gil", [False, True])
def test_eight_threads_racing_at_an_allocator_limit(yield_gil: bool) -> None:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        lim = Pool(yield_gil).limited(2000)
        ok, refused = _race(lim, 2000, free)
    finally:
        sys.setswitchinterval(old)
    s = lim.stats()
    assert refused > 0, "the race never reached the limit"
    assert s.peak_bytes <= 2000
    assert (s.live_count, s.live_bytes, s.total_allocs, s.total_frees) == (0, 0, ok, ok)


def test_eight_threads_racing_at_the_process_limit(process_limit: None) -> None:
    base = rsalloc.stats().live_bytes
    lim = Pool(True).limited(10**9)  # counts its own peak, no limit of its own in reach
    rsalloc.set_limit(base + 2000)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        ok, refused = _race(lim, 2000, free)
    finally:
        sys.setswitchinterval(old)
        rsalloc.set_limit(None)
    s = lim.stats()
    assert refused > 0
    assert s.peak_bytes <= 2000
    assert (s.live_bytes, s.total_allocs, s.total_frees) == (0, ok, ok)
    assert rsalloc.stats().live_bytes == base


def test_a_limit_turns_runaway_growth_into_a_memory_error() -> None:
    # In a subprocess: the process limit is what it is for.
    code = (
        "import rsalloc\n"
        "rsalloc.set_limit(1 << 20)\n"
        "held = []\n"
        "try:\n"
        "    while True:\n"
        "        held.append(rsalloc.malloc.allocate(4096))\n"
        "except MemoryError as e:\n"
        "    print(len(held), rsalloc.stats().live_bytes <= 1 << 20, 'live' in str(e))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["256", "True", "True"]


def test_the_stubs_type_check_and_the_sample_runs() -> None:
    pytest.importorskip("mypy")
    pytest.importorskip("typing_extensions")
    sample = Path(__file__).parent / "typing" / "budgets_sample.py"
    env = dict(os.environ, MYPY_CACHE_DIR=os.devnull)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(sample)],
        capture_output=True,
        text=True,
        env=env,
        cwd=sample.parent,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    ns: dict[str, object] = {}
    exec(compile(sample.read_text(), str(sample), "exec"), ns)
    assert ns["budgets"]() == 1024  # type: ignore[operator]
    report = ns["collapsed"]()  # type: ignore[operator]
    assert all(re.fullmatch(r"[^;\n]+(;[^;\n]+)* \d+", line) for line in report.splitlines())
