"""The hand-written entry points (src/py/cpython/fast.rs) and the Pointer free list
(src/py/cpython/freelist.rs) behave exactly like the PyO3 code they stand in front of.

Each fast call has a twin that takes PyO3's route: a keyword argument makes
`allocate` and `free` delegate, and `type(p).__getitem__` / `__setitem__`
call the slot functions PyO3 installed before rsalloc replaced them.
"""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
import sysconfig
import threading

import pytest
from _native import LIBC

import rsalloc
from rsalloc import Arena, Int32, Int64, calloc, free, malloc


def outcome(fn, *args, **kwargs):
    """(exception type, message) of a call, or ('ok', repr-free summary).
    A block from malloc or calloc is freed (no leaks under memcheck)."""
    try:
        r = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - any exception is the outcome
        return type(e), str(e)
    summary = None if r is None else (type(r).__name__, getattr(r, "count", None))
    if isinstance(r, rsalloc.Pointer) and r.allocator in (malloc, calloc):
        free(r)
    return "ok", summary


@pytest.mark.parametrize("n", [0, 1, 64, 4096, -1, 2**62, 2**63 - 1, -(2**63), 2**70])
@pytest.mark.parametrize("allocator", [malloc, calloc])
def test_allocate_matches_the_keyword_route(allocator, n):
    fast = outcome(allocator.allocate, n)
    slow = outcome(allocator.allocate, nbytes=n)
    assert fast == slow
    if fast[0] == "ok":
        assert fast[1] == ("Pointer", n)


@pytest.mark.parametrize("n", [0, 32, -1, 2**63 - 1, 2**70])
def test_arena_allocate_matches_the_keyword_route(n):
    with Arena() as a:
        a.allocate(1)  # the fast route serves an arena whose handle is set
        assert outcome(a.allocate, n) == outcome(a.allocate, nbytes=n)


def test_arena_allocate_on_a_closed_arena_matches():
    a = Arena()
    a.allocate(1)
    a.release_all(reuse=False)
    fast, slow = outcome(a.allocate, 8), outcome(a.allocate, nbytes=8)
    assert fast == slow
    assert fast[0] is rsalloc.ArenaClosedError


def test_free_matches_the_keyword_route():
    p = malloc.allocate(16)
    assert outcome(free, p) == ("ok", None)
    fast, slow = outcome(free, p), outcome(free, p=p)
    assert fast == slow
    assert fast[0] is rsalloc.DoubleFreeError
    assert outcome(free, 3) == outcome(free, p=3)
    assert outcome(free, rsalloc.nullptr) == ("ok", None)


def test_free_of_an_arena_block_and_of_a_view_matches():
    with Arena(malloc) as a:
        p = a.allocate(16)
        assert outcome(free, p) == outcome(free, p=p) == ("ok", None)
    q = malloc.allocate(16)
    v = q + 1
    assert outcome(free, v) == outcome(free, p=v)
    assert outcome(free, v)[0] is rsalloc.OwnershipError
    free(q)


@pytest.mark.parametrize("i", [0, 3, -1, -4, 4, -5, 2**62, 2**70, True, 1.0, "x"])
def test_item_read_matches_the_pyo3_slot(i):
    p = calloc(Int32, 4)
    p[3] = -7
    assert outcome(lambda: p[i]) == outcome(type(p).__getitem__, p, i)
    free(p)
    assert outcome(lambda: p[0]) == outcome(type(p).__getitem__, p, 0)
    assert outcome(lambda: p[0])[0] is rsalloc.UseAfterFreeError


@pytest.mark.parametrize("v", [0, -1, 2**31 - 1, 2**31, -(2**31) - 1, 2**70, 1.5, True, None, "7"])
def test_item_write_matches_the_pyo3_slot(v):
    fast_p, slow_p = calloc(Int32, 2), calloc(Int32, 2)

    def fast():
        fast_p[1] = v

    def slow():
        type(slow_p).__setitem__(slow_p, 1, v)

    assert outcome(fast) == outcome(slow)
    assert list(fast_p) == list(slow_p)
    free(fast_p)
    free(slow_p)
    slow_p = fast_p  # the same freed pointer, both routes: the same message
    assert outcome(fast) == outcome(slow)
    assert outcome(fast)[0] is rsalloc.UseAfterFreeError


