"""`python -m rsalloc bench`: rsalloc beside the peers installed here.

Every cell is a `timeit` statement; each repeat runs every cell of a job once,
in turn (interleaved), and the table shows the median over the repeats in ns
per operation, with the ratio of each rsalloc cell to the fastest peer of its
row: the median over the repeats of the ratio within each repeat (a paired
comparison, see `_ratios`). Peers that are not installed are skipped with a
line saying so. Install them all with `pip install ".[bench]"`.
"""

from __future__ import annotations

import array
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import timeit
from dataclasses import dataclass, field
from typing import Any, Callable

import rsalloc
from rsalloc._clib import libc as _libc

np: Any
cffi: Any
pa: Any
try:
    import numpy as _numpy

    np = _numpy
except ImportError:  # pragma: no cover - depends on the machine
    np = None
try:
    import cffi as _cffi  # type: ignore[import-untyped,import-not-found,unused-ignore]

    cffi = _cffi

    _ffi: Any = cffi.FFI()
    _ffi.cdef(
        "void *malloc(size_t); void free(void *);"
        "typedef struct { int32_t x; int32_t y; } bench_pair;"
        "typedef struct { char *appKey; char *accid; char *token; } bench_auth;"
    )
    _cffi_libc: Any = _ffi.dlopen(None)
except ImportError:  # pragma: no cover
    cffi = None
try:
    import pyarrow as _pyarrow  # type: ignore[import-untyped,import-not-found,unused-ignore]

    pa = _pyarrow
except ImportError:  # pragma: no cover
    pa = None


@dataclass
class Cell:
    """One implementation of one row: `stmt` timed with `setup` in `ns`."""

    impl: str
    stmt: str
    setup: str = "pass"
    ops: int = 1  # operations per execution of stmt
    ours: bool = False
    compared: bool = True  # a peer the ratios are taken against
    baseline: str = ""  # an rsalloc cell of the row this one must not be slower than


@dataclass
class Row:
    """One benchmark of a job: its cells, one per implementation measured."""

    job: str
    name: str
    cells: list[Cell]
    medians: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)  # ns per op, one per repeat


def _namespace() -> dict[str, Any]:
    ns: dict[str, Any] = {
        "rsalloc": rsalloc,
        "ctypes": ctypes,
        "array": array,
        "np": np,
        "pa": pa,
        "libc": _libc(),
        "malloc_allocate": rsalloc.malloc.allocate,
        "calloc_allocate": rsalloc.calloc.allocate,
        "rfree": rsalloc.free,
        "Int32": rsalloc.Int32,
        "utf8": rsalloc.to_native_utf8,
        "text": "x" * 31 + "é",  # 32 characters, 33 bytes in UTF-8
        "create_string_buffer": ctypes.create_string_buffer,
        "WORDS": WORDS,
    }
    if cffi is not None:
        ns.update(ffi=_ffi, clib=_cffi_libc, ffi_new=_ffi.new)
    return ns


def _missing() -> list[str]:
    return [name for name, mod in (("numpy", np), ("cffi", cffi), ("pyarrow", pa)) if mod is None]


def _alloc_rows() -> list[Row]:
    rows = []
    for n, label in ((64, "64 B"), (4096, "4 KiB")):
        raw = [
            Cell("rsalloc malloc", f"rfree(malloc_allocate({n}))", ours=True),
            Cell("bytearray", f"bytearray({n})"),
            Cell("ctypes libc malloc/free", f"libc.free(libc.malloc({n}))"),
        ]
        zeroed = [
            Cell("rsalloc calloc", f"rfree(calloc_allocate({n}))", ours=True),
            Cell("bytearray", f"bytearray({n})"),
            Cell("ctypes create_string_buffer", f"create_string_buffer({n})"),
            Cell("ctypes array type", "T()", setup=f"T = ctypes.c_char * {n}"),
        ]
        if np is not None:
            raw.append(Cell("numpy.empty", f"np.empty({n}, np.uint8)"))
            zeroed.append(Cell("numpy.zeros", f"np.zeros({n}, np.uint8)"))
        if cffi is not None:
            raw.append(Cell("cffi malloc/free", f"clib.free(clib.malloc({n}))"))
            zeroed.append(Cell("cffi ffi.new", f"ffi_new('char[]', {n})"))
        if pa is not None:
            raw.append(Cell("pyarrow.allocate_buffer", f"pa.allocate_buffer({n})"))
        rows.append(Row("a", f"alloc+free {label}, raw", raw))
        rows.append(Row("a", f"alloc+free {label}, zeroed", zeroed))
    return rows


