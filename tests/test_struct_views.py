"""rsalloc.Struct / Union / Array[T, n] and their views (DESIGN §2a), and
Pointers as ctypes arguments (DESIGN §3b), against real ctypes and libc."""

from __future__ import annotations

import ctypes
import gc
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _native import LIBC, nothing_changes

import rsalloc
from rsalloc import (
    Array,
    Bool,
    Float32,
    Float64,
    Int8,
    Int16,
    Int32,
    Int64,
    IntPtr,
    Pointer,
    Size,
    Struct,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Union,
    UseAfterFreeError,
    Void,
    calloc,
    free,
    malloc,
    offsetof,
    to_native_utf8,
)

TYPING = Path(__file__).parent / "typing"

# rsalloc scalar, its ctypes twin, a value in range, values out of range.
SCALARS: list[tuple[type, Any, Any, list[Any]]] = [
    (Int8, ctypes.c_int8, -128, [128, -129]),
    (Int16, ctypes.c_int16, -32768, [32768]),
    (Int32, ctypes.c_int32, 2**31 - 1, [2**31]),
    (Int64, ctypes.c_int64, -(2**63), [2**63]),
    (Uint8, ctypes.c_uint8, 255, [256, -1]),
    (Uint16, ctypes.c_uint16, 65535, [65536, -1]),
    (Uint32, ctypes.c_uint32, 2**32 - 1, [2**32, -1]),
    (Uint64, ctypes.c_uint64, 2**64 - 1, [2**64, -1]),
    (IntPtr, ctypes.c_ssize_t, -5, [2**63]),
    (Size, ctypes.c_size_t, 2**64 - 1, [-1, 2**64]),
    (Float32, ctypes.c_float, 1.5, [1e300]),
    (Float64, ctypes.c_double, -2.25, []),
    (Bool, ctypes.c_bool, True, [2]),
]


def has_provenance() -> bool:
    """Addresses read back from memory resolve to their live block (DESIGN §3a)."""
    p = malloc.allocate(1)
    try:
        return Pointer.from_address(p.address, Uint8).allocator is not None
    finally:
        free(p)


def struct_of(name: str, fields: list[tuple[str, Any]], base: type = Struct, **kw: Any) -> type:
    """A Struct class built as a class statement would build it."""
    return type(base)(name, (base,), {"__annotations__": dict(fields), "__module__": __name__}, **kw)  # type: ignore[no-any-return]


def ctypes_of(name: str, fields: list[tuple[str, Any]], base: type = ctypes.Structure, pack: int | None = None) -> type:
    ns: dict[str, Any] = {"_fields_": fields}
    if pack is not None:
        ns["_pack_"] = pack
    return type(name, (base,), ns)


@pytest.mark.parametrize("t, ct, good, bad", SCALARS, ids=lambda x: getattr(x, "__name__", None))
def test_scalar_field_reads_writes_and_checks(t: type, ct: type, good: Any, bad: list[Any]) -> None:
    S = struct_of("S", [("pad", Int8), ("v", t), ("tail", Int8)])
    C = ctypes_of("C", [("pad", ctypes.c_int8), ("v", ct), ("tail", ctypes.c_int8)])
    assert (rsalloc.sizeof(S), rsalloc.alignof(S), offsetof(S, "v")) == (ctypes.sizeof(C), ctypes.alignment(C), C.v.offset)
    p = calloc(S)
    view = p.ref
    view.v = good
    assert view.v == good and type(view.v) is type(good)
    # The bytes are exactly C's: ctypes reads the same value from them.
    assert C.from_buffer_copy(p.read_bytes()).v == good
    with nothing_changes(calloc, pointers=(p,)):
        for value in bad:
            with pytest.raises(OverflowError):
                view.v = value
        with pytest.raises(TypeError):
            view.v = "5"
        with pytest.raises(TypeError):
            view.v = None
        if t not in (Float32, Float64):
            with pytest.raises(TypeError):
                view.v = 1.0
    if t in (Float32, Float64):
        view.v = 3  # an int into a float field is fine
        assert view.v == 3.0
    free(p)


