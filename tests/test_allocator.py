"""malloc, calloc and the rules every allocator follows (DESIGN §4)."""

from __future__ import annotations

import ctypes
import gc

import pytest

import rsalloc
from rsalloc import (
    DoubleFreeError,
    Float64,
    Int32,
    Int64,
    NullPointerError,
    OwnershipError,
    Pointer,
    Uint8,
    UseAfterFreeError,
    calloc,
    free,
    malloc,
    nullptr,
)

from conftest import unchanged


def test_call_defaults_to_one_uint8():
    p = malloc()
    assert p.type is Uint8 and p.count == 1 and p.nbytes == 1
    malloc.free(p)


def test_typed_allocation_and_counters():
    before = rsalloc.stats()
    mbefore = malloc.stats()
    p = malloc(Int32, 10)
    assert (p.type, p.count, len(p), p.nbytes) == (Int32, 10, 10, 40)
    assert p.allocator is malloc and p.alive and not p.is_null and bool(p)
    s = rsalloc.stats()
    assert s.live_count == before.live_count + 1
    assert s.live_bytes == before.live_bytes + 40
    assert s.total_allocs == before.total_allocs + 1
    assert malloc.stats().live_bytes == mbefore.live_bytes + 40
    malloc.free(p)
    s = rsalloc.stats()
    assert s.live_count == before.live_count and s.live_bytes == before.live_bytes
    assert s.total_frees == before.total_frees + 1
    assert not p.alive


def test_peak_bytes_tracks_the_highest_live_total():
    base = malloc.stats().live_bytes
    p = malloc.allocate(1 << 20)
    assert malloc.stats().peak_bytes >= base + (1 << 20)
    malloc.free(p)
    assert malloc.stats().peak_bytes >= base + (1 << 20)


def test_calloc_zeroes_and_malloc_accepts_its_pointers():
    p = calloc(Int64, 1000)
    assert p.read_bytes() == bytes(8000)
    malloc.free(p)  # one owner group: libc's heap
    q = malloc(Int32, 4)
    calloc.free(q)


@pytest.mark.parametrize("alignment", [1, 2, 8, 16, 64, 256, 4096, 1 << 16])
def test_alignment_is_honoured(alignment):
    for alloc in (malloc, calloc):
        p = alloc.allocate(100, alignment=alignment)
        assert p.address % alignment == 0
        p.fill(0xAB)
        assert p.read_bytes() == b"\xab" * 100
        alloc.free(p)
        q = alloc(Float64, 3, alignment=alignment)
        assert q.address % alignment == 0
        alloc.free(q)


def test_zero_elements_is_a_valid_empty_pointer():
    p = malloc(Int32, 0)
    assert p.count == 0 and len(p) == 0 and p.nbytes == 0 and not p.is_null
    assert p[:] == [] and p.read_bytes() == b""
    with pytest.raises(IndexError):
        p[0]
    assert bytes(memoryview(p)) == b""
    malloc.free(p)


@pytest.mark.parametrize("bad", [-1, -(2**70)])
def test_negative_sizes_are_value_errors(bad):
    with unchanged():
        with pytest.raises((ValueError, OverflowError)) as e:
            malloc.allocate(bad)
        if bad == -1:
            assert e.type is ValueError
        with pytest.raises((ValueError, OverflowError)):
            calloc(Int32, bad)


@pytest.mark.parametrize("count", [2**62, 2**63, 2**64, 2**100])
def test_overflowing_sizes_are_overflow_errors(count):
    with unchanged():
        with pytest.raises(OverflowError):
            malloc(Int64, count)


def test_unsatisfiable_sizes_are_memory_errors():
    with unchanged():
        with pytest.raises(MemoryError):
            malloc.allocate(2**62)
        with pytest.raises(MemoryError):
            calloc.allocate(2**62)
        with pytest.raises(MemoryError):
            malloc.allocate(2**62, alignment=4096)


@pytest.mark.parametrize("alignment", [0, 3, 6, 12, -8, 1000])
def test_bad_alignment_is_a_value_error(alignment):
    with unchanged():
        with pytest.raises(ValueError):
            malloc.allocate(8, alignment=alignment)


@pytest.mark.parametrize("arg", [1.5, "8", None, b"x"])
def test_non_integer_sizes_are_type_errors(arg):
    with unchanged():
        with pytest.raises(TypeError):
            malloc.allocate(arg)
        with pytest.raises(TypeError):
            malloc(Int32, arg)


@pytest.mark.parametrize("t", [int, "Int32", 4, object, rsalloc.NativeType, rsalloc.Void])
def test_bad_element_types_are_type_errors(t):
    with unchanged():
        with pytest.raises(TypeError):
            malloc(t, 1)


def test_double_free_is_detected_and_changes_nothing():
    p = malloc(Int32, 2)
    malloc.free(p)
    with unchanged():
        with pytest.raises(DoubleFreeError) as e:
            malloc.free(p)
        with pytest.raises(DoubleFreeError):
            free(p)
    assert "Int32" in str(e.value) and hex(p.address) in str(e.value)
    assert isinstance(e.value, UseAfterFreeError)


