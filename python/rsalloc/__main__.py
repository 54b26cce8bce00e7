"""`python -m rsalloc {demo,bench}`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """``python -m rsalloc COMMAND``: parses ``argv`` and runs the command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m rsalloc",
        description="rsalloc: explicit, checked native memory for Python.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("demo", help="a tour against real C libraries (libc, zlib)")
    bench = sub.add_parser("bench", help="rsalloc beside ctypes, cffi, numpy, bytearray, pyarrow")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument("--repeats", type=int, default=5, help="interleaved repeats per cell (default 5)")
    bench.add_argument("--quick", action="store_true", help="fewer iterations, for a smoke test")
    bench.add_argument(
        "--processes", type=int, default=1,
        help="run in N fresh processes and report medians across them (default 1)",
    )
    bench.add_argument("jobs", nargs="*", help="job letters to run (default: all)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run

        return run()
    if args.command == "bench":
        from .bench import run as run_bench

        return run_bench(
            jobs=args.jobs, repeats=args.repeats, as_json=args.json, quick=args.quick, processes=args.processes
        )
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