NUMERIC = [t for t in rsalloc._types.SCALARS if t is not rsalloc.Void]
VALUES = [0, 1, -1, 127, 128, -129, 255, 256, 2**15, 2**31, -(2**31) - 1, 2**32, 2**63 - 1, -(2**63), 2**64 - 1]
VALUES += [2**64, 2**70, 1.5, -0.0, 3.4e38, 3.5e38, 1e308, float("inf"), float("nan"), True, False, None]


@pytest.mark.parametrize("t", NUMERIC, ids=lambda t: t.__name__)
def test_every_numeric_type_reads_and_writes_as_the_pyo3_slots_do(t):
    """The fast routes convert each kind themselves (ranges, float width,
    bools): every value and type must end as PyO3's route does, in memory
    and in what is read back."""
    fast_p, slow_p = calloc(t, 2), calloc(t, 2)
    for v in VALUES:

        def fast():
            fast_p[1] = v

        def slow():
            type(slow_p).__setitem__(slow_p, 1, v)

        assert outcome(fast) == outcome(slow), (t, v)
        assert fast_p.read_bytes() == slow_p.read_bytes(), (t, v)
        got, want = fast_p[1], type(slow_p).__getitem__(slow_p, 1)
        assert type(got) is type(want) and (got == want or got != got and want != want), (t, v)
    for p in (fast_p, slow_p):
        free(p)


def test_float_and_pointer_elements():
    f = calloc(rsalloc.Float64, 2)
    f[0] = 2.5
    f[1] = 3
    assert (f[0], f[1]) == (2.5, 3.0)
    slots = calloc(rsalloc.Pointer[Int32], 1)
    target = calloc(Int32, 1)
    slots[0] = target
    assert slots[0].address == target.address
    for p in (f, slots, target):
        free(p)


def pointer_slot_outcome(fn):
    """`outcome`, with a Pointer result summarised by what it resolves to."""
    try:
        r = fn()
    except Exception as e:  # noqa: BLE001 - any exception is the outcome
        return type(e), str(e)
    if isinstance(r, rsalloc.Pointer):
        return "ok", (r.address, r.count, r.alive, r.type.__name__)
    return "ok", r


@pytest.mark.parametrize("i", [0, 2, -1, -3, 3, -4, 2**70, 1.0])
def test_pointer_slot_read_matches_the_pyo3_slot(i):
    slots = calloc(rsalloc.Pointer[Int32], 3)
    targets = [calloc(Int32, 2), Arena(), None]
    slots[0] = targets[0]
    region_block = targets[1](Int32, 4)
    slots[1] = region_block + 1  # an interior view of a region block
    assert pointer_slot_outcome(lambda: slots[i]) == pointer_slot_outcome(lambda: type(slots).__getitem__(slots, i))
    free(targets[0])  # a freed block read back: a dead view, both routes
    targets[1].release_all()
    assert pointer_slot_outcome(lambda: slots[i]) == pointer_slot_outcome(lambda: type(slots).__getitem__(slots, i))
    free(slots)
    assert pointer_slot_outcome(lambda: slots[0])[0] is rsalloc.UseAfterFreeError
    assert pointer_slot_outcome(lambda: slots[0]) == pointer_slot_outcome(lambda: type(slots).__getitem__(slots, 0))


def test_pointer_slot_write_matches_the_pyo3_slot():
    live, dead = calloc(Int32, 1), calloc(Int32, 1)
    free(dead)
    for v in [live, dead, None, rsalloc.nullptr, live + 1, 12345, "x"]:
        for i in [0, 1, -2, 2, -3]:
            fast_p, slow_p = calloc(rsalloc.Pointer[Int32], 2), calloc(rsalloc.Pointer[Int32], 2)
            fast_p[0] = fast_p[1] = slow_p[0] = slow_p[1] = live

            def fast():
                fast_p[i] = v

            def slow():
                type(slow_p).__setitem__(slow_p, i, v)

            # the two blocks' addresses differ; everything else is the same
            unaddressed = [re.sub(r"0x[0-9a-f]+", "ADDR", str(o)) for o in (outcome(fast), outcome(slow))]
            assert unaddressed[0] == unaddressed[1], (v, i)
            assert fast_p.read_bytes() == slow_p.read_bytes(), (v, i)
            for p in (fast_p, slow_p):
                free(p)
    free(live)


