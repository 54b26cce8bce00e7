"""1000 x arena.allocate(32) inside `with Arena()` against a list of 1000
bytearray(32), in one run: ns per allocation (median of repeats).

    python benches/arena_vs_bytearray.py [--repeat 7] [--number 200]

Both sides include their teardown: the arena's release (and the Pointers'
deallocation), the list's deallocation.
"""

from __future__ import annotations

import argparse
import statistics
import timeit

import rsalloc

N = 1000


def arena_allocate() -> None:
    with rsalloc.Arena() as a:
        allocate = a.allocate
        for _ in range(N):
            allocate(32)


def arena_allocate_kept() -> None:
    with rsalloc.Arena() as a:
        allocate = a.allocate
        [allocate(32) for _ in range(N)]


def bytearray_list() -> None:
    [bytearray(32) for _ in range(N)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--number", type=int, default=200)
    args = ap.parse_args()
    results = {}
    for fn in (arena_allocate, arena_allocate_kept, bytearray_list):
        times = timeit.repeat(fn, number=args.number, repeat=args.repeat)
        results[fn.__name__] = statistics.median(times) / args.number / N * 1e9
    base = results["bytearray_list"]
    print(f"{'case':<22} {'ns/alloc':>9} {'x bytearray':>12}")
    for name, ns in results.items():
        print(f"{name:<22} {ns:>9.1f} {ns / base:>12.2f}")


if __name__ == "__main__":
    main()
