"""Real C libraries through ctypes for the interop tests, and a check that a
misuse changed nothing."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Iterator

import rsalloc
from rsalloc._clib import libc as _libc


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


def needs_fast_path(name: str):  # type: ignore[no-untyped-def]
    """Skips a test of what the fence's trick `name` provides when the trick
    is off (RSALLOC_FAST_PATHS=0, or an assumption it checks failed)."""
    import pytest

    import rsalloc._rsalloc

    p = rsalloc._rsalloc._fast_paths()[name]
    return pytest.mark.skipif(not p["active"], reason=f"{name} is off: {p['reason']}")


def python_child(code: str, **env: str) -> str:
    """What `code` prints, run by a fresh interpreter with `env` added to this
    process's environment (a switch read at import, say)."""
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True, check=True
    )
    return out.stdout
