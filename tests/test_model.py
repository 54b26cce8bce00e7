"""Random programs against a plain-Python model (DESIGN §3, §4, §6, §7).

A hypothesis state machine allocates, writes, reads, makes views, frees,
reallocates, detaches, adopts and exports at random. The model keeps every
block's bytes (and which bytes are known: malloc memory starts unknown), its
state and its exports, and the counters of each allocator. After every step
the real library must agree with the model byte for byte and counter for
counter; every misuse must raise its documented exception and change nothing.

CI runs a bounded size. A long run (see docs/safety.md):

    RSALLOC_MODEL_EXAMPLES=5000 RSALLOC_MODEL_STEPS=100 python -m pytest tests/test_model.py

Allocators come from ALLOCATORS, a list of factories: malloc and calloc
(one owner group), a Python-defined allocator (a group of its own), an arena
over malloc and a bump-region arena. Arenas add release (with and without
reuse) and the arena rules of DESIGN §5: free is a no-op, only the arena may
realloc, a released arena's blocks are dead, a closed arena refuses to
allocate.
"""

from __future__ import annotations

import ctypes
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
import pytest

import rsalloc
from rsalloc import (
    Bool,
    DoubleFreeError,
    Float32,
    Float64,
    Int8,
    Int16,
    Int32,
    Int64,
    IntPtr,
    OwnershipError,
    Pointer,
    Size,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    UseAfterFreeError,
)

from conftest import LIBC


@dataclass(frozen=True)
class TypeSpec:
    cls: object
    code: str  # native struct code of one element
    lo: float = 0
    hi: float = 0

    @property
    def size(self) -> int:
        return struct.calcsize("@" + self.code)

    def unpack(self, raw: bytes) -> object:
        return struct.unpack("@" + self.code, raw)[0]

    def pack(self, v: object) -> bytes:
        return struct.pack("@" + self.code, v)


def _int(cls: object, code: str) -> TypeSpec:
    bits = 8 * struct.calcsize("@" + code)
    signed = code.islower()
    return TypeSpec(cls, code, -(2 ** (bits - 1)) if signed else 0, 2 ** (bits - 1) - 1 if signed else 2**bits - 1)


INT_TYPES = [
    _int(t, c)
    for t, c in [(Int8, "b"), (Int16, "h"), (Int32, "i"), (Int64, "q"), (Uint8, "B"), (Uint16, "H"),
                 (Uint32, "I"), (Uint64, "Q"), (IntPtr, "n"), (Size, "N")]
]
F32 = TypeSpec(Float32, "f")
F64 = TypeSpec(Float64, "d")
BOOL = TypeSpec(Bool, "?")
SLOT = TypeSpec(Pointer[Int32], "N", 0, 2**64 - 1)  # a pointer slot holding an Int32's address
TYPES = INT_TYPES + [F32, F64, BOOL, SLOT]
INT32 = next(t for t in TYPES if t.cls is Int32)


class Pool(rsalloc.Allocator):
    """A Python-defined allocator over libc (so C may free what it detaches)."""

    def _raw_alloc(self, nbytes: int, alignment: int) -> int:
        if alignment <= 16:
            return LIBC.malloc(nbytes) or 0
        out = ctypes.c_void_p()
        return out.value or 0 if LIBC.posix_memalign(ctypes.byref(out), alignment, nbytes) == 0 else 0

    def _raw_free(self, address: int) -> None:
        LIBC.free(address)


LIBC.posix_memalign.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
LIBC.posix_memalign.restype = ctypes.c_int


@dataclass(eq=False)
class AllocSpec:
    """One allocator under test; `group` says who may free whose blocks.

    kind: "plain" (an Allocator), "wrap" (an arena over `backing`, whose
    counters move with the arena's) or "region" (a bump-region arena)."""

    name: str
    make: Callable[[], rsalloc.Allocator | rsalloc.Arena]
    group: str
    zeroed: bool
    kind: str = "plain"
    backing: str | None = None
    obj: rsalloc.Allocator | rsalloc.Arena | None = None
    closed: bool = False

    @property
    def arena(self) -> bool:
        return self.kind != "plain"


