"""Shared fixtures: real libc through ctypes, and a check that nothing changed."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Iterator

import pytest

import rsalloc


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.strlen.argtypes = [ctypes.c_void_p]
    libc.strlen.restype = ctypes.c_size_t
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    libc.memset.restype = ctypes.c_void_p
    libc.strdup.argtypes = [ctypes.c_char_p]
    libc.strdup.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free.restype = None
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.malloc.restype = ctypes.c_void_p
    return libc


LIBC = _libc()


@pytest.fixture
def libc() -> ctypes.CDLL:
    return LIBC


def snapshot() -> tuple[object, ...]:
    """Every counter that a failed call must leave alone (peak may not move either)."""
    return (
        rsalloc.stats()._asdict(),
        rsalloc.malloc.stats()._asdict(),
        rsalloc.calloc.stats()._asdict(),
    )


@contextlib.contextmanager
def unchanged(*pointers: rsalloc.Pointer) -> Iterator[None]:
    """Asserts that the block runs without changing counters or the bytes of `pointers`."""
    before = snapshot()
    contents = [p.read_bytes() if p.alive and p.nbytes is not None else None for p in pointers]
    yield
    assert snapshot() == before
    assert [p.read_bytes() if p.alive and p.nbytes is not None else None for p in pointers] == contents
