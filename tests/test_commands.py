"""`python -m rsalloc demo | bench | --help` run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rsalloc", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_the_subcommands():
    out = run("--help")
    assert out.returncode == 0
    assert "demo" in out.stdout and "bench" in out.stdout


def test_demo_runs_against_libc_and_zlib():
    out = run("demo")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for expected in ("strlen", "qsort", "compress2", "Arena", "UseAfterFreeError", "stats", "leaks"):
        assert expected in text, expected
    assert "equal=True" in text and "live=0" in text


def test_bench_json_smoke():
    out = run("bench", "--quick", "--repeats", "1", "--json", "e")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    (row,) = data["rows"]
    assert row["job"] == "e" and row["ns_per_op"]["rsalloc to_native_utf8"] > 0
    assert "rsalloc to_native_utf8" in row["ratio_to_fastest_peer"]


def test_bench_across_processes_takes_medians_of_each_process_ratios():
    out = run("bench", "--quick", "--repeats", "1", "--processes", "3", "--json", "e")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["processes"] == 3
    (row,) = data["rows"]
    per = row["ratio_per_process"]["rsalloc to_native_utf8"]
    assert len(per) == 3 and all(r > 0 for r in per)
    assert row["ratio_to_fastest_peer"]["rsalloc to_native_utf8"] == sorted(per)[1]
    text = run("bench", "--quick", "--repeats", "1", "--processes", "2", "e")
    assert text.returncode == 0 and "medians across 2 processes" in text.stdout
    bad = run("bench", "--processes", "0", "e")
    assert bad.returncode == 2 and "--processes" in bad.stderr
