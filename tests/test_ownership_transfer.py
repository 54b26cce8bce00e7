"""adopt, detach, autofree, clone and native_free (DESIGN §3, §4)."""

from __future__ import annotations

import ctypes
import gc

import numpy as np
import pytest
from _native import LIBC, SQLITE, nothing_changes

import rsalloc
from rsalloc import ForeignAllocator, Int32, OwnershipError, Uint8, UseAfterFreeError, calloc, free, malloc

FREE_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def test_adopt_a_strdup_result_into_malloc() -> None:
    before = malloc.stats()
    addr = LIBC.strdup("grüße".encode())
    s = malloc.adopt(addr, Uint8, LIBC.strlen(addr) + 1)
    assert s.to_str() == "grüße" and s.allocator is malloc
    assert malloc.stats().live_count == before.live_count + 1
    calloc.free(s)  # one heap: either libc allocator frees it, with libc's free
    assert malloc.stats().live_count == before.live_count
    with pytest.raises(rsalloc.DoubleFreeError):
        malloc.free(s)


def test_adopt_sqlite3_mprintf_into_a_foreign_allocator() -> None:
    sq = ForeignAllocator(SQLITE.sqlite3_malloc64, SQLITE.sqlite3_free)
    addr = SQLITE.sqlite3_mprintf(b"%d rows", ctypes.c_int(3))
    s = sq.adopt(addr, Uint8, 7)
    assert s.to_str() == "3 rows"
    with nothing_changes(sq, malloc):
        with pytest.raises(OwnershipError):
            malloc.free(s)
    sq.free(s)
    assert sq.stats().live_count == 0


def test_adopt_null_and_bad_arguments_change_nothing() -> None:
    raw = LIBC.malloc(4)
    with nothing_changes(malloc):
        with pytest.raises(rsalloc.NullPointerError):
            malloc.adopt(0, Uint8, 4)
        with pytest.raises(ValueError):
            malloc.adopt(-8, Uint8, 4)
        with pytest.raises(ValueError):
            malloc.adopt(raw, Uint8, -1)
    LIBC.free(raw)  # still C's: the refused adopt took nothing


def test_detach_hands_a_block_to_c_which_frees_it() -> None:
    before = malloc.stats()
    p = malloc(Int32, 4)
    p[:] = [1, 2, 3, 4]
    addr = p.detach()
    assert addr == p.address
    after = malloc.stats()
    assert after.live_count == before.live_count and after.live_bytes == before.live_bytes
    assert p.alive and p.allocator is None and p[3] == 4  # still a view until C frees it
    with nothing_changes(malloc):
        with pytest.raises(OwnershipError, match="detached"):
            malloc.free(p)
        with pytest.raises(OwnershipError):
            p.detach()
    LIBC.free(addr)  # C's free, as the receiving C code would


def test_native_free_frees_a_detached_block_through_a_function_pointer() -> None:
    assert malloc.native_free == calloc.native_free == ctypes.cast(LIBC.free, ctypes.c_void_p).value
    c_free = FREE_FN(malloc.native_free)
    p = calloc(Uint8, 64)
    c_free(p.detach())
    sq = ForeignAllocator(SQLITE.sqlite3_malloc64, SQLITE.sqlite3_free)
    q = sq(Uint8, 32)
    FREE_FN(sq.native_free)(q.detach())  # sqlite3_free
    assert ForeignAllocator(lambda n: 0, lambda a: None).native_free is None


def test_native_free_as_a_destructor_for_a_c_api() -> None:
    # sqlite3_result/bind calls take a destructor; sqlite3_bind_blob with
    # malloc.native_free hands the block to SQLite, which frees it.
    db = ctypes.c_void_p()
    assert SQLITE.sqlite3_open(b":memory:", ctypes.byref(db)) == 0
    stmt = ctypes.c_void_p()
    assert SQLITE.sqlite3_prepare_v2(db, b"SELECT length(?)", -1, ctypes.byref(stmt), None) == 0
    blob = malloc(Uint8, 5)
    blob.write_bytes(b"12345")
    SQLITE.sqlite3_bind_blob.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    before = malloc.stats().live_count
    rc = SQLITE.sqlite3_bind_blob(stmt, 1, blob.detach(), 5, malloc.native_free)
    assert rc == 0 and malloc.stats().live_count == before - 1
    assert SQLITE.sqlite3_step(stmt) == 100  # SQLITE_ROW
    assert SQLITE.sqlite3_column_int(stmt, 0) == 5
    SQLITE.sqlite3_finalize(stmt)  # SQLite calls free() on the blob
    SQLITE.sqlite3_close(db)


