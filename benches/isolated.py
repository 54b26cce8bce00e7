"""The allocation cells of `python -m rsalloc bench` (jobs a and b) in
isolation: only rsalloc and its closest peers, each timed in a tight timeit
loop, interleaved, medians and minimums in ns per operation.

    python benches/isolated.py [REPEATS]

The bench command interleaves every peer of a row; these figures show how
much of a difference the company makes.
"""

import statistics
import sys
import timeit

import rsalloc

m, c, f = rsalloc.malloc.allocate, rsalloc.calloc.allocate, rsalloc.free
Arena = rsalloc.Arena


def arena() -> None:
    with Arena() as a:
        al = a.allocate
        for _ in range(1000):
            al(32)


def balist() -> None:
    [bytearray(32) for _ in range(1000)]


CELLS = {
    "rsalloc malloc 64": ("f(m(64))", 200_000, 1),
    "bytearray 64": ("bytearray(64)", 200_000, 1),
    "rsalloc calloc 64": ("f(c(64))", 200_000, 1),
    "rsalloc Arena 1000x32": ("arena()", 200, 1000),
    "bytearray list 1000x32": ("balist()", 200, 1000),
}


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    res: dict[str, list[float]] = {k: [] for k in CELLS}
    for _ in range(repeats):
        for k, (stmt, n, ops) in CELLS.items():
            t = timeit.timeit(stmt, number=n, globals=globals())
            res[k].append(t / n / ops * 1e9)
    for k, v in res.items():
        print(f"{k:24} median {statistics.median(v):7.1f}  min {min(v):7.1f}")


main()
