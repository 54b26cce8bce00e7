"""Two struct fields whose names a direct-mapped cache indexed by address
bits 4-7 would put in one slot, stored in turn, against one field stored
twice (docs/decisions.md, "The field cache").

    python benches/field_cache.py

Prints the median of 15 paired ratios: about 1.0 when both names stay in
the field cache, above it when they evict each other.
"""

from __future__ import annotations

import statistics
import sys
import timeit

import rsalloc

names = [sys.intern(f"fld{i}") for i in range(64)]
by_bits: dict[int, list[str]] = {}
for n in names:
    by_bits.setdefault((id(n) >> 4) & 15, []).append(n)
first, second = next(v[:2] for v in by_bits.values() if len(v) >= 2)
S = type("S", (rsalloc.Struct,), {"__annotations__": {first: rsalloc.Int32, second: rsalloc.Int32}})
p = rsalloc.calloc(S)
ns = {"r": p.ref}
both = timeit.Timer(f"r.{first} = 1; r.{second} = 2", globals=ns)
one = timeit.Timer(f"r.{first} = 1; r.{first} = 2", globals=ns)
ratios = [both.timeit(100_000) / one.timeit(100_000) for _ in range(15)]
print(f"fields {first!r} and {second!r} (address bits 4-7 equal): "
      f"two fields / one field twice = {statistics.median(ratios):.2f}")
rsalloc.free(p)
