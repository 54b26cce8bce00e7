"""The two seed examples (a struct of three strings, a struct holding a
`char **`) run as a user runs them. Both free through pointers read back
from memory, which needs address provenance (DESIGN §3a): without it they
are skipped, not loosened."""

from __future__ import annotations

import pytest
from test_examples import run

import rsalloc
from rsalloc import Uint8, free


def _has_provenance() -> bool:
    p = rsalloc.malloc.allocate(1)
    try:
        return rsalloc.Pointer.from_address(p.address, Uint8).allocator is not None
    finally:
        free(p)


needs_provenance = pytest.mark.skipif(
    not _has_provenance(), reason="frees through read-back pointers: needs address provenance (DESIGN §3a)"
)


@needs_provenance
def test_seed_struct() -> None:
    out = run("seed_struct.py")
    assert "sizeof(AuthInfo): 24 offsets: [0, 8, 16]" in out
    assert "appKey: 45c6af3c98409b18a84451215d0bdd6e" in out
    assert "strlen: [32, 7, 7]" in out
    assert "ctypes sees accid: user-42" in out
    assert out.rstrip().endswith("leak_check: nothing left; 0 live")


@needs_provenance
def test_seed_char_array() -> None:
    out = run("seed_char_array.py")
    assert "sorted by C: ['banana', 'cherry', 'fig', 'pear', 'äpfel']" in out
    assert out.rstrip().endswith("leak_check: nothing left; 0 live")
