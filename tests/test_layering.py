"""The crate's modules import each other without cycles (docs/architecture.md).

scripts/rust_cycles.py is the check CI runs; here it runs on the source tree
and, to show it can fail, on a small tree with a cycle in it."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "scripts" / "rust_cycles.py"


def run(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), str(tree)], capture_output=True, text=True, check=False
    )


source_tree = pytest.mark.skipif(
    not (ROOT / "src").is_dir() or not TOOL.is_file(), reason="no source tree (installed wheel)"
)


@source_tree
def test_the_source_tree_has_no_module_cycles() -> None:
    r = run(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "module cycles: 0" in r.stdout


@source_tree
def test_the_check_reports_a_cycle(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "core").mkdir(parents=True)
    (src / "lib.rs").write_text("pub mod core;\n")
    (src / "core" / "mod.rs").write_text("pub mod a;\npub mod b;\npub mod c;\n")
    (src / "core" / "a.rs").write_text("use super::b::B;\npub struct A;\n")
    (src / "core" / "b.rs").write_text("use crate::core::{a::A, c};\npub struct B;\n")
    (src / "core" / "c.rs").write_text("pub struct C;\n")
    r = run(tmp_path)
    assert r.returncode == 1
    assert "cycle: core::a, core::b" in r.stdout
    # A test module's imports are not edges.
    (src / "core" / "b.rs").write_text(
        "pub struct B;\n#[cfg(test)]\nmod tests {\n    use crate::core::a::A;\n}\n"
    )
    assert run(tmp_path).returncode == 0