def _arena_rows() -> list[Row]:
    loop = "for _ in R: "
    cells = []
    if hasattr(rsalloc, "Arena"):
        cells.append(
            Cell(
                "rsalloc Arena",
                "with Arena() as a:\n    al = a.allocate\n    for _ in R: al(32)",
                setup="Arena = rsalloc.Arena; R = range(1000)",
                ops=1000,
                ours=True,
            )
        )
    cells += [
        Cell("list of bytearray", "[bytearray(32) for _ in R]", setup="R = range(1000)", ops=1000),
        Cell("list of ctypes arrays", "[T() for _ in R]", setup="R = range(1000); T = ctypes.c_char * 32", ops=1000),
        Cell("rsalloc malloc, freed one by one",
             "ps = [al(32) for _ in R]\n" + loop + "pass\nfor p in ps: rfree(p)",
             setup="R = range(1000); al = malloc_allocate", ops=1000),
    ]
    if np is not None:
        cells.append(Cell("list of numpy.empty", "[np.empty(32, np.uint8) for _ in R]", setup="R = range(1000)", ops=1000))
    if cffi is not None:
        cells.append(Cell("list of cffi ffi.new", "[ffi_new('char[]', 32) for _ in R]", setup="R = range(1000)", ops=1000))
    # The malloc-one-by-one cell is rsalloc too, but not the arena: show it, compare only the arena.
    cells[-1 if np is None and cffi is None else len(cells) - 1 - (np is not None) - (cffi is not None)].ours = False
    return [Row("b", "1000 × 32 B, released together", cells)]


def _element_rows() -> list[Row]:
    setup_r = "p = rsalloc.calloc(Int32, 1024); I = range(1024)"
    read = [
        Cell("rsalloc Pointer", "for i in I: p[i]", setup=setup_r, ops=1024, ours=True),
        Cell("ctypes array", "for i in I: p[i]", setup="p = (ctypes.c_int32 * 1024)(); I = range(1024)", ops=1024),
        Cell("memoryview cast", "for i in I: p[i]", setup="p = memoryview(bytearray(4096)).cast('i'); I = range(1024)", ops=1024),
        Cell("array.array", "for i in I: p[i]", setup="p = array.array('i', bytes(4096)); I = range(1024)", ops=1024),
    ]
    write = [
        Cell("rsalloc Pointer", "for i in I: p[i] = i", setup=setup_r, ops=1024, ours=True),
        Cell("ctypes array", "for i in I: p[i] = i", setup="p = (ctypes.c_int32 * 1024)(); I = range(1024)", ops=1024),
        Cell("memoryview cast", "for i in I: p[i] = i", setup="p = memoryview(bytearray(4096)).cast('i'); I = range(1024)", ops=1024),
        Cell("array.array", "for i in I: p[i] = i", setup="p = array.array('i', bytes(4096)); I = range(1024)", ops=1024),
    ]
    if np is not None:
        read.append(Cell("numpy", "for i in I: p[i]", setup="p = np.zeros(1024, np.int32); I = range(1024)", ops=1024))
        write.append(Cell("numpy", "for i in I: p[i] = i", setup="p = np.zeros(1024, np.int32); I = range(1024)", ops=1024))
    return [Row("c", "Int32 element read (1024 elements)", read), Row("c", "Int32 element write (1024 elements)", write)]


COPY_BYTES = 64 << 20


