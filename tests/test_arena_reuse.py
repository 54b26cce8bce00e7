"""`with arena:` through the fence's scopes (`arena_with`) and `Arena()` from
kept arenas (`arena_pool`): everything a program can observe is what the
plain PyO3 routes give (run with RSALLOC_FAST_PATHS=0 too, by .ci/run).
docs/decisions.md, "Per-call arenas"."""

from __future__ import annotations

import contextlib
import gc
import inspect
import sys
import warnings
import weakref

import pytest

import rsalloc
from rsalloc import Arena, ArenaClosedError, UseAfterFreeError

from _native import needs_fast_path, python_child


def _active(name: str) -> bool:
    from rsalloc import _rsalloc

    return bool(_rsalloc._fast_paths()[name]["active"])


# --- __enter__ / __exit__ ---


def test_bound_enter_and_exit_behave_as_the_methods() -> None:
    a = Arena()
    enter, exit_ = a.__enter__, a.__exit__
    assert enter.__self__ is a and exit_.__self__ is a
    assert "__enter__" in repr(enter) and "__exit__" in repr(exit_)
    assert enter() is a
    assert rsalloc.current_arena() is a
    assert exit_(None, None, None) is False
    assert a.closed
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()
    # __exit__ takes 0 to 3 arguments, by position or keyword, as PyO3's does.
    b = Arena()
    b.__enter__()
    assert b.__exit__() is False
    c = Arena()
    c.__enter__()
    assert c.__exit__(_exc_type=None, _exc=None, _tb=None) is False


def test_call_shapes_the_methods_refuse_raise_their_errors() -> None:
    a = Arena()
    with pytest.raises(TypeError, match="takes no arguments"):
        a.__enter__(1)
    with pytest.raises(TypeError):
        a.__enter__(x=1)
    with pytest.raises(TypeError, match="positional arguments"):
        a.__exit__(1, 2, 3, 4)
    with pytest.raises(TypeError):
        a.__exit__(nope=1)
    # Nothing happened: the arena is not entered, and still open.
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()
    assert not a.allocate(1).is_null
    a.release_all()


def test_the_class_attributes_are_pyo3s_methods() -> None:
    d = Arena.__dict__["__enter__"]
    assert Arena.__enter__.__name__ == "__enter__"
    assert d.__doc__ == Arena.__enter__.__doc__ and d.__doc__
    assert str(inspect.signature(Arena.__exit__)).startswith("(self")
    a = Arena()
    assert Arena.__enter__(a) is a  # unbound, as contextlib.ExitStack calls it
    assert rsalloc.current_arena() is a
    assert Arena.__exit__(a, None, None, None) is False
    assert a.closed
    b = Arena()
    assert d(b) is b  # the dict's descriptor calls as PyO3's does
    assert Arena.__dict__["__exit__"](b) is False and b.closed
    with pytest.raises(TypeError):
        Arena.__enter__(object())
    with pytest.raises(TypeError):
        type(d)()


def test_exit_stack_and_nesting_see_the_right_current_arena() -> None:
    with contextlib.ExitStack() as st:
        a = st.enter_context(Arena())
        assert rsalloc.current_arena() is a
        with Arena() as b:
            assert rsalloc.current_arena() is b
        assert rsalloc.current_arena() is a
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()


def test_an_arena_exited_out_of_order_ends_only_its_own_entry() -> None:
    with Arena() as outer:
        a, b = Arena(), Arena()
        a.__enter__()
        b.__enter__()
        assert a.__exit__(None, None, None) is False
        assert a.closed and not b.closed
        # The arena entered inside it stays current ...
        assert rsalloc.current_arena() is b
        b.__exit__(None, None, None)
        # ... and once it ends, the released one is skipped: the one outside.
        assert rsalloc.current_arena() is outer
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()