def test_a_struct_view_is_the_memory_and_p_i_indexes_structs() -> None:
    class Pair(Struct):
        a: Int32
        b: Int16

    p = calloc(Pair, 4)
    assert (p.count, p.nbytes, p.type) == (4, 32, Pair)
    for i in range(4):
        p[i].a = 10 * i
        p[i].b = -i
    assert [p[i].a for i in range(4)] == [0, 10, 20, 30]
    assert p[-1].b == -3 and (p + 2).ref.a == 20 and p.value.a == 0
    assert [s.a for s in p[1:3]] == [10, 20]
    raw = p.cast(Int32)
    assert raw[2] == 10 and raw[3] & 0xFFFF == 0xFFFF  # b = -1 at offset 4 of element 1
    with pytest.raises(IndexError):
        p[4]
    with pytest.raises(TypeError, match="struct type"):
        Pair()
    assert isinstance(p.ref, Pair) and "Pair view at" in repr(p.ref)
    assert Pair.a.offset == 0 and Pair.b.offset == 4 and Pair.b.size == 2  # type: ignore[attr-defined]
    free(p)


def test_pointer_fields_take_any_pointer_none_or_int_and_read_pointers() -> None:
    class Holder(Struct):
        text: Pointer[Int8]
        words: Pointer[Uint32]
        anything: Pointer[Void]

    h = calloc(Holder)
    s = to_native_utf8("héllo")  # a Pointer[Uint8] into a Pointer[Int8] field: no cast, as in C
    ints = calloc(Int32, 3)
    h.ref.text = s
    h.ref.words = ints
    h.ref.anything = h
    got = h.ref.text
    assert isinstance(got, Pointer) and got.type is Int8 and got.address == s.address
    assert got.cast(Uint8).to_str() == "héllo"
    assert h.ref.words.type is Uint32 and h.ref.anything.address == h.address
    h.ref.words = None
    assert h.ref.words.is_null
    h.ref.words = ints.address
    assert h.ref.words.address == ints.address
    with nothing_changes(calloc, pointers=(h,)):
        for bad in ("text", 1.5, b"bytes", [1]):
            with pytest.raises(TypeError):
                h.ref.text = bad
        with pytest.raises(OverflowError):
            h.ref.text = -1
    free(ints)
    with nothing_changes(pointers=(h,)):
        with pytest.raises(UseAfterFreeError):
            h.ref.words = ints  # a dead Pointer is not stored
    free(s)
    free(h)


def test_pointer_field_reads_go_through_from_stored_address() -> None:
    # With address provenance (DESIGN §3a) the read-back Pointer is the live
    # block's and frees it; without it, an unowned view of the same address.
    class Box(Struct):
        data: Pointer[Uint8]

    b = calloc(Box)
    s = to_native_utf8("abc")
    b.ref.data = s
    back = b.ref.data
    assert back.address == s.address and back.to_str() == "abc"
    if back.allocator is not None:
        assert back.allocator is s.allocator
    free(s)
    free(b)


def test_nested_struct_is_a_view_into_the_outer_block() -> None:
    class Inner(Struct):
        tag: Int8
        value: Float64

    class Outer(Struct):
        head: Int16
        inner: Inner
        tail: Int8

    C_in = ctypes_of("Inner", [("tag", ctypes.c_int8), ("value", ctypes.c_double)])
    C_out = ctypes_of("Outer", [("head", ctypes.c_int16), ("inner", C_in), ("tail", ctypes.c_int8)])
    assert rsalloc.sizeof(Outer) == ctypes.sizeof(C_out) and offsetof(Outer, "inner") == C_out.inner.offset
    p = calloc(Outer, 2)
    inner = p[1].inner
    assert isinstance(inner, Inner)
    inner.value = 2.5
    inner.tag = -3
    c = C_out.from_buffer_copy(p.read_bytes()[rsalloc.sizeof(Outer) :])
    assert (c.inner.value, c.inner.tag) == (2.5, -3)
    p[0].inner = p[1].inner  # a copy of the bytes, as C's struct assignment
    assert p[0].inner.value == 2.5
    p[1].inner.value = 9.0
    assert p[0].inner.value == 2.5
    with nothing_changes(calloc, pointers=(p,)):
        with pytest.raises(TypeError, match="Inner"):
            p[0].inner = p[0]
        with pytest.raises(TypeError):
            p[0].inner = 5
    free(p)
    with pytest.raises(UseAfterFreeError):
        inner.value