def _copy_rows() -> list[Row]:
    mk = f"N = {COPY_BYTES}; "
    cells = [
        Cell("rsalloc copy_from", "dst.copy_from(src)",
             setup=mk + "src = rsalloc.malloc.allocate(N); dst = rsalloc.malloc.allocate(N); src.fill(1); dst.fill(2)",
             ours=True),
        Cell("ctypes.memmove", "ctypes.memmove(dst, src, N)",
             setup=mk + "src = ctypes.create_string_buffer(b'\\x01' * N, N); dst = ctypes.create_string_buffer(N)"),
        Cell("memoryview slice", "dst[:] = src",
             setup=mk + "src = memoryview(bytearray(b'\\x01') * N); dst = memoryview(bytearray(N))"),
    ]
    if np is not None:
        cells.append(Cell("numpy.copyto", "np.copyto(dst, src)",
                          setup=mk + "src = np.ones(N, np.uint8); dst = np.zeros(N, np.uint8)"))
    return [Row("d", "64 MiB copy", cells)]


def _string_rows() -> list[Row]:
    cells = [
        Cell("rsalloc to_native_utf8", "s = utf8(text); s.to_str(); rfree(s)", ours=True),
        Cell("ctypes create_string_buffer", "b = create_string_buffer(text.encode()); b.value.decode()"),
    ]
    if cffi is not None:
        cells.append(Cell("cffi ffi.new", "c = ffi_new('char[]', text.encode()); ffi.string(c).decode()"))
    return [Row("e", "32-char C string: create, read, free", cells)]


def _tracking_rows() -> list[Row]:
    tracking = getattr(rsalloc, "tracking", None)
    if tracking is None:
        return []
    rows = []
    for frames in (1, 16):
        rows.append(Row("f", f"alloc+free 64 B, tracking on ({frames} frames)", [
            Cell("rsalloc tracked", "rfree(malloc_allocate(64))",
                 setup=f"rsalloc.tracking.enable(frames={frames})", ours=True),
            Cell("bytearray under tracemalloc", "bytearray(64)",
                 setup=f"import tracemalloc; tracemalloc.start({frames})"),
        ]))
    return rows


# What programs write (not single operations): the shapes C interop code
# takes in practice, each beside the idiom a ctypes, cffi or numpy user writes.

ONE_BY_ONE = "rsalloc calloc, freed one by one"


def _per_call_arena_rows() -> list[Row]:
    """Scratch memory for one C call: three 32-byte buffers, zeroed, gone at the end."""
    three = "a.allocate(32); a.allocate(32); a.allocate(32)"
    cells = [
        Cell("rsalloc with Arena()", f"with Arena() as a:\n    {three}", setup="Arena = rsalloc.Arena", ours=True,
             baseline=ONE_BY_ONE),
        # Not a peer: the same allocations freed one by one (the arena's own goal).
        Cell(ONE_BY_ONE,
             "x = al(32); y = al(32); z = al(32); rfree(x); rfree(y); rfree(z)", setup="al = calloc_allocate"),
        Cell("bytearray", "x = bytearray(32); y = bytearray(32); z = bytearray(32); del x, y, z"),
        Cell("ctypes arrays", "x = T(); y = T(); z = T(); del x, y, z", setup="T = ctypes.c_char * 32"),
    ]
    if np is not None:
        cells.append(Cell("numpy.zeros", "x = Z(32, U8); y = Z(32, U8); z = Z(32, U8); del x, y, z",
                          setup="Z = np.zeros; U8 = np.uint8"))
    if cffi is not None:
        cells.append(Cell("cffi ffi.new", "x = ffi_new('char[32]'); y = ffi_new('char[32]'); z = ffi_new('char[32]'); del x, y, z"))
    # The same in a function called once per C call, as programs write it: a
    # function's frame is new at every call (CPython makes its frame object
    # only when asked for one, and `Arena()` records where it was made).
    in_function = [
        Cell(c.impl, "f()", setup=f"{c.setup}\ndef f():\n" + "".join(f"    {line}\n" for line in c.stmt.splitlines()),
             ours=c.ours, compared=c.compared, baseline=c.baseline)
        for c in cells
    ]
    return [Row("h", "per-call scratch: 3 × 32 B, zeroed, released at the end", cells),
            Row("h", "per-call scratch inside a function, one call each", in_function)]


WORDS = [f"word-{i:02d}-é" for i in range(16)]


