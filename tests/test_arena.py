"""Arena (DESIGN §5, issue 3): bump region, wrapping arena, release,
callbacks, moving out, current_arena / using, threads, asyncio, a real C
library (zlib) and the counters."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import ctypes.util
import gc
import pickle
import threading
import zlib
from collections.abc import Iterator

import numpy as np
import pytest

import rsalloc
from rsalloc import (
    Arena,
    ArenaClosedError,
    DoubleFreeError,
    Float64,
    Int32,
    Int64,
    OwnershipError,
    Pointer,
    Size,
    Uint8,
    UseAfterFreeError,
    calloc,
    malloc,
)

LIBC = ctypes.CDLL(None)  # the process namespace: the malloc rsalloc uses
LIBC.strdup.argtypes = [ctypes.c_char_p]
LIBC.strdup.restype = ctypes.c_void_p


def counters() -> tuple[dict[str, int], ...]:
    return (
        rsalloc.stats()._asdict(),
        malloc.stats()._asdict(),
        calloc.stats()._asdict(),
    )


@contextlib.contextmanager
def unchanged(*extra: Arena) -> Iterator[None]:
    """The block changes no counter (global, libc, and the given arenas')."""
    before = counters() + tuple(a.stats()._asdict() for a in extra)
    yield
    assert counters() + tuple(a.stats()._asdict() for a in extra) == before


ALL_KINDS = [None, malloc, calloc]


@pytest.fixture(params=ALL_KINDS, ids=["region", "malloc", "calloc"])
def backing(request: pytest.FixtureRequest) -> rsalloc.Allocator | None:
    return request.param  # type: ignore[no-any-return]


# 1. Bump region ------------------------------------------------------------


def test_region_memory_is_zeroed_aligned_and_disjoint() -> None:
    with Arena() as a:
        blocks = []
        for i in range(2000):
            n = (i * 37) % 300
            align = 1 << (i % 13)  # up to 4096
            p = a.allocate(n, alignment=align)
            assert p.address % align == 0
            assert p.read_bytes() == bytes(n)
            p.fill(0xEE)
            blocks.append((p.address, p.address + max(n, 1)))
        for align in (8192, 1 << 16):
            p = a(Int64, 3, alignment=align)
            assert p.address % align == 0 and p[:] == [0, 0, 0]
        blocks.sort()
        assert all(x[1] <= y[0] for x, y in zip(blocks, blocks[1:]))


def test_region_big_request_gets_its_own_chunk() -> None:
    with Arena() as a:
        small = a(Int32, 2)
        big = a.allocate(8 << 20)
        assert big.nbytes == 8 << 20
        assert np.asarray(big).sum() == 0
        big[len(big) - 1] = 7
        after = a(Int32, 2)
        # The bump chunk was not replaced by the big one.
        assert after.address == small.address + 8
        assert "chunks" in repr(a)


def test_typed_calls_and_zero_elements(backing: rsalloc.Allocator | None) -> None:
    with Arena(backing) as a:
        p = a(Int32, 4)
        assert (p.type, p.count, p.nbytes) == (Int32, 4, 16)
        assert a().type is Uint8 and a().count == 1
        e = a(Float64, 0)
        assert e.count == 0 and e.alive
        a.free(e)
        q = a(Pointer[Int32], 2)
        q[0] = p
        assert q[0].address == p.address


@pytest.mark.parametrize(
    ("args", "kwargs", "exc"),
    [
        ((-1,), {}, ValueError),
        ((8,), {"alignment": 3}, ValueError),
        ((8,), {"alignment": 0}, ValueError),
        ((2**63,), {}, OverflowError),
        ((2**62,), {}, MemoryError),
        ((1.5,), {}, TypeError),
    ],
)
def test_bad_sizes_raise_and_change_nothing(
    backing: rsalloc.Allocator | None, args: tuple[int], kwargs: dict[str, int], exc: type[Exception]
) -> None:
    with Arena(backing) as a:
        keep = a.allocate(4)
        with unchanged(a), pytest.raises(exc):
            a.allocate(*args, **kwargs)
        with unchanged(a), pytest.raises(exc if exc is not TypeError else TypeError):
            a(Uint8, *args, **kwargs)
        assert len(a) == 1 and keep.alive


# 2. Wrapping arena -----------------------------------------------------------


def test_wrapping_arena_counts_in_backing_and_frees_through_it() -> None:
    before = malloc.stats()
    with Arena(malloc) as a:
        p = a(Int64, 4)
        s = malloc.stats()
        assert s.live_count == before.live_count + 1
        assert s.live_bytes == before.live_bytes + 32
        assert p.allocator is a and a.allocator is malloc
        with unchanged(a), pytest.raises(OwnershipError):
            malloc.free(p)
        with unchanged(a), pytest.raises(OwnershipError):
            calloc.free(p)  # same heap, still not the owner
        with unchanged(a), pytest.raises(OwnershipError):
            malloc.realloc(p, 8)
        assert p.alive
    after = malloc.stats()
    assert (after.live_count, after.live_bytes) == (before.live_count, before.live_bytes)
    assert after.total_frees == before.total_frees + 1
    assert not p.alive


def test_arena_over_calloc_is_zeroed() -> None:
    with Arena(calloc) as a:
        for _ in range(50):
            p = a.allocate(256)
            assert p.read_bytes() == bytes(256)
            p.fill(1)


def test_arena_takes_only_allocators() -> None:
    with pytest.raises(TypeError):
        Arena(42)  # type: ignore[arg-type]
    with Arena() as inner, pytest.raises(TypeError):
        Arena(inner)  # type: ignore[arg-type]


# 3. Release --------------------------------------------------------------------


def test_every_pointer_and_view_dies_at_release(backing: rsalloc.Allocator | None) -> None:
    with Arena(backing) as a:
        p = a(Int32, 8)
        p[:] = list(range(8))
        views = [p + 2, p.offset(1), p.cast(Uint8), (p + 1).cast(Int64)]
        s = rsalloc.to_native_utf8("héllo", a)
        assert s.to_str() == "héllo" and s.allocator is a
    for v in [p, s, *views]:
        assert not v.alive
        assert "released" in repr(v)
        with pytest.raises(UseAfterFreeError):
            v[0]
        with pytest.raises(UseAfterFreeError):
            v.read_bytes(1)
    with pytest.raises(UseAfterFreeError):
        memoryview(p)


def test_release_also_when_the_block_raises(backing: rsalloc.Allocator | None) -> None:
    before = rsalloc.stats().live_count
    with pytest.raises(KeyError):
        with Arena(backing) as a:
            p = a.allocate(10)
            assert rsalloc.stats().live_count == before + 1
            raise KeyError("boom")
    assert not p.alive and a.closed
    assert rsalloc.stats().live_count == before


def test_async_with_releases_also_on_error() -> None:
    async def main() -> tuple[Pointer[Uint8], Arena]:
        async with Arena() as a:
            p = a.allocate(4)
            assert rsalloc.current_arena() is a
        assert not p.alive
        with pytest.raises(ValueError):
            async with Arena(malloc) as b:
                q = b.allocate(4)
                raise ValueError
        assert not q.alive and b.closed
        return p, a

    p, a = asyncio.run(main())
    assert a.closed


def test_buffer_exports_survive_the_release(backing: rsalloc.Allocator | None) -> None:
    with Arena(backing) as a:
        p = a(Float64, 1000)
        arr = np.asarray(p)
        arr[:] = np.arange(1000.0)
        mv = memoryview(a(Int32, 3))
        mv[0], mv[1], mv[2] = 1, 42, 3
        # Chunk memory reused by a later arena must not overwrite `arr`.
    assert not p.alive
    with Arena(backing) as b:
        for _ in range(200):
            b.allocate(512).fill(0xFF)
        assert arr.sum() == sum(range(1000))
        assert mv.tolist() == [1, 42, 3]
    del arr
    mv.release()


def test_free_is_a_no_op_and_double_free_is_caught(backing: rsalloc.Allocator | None) -> None:
    with Arena(backing) as a:
        p = a(Int32, 4)
        p[0] = 9
        with unchanged(a):
            a.free(p)
            rsalloc.free(p)
            a.free(rsalloc.nullptr)
        assert p.alive and p[0] == 9
        with unchanged(a), pytest.raises(OwnershipError):
            a.free(p + 1)  # interior
        m = malloc.allocate(4)
        with unchanged(a), pytest.raises(OwnershipError):
            a.free(m)
        malloc.free(m)
        with Arena() as other:
            o = other.allocate(4)
            with unchanged(a, other), pytest.raises(OwnershipError):
                a.free(o)
        a.free(Pointer.from_address(p.address, Int32, 1))  # resolved to p's block: a no-op
        with pytest.raises(OwnershipError):
            a.free(Pointer.from_address(p.address + 4, Int32, 1))  # its interior
    with unchanged(a), pytest.raises(DoubleFreeError):
        a.free(p)
    with unchanged(a), pytest.raises(DoubleFreeError):
        rsalloc.free(p)


def test_region_pointer_refused_by_other_allocators() -> None:
    with Arena() as a:
        p = a.allocate(16)
        for alloc in (malloc, calloc):
            with unchanged(a), pytest.raises(OwnershipError):
                alloc.free(p)
            with unchanged(a), pytest.raises(OwnershipError):
                alloc.realloc(p, 32)
        with unchanged(a), pytest.raises(OwnershipError):
            p.detach()
        assert p.autofree() is p  # released with the arena anyway
        assert p.alive and p.allocator is a


# 4. Callbacks, release_all, ArenaClosedError ----------------------------------


def test_callbacks_run_last_registered_first() -> None:
    order: list[str] = []
    with Arena() as a:
        r = a.using(["res"], lambda x: order.append(f"release {x[0]}"))
        assert r == ["res"]
        a.on_release_all(lambda: order.append("first"))
        a.on_release_all(lambda: order.append("second"))
        p = a.allocate(4)

        def needs_memory() -> None:
            order.append(f"alive={p.alive}")

        a.on_release_all(needs_memory)
    assert order == ["alive=True", "second", "first", "release res"]


def test_one_failing_callback_is_raised_as_itself_after_everything_ran(
    backing: rsalloc.Allocator | None,
) -> None:
    ran: list[int] = []
    before = rsalloc.stats().live_count
    a = Arena(backing)
    p = a.allocate(8)
    a.on_release_all(lambda: ran.append(1))
    a.on_release_all(lambda: 1 / 0)
    a.on_release_all(lambda: ran.append(3))
    with pytest.raises(ZeroDivisionError):
        a.release_all()
    assert ran == [3, 1]
    assert not p.alive and a.closed and len(a) == 0
    assert rsalloc.stats().live_count == before


def test_several_failures_become_an_exception_group() -> None:
    ran: list[int] = []

    def fail(exc: Exception) -> None:
        raise exc

    with pytest.raises(ExceptionGroup) as info:
        with Arena(malloc) as a:
            p = a.allocate(8)
            a.using(KeyError("k"), fail)
            a.on_release_all(lambda: ran.append(1))
            a.on_release_all(lambda: fail(ValueError("v")))
    assert [type(e) for e in info.value.exceptions] == [ValueError, KeyError]
    assert ran == [1]
    assert not p.alive


def test_closed_arena_refuses_new_work(backing: rsalloc.Allocator | None) -> None:
    a = Arena(backing)
    p = a.allocate(4)
    a.release_all()
    assert a.closed and "released" in repr(a)
    m = malloc.allocate(1)
    with unchanged(a):
        for call in (
            lambda: a.allocate(4),
            lambda: a(Int32, 2),
            lambda: a.using(1, print),
            lambda: a.on_release_all(print),
            lambda: a.clone(m),
            lambda: a.realloc(rsalloc.nullptr, 4),
        ):
            with pytest.raises(ArenaClosedError):
                call()
        a.release_all()  # releasing again does nothing
        with a:  # entering a closed arena is allowed; allocating is not
            with pytest.raises(ArenaClosedError):
                a.allocate(1)
    malloc.free(m)
    assert not p.alive


def test_release_all_reuse_keeps_the_arena_open(backing: rsalloc.Allocator | None) -> None:
    with Arena(backing) as a:
        old = [a.allocate(100) for _ in range(100)]
        for q in old:
            q.fill(0xAB)
        ran: list[int] = []
        a.on_release_all(lambda: ran.append(1))
        a.release_all(reuse=True)
        assert ran == [1] and not a.closed and len(a) == 0
        assert not any(q.alive for q in old)
        fresh = [a.allocate(100) for _ in range(100)]
        if backing is not malloc:
            assert all(q.read_bytes() == bytes(100) for q in fresh)
        assert len(a) == 100 and a.stats().live_bytes == 10_000
        a.on_release_all(lambda: ran.append(2))
    assert ran == [1, 2]
    assert not any(q.alive for q in fresh)


# 5. Moving out ------------------------------------------------------------------


def test_detach_from_wrapping_arena_hands_the_block_to_the_backing() -> None:
    with Arena(malloc) as a:
        p = a(Int32, 2)
        p[1] = 5
        assert a.detach(p) is p
        assert p.allocator is malloc and len(a) == 0
        with pytest.raises(OwnershipError):
            a.detach(p)  # no longer the arena's
        with pytest.raises(OwnershipError):
            a.detach(malloc.allocate(1).autofree())
    assert p.alive and p[1] == 5
    live = malloc.stats().live_count
    malloc.free(p)
    assert malloc.stats().live_count == live - 1


def test_region_cannot_detach_but_clone_copies_out() -> None:
    with Arena() as a:
        p = a(Int32, 3)
        p[:] = [1, 2, 3]
        with unchanged(a), pytest.raises(OwnershipError, match="clone"):
            a.detach(p)
        kept = malloc.clone(p)
        inner = a.clone(p)
        assert inner.allocator is a
    assert kept.alive and kept[:] == [1, 2, 3] and kept.allocator is malloc
    assert not inner.alive
    malloc.free(kept)


def test_realloc_in_an_arena(backing: rsalloc.Allocator | None) -> None:
    with Arena(backing) as a:
        p = a(Int32, 2)
        p[:] = [7, 8]
        view = p + 1
        q = a.realloc(p, 6)
        assert q.count == 6 and q[:2] == [7, 8] and q.allocator is a
        if backing is not malloc:
            assert q[2:] == [0, 0, 0, 0]
        assert not p.alive and not view.alive and "reallocated" in repr(p)
        with pytest.raises(UseAfterFreeError):
            view[0]
        with pytest.raises(DoubleFreeError):
            a.free(p)
        assert len(a) == 1 and a.stats().live_bytes == 24
        with unchanged(a), pytest.raises(OwnershipError):
            a.realloc(q + 1, 2)
        with unchanged(a), pytest.raises(MemoryError):
            a.realloc(q, 2**59)
        assert q.alive
        r = a.realloc(rsalloc.nullptr, 4)
        assert r.count == 4
        with pytest.raises(OwnershipError):
            a.realloc(malloc.allocate(1).autofree(), 4)


def test_adopt() -> None:
    with Arena(malloc) as a:
        live = malloc.stats().live_count
        s = a.adopt(LIBC.strdup(b"hello"), Uint8, 6)
        assert s.to_str() == "hello" and s.allocator is a
        assert malloc.stats().live_count == live + 1
    assert malloc.stats().live_count == live and not s.alive
    with Arena() as r:
        addr = LIBC.strdup(b"x")
        with unchanged(r), pytest.raises(OwnershipError):
            r.adopt(addr, Uint8, 2)
        malloc.free(malloc.adopt(addr, Uint8, 2))
    assert r.native_free is None and Arena(malloc).native_free is None


# 6. Context: current_arena, using ---------------------------------------------


def test_current_arena_nesting_and_outside() -> None:
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()
    with Arena() as outer:
        assert rsalloc.current_arena() is outer
        with Arena(malloc) as inner:
            assert rsalloc.current_arena() is inner
        assert rsalloc.current_arena() is outer
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()


def test_current_arena_is_per_thread() -> None:
    seen: dict[str, object] = {}
    with Arena() as main_arena:

        def worker() -> None:
            try:
                rsalloc.current_arena()
            except RuntimeError:
                seen["outside"] = True
            with Arena() as mine:
                seen["inside"] = rsalloc.current_arena() is mine

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert rsalloc.current_arena() is main_arena
    assert seen == {"outside": True, "inside": True}


def test_current_arena_is_per_asyncio_task() -> None:
    async def task(i: int, started: asyncio.Barrier) -> list[int]:
        async with Arena(None if i % 2 else malloc) as a:
            p = a(Int32, 3)
            p[:] = [i, i, i]
            await started.wait()  # every task is inside its own arena now
            for _ in range(5):
                assert rsalloc.current_arena() is a
                await asyncio.sleep(0)
            q = rsalloc.to_native_utf8(str(i), rsalloc.current_arena())
            assert q.allocator is a
            return p[:] + [int(q.to_str())]

    async def main() -> list[list[int]]:
        started = asyncio.Barrier(8)
        results = await asyncio.gather(*(task(i, started) for i in range(8)))
        with pytest.raises(RuntimeError):
            rsalloc.current_arena()
        return results

    assert asyncio.run(main()) == [[i, i, i, i] for i in range(8)]


def test_nested_arenas_in_concurrent_tasks() -> None:
    # Tasks interleave at every await, each two arenas deep; every level
    # sees its own innermost arena, and leaving the inner one gives back the
    # outer one of the same task.
    async def task(i: int, started: asyncio.Barrier) -> int:
        assert rsalloc.current_arena() is shared
        async with Arena(None if i % 2 else malloc) as outer:
            await started.wait()
            with Arena() as inner:
                for _ in range(3):
                    assert rsalloc.current_arena() is inner
                    await asyncio.sleep(0)
                # A task made here shares this context: it sees `inner`.
                child = asyncio.ensure_future(seen_by_child())
                assert await child is inner
            for _ in range(3):
                assert rsalloc.current_arena() is outer
                await asyncio.sleep(0)
            p = rsalloc.current_arena()(Int32, 1)
            p[0] = i
            assert p.allocator is outer
            return int(p[0])
        raise AssertionError("unreachable")

    async def seen_by_child() -> Arena:
        return rsalloc.current_arena()

    async def main() -> list[int]:
        started = asyncio.Barrier(6)
        results = await asyncio.gather(*(task(i, started) for i in range(6)))
        assert rsalloc.current_arena() is shared
        return results

    with Arena() as shared:
        assert asyncio.run(main()) == list(range(6))
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()


async def late(go: asyncio.Event) -> object:
    """The current arena of a task, read once `go` is set."""
    await go.wait()
    return rsalloc.current_arena()


def test_task_outliving_the_with_sees_the_arena_outside_it() -> None:
    # A task made inside `with` shares its context entry; once that `with`
    # has ended (and released its arena) the task sees the arena outside
    # it, never the released one (docs/decisions.md).
    async def main() -> None:
        go = asyncio.Event()
        async with Arena() as outer:
            async with Arena() as inner:
                t = asyncio.ensure_future(late(go))
                await asyncio.sleep(0)
            assert inner.closed
            go.set()
            assert await t is outer
        t2 = None
        async with Arena():
            t2 = asyncio.ensure_future(late(go))
        with pytest.raises(RuntimeError):
            await t2

    asyncio.run(main())


# --- a `with` that takes over an ended entry (the fence's context_vars_in_place) ---


def _entry_id() -> int | None:
    """id() of the context variable's value (the innermost entry), or None.
    The copy this reads through is dropped before returning, so it leaves
    the context's mapping unshared again."""
    for var, value in contextvars.copy_context().items():
        if var.name == "rsalloc.current_arena":
            return id(value)
    return None


def _in_place() -> bool:
    from rsalloc import _rsalloc

    return bool(_rsalloc._fast_paths()["context_vars_in_place"]["active"])


def test_a_with_after_a_with_takes_over_its_ended_entry() -> None:
    # Only this context could see the ended entry: the next `with` at the
    # same depth reuses it (no context variable update) when the trick is
    # on, and makes a new one when it is off; current_arena() is right
    # either way.
    with Arena() as a:
        assert rsalloc.current_arena() is a
        first = _entry_id()
    with Arena() as b:
        assert rsalloc.current_arena() is b
        second = _entry_id()
    assert (first == second) is _in_place()
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()
    with Arena() as outer:
        for _ in range(3):
            with Arena() as inner:
                assert rsalloc.current_arena() is inner
            assert rsalloc.current_arena() is outer


def test_a_copy_of_the_context_keeps_what_it_saw() -> None:
    # A copy made after a `with` shares the mapping that holds the ended
    # entry: the next `with` must not change it in place, or the copy would
    # see an arena entered after it was made.
    with Arena() as outer:
        with Arena():
            pass
        snap = contextvars.copy_context()
        with Arena() as c:
            assert rsalloc.current_arena() is c
            assert snap.run(rsalloc.current_arena) is outer
        assert snap.run(rsalloc.current_arena) is outer
    with Arena():
        pass
    snap = contextvars.copy_context()
    with Arena():
        with pytest.raises(RuntimeError):
            snap.run(rsalloc.current_arena)


def test_an_entry_held_by_python_code_is_not_taken_over() -> None:
    with Arena():
        pass
    held = [v for k, v in contextvars.copy_context().items() if k.name == "rsalloc.current_arena"]
    with Arena() as b:
        assert rsalloc.current_arena() is b
        assert id(held[0]) != _entry_id()


def test_a_task_made_between_two_withs_sees_neither() -> None:
    async def main() -> None:
        go = asyncio.Event()
        async with Arena() as outer:
            async with Arena():
                pass
            t = asyncio.ensure_future(late(go))  # copies the context now
            await asyncio.sleep(0)
            async with Arena() as c:
                assert rsalloc.current_arena() is c
                go.set()
                assert await t is outer

    asyncio.run(main())


def test_entering_the_same_arena_twice_nests() -> None:
    a, b = Arena(), Arena()
    with a:
        with b:
            with a:
                assert rsalloc.current_arena() is a
            # the inner exit released a; the entry of b is still innermost
            assert rsalloc.current_arena() is b and a.closed
        assert rsalloc.current_arena() is a
    with pytest.raises(RuntimeError):
        rsalloc.current_arena()


def test_region_pointer_allocator_is_the_arena_while_it_lives() -> None:
    with Arena() as a:
        p = a.allocate(8)
        q = a(Int32, 2)
        assert p.allocator is a and q.allocator is a
    assert p.allocator is a  # released, but the object lives
    del a
    gc.collect()
    assert p.allocator is None and not p.alive


def test_using_runs_fn_inside_a_fresh_arena(backing: rsalloc.Allocator | None) -> None:
    before = rsalloc.stats().live_count
    kept: list[Pointer[Int32]] = []

    def fn(a: Arena) -> int:
        assert rsalloc.current_arena() is a and a.allocator is backing
        p = a(Int32, 1)
        p[0] = 41
        kept.append(p)
        return p[0] + 1

    assert rsalloc.using(fn, backing) == 42
    assert not kept[0].alive and rsalloc.stats().live_count == before

    async def afn(a: Arena) -> int:
        p = a(Int32, 1)
        await asyncio.sleep(0)
        p[0] = 6
        kept.append(p)
        return p[0] * 7

    assert asyncio.run(rsalloc.using(afn, backing)) == 42
    assert not kept[1].alive
    with pytest.raises(ZeroDivisionError):
        rsalloc.using(lambda a: a.allocate(1) and 1 / 0)
    assert rsalloc.stats().live_count == before


# 7. Threads ------------------------------------------------------------------


@pytest.mark.parametrize("kind", [None, malloc], ids=["region", "malloc"])
def test_threads_share_an_arena(kind: rsalloc.Allocator | None) -> None:
    n_threads, per_thread = 4, 400
    before = rsalloc.stats()
    results: list[list[Pointer[Uint8]]] = [[] for _ in range(n_threads)]
    barrier = threading.Barrier(n_threads)
    with Arena(kind) as a:

        def work(t: int) -> None:
            barrier.wait()
            for i in range(per_thread):
                p = a.allocate(1 + (i + t) % 64)
                p.fill(t + 1)
                results[t].append(p)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = sum(1 + (i + t) % 64 for t in range(n_threads) for i in range(per_thread))
        s = a.stats()
        assert (s.live_count, s.live_bytes) == (n_threads * per_thread, total)
        assert len(a) == n_threads * per_thread
        g = rsalloc.stats()
        assert g.live_count == before.live_count + n_threads * per_thread
        assert g.live_bytes == before.live_bytes + total
        spans = sorted((p.address, p.address + p.nbytes) for r in results for p in r)
        assert all(x[1] <= y[0] for x, y in zip(spans, spans[1:]))
        for t, r in enumerate(results):
            assert all(p.read_bytes() == bytes([t + 1]) * p.nbytes for p in r)
    g = rsalloc.stats()
    assert (g.live_count, g.live_bytes) == (before.live_count, before.live_bytes)
    assert g.total_frees == before.total_frees + n_threads * per_thread


# 8. stats, len, repr, pickling -------------------------------------------------


def test_stats_len_repr(backing: rsalloc.Allocator | None) -> None:
    a = Arena(backing)
    assert len(a) == 0 and "open" in repr(a)
    a(Int64, 2)
    a.allocate(5)
    s = a.stats()
    assert (s.live_count, s.live_bytes, s.total_allocs, s.total_frees) == (2, 21, 2, 0)
    assert len(a) == 2
    r = repr(a)
    assert "2 allocations" in r and "21 bytes" in r
    assert ("bump region" in r) == (backing is None)
    a.release_all()
    s = a.stats()
    assert (s.live_count, s.live_bytes, s.peak_bytes, s.total_frees) == (0, 0, 21, 2)
    assert "released" in repr(a)
    with pytest.raises(TypeError):
        pickle.dumps(a)


# 9. A real C library: zlib through ctypes, everything in one arena -------------


def test_zlib_compress_and_uncompress_in_one_arena() -> None:
    libz = ctypes.CDLL(ctypes.util.find_library("z") or "libz.so.1")
    ulong_p = ctypes.c_void_p
    libz.compressBound.argtypes = [ctypes.c_ulong]
    libz.compressBound.restype = ctypes.c_ulong
    libz.compress2.argtypes = [ctypes.c_void_p, ulong_p, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int]
    libz.compress2.restype = ctypes.c_int
    libz.uncompress.argtypes = [ctypes.c_void_p, ulong_p, ctypes.c_void_p, ctypes.c_ulong]
    libz.uncompress.restype = ctypes.c_int
    assert ctypes.sizeof(ctypes.c_ulong) == rsalloc.sizeof(Size)

    text = ("rsalloc arenas release everything at once. " * 200).encode()
    before = rsalloc.stats().live_count
    with Arena() as a:
        src = a.allocate(len(text))
        src.write_bytes(text)
        bound = libz.compressBound(len(text))
        packed = a.allocate(bound)
        packed_len = a(Size)  # out-parameter
        packed_len.value = bound
        assert libz.compress2(packed, packed_len, src, len(text), 9) == 0
        assert 0 < packed_len.value < len(text) // 10
        assert zlib.decompress(packed.read_bytes(packed_len.value)) == text

        out = a.allocate(len(text))
        out_len = a(Size)
        out_len.value = len(text)
        assert libz.uncompress(out, out_len, packed, packed_len.value) == 0
        assert out_len.value == len(text) and out.read_bytes() == text
        assert len(a) == 5
        assert rsalloc.stats().live_count == before + 5
    assert rsalloc.stats().live_count == before
    assert not any(p.alive for p in (src, packed, packed_len, out, out_len))


def test_a_region_block_is_freed_or_reallocated_only_through_a_view_at_its_start() -> None:
    # A region Pointer's owner is one word: whether the view starts its
    # block is a bit carried from view to view, not a stored address.
    with Arena() as a:
        p = a(Int32, 4)
        p[:] = [1, 2, 3, 4]
        at_start = [p + 0, p.cast(Uint8), p.cast(Uint8).cast(Int32), (p + 0).cast(Int64)]
        inside = [p + 1, (p + 1).cast(Uint8), p.cast(Uint8) + 4, p + 4]
        for v in inside:
            with unchanged(a), pytest.raises(OwnershipError):
                a.free(v)
            with unchanged(a), pytest.raises(OwnershipError):
                a.realloc(v, 8)
        for v in at_start:
            with unchanged(a):
                a.free(v)  # a no-op for a live block
        q = a.realloc(at_start[1], 32)  # Uint8 view at the start: 32 bytes
        assert q.count == 32 and q.cast(Int32)[:4] == [1, 2, 3, 4]
        assert not any(v.alive for v in [p, *at_start, *inside[:3]])
        with pytest.raises(DoubleFreeError):
            a.free(at_start[0])


def test_a_reallocation_kills_views_by_address_range_and_spares_neighbours() -> None:
    with Arena() as a:
        before, p, after = a(Int64, 1), a(Int32, 4), a(Int64, 1)
        empty = a(Uint8, 0)
        before[0], after[0] = 5, 6
        views = [p, p + 1, p + 3, p.cast(Uint8) + 15]
        q = a.realloc(p, 8)
        for v in views:
            assert not v.alive
            with pytest.raises(UseAfterFreeError, match="reallocated"):
                v.read_bytes(1)
        assert before[0] == 5 and after[0] == 6 and before.alive and after.alive
        assert q.alive and empty.alive
        a.realloc(empty, 1)  # a block of no bytes still has a start, which dies
        assert not empty.alive and after.alive
        # The one view a range cannot place: no bytes, at the dead block's
        # end, which is also where the next block may start. It reaches
        # nothing, so nothing can be read or written through it.
        end = (q + 8)
        r = a.realloc(q, 16)
        assert end.count == 0 and not q.alive and r.alive
        with pytest.raises(IndexError):
            end[0]
        with pytest.raises(OwnershipError):
            a.free(end)