def test_union_fields_share_offset_zero() -> None:
    class Number(Union):
        i: Int64
        d: Float64
        b: Array[Uint8, 8]

    class Tagged(Struct):
        tag: Int8
        n: Number

    assert [offsetof(Number, f) for f in ("i", "d", "b")] == [0, 0, 0]
    assert rsalloc.sizeof(Number) == 8 and issubclass(Number.ctype, ctypes.Union)
    C = ctypes_of("Tagged", [("tag", ctypes.c_int8), ("n", ctypes_of("N", [("i", ctypes.c_int64), ("d", ctypes.c_double)], ctypes.Union))])
    assert (rsalloc.sizeof(Tagged), offsetof(Tagged, "n")) == (ctypes.sizeof(C), C.n.offset)
    u = calloc(Number)
    u.ref.d = 1.0
    assert u.ref.i == 0x3FF0000000000000 and u.ref.b[7] == 0x3F
    t = calloc(Tagged)
    t.ref.n.i = -1
    assert t.ref.n.b[:] == [255] * 8
    free(u)
    free(t)


def test_array_fields_are_counted_pointer_views() -> None:
    class Rec(Struct):
        n: Uint8
        vals: Array[Int16, 5]
        grid: Array[Array[Float32, 2], 3]
        names: Array[Pointer[Uint8], 2]

    C = ctypes_of(
        "Rec",
        [("n", ctypes.c_uint8), ("vals", ctypes.c_int16 * 5), ("grid", (ctypes.c_float * 2) * 3), ("names", ctypes.c_char_p * 2)],
    )
    assert rsalloc.sizeof(Rec) == ctypes.sizeof(C)
    assert [offsetof(Rec, f) for f in ("vals", "grid", "names")] == [C.vals.offset, C.grid.offset, C.names.offset]
    p = calloc(Rec)
    vals = p.ref.vals
    assert (vals.type, vals.count, vals.address) == (Int16, 5, p.address + offsetof(Rec, "vals"))
    vals[4] = -7
    p.ref.vals = [1, 2, 3, 4, 5]
    assert p.ref.vals[:] == [1, 2, 3, 4, 5]
    with nothing_changes(calloc, pointers=(p,)):
        with pytest.raises(IndexError):
            vals[5]
        with pytest.raises(ValueError):
            p.ref.vals = [1, 2]
        with pytest.raises(OverflowError):
            p.ref.vals = [1, 2, 3, 4, 2**15]
    row = p.ref.grid[2]
    assert (row.type, row.count) == (Float32, 2)
    row[1] = 0.5
    assert C.from_buffer_copy(p.read_bytes()).grid[2][1] == 0.5
    s = to_native_utf8("x")
    p.ref.names[1] = s
    assert p.ref.names[1].address == s.address
    free(s)
    assert rsalloc.sizeof(Array[Int32, 4]) == 16 and Array[Int32, 4] is Array[Int32, 4]
    free(p)
    with pytest.raises(UseAfterFreeError):
        vals[0]


def test_packed_structs_match_ctypes_pack() -> None:
    class Packed(Struct, pack=1):
        flag: Uint8
        value: Int32
        d: Float64

    C = ctypes_of("P", [("flag", ctypes.c_uint8), ("value", ctypes.c_int32), ("d", ctypes.c_double)], pack=1)
    assert (rsalloc.sizeof(Packed), rsalloc.alignof(Packed)) == (ctypes.sizeof(C), ctypes.alignment(C)) == (13, 1)
    assert offsetof(Packed, "value") == 1 and offsetof(Packed, "d") == 5
    p = calloc(Packed, 2)
    p[1].value = -5  # unaligned: fine
    p[1].d = 0.25
    assert (p[1].value, p[1].d) == (-5, 0.25)
    assert C.from_buffer_copy(p.read_bytes()[13:]).value == -5
    free(p)
    with pytest.raises(ValueError):
        struct_of("Bad", [("a", Int8)], pack=3)


_INNER = [("a", Int8), ("b", Int64)]
_C_INNER = [("a", ctypes.c_int8), ("b", ctypes.c_int64)]