def _char_array_rows() -> list[Row]:
    """The seed `char**`: 16 Python strings as native UTF-8 in a pointer array, then all freed."""
    setup = "words = WORDS; I = range(16)"
    cells = [
        Cell("rsalloc char** (free(arr[i]))",
             "arr = calloc(PU8, 16)\nfor i in I: arr[i] = utf8(words[i])\nfor i in I: rfree(arr[i])\nrfree(arr)",
             setup=setup + "; calloc = rsalloc.calloc; PU8 = rsalloc.Pointer[rsalloc.Uint8]", ours=True),
        Cell("ctypes c_char_p array",
             "arr = (CP * 16)(*[w.encode() for w in words])\ndel arr",
             setup=setup + "; CP = ctypes.c_char_p"),
        Cell("ctypes string buffers + array",
             "bufs = [csb(w.encode()) for w in words]\narr = (VP * 16)(*[addressof(b) for b in bufs])\ndel arr, bufs",
             setup=setup + "; csb = ctypes.create_string_buffer; VP = ctypes.c_void_p; addressof = ctypes.addressof"),
    ]
    if cffi is not None:
        cells.append(Cell("cffi char*[]",
                          "keep = [ffi_new('char[]', w.encode()) for w in words]\narr = ffi_new('char*[]', keep)\ndel arr, keep",
                          setup=setup))
    return [Row("i", "char** of 16 native strings: build, then free", cells)]


def _bulk_rows() -> list[Row]:
    """A buffer of 1024 Int32 to a Python list and back."""
    lst = "L = list(range(1024))"
    read = [
        Cell("rsalloc p[:]", "p[:]", setup="p = rsalloc.calloc(Int32, 1024)", ours=True),
        Cell("array.tolist()", "a.tolist()", setup="a = array.array('i', bytes(4096))"),
        Cell("ctypes array[:]", "c[:]", setup="c = (ctypes.c_int32 * 1024)()"),
        Cell("memoryview.tolist()", "m.tolist()", setup="m = memoryview(bytearray(4096)).cast('i')"),
    ]
    write = [
        Cell("rsalloc p[:] = list", "p[:] = L", setup=f"{lst}; p = rsalloc.calloc(Int32, 1024)", ours=True),
        Cell("array.array('i', list)", "array.array('i', L)", setup=lst),
        Cell("ctypes array[:] = list", "c[:] = L", setup=f"{lst}; c = (ctypes.c_int32 * 1024)()"),
    ]
    if np is not None:
        read.append(Cell("numpy tolist()", "n.tolist()", setup="n = np.zeros(1024, np.int32)"))
        write.append(Cell("numpy n[:] = list", "n[:] = L", setup=f"{lst}; n = np.zeros(1024, np.int32)"))
    if cffi is not None:
        read.append(Cell("cffi unpack", "ffi.unpack(c, 1024)", setup="c = ffi_new('int32_t[]', 1024)"))
        write.append(Cell("cffi c[0:1024] = list", "c[0:1024] = L", setup=f"{lst}; c = ffi_new('int32_t[]', 1024)"))
    return [Row("j", "bulk read: 1024 Int32 to a list", read), Row("j", "bulk write: a list of 1024 ints", write)]
_STRUCTS = """
class Pair(rsalloc.Struct):
    x: rsalloc.Int32
    y: rsalloc.Int32
class CPair(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int32), ("y", ctypes.c_int32)]
class AuthInfo(rsalloc.Struct):
    appKey: rsalloc.Pointer[rsalloc.Int8]
    accid: rsalloc.Pointer[rsalloc.Int8]
    token: rsalloc.Pointer[rsalloc.Int8]
class CAuthInfo(ctypes.Structure):
    _fields_ = [("appKey", ctypes.c_char_p), ("accid", ctypes.c_char_p), ("token", ctypes.c_char_p)]
KEY, ACCID, TOKEN = "45c6af3c98409b18a84451215d0bdd6e", "user-42", "t\u00f6k\u00e9n"
"""