def test_an_arena_entered_twice_ends_both_entries_with_its_two_exits() -> None:
    a = Arena()
    with a:
        with a:
            assert rsalloc.current_arena() is a
        assert a.closed
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()
    # Entered again after both exits: closed, and no entry is left over.
    with pytest.raises(ArenaClosedError):
        with a:
            a.allocate(1)
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()


def test_an_arena_entered_and_never_exited_goes_with_its_context() -> None:
    # The arena holds its entry until the exit, and the entry holds the
    # arena: the collector must see that cycle once the context is gone.
    import contextvars

    def enter() -> weakref.ref[Arena]:
        a = Arena()
        a.__enter__()
        assert rsalloc.current_arena() is a
        return weakref.ref(a)

    ctx = contextvars.copy_context()
    ref = ctx.run(enter)
    del ctx
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        gc.collect()
    assert ref() is None
    if _active("arena_finalizer"):  # what warns (and releases) at collection
        assert any("garbage-collected unreleased" in str(w.message) for w in seen)
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()


def test_an_exit_after_its_context_is_gone_lets_the_last_entry_go() -> None:
    # The exits hold the last references to their entries (the context that
    # held them is gone): the entries go in the exit, with their chain.
    import contextvars

    o, a = Arena(), Arena()
    ctx = contextvars.copy_context()
    ctx.run(lambda: (o.__enter__(), a.__enter__()))
    del ctx
    gc.collect()
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()  # this context never entered them
    assert a.__exit__(None, None, None) is False
    assert o.__exit__(None, None, None) is False
    assert a.closed and o.closed
    with Arena() as b:  # and the next `with` is as usual
        assert rsalloc.current_arena() is b


def test_python_code_run_by_a_kept_arena_s_renewal_changes_nothing() -> None:
    # A kept arena holds the code object it was made in; the next Arena()
    # that takes it drops that reference, which may be the last one: the
    # code object's weak-reference callback then runs inside Arena().
    ran: list[str] = []

    def hostile(_ref: object) -> None:
        with Arena() as inner:  # the pool, entered again from inside it
            inner.allocate(8)[0] = 1
        ran.append(repr(Arena()))
        raise RuntimeError("from inside Arena()")

    unraisable: list[BaseException | None] = []
    hook, sys.unraisablehook = sys.unraisablehook, lambda u: unraisable.append(u.exc_value)
    try:
        code = compile("a = Arena()\nwith a:\n    a.allocate(16)\n", "<per-call>", "exec")
        ref = weakref.ref(code, hostile)
        exec(code, {"Arena": Arena})
        del code
        if _active("arena_pool"):
            assert ref() is not None  # the kept arena holds it
        b = Arena()
        if _active("arena_pool"):
            assert ran, "the renewal dropped the code object"
        p = b.allocate(32)
        assert p[:] == [0] * 32
        b.release_all()
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert ref() is None
    assert ran and ran[0].startswith("<rsalloc.Arena")
    # The callback's exception is CPython's to report, not Arena()'s to raise.
    assert [str(e) for e in unraisable] == ["from inside Arena()"]
    with pytest.raises(UseAfterFreeError):
        p[0]


def test_an_exception_in_the_block_propagates_and_releases() -> None:
    with pytest.raises(KeyError):
        with Arena() as a:
            p = a.allocate(8)
            raise KeyError("x")
    with pytest.raises(UseAfterFreeError):
        p[0]
    with pytest.raises(ArenaClosedError):
        a.allocate(1)


def test_a_cycle_through_a_bound_exit_is_collected() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        a = Arena()
        a.on_release_all(a.__exit__)  # arena -> callback -> scope -> arena
        w = weakref.ref(a)
        del a
        gc.collect()
        assert w() is None


# --- Arena() from kept arenas ---


def test_every_arena_has_its_own_name_and_id() -> None:
    import re

    names = set()
    for _ in range(20):
        with Arena() as a:
            a.allocate(16)
            m = re.fullmatch(r"arena #(\d+)", a.name)
            assert m, a.name
            assert repr(a).startswith(f"<rsalloc.Arena #{m.group(1)} bump region open: 1 allocations")
            names.add(a.name)
    assert len(names) == 20