# Field mixes: (rsalloc fields, ctypes fields, pack). Nested types are built per case.
MIXES: list[tuple[list[tuple[str, Any]], list[tuple[str, Any]], int | None]] = [
    ([("a", Int8)], [("a", ctypes.c_int8)], None),
    ([("a", Int8), ("b", Int32), ("c", Int8)], [("a", ctypes.c_int8), ("b", ctypes.c_int32), ("c", ctypes.c_int8)], None),
    ([("a", Int8), ("b", Float64), ("c", Int16)], [("a", ctypes.c_int8), ("b", ctypes.c_double), ("c", ctypes.c_int16)], None),
    ([("a", Int8), ("b", Float64), ("c", Int16)], [("a", ctypes.c_int8), ("b", ctypes.c_double), ("c", ctypes.c_int16)], 1),
    ([("a", Int8), ("b", Float64), ("c", Int16)], [("a", ctypes.c_int8), ("b", ctypes.c_double), ("c", ctypes.c_int16)], 2),
    ([("a", Int8), ("b", Float64)], [("a", ctypes.c_int8), ("b", ctypes.c_double)], 4),
    ([("p", Pointer[Int8]), ("n", Uint8)], [("p", ctypes.c_char_p), ("n", ctypes.c_uint8)], None),
    ([("n", Uint16), ("p", Pointer[Void]), ("q", Pointer[Float64])], [("n", ctypes.c_uint16), ("p", ctypes.c_void_p), ("q", ctypes.POINTER(ctypes.c_double))], None),
    ([("b", Bool), ("f", Float32), ("s", Size), ("i", IntPtr)], [("b", ctypes.c_bool), ("f", ctypes.c_float), ("s", ctypes.c_size_t), ("i", ctypes.c_ssize_t)], None),
    ([("a", Array[Uint8, 3]), ("b", Int32)], [("a", ctypes.c_uint8 * 3), ("b", ctypes.c_int32)], None),
    ([("a", Array[Uint8, 0]), ("b", Int8)], [("a", ctypes.c_uint8 * 0), ("b", ctypes.c_int8)], None),
    ([("a", Int8), ("in", "inner"), ("z", Int8)], [("a", ctypes.c_int8), ("in", "inner"), ("z", ctypes.c_int8)], None),
    ([("a", Int8), ("in", "inner"), ("z", Int8)], [("a", ctypes.c_int8), ("in", "inner"), ("z", ctypes.c_int8)], 1),
    ([("x", Int16), ("arr", "inner[2]")], [("x", ctypes.c_int16), ("arr", "inner[2]")], None),
    ([("x", Int8), ("u", "union")], [("x", ctypes.c_int8), ("u", "union")], None),
    ([("g", ctypes.c_int32), ("h", ctypes.c_char_p * 2)], [("g", ctypes.c_int32), ("h", ctypes.c_char_p * 2)], None),
    ([], [], None),
]


@pytest.mark.parametrize("ours, theirs, pack", MIXES)
def test_layouts_equal_the_ctypes_structure(ours: list[tuple[str, Any]], theirs: list[tuple[str, Any]], pack: int | None) -> None:
    Inner = struct_of("Inner", _INNER)
    C_inner = ctypes_of("CInner", _C_INNER)
    U = struct_of("U", [("i", Int32), ("d", Float64), ("c", Array[Int8, 11])], base=Union)
    C_u = ctypes_of("CU", [("i", ctypes.c_int32), ("d", ctypes.c_double), ("c", ctypes.c_int8 * 11)], ctypes.Union)
    subst = {"inner": (Inner, C_inner), "inner[2]": (Array[Inner, 2], C_inner * 2), "union": (U, C_u)}
    ours = [(n, subst[t][0] if isinstance(t, str) else t) for n, t in ours]
    theirs = [(n, subst[t][1] if isinstance(t, str) else t) for n, t in theirs]
    S = struct_of("S", ours, **({"pack": pack} if pack else {}))
    C = ctypes_of("C", theirs, pack=pack)
    assert (rsalloc.sizeof(S), rsalloc.alignof(S)) == (ctypes.sizeof(C), ctypes.alignment(C))
    assert [offsetof(S, n) for n, _ in ours] == [getattr(C, n).offset for n, _ in theirs]
    assert ctypes.sizeof(S.ctype) == ctypes.sizeof(C)
    # numpy sees the same layout, field by field.
    p = calloc(S, 2)
    if ours and rsalloc.sizeof(S):
        dt = np.asarray(p).dtype
        assert dt.itemsize == ctypes.sizeof(C)
        assert {n: dt.fields[n][1] for n in dt.names} == {n: getattr(C, n).offset for n, _ in theirs}
    free(p)


