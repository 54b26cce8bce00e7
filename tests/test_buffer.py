"""Buffer protocol: memoryview, numpy and ctypes views pin the memory (DESIGN §3, §6)."""

from __future__ import annotations

import ctypes
import gc

import numpy as np
import pytest

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
    Pointer,
    Size,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    UseAfterFreeError,
    calloc,
    free,
    malloc,
)

DTYPES = [
    (Int8, np.int8), (Int16, np.int16), (Int32, np.int32), (Int64, np.int64), (Uint8, np.uint8),
    (Uint16, np.uint16), (Uint32, np.uint32), (Uint64, np.uint64), (Float32, np.float32),
    (Float64, np.float64), (Bool, np.bool_), (IntPtr, np.intp), (Size, np.uintp), (Pointer[Int32], np.uintp),
]


@pytest.mark.parametrize("t,dtype", DTYPES)
def test_numpy_is_zero_copy_with_the_right_dtype(t, dtype):
    p = calloc(t, 5)
    a = np.asarray(p)
    assert a.dtype == dtype and a.shape == (5,) and a.flags.writeable
    assert a.ctypes.data == p.address
    b = np.frombuffer(p, dtype=dtype)
    assert b.ctypes.data == p.address
    a[2] = 1
    assert p[2] in (1, True) or p[2].address == 1
    del a, b
    free(p)


@pytest.mark.parametrize("t,fmt", [(Int32, "i"), (Float64, "d"), (Uint16, "H"), (Bool, "?")])
def test_memoryview_format_and_shape(t, fmt):
    p = calloc(t, 3)
    m = memoryview(p)
    assert m.format == fmt and m.shape == (3,) and m.itemsize == rsalloc.sizeof(t)
    assert not m.readonly and m.nbytes == p.nbytes and m.contiguous
    m.release()
    free(p)


def test_free_defers_the_return_of_memory_until_the_last_export():
    p = malloc(Int32, 1024)
    p[:] = list(range(1024))
    a = np.asarray(p)
    m = memoryview(p)
    before = malloc.stats().live_count
    free(p)
    assert not p.alive and malloc.stats().live_count == before - 1
    with pytest.raises(UseAfterFreeError):
        p[0]
    with pytest.raises(UseAfterFreeError):
        memoryview(p)  # no new export of a dead block
    # The exports still see valid memory: no dangling view, ever.
    assert a[1023] == 1023 and m[5] == 5
    junk = [malloc.allocate(4096) for _ in range(64)]  # would reuse the block if returned
    assert a.sum() == sum(range(1024))
    for j in junk:
        free(j)
    del a
    m.release()


def test_ctypes_from_buffer_pins_too():
    p = malloc(Int32, 4)
    arr = (ctypes.c_int32 * 4).from_buffer(p)
    arr[0] = 42
    assert p[0] == 42
    free(p)
    assert arr[0] == 42
    del arr
    gc.collect()


def test_unknown_length_cannot_export():
    raw = ctypes.create_string_buffer(8)  # memory rsalloc did not allocate
    view = Pointer.from_address(ctypes.addressof(raw), Uint8)
    with pytest.raises(BufferError):
        memoryview(view)


def test_a_bytes_only_consumer_sees_bytes():
    p = calloc(Int32, 2)
    p[:] = [1, 2]
    assert bytes(p) == b"\x01\x00\x00\x00\x02\x00\x00\x00"
    assert bytearray(p) == bytes(p)
    free(p)


def test_numpy_writes_are_visible_through_views():
    p = calloc(Float64, 4)
    np.asarray(p)[:] = [0.5, 1.5, 2.5, 3.5]
    assert (p + 1)[:] == [1.5, 2.5, 3.5]
    np.copyto(np.asarray(p + 2), np.array([9.0, 9.0]))
    assert p[:] == [0.5, 1.5, 9.0, 9.0]
    free(p)


def test_each_export_keeps_its_own_shape_until_released():
    # The Pointer keeps no element count: each export's shape is its own
    # (Py_buffer.internal), and must stay right while other exports of other
    # views come and go.
    base = malloc.allocate(4096)
    views = [(base + i).cast(Uint8) for i in range(0, 4000, 7)] + [base.cast(Int32) + i for i in range(0, 1000, 3)]
    mvs = [memoryview(v) for v in views]
    expected = [m.shape for m in mvs]
    assert expected[0] == (4096,) and expected[-1] == (1024 - 999,)
    for m in mvs[::2]:
        m.release()
    assert [m.shape for m in mvs[1::2]] == expected[1::2]
    assert all(m.nbytes == m.shape[0] * m.itemsize for m in mvs[1::2])
    assert [m.shape for m in mvs[1::2]] == [(v.count,) for v in views[1::2]]
    del mvs
    gc.collect()
    free(base)


def test_a_partial_trailing_element_is_not_exported():
    p = malloc.allocate(10)
    q = p.cast(Int32)
    assert q.count == 2
    m = memoryview(q)
    assert m.shape == (2,) and m.nbytes == 8 and m.format == "i"
    assert len(bytes(q)) == 8
    assert len(bytes(p)) == 10  # the bytes view still reaches all 10
    m.release()
    free(p)
