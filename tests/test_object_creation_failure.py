"""When CPython cannot make the Python object of a Pointer or a struct view
(DESIGN §6: running out of memory anywhere is MemoryError), nothing stays
behind: a block made for that object alone is freed and uncounted before the
MemoryError propagates, an adopted address goes back to its caller, and a
view of an existing block leaves the block as it was.

`rsalloc._rsalloc._fail_object_creation(n)` makes the n-th next object
creation fail, so each site class is driven deterministically: the block
allocation succeeds, the object creation after it does not."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import rsalloc
from rsalloc import Int32, Pointer, Uint8
from rsalloc._rsalloc import _fail_object_creation

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]


class Pool(rsalloc.Allocator):
    """A Python-defined allocator over libc that counts what it still holds."""

    def __init__(self) -> None:
        super().__init__()
        self.held: set[int] = set()

    def _raw_alloc(self, nbytes: int, alignment: int) -> int:
        addr = libc.malloc(nbytes) or 0
        if addr:
            self.held.add(addr)
        return addr

    def _raw_free(self, address: int) -> None:
        self.held.discard(address)
        libc.free(address)


class S(rsalloc.Struct):
    a: Int32
    b: Int32


@pytest.fixture(autouse=True)
def _no_failure_left() -> Iterator[None]:
    yield
    _fail_object_creation(0)


def counts() -> tuple[int, int]:
    s = rsalloc.stats()
    return (s.live_count, s.live_bytes)


def fails_and_changes_nothing(call: Callable[[], Any], nth: int = 1) -> None:
    """`call()` with its nth object creation failing: MemoryError, and the
    process's counters and leak_check say nothing was left behind."""
    before = counts()
    with rsalloc.leak_check():
        _fail_object_creation(nth)
        with pytest.raises(MemoryError):
            call()
        _fail_object_creation(0)
    assert counts() == before


def allocators() -> list[Any]:
    return [
        rsalloc.malloc,
        rsalloc.calloc,
        rsalloc.adaptive_malloc,
        rsalloc.diagnostic_malloc,
        rsalloc.diagnostic_calloc,
        rsalloc.malloc.limited(1 << 20),
        Pool(),
        rsalloc.ForeignAllocator(libc.malloc, libc.free),
    ]


ALLOCATOR_IDS = ["malloc", "calloc", "adaptive", "diagnostic", "diagnostic_calloc", "limited", "Pool", "Foreign"]


class TestFreshBlocks:
    """The block was made for the object that failed: it is freed."""

    @pytest.mark.parametrize("a", allocators(), ids=ALLOCATOR_IDS)
    def test_call_allocate_and_clone(self, a: Any) -> None:
        fails_and_changes_nothing(lambda: a(Int32, 8))
        fails_and_changes_nothing(lambda: a(Int32, 8, alignment=16))
        fails_and_changes_nothing(lambda: a.allocate(64))
        fails_and_changes_nothing(lambda: a.allocate(1 << 16))
        src = a(Int32, 4)
        src[:] = [1, 2, 3, 4]
        fails_and_changes_nothing(lambda: a.clone(src))
        assert src[:] == [1, 2, 3, 4]  # the source is untouched
        a.free(src)
        if isinstance(a, Pool):
            assert a.held == set()  # the Python allocator got every block back

    @pytest.mark.parametrize("a", allocators(), ids=ALLOCATOR_IDS)
    def test_realloc_frees_the_new_block(self, a: Any) -> None:
        p = a(Int32, 4)
        before = counts()
        _fail_object_creation(1)
        with pytest.raises(MemoryError):
            a.realloc(p, 64)
        # The old block died when it moved (realloc's contract); the new one,
        # which nobody can reach, was freed.
        assert not p.alive
        assert counts()[0] == before[0] - 1
        fails_and_changes_nothing(lambda: a.realloc(rsalloc.nullptr.cast(Int32), 4))

    def test_the_fast_entry_points(self) -> None:
        # Plain exact-int calls take the fast entry points (src/py/fast.rs,
        # fast_structs.rs): allocate(n), calloc(T, n) with T seen before,
        # to_native_utf8 of an exact str.
        rsalloc.free(rsalloc.calloc(S, 2))
        for call in (
            lambda: rsalloc.malloc.allocate(64),
            lambda: rsalloc.calloc(Int32, 8),
            lambda: rsalloc.malloc(S),
            lambda: rsalloc.calloc(S, 4),
            lambda: rsalloc.to_native_utf8("fast"),
        ):
            fails_and_changes_nothing(call)

    @pytest.mark.parametrize("a", [None, rsalloc.malloc, rsalloc.diagnostic_malloc, Pool()],
                             ids=["default", "malloc", "diagnostic", "Pool"])
    def test_strings(self, a: Any) -> None:
        fails_and_changes_nothing(lambda: rsalloc.to_native_utf8("h\u00e9llo", a))
        fails_and_changes_nothing(lambda: rsalloc.to_native_utf8("bad \udc80", a, errors="surrogateescape"))
        fails_and_changes_nothing(lambda: rsalloc.to_native_utf16("h\u00e9llo", a))

    def test_strings_from_an_arena(self) -> None:
        with rsalloc.Arena(rsalloc.malloc) as arena:
            fails_and_changes_nothing(lambda: rsalloc.to_native_utf8("x", arena))
            fails_and_changes_nothing(lambda: rsalloc.to_native_utf16("x", arena))
            assert len(arena) == 0 or arena.stats().live_count == 0


