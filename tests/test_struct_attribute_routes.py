"""`p.ref` and struct field attributes through the fence's attribute routes
(src/py/cpython/fast_structs.rs, `struct_attribute_routes`): `p.ref` goes
straight to its getter, a view's field straight to its descriptor, and the
view `p.ref` made last is returned again once nobody holds it. Every test
here holds with the routes off too (`RSALLOC_FAST_PATHS=0`, a CI step): they
state what the generic lookup does, which the routes must not change."""

from __future__ import annotations

import gc

import pytest

import rsalloc
from rsalloc import Int32, Int64, Struct, UseAfterFreeError
from rsalloc._rsalloc import _fail_object_creation


class S(Struct):
    x: Int32
    y: Int32


class T(Struct):
    x: Int64


def test_identity_is_that_of_fresh_views() -> None:
    p = rsalloc.calloc(S)
    assert p.ref is not p.ref
    a = p.ref
    b = p.ref
    assert a is not b
    a.x = 3
    assert b.x == 3 and p.ref.x == 3
    rsalloc.free(p)


def test_a_dead_block_raises_though_its_view_was_kept() -> None:
    p = rsalloc.calloc(S)
    p.ref.x = 1
    assert p.ref.x == 1
    rsalloc.free(p)
    with pytest.raises(UseAfterFreeError):
        p.ref
    with pytest.raises(UseAfterFreeError):
        p.ref.x


def test_a_new_block_at_the_same_address_gets_its_own_view() -> None:
    for _ in range(50):
        p = rsalloc.calloc(S)
        p.ref.x = 7
        assert p.ref.x == 7
        address = p.address
        rsalloc.free(p)
        q = rsalloc.calloc(S)  # the block cache often hands the address back
        assert q.ref.x == 0
        if q.address == address:
            with pytest.raises(UseAfterFreeError):
                p.ref.x
        rsalloc.free(q)


def test_other_elements_and_types_at_one_block_are_not_confused() -> None:
    p = rsalloc.calloc(S, 2)
    p[1].x = 9
    assert p.ref.x == 0
    assert (p + 1).ref.x == 9
    assert p.ref.x == 0
    wide = p.cast(T)
    wide.ref.x = (5 << 32) | 4
    assert p.ref.x == 4 and p.ref.y == 5
    assert type(wide.ref) is T and type(p.ref) is S
    rsalloc.free(p)


def test_arena_and_foreign_views_read_as_before() -> None:
    with rsalloc.Arena() as a:
        p = a(S)
        p.ref.x = 2
        assert p.ref.x == 2
    with pytest.raises(UseAfterFreeError):
        p.ref.x
    q = rsalloc.calloc(S)
    v = rsalloc.Pointer.from_address(q.address, S)
    v.ref.y = 6
    assert q.ref.y == 6 and v.ref.y == 6
    rsalloc.free(q)


def test_the_object_creation_hook_fails_a_reused_view_too() -> None:
    p = rsalloc.calloc(S)
    assert p.ref.x == 0  # a view now kept for the next p.ref
    _fail_object_creation(1)
    with pytest.raises(MemoryError):
        p.ref
    _fail_object_creation(0)
    assert p.ref.x == 0
    rsalloc.free(p)


def test_names_that_are_not_fields_take_the_generic_lookup() -> None:
    class M(Struct):
        x: Int32

        def doubled(self) -> int:
            return 2 * self.x

        @property
        def label(self) -> str:
            return f"x={self.x}"

    p = rsalloc.calloc(M)
    p.ref.x = 21
    assert p.ref.doubled() == 42 and p.ref.label == "x=21"
    name = "".join(["r", "ef"])  # not the interned "ref"
    assert getattr(p, name).x == 21
    with pytest.raises(AttributeError, match="nope"):
        p.ref.nope
    with pytest.raises(AttributeError):
        p.ref.nope = 1
    with pytest.raises(AttributeError):
        del p.ref.x
    with pytest.raises(AttributeError):
        p.nope
    assert p.ref.x == 21
    rsalloc.free(p)


def test_a_class_changed_after_use_is_looked_up_again() -> None:
    class C(Struct):
        x: Int32

    p = rsalloc.calloc(C)
    p.ref.x = 4
    assert p.ref.x == 4
    field = C.__dict__["x"]
    C.x = property(lambda self: 40)  # type: ignore[assignment]
    assert p.ref.x == 40
    with pytest.raises(AttributeError):
        p.ref.x = 5
    C.x = field  # type: ignore[assignment]
    p.ref.x = 5
    assert p.ref.x == 5
    rsalloc.free(p)


def test_own_attribute_hooks_are_kept() -> None:
    seen: list[str] = []

    class H(Struct):
        x: Int32

        def __getattr__(self, name: str) -> str:
            seen.append(name)
            return name.upper()

    p = rsalloc.calloc(H)
    p.ref.x = 3
    assert p.ref.x == 3 and p.ref.other == "OTHER" and seen == ["other"]
    rsalloc.free(p)


def test_a_kept_view_holds_no_block_alive() -> None:
    # The view kept for reuse keeps its record, not its block: the block is
    # freed, counted free and reported nowhere as a leak.
    before = rsalloc.malloc.stats()
    p = rsalloc.malloc(S)
    p.ref.x = 1
    rsalloc.free(p)
    del p
    gc.collect()
    after = rsalloc.malloc.stats()
    assert after.live_count == before.live_count
    assert after.live_bytes == before.live_bytes


# Allocator objects are called through a vectorcall entry (the same fence
# trick): the plain `allocator(T[, n])` without an argument tuple, every
# other call through the type's tp_call with the arguments it would have had.


