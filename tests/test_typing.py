"""The stubs are precise: mypy --strict accepts ordinary use with the promised types."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = Path(__file__).parent / "typing" / "sample.py"


def mypy_strict(path: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("mypy")
    pytest.importorskip("typing_extensions")
    env = dict(os.environ, MYPY_CACHE_DIR=os.devnull if os.name != "nt" else "nul")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=SAMPLE.parent,
    )


def test_sample_type_checks_under_mypy_strict():
    out = mypy_strict(SAMPLE)
    assert out.returncode == 0, out.stdout + out.stderr


def test_sample_runs():
    ns: dict[str, object] = {}
    exec(compile(SAMPLE.read_text(), str(SAMPLE), "exec"), ns)
    for name in ("ints", "floats", "bytes_and_strings", "slots", "structs", "counters", "owners"):
        ns[name]()  # type: ignore[operator]


def test_allocator_like_is_the_one_protocol_of_both_owners(tmp_path: Path) -> None:
    # Allocator and Arena take the shared calls from AllocatorLike (written
    # once); what only one of them has stays off the protocol, and what is
    # no owner is refused where one is expected.
    bad = tmp_path / "bad_owner.py"
    bad.write_text(
        "import rsalloc\n"
        "def use(a: rsalloc.AllocatorLike) -> None:\n"
        "    a.release_all()\n"
        "    a.limited(8)\n"
        "use(rsalloc.malloc)\n"
        "use(rsalloc.Arena())\n"
        "use(42)\n"
        "use(rsalloc.Pointer)\n"
    )
    out = mypy_strict(bad)
    lines = [ln for ln in out.stdout.splitlines() if ": error:" in ln]
    assert [int(ln.split(":")[1]) for ln in lines] == [3, 4, 7, 8], out.stdout


def test_allocator_like_sees_every_shared_call_at_runtime() -> None:
    import rsalloc

    shared = {
        n
        for n in set(dir(rsalloc.Allocator)) & set(dir(rsalloc.Arena))
        if not n.startswith("_") or n == "__call__"
    }
    # `limited` is there on Arena only to refuse with a clear message.
    protocol = {n for n in vars(rsalloc.AllocatorLike) if not n.startswith("_") or n == "__call__"}
    assert protocol == shared - {"limited"}
    for owner in (rsalloc.malloc, rsalloc.calloc, rsalloc.Arena()):
        assert isinstance(owner, rsalloc.AllocatorLike)
    assert not isinstance(42, rsalloc.AllocatorLike)
