"""One hot loop per mode, for instruction counts under callgrind.

    valgrind --tool=callgrind --callgrind-out-file=cg.MODE python benches/profile_loop.py MODE
    callgrind_annotate cg.MODE

Per-iteration cost = (total of MODE - total of `empty`) / N. Modes:
malloc, calloc, malloc4k, calloc4k, arena, read, write (rsalloc); bytearray,
balist, ctarr, ctarr4k, mv, mvwrite (peers); empty.
"""

import ctypes
import sys

import rsalloc

N = 200_000


def main(mode: str) -> None:
    R = range(N)
    al, ca, fr = rsalloc.malloc.allocate, rsalloc.calloc.allocate, rsalloc.free
    if mode == "empty":
        for _ in R:
            pass
    elif mode == "malloc":
        for _ in R:
            fr(al(64))
    elif mode == "calloc":
        for _ in R:
            fr(ca(64))
    elif mode == "malloc4k":
        for _ in R:
            fr(al(4096))
    elif mode == "calloc4k":
        for _ in R:
            fr(ca(4096))
    elif mode == "arena":
        with rsalloc.Arena() as a:
            aa = a.allocate
            for _ in R:
                aa(32)
    elif mode == "read":
        p = rsalloc.calloc(rsalloc.Int32, 1024)
        for _ in R:
            p[5]
        fr(p)
    elif mode == "write":
        p = rsalloc.calloc(rsalloc.Int32, 1024)
        for _ in R:
            p[5] = 7
        fr(p)
    elif mode == "bytearray":
        for _ in R:
            bytearray(64)
    elif mode == "balist":
        for _ in range(N // 1000):
            [bytearray(32) for _ in range(1000)]
    elif mode in ("ctarr", "ctarr4k"):
        T = ctypes.c_char * (64 if mode == "ctarr" else 4096)
        for _ in R:
            T()
    elif mode == "mv":
        m = memoryview(bytearray(4096)).cast("i")
        for _ in R:
            m[5]
    elif mode == "mvwrite":
        m = memoryview(bytearray(4096)).cast("i")
        for _ in R:
            m[5] = 7
    else:
        raise SystemExit(f"unknown mode {mode!r}")


main(sys.argv[1])