def test_errors_raised_on_the_fast_routes_leak_no_references():
    # Raising goes through Python::attach so that PyO3 releases the error's
    # objects; without it they would be leaked, one reference per error.
    p = calloc(Int32, 1)
    free(p)
    kinds = [ValueError, rsalloc.UseAfterFreeError, rsalloc.DoubleFreeError, IndexError]
    before = [sys.getrefcount(k) for k in kinds]
    q = calloc(Int32, 1)
    # Pointer slots: their reads and writes run outside the registered route
    # and hand back the errors they make (src/py/cpython/fast.rs).
    slots, dead_slots = calloc(rsalloc.Pointer[Int32], 1), calloc(rsalloc.Pointer[Int32], 1)
    free(dead_slots)
    for _ in range(2000):
        with pytest.raises(ValueError):
            malloc.allocate(-1)
        with pytest.raises(rsalloc.UseAfterFreeError):
            p[0]
        with pytest.raises(rsalloc.DoubleFreeError):
            free(p)
        with pytest.raises(IndexError):
            q[1]
        with pytest.raises(IndexError):
            slots[1]
        with pytest.raises(IndexError):
            slots[-2] = q
        with pytest.raises(rsalloc.UseAfterFreeError):
            slots[0] = p
        with pytest.raises(rsalloc.UseAfterFreeError):
            dead_slots[0]
        with pytest.raises(rsalloc.UseAfterFreeError):
            dead_slots[0] = None
    assert slots[0].is_null  # no failed write changed the slot
    free(q)
    free(slots)
    gc.collect()
    after = [sys.getrefcount(k) for k in kinds]
    assert [a - b for a, b in zip(after, before)] == [0, 0, 0, 0]


def test_free_list_keeps_the_type_reference_count_balanced():
    # Every object taken from the list holds a reference to its (heap) type
    # and gives it back when it dies: the count returns to where it was.
    def rounds():
        for _ in range(5000):
            free(malloc.allocate(8))
        held = [malloc.allocate(8) for _ in range(600)]  # more than the list keeps
        for p in held:
            free(p)

    rounds()  # warm-up: lazily created caches take their references once
    gc.collect()
    before = sys.getrefcount(rsalloc.Pointer)
    for _ in range(3):
        rounds()
    gc.collect()
    after = sys.getrefcount(rsalloc.Pointer)  # outside the assert: pytest's rewrite holds its operands
    assert after == before


def test_a_recycled_pointer_object_is_fresh():
    p = malloc.allocate(8)
    free(p)
    del p
    q = calloc(Int32, 3)  # made from the free list: the dead object above
    assert "live" in repr(q) and q.count == 3 and list(q) == [0, 0, 0]
    free(q)


def test_fast_routes_under_threads_keep_exact_counts():
    before = malloc.stats()

    def work():
        for _ in range(2000):
            p = malloc.allocate(24)
            p[0] = 1
            assert p[0] == 1
            free(p)
        with Arena() as a:
            for _ in range(500):
                a.allocate(8)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = malloc.stats()
    assert after.live_count == before.live_count
    assert after.total_allocs - before.total_allocs == 8000
    assert after.total_frees - before.total_frees == 8000


def test_tracking_takes_the_pyo3_route_and_records_the_site():
    from rsalloc import tracking

    tracking.enable()
    try:
        p = malloc.allocate(8)  # this line is the allocation site
        found = [r for r in tracking.leaks() if r.address == p.address]
    finally:
        tracking.disable()
    free(p)
    assert len(found) == 1
    assert "test_fast_paths.py" in found[0].location


