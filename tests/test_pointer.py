"""Pointer: typed, checked access (DESIGN §2, §3)."""

from __future__ import annotations

import ctypes
import math
import pickle
import sys

import numpy as np
import pytest

from _native import needs_fast_path

import rsalloc
from rsalloc import (
    Bool,
    Float32,
    Float64,
    Int8,
    Int16,
    Int32,
    Int64,
    IntPtr,
    NullPointerError,
    Pointer,
    Size,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    UseAfterFreeError,
    Void,
    calloc,
    free,
    malloc,
    nullptr,
)

from conftest import unchanged

INT_RANGES = [
    (Int8, -(2**7), 2**7 - 1),
    (Int16, -(2**15), 2**15 - 1),
    (Int32, -(2**31), 2**31 - 1),
    (Int64, -(2**63), 2**63 - 1),
    (IntPtr, -(2**63), 2**63 - 1),
    (Uint8, 0, 2**8 - 1),
    (Uint16, 0, 2**16 - 1),
    (Uint32, 0, 2**32 - 1),
    (Uint64, 0, 2**64 - 1),
    (Size, 0, 2**64 - 1),
]


@pytest.fixture
def p32():
    p = calloc(Int32, 4)
    yield p
    if p.alive:
        free(p)


@pytest.mark.parametrize("t,lo,hi", INT_RANGES)
def test_integer_round_trips_and_range_checks(t, lo, hi):
    p = calloc(t, 2)
    p[0], p[1] = lo, hi
    assert (p[0], p[1]) == (lo, hi) and type(p[0]) is int
    with unchanged(p):
        with pytest.raises(OverflowError):
            p[0] = hi + 1
        with pytest.raises(OverflowError):
            p[1] = lo - 1
        with pytest.raises(TypeError):
            p[0] = 1.0
        with pytest.raises(TypeError):
            p[0] = "1"
    p[0] = np.int16(7)  # anything with __index__
    assert p[0] == 7
    free(p)


@pytest.mark.parametrize("t", [Float32, Float64])
def test_floats_accept_ints_and_check_kind(t):
    p = calloc(t, 1)
    p[0] = 1.5
    assert p[0] == 1.5 and type(p[0]) is float
    p[0] = 3  # an int into a float type is fine
    assert p[0] == 3.0
    p.value = math.inf
    assert p.value == math.inf
    with unchanged(p):
        with pytest.raises(TypeError):
            p[0] = "1.0"
        with pytest.raises(TypeError):
            p[0] = None
        with pytest.raises(OverflowError):
            p[0] = 10**400
    free(p)


def test_float32_rejects_finite_values_it_cannot_hold():
    p = calloc(Float32, 1)
    with unchanged(p):
        with pytest.raises(OverflowError):
            p[0] = 1e300
    free(p)


def test_bool():
    p = calloc(Bool, 2)
    p[0] = True
    p[1] = 0
    assert p[:] == [True, False] and type(p[0]) is bool
    with pytest.raises(OverflowError):
        p[0] = 2
    with pytest.raises(TypeError):
        p[0] = 1.0
    free(p)


def test_indexing_bounds_negatives_and_slices(p32):
    p32[:] = [10, 20, 30, 40]
    assert p32[-1] == 40 and p32[-4] == 10
    assert p32[1:3] == [20, 30] and p32[::-1] == [40, 30, 20, 10] and p32[::2] == [10, 30]
    assert list(p32) == [10, 20, 30, 40]
    for bad in (4, -5, 2**70):
        with unchanged(p32):
            with pytest.raises(IndexError):
                p32[bad]
            with pytest.raises(IndexError):
                p32[bad] = 1
    with pytest.raises(TypeError):
        p32["0"]
    p32[1:3] = [0, 0]
    assert p32[:] == [10, 0, 0, 40]
    with unchanged(p32):
        with pytest.raises(ValueError):
            p32[0:2] = [1, 2, 3]
        with pytest.raises(OverflowError):
            p32[0:2] = [1, 2**40]  # converted first: nothing is written


def test_value_and_views(p32):
    p32.value = 5
    assert p32.value == 5 and p32[0] == 5
    q = p32 + 2
    assert q.count == 2 and q.address == p32.address + 8
    q[0] = 9
    assert p32[2] == 9
    assert p32.offset(4).count == 0
    with pytest.raises(IndexError):
        p32 + 5
    with pytest.raises(IndexError):
        p32.offset(-1)
    b = p32.cast(Uint8)
    assert b.count == 16 and b.type is Uint8
    h = (p32 + 1).cast(Int16)
    assert h.count == 6


def test_cast_count_is_nbytes_floor_division():
    p = malloc.allocate(10)
    assert p.cast(Int32).count == 2 and p.cast(Int32).nbytes == 8
    assert p.cast(Int32).cast(Uint8).count == 10  # the extent is kept
    assert p.cast(Void).count is None and p.cast(Void).nbytes == 10
    free(p)


