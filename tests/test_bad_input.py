"""Bad input to every public callable of the foundation (DESIGN §2-§4, §8).

One row per mistake: the call and the exception DESIGN.md (or
docs/decisions.md where it is silent) documents for it. For each row the test
asserts that exact exception and that nothing changed: the counters of
rsalloc, malloc and calloc, the bytes of every pointer involved, the states of
the dead and detached pointers, and the foreign memory.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import rsalloc
from rsalloc import (
    Bool,
    DoubleFreeError,
    Float32,
    Int32,
    Int64,
    NullPointerError,
    OwnershipError,
    Pointer,
    Uint8,
    Uint16,
    UseAfterFreeError,
    Void,
    alignof,
    calloc,
    free,
    malloc,
    nullptr,
    sizeof,
    to_native_utf8,
    to_native_utf16,
)

from conftest import LIBC, snapshot

HUGE = [2**63, 2**64, 2**200]


@dataclass
class Ctx:
    p: Pointer  # live Int32 x 4: [1, 2, 3, 4]
    u8: Pointer  # live Uint8 x 8: b"abcdefg\0"
    f32: Pointer  # live Float32 x 2
    flag: Pointer  # live Bool x 2
    slots: Pointer  # live Pointer[Int32] x 2 (NULL)
    empty: Pointer  # live Int32 x 0
    dead: Pointer  # freed Int32 x 4
    detached: Pointer  # detached Int32 x 2 (C frees it at teardown)
    foreign: Pointer  # from_address of 16 libc bytes, count 16
    unknown: Pointer  # from_address of the same bytes, count unknown
    raw: int  # the libc bytes behind foreign/unknown
    orphan: int  # libc bytes nobody adopted (a row may try to)
    exported: Pointer  # live Int32 x 4 with a memoryview open
    view: memoryview

    def pointers(self) -> list[Pointer]:
        return [self.p, self.u8, self.f32, self.flag, self.slots, self.empty, self.exported, self.foreign]


@pytest.fixture
def c() -> Iterator[Ctx]:
    p = malloc(Int32, 4)
    p[:] = [1, 2, 3, 4]
    u8 = calloc(Uint8, 8)
    u8.write_bytes(b"abcdefg")
    dead = malloc(Int32, 4)
    free(dead)
    detached = malloc(Int32, 2)
    detached.detach()
    raw = LIBC.malloc(16)
    LIBC.memset(raw, 0x5A, 16)
    orphan = LIBC.malloc(8)
    exported = calloc(Int32, 4)
    ctx = Ctx(p, u8, calloc(Float32, 2), calloc(Bool, 2), calloc(Pointer[Int32], 2), malloc(Int32, 0), dead,
              detached, Pointer.from_address(raw, Uint8, 16), Pointer.from_address(raw, Uint8), raw, orphan,
              exported, memoryview(exported))
    yield ctx
    ctx.view.release()
    for q in (ctx.p, ctx.u8, ctx.f32, ctx.flag, ctx.slots, ctx.empty, ctx.exported):
        free(q)
    LIBC.free(detached.address)
    LIBC.free(raw)
    LIBC.free(orphan)


Row = tuple[str, Callable[[Ctx], Any], type[BaseException]]

ARENAS: list[tuple[str, Callable[[], rsalloc.Arena]]] = [
    ("Arena()", rsalloc.Arena),
    ("Arena(malloc)", lambda: rsalloc.Arena(malloc)),
]
DIAGNOSTIC = ("diagnostic_malloc", "diagnostic_calloc", "adaptive_malloc", "adaptive_calloc")


def closed(arena: rsalloc.Arena) -> rsalloc.Arena:
    arena.release_all()
    return arena


# Arena blocks the rows misuse, made once (before any row measures): a live
# block of each kind of arena and a block of a released one. The arenas stay
# referenced for the whole session so that nothing changes under a row.
KEPT_ARENAS = {k: m() for k, m in ARENAS}
LIVE_ARENA_BLOCK = {k: a.allocate(8) for k, a in KEPT_ARENAS.items()}
def teardown_module() -> None:
    for a in KEPT_ARENAS.values():
        a.release_all()


RELEASED_ARENAS = {k: m() for k, m in ARENAS}
RELEASED_ARENA_BLOCK = {k: a.allocate(8) for k, a in RELEASED_ARENAS.items()}
for _a in RELEASED_ARENAS.values():
    _a.release_all()


def _setitem(target: str, index: Any, value: Any) -> Callable[[Ctx], Any]:
    return lambda c: getattr(c, target).__setitem__(index, value)


ROWS: list[Row] = [
    # --- Allocator.__call__ (malloc and calloc alike) ---
    *[(f"{a.name}(Int32, -1)", lambda c, a=a: a(Int32, -1), ValueError) for a in (malloc, calloc)],
    *[(f"{a.name}(Int32, {n})", lambda c, a=a, n=n: a(Int32, n), OverflowError) for a in (malloc, calloc) for n in HUGE],
    ("malloc(Int64, 2**61)", lambda c: malloc(Int64, 2**61), OverflowError),
    ("malloc(Int32, -(2**200))", lambda c: malloc(Int32, -(2**200)), OverflowError),
    ("malloc(Uint8, 2**62)", lambda c: malloc(Uint8, 2**62), MemoryError),
    ("calloc(Int32, 2**60)", lambda c: calloc(Int32, 2**60), MemoryError),
    *[(f"malloc(Int32, {v!r})", lambda c, v=v: malloc(Int32, v), TypeError) for v in (1.5, 4.0, "4", None, b"4", [4])],
    *[(f"malloc({t!r}, 1)", lambda c, t=t: malloc(t, 1), TypeError)
      for t in (int, float, "Int32", 4, object, rsalloc.NativeType, Void, Pointer, ctypes.c_int32(1))],
    *[(f"malloc(Int32, 1, alignment={al!r})", lambda c, al=al: malloc(Int32, 1, alignment=al), ValueError)
      for al in (0, 3, 6, 12, 24, 1000, -8, -(2**63))],
    ("malloc(Int32, 1, alignment=2**64)", lambda c: malloc(Int32, 1, alignment=2**64), OverflowError),
    ("malloc(Int32, 1, alignment=2**200)", lambda c: malloc(Int32, 1, alignment=2**200), OverflowError),
    *[(f"malloc(Int32, 1, alignment={al!r})", lambda c, al=al: malloc(Int32, 1, alignment=al), TypeError)
      for al in (1.5, 8.0, "8")],
    ("malloc(Int32, 1, 8)", lambda c: malloc(Int32, 1, 8), TypeError),
    ("malloc(Int32, 1, align=8)", lambda c: malloc(Int32, 1, align=8), TypeError),
    # --- Allocator.allocate ---
    ("malloc.allocate(-1)", lambda c: malloc.allocate(-1), ValueError),
    *[(f"calloc.allocate({n})", lambda c, n=n: calloc.allocate(n), OverflowError) for n in HUGE],
    ("malloc.allocate(2**62)", lambda c: malloc.allocate(2**62), MemoryError),
    ("calloc.allocate(2**62, alignment=4096)", lambda c: calloc.allocate(2**62, alignment=4096), MemoryError),
    ("malloc.allocate(2**63 - 1, alignment=16)", lambda c: malloc.allocate(2**63 - 1, alignment=16), OverflowError),
    *[(f"malloc.allocate({v!r})", lambda c, v=v: malloc.allocate(v), TypeError) for v in (1.5, "8", None)],
    ("malloc.allocate(8, alignment=3)", lambda c: malloc.allocate(8, alignment=3), ValueError),
    ("malloc.allocate()", lambda c: malloc.allocate(), TypeError),
    # --- Allocator.free and rsalloc.free ---
    *[(f"{name}(dead)", lambda c, f=f: f(c.dead), DoubleFreeError)
      for name, f in (("malloc.free", malloc.free), ("calloc.free", calloc.free), ("free", free))],
    *[(f"{name}({what})", lambda c, f=f, what=what: f(getattr(c, what) if what != "p+1" else c.p + 1), OwnershipError)
      for name, f in (("malloc.free", malloc.free), ("free", free))
      for what in ("foreign", "unknown", "detached", "p+1")],
    *[(f"{name}({v!r})", lambda c, f=f, v=v: f(v), TypeError)
      for name, f in (("malloc.free", malloc.free), ("free", free)) for v in (0, None, "p", 1.5)],
    ("free(p.address)", lambda c: free(c.p.address), TypeError),
    # --- Allocator.realloc ---
    ("malloc.realloc(p, -1)", lambda c: malloc.realloc(c.p, -1), ValueError),
    *[(f"malloc.realloc(p, {n})", lambda c, n=n: malloc.realloc(c.p, n), OverflowError) for n in HUGE],
    ("malloc.realloc(p, 2**60)", lambda c: malloc.realloc(c.p, 2**60), MemoryError),
    ("calloc.realloc(p, 2**60)", lambda c: calloc.realloc(c.p, 2**60), MemoryError),
    ("malloc.realloc(p, 1.5)", lambda c: malloc.realloc(c.p, 1.5), TypeError),
    ("malloc.realloc(p, '8')", lambda c: malloc.realloc(c.p, "8"), TypeError),
    ("malloc.realloc(dead, 8)", lambda c: malloc.realloc(c.dead, 8), DoubleFreeError),
    ("malloc.realloc(foreign, 8)", lambda c: malloc.realloc(c.foreign, 8), OwnershipError),
    ("malloc.realloc(detached, 8)", lambda c: malloc.realloc(c.detached, 8), OwnershipError),
    ("malloc.realloc(p+1, 8)", lambda c: malloc.realloc(c.p + 1, 8), OwnershipError),
    ("malloc.realloc(exported, 8)", lambda c: malloc.realloc(c.exported, 8), BufferError),
    ("malloc.realloc(p.address, 8)", lambda c: malloc.realloc(c.p.address, 8), TypeError),
    # --- Allocator.adopt: a failed adopt must not take the block ---
    ("malloc.adopt(0, Uint8, 1)", lambda c: malloc.adopt(0, Uint8, 1), NullPointerError),
    ("malloc.adopt(-1, Uint8, 1)", lambda c: malloc.adopt(-1, Uint8, 1), ValueError),
    # (2**63 is a valid usize: adopt cannot tell a bogus address, see docs/safety.md)
    *[(f"malloc.adopt({n}, Uint8, 1)", lambda c, n=n: malloc.adopt(n, Uint8, 1), OverflowError) for n in HUGE[1:]],
    *[(f"malloc.adopt({v!r}, Uint8, 1)", lambda c, v=v: malloc.adopt(v, Uint8, 1), TypeError)
      for v in (1.5, "0x10")],
    # None is NULL in every address argument (DESIGN §3): adopting it is adopting 0.
    ("malloc.adopt(None, Uint8, 1)", lambda c: malloc.adopt(None, Uint8, 1), NullPointerError),
    ("malloc.adopt(orphan, Uint8, -1)", lambda c: malloc.adopt(c.orphan, Uint8, -1), ValueError),
    ("malloc.adopt(orphan, Int32, 2**62)", lambda c: malloc.adopt(c.orphan, Int32, 2**62), OverflowError),
    ("malloc.adopt(orphan, Uint8, 2**64)", lambda c: malloc.adopt(c.orphan, Uint8, 2**64), OverflowError),
    ("malloc.adopt(orphan, Uint8, 1.5)", lambda c: malloc.adopt(c.orphan, Uint8, 1.5), TypeError),
    ("malloc.adopt(orphan, int, 1)", lambda c: malloc.adopt(c.orphan, int, 1), TypeError),
    ("malloc.adopt(orphan, 'Uint8', 1)", lambda c: malloc.adopt(c.orphan, "Uint8", 1), TypeError),
    ("malloc.adopt(orphan, Int32)", lambda c: malloc.adopt(c.orphan, Int32), TypeError),  # no count: only C strings
    ("malloc.adopt(p.address + 4, Uint8, 4)", lambda c: malloc.adopt(c.p.address + 4, Uint8, 4), OwnershipError),
    ("malloc.adopt(p.address, Int32, 4)", lambda c: malloc.adopt(c.p.address, Int32, 4), OwnershipError),
    # --- Allocator.clone ---
    ("malloc.clone(dead)", lambda c: malloc.clone(c.dead), UseAfterFreeError),
    ("malloc.clone(unknown)", lambda c: malloc.clone(c.unknown), TypeError),
    ("malloc.clone(nullptr)", lambda c: malloc.clone(nullptr), TypeError),
    ("malloc.clone(b'abc')", lambda c: malloc.clone(b"abc"), TypeError),
    ("malloc.clone(p.address)", lambda c: malloc.clone(c.p.address), TypeError),
    # --- Pointer.__getitem__ ---
    *[(f"p[{i!r}]", lambda c, i=i: c.p[i], IndexError) for i in (4, -5, 2**31, 2**63, 2**64, 2**200, -(2**200))],
    *[(f"p[{i!r}]", lambda c, i=i: c.p[i], TypeError) for i in (1.5, "0", None, b"0", (0,))],
    ("empty[0]", lambda c: c.empty[0], IndexError),
    ("dead[0]", lambda c: c.dead[0], UseAfterFreeError),
    ("dead[:]", lambda c: c.dead[:], UseAfterFreeError),
    ("dead[-1]", lambda c: c.dead[-1], UseAfterFreeError),
    ("nullptr[0]", lambda c: nullptr[0], NullPointerError),
    ("from_address(0, Int32)[0]", lambda c: Pointer.from_address(0, Int32)[0], NullPointerError),
    ("from_address(None, Int32)[0]", lambda c: Pointer.from_address(None, Int32)[0], NullPointerError),
    ("p.cast(Void)[0]", lambda c: c.p.cast(Void)[0], TypeError),
    ("unknown[-1]", lambda c: c.unknown[-1], IndexError),
    ("unknown[:]", lambda c: c.unknown[:], TypeError),
    ("len(unknown)", lambda c: len(c.unknown), TypeError),
    # --- Pointer.__setitem__ (and slices: convert all, write none on failure) ---
    *[(f"p[0] = {v!r}", _setitem("p", 0, v), OverflowError) for v in (2**31, -(2**31) - 1, 2**64, 2**200)],
    *[(f"p[0] = {v!r}", _setitem("p", 0, v), TypeError) for v in (1.5, "1", None, b"1", [1], 1j)],
    *[(f"p[{i!r}] = 1", _setitem("p", i, 1), IndexError) for i in (4, -5, 2**63)],
    ("p['0'] = 1", _setitem("p", "0", 1), TypeError),
    ("u8[0] = 256", _setitem("u8", 0, 256), OverflowError),
    ("u8[0] = -1", _setitem("u8", 0, -1), OverflowError),
    ("f32[0] = 1e39", _setitem("f32", 0, 1e39), OverflowError),
    ("f32[0] = '1.0'", _setitem("f32", 0, "1.0"), TypeError),
    ("f32[0] = None", _setitem("f32", 0, None), TypeError),
    ("flag[0] = 2", _setitem("flag", 0, 2), OverflowError),
    ("flag[0] = 0.0", _setitem("flag", 0, 0.0), TypeError),
    ("flag[0] = 'yes'", _setitem("flag", 0, "yes"), TypeError),
    ("slots[0] = -1", _setitem("slots", 0, -1), OverflowError),
    ("slots[0] = 2**64", _setitem("slots", 0, 2**64), OverflowError),
    ("slots[0] = 1.5", _setitem("slots", 0, 1.5), TypeError),
    ("slots[0] = 'p'", _setitem("slots", 0, "p"), TypeError),
    ("slots[0] = dead", lambda c: c.slots.__setitem__(0, c.dead), UseAfterFreeError),
    ("p[0:2] = [1]", _setitem("p", slice(0, 2), [1]), ValueError),
    ("p[0:2] = [9, 2**40]", _setitem("p", slice(0, 2), [9, 2**40]), OverflowError),
    ("p[0:2] = [9, 'x']", _setitem("p", slice(0, 2), [9, "x"]), TypeError),
    ("p[0:2] = 5", _setitem("p", slice(0, 2), 5), TypeError),
    ("dead[0] = 1", _setitem("dead", 0, 1), UseAfterFreeError),
    ("dead[0:1] = [1]", _setitem("dead", slice(0, 1), [1]), UseAfterFreeError),
    ("nullptr.cast(Int32)[0] = 1", lambda c: nullptr.cast(Int32).__setitem__(0, 1), NullPointerError),
    ("p.cast(Void)[0] = 1", lambda c: c.p.cast(Void).__setitem__(0, 1), TypeError),
    # --- Pointer.value ---
    ("dead.value", lambda c: c.dead.value, UseAfterFreeError),
    ("nullptr.value", lambda c: nullptr.value, NullPointerError),
    ("empty.value", lambda c: c.empty.value, IndexError),
    ("p.value = 'x'", lambda c: setattr(c.p, "value", "x"), TypeError),
    ("p.value = 2**40", lambda c: setattr(c.p, "value", 2**40), OverflowError),
    ("dead.value = 1", lambda c: setattr(c.dead, "value", 1), UseAfterFreeError),
    # --- Pointer.offset / + ---
    *[(f"p.offset({n!r})", lambda c, n=n: c.p.offset(n), IndexError) for n in (5, -1, -(2**40))],
    *[(f"p + {n!r}", lambda c, n=n: c.p + n, IndexError) for n in (5, -1)],
    *[(f"p + {n!r}", lambda c, n=n: c.p + n, OverflowError) for n in (2**63, 2**200)],
    *[(f"p + {v!r}", lambda c, v=v: c.p + v, TypeError) for v in (1.5, "1", None, Int32)],
    ("p.offset(1.5)", lambda c: c.p.offset(1.5), TypeError),
    ("dead + 1", lambda c: c.dead + 1, UseAfterFreeError),
    ("dead.offset(0)", lambda c: c.dead.offset(0), UseAfterFreeError),
    ("unknown.offset(-1)", lambda c: c.unknown.offset(-1), IndexError),
    # --- Pointer.cast ---
    *[(f"p.cast({t!r})", lambda c, t=t: c.p.cast(t), TypeError) for t in (int, "Int32", None, 4, Pointer)],
    ("dead.cast(Uint8)", lambda c: c.dead.cast(Uint8), UseAfterFreeError),
    # --- Pointer.to_str ---
    ("p.to_str()", lambda c: c.p.to_str(), TypeError),
    ("f32.to_str()", lambda c: c.f32.to_str(), TypeError),
    ("u8.to_str(length=-1)", lambda c: c.u8.to_str(length=-1), ValueError),
    ("u8.to_str(length=9)", lambda c: c.u8.to_str(length=9), IndexError),
    ("u8.to_str(length=2**64)", lambda c: c.u8.to_str(length=2**64), OverflowError),
    ("u8.to_str(length=1.5)", lambda c: c.u8.to_str(length=1.5), TypeError),
    ("u8.to_str(errors=None)", lambda c: c.u8.to_str(errors=None), TypeError),
    ("p.cast(Uint16).to_str(length=17)", lambda c: c.p.cast(Uint16).to_str(length=17), IndexError),
    ("dead.cast(Uint8).to_str()", lambda c: c.dead.cast(Uint8).to_str(), UseAfterFreeError),
    ("nullptr.cast(Uint8).to_str()", lambda c: nullptr.cast(Uint8).to_str(), NullPointerError),
    # --- Pointer.read_bytes / write_bytes / fill / copy_from ---
    ("p.read_bytes(17)", lambda c: c.p.read_bytes(17), IndexError),
    ("p.read_bytes(-1)", lambda c: c.p.read_bytes(-1), ValueError),
    ("p.read_bytes(2**64)", lambda c: c.p.read_bytes(2**64), OverflowError),
    ("p.read_bytes(1.5)", lambda c: c.p.read_bytes(1.5), TypeError),
    ("dead.read_bytes()", lambda c: c.dead.read_bytes(), UseAfterFreeError),
    ("unknown.read_bytes()", lambda c: c.unknown.read_bytes(), TypeError),
    ("nullptr.read_bytes(1)", lambda c: nullptr.read_bytes(1), NullPointerError),
    ("p.write_bytes(17 bytes)", lambda c: c.p.write_bytes(b"x" * 17), IndexError),
    ("p.write_bytes(b'x', 16)", lambda c: c.p.write_bytes(b"x", 16), IndexError),
    ("p.write_bytes(b'x', -1)", lambda c: c.p.write_bytes(b"x", -1), ValueError),
    ("p.write_bytes(b'x', 2**64)", lambda c: c.p.write_bytes(b"x", 2**64), OverflowError),
    ("p.write_bytes(b'x', 1.5)", lambda c: c.p.write_bytes(b"x", 1.5), TypeError),
    *[(f"p.write_bytes({v!r})", lambda c, v=v: c.p.write_bytes(v), TypeError) for v in ("text", 42, None, [1])],
    ("dead.write_bytes(b'x')", lambda c: c.dead.write_bytes(b"x"), UseAfterFreeError),
    # An unknown count takes the stated length (DESIGN §3), within the address space only.
    ("unknown.write_bytes(b'x', 2**63)", lambda c: c.unknown.write_bytes(b"x", 2**63), IndexError),
    *[(f"p.fill({v!r})", lambda c, v=v: c.p.fill(v), ValueError) for v in (256, -1, 2**64, -(2**200))],
    *[(f"p.fill({v!r})", lambda c, v=v: c.p.fill(v), TypeError) for v in (1.5, "a", None, b"a")],
    ("dead.fill(0)", lambda c: c.dead.fill(0), UseAfterFreeError),
    ("unknown.fill(0)", lambda c: c.unknown.fill(0), TypeError),
    ("p.copy_from(17 bytes)", lambda c: c.p.copy_from(b"y" * 17), IndexError),
    ("u8.copy_from(p)", lambda c: c.u8.copy_from(c.p), IndexError),
    ("p.copy_from(dead)", lambda c: c.p.copy_from(c.dead), UseAfterFreeError),
    ("dead.copy_from(b'x')", lambda c: c.dead.copy_from(b"x"), UseAfterFreeError),
    ("p.copy_from(unknown)", lambda c: c.p.copy_from(c.unknown), TypeError),
    *[(f"p.copy_from({v!r})", lambda c, v=v: c.p.copy_from(v), TypeError) for v in ("text", 42, None)],
    # --- Pointer.from_address ---
    ("from_address(-1, Int32)", lambda c: Pointer.from_address(-1, Int32), ValueError),
    *[(f"from_address({n}, Int32)", lambda c, n=n: Pointer.from_address(n, Int32), OverflowError) for n in (2**64, 2**200)],
    *[(f"from_address({v!r}, Int32)", lambda c, v=v: Pointer.from_address(v, Int32), TypeError) for v in (1.5, "0")],
    ("from_address(raw, int)", lambda c: Pointer.from_address(c.raw, int), TypeError),
    ("from_address(raw, Int32, -1)", lambda c: Pointer.from_address(c.raw, Int32, -1), ValueError),
    ("from_address(raw, Int32, 1.5)", lambda c: Pointer.from_address(c.raw, Int32, 1.5), TypeError),
    ("from_address(raw, Int32, 2**62)", lambda c: Pointer.from_address(c.raw, Int32, 2**62), OverflowError),
    ("from_address(2**64-8, Int32, 4)", lambda c: Pointer.from_address(2**64 - 8, Int32, 4), OverflowError),
    # --- Pointer.detach / autofree ---
    ("dead.detach()", lambda c: c.dead.detach(), UseAfterFreeError),
    *[(f"{w}.detach()", lambda c, w=w: getattr(c, w).detach(), OwnershipError) for w in ("foreign", "unknown", "detached")],
    ("(p+1).detach()", lambda c: (c.p + 1).detach(), OwnershipError),
    ("nullptr.detach()", lambda c: nullptr.detach(), OwnershipError),
    ("dead.autofree()", lambda c: c.dead.autofree(), UseAfterFreeError),
    ("foreign.autofree()", lambda c: c.foreign.autofree(), OwnershipError),
    ("nullptr.autofree()", lambda c: nullptr.autofree(), OwnershipError),
    # --- buffer exports of dead and sizeless views ---
    ("memoryview(dead)", lambda c: memoryview(c.dead), UseAfterFreeError),
    ("memoryview(unknown)", lambda c: memoryview(c.unknown), BufferError),
    ("memoryview(nullptr)", lambda c: memoryview(nullptr), BufferError),
    ("dead._as_parameter_", lambda c: c.dead._as_parameter_, UseAfterFreeError),
    # --- strings ---
    *[(f"{f.__name__}({s!r})", lambda c, f=f, s=s: f(s), ValueError)
      for f in (to_native_utf8, to_native_utf16) for s in ("a\0b", "\0", "\ud800")],
    *[(f"{f.__name__}({v!r})", lambda c, f=f, v=v: f(v), TypeError)
      for f in (to_native_utf8, to_native_utf16) for v in (b"abc", 42, None, ["a"])],
    ("to_native_utf8('x', 42)", lambda c: to_native_utf8("x", 42), TypeError),
    ("to_native_utf8('x', malloc, 'strict')", lambda c: to_native_utf8("x", malloc, "strict"), TypeError),
    ("to_native_utf8('\\ud800', errors='bogus')", lambda c: to_native_utf8("\ud800", errors="bogus"), LookupError),
    # --- sizeof / alignof / Pointer[...] ---
    *[(f"{f.__name__}({t!r})", lambda c, f=f, t=t: f(t), TypeError)
      for f in (sizeof, alignof) for t in (int, Void, "Int32", None, 4, ctypes.c_int32(1), Pointer)],
    *[(f"Pointer[{t!r}]", lambda c, t=t: Pointer[t], TypeError) for t in (int, "Int32", None, 4, (Int32, Uint8))],
    # --- Arena (both kinds): the allocator rules, plus arena ownership ---
    ("Arena(42)", lambda c: rsalloc.Arena(42), TypeError),
    ("Arena(Arena())", lambda c: rsalloc.Arena(rsalloc.Arena()), TypeError),
    *[(f"{k}.allocate(-1)", lambda c, m=m: m().allocate(-1), ValueError) for k, m in ARENAS],
    *[(f"{k}(Int32, 2**63)", lambda c, m=m: m()(Int32, 2**63), OverflowError) for k, m in ARENAS],
    *[(f"{k}(Int32, 1.5)", lambda c, m=m: m()(Int32, 1.5), TypeError) for k, m in ARENAS],
    *[(f"{k}(int)", lambda c, m=m: m()(int), TypeError) for k, m in ARENAS],
    *[(f"{k}.allocate(8, alignment=3)", lambda c, m=m: m().allocate(8, alignment=3), ValueError) for k, m in ARENAS],
    *[(f"{k}.allocate(2**62)", lambda c, m=m: m().allocate(2**62), MemoryError) for k, m in ARENAS],
    *[(f"closed {k}.allocate(8)", lambda c, m=m: closed(m()).allocate(8), rsalloc.ArenaClosedError) for k, m in ARENAS],
    *[(f"closed {k}.using(1, print)", lambda c, m=m: closed(m()).using(1, print), rsalloc.ArenaClosedError)
      for k, m in ARENAS],
    *[(f"closed {k}.on_release_all(print)", lambda c, m=m: closed(m()).on_release_all(print),
       rsalloc.ArenaClosedError) for k, m in ARENAS],
    *[(f"{k}.free(p)", lambda c, m=m: m().free(c.p), OwnershipError) for k, m in ARENAS],
    *[(f"{k}.free(dead)", lambda c, m=m: m().free(c.dead), OwnershipError) for k, m in ARENAS],
    *[(f"{k}.free(foreign)", lambda c, m=m: m().free(c.foreign), OwnershipError) for k, m in ARENAS],
    *[(f"{k}.realloc(p, 8)", lambda c, m=m: m().realloc(c.p, 8), OwnershipError) for k, m in ARENAS],
    *[(f"{k}.detach(p)", lambda c, m=m: m().detach(c.p), OwnershipError) for k, m in ARENAS],
    ("Arena().adopt(orphan, Uint8, 8)", lambda c: rsalloc.Arena().adopt(c.orphan, Uint8, 8), OwnershipError),
    *[(f"{k}: malloc.free(arena block)", lambda c, k=k: malloc.free(LIVE_ARENA_BLOCK[k]), OwnershipError)
      for k, _ in ARENAS],
    *[(f"{k}: malloc.realloc(arena block, 2)", lambda c, k=k: malloc.realloc(LIVE_ARENA_BLOCK[k], 2), OwnershipError)
      for k, _ in ARENAS],
    *[(f"{k}: p.detach() of a released block", lambda c, k=k: RELEASED_ARENA_BLOCK[k].detach(),
       OwnershipError if k == "Arena()" else UseAfterFreeError) for k, _ in ARENAS],
    *[(f"{k}: free(released block)", lambda c, k=k: free(RELEASED_ARENA_BLOCK[k]), DoubleFreeError)
      for k, _ in ARENAS],
    ("current_arena() outside any", lambda c: rsalloc.current_arena(), RuntimeError),
    ("using(42)", lambda c: rsalloc.using(42), TypeError),
    # --- Python-defined and foreign allocators ---
    *[(f"ForeignAllocator({a!r}, {f!r})", lambda c, a=a, f=f: rsalloc.ForeignAllocator(a, f), TypeError)
      for a, f in (("malloc", "free"), (None, None), (LIBC.malloc, None))],
    # A free-only owner (ForeignAllocator(None, free)) refuses every call that allocates.
    *[(f"free-only {name}", lambda c, call=call: call(rsalloc.ForeignAllocator(None, LIBC.free), c), TypeError)
      for name, call in (("a(Int32, 2)", lambda a, c: a(Int32, 2)), ("a.allocate(8)", lambda a, c: a.allocate(8)),
                         ("a.clone(p)", lambda a, c: a.clone(c.p)))],
    ("Allocator()", lambda c: rsalloc.Allocator(), TypeError),
    # --- tracking, reports and the diagnostic allocators ---
    ("tracking.enable(frames=-1)", lambda c: rsalloc.tracking.enable(frames=-1), ValueError),
    ("tracking.enable(frames='8')", lambda c: rsalloc.tracking.enable(frames="8"), TypeError),
    ("leak_report(format='xml')", lambda c: rsalloc.leak_report(format="xml"), ValueError),
    *[(f"{a}.allocate(-1)", lambda c, a=a: getattr(rsalloc, a).allocate(-1), ValueError) for a in DIAGNOSTIC],
    *[(f"{a}.allocate(2**62)", lambda c, a=a: getattr(rsalloc, a).allocate(2**62), MemoryError) for a in DIAGNOSTIC],
    *[(f"{a}(Int32, 2**63)", lambda c, a=a: getattr(rsalloc, a)(Int32, 2**63), OverflowError) for a in DIAGNOSTIC],
    *[(f"{a}.free(p)", lambda c, a=a: getattr(rsalloc, a).free(c.dead), DoubleFreeError) for a in DIAGNOSTIC],
]


def observed(c: Ctx) -> tuple[object, ...]:
    """Everything a failed call must leave as it was."""
    return (
        snapshot(),
        [q.read_bytes() for q in c.pointers()],
        [q.alive for q in (c.dead, c.detached)],
        [q.allocator for q in c.pointers()],
        c.detached.allocator,
        ctypes.string_at(c.raw, 16),
    )


@pytest.mark.parametrize("call,exc", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_raises_the_documented_exception_and_changes_nothing(c, call, exc):
    before = observed(c)
    with pytest.raises(exc) as info:
        call(c)
    assert observed(c) == before
    if issubclass(exc, rsalloc.RsallocError) and exc is not rsalloc.ArenaClosedError:
        assert "0x" in str(info.value)  # names the pointer (its address); a closed arena names the arena


def test_none_as_the_type_means_the_default():
    """Not a mistake: `a(None, n)` is `a(Uint8, n)`, as numpy's dtype=None means its default."""
    p = malloc(None, 3)
    assert p.type is Uint8 and p.count == 3
    free(p)


def test_rows_are_unique():
    ids = [r[0] for r in ROWS]
    assert len(ids) == len(set(ids))


def test_allocators_still_work_after_memory_errors():
    """A refused request leaves the allocator as it was: the next one succeeds."""
    for a in (malloc, calloc):
        before = snapshot()
        for _ in range(3):
            with pytest.raises(MemoryError):
                a.allocate(2**62)
            with pytest.raises(MemoryError):
                a(Int64, 2**59, alignment=4096)
        assert snapshot() == before
        p = a(Int64, 4)
        p[:] = [1, 2, 3, 4]
        q = a.realloc(p, 2**20)
        assert q[:4] == [1, 2, 3, 4]
        free(q)