def test_a_block_kept_from_a_released_arena_stays_dead_as_its_memory_is_reused() -> None:
    holder = rsalloc.calloc(rsalloc.Pointer[rsalloc.Uint8], 1)  # C memory holding an address
    with Arena() as a:
        p = a.allocate(32)
        p[0] = 7
        holder[0] = p
        name = a.name
    del a
    for _ in range(10):
        with Arena() as b:
            q = b.allocate(32)
            assert q[0] == 0, "a new arena's memory is zeroed"
            q[0] = 9
    with pytest.raises(UseAfterFreeError, match=name):
        p[0]
    # The address read back from C memory: dead (named by the last arena
    # whose block held it: the memory was handed out again since).
    back = holder[0]
    assert back.address == p.address
    if rsalloc._rsalloc._block_cache(False)[0]:
        with pytest.raises(UseAfterFreeError, match="released with its arena"):
            back[0]
    # Without the block cache (PYTHONMALLOC=malloc) the chunk went back to
    # libc at each release: its addresses read back as foreign memory.
    rsalloc.free(holder)


def test_a_kept_arena_has_no_limit_callback_or_old_counters() -> None:
    with Arena(limit=16) as a:
        a.allocate(16)
        a.on_release_all(lambda: None)
    del a
    for _ in range(3):
        with Arena() as b:
            assert b.stats().limit is None
            b.allocate(4096)
            assert b.stats().total_allocs == 1
            assert "0 callbacks" in repr(b)


def test_the_arena_of_a_kept_arenas_block_is_the_new_arena() -> None:
    for _ in range(5):
        with Arena() as a:
            p = a.allocate(8)
            assert p.allocator is a


def test_arenas_with_a_weak_reference_or_a_pointer_left_are_not_reused() -> None:
    with Arena() as a:
        p = a.allocate(8)
    w = weakref.ref(a)
    del a
    assert w() is None
    with Arena() as b:
        b.allocate(8)
        assert b.name != p.allocator.name if p.allocator is not None else True
    with pytest.raises(UseAfterFreeError):
        p[0]


@needs_fast_path("arena_finalizer")
def test_an_unreleased_kept_arena_warns_where_it_was_made() -> None:
    with Arena() as a:
        pass
    del a
    with pytest.warns(ResourceWarning) as got:
        b = Arena()  # the line the warning names
        line = inspect.currentframe().f_lineno - 1
        b.allocate(1)
        del b
        gc.collect()
    assert any(f"{__file__}:{line}" in str(w.message) or w.lineno == line for w in got), [
        str(w.message) for w in got
    ]


def test_arena_with_arguments_takes_the_full_route() -> None:
    with Arena(rsalloc.calloc) as a:
        assert "over" in repr(a)
        a.allocate(8)
    with Arena(None, limit=8) as b:
        with pytest.raises(MemoryError):
            b.allocate(9)
    with pytest.raises(TypeError):
        Arena(1)
    with pytest.raises(TypeError):
        Arena(nope=1)


def test_an_arena_made_with_tracking_on_is_reported_though_kept_ones_wait() -> None:
    with Arena() as a:
        pass
    del a  # kept, with tracking off
    held = []
    with pytest.raises(rsalloc.LeakError, match="arena"):
        with rsalloc.leak_check():
            b = Arena()  # made with tracking on: registered, so reported
            b.allocate(8)
            held.append(b)
    held[0].release_all()


def test_the_tricks_are_reported() -> None:
    import os

    if os.environ.get("RSALLOC_FAST_PATHS") == "0":
        assert not _active("arena_with") and not _active("arena_pool")
    else:
        assert _active("arena_with") and _active("arena_pool")


