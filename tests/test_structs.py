"""ctypes Structure, Union and array types as element types (DESIGN §2, §3 `ref`)."""

from __future__ import annotations

import ctypes
import gc

import numpy as np
import pytest
from _native import LIBC, nothing_changes

import rsalloc
from rsalloc import Int32, Uint8, UseAfterFreeError, calloc, free, malloc, to_native_utf8


class GUID(ctypes.Structure):
    _fields_ = [
        ("Data1", ctypes.c_uint32),
        ("Data2", ctypes.c_uint16),
        ("Data3", ctypes.c_uint16),
        ("Data4", ctypes.c_ubyte * 8),
    ]


class Number(ctypes.Union):
    _fields_ = [("i", ctypes.c_int64), ("d", ctypes.c_double)]


class Tagged(ctypes.Structure):
    _fields_ = [("tag", ctypes.c_int8), ("value", Number), ("next", ctypes.c_void_p)]


class Packed(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("flag", ctypes.c_uint8), ("value", ctypes.c_int32)]


class Flags(ctypes.Structure):
    _fields_ = [("a", ctypes.c_uint32, 3), ("b", ctypes.c_uint32, 5), ("c", ctypes.c_uint16)]


class BigEndian(ctypes.BigEndianStructure):
    _fields_ = [("x", ctypes.c_uint32), ("y", ctypes.c_int16)]


class Derived(GUID):
    _fields_ = [("extra", ctypes.c_double)]


class Person(ctypes.Structure):
    # The seed example: three char* fields, as C declares them in two ways.
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("email", ctypes.POINTER(ctypes.c_char)),
        ("city", ctypes.c_char_p),
    ]


AGGREGATES = [
    GUID,
    Number,
    Tagged,
    Packed,
    Flags,
    BigEndian,
    Derived,
    Person,
    ctypes.c_int16 * 3,
    (ctypes.c_double * 2) * 3,
    GUID * 2,
    Number * 2,
    ctypes.c_longdouble,
]


@pytest.mark.parametrize("t", AGGREGATES, ids=lambda t: t.__name__)
def test_sizeof_alignof_agree_with_ctypes(t: type) -> None:
    assert rsalloc.sizeof(t) == ctypes.sizeof(t)
    assert rsalloc.alignof(t) == ctypes.alignment(t)
    p = calloc(t, 3)
    assert (p.count, p.nbytes, p.type) == (3, 3 * ctypes.sizeof(t), t)
    assert p.address % ctypes.alignment(t) == 0
    free(p)


@pytest.mark.parametrize("t", AGGREGATES, ids=lambda t: t.__name__)
def test_numpy_sees_the_exact_layout(t: type) -> None:
    p = calloc(t, 2)
    view = memoryview(p)
    assert (view.shape[0], view.itemsize, view.nbytes) == (2, ctypes.sizeof(t), 2 * ctypes.sizeof(t))
    a = np.asarray(p)
    assert a.shape[0] == 2 and a.nbytes == p.nbytes and a.dtype.itemsize * a[0].size == ctypes.sizeof(t)
    del view, a
    free(p)


def test_calloc_guid_and_ref_lives_in_the_block() -> None:
    p = calloc(GUID)
    assert (p.count, p.nbytes) == (1, 16)
    assert p.read_bytes() == bytes(16)
    g = p.ref
    assert isinstance(g, GUID) and ctypes.addressof(g) == p.address
    g.Data1 = 0x11223344
    g.Data4[7] = 0xFF
    assert p.read_bytes() == (0x11223344).to_bytes(4, "little") + bytes(11) + b"\xff"
    p.write_bytes(b"\x07\x00", offset=4)
    assert g.Data2 == 7
    assert p.value.Data1 == 0x11223344  # p[0] is an instance in the block too
    del g
    free(p)


def test_arrays_of_structs_offset_index_and_copy_in() -> None:
    p = calloc(GUID, 4)
    (p + 2).ref.Data2 = 0xBEEF
    assert p[2].Data2 == 0xBEEF and p[-2].Data2 == 0xBEEF
    src = GUID(1, 2, 3, (ctypes.c_ubyte * 8)(*range(8)))
    p[3] = src
    src.Data1 = 99  # a copy was stored, not a reference
    assert (p[3].Data1, p[3].Data3, list(p[3].Data4)) == (1, 3, list(range(8)))
    assert [g.Data2 for g in p[1:3]] == [0, 0xBEEF]
    with nothing_changes(calloc, pointers=(p,)):
        with pytest.raises(TypeError, match="GUID"):
            p[0] = Number(5)
        with pytest.raises(IndexError):
            p[4]
        with pytest.raises(IndexError):
            p + 5
    free(p)