class _Pool(rsalloc.Allocator):
    """A Python-defined allocator over libc, logging its frees."""

    def __init__(self) -> None:
        super().__init__()
        self.freed: list[int] = []

    def _raw_alloc(self, nbytes: int, alignment: int) -> int:
        return LIBC.malloc(nbytes) or 0

    def _raw_free(self, address: int) -> None:
        self.freed.append(address)
        LIBC.free(address)


def _dealloc_cases():
    """(name, make) pairs: make() returns (pointer, check) where check() runs
    after the pointer's last reference is gone. Each owner kind reaches a
    different dealloc route (freelist.rs): rsalloc's own when dropping runs
    no Python code, PyO3's otherwise."""

    def plain():
        p = malloc.allocate(8)
        free(p)
        return p, lambda: None

    def view_of_a_live_block():
        p = malloc(Int32, 4)
        v = p + 1  # shares the record: dropping v only counts down
        return v, lambda: free(p)

    def autofree():
        before = malloc.stats().live_count
        p = malloc.allocate(8).autofree()
        return p, lambda: _eq(malloc.stats().live_count, before)

    def autofree_calloc_view():
        before = calloc.stats().live_count
        p = calloc(Int32, 4).autofree()
        q = p + 2  # p dies first (a shared record), then q takes the block with it
        return q, lambda: _eq(calloc.stats().live_count, before)

    def python_allocator_autofree():
        pool = _Pool()
        p = pool.allocate(8).autofree()  # dropping it calls Python: PyO3's route
        addr = p.address
        return p, lambda: _eq(pool.freed, [addr])

    def arena_region():
        a = Arena()
        p = a.allocate(8)
        return p, lambda: (a.release_all(), _eq(a.stats().live_count, 0))

    def region_outliving_its_arena():
        a = Arena()
        p = a.allocate(8)
        del a  # the pointer holds the region's last reference: PyO3's route
        return p, lambda: None

    def tracked():
        from rsalloc import tracking

        tracking.enable()
        try:
            p = malloc.allocate(8)
        finally:
            tracking.disable()
        free(p)
        return p, lambda: None

    def foreign():
        return rsalloc.Pointer.from_address(id(object()), Int32), lambda: None

    return [
        (f.__name__, f)
        for f in (
            plain,
            view_of_a_live_block,
            autofree,
            autofree_calloc_view,
            python_allocator_autofree,
            arena_region,
            region_outliving_its_arena,
            tracked,
            foreign,
        )
    ]


def _eq(a, b):
    assert a == b


@pytest.mark.parametrize("name,make", _dealloc_cases(), ids=[n for n, _ in _dealloc_cases()])
def test_every_dealloc_route_releases_the_object_and_its_owner(name, make):
    for _ in range(3):  # warm-up: lazily created caches take references once
        p, check = make()
        del p
        check()
    gc.collect()
    before = sys.getrefcount(rsalloc.Pointer)
    for _ in range(300):
        p, check = make()
        del p
        check()
    gc.collect()
    after = sys.getrefcount(rsalloc.Pointer)
    assert after == before


_DIGIT_EDGES = [
    0, 1, -1, 7, -7,
    2**30 - 1, 2**30, 2**30 + 1, -(2**30) + 1, -(2**30), -(2**30) - 1,
    2**31, 2**59 + 5, 2**60 - 1, 2**60, 2**60 + 1, -(2**60) + 1, -(2**60), -(2**60) - 1,
    2**62 + 3, 2**63 - 1, -(2**63),
]


@pytest.mark.parametrize("i", _DIGIT_EDGES)
def test_ints_read_straight_from_their_digits_keep_their_value(i):
    # Indices, sizes and element values of one or two 30-bit digits are read
    # from the int object itself (values.rs, `digits`); longer ones through
    # the C API. Every edge must come out as the same number.
    p = calloc(Int64, 4)
    if -4 <= i < 4:
        p[i] = 11
        assert p[i] == 11 and p[i % 4] == 11
    else:
        with pytest.raises(IndexError, match=rf"^index {i} out of range"):
            p[i]
        with pytest.raises(IndexError, match=rf"^index {i} out of range"):
            p[i] = 1
    p[0] = i  # an element value: any int64 is stored as itself
    assert p[0] == i
    free(p)
    if i < 0:
        assert outcome(malloc.allocate, i) == outcome(malloc.allocate, nbytes=i)
    elif i < 4096:
        q = malloc.allocate(i)
        assert q.count == i
        free(q)