def test_threads_opening_per_call_arenas_get_their_own() -> None:
    import threading

    seen: list[list[str]] = [[], [], []]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(500):
                with Arena() as a:
                    assert rsalloc.current_arena() is a
                    p = a.allocate(16)
                    p[0] = k
                    assert p[0] == k and p.allocator is a
                    seen[k].append(a.name)
        except BaseException as e:  # reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    names = [n for s in seen for n in s]
    assert len(names) == 1500 and len(set(names)) == 1500


# --- a closed arena's first chunk, held for its reopening (core::region, `held`) ---

held_chunks = rsalloc._rsalloc._held_chunks
holding_on = pytest.mark.skipif(
    not rsalloc._rsalloc._block_cache(False)[0] or not _active("arena_finalizer"),
    reason="block cache off (PYTHONMALLOC=malloc, RSALLOC_BLOCK_CACHE=0), or the fence's arena "
    "dealloc off (RSALLOC_FAST_PATHS=0): nothing is held",
)


@holding_on
def test_closed_arenas_a_program_keeps_hold_four_first_chunks_at_most() -> None:
    before = held_chunks()
    arenas = [Arena() for _ in range(6)]
    for a in arenas:
        with a:
            a.allocate(24)
    assert held_chunks() == 4, "four at most, whatever else is alive"
    assert all("released" in repr(a) and a.closed for a in arenas)
    big = Arena()
    with big:
        big.allocate(100_000)  # a chunk of its own: never held
        big.allocate(24)
    assert held_chunks() == 4
    del arenas, a, big
    gc.collect()
    assert held_chunks() == before


@holding_on
def test_a_held_chunk_reads_back_dead_and_serves_the_reopened_arena_zeroed() -> None:
    holder = rsalloc.calloc(rsalloc.Pointer[rsalloc.Uint8], 2)  # C memory holding addresses
    # Room for one more held chunk, whatever earlier tests left alive.
    gc.collect()
    assert held_chunks() < 4
    with Arena() as a:
        for i in range(2):
            p = a.allocate(24)
            for k in range(24):
                p[k] = 0xFF
            holder[i] = p
        name = a.name
    del p
    first, second = holder[0].address, holder[1].address
    for i in range(2):
        back = holder[i]
        assert not back.alive
        with pytest.raises(UseAfterFreeError, match=f"released with its arena: .*{name}\\)"):
            back[0]
    del back
    del a  # reopened as the next Arena(), its chunk the new one's first
    with Arena() as b:
        q = b.allocate(24)
        assert q.address == first, "the held chunk"
        assert q[:] == [0] * 24, "zeroed, as calloc gives it"
        assert holder[0].alive and holder[0].allocator is b
        stale = holder[1]
        assert stale.address == second and not stale.alive, "not handed out again yet"
        with pytest.raises(UseAfterFreeError):
            stale[0]
    rsalloc.free(holder)


@holding_on
def test_an_arena_that_is_not_reused_gives_its_held_chunk_up_and_its_blocks_stay_dead() -> None:
    holder = rsalloc.calloc(rsalloc.Pointer[rsalloc.Uint8], 1)
    gc.collect()
    before = held_chunks()
    assert before < 4
    with Arena() as a:
        holder[0] = a.allocate(24)
    assert held_chunks() == before + 1
    w = weakref.ref(a)  # not reused: dealloc'd, its chunk kept for any region
    del a
    assert w() is None and held_chunks() == before
    back = holder[0]
    assert not back.alive
    with pytest.raises(UseAfterFreeError, match="released with its arena"):
        back[0]
    rsalloc.free(holder)


def test_with_the_block_cache_off_no_chunk_is_held() -> None:
    code = (
        "import rsalloc, gc\n"
        "from rsalloc._rsalloc import _held_chunks, _block_cache\n"
        "kept = [rsalloc.Arena() for _ in range(3)]\n"
        "for a in kept:\n"
        "    with a: a.allocate(24)\n"
        "print(_block_cache()[0], _held_chunks())\n"
    )
    assert python_child(code, RSALLOC_BLOCK_CACHE="0").split() == ["False", "0"]


