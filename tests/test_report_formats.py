"""Leak reports as pictures: `leak_report(format="collapsed")` writes folded
stacks (the input of flamegraph.pl, inferno and speedscope), root first, with
the live bytes as weights; rendered with inferno-flamegraph when it is
installed (`cargo install inferno`, see docs/tracking.md)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import rsalloc
from rsalloc import tracking
from rsalloc.tracking import in_traceback

HERE = __file__
FOLDED_LINE = re.compile(r"^[^;\n]+(;[^;\n]+)* \d+$")


@pytest.fixture
def tracked() -> Iterator[list[rsalloc.Pointer]]:
    held: list[rsalloc.Pointer] = []
    tracking.enable(frames=16)
    try:
        yield held
    finally:
        tracking.disable()
        for p in held:
            rsalloc.free(p)


def leaky_inner(held: list[rsalloc.Pointer]) -> int:
    for _ in range(2):
        held.append(rsalloc.malloc.allocate(100))  # the same stack twice: weights add up
    return leaky_inner.__code__.co_firstlineno + 2


def leaky_outer(held: list[rsalloc.Pointer]) -> tuple[int, int]:
    line = leaky_outer.__code__.co_firstlineno + 2  # the next line
    return line, leaky_inner(held)


def other_leak(held: list[rsalloc.Pointer]) -> int:
    held.append(rsalloc.calloc(rsalloc.Int32, 3))
    return other_leak.__code__.co_firstlineno + 1


def _parse(report: str) -> dict[tuple[str, ...], int]:
    out = {}
    for line in report.splitlines():
        assert FOLDED_LINE.match(line), line
        stack, weight = line.rsplit(" ", 1)
        out[tuple(stack.split(";"))] = int(weight)
    return out


def test_collapsed_stacks_are_root_first_and_weighted_by_bytes(tracked: list[rsalloc.Pointer]) -> None:
    outer_line, inner_line = leaky_outer(tracked)
    other_line = other_leak(tracked)
    report = rsalloc.leak_report(format="collapsed", filter=in_traceback(HERE))
    assert report.endswith("\n")
    stacks = _parse(report)
    assert len(stacks) == 2
    by_leaf = {stack[-1]: (stack, weight) for stack, weight in stacks.items()}
    stack, weight = by_leaf[f"leaky_inner ({HERE}:{inner_line})"]
    assert weight == 200
    assert stack[-2] == f"leaky_outer ({HERE}:{outer_line})"
    assert stack[-3].startswith("test_collapsed_stacks_are_root_first_and_weighted_by_bytes (")
    assert stack[0] != stack[-1]  # the root is the outermost recorded frame
    _, weight = by_leaf[f"other_leak ({HERE}:{other_line})"]
    assert weight == 12


def test_frames_never_contain_the_separators(tracked: list[rsalloc.Pointer]) -> None:
    code = compile("held.append(rsalloc.malloc.allocate(5))", "odd;name\nfile.py", "exec")
    exec(code, {"held": tracked, "rsalloc": rsalloc})
    report = rsalloc.leak_report(format="collapsed", filter=in_traceback("odd"))
    (line,) = report.splitlines()
    assert FOLDED_LINE.match(line)
    assert line.split(";")[-1] == "<module> (odd,name file.py:1) 5"


def test_an_empty_report_is_empty_and_bad_formats_are_refused(tracked: list[rsalloc.Pointer]) -> None:
    assert rsalloc.leak_report(format="collapsed", filter=lambda r: False) == ""
    with pytest.raises(ValueError, match="collapsed"):
        rsalloc.leak_report(format="svg")  # type: ignore[arg-type]


def _inferno() -> str | None:
    found = shutil.which("inferno-flamegraph")
    if found:
        return found
    local = Path.home() / ".cargo" / "bin" / "inferno-flamegraph"
    return str(local) if local.exists() else None


@pytest.mark.skipif(_inferno() is None, reason="inferno-flamegraph is not installed (cargo install inferno)")
def test_inferno_renders_the_report(tracked: list[rsalloc.Pointer], tmp_path: Path) -> None:
    leaky_outer(tracked)
    report = rsalloc.leak_report(format="collapsed", filter=in_traceback(HERE))
    tool = _inferno()
    assert tool is not None
    out = subprocess.run(
        [tool, "--title", "rsalloc leaks", "--countname", "bytes"],
        input=report,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    svg = out.stdout
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "rsalloc leaks" in svg
    assert "leaky_inner (" in svg and "leaky_outer (" in svg
    assert "200 bytes" in svg  # the leaf's weight, in its tooltip
    (tmp_path / "leaks.svg").write_text(svg)