def _struct_field_rows() -> list[Row]:
    """`p.ref.x` of an rsalloc struct pointer beside cffi's `p.x` and ctypes' `s.x`."""
    ours = _STRUCTS + "p = rsalloc.calloc(Pair)"
    # ctypes' s.x reads an instance, not through a pointer: shown, not compared.
    ctypes_ptr = _STRUCTS + "pp = ctypes.pointer(CPair())"
    read = [
        Cell("rsalloc p.ref.x", "p.ref.x", setup=ours, ours=True),
        Cell("ctypes pp.contents.x", "pp.contents.x", setup=ctypes_ptr),
        Cell("ctypes s.x (instance, not compared)", "s.x", setup=_STRUCTS + "s = CPair()", compared=False),
    ]
    write = [
        Cell("rsalloc p.ref.x = v", "p.ref.x = 5", setup=ours, ours=True),
        Cell("ctypes pp.contents.x = v", "pp.contents.x = 5", setup=ctypes_ptr),
        Cell("ctypes s.x = v (instance, not compared)", "s.x = 5", setup=_STRUCTS + "s = CPair()", compared=False),
    ]
    if cffi is not None:
        read.append(Cell("cffi p.x", "p.x", setup="p = ffi_new('bench_pair *')"))
        write.append(Cell("cffi p.x = v", "p.x = 5", setup="p = ffi_new('bench_pair *')"))
    return [Row("struct_field", "struct field read", read), Row("struct_field", "struct field write", write)]


def _seed_struct_rows() -> list[Row]:
    """The seed example: a struct of three C strings made from str, then all freed."""
    cells = [
        Cell(
            "rsalloc Struct + to_native_utf8",
            "p = calloc(AuthInfo); r = p.ref\n"
            "k = utf8(KEY); a = utf8(ACCID); t = utf8(TOKEN)\n"
            "r.appKey = k; r.accid = a; r.token = t\n"
            "rfree(k); rfree(a); rfree(t); rfree(p)",
            setup=_STRUCTS + "calloc = rsalloc.calloc",
            ours=True,
        ),
        Cell(
            "ctypes Structure of c_char_p",
            "s = CAuthInfo(); s.appKey = KEY.encode(); s.accid = ACCID.encode(); s.token = TOKEN.encode(); del s",
            setup=_STRUCTS,
        ),
    ]
    if cffi is not None:
        cells.append(
            Cell(
                "cffi ffi.new struct + char[]",
                "s = ffi_new('bench_auth *'); k = ffi_new('char[]', KEY.encode()); a = ffi_new('char[]', ACCID.encode())\n"
                "t = ffi_new('char[]', TOKEN.encode()); s.appKey = k; s.accid = a; s.token = t; del s, k, a, t",
                setup=_STRUCTS,
            )
        )
    return [Row("seed_struct", "AuthInfo of three str, then freed", cells)]


JOBS: dict[str, Callable[[], list[Row]]] = {
    "a": _alloc_rows,
    "b": _arena_rows,
    "c": _element_rows,
    "d": _copy_rows,
    "e": _string_rows,
    "f": _tracking_rows,
    "h": _per_call_arena_rows,
    "i": _char_array_rows,
    "j": _bulk_rows,
    "struct_field": _struct_field_rows,
    "seed_struct": _seed_struct_rows,
}

_TEARDOWN = "import tracemalloc; tracemalloc.stop()\ntry:\n    rsalloc.tracking.disable()\nexcept AttributeError:\n    pass"


def _measure(row: Row, repeats: int, quick: bool, ns: dict[str, Any]) -> None:
    target = 0.005 if quick else 0.04  # seconds per measurement
    timers = []
    for cell in row.cells:
        # Each cell runs its setup in a namespace of its own: state such as a
        # started tracemalloc must not leak into the next cell.
        t = timeit.Timer(cell.stmt, setup=cell.setup, globals=dict(ns))
        timers.append(t)
    numbers = []
    for cell, t in zip(row.cells, timers):
        n, _ = t.autorange()
        numbers.append(max(1, int(n * target / 0.2)))
        exec(_TEARDOWN, dict(ns))
    samples: dict[str, list[float]] = {c.impl: [] for c in row.cells}
    for _ in range(repeats):
        for cell, t, n in zip(row.cells, timers, numbers):
            gc.collect()
            secs = t.timeit(n)
            exec(_TEARDOWN, dict(ns))
            samples[cell.impl].append(secs / (n * cell.ops) * 1e9)
    row.samples = samples
    row.medians = {impl: statistics.median(v) for impl, v in samples.items()}


