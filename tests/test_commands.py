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


def test_bench_ratio_is_paired_within_each_repeat():
    from rsalloc.bench import Cell, Row, _ratios, _ratios_of_medians

    row = Row("t", "drift", [Cell("rsalloc x", "pass", ours=True), Cell("peer a", "pass"), Cell("peer b", "pass"),
                             Cell("shown only", "pass", compared=False)])
    # The machine runs twice as slow in repeats 1 to 3; in repeat 1 peer b
    # is the fastest peer. A cell not compared never counts.
    row.samples = {"rsalloc x": [10.0, 20.0, 20.0, 20.0, 10.0], "peer a": [20.0, 40.0, 40.0, 40.0, 20.0],
                   "peer b": [30.0, 10.0, 45.0, 60.0, 30.0], "shown only": [1.0] * 5}
    row.medians = {k: sorted(v)[2] for k, v in row.samples.items()}
    # Within each repeat: 10/20, 20/10, 20/40, 20/40, 10/20 -> median 0.5.
    assert _ratios(row) == {"rsalloc x": 0.5}
    # Across medians, the drift counts: 20 / min(40, 30).
    assert _ratios_of_medians(row) == {"rsalloc x": 20.0 / 30.0}
    row.samples["peer a"] = [20.0, 40.0, 20.0, 20.0, 20.0]
    row.medians["peer a"] = 20.0
    # Now rsalloc ran slow while peer a did not (repeats 2, 3): paired, that
    # counts against it (10/20, 20/10, 20/20, 20/20, 10/20 -> 1.0).
    assert _ratios(row) == {"rsalloc x": 1.0}
    assert _ratios_of_medians(row) == {"rsalloc x": 1.0}


def test_bench_per_call_arena_is_compared_with_its_allocations_freed_one_by_one():
    out = run("bench", "--quick", "--repeats", "1", "--processes", "2", "--json", "h")
    assert out.returncode == 0, out.stderr
    for row in json.loads(out.stdout)["rows"]:
        assert row["baseline"] == {"rsalloc with Arena()": "rsalloc calloc, freed one by one"}
        per = row["ratio_to_baseline_per_process"]["rsalloc with Arena()"]
        assert len(per) == 2 and all(r > 0 for r in per)
        # The one-by-one cell is ours: never a peer of the ratio to the fastest peer.
        assert set(row["ratio_to_fastest_peer"]) == {"rsalloc with Arena()"}
    text = run("bench", "--quick", "--repeats", "1", "h")
    assert "x of 'rsalloc calloc, freed one by one'" in text.stdout


def test_bench_baseline_ratio_is_paired():
    from rsalloc.bench import Cell, Row, _baseline_ratios

    row = Row("t", "b", [Cell("rsalloc a", "pass", ours=True, baseline="rsalloc b"), Cell("rsalloc b", "pass")])
    row.samples = {"rsalloc a": [10.0, 30.0, 10.0], "rsalloc b": [20.0, 20.0, 40.0]}
    assert _baseline_ratios(row) == {"rsalloc a": 0.5}  # 0.5, 1.5, 0.25
