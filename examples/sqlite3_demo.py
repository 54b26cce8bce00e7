"""The sqlite3 C API through ctypes, with every buffer from rsalloc.

Shows: a UTF-8 path for sqlite3_open_v2, `sqlite3**` and `sqlite3_stmt**`
out-parameters as Pointer[Void] slots, a blob bound from rsalloc memory,
a column blob read through Pointer.from_address, memory that SQLite
allocated adopted by a ForeignAllocator over sqlite3_malloc64/sqlite3_free,
sqlite3_close registered with arena.using, and the counters at the end.

Run: python examples/sqlite3_demo.py
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import tempfile

import rsalloc
from rsalloc import ForeignAllocator, Pointer, Uint8, Void, calloc, free, malloc, to_native_utf8

SQLITE_OK, SQLITE_ROW, SQLITE_DONE = 0, 100, 101
SQLITE_OPEN_READWRITE, SQLITE_OPEN_CREATE = 0x2, 0x4
SQLITE_TRANSIENT = ctypes.c_void_p(-1)  # SQLite copies the bound bytes

vp, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64


def load_sqlite() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
    # Pointer arguments are c_void_p: an rsalloc Pointer passes as itself
    # (its _as_parameter_).
    sigs = {
        "sqlite3_open_v2": (i32, [vp, vp, i32, vp]),
        "sqlite3_close": (i32, [vp]),
        "sqlite3_errmsg": (vp, [vp]),
        "sqlite3_exec": (i32, [vp, vp, vp, vp, vp]),
        "sqlite3_prepare_v2": (i32, [vp, vp, i32, vp, vp]),
        "sqlite3_bind_blob64": (i32, [vp, i32, vp, ctypes.c_uint64, vp]),
        "sqlite3_bind_text": (i32, [vp, i32, vp, i32, vp]),
        "sqlite3_step": (i32, [vp]),
        "sqlite3_reset": (i32, [vp]),
        "sqlite3_finalize": (i32, [vp]),
        "sqlite3_column_blob": (vp, [vp, i32]),
        "sqlite3_column_bytes": (i32, [vp, i32]),
        "sqlite3_column_text": (vp, [vp, i32]),
        "sqlite3_expanded_sql": (vp, [vp]),
        "sqlite3_malloc64": (vp, [ctypes.c_uint64]),
        "sqlite3_free": (None, [vp]),
        "sqlite3_libversion": (ctypes.c_char_p, []),
    }
    for name, (restype, argtypes) in sigs.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = restype, argtypes
    return lib


sqlite = load_sqlite()
# Memory that SQLite allocates and frees: one owner, its C functions called natively.
sqlite_heap = ForeignAllocator(sqlite.sqlite3_malloc64, sqlite.sqlite3_free)


def check(db: int | None, rc: int, what: str) -> None:
    if rc not in (SQLITE_OK, SQLITE_ROW, SQLITE_DONE):
        message = Pointer.from_address(sqlite.sqlite3_errmsg(db), Uint8).to_str() if db else ""
        raise RuntimeError(f"{what}: error {rc} {message}")


def open_database(path: str) -> int:
    """sqlite3_open_v2(const char *path, sqlite3 **db, ...): the handle arrives in a slot."""
    c_path = to_native_utf8(path)
    slot = calloc(Pointer[Void])  # a sqlite3* slot; &slot is the sqlite3**
    try:
        rc = sqlite.sqlite3_open_v2(c_path, slot, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, None)
        db = slot[0].address
        check(db, rc, "open")
        return db
    finally:
        free(slot)
        free(c_path)


def prepare(db: int, sql: str) -> int:
    c_sql = to_native_utf8(sql)
    slot = calloc(Pointer[Void])  # sqlite3_stmt**
    try:
        check(db, sqlite.sqlite3_prepare_v2(db, c_sql, -1, slot, None), f"prepare {sql!r}")
        return slot[0].address
    finally:
        free(slot)
        free(c_sql)


def run(db: int) -> None:
    sql = to_native_utf8("CREATE TABLE files (name TEXT, data BLOB)")
    check(db, sqlite.sqlite3_exec(db, sql, None, None, None), "create")
    free(sql)

    insert = prepare(db, "INSERT INTO files VALUES (?, ?)")
    try:
        for name, size in (("grüße.bin", 16), ("zeros.bin", 4)):
            blob = malloc(Uint8, size)
            blob.write_bytes(bytes(range(size)) if size == 16 else bytes(size))
            text = to_native_utf8(name)
            check(db, sqlite.sqlite3_bind_text(insert, 1, text, len(text) - 1, SQLITE_TRANSIENT), "bind")
            check(db, sqlite.sqlite3_bind_blob64(insert, 2, blob, blob.nbytes, SQLITE_TRANSIENT), "bind")
            if size == 16:
                # sqlite3_expanded_sql returns memory the caller frees with sqlite3_free.
                addr = sqlite.sqlite3_expanded_sql(insert)
                expanded = sqlite_heap.adopt(addr, Uint8, len(ctypes.string_at(addr)) + 1)
                print("bound:", expanded.to_str()[:60], "...")
                sqlite_heap.free(expanded)
            check(db, sqlite.sqlite3_step(insert), "insert")
            sqlite.sqlite3_reset(insert)
            free(text)
            free(blob)  # SQLITE_TRANSIENT: SQLite took a copy
    finally:
        sqlite.sqlite3_finalize(insert)

    select = prepare(db, "SELECT name, data FROM files ORDER BY name")
    try:
        while sqlite.sqlite3_step(select) == SQLITE_ROW:
            name = Pointer.from_address(sqlite.sqlite3_column_text(select, 0), Uint8).to_str()
            # The column blob is SQLite's memory: an unowned view with its length.
            n = sqlite.sqlite3_column_bytes(select, 1)
            data = Pointer.from_address(sqlite.sqlite3_column_blob(select, 1), Uint8, n)
            print(f"row: {name:10} {n:2} bytes  sum={sum(data)}  first={data[:4]}")
    finally:
        sqlite.sqlite3_finalize(select)


def main() -> None:
    print("SQLite", sqlite.sqlite3_libversion().decode())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "données.db")  # a UTF-8 path
        # The arena closes the database when the block ends, even on an error,
        # after freeing nothing else: run() frees its own temporaries.
        with rsalloc.Arena() as arena:
            db = arena.using(open_database(path), sqlite.sqlite3_close)
            run(db)
        print("database file:", os.path.basename(path), os.path.getsize(path), "bytes")
    s = rsalloc.stats()
    print(f"rsalloc: {s.total_allocs} allocations, {s.total_frees} frees, {s.live_count} live")
    assert s.live_count == 0, "leaked native memory"


if __name__ == "__main__":
    main()