@holding_on
def test_a_chunk_an_export_pins_at_release_is_not_held_and_reads_back_dead() -> None:
    holder = rsalloc.calloc(rsalloc.Pointer[rsalloc.Uint8], 1)
    gc.collect()
    before = held_chunks()
    with Arena() as a:
        p = a.allocate(24)
        holder[0] = p
        m = memoryview(p)  # pins the region: its chunk is parked, not held
    assert held_chunks() == before
    with pytest.raises(UseAfterFreeError):
        holder[0][0]
    m.release()  # the last unpin: the chunk goes (kept for the next region)
    assert held_chunks() == before
    del a, p
    with Arena() as b:
        b.allocate(24)
        b.release_all(reuse=True)  # the bump chunk stays for the next blocks
        b.allocate(24)
    assert held_chunks() == min(before + 1, 4), "held at the exit after a reusing release"
    rsalloc.free(holder)


@pytest.mark.skipif(_active("arena_finalizer"), reason="the fence's arena dealloc is on")
def test_without_the_fence_s_arena_dealloc_no_chunk_is_held() -> None:
    # Without the dealloc that gives a held chunk up, an arena object's end
    # would free it: a release keeps it for the next region at once.
    before = held_chunks()
    with Arena() as a:
        a.allocate(24)
    assert held_chunks() == before == 0


def test_per_call_arenas_in_a_big_arena_s_chunk_come_zeroed_and_its_blocks_stay_dead() -> None:
    # A first chunk that a bigger arena used, then per-call arenas of
    # changing sizes: each zeroes as far as it reached (core::region,
    # `Released::reached`), and the bigger arena's blocks past that reach
    # still read back dead (the released tail is kept; a chunk names its
    # latest release, so they name the last arena that used the chunk).
    n_big, size = 100, 32
    holder = rsalloc.calloc(rsalloc.Pointer[rsalloc.Uint8], n_big)  # C memory holding addresses
    gc.collect()
    big = Arena()
    with big:
        for i in range(n_big):
            p = big.allocate(size)
            p.fill(0xFF)
            holder[i] = p
    del big, p  # held, then reopened as the next Arena(), when there is room
    # Block sizes that cover more, fewer and as many earlier blocks.
    for blocks, each in ((3, 32), (5, 32), (2, 64), (6, 16), (1, 100), (4, 24), (3, 32), (7, 8)):
        with Arena() as a:
            for _ in range(blocks):
                q = a.allocate(each)
                assert q[:] == [0] * each, f"a block of {blocks} x {each} B is not zeroed"
                q.fill(0xFF)
        del q
    # With the block cache off every chunk goes back to libc at once (the
    # addresses are foreign memory then, docs/arena.md).
    if rsalloc._rsalloc._block_cache(False)[0]:
        for i in range(n_big):
            back = holder[i]
            assert not back.alive
            with pytest.raises(UseAfterFreeError, match="released with its arena"):
                back[0]
        del back
    rsalloc.free(holder)


# --- one scope per `with` statement (`arena_with_shared`) ---


def _shared() -> int:
    from rsalloc import _rsalloc

    return int(_rsalloc._shared_scopes())


def _sharing() -> bool:
    return _active("arena_with_shared")


def test_a_with_statement_looks_both_methods_up_as_one_scope() -> None:
    before = _shared()
    for _ in range(10):
        with Arena() as a:
            assert rsalloc.current_arena() is a
            a.allocate(8)
        assert a.closed
    assert _shared() - before == (10 if _sharing() else 0)


def test_lookups_outside_a_with_statement_stay_two_methods() -> None:
    before = _shared()
    a = Arena()
    enter = a.__enter__
    exit_ = a.__exit__  # looked up right after, as a `with` does, but by hand
    assert enter is not exit_
    assert "__enter__" in repr(enter) and "__exit__" in repr(exit_)
    with pytest.raises(TypeError, match="takes no arguments"):
        enter(None, None, None)  # not an exit in disguise
    assert not a.closed
    assert enter() is a
    with pytest.raises(TypeError):
        exit_(1, 2, 3, 4)
    assert exit_(None, None, None) is False and a.closed
    assert _shared() == before