def test_numpy_structured_dtype_reads_and_writes_fields() -> None:
    class Sample(Struct):
        id: Uint32
        pos: Array[Float32, 3]
        ok: Bool
        name: Pointer[Uint8]

    p = calloc(Sample, 3)
    a = np.asarray(p)
    assert a.dtype.names == ("id", "pos", "ok", "name")
    assert a.dtype["pos"].shape == (3,) and a.dtype["id"] == np.dtype("<u4")
    a["id"] = [7, 8, 9]
    a["pos"][1] = [1.0, 2.0, 3.0]
    assert [p[i].id for i in range(3)] == [7, 8, 9] and p[1].pos[:] == [1.0, 2.0, 3.0]
    p[2].ok = True
    assert a["ok"].tolist() == [False, False, True]
    del a
    free(p)


def test_a_quoted_self_reference_under_future_annotations() -> None:
    # DESIGN's spelling, `next: "Pointer[Node]"`, in a module with
    # `from __future__ import annotations` (this one) is quoted twice.
    class QNode(Struct):
        value: Int32
        next: "Pointer[QNode]"

    assert rsalloc.offsetof(QNode, "next") == 8
    a, b = calloc(QNode), calloc(QNode)
    a.ref.next = b
    b.ref.value = 5
    assert a.ref.next.ref.value == 5 and a.ref.next.type is QNode
    free(a.ref.next)
    free(a)


def test_self_reference_forward_reference_and_by_value_cycles() -> None:
    class Node(Struct):
        value: Int32
        next: Pointer[Node]  # a string annotation here (from __future__ import annotations)

    nodes = calloc(Node, 3)
    for i in range(3):
        nodes[i].value = i * 10
        nodes[i].next = (nodes + i + 1) if i < 2 else None
    walked, n = [], nodes[0]
    while True:
        walked.append(n.value)
        nxt = n.next
        if nxt.is_null:
            break
        assert nxt.type is Node
        n = nxt.ref
    assert walked == [0, 10, 20]
    free(nodes)

    class Early(Struct):
        later: Pointer[Later]  # names a class defined below: resolved on first use
        again: Later2

    class Later(Struct):
        x: Int8

    class Later2(Struct):
        y: Int64

    assert offsetof(Early, "again") == 8 and rsalloc.sizeof(Early) == 16

    with pytest.raises(TypeError, match="contains itself by value"):

        class Me(Struct):
            me: Me

    class A(Struct):
        b: B  # a B by value, and B holds an A by value

    with pytest.raises(TypeError, match=r"contains itself by value \(B -> A -> B\)"):

        class B(Struct):
            a: A

    with pytest.raises(TypeError, match="cannot resolve 'B'"):
        rsalloc.sizeof(A)  # B was never bound: its class statement failed


def test_declaration_errors() -> None:
    with pytest.raises(TypeError, match="has a value"):

        class Defaults(Struct):
            x: Int32 = 5  # type: ignore[assignment]

    with pytest.raises(TypeError, match="not a field type"):

        class BadField(Struct):
            x: int  # type: ignore[assignment]

    with pytest.raises(TypeError, match="not a field type"):

        class VoidField(Struct):
            v: Void

    with pytest.raises(TypeError, match="both Struct and Union"):
        type("Mixed", (Struct, Union), {})
    with pytest.raises(TypeError):
        rsalloc.sizeof(Struct)
    with pytest.raises(ValueError):
        Array[Int32, -1]  # type: ignore[misc]
    with pytest.raises(TypeError):
        Array[Int32, "4"]  # type: ignore[misc]
    with pytest.raises(AttributeError, match="no field"):

        class One(Struct):
            x: Int8

        offsetof(One, "y")
    # A name nothing defines: the error comes at first use, and names it.

    class Dangling(Struct):
        x: Nowhere  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(TypeError, match="Nowhere"):
        calloc(Dangling)


