"""Instructions per operation under callgrind, for comparing two builds.

    python scripts/callgrind_per_op.py                 # every pattern, a table
    python scripts/callgrind_per_op.py arena struct_read   # some of them
    python scripts/callgrind_per_op.py --list

Each pattern runs its statement in a loop under callgrind twice (N and 2N
iterations, after a warm-up of N); instructions per operation are the
difference divided by N, minus the same figure for an empty statement (the
loop itself). Deterministic for one binary, unlike timings (under
PYTHONHASHSEED=0, which the runs get unless it is set).

    python scripts/callgrind_per_op.py --run NAME ITERATIONS   # what callgrind runs
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

SETUP = """
import rsalloc, ctypes
from rsalloc import Int32, Uint8
malloc_allocate = rsalloc.malloc.allocate; calloc_allocate = rsalloc.calloc.allocate
rfree = rsalloc.free; utf8 = rsalloc.to_native_utf8; Arena = rsalloc.Arena
calloc = rsalloc.calloc; PU8 = rsalloc.Pointer[rsalloc.Uint8]
WORDS = [f"word-{i:02d}-\\u00e9" for i in range(16)]; words = WORDS; I = range(16)
class Pair(rsalloc.Struct):
    x: rsalloc.Int32
    y: rsalloc.Int32
class AuthInfo(rsalloc.Struct):
    appKey: rsalloc.Pointer[rsalloc.Int8]
    accid: rsalloc.Pointer[rsalloc.Int8]
    token: rsalloc.Pointer[rsalloc.Int8]
class CAuthInfo(ctypes.Structure):
    _fields_ = [("appKey", ctypes.c_char_p), ("accid", ctypes.c_char_p), ("token", ctypes.c_char_p)]
KEY, ACCID, TOKEN = "45c6af3c98409b18a84451215d0bdd6e", "user-42", "t\\u00f6k\\u00e9n"
T32 = ctypes.c_char * 32; CP = ctypes.c_char_p
p = rsalloc.calloc(Pair); r = p.ref
import threading; Lock = threading.Lock; LK = Lock()
P1024 = rsalloc.calloc(Int32, 1024); L = list(range(1024))
Q = rsalloc.calloc(Int32, 4); A = rsalloc.Arena(); QA = A(Int32, 4)
S3 = rsalloc.calloc(AuthInfo); R3 = S3.ref; K3 = utf8(KEY); ARR = rsalloc.calloc(PU8, 16); ARR[0] = K3
"""

try:
    import cffi

    _cffi_setup = """