TRICKS = {
    "arena_finalizer",
    "context_vars_in_place",
    "caller_frames",
    "arena_with",
    "arena_pool",
    "arena_with_shared",
    "arena_with_kept_call",
    "pymalloc_records",
    "untracked_pointers",
    "untracked_stats",
    "kept_object_init",
    "pointer_free_list",
    "pointer_dealloc",
    "int_digits",
    "struct_views",
    "plain_struct_views",
    "entry_points",
    "struct_entry_points",
    "struct_attribute_routes",
}

# The reason a trick that skips PyO3's trampoline gives in a build without
# the reference-pool cfgs (BYPASS_OFF in src/py/cpython/mod.rs).
_WITHOUT_CFGS = "built without --cfg pyo3_disable_reference_pool"


def _switched_off() -> bool:
    return os.environ.get("RSALLOC_FAST_PATHS") == "0"


def test_fast_paths_reports_every_trick_and_why_one_is_off():
    import rsalloc._rsalloc

    paths = rsalloc._rsalloc._fast_paths()
    assert set(paths) == TRICKS
    for name, p in paths.items():
        assert set(p) == {"active", "reason"}, name
        assert isinstance(p["active"], bool)
        # An active trick has no reason; one that is off says why.
        assert (p["reason"] == "") == p["active"], (name, p)
    if _switched_off():
        assert not any(p["active"] for p in paths.values()), paths
        assert all("RSALLOC_FAST_PATHS=0" in p["reason"] for p in paths.values()), paths
        return
    # This interpreter's ints: the digit reads are on exactly where the
    # layout they read is CPython's up to 3.11, with 30-bit digits.
    digits_apply = sys.version_info < (3, 12) and sys.int_info.bits_per_digit == 30
    assert paths["int_digits"]["active"] == digits_apply, paths["int_digits"]
    # Struct views are made at the measured offset: the struct tests need them.
    assert paths["struct_views"]["active"], paths["struct_views"]


@pytest.mark.skipif(_switched_off(), reason="RSALLOC_FAST_PATHS=0 turns every trick off")
@pytest.mark.skipif(
    sysconfig.get_config_var("Py_GIL_DISABLED") == 1, reason="free-threaded: the GIL tricks are off"
)
def test_every_trick_is_on_in_the_normal_build():
    """A PyO3 or CPython upgrade that silently turns a trick off fails here
    (each off trick's reason says which assumption broke)."""
    import rsalloc._rsalloc

    paths = rsalloc._rsalloc._fast_paths()
    if _WITHOUT_CFGS in paths["entry_points"]["reason"]:
        pytest.skip("built without the reference-pool cfgs: the bypass tricks are off by design")
    expected_off = set()
    if not (sys.version_info < (3, 12) and sys.int_info.bits_per_digit == 30):
        expected_off.add("int_digits")
    off = {name: p["reason"] for name, p in paths.items() if not p["active"]}
    assert set(off) == expected_off, off


@pytest.mark.skipif(_switched_off(), reason="RSALLOC_FAST_PATHS=0 turns every trick off")
def test_pointer_and_stats_objects_are_not_gc_tracked():
    """PyO3 0.30 makes every class a GC type; the fence makes these two plain
    again (src/py/cpython/untracked.rs): no GC header, no tracking."""
    import rsalloc._rsalloc

    have_gc = 1 << 14  # Py_TPFLAGS_HAVE_GC
    paths = rsalloc._rsalloc._fast_paths()
    for cls, trick in ((rsalloc.Pointer, "untracked_pointers"), (rsalloc.Stats, "untracked_stats")):
        if not paths[trick]["active"]:
            pytest.skip(paths[trick]["reason"])
        assert cls.__flags__ & have_gc == 0, cls
    p = malloc.allocate(16)
    s = rsalloc.stats()
    assert not gc.is_tracked(p)
    assert not gc.is_tracked(s)
    # The objects still die as before: the block is freed, a view of an
    # arena block is released with its arena.
    del s
    with Arena(malloc) as a:
        q = a.allocate(16)
        assert q.count == 16
    del q
    free(p)
    gc.collect()


