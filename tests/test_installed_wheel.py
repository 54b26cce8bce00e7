"""When scripts/test-wheel.sh runs the suite against an installed wheel, it
sets RSALLOC_INSTALLED_IN to the environment's site-packages: then the
package the suite imports must be that one (not a source tree), carry its
stubs and license, its tags must match the interpreter (and the platform
in RSALLOC_WHEEL_PLATFORM), and on Linux its extension must have no rpath
and need no libpython. Elsewhere these tests are skipped."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import rsalloc
from rsalloc import _rsalloc

SITE = os.environ.get("RSALLOC_INSTALLED_IN")
pytestmark = pytest.mark.skipif(not SITE, reason="not a wheel test (scripts/test-wheel.sh sets RSALLOC_INSTALLED_IN)")


def test_rsalloc_is_imported_from_the_installed_wheel() -> None:
    assert SITE is not None
    site = Path(SITE).resolve()
    for module in (rsalloc, _rsalloc, rsalloc.tracking):
        assert module.__file__ is not None
        assert Path(module.__file__).resolve().is_relative_to(site), module.__file__
    # Nothing is imported through an editable install's path hook.
    dist = importlib.metadata.distribution("rsalloc")
    assert not any(str(f).endswith(".pth") for f in dist.files or [])


def test_the_wheel_carries_stubs_marker_and_license() -> None:
    pkg = Path(rsalloc.__file__).parent
    assert (pkg / "py.typed").is_file()
    assert (pkg / "__init__.pyi").is_file()
    dist = importlib.metadata.distribution("rsalloc")
    meta = dist.metadata
    assert meta["License-Expression"] == "MIT"
    assert "Programming Language :: Rust" in meta.get_all("Classifier", [])
    files = [str(f) for f in dist.files or []]
    assert any(f.endswith("licenses/LICENSE") or f.endswith("/LICENSE") for f in files), files
    wheel = (Path(str(dist.locate_file(""))) / f"rsalloc-{dist.version}.dist-info" / "WHEEL").read_text()
    py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    abi = py + ("t" if sysconfig.get_config_var("Py_GIL_DISABLED") else "")
    assert f"Tag: {py}-{abi}-" in wheel, wheel
    platform = os.environ.get("RSALLOC_WHEEL_PLATFORM")
    if platform:
        assert f"Tag: {py}-{abi}-{platform}" in wheel, wheel


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("readelf") is None, reason="an ELF check (Linux, readelf)"
)
def test_the_extension_has_no_rpath_and_no_libpython() -> None:
    dyn = subprocess.run(["readelf", "-d", str(_rsalloc.__file__)], capture_output=True, text=True, check=True)
    assert "RPATH" not in dyn.stdout and "RUNPATH" not in dyn.stdout, dyn.stdout
    assert "libpython" not in dyn.stdout, dyn.stdout


def test_no_rust_toolchain_is_reachable() -> None:
    assert shutil.which("cargo") is None and shutil.which("rustc") is None