import cffi
ffi = cffi.FFI()
ffi.cdef("typedef struct { int32_t x; int32_t y; } bench_pair;")
c = ffi.new('bench_pair *')
"""
except ImportError:  # pragma: no cover
    _cffi_setup = None

# name: (statement, iterations); the statements are the bench jobs' (rsalloc.bench).
PATTERNS: dict[str, tuple[str, int]] = {
    "empty": ("pass", 20000),
    "malloc64": ("rfree(malloc_allocate(64))", 20000),
    "calloc64": ("rfree(calloc_allocate(64))", 20000),
    "bytearray64": ("bytearray(64)", 20000),
    "arena_empty": ("with Arena() as a: pass", 20000),
    "arena": ("with Arena() as a:\n    a.allocate(32); a.allocate(32); a.allocate(32)", 20000),
    "calloc3_freed": ("x = calloc_allocate(32); y = calloc_allocate(32); z = calloc_allocate(32); rfree(x); rfree(y); rfree(z)", 20000),
    "arena_wrap": ("with Arena(calloc) as a:\n    a.allocate(32); a.allocate(32); a.allocate(32)", 20000),
    "arena_new": ("Arena().release_all()", 20000),
    "arena_ctor": ("Arena()", 20000),
    "arena_with_held": ("with A: pass", 20000),
    # What a `with` costs CPython itself, around the cheapest C context
    # manager at hand: the floor under any `with Arena() as a:` (job h).
    "with_lock": ("with LK: pass", 20000),
    "with_new_lock": ("with Lock() as a: pass", 20000),
    "utf8": ("rfree(utf8(KEY))", 20000),
    # The seed struct's operations one by one, and the floor under two
    # calls of builtin functions of one argument each.
    "two_builtin_calls": ("id(len(KEY))", 20000),
    "utf8_short": ("rfree(utf8(ACCID))", 20000),
    "calloc_struct": ("rfree(calloc(AuthInfo))", 20000),
    "calloc24": ("rfree(calloc_allocate(24))", 20000),
    "pointer_field_set": ("R3.appKey = K3", 20000),
    "pointer_item_set": ("ARR[1] = K3", 20000),
    "pointer_item_get": ("ARR[0]", 20000),
    "seed_struct": (
        "p2 = calloc(AuthInfo); r2 = p2.ref\n"
        "k = utf8(KEY); a = utf8(ACCID); t = utf8(TOKEN)\n"
        "r2.appKey = k; r2.accid = a; r2.token = t\n"
        "rfree(k); rfree(a); rfree(t); rfree(p2)",
        5000,
    ),
    "seed_char_pp": (
        "arr = calloc(PU8, 16)\nfor i in I: arr[i] = utf8(words[i])\nfor i in I: rfree(arr[i])\nrfree(arr)",
        2000,
    ),
    "ctypes_seed_struct": (
        "s = CAuthInfo(); s.appKey = KEY.encode(); s.accid = ACCID.encode(); s.token = TOKEN.encode(); del s",
        5000,
    ),
    "ctypes_char_pp": ("arr = (CP * 16)(*[w.encode() for w in words])\ndel arr", 2000),
    "ctypes_arrays3": ("x = T32(); y = T32(); z = T32(); del x, y, z", 20000),
    "p_ref": ("p.ref", 20000),
    "struct_read": ("p.ref.x", 20000),
    "struct_write": ("p.ref.x = 5", 20000),
    "view_read": ("r.x", 20000),
    "view_write": ("r.x = 5", 20000),
    "item_read": ("Q[1]", 20000),
    "item_write": ("Q[1] = 5", 20000),
    "arena_item_read": ("QA[1]", 20000),
    "arena_item_write": ("QA[1] = 5", 20000),
    "arena_allocate": ("A.allocate(32)", 20000),
    "elem_read": ("P1024[5]", 20000),
    "elem_write": ("P1024[5] = 7", 20000),
    "bulk_read": ("P1024[:]", 1000),
    "bulk_write": ("P1024[:] = L", 1000),
}
# Run once before a pattern's warm-up: the state a program may have left.
PRELUDES: dict[str, str] = {
    # Job b's 1000-block arenas first (as `python -m rsalloc bench` runs
    # them): their first chunk, with its long list of released blocks, then
    # serves per-call arenas (docs/decisions.md, ninth session).
    "arena_after_big": (
        "for _ in range(300):\n"
        "    with Arena() as big:\n"
        "        for _ in range(1000): big.allocate(32)\n"
    ),
}
PATTERNS["arena_after_big"] = (PATTERNS["arena"][0], 20000)
# The per-call patterns inside a function called once each (job h's second
# row): a new frame per call, as programs run them.
for _name in ("arena", "calloc3_freed", "ctypes_arrays3"):
    PRELUDES[_name + "_fn"] = "def f():\n" + "".join(f"    {l}\n" for l in PATTERNS[_name][0].splitlines())
    PATTERNS[_name + "_fn"] = ("f()", 20000)
if _cffi_setup is not None:
    PATTERNS["cffi_read"] = ("c.x", 20000)
    PATTERNS["cffi_write"] = ("c.x = 5", 20000)


def run(name: str, n: int) -> None:
    stmt, _ = PATTERNS[name]
    ns: dict[str, object] = {}
    exec(SETUP + (_cffi_setup or "") if name.startswith("cffi") else SETUP, ns)
    exec(PRELUDES.get(name, ""), ns)
    body = "\n".join("        " + line for line in stmt.splitlines())
    exec(f"def loop(n):\n    for _ in range(n):\n{body}\n", ns)
    loop = ns["loop"]
    loop(PATTERNS[name][1])  # warm-up: caches, free lists, kept chunks
    loop(n)  # type: ignore[operator]


def instructions(name: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cg.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
             __file__, "--run", name, str(n)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # A fixed str hash: with a random one, dict probes (globals,
            # type dicts) moved a pattern's count by up to ±15 from run to run.
            env={**os.environ, "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0")},
        )
        with open(out) as f:
            m = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
        assert m, "no totals in callgrind output"
        return int(m.group(1))


def per_op(name: str) -> float:
    n = PATTERNS[name][1]
    return (instructions(name, 2 * n) - instructions(name, n)) / n


def main(argv: list[str]) -> None:
    if argv[:1] == ["--run"]:
        run(argv[1], int(argv[2]))
        return
    if argv[:1] == ["--list"]:
        print("\n".join(PATTERNS))
        return
    names = argv or [k for k in PATTERNS if k != "empty"]
    loop = per_op("empty")
    print(f"{'pattern':16} instructions/op (loop of {loop:.0f} subtracted)")
    for name in names:
        print(f"{name:16} {per_op(name) - loop:10.0f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