def test_errors_dropped_inside_a_fast_route_do_not_hang():
    """A value conversion that tries one extraction, drops its error and
    raises another (an int too large for a Bool element, an int address out
    of range) drops a PyErr inside the entry point: PyO3 0.30 loops forever
    on such a drop unless the thread is registered with it (entry.rs)."""
    b = calloc(rsalloc.Bool, 2)
    q = calloc(rsalloc.Pointer[Int32], 1)
    try:
        for p, v in ((b, 2**70), (b, -(2**70)), (b, 2), (q, 2**70), (q, -1)):

            def store(p=p, v=v):
                p[0] = v  # the entry point (the slot), not the method wrapper

            fast = outcome(store)
            slow = outcome(type(p).__setitem__, p, 0, v)
            assert fast == slow
            assert fast[0] in (TypeError, OverflowError), fast
        assert b[0] is False
        assert q[0].address == 0
    finally:
        free(b)
        free(q)



_SWITCHED_OFF_RUN = """
import rsalloc, rsalloc._rsalloc
from rsalloc import Arena, Int32, Struct, calloc, free, malloc
paths = rsalloc._rsalloc._fast_paths()
assert not any(p["active"] for p in paths.values()), paths
class S(Struct):
    x: Int32
    y: Int32
p = calloc(S, 2)
p.ref.x, p[1].y = 5, 7
assert (p.ref.x, p[1].y) == (5, 7)
free(p)
q = malloc.allocate(16)
q[0] = 3
assert q[0] == 3
free(q)
with Arena() as a:
    assert a.allocate(32).count == 32
print("ok")
"""


def test_the_switch_turns_every_trick_off_and_the_package_still_works():
    """RSALLOC_FAST_PATHS=0 at import: every trick reports off, and the PyO3
    routes serve, struct views included (made by PyO3's constructor). CI runs
    the whole suite so (.ci/run)."""
    env = {**os.environ, "RSALLOC_FAST_PATHS": "0"}
    out = subprocess.run([sys.executable, "-c", _SWITCHED_OFF_RUN], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_struct_views_cannot_be_constructed_from_python():
    class P(rsalloc.Struct):
        x: Int32

    with pytest.raises(TypeError, match="not constructed"):
        rsalloc._rsalloc._StructView.__new__(P)
    with pytest.raises(TypeError, match="not constructed"):
        rsalloc._rsalloc._StructView()


def test_objects_from_the_free_lists_carry_their_own_traceback_under_tracemalloc() -> None:
    # Kept objects' memory is made an object again (`gil_list::init`): as
    # PyObject_Init does, tracemalloc then names where it was made again,
    # not where the memory first was.
    import tracemalloc

    def first() -> None:
        # More than the lists hold, freed newest first: what they keep was
        # made while tracing (older memory has no trace to update).
        ps = [rsalloc.malloc.allocate(8) for _ in range(2000)]
        arenas = [Arena() for _ in range(50)]
        for p in reversed(ps):
            free(p)
        for a in reversed(arenas):
            a.release_all()
        del a
        arenas.clear()

    tracemalloc.start(1)
    try:
        first()  # fills the free lists (Pointer objects, scopes, arenas)
        p = rsalloc.malloc.allocate(8); line = sys._getframe().f_lineno
        a = Arena(); arena_line = sys._getframe().f_lineno
        tb = tracemalloc.get_object_traceback(p)
        tb_arena = tracemalloc.get_object_traceback(a)
    finally:
        tracemalloc.stop()
    free(p)
    a.release_all()
    assert tb is not None and tb[0].lineno == line
    assert tb_arena is not None and tb_arena[0].lineno == arena_line