def test_ctypes_field_types_and_struct_inheritance() -> None:
    class GUID(ctypes.Structure):
        _fields_ = [("d1", ctypes.c_uint32), ("d4", ctypes.c_ubyte * 8)]

    class WithC(Struct):
        n: ctypes.c_int16  # type: ignore[valid-type]
        g: GUID

    class Base(Struct):
        a: Int32

    class Derived(Base):
        b: Int8

    C = ctypes_of("C", [("n", ctypes.c_int16), ("g", GUID)])
    assert rsalloc.sizeof(WithC) == ctypes.sizeof(C) and offsetof(WithC, "g") == C.g.offset
    p = calloc(WithC)
    p.ref.n = -2
    p.ref.g.d1 = 77  # a ctypes instance in the block
    assert p.ref.n == -2 and p.ref.g.d1 == 77
    d = calloc(Derived)
    d.ref.a, d.ref.b = 1, 2
    assert (offsetof(Derived, "a"), offsetof(Derived, "b"), rsalloc.sizeof(Derived)) == (0, 4, 8)
    assert (d.ref.a, d.ref.b) == (1, 2) and issubclass(Derived.ctype, Base.ctype)
    free(p)
    free(d)


def test_every_access_through_a_dead_view_raises() -> None:
    class Inner(Struct):
        v: Int32

    class Rec(Struct):
        x: Int32
        p: Pointer[Uint8]
        inner: Inner
        arr: Array[Int8, 4]

    p = calloc(Rec, 2)
    view, second, inner, arr = p.ref, p[1], p.ref.inner, p.ref.arr
    free(p)
    for get in (lambda: view.x, lambda: view.p, lambda: view.inner, lambda: view.arr, lambda: second.x, lambda: inner.v, lambda: arr[0]):
        with pytest.raises(UseAfterFreeError):
            get()
    for name, value in (("x", 1), ("p", None), ("arr", [1, 2, 3, 4])):
        with pytest.raises(UseAfterFreeError):
            setattr(view, name, value)
    with pytest.raises(UseAfterFreeError):
        inner.v = 1
    with pytest.raises(UseAfterFreeError):
        p.ref
    # Arena memory: dead once released.
    with rsalloc.Arena() as arena:
        q = arena(Rec)
        q.ref.x = 5
        kept = q.ref
        assert kept.x == 5
    with pytest.raises(UseAfterFreeError):
        kept.x
    with pytest.raises(UseAfterFreeError):
        kept.x = 1


def test_views_do_not_pin_the_block() -> None:
    returned: list[int] = []

    class Watch(rsalloc.Allocator):
        def _raw_alloc(self, nbytes: int, alignment: int) -> int:
            return LIBC.malloc(nbytes) or 0

        def _raw_free(self, address: int) -> None:
            returned.append(address)
            LIBC.free(address)

    class S(Struct):
        x: Int64

    w = Watch()
    p = w(S)
    view = p.ref
    w.free(p)
    assert returned == [p.address]  # the memory went back with the view alive
    with pytest.raises(UseAfterFreeError):
        view.x