def _peers(row: Row) -> list[str]:
    return [c.impl for c in row.cells if c.compared and not c.ours and not c.impl.startswith("rsalloc")]


def _ratios(row: Row) -> dict[str, float]:
    """Each rsalloc cell's ratio to the fastest peer: the median over the
    repeats of the ratio within one repeat (to the fastest peer of that
    repeat), a paired comparison.

    Why paired: the cells of one repeat run within a fraction of a second of
    each other, while the machine's speed can drift by up to 1.8x over a few
    hundred milliseconds (a shared host). The ratio of two medians taken
    over different moments carries that drift; the ratio within a repeat
    mostly cancels it (docs/decisions.md, "The bench's ratio"). Taking the
    fastest peer per repeat never favours rsalloc: a minimum of noisy
    figures is lower than the figure of the fastest peer's median.
    """
    peers = _peers(row)
    if not peers:
        return {}
    n = len(row.samples[peers[0]])
    out = {}
    for c in row.cells:
        if c.ours:
            mine = row.samples[c.impl]
            out[c.impl] = statistics.median(mine[r] / min(row.samples[p][r] for p in peers) for r in range(n))
    return out


def _baseline_ratios(row: Row) -> dict[str, float]:
    """Each cell's ratio to its baseline cell, paired as in `_ratios`."""
    return {
        c.impl: statistics.median(a / b for a, b in zip(row.samples[c.impl], row.samples[c.baseline]))
        for c in row.cells
        if c.baseline
    }


def _ratios_of_medians(row: Row) -> dict[str, float]:
    """The unpaired figure (the ratio of the medians), kept in the JSON for comparison."""
    peers = _peers(row)
    if not peers:
        return {}
    best = min(row.medians[p] for p in peers)
    return {c.impl: row.medians[c.impl] / best for c in row.cells if c.ours}


def _memory_row() -> dict[str, Any]:
    """Bytes each live allocation costs beyond its 16-byte block, over 1e6 allocations (RSS)."""

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    n = 1_000_000
    out = {}
    cases: list[tuple[str, Callable[[], Any], Callable[[Any], None] | None]] = [
        ("rsalloc malloc(Uint8, 16)", lambda: rsalloc.malloc.allocate(16), rsalloc.free),
        ("ctypes (c_char * 16)()", (ctypes.c_char * 16), None),
    ]
    for name, make, release in cases:
        gc.collect()
        before = rss()
        held = [make() for _ in range(n)]
        after = rss()
        out[name] = (after - before) / n - 16
        if release is not None:
            for p in held:
                release(p)
        del held
        gc.collect()
    return out


def _collect(wanted: list[str], jobs: list[str] | None, repeats: int, quick: bool) -> dict[str, Any]:
    """Measures the wanted jobs in this process: the result as `--json` prints it."""
    ns = _namespace()
    rows: list[Row] = []
    for j in wanted:
        if j in JOBS:
            rows += JOBS[j]()
    for row in rows:
        _measure(row, max(1, repeats), quick, ns)
    memory = _memory_row() if "g" in wanted or not jobs else None
    return {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
        "repeats": repeats,
        "processes": 1,
        "skipped_peers": _missing(),
        "rows": [
            {"job": r.job, "row": r.name, "ns_per_op": r.medians, "ratio_to_fastest_peer": _ratios(r),
             "ratio_of_medians": _ratios_of_medians(r), "ratio_to_baseline": _baseline_ratios(r),
             "baseline": {c.impl: c.baseline for c in r.cells if c.baseline}}
            for r in rows
        ],
        "memory_overhead_bytes": memory,
    }


