"""rsalloc blocks in tracemalloc (DESIGN §7): while it traces, every block is
tracked in the domain `rsalloc.TRACEMALLOC_DOMAIN` with the Python line that
allocated it, and untracked when freed, released, reallocated or detached.
Also what memray, which hooks malloc itself, reports for rsalloc blocks."""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _native import LIBC, SQLITE

import rsalloc
from rsalloc import (
    Allocator,
    Arena,
    ForeignAllocator,
    adaptive_malloc,
    calloc,
    diagnostic_calloc,
    free,
    malloc,
)
from rsalloc import _rsalloc as ext  # type: ignore[attr-defined]

DOMAIN = [tracemalloc.DomainFilter(True, rsalloc.TRACEMALLOC_DOMAIN)]


class Pool(Allocator):
    def _raw_alloc(self, nbytes: int, alignment: int) -> int:
        return LIBC.malloc(nbytes) or 0

    def _raw_free(self, address: int) -> None:
        LIBC.free(address)


@pytest.fixture
def tracing() -> Iterator[None]:
    tracemalloc.start(4)
    try:
        yield
    finally:
        tracemalloc.stop()


def traces() -> dict[int, tuple[int, str, int]]:
    """size -> (count, file, line) of the rsalloc domain's traces."""
    snap = tracemalloc.take_snapshot().filter_traces(DOMAIN)
    out = {}
    for stat in snap.statistics("lineno"):
        frame = stat.traceback[0]
        out[stat.size // stat.count] = (stat.count, frame.filename, frame.lineno)
    return out


def made_here(make: Callable[[], object]) -> tuple[object, int]:
    """Calls make() and returns its result with the line of make's body."""
    _, line = inspect.getsourcelines(make)
    return make(), line


def test_the_domain_is_a_documented_constant() -> None:
    assert rsalloc.TRACEMALLOC_DOMAIN == ext._tracemalloc_domain() == 7725
    assert rsalloc.TRACEMALLOC_DOMAIN != 389047  # numpy's
    assert "TRACEMALLOC_DOMAIN" in rsalloc.__all__


def test_the_flag_follows_start_and_stop() -> None:
    assert not tracemalloc.is_tracing() and not ext._tracemalloc_on()
    tracemalloc.start()
    assert ext._tracemalloc_on()
    tracemalloc.stop()
    assert not ext._tracemalloc_on()


@pytest.mark.parametrize(
    "alloc",
    [
        malloc,
        calloc,
        adaptive_malloc,
        diagnostic_calloc,
        Pool(),
        ForeignAllocator(SQLITE.sqlite3_malloc64, SQLITE.sqlite3_free),
        malloc.limited(1 << 20),
    ],
    ids=lambda a: a.name,
)
def test_every_allocator_is_tracked_at_the_allocating_line(tracing: None, alloc: Allocator) -> None:
    p, line = made_here(lambda: alloc.allocate(10_007))
    assert traces()[10_007] == (1, __file__, line)
    q = alloc.realloc(p, 20_011)
    t = traces()
    assert 10_007 not in t and t[20_011][0] == 1
    free(q)
    assert 20_011 not in traces()


def test_wrapping_arena_blocks_are_tracked_until_release(tracing: None) -> None:
    arena = Arena(malloc)
    _, line = made_here(lambda: arena.allocate(30_011))
    kept = arena.allocate(30_013)
    assert traces()[30_011] == (1, __file__, line)
    arena.detach(kept)
    assert 30_013 in traces()  # malloc's now: still rsalloc's
    arena.release_all()
    assert 30_011 not in traces()
    free(kept)
    assert 30_013 not in traces()


def test_bump_arena_chunks_are_tracked_until_release(tracing: None) -> None:
    arena = Arena()
    _, line = made_here(lambda: arena.allocate(100_003))  # a chunk of its own
    assert traces()[100_003] == (1, __file__, line)
    arena.allocate(8)  # the first shared chunk
    assert sum(c for c, _, _ in traces().values()) == 2
    arena.release_all()
    assert traces() == {}


def test_detach_leaves_tracemalloc(tracing: None) -> None:
    p = malloc.allocate(40_009)
    addr = p.detach()
    assert 40_009 not in traces()
    LIBC.free(addr)


def test_blocks_across_start_and_stop_are_harmless() -> None:
    before = malloc.allocate(50_021)
    tracemalloc.start()
    try:
        during = malloc.allocate(50_023)
        free(before)  # untracking a block tracemalloc never saw does nothing
        assert set(traces()) == {50_023}
    finally:
        tracemalloc.stop()
    free(during)  # not tracing: not reported at all
    tracemalloc.start()
    try:
        assert traces() == {}
    finally:
        tracemalloc.stop()


def test_nothing_is_tracked_in_rsallocs_domain_while_not_tracing() -> None:
    p = malloc.allocate(60_013)
    tracemalloc.start()
    try:
        assert traces() == {}
    finally:
        tracemalloc.stop()
    free(p)


def test_tracing_from_interpreter_start() -> None:
    # PYTHONTRACEMALLOC starts tracing before rsalloc loads: the flag is set at import.
    code = textwrap.dedent(
        """
        import tracemalloc, rsalloc
        p = rsalloc.malloc.allocate(70_001)
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.DomainFilter(True, rsalloc.TRACEMALLOC_DOMAIN)])
        print([(t.size, t.traceback[0].lineno) for t in snap.traces])
        """
    )
    env = {"PYTHONTRACEMALLOC": "1", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[(70001, 3)]"


@pytest.mark.skipif(importlib.util.find_spec("memray") is None, reason="memray is not installed")
def test_memray_sees_rsalloc_blocks_as_libc_allocations(tmp_path: Path) -> None:
    # memray interposes libc's allocator itself: rsalloc's blocks show up as
    # the malloc/calloc calls they are, with the allocating Python function,
    # and a freed block is not reported leaked. (Sizes past the cache of
    # small freed blocks, which memray would see as still allocated.)
    code = textwrap.dedent(
        """
        import sys, memray, rsalloc
        def make_kept():
            return rsalloc.malloc.allocate(1_234_567)
        def make_freed():
            rsalloc.free(rsalloc.calloc.allocate(2_345_678))
        with memray.Tracker(sys.argv[1]):
            kept = make_kept()
            make_freed()
        reader = memray.FileReader(sys.argv[1])
        def seen(records):
            return sorted((r.size, memray.AllocatorType(r.allocator).name, r.stack_trace()[0][0])
                          for r in records if r.size in (1_234_567, 2_345_678))
        print(seen(reader.get_allocation_records()))
        # Leaks are grouped by stack, sizes summed: the bookkeeping rsalloc
        # allocates with the kept block (its index entry) shares its stack.
        print(sorted((memray.AllocatorType(r.allocator).name, r.stack_trace()[0][0])
                     for r in reader.get_leaked_allocation_records() if r.size >= 1_234_567))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "trace.bin")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    every, leaked = out.stdout.strip().splitlines()
    assert every == "[(1234567, 'MALLOC', 'make_kept'), (2345678, 'CALLOC', 'make_freed')]"
    assert leaked == "[('MALLOC', 'make_kept')]"
