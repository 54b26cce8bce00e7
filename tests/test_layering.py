"""The crate's modules import each other without cycles (docs/architecture.md).

scripts/rust_cycles.py is the check CI runs; here it runs on the source tree
and, to show it can fail, on a small tree with a cycle in it."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "scripts" / "rust_cycles.py"


def run(tree: Path, tool: Path = TOOL) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(tool), str(tree)], capture_output=True, text=True, check=False
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


CONVERSIONS = ROOT / "scripts" / "check_conversions.py"


@source_tree
def test_the_bindings_hand_python_only_checked_objects() -> None:
    r = run(ROOT, CONVERSIONS)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "unchecked conversions: 0" in r.stdout


@source_tree
def test_the_conversion_check_finds_each_kind(tmp_path: Path) -> None:
    py = tmp_path / "src" / "py"
    py.mkdir(parents=True)
    (py / "bad.rs").write_text(
        "#[pyclass(frozen, get_all)]\n"
        "struct A { n: u64 }\n"
        "#[pymethods]\n"
        "impl A {\n"
        "    fn count(&self) -> usize { 1 }\n"
        "    fn __len__(&self) -> usize { 1 }\n"
        "    fn name(&self) -> PyResult<String> { todo!() }\n"
        "    fn ok(&self) -> Text<String> { todo!() }\n"
        "}\n"
        "#[pyfunction]\n"
        "fn pair() -> (bool, usize) { (true, 1) }\n"
        "fn lookup(o: &Bound<'_, PyAny>) { let _ = o.getattr(\"x\"); }\n"
    )
    r = run(tmp_path, CONVERSIONS)
    assert r.returncode == 1
    out = r.stdout
    assert "get_all" in out
    assert "method count -> usize" in out
    assert "method name -> PyResult<String>" in out
    assert "pyfunction pair -> (bool, usize)" in out
    assert "a literal name" in out
    assert "__len__" not in out and " ok " not in out
    assert "unchecked conversions: 5" in out