def test_the_exit_of_a_with_statement_gets_its_exception() -> None:
    holder: list[Arena] = []
    with pytest.raises(KeyError, match="boom"):
        with Arena() as a:
            holder.append(a)
            p = a.allocate(8)
            raise KeyError("boom")
    assert holder[0].closed
    with pytest.raises(UseAfterFreeError):
        p[0]
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()
    # An exception swallowed nowhere, a return and a break leave alike.
    def leave(how: str) -> Arena:
        for _ in range(2):
            with Arena() as b:
                if how == "break":
                    break
                return b
        return b

    assert leave("return").closed and leave("break").closed


def test_a_with_statement_on_a_released_arena_enters_it_and_allocations_raise() -> None:
    a = Arena()
    a.release_all()
    for _ in range(3):
        with a:
            assert rsalloc.current_arena() is a
            with pytest.raises(ArenaClosedError):
                a.allocate(8)
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()
    with Arena() as b:  # the next `with` is whole
        assert rsalloc.current_arena() is b


def test_several_arenas_in_one_with_statement_and_nested() -> None:
    with Arena() as a, Arena() as b:
        assert rsalloc.current_arena() is b
        with Arena() as c:
            assert rsalloc.current_arena() is c
        assert c.closed and rsalloc.current_arena() is b
    assert a.closed and b.closed


def test_a_generator_suspended_in_a_with_is_collected_with_its_arena() -> None:
    # arena -> callback -> generator -> its frame -> the `with` scope -> arena:
    # a cycle the collector must see through the scope the frame holds. The
    # generator runs in a context of its own, dropped: the context the
    # `with` entered the arena in holds it too, and must be garbage as well.
    import contextvars

    def gen(a: Arena):
        with a:
            yield 1

    a = Arena()
    g = gen(a)
    contextvars.copy_context().run(next, g)
    a.on_release_all([g].copy)
    refs = weakref.ref(g), weakref.ref(a)
    del a, g
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_with_statements_inside_finalizers_run_during_the_lookups() -> None:
    # Collections at every allocation run __del__ methods that open arenas
    # of their own while an outer `with` statement is looking its names up.
    opened: list[int] = []

    class Cycle:
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            with Arena() as inner:
                inner.allocate(4)
                assert rsalloc.current_arena() is inner
            opened.append(1)

    old = gc.get_threshold()
    gc.set_threshold(1, 1, 1)
    try:
        for _ in range(300):
            Cycle()
            with Arena() as a:
                assert rsalloc.current_arena() is a
                Cycle()
                a.allocate(8)
                assert rsalloc.current_arena() is a
            assert a.closed
    finally:
        gc.set_threshold(*old)
    gc.collect()
    assert len(opened) >= 300
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()


def test_sharing_is_reported_and_off_without_the_frames_trick() -> None:
    import os

    if os.environ.get("RSALLOC_FAST_PATHS") == "0":
        assert not _sharing()
        return
    code = (
        "import rsalloc; from rsalloc import _rsalloc\n"
        "r = _rsalloc._fast_paths()['arena_with_shared']\n"
        "with rsalloc.Arena() as a: pass\n"
        "print(r['active'], _rsalloc._shared_scopes(), r['reason'])\n"
    )
    active, count, reason = python_child(code, RSALLOC_CALLER_FRAMES="0").split(" ", 2)
    assert active == "False" and count == "0" and "caller_frames" in reason


# --- a kept call per context entry (`arena_with_kept_call`) ---


def _kept() -> int:
    from rsalloc import _rsalloc

    return int(_rsalloc._kept_calls())


def _keeping() -> bool:
    return _active("arena_with_kept_call")