class TestAdopt:
    """An adopted address whose Pointer cannot be made goes back to the
    caller, who still owns it: no free by rsalloc, none counted."""

    @pytest.mark.parametrize("wrap", [False, True], ids=["malloc", "Arena(malloc)"])
    def test_the_address_is_the_caller_s_again(self, wrap: bool) -> None:
        addr = libc.malloc(32)
        owner: Any = rsalloc.Arena(rsalloc.malloc) if wrap else rsalloc.malloc
        fails_and_changes_nothing(lambda: owner.adopt(addr, Uint8, 32))
        # Not live in rsalloc any more: adopting it again works, and then
        # rsalloc frees it (once: a second owner would have made this a
        # double free).
        p = owner.adopt(addr, Uint8, 32)
        assert p.alive
        if wrap:
            owner.release_all()
        else:
            rsalloc.free(p)
        assert not p.alive


class TestArenas:
    def test_an_arena_over_an_allocator_frees_the_block_at_once(self) -> None:
        with rsalloc.Arena(rsalloc.malloc) as arena:
            before = counts()
            for call in (lambda: arena(Int32, 8), lambda: arena.allocate(100)):
                _fail_object_creation(1)
                with pytest.raises(MemoryError):
                    call()
                assert counts() == before
                assert arena.stats().live_count == 0
            q = arena(Int32, 2)
            _fail_object_creation(1)
            with pytest.raises(MemoryError):
                arena.clone(q)
            assert arena.stats().live_count == 1
        assert counts() == (before[0], before[1])

    @pytest.mark.parametrize("backing", [None, rsalloc.malloc, rsalloc.diagnostic_malloc, "Pool"],
                             ids=["region", "malloc", "diagnostic", "Pool"])
    def test_nothing_outlives_the_release(self, backing: Any) -> None:
        a = Pool() if backing == "Pool" else backing
        before = counts()
        with rsalloc.leak_check():
            with rsalloc.Arena(a) as arena:
                for call in (
                    lambda: arena(Int32, 8),
                    lambda: arena.allocate(64),
                    lambda: arena.allocate(1 << 16),
                    lambda: arena.realloc(arena(Int32, 2), 32),
                ):
                    _fail_object_creation(1)
                    with pytest.raises(MemoryError):
                        call()
                    _fail_object_creation(0)
        assert counts() == before
        if isinstance(a, Pool):
            assert a.held == set()

    def test_the_region_fast_path(self) -> None:
        before = counts()
        with rsalloc.Arena() as arena:
            arena.allocate(8)  # the region's handle is set: the fast entry point serves
            _fail_object_creation(1)
            with pytest.raises(MemoryError):
                arena.allocate(64)
        assert counts() == before


class TestViews:
    """A view of a block someone else answers for: its failure leaves the
    block live, counted and usable."""

    def test_a_pointer_read_back_from_memory(self) -> None:
        target = rsalloc.calloc(Int32, 4)
        slots = rsalloc.calloc(Pointer[Int32], 1)
        slots[0] = target
        before = counts()
        _fail_object_creation(1)
        with pytest.raises(MemoryError):
            slots[0]
        assert counts() == before
        assert target.alive and slots[0][3] == 0
        rsalloc.free(slots)
        rsalloc.free(target)

    def test_struct_views_and_offsets(self) -> None:
        p = rsalloc.calloc(S, 2)
        before = counts()
        for call in (lambda: p[1], lambda: p.ref, lambda: p[1:2]):
            _fail_object_creation(1)
            with pytest.raises(MemoryError):
                call()
            assert counts() == before
            assert p.alive
        _fail_object_creation(0)
        p[1].a = 5
        assert p[1].a == 5
        rsalloc.free(p)

    def test_the_hook_counts_creations(self) -> None:
        # The second creation fails, not the first: the hook is exact.
        p = rsalloc.malloc(Int32, 2)
        _fail_object_creation(2)
        q = rsalloc.malloc(Int32, 2)
        with pytest.raises(MemoryError):
            rsalloc.malloc(Int32, 2)
        rsalloc.malloc(Int32, 2).autofree()  # no failure left
        rsalloc.free(p)
        rsalloc.free(q)
