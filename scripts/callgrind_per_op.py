"""Instructions per operation under callgrind, for comparing two builds:

    valgrind --tool=callgrind --callgrind-out-file=cg.0 python scripts/callgrind_per_op.py 0 malloc
    valgrind --tool=callgrind --callgrind-out-file=cg.N python scripts/callgrind_per_op.py 100000 malloc
    # per op: (totals of cg.N - totals of cg.0) / 100000   ("malloc" or "arena")
"""

import sys, rsalloc
a = rsalloc.malloc.allocate; f = rsalloc.free
A = rsalloc.Arena
n = int(sys.argv[1])
what = sys.argv[2]
if what == "malloc":
    for _ in range(n): f(a(64))
else:
    for _ in range(n // 100):
        with A() as ar:
            al = ar.allocate
            for _ in range(100): al(32)
