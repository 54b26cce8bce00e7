"""Where the bytes of a live 16-byte block go (BENCHMARKS.md, memory).

    python scripts/memory_breakdown.py [N]

Holds N (default 1e6) `malloc.allocate(16)` Pointers in a list, as
`python -m rsalloc bench g` does, and splits the RSS growth per block into
CPython's small-object allocator (by size class: Pointer objects and, under
the GIL, records), libc's heap in use (the blocks' chunks), the list, and
the rest (the live-block index's radix leaves, which are pages of their
own). Linux and glibc only (`/proc/self/statm`, `mallinfo2`).
"""

from __future__ import annotations

import ctypes
import gc
import os
import re
import sys
import tempfile

import rsalloc


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _MallInfo2


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pymalloc() -> tuple[dict[int, int], int]:
    """Blocks in use per size class, and the bytes of pymalloc's arenas."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+") as f:
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read()
    classes = {}
    for line in text.splitlines():
        m = re.match(r"\s+\d+\s+(\d+)\s+\d+\s+(\d+)\s+\d+\s*$", line)
        if m:
            classes[int(m.group(1))] = int(m.group(2))
    total = re.search(r"Total\s+=\s+([\d,]+)", text)
    return classes, int(total.group(1).replace(",", "")) if total else 0


def main() -> None:
    n = int(float(sys.argv[1])) if len(sys.argv) > 1 else 1_000_000
    gc.collect()
    r0, (c0, p0), u0 = rss(), pymalloc(), _libc.mallinfo2().uordblks
    held = [rsalloc.malloc.allocate(16) for _ in range(n)]
    r1, (c1, p1), u1 = rss(), pymalloc(), _libc.mallinfo2().uordblks
    per = lambda b: b / n  # noqa: E731
    grown = {size: per(c1.get(size, 0) - c0.get(size, 0)) for size in c1}
    print(f"RSS per block beyond its 16 bytes: {per(r1 - r0) - 16:.1f} B")
    print("pymalloc blocks per live block, by size class:", {k: round(v, 3) for k, v in grown.items() if v > 0.001})
    print(f"pymalloc arenas: {per(p1 - p0):.1f} B")
    print(f"libc heap in use: {per(u1 - u0):.1f} B")
    print(f"the list: {per(sys.getsizeof(held)):.1f} B")
    print(f"the rest (index leaves, ...): {per(r1 - r0) - per(p1 - p0) - per(u1 - u0) - per(sys.getsizeof(held)):.1f} B")
    for p in held:
        rsalloc.free(p)


if __name__ == "__main__":
    main()