def _bound_calls(a: Arena) -> list:
    """The kept calls bound to `a` (what a `with` served by one holds; a
    plain bound `__exit__` of PyO3's is another builtin function)."""
    return [
        r
        for r in gc.get_referrers(a)
        if type(r).__name__ == "builtin_function_or_method" and (r.__doc__ or "").startswith("An arena's __enter__")
    ]


def test_with_statements_in_a_row_are_served_by_the_context_entry_s_kept_call() -> None:
    before = _kept()
    blocks = []
    for _ in range(10):
        k = _kept()
        with Arena() as a:
            assert rsalloc.current_arena() is a
            blocks.append(a.allocate(8))
            if _kept() > k:
                # The statement holds one builtin function bound to the arena.
                (call,) = _bound_calls(a)
                assert call.__self__ is a and call.__name__ == "__exit__"
                del call  # held, it would not be free for the next `with`
            else:
                assert _bound_calls(a) == []
        assert a.closed and _bound_calls(a) == []
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()
    for p in blocks:
        with pytest.raises(UseAfterFreeError):
            p[0]
    # From the third on at the latest: the first makes the entry, the second
    # reopens it and makes its kept call.
    assert _kept() - before >= (8 if _keeping() else 0)
    assert _kept() - before <= 10


def test_a_kept_call_does_not_keep_its_arena_alive() -> None:
    for _ in range(3):
        with Arena():
            pass
    before = _kept()
    with Arena() as a:
        a.allocate(8)
    ref = weakref.ref(a)
    del a
    assert ref() is None  # no collection needed: nothing holds it
    assert _kept() - before == (1 if _keeping() else 0)


def test_exceptions_returns_and_breaks_leave_through_a_kept_call() -> None:
    before = _kept()
    arenas: list[Arena] = []

    def boom() -> None:
        with Arena() as a:
            arenas.append(a)
            raise KeyError("boom")

    for _ in range(5):
        with pytest.raises(KeyError, match="boom"):
            boom()

    def leave(how: str) -> Arena:
        for _ in range(2):
            with Arena() as b:
                if how == "break":
                    break
                return b
        return b

    arenas += [leave("return") for _ in range(3)] + [leave("break") for _ in range(3)]
    assert all(a.closed for a in arenas)
    assert all(_bound_calls(a) == [] for a in arenas)
    assert _kept() - before >= (9 if _keeping() else 0)
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()


def test_the_same_arena_nested_and_two_arenas_in_one_statement() -> None:
    a = Arena()
    for _ in range(4):
        with a:
            assert rsalloc.current_arena() is a
            with a:
                assert rsalloc.current_arena() is a
            with Arena() as inner:
                assert rsalloc.current_arena() is inner
            assert inner.closed
    assert a.closed and _bound_calls(a) == []
    for _ in range(4):
        with Arena() as x, Arena() as y:
            assert rsalloc.current_arena() is y
        assert x.closed and y.closed
    ref = weakref.ref(a)
    del a
    assert ref() is None


def test_a_kept_call_called_by_hand_inside_its_with() -> None:
    for _ in range(3):
        with Arena():
            pass
    with Arena() as a:
        calls = _bound_calls(a)
        if not _keeping():
            return
        (call,) = calls
        del calls
        assert call() is a  # the enter its statement did: nothing more
        with pytest.raises(TypeError):
            call(1, 2, 3, 4)  # PyO3's __exit__ and its error
        assert not a.closed and call.__self__ is a
        assert call(None, None, None) is False  # leaves by hand
        assert a.closed
    # The statement's own exit then finds it unbound: nothing to do.
    assert _bound_calls(a) == []
    with pytest.raises(RuntimeError, match="not bound"):
        call()
    assert call(None, None, None) is False
    assert "__exit__" in repr(call)
    del call
    with Arena() as b:
        (call,) = _bound_calls(b)
        assert call(None) is False and b.closed  # PyO3's exit, one argument
        assert call.__self__ is None
        del call