def test_ref_pins_the_memory_after_free() -> None:
    # A Python allocator shows when the memory really goes back.
    returned: list[int] = []

    class Watch(rsalloc.Allocator):
        def _raw_alloc(self, nbytes: int, alignment: int) -> int:
            return LIBC.malloc(nbytes) or 0

        def _raw_free(self, address: int) -> None:
            returned.append(address)
            LIBC.free(address)

    w = Watch()
    p = w(GUID)
    g = p.ref
    g.Data1 = 42
    w.free(p)
    assert not p.alive
    with pytest.raises(UseAfterFreeError):
        p.ref
    assert w.stats().live_count == 0
    assert returned == []  # the instance still uses the bytes
    assert g.Data1 == 42
    g.Data1 = 43  # and may still write them
    del g
    gc.collect()
    assert returned == [p.address]


def test_union_and_nested_struct_elements() -> None:
    p = calloc(Tagged, 2)
    p[1].value.d = 2.5
    p[1].tag = -1
    n = (p + 1).cast(Uint8)
    assert n.count == ctypes.sizeof(Tagged)
    raw = np.asarray(p)
    assert raw["tag"].tolist() == [0, -1]
    assert bytes(raw["value"][1]) == np.float64(2.5).tobytes()
    del raw
    u = calloc(Number)
    u.ref.i = -1
    assert u.cast(ctypes.c_uint64)[0] == 2**64 - 1
    free(u)
    free(p)


def test_cast_to_and_from_ctypes_scalars() -> None:
    p = calloc(GUID, 2)
    words = p.cast(ctypes.c_uint32)
    assert (words.count, words.type) == (8, ctypes.c_uint32)
    words[4] = 0xCAFEBABE
    assert p[1].Data1 == 0xCAFEBABE
    with pytest.raises(OverflowError):
        words[0] = 2**32
    back = words.cast(GUID)
    assert back.count == 2 and back[1].Data1 == 0xCAFEBABE
    ints = malloc(ctypes.c_int32, 5)
    assert ints.cast(GUID).count == 1  # 20 bytes hold one 16-byte GUID
    assert ints.ref.__class__ is ctypes.c_int32
    free(ints)
    free(p)


def test_numpy_structured_dtype_reads_and_writes_the_struct() -> None:
    p = calloc(GUID, 3)
    a = np.asarray(p)
    assert a.dtype.names == ("Data1", "Data2", "Data3", "Data4")
    assert a.dtype["Data4"].shape == (8,)
    a["Data1"] = [1, 2, 3]
    a[2]["Data4"][0] = 9
    assert [g.Data1 for g in p] == [1, 2, 3] and p[2].Data4[0] == 9
    del a
    q = calloc(Packed, 2)
    b = np.asarray(q)
    assert b.dtype.fields is not None
    assert b.dtype.fields["value"][1] == 1  # packed offset kept
    b["value"] = [-5, 7]
    assert [s.value for s in q] == [-5, 7]
    del b
    r = calloc(BigEndian)
    r.ref.x = 0x01020304
    assert np.asarray(r)["x"][0] == 0x01020304
    assert r.read_bytes()[:4] == b"\x01\x02\x03\x04"
    for x in (p, q, r):
        free(x)


def test_seed_example_struct_of_c_strings() -> None:
    name, email, city = (to_native_utf8(s) for s in ("Zoë", "zoe@example.org", "Zürich"))
    person = calloc(Person)
    ref = person.ref
    # A ctypes pointer field takes an rsalloc Pointer through ctypes.cast.
    ref.name = ctypes.cast(name, ctypes.c_char_p)
    ref.email = ctypes.cast(email, ctypes.POINTER(ctypes.c_char))
    ref.city = ctypes.cast(city, ctypes.c_char_p)
    assert ref.name == "Zoë".encode()
    assert ctypes.string_at(ref.email) == b"zoe@example.org"
    # The fields hold the addresses of the rsalloc blocks (no copies), and C
    # sees the strings: strlen through each field.
    slots = person.cast(rsalloc.Pointer[Uint8])
    assert [s.address for s in slots] == [name.address, email.address, city.address]
    assert [LIBC.strlen(s.address) for s in slots] == [4, 15, 7]
    assert [s.to_str() for s in slots] == ["Zoë", "zoe@example.org", "Zürich"]
    free(city)
    # A dead Pointer cannot become a C pointer (ctypes wraps the error).
    with pytest.raises(ctypes.ArgumentError, match="UseAfterFreeError"):
        ctypes.cast(city, ctypes.c_char_p)
    del ref
    for p in (person, name, email):
        free(p)