def test_free_of_interior_pointer_is_an_ownership_error():
    p = malloc(Int32, 4)
    p[:] = [1, 2, 3, 4]
    with unchanged(p):
        with pytest.raises(OwnershipError):
            malloc.free(p + 1)
        with pytest.raises(OwnershipError):
            free(p + 2)
    assert p.alive
    free(p.cast(Uint8))  # same start, another type: fine, as in C


def test_free_of_foreign_pointer_is_an_ownership_error(libc):
    raw = libc.malloc(16)
    view = Pointer.from_address(raw, Uint8, 16)
    with unchanged():
        with pytest.raises(OwnershipError):
            malloc.free(view)
        with pytest.raises(OwnershipError):
            free(view)
    libc.free(raw)


def test_free_of_detached_pointer_is_an_ownership_error():
    p = malloc(Int32, 1)
    addr = p.detach()
    with unchanged():
        with pytest.raises(OwnershipError):
            malloc.free(p)
    ctypes.CDLL(None).free(ctypes.c_void_p(addr))


def test_free_of_nullptr_is_a_no_op():
    with unchanged():
        malloc.free(nullptr)
        calloc.free(nullptr)
        free(nullptr)
        free(Pointer.from_address(0, Int32))


def test_realloc_grows_keeps_bytes_and_kills_old_views():
    p = calloc(Int32, 4)
    p[:] = [1, 2, 3, 4]
    views = (p, p + 2, p.cast(Uint8))
    q = calloc.realloc(p, 8)
    assert q.count == 8 and q[:] == [1, 2, 3, 4, 0, 0, 0, 0]  # calloc zeroes the tail
    for dead in views:
        with pytest.raises(UseAfterFreeError):
            dead[0]
    assert "reallocated" in repr(p)
    r = malloc.realloc(q, 2)
    assert r[:] == [1, 2]
    free(r)


def test_realloc_failure_keeps_the_old_block():
    p = malloc(Int32, 4)
    p[:] = [5, 6, 7, 8]
    with unchanged(p):
        with pytest.raises(MemoryError):
            malloc.realloc(p, 2**60)
        with pytest.raises(OverflowError):
            malloc.realloc(p, 2**63)
        with pytest.raises(ValueError):
            malloc.realloc(p, -1)
    assert p.alive and p[:] == [5, 6, 7, 8]
    free(p)


def test_realloc_of_an_exported_block_is_a_buffer_error():
    p = malloc(Int32, 4)
    m = memoryview(p)
    with unchanged(p):
        with pytest.raises(BufferError):
            malloc.realloc(p, 8)
    m.release()
    q = malloc.realloc(p, 8)
    free(q)


def test_realloc_keeps_alignment():
    p = malloc.allocate(10, alignment=4096)
    p.write_bytes(b"0123456789")
    q = malloc.realloc(p, 100000)
    assert q.address % 4096 == 0 and q.read_bytes(10) == b"0123456789"
    free(q)


def test_adopt_takes_a_strdup_result(libc):
    raw = libc.strdup(b"hello from C")
    p = malloc.adopt(raw, Uint8, 13)
    assert p.to_str() == "hello from C" and p.allocator is malloc
    before = malloc.stats().live_count
    malloc.free(p)  # goes to libc free: the same heap
    assert malloc.stats().live_count == before - 1
    with pytest.raises(NullPointerError):
        malloc.adopt(0, Uint8, 1)


def test_clone_copies_into_a_new_owner():
    p = malloc(Int32, 3)
    p[:] = [7, 8, 9]
    q = calloc.clone(p)
    assert q.allocator is calloc and q.type is Int32 and q[:] == [7, 8, 9]
    assert q.address != p.address
    free(p)
    assert q[:] == [7, 8, 9]
    free(q)
    with pytest.raises(UseAfterFreeError):
        malloc.clone(p)


def test_native_free_frees_a_detached_block():
    assert malloc.native_free == calloc.native_free
    free_fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(malloc.native_free)
    p = malloc.allocate(64)
    live = malloc.stats().live_count
    addr = p.detach()
    assert malloc.stats().live_count == live - 1
    assert p.allocator is None and "detached" in repr(p)
    p.fill(1)  # still usable: the memory is valid until C frees it
    free_fn(addr)


def test_autofree_frees_with_the_last_reference():
    before = malloc.stats().live_count
    p = malloc(Int32, 4).autofree()
    view = p + 1
    m = memoryview(p)
    del p
    gc.collect()
    assert malloc.stats().live_count == before + 1
    del view
    assert malloc.stats().live_count == before + 1  # the export still holds it
    m[0] = 1
    m.release()
    del m
    gc.collect()
    assert malloc.stats().live_count == before


def test_allocators_do_not_pickle():
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(malloc)
