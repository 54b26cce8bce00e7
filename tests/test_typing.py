"""The stubs are precise: mypy --strict accepts ordinary use with the promised types."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = Path(__file__).parent / "typing" / "sample.py"


def test_sample_type_checks_under_mypy_strict():
    pytest.importorskip("mypy")
    pytest.importorskip("typing_extensions")
    env = dict(os.environ, MYPY_CACHE_DIR=os.devnull if os.name != "nt" else "nul")
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(SAMPLE)],
        capture_output=True,
        text=True,
        env=env,
        cwd=SAMPLE.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_sample_runs():
    ns: dict[str, object] = {}
    exec(compile(SAMPLE.read_text(), str(SAMPLE), "exec"), ns)
    for name in ("ints", "floats", "bytes_and_strings", "slots", "structs", "counters"):
        ns[name]()  # type: ignore[operator]
