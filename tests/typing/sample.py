"""Ordinary rsalloc use that mypy --strict must accept, with the types the stubs promise."""

from __future__ import annotations

import ctypes

from typing_extensions import assert_type

import rsalloc
from rsalloc import Float64, Int32, Pointer, Uint8, calloc, free, malloc


class GUID(ctypes.Structure):
    _fields_ = [("data1", ctypes.c_uint32), ("data2", ctypes.c_uint16)]


def ints() -> int:
    p = calloc(Int32, 4)
    assert_type(p, Pointer[Int32])
    p[0] = 1
    x = p[0]
    assert_type(x, int)
    assert_type(p[1:3], list[int])
    q = p + 1
    assert_type(q, Pointer[Int32])
    assert_type(1 + p, Pointer[Int32])
    assert_type(p.view(1, 2), Pointer[Int32])
    assert_type(Pointer.from_address(None, Int32), Pointer[Int32])
    free(p)
    return x


def floats() -> float:
    p = malloc(Float64, 2)
    v = p[1]
    assert_type(v, float)
    malloc.free(p)
    return v


def bytes_and_strings() -> str:
    b = malloc.allocate(16)
    assert_type(b, Pointer[Uint8])
    s = rsalloc.to_native_utf8("hi")
    assert_type(s, Pointer[Uint8])
    text = s.to_str()
    assert_type(text, str)
    free(s)
    free(b)
    return text


def slots() -> int:
    target = calloc(Int32)
    slot = calloc(Pointer[Int32], 1)
    slot[0] = target
    inner = slot[0]
    assert_type(inner, Pointer[Int32])
    n = inner[0]
    free(slot)
    free(target)
    return n


def structs() -> int:
    g = calloc(GUID, 2)
    assert_type(g, Pointer[GUID])
    r = g.ref
    assert_type(r, GUID)
    value: int = r.data1
    free(g)
    return value


def counters() -> int:
    s = rsalloc.stats()
    return s.live_count + malloc.stats().peak_bytes


def fill(owner: rsalloc.AllocatorLike, n: int) -> Pointer[Int32]:
    """Allocates through whatever owner it is given: an Allocator or an Arena."""
    p = owner(Int32, n)
    assert_type(p, Pointer[Int32])
    assert_type(owner.allocate(8), Pointer[Uint8])
    assert_type(owner.native_free, int | None)
    p[:] = list(range(n))
    return owner.realloc(p, n + 1)


def owners() -> int:
    lim = malloc.limited(1 << 16)
    total = 0
    for owner in (malloc, lim, rsalloc.Arena(), rsalloc.Arena(malloc)):
        assert isinstance(owner, rsalloc.AllocatorLike)
        p = fill(owner, 3)
        total += sum(p[:3]) + owner.stats().live_count
        if isinstance(owner, rsalloc.Arena):
            owner.release_all()
    return total
