"""Hostile input against the core (issue 15): each class of crash, abort or
leak a hostile caller found, attacked from every angle we could derive.
Cases that could crash the interpreter run in a subprocess that must exit 0
after printing what it saw."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator

import pytest

from _native import needs_fast_path

import rsalloc
from rsalloc import Int32, Uint8


def run_isolated(code: str, *, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """Runs `code` in a fresh interpreter; it must exit 0. Returns its stdout."""
    import os

    full_env = dict(os.environ)
    full_env.pop("RSALLOC_TRACK", None)
    full_env.update(env or {})
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


# ---------------------------------------------------------------- recursion

# Runs `run()` (defined before it) in a thread with a 1 MiB stack, then prints `out`.
IN_SMALL_STACK = """
threading.stack_size(1 << 20)
th = threading.Thread(target=run)
th.start()
th.join()
print(out)
"""


class TestRecursion:
    """Type resolution walks pointer chains and nested structs in a loop:
    cycles are TypeError, deep legal chains resolve, never a stack overflow."""

    def test_a_pointer_type_that_points_at_itself(self) -> None:
        out = run_isolated(
            """
            import ctypes, rsalloc
            class P(ctypes._Pointer): pass
            P._type_ = P
            for f in (rsalloc.sizeof, rsalloc.alignof, rsalloc.calloc, lambda t: rsalloc.Pointer[t]):
                try:
                    f(P)
                except TypeError as e:
                    assert "cyclic" in str(e), e
                    print("TypeError")
            """
        )
        assert out.split() == ["TypeError"] * 4

    def test_a_longer_cycle_through_ctypes_and_rsalloc_pointers(self) -> None:
        out = run_isolated(
            """
            import ctypes, rsalloc
            class A(ctypes._Pointer): pass
            class B(ctypes._Pointer): pass
            A._type_ = B
            B._type_ = A
            try:
                rsalloc.sizeof(A)
            except TypeError as e:
                print("TypeError", "cyclic" in str(e))
            class S(rsalloc._types.PointerSlot):
                pass
            S._target_ = S
            try:
                rsalloc.calloc(S, 2)
            except TypeError as e:
                print("TypeError", "cyclic" in str(e))
            """
        )
        assert out.split() == ["TypeError", "True"] * 2

    @pytest.mark.parametrize("kind", ["ctypes", "rsalloc"])
    def test_a_chain_of_4000_pointers_in_a_thread_with_a_small_stack(self, kind: str) -> None:
        out = run_isolated(
            textwrap.dedent(f"""
            import ctypes, rsalloc, threading
            out = []
            def run():
                t = ctypes.c_int
                for _ in range(4000):
                    if {kind!r} == "ctypes":
                        t = ctypes.POINTER(t)
                    else:
                        t = type("P", (rsalloc._types.PointerSlot,), {{"_target_": t}})
                p = rsalloc.calloc(t, 3)
                out.append((rsalloc.sizeof(t), len(p), p[0].is_null))
                rsalloc.free(p)
            """)
            + IN_SMALL_STACK
        )
        assert out.strip() == "[(8, 3, True)]"

    def test_structs_nested_4000_deep_in_a_thread_with_a_small_stack(self) -> None:
        out = run_isolated(
            textwrap.dedent("""
            import ctypes, rsalloc, threading
            out = []
            def run():
                t = ctypes.c_int
                for i in range(4000):
                    t = type(f"S{i}", (ctypes.Structure,), {"_fields_": [("x", t)]})
                p = rsalloc.calloc(t, 2)
                out.append((rsalloc.sizeof(t), memoryview(p).nbytes))
                rsalloc.free(p)
            """)
            + IN_SMALL_STACK
        )
        assert out.strip() == "[(4, 8)]"


# ------------------------------------------------------- incomplete types


class TestIncompleteTypes:
    """A ctypes Structure is complete when its `_fields_` are set; nothing
    about it is cached before, so the recursive-struct pattern works."""

    def test_an_incomplete_struct_is_refused_then_sized_once_complete(self) -> None:
        class Node(ctypes.Structure):
            pass

        for f in (rsalloc.sizeof, rsalloc.alignof, rsalloc.calloc):
            with pytest.raises(TypeError, match="incomplete"):
                f(Node)
        Node._fields_ = [("next", ctypes.POINTER(Node)), ("value", ctypes.c_int)]
        assert rsalloc.sizeof(Node) == ctypes.sizeof(Node) == 16
        assert rsalloc.alignof(Node) == 8
        p = rsalloc.calloc(Node, 2)
        assert p.nbytes == 32
        rsalloc.free(p)

    def test_the_recursive_struct_pattern_through_its_pointer(self) -> None:
        class Node(ctypes.Structure):
            pass

        PNode = ctypes.POINTER(Node)
        assert rsalloc.sizeof(PNode) == 8  # a pointer to it is fine
        slot = rsalloc.Pointer[Node]  # so is rsalloc's pointer type
        assert rsalloc.sizeof(slot) == 8
        Node._fields_ = [("next", PNode), ("value", ctypes.c_int)]
        assert rsalloc.sizeof(Node) == 16
        head = rsalloc.calloc(Node)
        head.ref.value = 7
        table = rsalloc.calloc(PNode, 1)
        table[0] = head
        assert table[0].ref.value == 7  # the pointee is Node now, not Void
        table2 = rsalloc.calloc(slot, 1)
        table2[0] = head
        assert table2[0].ref.value == 7
        for p in (head, table, table2):
            rsalloc.free(p)

    def test_a_struct_inheriting_its_fields_can_still_get_its_own(self) -> None:
        class Base(ctypes.Structure):
            _fields_ = [("a", ctypes.c_int)]

        class Sub(Base):
            pass

        assert rsalloc.sizeof(Sub) == 4
        Sub._fields_ = [("b", ctypes.c_double)]
        assert rsalloc.sizeof(Sub) == ctypes.sizeof(Sub) == 16

    def test_an_empty_struct_declared_empty_is_complete(self) -> None:
        class Empty(ctypes.Structure):
            _fields_ = []

        assert rsalloc.sizeof(Empty) == 0


# ------------------------------------------------------------------ arenas


class Pool(rsalloc.Allocator):
    """A Python allocator that knows which of its blocks are out."""

    def __init__(self) -> None:
        super().__init__()
        self.out: set[int] = set()

    def _raw_alloc(self, nbytes: int, alignment: int) -> int:
        addr = rsalloc.malloc.allocate(nbytes, alignment=alignment).detach()
        self.out.add(addr)
        return addr

    def _raw_free(self, address: int) -> None:
        self.out.remove(address)
        ctypes.CDLL(None).free(ctypes.c_void_p(address))


@contextlib.contextmanager
def unraisable() -> Iterator[list[BaseException]]:
    """Collects what sys.unraisablehook is given inside the block."""
    seen: list[BaseException] = []
    old = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(u.exc_value)
    try:
        yield seen
    finally:
        sys.unraisablehook = old


def collected_unreleased(make, *, expect_warning: bool = True):  # type: ignore[no-untyped-def]
    """Calls `make()` (which drops an arena it made, possibly in a cycle),
    collects, and returns the ResourceWarnings raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
        gc.collect()
    found = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert bool(found) == expect_warning, [str(w.message) for w in caught]
    return found