@pytest.mark.parametrize("make_view", [lambda p: p + 1, lambda p: p.cast(Uint8), lambda p: p.offset(0), lambda p: p])
def test_every_view_of_a_freed_block_is_dead(p32, make_view):
    view = make_view(p32)
    free(p32)
    for op in (
        lambda: view[0],
        lambda: view.__setitem__(0, 1),
        lambda: view.value,
        lambda: view.read_bytes(),
        lambda: view.write_bytes(b"x"),
        lambda: view.fill(0),
        lambda: view.cast(Uint8).to_str(),
        lambda: memoryview(view),
        lambda: view._as_parameter_,
        lambda: view + 0,
        lambda: view.cast(Int8),
        lambda: view[:],
        lambda: malloc.clone(view),
    ):
        with pytest.raises(UseAfterFreeError):
            op()
    assert not view.alive and "freed" in repr(view)


def test_pointer_slots():
    target = calloc(Int32, 3)
    target[:] = [1, 2, 3]
    slots = calloc(Pointer[Int32], 2)
    assert rsalloc.sizeof(Pointer[Int32]) == 8 and slots.nbytes == 16
    slots[0] = target
    slots[1] = None
    first = slots[0]
    assert isinstance(first, Pointer) and first.address == target.address
    # Resolved to target's live block (DESIGN §3a): bounded, owned.
    assert first.type is Int32 and first.count == 3 and first.allocator is calloc
    assert first[2] == 3 and first[-1] == 3
    with pytest.raises(IndexError):
        first[3]
    assert slots[1].is_null
    with pytest.raises(NullPointerError):
        slots[1][0]
    slots[1] = target.address + 4
    assert slots[1][0] == 2
    with pytest.raises(TypeError):
        slots[0] = "nope"
    free(target)
    with pytest.raises(UseAfterFreeError):
        slots[0] = target  # storing a dangling pointer
    free(slots)


def test_pointer_type_is_a_cached_native_type():
    assert Pointer[Int32] is Pointer[Int32]
    assert issubclass(Pointer[Int32], rsalloc.NativeType)
    assert Pointer[Pointer[Uint8]] is Pointer[Pointer[Uint8]]
    with pytest.raises(TypeError):
        Pointer[int]


def test_from_address_views_foreign_memory(libc):
    raw = libc.malloc(8)
    v = Pointer.from_address(raw, Uint8, 8)
    v.fill(0x41)
    assert ctypes.string_at(raw, 8) == b"A" * 8
    assert v.allocator is None and v.alive and "foreign" in repr(v)
    unknown = Pointer.from_address(raw, Uint8)
    assert unknown.count is None
    with pytest.raises(TypeError):
        len(unknown)
    with pytest.raises(TypeError):
        unknown[0:2]
    assert unknown[7] == 0x41
    libc.free(raw)
    with pytest.raises(ValueError):
        Pointer.from_address(-1, Uint8)


def test_nullptr():
    assert nullptr.is_null and not nullptr and nullptr.type is Void and nullptr.address == 0
    assert nullptr._as_parameter_.value is None
    with pytest.raises(NullPointerError):
        Pointer.from_address(0, Int32)[0]
    with pytest.raises(ValueError):  # NullPointerError is also a ValueError
        Pointer.from_address(0, Int32, 1).read_bytes()


def test_void_pointers_have_no_elements():
    p = malloc.allocate(4).cast(Void)
    with pytest.raises(TypeError):
        p[0]
    with pytest.raises(TypeError):
        len(p)
    assert p.nbytes == 4
    free(p)


def test_bulk_bytes(p32):
    p32.write_bytes(b"\x01\x00\x00\x00\x02\x00\x00\x00")
    assert p32[:2] == [1, 2]
    p32.write_bytes(bytearray(b"\x03"), offset=8)
    assert p32[2] == 3
    assert p32.read_bytes(4) == b"\x01\x00\x00\x00"
    with unchanged(p32):
        with pytest.raises(IndexError):
            p32.write_bytes(b"x" * 17)
        with pytest.raises(IndexError):
            p32.write_bytes(b"x", offset=16)
        with pytest.raises(IndexError):
            p32.read_bytes(17)
        with pytest.raises(ValueError):
            p32.fill(256)
        with pytest.raises(ValueError):
            p32.write_bytes(b"x", offset=-1)
        with pytest.raises(TypeError):
            p32.write_bytes("text")
    p32.fill(0xFF)
    assert p32[:] == [-1] * 4
    src = malloc(Int32, 2)
    src[:] = [7, 8]
    p32.copy_from(src)
    assert p32[:] == [7, 8, -1, -1]
    p32.copy_from(np.array([1, 2, 3, 4], dtype=np.int32))
    assert p32[:] == [1, 2, 3, 4]
    big = malloc(Int32, 5)
    with unchanged(p32):
        with pytest.raises(IndexError):
            p32.copy_from(big)
    free(src)
    free(big)


