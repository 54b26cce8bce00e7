"""Real C libraries through ctypes for the interop tests, and a check that a
misuse changed nothing."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Iterator

import rsalloc


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free.restype = None
    libc.strdup.argtypes = [ctypes.c_char_p]
    libc.strdup.restype = ctypes.c_void_p
    libc.strlen.argtypes = [ctypes.c_void_p]
    libc.strlen.restype = ctypes.c_size_t
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    libc.memset.restype = ctypes.c_void_p
    return libc


def _sqlite() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
    lib.sqlite3_malloc64.argtypes = [ctypes.c_uint64]
    lib.sqlite3_malloc64.restype = ctypes.c_void_p
    lib.sqlite3_free.argtypes = [ctypes.c_void_p]
    lib.sqlite3_free.restype = None
    lib.sqlite3_mprintf.restype = ctypes.c_void_p
    lib.sqlite3_msize.argtypes = [ctypes.c_void_p]
    lib.sqlite3_msize.restype = ctypes.c_uint64
    return lib


LIBC = _libc()
SQLITE = _sqlite()


def counters(*allocators: rsalloc.Allocator) -> list[dict[str, int]]:
    return [rsalloc.stats()._asdict()] + [a.stats()._asdict() for a in allocators]


@contextlib.contextmanager
def nothing_changes(*allocators: rsalloc.Allocator, pointers: tuple[rsalloc.Pointer, ...] = ()) -> Iterator[None]:
    """The block must leave the counters (global and of `allocators`) and the bytes of `pointers` alone."""
    before = counters(*allocators)
    contents = [_bytes(p) for p in pointers]
    yield
    assert counters(*allocators) == before
    assert [_bytes(p) for p in pointers] == contents


def _bytes(p: rsalloc.Pointer) -> bytes | None:
    return p.read_bytes() if p.alive and p.nbytes is not None else None
