"""What leak tracking costs (issue 4, point 9).

    python benches/tracking_cost.py [--baseline-python PATH] [--repeats 7] [--number 200000]

Each measurement runs `timeit` in a fresh worker process (so tracemalloc and
the tracking switch never leak between jobs), from a call stack 20 frames
deep so that 16-frame captures really walk 16 frames. The jobs are
interleaved: every repeat runs every job once, in the same order. A worker
reports the best of 5 timeit runs (the machine is shared: the best run is
the one least disturbed); the figures are medians of those over the
repeats, in ns per operation.

Jobs:
  base        malloc.allocate(64) + free, the build given by --baseline-python
              (the main branch before tracking existed)
  off         the same with this build, tracking off
  on1, on16   the same with tracking on at 1 and 16 frames
  ba          bytearray(64) (allocated and dropped)
  tm1, tm16   bytearray(64) under tracemalloc.start(1) / start(16)

Reported: off/base (target <= 1.05) and, per frame count, rsalloc's added
cost (onN - off) against tracemalloc's (tmN - ba) (target: at most half).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

DEPTH = 20

SETUP = {
    "base": "import rsalloc; a = rsalloc.malloc.allocate; f = rsalloc.malloc.free",
    "off": "import rsalloc; a = rsalloc.malloc.allocate; f = rsalloc.malloc.free; rsalloc.tracking.disable()",
    "on1": "import rsalloc; a = rsalloc.malloc.allocate; f = rsalloc.malloc.free; rsalloc.tracking.enable(1)",
    "on16": "import rsalloc; a = rsalloc.malloc.allocate; f = rsalloc.malloc.free; rsalloc.tracking.enable(16)",
    "ba": "pass",
    "tm1": "import tracemalloc; tracemalloc.start(1)",
    "tm16": "import tracemalloc; tracemalloc.start(16)",
}
STMT = {
    "base": "f(a(64))",
    "off": "f(a(64))",
    "on1": "f(a(64))",
    "on16": "f(a(64))",
    "ba": "bytearray(64)",
    "tm1": "bytearray(64)",
    "tm16": "bytearray(64)",
}


def worker(job: str, number: int) -> None:
    import timeit

    g: dict[str, object] = {}
    exec(SETUP[job], g)
    timer = timeit.Timer(STMT[job], globals=g)

    def deep(d: int) -> float:
        return min(timer.repeat(5, number)) if d == 0 else deep(d - 1)

    print(deep(DEPTH) / number * 1e9)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline-python", default=None)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--number", type=int, default=100_000)
    ap.add_argument("--worker", default=None)
    ap.add_argument("--jobs", default=None, help="comma-separated subset of the jobs")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.number)
        return
    jobs = ["off", "on1", "on16", "ba", "tm1", "tm16"]
    if args.baseline_python:
        jobs.insert(0, "base")
    if args.jobs:
        jobs = [j for j in jobs if j in args.jobs.split(",")]
    results: dict[str, list[float]] = {j: [] for j in jobs}
    for _ in range(args.repeats):
        for j in jobs:
            py = args.baseline_python if j == "base" else sys.executable
            out = subprocess.run(
                [py, __file__, "--worker", j, "--number", str(args.number)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[j].append(float(out))
    med = {j: statistics.median(v) for j, v in results.items()}
    print(f"medians of {args.repeats} interleaved repeats, {args.number} ops each, ns/op")
    for j in jobs:
        print(f"  {j:5} {med[j]:8.1f}   (min {min(results[j]):.1f}, max {max(results[j]):.1f})")
    if "base" in med and "off" in med:
        print(f"tracking off vs main before tracking: {med['off'] / med['base']:.3f}x (target <= 1.05)")
    for n in (1, 16):
        if not {f"on{n}", "off", f"tm{n}", "ba"} <= med.keys():
            continue
        ours = med[f"on{n}"] - med["off"]
        theirs = med[f"tm{n}"] - med["ba"]
        print(
            f"{n:2} frames: rsalloc adds {ours:.1f} ns, tracemalloc adds {theirs:.1f} ns:"
            f" ratio {ours / theirs:.2f} (target <= 0.50)"
        )


if __name__ == "__main__":
    main()
