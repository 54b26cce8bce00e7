"""Installing rsalloc changes nothing in a pytest run that does not ask for
its plugin (DESIGN §7): the entry point loads `rsalloc.pytest_plugin`, which
must not import the extension. `import rsalloc` itself is lazy (PEP 562), and
the names it provides still come out as before."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import rsalloc

CONFTEST = """
    import sys

    def pytest_sessionfinish(session):
        print()
        print("PLUGIN", "rsalloc.pytest_plugin" in sys.modules)
        print("EXTENSION", "rsalloc._rsalloc" in sys.modules)
"""

TESTS = """
    def test_plain():
        assert 1 + 1 == 2

    def test_other():
        assert "x".upper() == "X"
"""

MARKED = """
    import pytest

    @pytest.mark.rsalloc_leaks
    def test_marked():
        pass
"""


def _run(tmp_path: Path, body: str, *args: str) -> tuple[bool, bool, str]:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_tiny.py").write_text(textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RSALLOC_", "PYTEST_"))}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *args, "test_tiny.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    lines = dict(line.split() for line in r.stdout.splitlines() if line.startswith(("PLUGIN ", "EXTENSION ")))
    return lines["PLUGIN"] == "True", lines["EXTENSION"] == "True", r.stdout


def test_a_run_without_the_plugin_does_not_import_the_extension(tmp_path: Path) -> None:
    plugin, extension, out = _run(tmp_path, TESTS)
    assert plugin, "the entry point did not load the plugin: nothing was tested"
    assert not extension, out
    assert "2 passed" in out


def test_the_frames_option_alone_does_not_either(tmp_path: Path) -> None:
    assert _run(tmp_path, TESTS, "--rsalloc-frames", "3")[:2] == (True, False)


@pytest.mark.parametrize(("body", "args"), [(TESTS, ("--rsalloc-leaks",)), (MARKED, ())], ids=["option", "marker"])
def test_asking_for_the_plugin_loads_it(tmp_path: Path, body: str, args: tuple[str, ...]) -> None:
    assert _run(tmp_path, body, *args)[:2] == (True, True)


def _python(code: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSALLOC_")}
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_import_rsalloc_is_lazy_and_the_first_name_loads_everything() -> None:
    out = _python(
        """
        import sys
        import rsalloc
        print(rsalloc._rsalloc.__name__ if "rsalloc._rsalloc" in sys.modules else "lazy")
        print(rsalloc.Int32.__name__, rsalloc.TRACEMALLOC_DOMAIN, "rsalloc._rsalloc" in sys.modules)
        from rsalloc import malloc
        print("rsalloc._rsalloc" in sys.modules, "malloc" in vars(rsalloc), "leak_check" in vars(rsalloc))
        print(rsalloc.tracking.__name__, rsalloc.using.__module__)
        """
    )
    assert out == ["lazy", "Int32", "7725", "False", "True", "True", "True", "rsalloc.tracking", "rsalloc._arena"]


def test_submodules_and_star_import_load_it_too() -> None:
    out = _python(
        """
        import sys
        import rsalloc.tracking
        print("rsalloc._rsalloc" in sys.modules)
        ns = {}
        exec("from rsalloc import *", ns)
        print(sorted(set(rsalloc.__all__) - set(ns)))
        """
    )
    assert out == ["True", "[]"]


def test_the_package_exposes_every_name_of_all() -> None:
    for name in rsalloc.__all__:
        assert getattr(rsalloc, name) is not None, name
    assert set(rsalloc.__all__) <= set(dir(rsalloc))
    with pytest.raises(AttributeError, match="no_such_name"):
        rsalloc.no_such_name  # noqa: B018
    assert rsalloc.malloc is rsalloc._rsalloc.malloc
    assert rsalloc.leaks is rsalloc.tracking.leaks