@needs_fast_path("arena_finalizer")
class TestArenasLeftToTheCollector:
    def test_a_dropped_arena_over_a_pool_returns_its_blocks(self) -> None:
        pool = Pool()
        kept = []

        def make() -> None:
            a = rsalloc.Arena(pool)
            kept.extend([a.allocate(16), a(Int32, 4)])
            assert len(pool.out) == 2

        found = collected_unreleased(make)
        assert pool.out == set()
        assert not any(p.alive for p in kept)
        assert pool.stats().live_count == 0
        (w,) = found
        # The warning is located where the arena was made, and says so.
        assert w.filename == __file__
        assert f"{__file__}:{w.lineno}" in str(w.message)
        assert "a = rsalloc.Arena(pool)" in open(__file__).read().splitlines()[w.lineno - 1]

    @pytest.mark.parametrize("backing", [None, "malloc", "calloc"])
    def test_a_dropped_arena_stops_being_counted(self, backing: str | None) -> None:
        allocator = getattr(rsalloc, backing) if backing else None
        before = rsalloc.stats()
        kept = []

        def make() -> None:
            a = rsalloc.Arena(allocator)
            kept.append(a.allocate(100))
            assert rsalloc.stats().live_count == before.live_count + 1

        collected_unreleased(make)
        after = rsalloc.stats()
        assert (after.live_count, after.live_bytes) == (before.live_count, before.live_bytes)
        assert not kept[0].alive

    def test_an_arena_in_a_cycle_through_its_callback_is_collected_and_released(self) -> None:
        import weakref

        ran: list[object] = []

        def make() -> None:
            a = rsalloc.Arena()
            p = a.allocate(8)
            a.on_release_all(lambda: ran.append(("callback", a.closed, p.alive)))
            a.using(p, lambda q: ran.append(("using", q.alive)))
            refs.append(weakref.ref(a))

        refs: list[weakref.ref[rsalloc.Arena]] = []
        collected_unreleased(make)
        assert refs[0]() is None
        # Callbacks ran, newest first, while the memory was still there.
        assert ran == [("using", True), ("callback", False, True)]

    def test_an_arena_in_a_cycle_through_its_own_python_allocator_is_collected(self) -> None:
        import weakref

        class SelfPool(Pool):
            """A Python allocator that keeps an arena over itself."""

            def __init__(self) -> None:
                super().__init__()
                self.arena = rsalloc.Arena(self)

        refs: list[weakref.ref[SelfPool]] = []
        outs: list[set[int]] = []
        kept = []

        def make() -> None:
            pool = SelfPool()
            kept.extend([pool.arena.allocate(16), pool.arena(Int32, 4)])
            assert len(pool.out) == 2
            refs.append(weakref.ref(pool))
            outs.append(pool.out)

        (w,) = collected_unreleased(make)
        assert "rsalloc.Arena(self)" in open(__file__).read().splitlines()[w.lineno - 1]
        assert refs[0]() is None
        # Released through the allocator's own _raw_free before the cycle was cleared.
        assert outs[0] == set()
        assert not any(p.alive for p in kept)

    def test_a_block_outside_the_arena_keeps_that_cycle_alive(self) -> None:
        import weakref

        class SelfPool(Pool):
            def __init__(self) -> None:
                super().__init__()
                self.arena = rsalloc.Arena(self)

        pool = SelfPool()
        own = pool.allocate(32)  # the allocator's own block: a later free needs _raw_free
        pool.arena.allocate(8)
        ref = weakref.ref(pool)
        del pool
        gc.collect()
        assert ref() is not None and own.alive
        rsalloc.free(own)  # still reaches _raw_free, on an intact object
        survivor = ref()
        assert survivor is not None
        assert len(survivor.out) == 1 and survivor.arena.stats().live_count == 1
        del own, survivor
        # Nothing outside the arena holds the allocator now: collected.
        collected_unreleased(lambda: None)
        assert ref() is None

    def test_a_callback_that_fails_at_collection_is_unraisable(self) -> None:
        def make() -> None:
            a = rsalloc.Arena()
            a.on_release_all(lambda: 1 / 0)

        with unraisable() as seen:
            collected_unreleased(make)
        assert [type(e) for e in seen] == [ZeroDivisionError]

    def test_a_released_or_used_with_arena_gives_no_warning(self) -> None:
        def make() -> None:
            with rsalloc.Arena() as a:
                a.allocate(1)
            b = rsalloc.Arena(rsalloc.malloc)
            b.allocate(1)
            b.release_all()

        collected_unreleased(make, expect_warning=False)

    def test_warnings_as_errors_at_collection_still_release(self) -> None:
        out = run_isolated(
            """
            import gc, sys, warnings, rsalloc
            warnings.simplefilter("error")
            seen = []
            sys.unraisablehook = lambda u: seen.append(type(u.exc_value).__name__)
            a = rsalloc.Arena(rsalloc.malloc)
            p = a.allocate(10)
            del a
            gc.collect()
            print(seen, p.alive, rsalloc.stats().live_count)
            """
        )
        assert out.strip() == "['ResourceWarning'] False 0"