def test_allocator_calls_of_every_shape() -> None:
    p = rsalloc.malloc(Int32, 4)
    assert p.count == 4 and p.type is Int32
    q = rsalloc.calloc(type=Int64, count=3)
    assert q.count == 3 and q.type is Int64 and q[2] == 0
    r = rsalloc.calloc(Int32, 2, alignment=64)
    assert r.address % 64 == 0 and r.count == 2
    s = rsalloc.calloc()
    assert s.type is rsalloc.Uint8 and s.count == 1
    with pytest.raises(TypeError):
        rsalloc.malloc(Int32, 1, 2)
    with pytest.raises(TypeError):
        rsalloc.malloc(Int32, nope=1)
    with pytest.raises(ValueError):
        rsalloc.malloc(Int32, -1)
    with pytest.raises(TypeError):
        rsalloc.malloc(Int32, 2.5)
    for x in (p, q, r, s):
        rsalloc.free(x)


def test_allocators_defined_in_python_and_limited_ones_are_called_as_before() -> None:
    import ctypes

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    calls: list[int] = []

    class Pool(rsalloc.Allocator):
        def _raw_alloc(self, nbytes: int, alignment: int) -> int:
            calls.append(nbytes)
            return libc.malloc(nbytes) or 0

        def _raw_free(self, address: int) -> None:
            libc.free(address)

    class Counting(Pool):
        def __call__(self, *args: object, **kwargs: object) -> rsalloc.Pointer:  # type: ignore[override]
            calls.append(-1)
            return super().__call__(*args, **kwargs)

    pool = Pool()
    p = pool(Int32, 4)
    assert calls == [16] and p.allocator is pool
    c = Counting()
    q = c(Int32, count=2)
    assert calls == [16, -1, 8]
    limited = rsalloc.malloc.limited(64)
    r = limited(Int32, 4)
    with pytest.raises(MemoryError):
        limited(Int32, 100)
    f = rsalloc.ForeignAllocator(libc.malloc, libc.free)
    t = f(Int64, 2)
    assert t.count == 2
    for x in (p, q, r, t):
        rsalloc.free(x)


def test_names_made_at_run_time_resolve_by_their_text() -> None:
    # A str built at run time dies after its lookup, and the next one of its
    # size is made at its address: a field read through it must follow the
    # text, not the address.
    class W(Struct):
        alpha: Int32
        gamma: Int32

    p = rsalloc.calloc(W)
    p.ref.alpha, p.ref.gamma = 1, 2
    v = p.ref
    for _ in range(1000):
        assert getattr(v, "".join(["al", "pha"])) == 1
        assert getattr(v, "".join(["gam", "ma"])) == 2
        setattr(v, "".join(["gam", "ma"]), 2)
        assert v.alpha == 1
    rsalloc.free(p)


def test_a_str_subclass_name_reads_its_field() -> None:
    class Name(str):
        pass

    p = rsalloc.calloc(S)
    p.ref.x, p.ref.y = 3, 4
    v = p.ref
    for k in range(3):
        assert getattr(v, Name("x")) == 3 and getattr(v, Name("y")) == 4 + k
        setattr(v, Name("y"), 5 + k)
        assert v.y == 5 + k
    rsalloc.free(p)


def test_many_fields_of_many_classes_in_turn_each_reach_their_own() -> None:
    # More (class, name) pairs than the field cache holds, used in turn, so
    # entries are evicted and looked up again at every round; names made
    # at run time as well as interned ones.
    classes = []
    for c in range(6):
        ns = {"__annotations__": {f"f{i}": Int32 for i in range(12)}}
        classes.append(type(f"Wide{c}", (Struct,), ns))
    blocks = [rsalloc.calloc(cls) for cls in classes]
    views = [p.ref for p in blocks]
    for rnd in range(3):
        for c, v in enumerate(views):
            for i in range(12):
                name = "".join(["f", str(i)]) if rnd == 1 else f"f{i}"
                setattr(v, name, 1000 * rnd + 100 * c + i)
        for c, v in enumerate(views):
            assert [getattr(v, f"f{i}") for i in range(12)] == [1000 * rnd + 100 * c + i for i in range(12)]
    for c, p in enumerate(blocks):
        assert p.cast(Int32)[:12] == [2000 + 100 * c + i for i in range(12)]
        rsalloc.free(p)


def test_the_plain_call_refuses_sizes_as_the_keyword_call_does() -> None:
    # `calloc(T, n)` takes the fence's route (64-bit size arithmetic);
    # `calloc(type=T, count=n)` the PyO3 method (128-bit): same answers.
    before = rsalloc.stats().live_count
    for t in (Int32, Int64, S, rsalloc.Uint8):
        for n in (-1, -(2**63), 2**60, 2**61, 2**62, 2**63 - 1, 2**63, 2**64, 2**100):
            errors = []
            for call in (lambda: rsalloc.calloc(t, n), lambda: rsalloc.calloc(type=t, count=n)):
                with pytest.raises((ValueError, OverflowError, MemoryError)) as e:
                    call()
                errors.append((type(e.value), str(e.value).replace("type=", "").replace("count=", "")))
            assert errors[0] == errors[1], (t, n)
        for n in (0, 1, 3):
            p, q = rsalloc.calloc(t, n), rsalloc.calloc(type=t, count=n)
            assert (p.count, p.type, p.nbytes) == (q.count, q.type, q.nbytes)
            rsalloc.free(p)
            rsalloc.free(q)
    with pytest.raises(TypeError, match="no size"):
        rsalloc.calloc(rsalloc.Void, 1)
    assert rsalloc.stats().live_count == before