def test_overlapping_copy_is_memmove(p32):
    p32[:] = [1, 2, 3, 4]
    (p32 + 1).copy_from(p32.cast(Uint8).read_bytes(12))
    assert p32[:] == [1, 1, 2, 3]
    (p32 + 1).copy_from(p32 + 0 if False else Pointer.from_address(p32.address, Int32, 3))
    assert p32[:] == [1, 1, 1, 2]


def test_repr_names_type_address_count_owner_state(p32):
    r = repr(p32)
    assert "Pointer[Int32]" in r and hex(p32.address) in r and "count=4" in r and "calloc" in r and "live" in r


def test_equality_and_hash(p32):
    assert p32 == p32 + 0 and hash(p32) == hash(p32.cast(Uint8))
    assert p32 != p32 + 1 and p32 != p32.address
    assert int(p32) == p32.address


def test_pointers_do_not_pickle(p32):
    with pytest.raises(TypeError):
        pickle.dumps(p32)
    with pytest.raises(TypeError):
        pickle.dumps(nullptr)


def test_element_types_are_not_instantiated():
    with pytest.raises(TypeError):
        Int32()


def test_sizeof_alignof():
    for t, size in [(Int8, 1), (Int16, 2), (Int32, 4), (Int64, 8), (Uint8, 1), (Uint16, 2), (Uint32, 4),
                    (Uint64, 8), (Float32, 4), (Float64, 8), (Bool, 1), (IntPtr, 8), (Size, 8), (Pointer[Int8], 8)]:
        assert rsalloc.sizeof(t) == size == rsalloc.alignof(t)
    assert rsalloc.Float is Float32 and rsalloc.Double is Float64
    with pytest.raises(TypeError):
        rsalloc.sizeof(Void)
    with pytest.raises(TypeError):
        rsalloc.sizeof(int)


@pytest.mark.parametrize(
    "ct,kind",
    [(ctypes.c_int8, Int8), (ctypes.c_int16, Int16), (ctypes.c_int32, Int32), (ctypes.c_int64, Int64),
     (ctypes.c_uint8, Uint8), (ctypes.c_uint16, Uint16), (ctypes.c_uint32, Uint32), (ctypes.c_uint64, Uint64),
     (ctypes.c_float, Float32), (ctypes.c_double, Float64), (ctypes.c_bool, Bool), (ctypes.c_size_t, Uint64),
     (ctypes.c_long, Int64), (ctypes.c_ssize_t, Int64)],
)
def test_ctypes_scalar_types_are_element_types(ct, kind):
    assert rsalloc.sizeof(ct) == ctypes.sizeof(ct) == rsalloc.sizeof(kind)
    assert rsalloc.alignof(ct) == ctypes.alignment(ct)
    p = calloc(ct, 3)
    assert p.type is ct and p.count == 3
    p[1] = 1
    assert p[1] == 1 and p.cast(kind)[1] == 1
    assert memoryview(p).itemsize == ctypes.sizeof(ct)
    free(p)


def test_ctypes_pointer_types_are_slots():
    p = calloc(ctypes.c_void_p, 1)
    target = malloc(Int32, 1)
    p[0] = target
    assert p[0].address == target.address and p[0].type is Void
    q = calloc(ctypes.POINTER(ctypes.c_int32), 1)
    q[0] = target
    target[0] = 42
    assert q[0][0] == 42
    for x in (p, q, target):
        free(x)


class FreesOnConversion:
    """A value whose conversion runs Python code that frees the block being written."""

    def __init__(self, victim: Pointer, as_float: bool = False) -> None:
        self.victim = victim

    def __index__(self) -> int:
        free(self.victim)
        return 1

    def __float__(self) -> float:
        free(self.victim)
        return 1.0


@pytest.mark.parametrize("t", [Int64, Float64])
def test_a_conversion_that_frees_the_block_cannot_write_into_freed_memory(t):
    for write in (lambda p, v: p.__setitem__(0, v), lambda p, v: setattr(p, "value", v),
                  lambda p, v: p.__setitem__(slice(0, 2), [v, v])):
        p = malloc(t, 4)
        before = rsalloc.stats().live_count
        with pytest.raises(UseAfterFreeError):
            write(p, FreesOnConversion(p))
        assert not p.alive and rsalloc.stats().live_count == before - 1


@needs_fast_path("untracked_pointers")
def test_a_pointer_object_is_48_bytes_whoever_owns_it():
    # Issue 6 bounds the bytes each live allocation costs: the object is a
    # header, the address, the type, the extent and a one-word owner.
    with rsalloc.Arena() as a:
        owned = [rsalloc.malloc.allocate(16), a.allocate(16), rsalloc.Pointer.from_address(0x1000, rsalloc.Uint8, 4)]
        assert [sys.getsizeof(p) for p in owned] == [48, 48, 48]
    rsalloc.free(owned[0])