class TestDiagnosticArenas:
    def test_release_all_checks_guard_bytes_after_releasing_everything(self) -> None:
        a = rsalloc.Arena(rsalloc.diagnostic_malloc)
        bad = a.allocate(8)
        good = a(Int32, 4)
        ran = []
        a.on_release_all(lambda: ran.append(1))
        ctypes.memset(bad.address, 0x41, 8 + 3)  # 3 bytes past the end
        before = rsalloc.diagnostic_malloc.stats().live_count
        with pytest.raises(rsalloc.HeapCorruptionError, match="3 after the end of the 8-byte block") as e:
            a.release_all()
        assert f"{bad.address:#x}" in str(e.value) and a.name in str(e.value)
        assert ran == [1] and a.closed
        assert not bad.alive and not good.alive
        assert rsalloc.diagnostic_malloc.stats().live_count == before - 2

    def test_corruption_and_a_failing_callback_are_raised_together(self) -> None:
        a = rsalloc.Arena(rsalloc.diagnostic_calloc)
        bad = a.allocate(4)
        a.on_release_all(lambda: 1 / 0)
        ctypes.memset(bad.address - 1, 0, 1)
        with pytest.raises(BaseExceptionGroup) as e:
            a.release_all()
        kinds = sorted(type(x).__name__ for x in e.value.exceptions)
        assert kinds == ["HeapCorruptionError", "ZeroDivisionError"]

    @needs_fast_path("arena_finalizer")
    def test_corruption_found_at_collection_is_unraisable(self) -> None:
        def make() -> None:
            a = rsalloc.Arena(rsalloc.diagnostic_malloc)
            p = a.allocate(8)
            ctypes.memset(p.address, 0, 9)

        with unraisable() as seen:
            collected_unreleased(make)
        assert [type(e) for e in seen] == [rsalloc.HeapCorruptionError]