def test_py_object_is_not_an_element_type() -> None:
    with nothing_changes(malloc):
        with pytest.raises(TypeError):
            malloc(ctypes.py_object)
        with pytest.raises(TypeError):
            rsalloc.sizeof(ctypes.py_object)


def test_long_double_is_opaque_but_reachable() -> None:
    p = calloc(ctypes.c_longdouble, 2)
    p[1] = ctypes.c_longdouble(1.5)
    assert p[1].value == 1.5 and (p + 1).ref.value == 1.5
    free(p)


def test_pointer_fields_read_as_rsalloc_pointers() -> None:
    p = calloc(ctypes.c_char_p, 2)
    s = to_native_utf8("hi")
    p[0] = s
    assert p[0].address == s.address and p[0].to_str() == "hi"
    assert p.ref.value == b"hi"
    assert p[1].is_null
    with pytest.raises(TypeError):
        p[1] = "not a pointer"
    free(s)
    free(p)


def test_struct_slots_in_int32_memory() -> None:
    # Element access of a plain Int32 block through a struct view and back.
    p = calloc(Int32, 8)
    p.cast(GUID)[1] = GUID(Data1=7)
    assert p[4] == 7
    free(p)


def test_structs_in_an_arena_and_the_seed_example_inside_one() -> None:
    before = rsalloc.stats()
    with rsalloc.Arena() as arena:
        guids = arena(GUID, 4)
        assert guids.count == 4 and guids.nbytes == 4 * ctypes.sizeof(GUID)
        (guids + 3).ref.Data1 = 0xDEADBEEF
        assert guids[3].Data1 == 0xDEADBEEF
        person = arena(Person)
        ref = person.ref
        for field, text in (("name", "Ada"), ("email", "ada@example.org"), ("city", "London")):
            s = rsalloc.to_native_utf8(text, arena)
            kind = ctypes.POINTER(ctypes.c_char) if field == "email" else ctypes.c_char_p
            setattr(ref, field, ctypes.cast(s, kind))
        slots = person.cast(rsalloc.Pointer[Uint8])
        assert [LIBC.strlen(s.address) for s in slots] == [3, 15, 6]
        assert [s.to_str() for s in slots] == ["Ada", "ada@example.org", "London"]
        del ref
    assert not person.alive and not guids.alive
    after = rsalloc.stats()
    assert (after.live_count, after.live_bytes) == (before.live_count, before.live_bytes)


def test_many_classes_alternating_get_their_own_layouts() -> None:
    # Lookups go through a small table of recent types keyed by the class's
    # address (src/py/types.rs, RECENT): with far more classes than entries,
    # alternating between them, each allocation still gets its own class,
    # size and fields, and ctypes and scalar types mixed in too.
    import ctypes

    classes = []
    for i in range(300):
        fields = {f"f{j}": rsalloc.Int32 for j in range(i % 7 + 1)}
        classes.append(type(f"S{i}", (rsalloc.Struct,), {"__annotations__": fields}))
    others = [rsalloc.Int8, rsalloc.Float64, ctypes.c_int16, rsalloc.Pointer[rsalloc.Uint8], ctypes.c_double]
    for rnd in range(3):
        for i, cls in enumerate(classes if rnd % 2 == 0 else reversed(classes)):
            p = rsalloc.calloc(cls)
            assert p.type is cls and p.nbytes == 4 * (classes.index(cls) % 7 + 1)
            setattr(p.ref, "f0", i)
            assert p.ref.f0 == i
            rsalloc.free(p)
            t = others[i % len(others)]
            q = rsalloc.calloc(t, 2)
            assert q.type is t and q.count == 2 and q.nbytes == 2 * rsalloc.sizeof(t)
            rsalloc.free(q)