def _collect_in_processes(argv: list[str], processes: int) -> dict[str, Any]:
    """Runs the bench in `processes` fresh interpreters, one after the other,
    and takes the median across them of every figure: of the ns per
    operation, and of each process's own ratios (each still a ratio to a
    peer measured in the same process).

    Why: a process's memory layout (address randomisation) can make short
    paths run ~15 % slower for its whole life, rsalloc's or a peer's
    (BENCHMARKS.md, per-process modes); one process samples one layout.
    """
    import subprocess

    results = []
    for _ in range(processes):
        out = subprocess.run(
            [sys.executable, "-m", "rsalloc", "bench", "--json", *argv],
            check=True, capture_output=True, text=True,
        )
        results.append(json.loads(out.stdout))
    first = results[0]
    rows = []
    for i, row in enumerate(first["rows"]):
        per = [r["rows"][i] for r in results]
        rows.append({
            "job": row["job"],
            "row": row["row"],
            "ns_per_op": {k: statistics.median(p["ns_per_op"][k] for p in per) for k in row["ns_per_op"]},
            "ratio_to_fastest_peer": {
                k: statistics.median(p["ratio_to_fastest_peer"][k] for p in per) for k in row["ratio_to_fastest_peer"]
            },
            "ratio_per_process": {k: [p["ratio_to_fastest_peer"][k] for p in per] for k in row["ratio_to_fastest_peer"]},
            "ratio_of_medians_per_process": {k: [p["ratio_of_medians"][k] for p in per] for k in row["ratio_of_medians"]},
            "ratio_to_baseline": {
                k: statistics.median(p["ratio_to_baseline"][k] for p in per) for k in row["ratio_to_baseline"]
            },
            "baseline": row["baseline"],
            "ratio_to_baseline_per_process": {
                k: [p["ratio_to_baseline"][k] for p in per] for k in row["ratio_to_baseline"]
            },
        })
    memory = first["memory_overhead_bytes"]
    if memory:
        memory = {k: statistics.median(r["memory_overhead_bytes"][k] for r in results) for k in memory}
    return {**first, "processes": processes, "rows": rows, "memory_overhead_bytes": memory}


def run(
    jobs: list[str] | None = None,
    repeats: int = 5,
    as_json: bool = False,
    quick: bool = False,
    processes: int = 1,
) -> int:
    """``python -m rsalloc bench``: runs ``jobs`` (all by default), ``repeats``
    times each in each of ``processes`` processes, and prints the table (or
    JSON); returns the exit status."""
    wanted = jobs or list(JOBS)
    unknown = [j for j in wanted if j not in JOBS and j != "g"]
    if unknown:
        print(f"unknown job(s) {unknown}: choose from {sorted(JOBS)} and g (memory)", file=sys.stderr)
        return 2
    if processes < 1:
        print("--processes must be at least 1", file=sys.stderr)
        return 2
    if processes == 1:
        result = _collect(wanted, jobs, repeats, quick)
    else:
        argv = ["--repeats", str(repeats), *(["--quick"] if quick else []), *(jobs or [])]
        result = _collect_in_processes(argv, processes)
    if as_json:
        print(json.dumps(result, indent=2))
        return 0
    for name in result["skipped_peers"]:
        print(f"(peer {name} is not installed: its cells are skipped; pip install \".[bench]\")")
    across = f", medians across {processes} processes" if processes > 1 else ""
    print(f"rsalloc bench: median ns per operation over {repeats} interleaved repeats{across}; "
          "ratio = median over the repeats of rsalloc / the fastest peer of the same repeat\n")
    for r in result["rows"]:
        ratios = r["ratio_to_fastest_peer"]
        print(f"[{r['job']}] {r['row']}")
        for impl, ns in sorted(r["ns_per_op"].items(), key=lambda kv: kv[1]):
            mark = f"  ratio {ratios[impl]:.2f}x" if impl in ratios else ""
            if impl in r.get("ratio_per_process", {}):
                mark += " (" + ", ".join(f"{x:.2f}" for x in r["ratio_per_process"][impl]) + ")"
            if impl in r.get("ratio_to_baseline", {}):
                mark += f"; {r['ratio_to_baseline'][impl]:.2f}x of '{r['baseline'][impl]}'"
                if impl in r.get("ratio_to_baseline_per_process", {}):
                    mark += " (" + ", ".join(f"{x:.2f}" for x in r["ratio_to_baseline_per_process"][impl]) + ")"
            print(f"    {impl:<34} {ns:>12.1f} ns{mark}")
    memory = result["memory_overhead_bytes"]
    if memory:
        print("\n[g] bytes per live allocation beyond a 16-byte block (RSS over 1e6 allocations)")
        for k, v in memory.items():
            print(f"    {k:<34} {v:>12.1f} B")
    return 0