class TestArenaLeaks:
    def test_leak_check_reports_an_unreleased_arena_as_one_leak(self) -> None:
        with pytest.raises(rsalloc.LeakError) as e:
            with rsalloc.leak_check():
                a = rsalloc.Arena()
                for _ in range(10):
                    a.allocate(10)
        (record,) = e.value.leaks
        assert record.type == "Arena" and record.size == 100 and record.allocator == a.name
        assert record.traceback[0][0] == __file__
        assert "unreleased " + a.name in str(e.value)
        a.release_all()
        with rsalloc.leak_check():
            with rsalloc.Arena(rsalloc.malloc) as b:
                b.allocate(1)

    def test_an_unreleased_arena_is_in_the_exit_report(self) -> None:
        done = subprocess.run(
            [sys.executable, "-c", "import rsalloc\nkeep = rsalloc.Arena()\nkeep.allocate(7)\n"],
            capture_output=True,
            text=True,
            env={**__import__("os").environ, "RSALLOC_TRACK": "1"},
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "unreleased arena" not in done.stderr  # the text report lists records one by one
        assert "(Arena)" in done.stderr and "<string>:2" in done.stderr


# --------------------------------------------------------------- cross-heap

LIBC = ctypes.CDLL(None)
LIBC.free.argtypes = [ctypes.c_void_p]


def plain_block(n: int) -> int:
    """An address C's malloc made (through rsalloc, handed over)."""
    return rsalloc.malloc.allocate(n).detach()


class TestCrossHeap:
    """Diagnostic allocators adopt C's blocks as plain memory (no guard
    bytes), and never hand a guarded block to C."""

    @pytest.mark.parametrize("diag", ["diagnostic_malloc", "diagnostic_calloc"])
    @pytest.mark.parametrize("how", ["free", "own free", "malloc.free", "realloc", "autofree", "exported"])
    def test_an_adopted_plain_block_is_freed_as_plain_memory(self, diag: str, how: str) -> None:
        out = run_isolated(
            f"""
            import gc, rsalloc
            from rsalloc import Uint8
            d = rsalloc.{diag}
            p = d.adopt(rsalloc.malloc.allocate(32).detach(), Uint8, 32)
            p.write_bytes(b"x" * 32)
            how = {how!r}
            if how == "free":
                rsalloc.free(p)
            elif how == "own free":
                d.free(p)
            elif how == "malloc.free":
                rsalloc.malloc.free(p)
            elif how == "realloc":
                q = d.realloc(p, 64)  # moves into a guarded block
                assert q.read_bytes(32) == b"x" * 32
                q.write_bytes(b"y" * 64)
                d.free(q)
            elif how == "autofree":
                p.autofree()
                del p
                gc.collect()
            else:
                m = memoryview(p)
                d.free(p)
                del m
            print(d.stats().live_count, rsalloc.leaks(rsalloc.tracking.by_allocator(d)))
            """
        )
        assert out.strip() == "0 []"

    def test_c_frees_an_adopted_block_after_detach(self) -> None:
        out = run_isolated(
            """
            import ctypes, rsalloc
            libc = ctypes.CDLL(None)
            libc.free.argtypes = [ctypes.c_void_p]
            p = rsalloc.diagnostic_malloc.adopt(rsalloc.malloc.allocate(32).detach(), rsalloc.Uint8, 32)
            libc.free(p.detach())
            a = rsalloc.Arena(rsalloc.diagnostic_malloc)
            a.adopt(rsalloc.malloc.allocate(8).detach(), rsalloc.Uint8, 8)
            a.release_all()
            print("ok")
            """
        )
        assert out.strip() == "ok"

    @pytest.mark.parametrize("diag", [rsalloc.diagnostic_malloc, rsalloc.diagnostic_calloc])
    def test_a_guarded_block_cannot_be_detached(self, diag: rsalloc.Allocator) -> None:
        p = diag(Int32, 4)
        before = diag.stats()
        with pytest.raises(rsalloc.OwnershipError, match="guard bytes"):
            p.detach()
        assert p.alive and diag.stats() == before
        # The documented way out: a plain copy C can free.
        copy = rsalloc.malloc.clone(p)
        LIBC.free(copy.detach())
        diag.free(p)
        assert diag.native_free is None  # no C function frees diagnostic blocks

    def test_a_guarded_block_that_left_an_arena_cannot_be_detached_either(self) -> None:
        a = rsalloc.Arena(rsalloc.diagnostic_malloc)
        p = a.allocate(8)
        a.detach(p)
        with pytest.raises(rsalloc.OwnershipError, match="guard bytes"):
            p.detach()
        a.release_all()
        assert p.alive
        rsalloc.free(p)

    def test_a_plain_block_reallocated_by_a_diagnostic_allocator_gets_guards(self) -> None:
        p = rsalloc.malloc.allocate(16)
        q = rsalloc.diagnostic_malloc.realloc(p, 32)
        ctypes.memset(q.address, 0, 33)
        with pytest.raises(rsalloc.HeapCorruptionError):
            rsalloc.free(q)


# -------------------------------------------------------- failed operations


class Hostile(Pool):
    """A pool whose allocation runs `hook()` first (user code mid-operation)."""

    hook = staticmethod(lambda: None)

    def _raw_alloc(self, nbytes: int, alignment: int) -> int:
        type(self).hook()
        return super()._raw_alloc(nbytes, alignment)


def live_state() -> tuple[int, int]:
    s = rsalloc.stats()
    return (s.live_count, s.live_bytes)


class TestFailedOperationsChangeNothing:
    def test_arena_realloc_whose_allocator_releases_the_arena(self) -> None:
        pool = Hostile()
        a = rsalloc.Arena(pool)
        p = a.allocate(16)
        Hostile.hook = staticmethod(a.release_all)
        try:
            with pytest.raises(rsalloc.ArenaClosedError):
                a.realloc(p, 64)
        finally:
            Hostile.hook = staticmethod(lambda: None)
        # The block did not come back to life in the released arena.
        assert not p.alive and a.closed
        assert pool.out == set() and pool.stats().live_count == 0
        assert len(a) == 0

    def test_arena_realloc_whose_allocator_releases_for_reuse(self) -> None:
        pool = Hostile()
        a = rsalloc.Arena(pool)
        p = a.allocate(16)
        Hostile.hook = staticmethod(lambda: a.release_all(reuse=True))
        try:
            with pytest.raises(rsalloc.UseAfterFreeError):
                a.realloc(p, 64)
                raise rsalloc.UseAfterFreeError("the realloc went through")  # either way p is gone
        finally:
            Hostile.hook = staticmethod(lambda: None)
        assert not p.alive
        a.release_all()
        assert pool.out == set() and pool.stats().live_count == 0

    @pytest.mark.parametrize("target", ["pool", "arena over pool"])
    def test_clone_whose_allocator_frees_the_source(self, target: str) -> None:
        pool = Hostile()
        src = rsalloc.malloc.allocate(32)
        Hostile.hook = staticmethod(lambda: rsalloc.free(src))
        dest = pool if target == "pool" else rsalloc.Arena(pool)
        before = live_state()
        try:
            with pytest.raises(rsalloc.UseAfterFreeError):
                dest.clone(src)
        finally:
            Hostile.hook = staticmethod(lambda: None)
        if isinstance(dest, rsalloc.Arena):
            dest.release_all()
        assert pool.out == set() and pool.stats().live_count == 0
        assert live_state()[0] == before[0] - 1  # only the source went

    def test_to_native_utf16_with_an_error_handler_giving_odd_bytes(self) -> None:
        import codecs

        codecs.register_error("rsalloc_test_odd", lambda e: (b"x", e.end))
        before = live_state()
        # The codec refuses an odd replacement itself (rsalloc would too).
        with pytest.raises(ValueError):
            rsalloc.to_native_utf16("a\ud800b", errors="rsalloc_test_odd")
        assert live_state() == before

    def test_to_native_utf16_ignores_a_str_subclass_encode(self) -> None:
        class Odd(str):
            def encode(self, *a: object, **k: object) -> bytes:  # type: ignore[override]
                return b"abc"

        p = rsalloc.to_native_utf16(Odd("hi"), errors="replace")
        assert p.to_str() == "hi"
        rsalloc.free(p)


    def test_diagnostic_arena_realloc_of_a_damaged_block_checks_first(self) -> None:
        a = rsalloc.Arena(rsalloc.diagnostic_malloc)
        p = a.allocate(8)
        p.write_bytes(b"12345678")
        ctypes.memset(p.address + 8, 0, 2)
        before = (len(a), rsalloc.diagnostic_malloc.stats())
        with pytest.raises(rsalloc.HeapCorruptionError):
            a.realloc(p, 64)
        assert p.alive and p.read_bytes() == b"12345678"
        assert (len(a), rsalloc.diagnostic_malloc.stats()) == before
        with pytest.raises(rsalloc.HeapCorruptionError):
            a.release_all()
