"""libc through ctypes, with the prototypes the demo, the bench and the tests
call (pointer arguments as c_void_p, so an rsalloc Pointer passes as itself)."""

from __future__ import annotations

import ctypes

__all__ = ["libc"]


def libc() -> ctypes.CDLL:
    """A fresh handle on libc (callers may add prototypes of their own).

    The process's own namespace (`CDLL(None)`), not libc.so.6 opened by
    name: its `malloc`/`free` are the ones rsalloc's libc calls resolve to,
    also when an allocator is interposed (a sanitizer's runtime, jemalloc
    preloaded), so a block crosses between them safely."""
    lib = ctypes.CDLL(None)
    vp, size_t = ctypes.c_void_p, ctypes.c_size_t
    for name, restype, argtypes in (
        ("malloc", vp, [size_t]),
        ("free", None, [vp]),
        ("strdup", vp, [ctypes.c_char_p]),
        ("strlen", size_t, [vp]),
        ("memset", vp, [vp, ctypes.c_int, size_t]),
        ("strtol", ctypes.c_long, [vp, vp, ctypes.c_int]),
        ("clock_gettime", ctypes.c_int, [ctypes.c_int, vp]),
    ):
        f = getattr(lib, name)
        f.restype, f.argtypes = restype, argtypes
    lib.qsort.restype = None
    return lib