def test_a_generator_suspended_in_a_kept_call_s_with_is_collected_with_its_arena() -> None:
    # As for the scope above, through the kept call the frame holds: the
    # context (its own, dropped) reuses its entry from its third `with` on.
    import contextvars

    def gen(a: Arena):
        with a:
            yield 1

    def run(g) -> int:
        for _ in range(3):
            with Arena():
                pass
        k = _kept()
        next(g)
        return _kept() - k

    a = Arena()
    g = gen(a)
    used = contextvars.copy_context().run(run, g)
    a.on_release_all([g].copy)
    refs = weakref.ref(g), weakref.ref(a)
    del a, g
    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert used == (1 if _keeping() else 0)


def test_a_lookup_of_enter_alone_at_a_with_statement_enters_nothing() -> None:
    # C code looking `__enter__` up while the frame is at BEFORE_WITH (here
    # getattr, called by another object's __enter__): a lookup, as by hand.
    import functools

    for _ in range(3):
        with Arena():
            pass
    b = Arena()

    class Other:
        __enter__ = staticmethod(functools.partial(getattr, b, "__enter__"))

        def __exit__(self, *exc: object) -> bool:
            return False

    with Other() as enter:
        with pytest.raises(RuntimeError):
            rsalloc.current_arena()  # not entered by the lookup
        assert not b.closed
    assert enter() is b  # an __enter__ by hand: the full enter
    assert rsalloc.current_arena() is b
    b.__exit__(None, None, None)
    assert b.closed
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()
    for _ in range(3):  # the context's kept call still serves
        with Arena() as c:
            assert rsalloc.current_arena() is c


def test_a_generator_suspended_in_a_kept_call_s_with_finishes_later() -> None:
    def gen():
        for _ in range(3):
            with Arena() as a:
                yield a
            assert a.closed

    for _ in range(3):
        with Arena():
            pass
    g = gen()
    a = next(g)
    with Arena() as other:  # the generator's entry is live: another one here
        assert rsalloc.current_arena() is other
    assert not a.closed
    rest = list(g)
    assert a.closed and all(x.closed for x in rest)
    g2 = gen()
    b = next(g2)
    g2.close()  # GeneratorExit through the kept call's exit
    assert b.closed and _bound_calls(b) == []


def test_kept_calls_in_threads_and_asyncio_tasks() -> None:
    import asyncio
    import threading

    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(200):
                with Arena() as a:
                    assert rsalloc.current_arena() is a
                    a.allocate(16)
                assert a.closed
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    async def task(n: int) -> int:
        for _ in range(20):
            with Arena() as a:
                await asyncio.sleep(0)
                assert rsalloc.current_arena() is a
            assert a.closed
        return n

    async def main() -> list[int]:
        return await asyncio.gather(*(task(i) for i in range(5)))

    assert asyncio.run(main()) == list(range(5))


def test_kept_calls_are_reported_and_off_without_the_shared_scope() -> None:
    import os

    if os.environ.get("RSALLOC_FAST_PATHS") == "0":
        assert not _keeping()
        return
    assert _keeping()
    code = (
        "import rsalloc; from rsalloc import _rsalloc\n"
        "r = _rsalloc._fast_paths()['arena_with_kept_call']\n"
        "for _ in range(5):\n"
        "    with rsalloc.Arena() as a: pass\n"
        "print(r['active'], _rsalloc._kept_calls(), r['reason'])\n"
    )
    active, count, reason = python_child(code, RSALLOC_CALLER_FRAMES="0").split(" ", 2)
    assert active == "False" and count == "0" and "arena_with_shared" in reason


def test_the_arena_type_is_immutable() -> None:
    # A final class, immutable as CPython's own types are: `Arena()` is then
    # the specialised call of a class with a vectorcall entry (3.11 to 3.13).
    with pytest.raises(TypeError, match="immutable"):
        Arena.extra = 1  # type: ignore[attr-defined]
    assert not hasattr(Arena, "extra")
    with pytest.raises(TypeError):

        class Sub(Arena):  # type: ignore[misc]
            pass
