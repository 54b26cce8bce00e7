"""Python-defined allocators and ForeignAllocator (DESIGN §4)."""

from __future__ import annotations

import ctypes
import gc
import threading
import weakref

import pytest
from _native import LIBC, SQLITE, nothing_changes

import rsalloc
from rsalloc import (
    Allocator,
    DoubleFreeError,
    ForeignAllocator,
    Int32,
    Int64,
    OwnershipError,
    Uint8,
    UseAfterFreeError,
    calloc,
    free,
    malloc,
    nullptr,
)


class Pool(Allocator):
    """Logs every call and backs blocks with libc."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, int, int]] = []
        self.live: set[int] = set()

    def _raw_alloc(self, nbytes: int, alignment: int) -> int:
        addr = LIBC.malloc(nbytes) or 0
        self.log.append(("alloc", nbytes, alignment))
        self.live.add(addr)
        return addr

    def _raw_free(self, address: int) -> None:
        self.log.append(("free", address, 0))
        self.live.remove(address)
        LIBC.free(address)


class ZeroPool(Pool):
    zeroed = True

    def _raw_alloc(self, nbytes: int, alignment: int) -> int:
        addr = super()._raw_alloc(nbytes, alignment)
        ctypes.memset(addr, 0xAB, nbytes)  # dirty on purpose: zeroing is rsalloc's job
        return addr


def test_subclass_allocates_frees_and_counts() -> None:
    pool = Pool()
    p = pool(Int32, 4)
    assert pool.log == [("alloc", 16, 4)]
    assert p.allocator is pool and p.alive and repr(p).count("Pool") == 1
    p[:] = [1, 2, 3, 4]
    s = pool.stats()
    assert (s.live_count, s.live_bytes, s.total_allocs) == (1, 16, 1)
    pool.free(p)
    assert pool.log[-1] == ("free", p.address, 0) and not pool.live
    s = pool.stats()
    assert (s.live_count, s.live_bytes, s.total_frees) == (0, 0, 1)
    assert not pool.zeroed


def test_every_check_applies() -> None:
    pool, other = Pool(), Pool()
    p = pool(Int64, 2)
    with nothing_changes(pool, other, malloc, pointers=(p,)):
        with pytest.raises(OwnershipError):
            other.free(p)
        with pytest.raises(OwnershipError):
            malloc.free(p)
        with pytest.raises(OwnershipError):
            pool.free(p + 1)
        with pytest.raises(OwnershipError):  # resolved to p's block: its interior
            pool.free(rsalloc.Pointer.from_address(p.address + 1, Int64))
    m = malloc(Int64)
    with nothing_changes(pool, malloc):
        with pytest.raises(OwnershipError):
            pool.free(m)
    free(m)
    free(p)  # rsalloc.free goes through the owner
    assert not pool.live
    with nothing_changes(pool):
        with pytest.raises(DoubleFreeError):
            pool.free(p)
        with pytest.raises(UseAfterFreeError):
            p[0]
    pool.free(nullptr)
    assert len(pool.log) == 2


def test_alignment_zero_sizes_and_zeroing() -> None:
    pool = ZeroPool()
    p = pool(Uint8, 0)
    assert pool.log[-1] == ("alloc", 1, 1)  # never asked for 0 bytes
    assert p.count == 0 and p.address != 0
    q = pool(Int32, 8)
    assert q[:] == [0] * 8 and pool.zeroed
    r = pool.allocate(24, alignment=8)
    assert pool.log[-1] == ("alloc", 24, 8)
    big = pool.realloc(q, 16)  # alloc + copy + free, new tail zeroed
    assert big[:] == [0] * 16 and not q.alive
    with pytest.raises(ValueError):
        pool(Int32, 1, alignment=3)
    for x in (p, r, big):
        pool.free(x)
    assert not pool.live


def test_realloc_clone_adopt() -> None:
    pool = Pool()
    p = pool(Int32, 2)
    p[:] = [5, 6]
    q = pool.realloc(p, 4)
    assert q[:2] == [5, 6] and not p.alive
    assert [e[0] for e in pool.log] == ["alloc", "alloc", "free"]
    c = malloc.clone(q)
    assert c.allocator is malloc and c[:2] == [5, 6]
    d = pool.clone(c)
    assert d.allocator is pool and d[:2] == [5, 6]
    raw = LIBC.malloc(8)
    pool.live.add(raw)
    a = pool.adopt(raw, Int64, 1)
    assert a.allocator is pool and pool.stats().live_count == 3
    for x in (q, d, a):
        pool.free(x)
    free(c)
    assert not pool.live


def test_exceptions_from_raw_alloc_and_raw_free_propagate() -> None:
    class Failing(Pool):
        fail_alloc = False
        fail_free = False

        def _raw_alloc(self, nbytes: int, alignment: int) -> int:
            if self.fail_alloc:
                raise RuntimeError("pool exhausted")
            return super()._raw_alloc(nbytes, alignment)

        def _raw_free(self, address: int) -> None:
            super()._raw_free(address)
            if self.fail_free:
                raise KeyError("audit failed")

    f = Failing()
    p = f(Int32)
    f.fail_alloc = True
    with nothing_changes(f):
        with pytest.raises(RuntimeError, match="pool exhausted"):
            f(Int32)
    f.fail_free = True
    with pytest.raises(KeyError, match="audit failed"):
        f.free(p)
    assert not p.alive and f.stats().live_count == 0  # rsalloc gave the block back regardless
    f.fail_alloc = f.fail_free = False
    q = f(Int32)
    f.fail_free = True
    with pytest.raises(KeyError):
        free(q)


def test_out_of_memory_is_memory_error() -> None:
    class Empty(Allocator):
        def _raw_alloc(self, nbytes: int, alignment: int) -> int:
            return 0

        def _raw_free(self, address: int) -> None:
            raise AssertionError("never called")

    e = Empty()
    with nothing_changes(e):
        with pytest.raises(MemoryError):
            e(Int32)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (-16, ValueError, "not the address"),
        (2**80, ValueError, "not the address"),
        (2**63 - 4, ValueError, "not the address"),
        ("0x1000", TypeError, "must return an int"),
        (4096.0, TypeError, "must return an int"),
    ],
)
def test_bad_addresses_are_clear_errors(value: object, error: type[Exception], match: str) -> None:
    class Liar(Allocator):
        def _raw_alloc(self, nbytes: int, alignment: int) -> object:
            return value

        def _raw_free(self, address: int) -> None:
            raise AssertionError("never called")

    liar = Liar()
    with nothing_changes(liar):
        with pytest.raises(error, match=match):
            liar(Int64, 2)


def test_misaligned_block_is_given_back_and_refused() -> None:
    class Odd(Pool):
        def _raw_alloc(self, nbytes: int, alignment: int) -> int:
            return super()._raw_alloc(nbytes + 1, alignment) + 1

        def _raw_free(self, address: int) -> None:
            super()._raw_free(address - 1)

    odd = Odd()
    with nothing_changes(odd):
        with pytest.raises(ValueError, match="not aligned to 8"):
            odd(Int64)
    assert not odd.live  # _raw_free took it back
    p = odd(Uint8, 3)  # byte alignment: any address will do
    odd.free(p)


def test_construction_errors() -> None:
    with pytest.raises(TypeError, match="subclass it"):
        Allocator()

    class Half(Allocator):
        def _raw_alloc(self, nbytes: int, alignment: int) -> int:
            return 0

    with pytest.raises(TypeError, match="_raw_free"):
        Half()

    class NoSuper(Pool):
        def __init__(self) -> None:  # forgets super().__init__()
            self.log = []

    with pytest.raises(TypeError, match=r"super\(\).__init__"):
        NoSuper()(Int32)


def test_dropped_allocator_with_no_blocks_is_collected() -> None:
    pool = Pool()
    p = pool(Int32)
    pool.free(p)
    ref = weakref.ref(pool)
    del pool, p
    gc.collect()
    assert ref() is None


def test_live_blocks_keep_the_allocator_until_freed() -> None:
    pool = Pool()
    live = pool.live
    p = pool(Int32, 4)
    q = pool(Int32).autofree()
    ref = weakref.ref(pool)
    del pool
    gc.collect()
    assert ref() is not None  # p and q still need its _raw_free
    free(p)  # a late free still reaches _raw_free
    del q  # and so does an autofree block
    assert not live
    del p  # even a dead Pointer holds its record, and so the allocator
    gc.collect()
    assert ref() is None


def test_subclass_is_thread_safe_and_counts_exactly() -> None:
    pool = Pool()

    def work() -> None:
        for _ in range(300):
            pool.free(pool(Int32, 3))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = pool.stats()
    assert (s.live_count, s.total_allocs, s.total_frees) == (0, 1200, 1200)
    assert not pool.live


# ForeignAllocator ----------------------------------------------------------


def sqlite_allocator(**kw: object) -> ForeignAllocator:
    return ForeignAllocator(SQLITE.sqlite3_malloc64, SQLITE.sqlite3_free, **kw)  # type: ignore[arg-type]


def test_foreign_allocator_over_sqlite3_c_functions() -> None:
    sq = sqlite_allocator()
    assert isinstance(sq, Allocator) and sq.name == "sqlite3_malloc64"
    assert sq.native_free == ctypes.cast(SQLITE.sqlite3_free, ctypes.c_void_p).value
    p = sq(Int32, 10)
    assert p.allocator is sq
    assert SQLITE.sqlite3_msize(p.address) >= 40  # sqlite3's own heap gave it
    p[:] = list(range(10))
    q = sq.realloc(p, 20)
    assert q[:10] == list(range(10)) and not p.alive
    with nothing_changes(sq, malloc, pointers=(q,)):
        with pytest.raises(OwnershipError):
            malloc.free(q)
        with pytest.raises(OwnershipError):
            sqlite_allocator().free(q)  # each ForeignAllocator is an owner of its own
    sq.free(q)
    with pytest.raises(DoubleFreeError):
        sq.free(q)
    s = sq.stats()
    assert (s.live_count, s.total_allocs, s.total_frees) == (0, 2, 2)


def test_foreign_allocator_is_called_natively() -> None:
    # A C function that is a ctypes callback still runs; a plain C function
    # never goes through Python (no restype is needed for the native path).
    calls: list[int] = []
    proto_alloc = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t)
    proto_free = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

    @proto_alloc
    def c_alloc(n: int) -> int:
        calls.append(n)
        return LIBC.malloc(n) or 0

    @proto_free
    def c_free(addr: int) -> None:
        calls.append(-1)
        LIBC.free(addr)

    fa = ForeignAllocator(c_alloc, c_free, zeroed=True)
    del c_alloc, c_free  # the allocator keeps the thunks alive
    gc.collect()
    p = fa(Int64, 3)
    assert p[:] == [0, 0, 0] and calls == [24]
    fa.free(p)
    assert calls == [24, -1]
    raw = ctypes.CDLL(None)  # functions with default (int) restype: unused natively
    na = ForeignAllocator(raw.malloc, raw.free)
    q = na(Int64, 4)
    probe = LIBC.malloc(8)  # where this process's heap lives (valgrind puts it low)
    if probe > 0xFFFFFFFF:
        assert q.address > 0xFFFFFFFF  # an int restype would have cut a heap address
    LIBC.free(probe)
    q[:] = [1, 2, 3, 4]
    assert q[:] == [1, 2, 3, 4]
    na.free(q)


def test_foreign_allocator_respects_a_narrow_size_parameter() -> None:
    narrow = ctypes.CDLL(None).malloc
    narrow.argtypes = [ctypes.c_int]  # like sqlite3_malloc(int)
    narrow.restype = ctypes.c_void_p
    fa = ForeignAllocator(narrow, LIBC.free)
    with nothing_changes(fa):
        with pytest.raises(MemoryError):
            fa.allocate(2**31)  # would be truncated by an int parameter
    fa.free(fa.allocate(16))


def test_foreign_allocator_over_python_callables() -> None:
    live: set[int] = set()

    def alloc(n: int) -> int:
        a = LIBC.malloc(n) or 0
        live.add(a)
        return a

    def release(a: int) -> None:
        live.remove(a)
        LIBC.free(a)

    fa = ForeignAllocator(alloc, release, zeroed=True, name="tracked")
    assert fa.native_free is None and fa.name == "tracked" and fa.zeroed
    p = fa(Int32, 4)
    assert p[:] == [0] * 4 and live == {p.address}
    fa.free(p)
    assert not live


def test_foreign_allocator_argument_errors() -> None:
    with pytest.raises(TypeError, match="not one of each"):
        ForeignAllocator(SQLITE.sqlite3_malloc64, lambda a: None)
    with pytest.raises(TypeError):
        ForeignAllocator("malloc", "free")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ForeignAllocator(-1, 5)


def test_foreign_allocator_adopts_a_sqlite3_mprintf_result() -> None:
    sq = sqlite_allocator()
    addr = SQLITE.sqlite3_mprintf(b"%s=%d", b"answer", ctypes.c_int(42))
    s = sq.adopt(addr, Uint8, 10)
    assert s.to_str() == "answer=42"
    assert sq.stats().live_count == 1
    with pytest.raises(OwnershipError):
        malloc.free(s)
    sq.free(s)  # through sqlite3_free
    assert sq.stats().live_count == 0


def test_foreign_allocator_collected_when_unused() -> None:
    fa = ForeignAllocator(lambda n: LIBC.malloc(n) or 0, lambda a: LIBC.free(a))
    ref = weakref.ref(fa)
    fa.free(fa(Int32))
    del fa
    gc.collect()
    assert ref() is None


def test_calloc_string_into_custom_allocator() -> None:
    pool = Pool()
    s = rsalloc.to_native_utf8("héllo", pool)
    assert s.allocator is pool and s.to_str() == "héllo"
    pool.free(s)
    assert calloc.zeroed and not malloc.zeroed


def test_arena_over_a_python_defined_allocator() -> None:
    pool = Pool()
    with rsalloc.Arena(pool) as arena:
        p = arena(Int32, 8)
        q = arena.allocate(100)
        assert p.allocator is arena
        assert pool.stats().live_count == 2  # the backing allocator shows the arena's blocks
        with pytest.raises(rsalloc.OwnershipError):
            pool.free(p)
        kept = arena.detach(q)
        assert kept.allocator is pool
    assert not p.alive and kept.alive
    assert [e[0] for e in pool.log].count("free") == 1  # the arena freed p through the pool
    assert pool.stats().live_count == 1
    pool.free(kept)
    assert pool.live == set()


def test_arena_over_a_foreign_allocator_of_sqlite3() -> None:
    sq = rsalloc.ForeignAllocator(SQLITE.sqlite3_malloc64, SQLITE.sqlite3_free)
    with rsalloc.Arena(sq) as arena:
        blocks = [arena.allocate(n) for n in (1, 64, 4096)]
        assert [SQLITE.sqlite3_msize(b.address) >= b.nbytes for b in blocks] == [True] * 3
        assert sq.stats().live_count == 3
    assert sq.stats().live_count == 0 and not any(b.alive for b in blocks)


def test_python_defined_and_foreign_allocators_are_tracked() -> None:
    from rsalloc import tracking

    pool = Pool()
    sq = rsalloc.ForeignAllocator(SQLITE.sqlite3_malloc64, SQLITE.sqlite3_free, name="sqlite3")
    tracking.enable(frames=2)
    try:
        p = pool(Int32, 3)
        q = sq.allocate(10)
        mine = {r.address: r for r in rsalloc.leaks()}
        assert (mine[p.address].allocator, mine[p.address].type, mine[p.address].size) == (pool.name, "Int32", 12)
        assert (mine[q.address].allocator, mine[q.address].size) == ("sqlite3", 10)
        assert mine[q.address].traceback[0][0].endswith("test_custom_allocators.py")
        pool.free(p)
        sq.free(q)
        live = {r.address for r in rsalloc.leaks()}
        assert p.address not in live and q.address not in live
        with pytest.raises(rsalloc.DoubleFreeError, match="freed at .*test_custom_allocators.py"):
            pool.free(p)
    finally:
        tracking.disable()


def test_pointer_allocator_follows_its_objects_lifetime_not_its_cores() -> None:
    # The binding remembers an allocator's (or an arena's) object beside
    # the core, by the core's address: a block outliving its owner's object
    # answers None, and the objects made after it never answer for it.
    limited = malloc.limited(1 << 20)
    foreign = ForeignAllocator(LIBC.malloc, LIBC.free)
    p, q = limited.allocate(8), foreign.allocate(8)
    assert p.allocator is limited and q.allocator is foreign
    del limited, foreign
    gc.collect()
    assert p.allocator is None and q.allocator is None
    others = [malloc.limited(64) for _ in range(10)] + [rsalloc.Arena(malloc) for _ in range(10)]
    others += [rsalloc.Arena() for _ in range(10)] + [Pool() for _ in range(10)]
    made = [o.allocate(8) for o in others]
    assert all(x.allocator is o for x, o in zip(made, others))
    assert p.allocator is None and q.allocator is None
    for o in others[10:30]:
        o.release_all()
    for x in made[:10] + made[30:] + [q, p]:
        rsalloc.free(x)
