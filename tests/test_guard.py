"""Guard bytes of the diagnostic allocators (DESIGN §7, issue 4 point 7):
C code writing out of bounds is caught at free, the memory still goes back."""

from __future__ import annotations

import ctypes
import inspect

import pytest

import rsalloc
from rsalloc import diagnostic_calloc, diagnostic_malloc

HERE = __file__


def line() -> int:
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


def counters() -> tuple[dict[str, int], ...]:
    return rsalloc.stats()._asdict(), diagnostic_malloc.stats()._asdict(), diagnostic_calloc.stats()._asdict()


def live(p: rsalloc.Pointer) -> list[rsalloc.LeakRecord]:
    return rsalloc.leaks(rsalloc.tracking.by_address(p) & rsalloc.tracking.by_allocator(p.allocator))


def test_c_memset_past_the_end_raises_heap_corruption_with_the_site(libc) -> None:
    before = diagnostic_malloc.stats()
    p = diagnostic_malloc.allocate(10); where = line()  # noqa: E702
    assert live(p)
    libc.memset(p, 0x41, 13)  # three bytes too many, through C
    with pytest.raises(rsalloc.HeapCorruptionError) as info:
        rsalloc.free(p)
    msg = str(info.value)
    assert "3 after the end of the 10-byte block" in msg
    assert f"Pointer[Uint8] at {p.address:#x} (count 10, diagnostic_malloc)" in msg
    assert f"allocated at {HERE}:{where} in test_c_memset_past_the_end" in msg
    # the memory was returned and the block is dead: nothing leaks, nothing lingers
    after = diagnostic_malloc.stats()
    assert (after.live_count, after.live_bytes) == (before.live_count, before.live_bytes)
    assert after.total_frees == before.total_frees + 1
    assert not p.alive and live(p) == []
    with pytest.raises(rsalloc.DoubleFreeError):
        rsalloc.free(p)


def test_an_underrun_is_caught_too(libc) -> None:
    p = diagnostic_calloc(rsalloc.Int32, 4, alignment=64)
    assert p.address % 64 == 0
    libc.memset(p.address - 2, 0, 2)
    with pytest.raises(rsalloc.HeapCorruptionError, match="2 before the start of the block"):
        diagnostic_calloc.free(p)
    assert not p.alive


def test_intact_blocks_free_cleanly_and_fills_are_visible() -> None:
    p = diagnostic_malloc.allocate(8)
    assert p.read_bytes() == b"\xcd" * 8  # uninitialised memory is recognisable
    q = diagnostic_calloc(rsalloc.Uint8, 8)
    assert q.read_bytes() == bytes(8)
    p.write_bytes(b"12345678")
    rsalloc.free(p)
    rsalloc.free(q)


def test_realloc_keeps_bytes_and_refuses_a_corrupted_block(libc) -> None:
    p = diagnostic_calloc(rsalloc.Uint8, 4)
    p.write_bytes(b"abcd")
    q = diagnostic_calloc.realloc(p, 64)
    assert q.read_bytes()[:4] == b"abcd" and q.read_bytes()[4:] == bytes(60)
    assert not p.alive
    libc.memset(q.address + 64, 0xFF, 1)
    before = counters()
    with pytest.raises(rsalloc.HeapCorruptionError):
        diagnostic_calloc.realloc(q, 128)
    assert counters() == before and q.alive  # nothing changed
    with pytest.raises(rsalloc.HeapCorruptionError):
        rsalloc.free(q)
    assert counters()[2]["live_count"] == before[2]["live_count"] - 1


def test_libc_group_frees_each_others_blocks() -> None:
    assert diagnostic_malloc.native_free is None  # C's free cannot free a guarded block
    p = diagnostic_malloc.allocate(8)
    rsalloc.malloc.free(p)  # the record's own backend returns it
    q = rsalloc.malloc.allocate(8)
    diagnostic_malloc.free(q)
    r = rsalloc.malloc.allocate(4)
    r.write_bytes(b"wxyz")
    s = diagnostic_malloc.realloc(r, 16)  # moved across backends
    assert s.read_bytes(4) == b"wxyz" and s.allocator is diagnostic_malloc
    rsalloc.free(s)


def test_an_exported_block_is_checked_at_free(libc) -> None:
    p = diagnostic_malloc.allocate(4)
    view = memoryview(p)
    libc.memset(p.address + 4, 0, 1)
    with pytest.raises(rsalloc.HeapCorruptionError):
        rsalloc.free(p)
    assert not p.alive
    view.release()  # the memory goes back now, without a second report


def test_autofree_block_is_freed_by_the_collector() -> None:
    before = diagnostic_malloc.stats().live_count
    p = diagnostic_malloc.allocate(4).autofree()
    assert live(p) == []
    del p
    assert diagnostic_malloc.stats().live_count == before


def test_bad_requests_change_nothing() -> None:
    before = counters()
    with pytest.raises(MemoryError):
        diagnostic_malloc.allocate(2**62)
    with pytest.raises(ValueError):
        diagnostic_malloc.allocate(-1)
    with pytest.raises(ValueError):
        diagnostic_malloc.allocate(8, alignment=3)
    assert counters() == before


def test_ctypes_struct_overrun_through_a_c_function(libc) -> None:
    class Pair(ctypes.Structure):
        _fields_ = [("a", ctypes.c_int32), ("b", ctypes.c_int32)]

    p = diagnostic_calloc.allocate(ctypes.sizeof(Pair))
    libc.memset(p, 1, ctypes.sizeof(Pair) * 2)  # C thinks it holds two
    with pytest.raises(rsalloc.HeapCorruptionError, match="8 after the end of the 8-byte block"):
        rsalloc.free(p)
