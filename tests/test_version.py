"""The version has one source, Cargo.toml: the extension reports it
(`env!("CARGO_PKG_VERSION")`), maturin writes it into the package metadata
(pyproject.toml declares it dynamic), and `rsalloc.__version__` is the
extension's."""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

import rsalloc
from rsalloc import _rsalloc

# The source tree: $RSALLOC_SOURCE_TREE, else the parent of tests/ when it
# holds Cargo.toml (not when the tests run from a copy, against a wheel).
_tree = os.environ.get("RSALLOC_SOURCE_TREE")
SOURCE = Path(_tree) if _tree else Path(__file__).resolve().parent.parent
needs_source = pytest.mark.skipif(
    not (SOURCE / "Cargo.toml").is_file(), reason="no source tree here (set RSALLOC_SOURCE_TREE)"
)


def test_the_package_version_is_the_extensions() -> None:
    assert rsalloc.__version__ == _rsalloc.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+([-.+][0-9A-Za-z.]+)?", rsalloc.__version__)


def test_the_installed_metadata_carries_the_same_version() -> None:
    assert importlib.metadata.version("rsalloc") == rsalloc.__version__


@needs_source
def test_cargo_toml_is_the_one_source() -> None:
    cargo = tomllib.loads((SOURCE / "Cargo.toml").read_text(encoding="utf-8"))
    assert cargo["package"]["version"] == rsalloc.__version__
    project = tomllib.loads((SOURCE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    for path in (SOURCE / "python" / "rsalloc").glob("*.py"):
        assert not re.search(r"^__version__\s*=", path.read_text(encoding="utf-8"), re.M), path


@needs_source
def test_the_classifiers_name_every_python_the_package_accepts() -> None:
    project = tomllib.loads((SOURCE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    minimum = re.fullmatch(r">=3\.(\d+)", project["requires-python"])
    assert minimum is not None
    listed = {int(m.group(1)) for c in project["classifiers"] if (m := re.fullmatch(r"Programming Language :: Python :: 3\.(\d+)", c))}
    assert min(listed) == int(minimum.group(1)) and listed == set(range(min(listed), max(listed) + 1))
    assert sys.version_info[1] in listed
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (SOURCE / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
