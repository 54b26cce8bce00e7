"""Shared fixtures: real libc through ctypes, and a check that nothing changed."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _native import LIBC, counters, nothing_changes  # noqa: E402

import rsalloc  # noqa: E402


@pytest.fixture
def libc() -> ctypes.CDLL:
    return LIBC


def unchanged(*pointers: rsalloc.Pointer):  # type: ignore[no-untyped-def]
    """The block must leave the global, malloc and calloc counters (peak
    included) and the bytes of the live `pointers` alone."""
    return nothing_changes(rsalloc.malloc, rsalloc.calloc, pointers=pointers)


def snapshot() -> tuple[object, ...]:
    """Every counter a failed call must leave alone: global, malloc, calloc."""
    return tuple(counters(rsalloc.malloc, rsalloc.calloc))