ALLOCATORS = [
    AllocSpec("malloc", lambda: rsalloc.malloc, group="libc", zeroed=False),
    AllocSpec("calloc", lambda: rsalloc.calloc, group="libc", zeroed=True),
    AllocSpec("pool", Pool, group="pool", zeroed=False),
    AllocSpec("arena(malloc)", lambda: rsalloc.Arena(rsalloc.malloc), group="wrap", zeroed=False, kind="wrap",
              backing="malloc"),
    AllocSpec("arena()", rsalloc.Arena, group="region", zeroed=True, kind="region"),
]

COUNTERS = ("live_count", "live_bytes", "total_allocs", "total_frees")
DEAD = ("freed", "reallocated", "released")


@dataclass(eq=False)
class Block:
    alloc: AllocSpec
    address: int
    data: bytearray
    known: bytearray  # 1 where the model knows the byte
    root: Pointer  # a Uint8 view of all of it, to compare bytes
    state: str = "live"  # live, freed, reallocated, detached, c_freed (C freed it after detach)
    exports: list[tuple[memoryview, View]] = field(default_factory=list)
    # A bump arena's block released while an export of its arena was open:
    # its chunk is parked (still rsalloc's) until the arena's last export ends.
    parked: bool = False

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def accessible(self) -> bool:
        return self.state in ("live", "detached")


@dataclass(eq=False)
class View:
    ptr: Pointer
    block: Block
    offset: int  # bytes from the start of the block
    type: TypeSpec

    @property
    def count(self) -> int:
        return (self.block.nbytes - self.offset) // self.type.size


def values(t: TypeSpec) -> st.SearchStrategy[object]:
    if t is F32:
        return st.floats(width=32, allow_nan=False)
    if t is F64:
        return st.floats(allow_nan=False)
    if t is BOOL:
        return st.booleans()
    return st.integers(int(t.lo), int(t.hi))


def bad_values(t: TypeSpec) -> st.SearchStrategy[tuple[object, type[Exception]]]:
    wrong = st.sampled_from([("7", TypeError), (b"x", TypeError), ([1], TypeError)])
    if t in (F32, F64):
        big = [(3.5e38 * 10, OverflowError)] if t is F32 else []
        return st.one_of(wrong, st.sampled_from(big or [("1.0", TypeError)]))
    if t is BOOL:
        return st.one_of(wrong, st.sampled_from([(2, OverflowError), (-1, OverflowError), (0.5, TypeError)]))
    if t is SLOT:
        return st.one_of(wrong, st.sampled_from([(-1, OverflowError), (2**64, OverflowError), (1.0, TypeError)]))
    return st.one_of(
        wrong,
        st.sampled_from([(int(t.hi) + 1, OverflowError), (int(t.lo) - 1, OverflowError), (1.0, TypeError)]),
    )


def stats_of(s: rsalloc.Stats) -> dict[str, int]:
    return {k: getattr(s, k) for k in COUNTERS}


class RsallocModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.allocs = [AllocSpec(a.name, a.make, a.group, a.zeroed, a.kind, a.backing, a.make()) for a in ALLOCATORS]
        self.by_name = {a.name: a for a in self.allocs}
        self.blocks: list[Block] = []
        self.views: list[View] = []
        self.model = {a.name: dict.fromkeys(COUNTERS, 0) for a in self.allocs}
        self.start_global = stats_of(rsalloc.stats())
        self.start = {a.name: stats_of(a.obj.stats()) for a in self.allocs}

    # --- model bookkeeping -------------------------------------------------

    def counted_in(self, a: AllocSpec) -> list[dict[str, int]]:
        """The model counters an allocation of `a` moves: an arena over an
        allocator counts in both."""
        names = [a.name] + ([a.backing] if a.backing else [])
        return [self.model[n] for n in names]

    def count_alloc(self, a: AllocSpec, n: int) -> None:
        for m in self.counted_in(a):
            m["live_count"] += 1
            m["live_bytes"] += n
            m["total_allocs"] += 1

    def count_free(self, b: Block) -> None:
        for m in self.counted_in(b.alloc):
            m["live_count"] -= 1
            m["live_bytes"] -= b.nbytes
            m["total_frees"] += 1

    def add_block(self, a: AllocSpec, p: Pointer, t: TypeSpec, data: bytes, known: bytes) -> Block:
        b = Block(a, p.address, bytearray(data), bytearray(known), p.cast(Uint8))
        self.blocks.append(b)
        self.views.append(View(p, b, 0, t))
        self.count_alloc(a, len(data))
        return b

    def pick_view(self, i: int) -> View:
        return self.views[i % len(self.views)]

    def snapshot(self) -> tuple[object, ...]:
        return (stats_of(rsalloc.stats()), *[stats_of(a.obj.stats()) for a in self.allocs])

    def misuse(self, exc: type[Exception], call: Callable[[], object]) -> None:
        """`call` must raise exactly `exc` and leave every counter alone (bytes: the invariants)."""
        before = self.snapshot()
        try:
            call()
        except exc:
            event(f"misuse: {exc.__name__}")
        except Exception as e:  # pragma: no cover - the failure message
            raise AssertionError(f"expected {exc.__name__}, got {type(e).__name__}: {e}") from e
        else:  # pragma: no cover
            raise AssertionError(f"expected {exc.__name__}, nothing raised")
        assert self.snapshot() == before

    def expect_read(self, v: View, i: int) -> object | None:
        """The model's value of element i of v, or None when some byte is unknown."""
        at = v.offset + i * v.type.size
        if not all(v.block.known[at : at + v.type.size]):
            return None
        return v.type.unpack(bytes(v.block.data[at : at + v.type.size]))

    def free_error(self, a: AllocSpec | None, v: View) -> type[Exception] | None:
        """The exception a free of v through a (None: its own owner) raises, per DESIGN §4."""
        b = v.block
        if a is not None and a.group != b.alloc.group:
            return OwnershipError
        if b.state in DEAD:
            return DoubleFreeError
        if b.state in ("detached", "c_freed") or v.offset != 0:
            return OwnershipError
        return None

    def realloc_error(self, a: AllocSpec, v: View) -> type[Exception] | None:
        """The exception `a.realloc(v)` raises: a closed arena refuses first,
        then the free rules; a block an export pins cannot move (a region's
        old block does not move: it stays until release)."""
        if a.closed:
            return rsalloc.ArenaClosedError
        exc = self.free_error(a, v)
        if exc is None and v.block.exports and v.block.alloc.kind != "region":
            exc = BufferError
        return exc

    # --- allocation ----------------------------------------------------------

    @initialize()
    def start_with_blocks(self) -> None:
        """Every program starts with Int32s and zeroed pointer slots to point at them."""
        zeroed = next(a for a in self.allocs if a.zeroed)
        self.add_block(zeroed, zeroed.obj(Int32, 4), INT32, bytes(16), b"\x01" * 16)
        n = 4 * SLOT.size
        self.add_block(zeroed, zeroed.obj(SLOT.cls, 4), SLOT, bytes(n), b"\x01" * n)

    @rule(
        which=st.integers(0, 100),
        t=st.sampled_from(TYPES),
        count=st.integers(0, 64),
        alignment=st.sampled_from([None, None, 1, 2, 8, 16, 64, 4096]),
        as_bytes=st.booleans(),
    )
    def allocate(self, which: int, t: TypeSpec, count: int, alignment: int | None, as_bytes: bool) -> None:
        a = self.allocs[which % len(self.allocs)]
        if a.closed:
            self.misuse(rsalloc.ArenaClosedError, lambda: a.obj.allocate(count, alignment=alignment))
            return
        if as_bytes:
            t = next(x for x in TYPES if x.cls is Uint8)
            p = a.obj.allocate(count, alignment=alignment)
        else:
            p = a.obj(t.cls, count, alignment=alignment)
        n = count * t.size
        assert (p.type, p.count, p.nbytes, p.alive) == (t.cls, count, n, True)
        assert p.address % (alignment or t.size) == 0
        assert p.allocator is a.obj
        fill = b"\x01" if a.zeroed else b"\x00"
        b = self.add_block(a, p, t, bytes(n), fill * n)
        if a.zeroed:
            assert p.read_bytes() == bytes(n)
        assert b.nbytes == n

    @rule(size=st.integers(1, 64), byte=st.integers(0, 255), use_strdup=st.booleans())
    def adopt_from_c(self, size: int, byte: int, use_strdup: bool) -> None:
        """C allocated it (strdup, malloc); malloc takes ownership (DESIGN §4 adopt)."""
        a = next(x for x in self.allocs if x.name == "malloc")
        if use_strdup:
            data = bytes([byte or 1]) * (size - 1) + b"\x00"
            raw = LIBC.strdup(data[:-1])
        else:
            data = bytes([byte]) * size
            raw = LIBC.malloc(size)
            LIBC.memset(raw, byte, size)
        p = a.obj.adopt(raw, Uint8, size)
        assert p.address == raw and p.allocator is a.obj
        self.add_block(a, p, next(x for x in TYPES if x.cls is Uint8), data, b"\x01" * size)

    # --- element access --------------------------------------------------------

    @rule(i=st.integers(0, 10**6), index=st.integers(-70, 70), data=st.data())
    def write(self, i: int, index: int, data: st.DataObject) -> None:
        v = self.pick_view(i)
        value = data.draw(values(v.type))
        if not v.block.accessible():
            exc = UseAfterFreeError if v.block.state in DEAD else None
            if exc:
                self.misuse(exc, lambda: v.ptr.__setitem__(index, value))
            return
        if not -v.count <= index < v.count:
            self.misuse(IndexError, lambda: v.ptr.__setitem__(index, value))
            return
        v.ptr[index] = value
        index %= v.count
        at = v.offset + index * v.type.size
        v.block.data[at : at + v.type.size] = v.type.pack(value)
        v.block.known[at : at + v.type.size] = b"\x01" * v.type.size

    @rule(i=st.integers(0, 10**6), index=st.integers(0, 70), data=st.data())
    def write_a_bad_value(self, i: int, index: int, data: st.DataObject) -> None:
        v = self.pick_view(i)
        if not v.block.accessible() or v.count == 0:
            return
        value, exc = data.draw(bad_values(v.type))
        self.misuse(exc, lambda: v.ptr.__setitem__(index % v.count, value))

    @rule(i=st.integers(0, 10**6), index=st.integers(-70, 70))
    def read(self, i: int, index: int) -> None:
        v = self.pick_view(i)
        if not v.block.accessible():
            if v.block.state in DEAD:
                self.misuse(UseAfterFreeError, lambda: v.ptr[index])
            return
        if not -v.count <= index < v.count:
            self.misuse(IndexError, lambda: v.ptr[index])
            return
        want = self.expect_read(v, index % v.count)
        if want is None:
            # Never-written malloc bytes: reading them is legal but meaningless,
            # and valgrind (scripts/memcheck.sh) rightly reports it as the
            # program's use of uninitialised memory, as it would in C.
            return
        got = v.ptr[index]
        if v.type is SLOT:
            assert isinstance(got, Pointer) and got.address == want
            self.check_slot(v, index % v.count)
        else:
            # Bytes written raw read back as the model decodes them, NaN too
            # (a NaN is never equal to itself: compared as NaN).
            same = got == want or (isinstance(want, float) and math.isnan(want) and math.isnan(got))
            assert same and type(got) is type(want), (got, want)

    # --- views -----------------------------------------------------------------

    @rule(i=st.integers(0, 10**6), n=st.integers(0, 80))
    def offset(self, i: int, n: int) -> None:
        v = self.pick_view(i)
        if v.block.state in DEAD:
            self.misuse(UseAfterFreeError, lambda: v.ptr + n)
            return
        if v.block.state == "c_freed":
            return
        if n > v.count:
            self.misuse(IndexError, lambda: v.ptr + n)
            return
        q = v.ptr + n if n % 2 else v.ptr.offset(n)
        assert q.address == v.ptr.address + n * v.type.size and q.count == v.count - n
        self.views.append(View(q, v.block, v.offset + n * v.type.size, v.type))

    @rule(i=st.integers(0, 10**6), t=st.sampled_from(TYPES))
    def cast(self, i: int, t: TypeSpec) -> None:
        v = self.pick_view(i)
        if v.block.state in DEAD:
            self.misuse(UseAfterFreeError, lambda: v.ptr.cast(t.cls))
            return
        if v.block.state == "c_freed":
            return
        q = v.ptr.cast(t.cls)
        w = View(q, v.block, v.offset, t)
        assert q.address == v.ptr.address and q.type is t.cls and q.count == w.count
        self.views.append(w)

    @rule(i=st.integers(0, 10**6), index=st.integers(0, 70), j=st.integers(0, 10**6), null=st.booleans())
    def store_a_pointer(self, i: int, index: int, j: int, null: bool) -> None:
        """A pointer into a Pointer[Int32] slot: the slot holds its address (or None: NULL)."""
        slots = [v for v in self.views if v.type is SLOT]
        if not slots:
            return
        s = slots[i % len(slots)]
        # Mostly live Int32 targets, so that reading through the slot is checked.
        live = [v for v in self.views if v.block.accessible() and v.type is INT32 and v.count]
        target = None if null else live[j % len(live)] if live and j % 4 else self.pick_view(j)
        if not s.block.accessible() or s.count == 0:
            return
        index %= s.count
        if target is not None and target.block.state in DEAD:
            self.misuse(UseAfterFreeError, lambda: s.ptr.__setitem__(index, target.ptr))
            return
        s.ptr[index] = None if target is None else target.ptr
        at = s.offset + index * SLOT.size
        s.block.data[at : at + SLOT.size] = SLOT.pack(0 if target is None else target.ptr.address)
        s.block.known[at : at + SLOT.size] = b"\x01" * SLOT.size
        self.check_slot(s, index)

    @rule(i=st.integers(0, 10**6), index=st.integers(0, 70))
    def read_through_a_slot(self, i: int, index: int) -> None:
        slots = [v for v in self.views if v.type is SLOT and v.block.accessible() and v.count]
        if slots:
            s = slots[i % len(slots)]
            self.check_slot(s, index % s.count)

    def check_slot(self, s: View, index: int) -> None:
        addr = self.expect_read(s, index)
        if addr is None:
            return
        q = s.ptr[index]
        assert q.address == addr and q.type is Int32
        if addr == 0:
            assert q.count is None and q.allocator is None
            self.misuse(rsalloc.NullPointerError, lambda: q[0])
            return
        # Read back from memory, the address resolves to the live block it
        # points into (DESIGN §3a): bounded by it, owned by its owner.
        # Detached blocks are C's (unowned views); dead ones read back as
        # unowned or dead, never as live.
        home = next((b for b in self.blocks if b.state == "live" and b.address <= addr < b.address + max(b.nbytes, 1)), None)
        if home is None:
            assert q.allocator is None or not q.alive
            # A released bump-arena block whose memory rsalloc still holds
            # (parked for an export) reads back dead, not as foreign memory.
            if any(b.parked and b.address <= addr < b.address + max(b.nbytes, 1) for b in self.blocks):
                event("read back a parked released block's address")
                assert not q.alive
            if not q.alive:
                event("read back a dead block's address")
                self.misuse(UseAfterFreeError, lambda: q[0])
            return
        event("read back a live block's address")
        assert q.alive and q.count == (home.address + home.nbytes - addr) // 4
        at = addr - home.address
        if q.count and all(home.known[at : at + 4]):
            event("read through a slot")
            assert q[0] == INT32.unpack(bytes(home.data[at : at + 4]))
        if q.count:
            with pytest.raises(IndexError):
                q[q.count]

    @rule(i=st.integers(0, 10**6), inside=st.integers(0, 10**6))
    def read_back_a_dead_block(self, i: int, inside: int) -> None:
        """An address in a dead block, read back (`Pointer.from_address`): a
        view of the live block now there, else dead or foreign, never a live
        view of rsalloc's; dead for sure while a released bump-arena block
        is parked for an export."""
        dead = [b for b in self.blocks if b.state in DEAD]
        if not dead:
            return
        parked = [b for b in dead if b.parked]
        if parked and i % 2:
            dead = parked
        b = dead[i % len(dead)]
        addr = b.address + inside % max(b.nbytes, 1)
        q = Pointer.from_address(addr, Uint8)
        home = next((x for x in self.blocks if x.state == "live" and x.address <= addr < x.address + max(x.nbytes, 1)), None)
        if home is not None:
            event("read back a dead block's address, handed out again")
            assert q.alive and q.count == home.address + home.nbytes - addr
            return
        if b.parked:
            event("read back a parked released block's address")
            assert not q.alive
        if q.alive:
            assert q.allocator is None, "a dead block read back as a live one"
            return
        event(f"read back a dead {b.alloc.kind} block's address")
        assert q.count == b.address + max(b.nbytes, 1) - addr or q.count == b.nbytes
        self.misuse(UseAfterFreeError, lambda: q[0])

    # --- frees -------------------------------------------------------------------

    @rule(i=st.integers(0, 10**6), which=st.integers(-1, 100))
    def free(self, i: int, which: int) -> None:
        """Free through an allocator (which >= 0) or rsalloc.free: success,
        DoubleFreeError, or OwnershipError (interior, detached, other owner)."""
        v = self.pick_view(i)
        a = None if which < 0 else self.allocs[which % len(self.allocs)]
        call = (lambda: rsalloc.free(v.ptr)) if a is None else (lambda: a.obj.free(v.ptr))
        exc = self.free_error(a, v)
        if exc is not None:
            self.misuse(exc, call)
            return
        if v.block.alloc.arena:
            # An arena frees at release: free of a live block is a no-op.
            before = self.snapshot()
            call()
            assert self.snapshot() == before and v.ptr.alive
            event("arena free: no-op")
            return
        call()
        event("freed")
        v.block.state = "freed"
        self.count_free(v.block)
        assert not v.ptr.alive and not v.block.root.alive

    @rule(which=st.integers(-1, 100))
    def free_nullptr(self, which: int) -> None:
        before = self.snapshot()
        if which < 0:
            rsalloc.free(rsalloc.nullptr)
        else:
            self.allocs[which % len(self.allocs)].obj.free(rsalloc.nullptr)
        assert self.snapshot() == before

    @rule(i=st.integers(0, 10**6), which=st.integers(0, 100), count=st.integers(0, 64))
    def realloc(self, i: int, which: int, count: int) -> None:
        v = self.pick_view(i)
        a = self.allocs[which % len(self.allocs)]
        exc = self.realloc_error(a, v)
        if exc is not None:
            self.misuse(exc, lambda: a.obj.realloc(v.ptr, count))
            return
        old = v.block
        q = a.obj.realloc(v.ptr, count)
        n = count * v.type.size
        assert (q.type, q.count, q.nbytes, q.allocator) == (v.type.cls, count, n, a.obj)
        kept = min(n, old.nbytes)
        tail = n - kept
        data = bytes(old.data[:kept]) + bytes(tail)
        known = bytes(old.known[:kept]) + (b"\x01" if a.zeroed else b"\x00") * tail
        event("reallocated")
        old.state = "reallocated"
        self.count_free(old)
        self.add_block(a, q, v.type, data, known)
        assert not v.ptr.alive and not old.root.alive

    # --- ownership leaving ---------------------------------------------------------

    @rule(i=st.integers(0, 10**6))
    def detach(self, i: int) -> None:
        v = self.pick_view(i)
        b = v.block
        if b.alloc.kind == "region":
            self.misuse(OwnershipError, v.ptr.detach)  # a bump region gives nothing away
            return
        if b.state in DEAD:
            self.misuse(UseAfterFreeError, v.ptr.detach)
            return
        if b.state in ("detached", "c_freed") or v.offset != 0:
            self.misuse(OwnershipError, v.ptr.detach)
            return
        if b.exports:
            # The new owner could free it under the export (DESIGN §6).
            self.misuse(BufferError, v.ptr.detach)
            return
        assert v.ptr.detach() == b.address
        b.state = "detached"
        event("detached")
        self.count_free(b)
        assert v.ptr.allocator is None and v.ptr.alive

    @rule(i=st.integers(0, 10**6))
    def c_frees_a_detached_block(self, i: int) -> None:
        """The C side frees what was detached, with libc's free: nothing is counted."""
        blocks = [b for b in self.blocks if b.state == "detached" and not b.exports]
        if not blocks:
            return
        b = blocks[i % len(blocks)]
        before = self.snapshot()
        LIBC.free(b.address)
        event("C freed a detached block")
        b.state = "c_freed"
        assert self.snapshot() == before

    # --- buffer exports ----------------------------------------------------------------

    @rule(i=st.integers(0, 10**6))
    def export(self, i: int) -> None:
        v = self.pick_view(i)
        if v.block.state in DEAD:
            self.misuse(UseAfterFreeError, lambda: memoryview(v.ptr))
            return
        if v.block.state == "c_freed":
            return
        m = memoryview(v.ptr)
        assert m.nbytes == v.count * v.type.size and m.shape == (v.count,)
        v.block.exports.append((m, v))

    @rule(i=st.integers(0, 10**6))
    def release_an_export(self, i: int) -> None:
        blocks = [b for b in self.blocks if b.exports]
        if not blocks:
            return
        b = blocks[i % len(blocks)]
        m, _ = b.exports.pop(i % len(b.exports))
        before = self.snapshot()
        m.release()
        assert self.snapshot() == before  # the memory goes back; the counters moved at free
        if not self.open_exports(b.alloc):
            for other in self.blocks:
                if other.alloc is b.alloc:
                    other.parked = False  # the parked chunks went back

    def open_exports(self, a: AllocSpec) -> int:
        return sum(len(b.exports) for b in self.blocks if b.alloc is a)

    # --- arenas ---------------------------------------------------------------------------

    @rule(which=st.integers(0, 100), reuse=st.booleans())
    def release_an_arena(self, which: int, reuse: bool) -> None:
        arenas = [a for a in self.allocs if a.arena]
        a = arenas[which % len(arenas)]
        a.obj.release_all(reuse=reuse)
        if a.closed:
            return  # releasing a closed arena does nothing
        parks = a.kind == "region" and self.open_exports(a) > 0
        if parks:
            event("released a bump arena with an export open")
        for b in self.blocks:
            if b.alloc is a and b.state == "live":
                b.state = "released"
                b.parked = parks
                self.count_free(b)
        a.closed = not reuse
        event(f"released an arena (reuse={reuse})")
        for b in self.blocks:
            if b.alloc is a and b.parked:
                # The chunks stay rsalloc's (parked) while the export is open:
                # every address of the released blocks reads back dead.
                for addr in {b.address, b.address + max(b.nbytes, 1) - 1}:
                    q = Pointer.from_address(addr, Uint8)
                    assert not q.alive and q.count == b.address + max(b.nbytes, 1) - addr
                    self.misuse(UseAfterFreeError, lambda: q[0])
        assert len(a.obj) == 0

    # --- invariants -------------------------------------------------------------------

    @invariant()
    def counters_equal_the_model(self) -> None:
        total = dict.fromkeys(COUNTERS, 0)
        for a in self.allocs:
            got = stats_of(a.obj.stats())
            want = {k: self.start[a.name][k] + self.model[a.name][k] for k in COUNTERS}
            assert got == want, a.name
            if a.kind != "wrap":  # a wrapping arena's blocks are its backing's too: count once
                for k in COUNTERS:
                    total[k] += self.model[a.name][k]
        got = stats_of(rsalloc.stats())
        assert got == {k: self.start_global[k] + total[k] for k in COUNTERS}

    @invariant()
    def bytes_equal_the_model(self) -> None:
        for b in self.blocks:
            if b.accessible():
                raw = b.root.read_bytes()
                assert b.root.alive
            elif b.state in DEAD and b.exports:
                # Dead but pinned: the exports still read the bytes (DESIGN §6).
                event("dead block read through its export")
                assert not b.root.alive
                m, v = b.exports[0]
                raw = bytes(b.data[: v.offset]) + m.tobytes() + bytes(b.data[v.offset + m.nbytes :])
                assert len(raw) == b.nbytes
            else:
                assert b.root.alive == (b.state == "c_freed")
                continue
            assert len(raw) == b.nbytes
            for k in range(b.nbytes):
                if b.known[k]:
                    assert raw[k] == b.data[k], (b.state, k)

    def teardown(self) -> None:
        for b in self.blocks:
            for m, _ in b.exports:
                m.release()
            b.exports.clear()
        for a in self.allocs:
            if a.arena and not a.closed:
                a.obj.release_all()
                a.closed = True
                for b in self.blocks:
                    if b.alloc is a and b.state == "live":
                        b.state = "released"
                        self.count_free(b)
        for b in self.blocks:
            if b.state == "live":
                rsalloc.free(b.root)
                self.count_free(b)
            elif b.state == "detached":
                LIBC.free(b.address)
        now = stats_of(rsalloc.stats())
        assert now["live_count"] == self.start_global["live_count"]
        assert now["live_bytes"] == self.start_global["live_bytes"]
        self.counters_equal_the_model()


EXAMPLES = int(os.environ.get("RSALLOC_MODEL_EXAMPLES", "50"))
STEPS = int(os.environ.get("RSALLOC_MODEL_STEPS", "40"))

TestModel = RsallocModel.TestCase
TestModel.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
