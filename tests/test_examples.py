"""Each example runs as a user would run it, and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# examples/ beside tests/, or under $RSALLOC_SOURCE_TREE when the tests run
# from elsewhere (against an installed wheel).
_tree = os.environ.get("RSALLOC_SOURCE_TREE")
EXAMPLES = (Path(_tree) if _tree else Path(__file__).resolve().parent.parent) / "examples"
pytestmark = pytest.mark.skipif(
    not EXAMPLES.is_dir(), reason=f"no examples/ at {EXAMPLES} (set RSALLOC_SOURCE_TREE to the source tree)"
)


def run(name: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def test_sqlite3_demo() -> None:
    out = run("sqlite3_demo.py")
    assert "bound: INSERT INTO files VALUES ('grüße.bin', x'000102030405" in out
    assert "row: grüße.bin  16 bytes  sum=120  first=[0, 1, 2, 3]" in out
    assert "row: zeros.bin   4 bytes  sum=0  first=[0, 0, 0, 0]" in out
    assert "database file: données.db" in out
    assert out.rstrip().endswith(", 0 live")


def test_cffi_demo() -> None:
    pytest.importorskip("cffi")
    out = run("cffi_demo.py")
    for line in (
        "sorted by C qsort: [-50, -7, 0, 3, 3, 19, 42, 100]",
        "written through cffi: -99",
        "ffi.cast(int *)[7]: 100",
        "strlen: 12 bytes for 'naïve café'",
        "frexp(48.0) = 0.75 * 2**6",
        "after free: UseAfterFreeError",
        "cffi view still reads: -7",
        "double[] via cffi: [0.0, 0.0, 2.5] len 3",
    ):
        assert line in out
    assert out.rstrip().endswith(", 0 live")