def test_autofree_frees_when_the_last_reference_goes() -> None:
    before = malloc.stats()
    p = malloc(Int32, 8).autofree()
    view = p + 2
    del p
    assert malloc.stats().live_count == before.live_count + 1  # the view keeps it
    del view
    assert malloc.stats().live_count == before.live_count
    assert malloc.stats().total_frees == before.total_frees + 1


def test_autofree_waits_for_a_memoryview_that_outlives_the_pointer() -> None:
    before = malloc.stats().live_count
    p = malloc(Uint8, 4).autofree()
    p.write_bytes(b"abcd")
    mv = memoryview(p)
    arr = np.asarray(p.cast(Uint8))
    del p
    gc.collect()
    assert malloc.stats().live_count == before + 1
    assert bytes(mv) == b"abcd"
    mv.release()
    del mv
    assert arr.tobytes() == b"abcd"  # numpy's export still pins it
    del arr
    gc.collect()
    assert malloc.stats().live_count == before


def test_autofree_in_a_reference_cycle_is_freed_by_gc() -> None:
    before = malloc.stats().live_count

    class Holder:
        pass

    h = Holder()
    h.me = h  # type: ignore[attr-defined]
    h.p = malloc(Int32).autofree()  # type: ignore[attr-defined]
    del h
    gc.collect()
    assert malloc.stats().live_count == before


def test_autofree_survives_realloc_and_still_allows_an_explicit_free() -> None:
    before = malloc.stats().live_count
    p = malloc(Int32, 2).autofree()
    q = malloc.realloc(p, 64)
    del p, q
    assert malloc.stats().live_count == before
    r = calloc(Int32).autofree()
    free(r)  # freeing early is fine; dropping it later frees nothing twice
    del r
    assert malloc.stats().live_count == before


def test_autofree_and_detach_of_foreign_or_dead_views_are_errors() -> None:
    p = malloc(Int32)
    raw = ctypes.create_string_buffer(4)  # foreign memory: an unowned view
    view = rsalloc.Pointer.from_address(ctypes.addressof(raw), Int32)
    with nothing_changes(malloc):
        with pytest.raises(OwnershipError):
            view.autofree()
        with pytest.raises(OwnershipError):
            view.detach()
        with pytest.raises(OwnershipError):
            (p + 1).detach()
    free(p)
    with nothing_changes(malloc):
        with pytest.raises(UseAfterFreeError):
            p.autofree()
        with pytest.raises(UseAfterFreeError):
            p.detach()


def test_clone_copies_into_another_owner() -> None:
    sq = ForeignAllocator(SQLITE.sqlite3_malloc64, SQLITE.sqlite3_free)
    src = malloc(Int32, 3)
    src[:] = [7, 8, 9]
    c = sq.clone(src)
    assert c.allocator is sq and c.type is Int32 and c[:] == [7, 8, 9] and c.address != src.address
    src[0] = 0
    assert c[0] == 7
    tail = malloc.clone(src + 1)  # a view's bytes only
    assert tail[:] == [8, 9]
    foreign = malloc.clone(rsalloc.Pointer.from_address(src.address, Int32, 3))
    assert foreign[:] == [0, 8, 9]
    free(src)
    with nothing_changes(malloc, sq):
        with pytest.raises(UseAfterFreeError):
            malloc.clone(src)
        raw = ctypes.create_string_buffer(4)
        with pytest.raises(TypeError):
            malloc.clone(rsalloc.Pointer.from_address(ctypes.addressof(raw), Int32))  # unknown length
    for x in (c, tail, foreign):
        free(x)