def test_a_conversion_that_frees_the_block_is_caught() -> None:
    # __index__ runs in the middle of the write and frees the struct: the
    # write must raise, not store into freed memory (in a subprocess: a
    # mistake here would be a crash).
    code = textwrap.dedent(
        """
        import rsalloc
        from rsalloc import Int32, Struct, calloc, free, UseAfterFreeError

        class S(Struct):
            x: Int32

        p = calloc(S)
        view = p.ref

        class Sneaky:
            def __index__(self):
                free(p)
                return 1

        try:
            view.x = Sneaky()
        except UseAfterFreeError:
            print("caught")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "caught"


def test_struct_pointers_with_every_allocator() -> None:
    class S(Struct):
        a: Int32
        b: Float64

    before = rsalloc.stats()
    p = malloc(S)
    p.ref.a = 1
    q = calloc(S, 5)
    assert q[4].b == 0.0
    with rsalloc.Arena() as arena:
        r = arena(S, 3)
        r[2].b = 1.5
        assert r[2].b == 1.5 and r.address % rsalloc.alignof(S) == 0
    free(p)
    free(q)
    after = rsalloc.stats()
    assert (after.live_count, after.live_bytes) == (before.live_count, before.live_bytes)


# --- Pointer[T] as a ctypes argument type (DESIGN §3b) -----------------------


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)  # a fresh handle: argtypes set here stay here


def test_from_param_strlen_and_memset() -> None:
    libc = _libc()
    strlen = libc.strlen
    strlen.argtypes = [Pointer[Uint8]]
    strlen.restype = ctypes.c_size_t
    s = to_native_utf8("héllo")
    assert strlen(s) == 6
    ints = calloc(Int32, 2)
    with pytest.raises(ctypes.ArgumentError, match="TypeError.*Pointer\\[Uint8\\]"):
        strlen(ints)
    for bad in (s.address, b"bytes", "str"):
        with pytest.raises(ctypes.ArgumentError, match="TypeError"):
            strlen(bad)
    memset = libc.memset
    memset.argtypes = [Pointer[Void], ctypes.c_int, Size]
    memset.restype = ctypes.c_void_p
    assert memset(ints, 0xFF, 8) == ints.address  # Pointer[Void] takes any Pointer
    assert ints[:] == [-1, -1]
    free(s)
    with pytest.raises(ctypes.ArgumentError, match="UseAfterFreeError"):
        strlen(s)
    # ctypes keeps only the message: call from_param to get the exception itself.
    with pytest.raises(UseAfterFreeError):
        Pointer[Uint8].from_param(s)
    free(ints)


def test_from_param_none_is_null() -> None:
    libc = _libc()
    strtol = libc.strtol
    strtol.argtypes = [Pointer[Uint8], Pointer[Pointer[Uint8]], ctypes.c_int]
    strtol.restype = ctypes.c_long
    s = to_native_utf8("1234abc")
    assert strtol(s, None, 10) == 1234
    end = calloc(Pointer[Uint8])
    assert strtol(s, end, 10) == 1234 and end[0].address == s.address + 4
    assert Pointer[Uint8].from_param(None) is None
    assert Pointer[Uint8].from_param(rsalloc.nullptr) is not None  # void * converts to any pointer
    free(end)
    free(s)


def test_pointers_pass_to_usual_ctypes_declarations() -> None:
    class TimeVal(Struct):
        tv_sec: ctypes.c_long  # type: ignore[valid-type]
        tv_usec: ctypes.c_long  # type: ignore[valid-type]

    class CTimeVal(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]

    libc = _libc()
    gtod = libc.gettimeofday
    gtod.restype = ctypes.c_int
    tv = calloc(TimeVal)
    for decl in ([ctypes.POINTER(TimeVal.ctype), ctypes.c_void_p], [Pointer[TimeVal], Pointer[Void]], [ctypes.c_void_p, ctypes.c_void_p]):
        gtod.argtypes = decl
        tv.ref.tv_sec = 0
        assert gtod(tv, None) == 0
        assert abs(tv.ref.tv_sec - time.time()) < 5
    ctv = calloc(CTimeVal)
    gtod.argtypes = [ctypes.POINTER(CTimeVal), ctypes.c_void_p]
    assert gtod(ctv, None) == 0 and abs(ctv.ref.tv_sec - time.time()) < 5
    free(ctv)
    free(tv)

    strlen = libc.strlen
    strlen.restype = ctypes.c_size_t
    s = to_native_utf8("four")
    for decl in (ctypes.c_char_p, ctypes.POINTER(ctypes.c_char), ctypes.c_void_p):
        strlen.argtypes = [decl]
        assert strlen(s) == 4, decl
        assert strlen(s.cast(Int8)) == 4, decl
    # What ctypes cannot be made to accept (docs/guide.md): a Uint8 Pointer
    # passes as POINTER(c_char), so POINTER(c_ubyte) refuses it.
    strlen.argtypes = [ctypes.POINTER(ctypes.c_ubyte)]
    with pytest.raises(ctypes.ArgumentError):
        strlen(s)
    assert strlen(ctypes.cast(s, ctypes.POINTER(ctypes.c_ubyte))) == 4  # the documented idiom

    ints = calloc(Int32, 3)
    ints[:] = [3, 1, 2]
    CMP = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int32))
    cmp = CMP(lambda a, b: (a[0] > b[0]) - (a[0] < b[0]))
    qsort = libc.qsort
    qsort.argtypes = [ctypes.POINTER(ctypes.c_int32), ctypes.c_size_t, ctypes.c_size_t, CMP]
    qsort.restype = None
    qsort(ints, 3, 4, cmp)
    assert ints[:] == [1, 2, 3]
    free(ints)

    # char **: a Pointer[Pointer[Uint8]] passes as POINTER(c_char_p).
    arr = calloc(Pointer[Uint8], 2)
    arr[0] = s
    view = ctypes.cast(arr, ctypes.POINTER(ctypes.c_char_p))
    assert view[0] == b"four"
    strtol = libc.strtol
    strtol.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int]
    digits = to_native_utf8("12x")
    assert strtol(digits, arr, 10) == 12 and arr[0].address == digits.address + 2
    for x in (arr, s, digits):
        free(x)


# --- typing ------------------------------------------------------------------


def _mypy(*files: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("mypy")
    pytest.importorskip("typing_extensions")
    env = dict(os.environ, MYPY_CACHE_DIR=os.devnull)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *map(str, files)],
        capture_output=True,
        text=True,
        env=env,
        cwd=TYPING,
    )


def test_struct_sample_type_checks_and_runs() -> None:
    out = _mypy(TYPING / "structs_sample.py")
    assert out.returncode == 0, out.stdout + out.stderr
    ns: dict[str, object] = {"__name__": "structs_sample"}
    exec(compile((TYPING / "structs_sample.py").read_text(), "structs_sample.py", "exec"), ns)
    if has_provenance():  # auth_info frees through read-back pointers (DESIGN §3a)
        assert ns["auth_info"]("45c6") == "45c6"  # type: ignore[operator]
    assert ns["linked"]() == 7  # type: ignore[operator]
    assert isinstance(ns["points"](), int)  # type: ignore[operator]
    assert ns["ctypes_arguments"]() == 4  # type: ignore[operator]


def test_mypy_rejects_wrong_kinds_in_fields(tmp_path: Path) -> None:
    bad = tmp_path / "bad_fields.py"
    bad.write_text(
        textwrap.dedent(
            """
            from rsalloc import Float64, Int32, Pointer, Struct, Uint8, calloc

            class S(Struct):
                x: Int32
                d: Float64
                p: Pointer[Uint8]

            s = calloc(S).ref
            s.x = "five"
            s.d = "1.5"
            s.p = "text"
            name: str = s.x
            """
        )
    )
    out = _mypy(bad)
    lines = [ln for ln in out.stdout.splitlines() if ": error:" in ln]
    assert [int(ln.split(":")[1]) for ln in lines] == [10, 11, 12, 13], out.stdout


def test_scalar_types_are_checked_argument_types() -> None:
    assert Size.from_param(2**64 - 1).value == 2**64 - 1
    assert Int8.from_param(-128).value == -128 and Float64.from_param(2).value == 2.0
    for t, bad in ((Size, -1), (Int8, 128), (Uint32, 2**32), (Float32, 1e300), (Bool, 2)):
        with pytest.raises((OverflowError, TypeError)):
            t.from_param(bad)
    for t, bad in ((Int32, "1"), (Int32, 1.5), (Float64, "x"), (Size, None)):
        with pytest.raises(TypeError):
            t.from_param(bad)
    with pytest.raises(TypeError):
        Void.from_param(0)
    libc = _libc()
    memset = libc.memset
    memset.argtypes = [Pointer[Void], ctypes.c_int, Size]
    p = calloc(Uint8, 4)
    with pytest.raises(ctypes.ArgumentError, match="OverflowError"):
        memset(p, 1, -1)  # a negative size never reaches C
    assert p.read_bytes() == bytes(4)
    free(p)


def test_arrays_and_struct_pointers_as_element_types() -> None:
    rows = calloc(Array[Int32, 3], 2)
    assert (rows.count, rows.nbytes) == (2, 24)
    rows[1] = [4, 5, 6]
    row = rows[1]
    assert (row.type, row.count, row[:]) == (Int32, 3, [4, 5, 6])
    assert rows.ref.address == rows.address and rows.cast(Int32)[3:] == [4, 5, 6]
    with nothing_changes(calloc, pointers=(rows,)):
        with pytest.raises(ValueError):
            rows[0] = [1, 2]

    class S(Struct):
        x: Int64

    items = calloc(S, 2)
    slots = calloc(Pointer[S], 2)
    slots[0] = items + 1
    slots[0].ref.x = 99
    assert items[1].x == 99 and slots[1].is_null
    free(slots)
    free(items)
    free(rows)
    with pytest.raises(UseAfterFreeError):
        row[0]
