"""Real libc through ctypes: Pointers go straight into foreign functions (DESIGN §3, §4)."""

from __future__ import annotations

import ctypes

import rsalloc
from rsalloc import Int32, Uint8, calloc, free, malloc, to_native_utf8


def test_as_parameter_is_a_full_width_ctypes_pointer(libc):
    # A ctypes pointer to the element type's ctypes type (DESIGN §3b), never a bare int.
    p = malloc.allocate(16, alignment=4096)
    param = p._as_parameter_
    assert isinstance(param, ctypes.POINTER(ctypes.c_char))
    assert ctypes.cast(param, ctypes.c_void_p).value == p.address
    # No argtypes: ctypes would truncate a bare int to C int; a c_void_p is not truncated.
    raw_memset = ctypes.CDLL(None).memset
    raw_memset.restype = ctypes.c_void_p
    assert raw_memset(p, 0x5A, 16) == p.address
    assert p.read_bytes() == b"Z" * 16
    free(p)


def test_memset_and_strlen(libc):
    p = calloc(Uint8, 32)
    libc.memset(p, ord("x"), 10)
    assert libc.strlen(p) == 10 and p.to_str() == "x" * 10
    free(p)


def test_strdup_result_adopted_by_malloc(libc):
    s = to_native_utf8("copied by C")
    raw = libc.strdup(ctypes.cast(s.address, ctypes.c_char_p))
    copy = malloc.adopt(raw, Uint8, libc.strlen(raw) + 1)
    assert copy.to_str() == "copied by C"
    free(copy)
    free(s)


def test_qsort_with_a_python_callback(libc):
    n = 100
    p = malloc(Int32, n)
    p[:] = [(i * 7919) % 101 - 50 for i in range(n)]
    expected = sorted(p[:])
    CMP = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)

    @CMP
    def compare(a, b):
        x = rsalloc.Pointer.from_address(a, Int32)[0]
        y = rsalloc.Pointer.from_address(b, Int32)[0]
        return (x > y) - (x < y)

    libc.qsort.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, CMP]
    libc.qsort.restype = None
    libc.qsort(p, n, rsalloc.sizeof(Int32), compare)
    assert p[:] == expected
    free(p)


def test_out_parameter_slot(libc):
    # strtol(const char*, char** endptr, int): the end pointer comes back in a slot.
    libc.strtol.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    libc.strtol.restype = ctypes.c_long
    s = to_native_utf8("1234abc")
    end = calloc(rsalloc.Pointer[Uint8])
    assert libc.strtol(s, end, 10) == 1234
    assert end[0].address == s.address + 4 and end[0].to_str() == "abc"
    free(s)
    free(end)


def test_c_free_of_a_detached_malloc_block(libc):
    p = malloc.allocate(100)
    before = rsalloc.stats().live_count
    libc.free(p.detach())
    assert rsalloc.stats().live_count == before - 1
