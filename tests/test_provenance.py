"""Addresses read back from memory keep their provenance (DESIGN §3a, §4):
real C data structures, one per pattern, through real libc (and GMP when
present)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import socket
import subprocess
import sys
import textwrap
import threading
import weakref
from typing import Any

import pytest

import rsalloc
from rsalloc import (
    Arena,
    DoubleFreeError,
    ForeignAllocator,
    Int32,
    Int64,
    OwnershipError,
    Pointer,
    Uint8,
    UseAfterFreeError,
    calloc,
    free,
    malloc,
    to_native_utf8,
)

from conftest import LIBC


def block_cache_on() -> bool:
    return rsalloc._rsalloc._block_cache(False)[0]


# --- a struct of char* (the seed's AuthInfo) ----------------------------------


class AuthInfo(ctypes.Structure):
    _fields_ = [("appKey", ctypes.c_void_p), ("accid", ctypes.c_void_p), ("token", ctypes.c_void_p)]


def test_struct_of_c_strings_frees_its_fields_the_dart_way() -> None:
    before = malloc.stats().live_count
    info = calloc(AuthInfo)
    ref = info.ref
    # The Pointers to_native_utf8 returns are dropped at once: only the
    # addresses in the struct remain.
    ref.appKey = to_native_utf8("45c6").address
    ref.accid = to_native_utf8("user-1").address
    ref.token = to_native_utf8("t0k3n").address
    fields = [Pointer.from_address(getattr(ref, f), Uint8) for f, _ in AuthInfo._fields_]
    assert [f.to_str() for f in fields] == ["45c6", "user-1", "t0k3n"]
    assert [f.count for f in fields] == [5, 7, 6]  # bounded by each block
    assert all(f.allocator is malloc and f.alive for f in fields)
    with pytest.raises(IndexError):
        fields[0][5]
    for f, _ in AuthInfo._fields_:
        free(Pointer.from_address(getattr(ref, f), Uint8))  # free(info.ref.appKey)
    assert not any(f.alive for f in fields)
    with pytest.raises(UseAfterFreeError):
        fields[1].to_str()
    del ref
    free(info)
    assert malloc.stats().live_count == before


# --- a char** array ---------------------------------------------------------------


def test_char_star_star_array_of_native_strings() -> None:
    before = malloc.stats().live_count
    words = ["alpha", "beta", "", "δέλτα"]
    arr = calloc(Pointer[Uint8], len(words))
    for i, w in enumerate(words):
        arr[i] = to_native_utf8(w)
    assert [arr[i].to_str() for i in range(len(words))] == words
    assert arr[3].count == len("δέλτα".encode()) + 1
    # An interior address resolves to the same block, not freeable.
    inner = Pointer.from_address(arr[0].address + 2, Uint8)
    assert inner.to_str() == "pha" and inner.count == 4
    with pytest.raises(OwnershipError):
        free(inner)
    kept = arr[1]
    for i in range(len(words)):
        free(arr[i])  # free(arr[i])
    assert not kept.alive and not inner.alive
    with pytest.raises(UseAfterFreeError):
        kept.to_str()
    with pytest.raises(DoubleFreeError):
        free(kept)
    free(arr)
    assert malloc.stats().live_count == before


def test_read_back_after_free_is_a_use_after_free_not_stale_bytes() -> None:
    arr = calloc(Pointer[Uint8], 1)
    arr[0] = to_native_utf8("secret")
    free(arr[0])
    if block_cache_on():
        # The freed block's start, read back before rsalloc hands it out again.
        stale = arr[0]
        assert not stale.alive
        with pytest.raises(UseAfterFreeError):
            stale.to_str()
        with pytest.raises(DoubleFreeError):
            free(arr[0])
    free(arr)


@pytest.mark.skipif(not block_cache_on(), reason="freed memory goes back to libc at once with the block cache off")
@pytest.mark.parametrize("n, size", [(32, None), (64, 200), (8, 100_000)])
def test_every_freed_block_of_a_pointer_array_reads_back_dead(n: int, size: int | None) -> None:
    # The seed's char** freed string by string (or blocks of one size, or
    # large ones), then every slot read back: none returns stale bytes.
    arr = calloc(Pointer[Uint8], n)
    for i in range(n):
        arr[i] = to_native_utf8(f"string {i}") if size is None else malloc(Uint8, size)
    for i in range(n):
        free(arr[i])
    for i in range(n):
        stale = arr[i]
        assert not stale.alive, i
        with pytest.raises(UseAfterFreeError):
            stale[0]
    free(arr)


@pytest.mark.skipif(not block_cache_on(), reason="freed memory goes back to libc at once with the block cache off")
def test_blocks_of_a_released_arena_over_malloc_read_back_dead() -> None:
    slots = calloc(Pointer[Uint8], 2)
    a = Arena(malloc)
    with a:
        slots[0] = a(Uint8, 16)
        slots[1] = to_native_utf8("scratch", allocator=a)
    for i in range(2):
        with pytest.raises(UseAfterFreeError, match="released with its arena"):
            slots[i][0]
    # The records kept for read-back hold no reference to the arena object.
    gone = weakref.ref(a)
    del a
    gc.collect()
    assert gone() is None
    free(slots)


@pytest.mark.skipif(not block_cache_on(), reason="a closed arena's first chunk goes back to libc at once with the block cache off")
def test_blocks_of_a_released_bump_arena_read_back_dead() -> None:
    slots = calloc(Pointer[Uint8], 3)
    with Arena() as a:
        slots[0] = to_native_utf8("scratch", a)
        slots[1] = a(Uint8, 16)
        slots[2] = slots[1] + 5  # an interior address
    # The arena's first chunk is kept for the next arena, its bytes zeroed:
    # read back, its blocks are dead, not views of zeros.
    for i in range(3):
        stale = slots[i]
        assert not stale.alive and stale.allocator is a, i
        with pytest.raises(UseAfterFreeError, match="released with its arena"):
            stale[0]
        with pytest.raises(DoubleFreeError):
            free(stale)
    assert slots[2].count == 11, "bounded by the released block"
    free(slots)


def test_an_open_arena_s_released_blocks_read_back_dead_until_handed_out_again() -> None:
    slots = calloc(Pointer[Uint8], 2)
    with Arena() as a:
        slots[0] = a(Uint8, 16)
        slots[1] = a(Uint8, 16)
        first, second = slots[0].address, slots[1].address
        a.release_all(reuse=True)  # the bump chunk stays, for the next blocks
        assert not slots[0].alive and not slots[1].alive
        fresh = a(Uint8, 16)
        assert fresh.address == first
        again = slots[0]
        assert again.alive and again.allocator is a and again.count == 16
        again[3] = 7
        assert fresh[3] == 7, "a view of the block handed out again"
        assert slots[1].address == second and not slots[1].alive, "not handed out again yet"
        with pytest.raises(UseAfterFreeError):
            slots[1].to_str()
    free(slots)


@pytest.mark.skipif(not block_cache_on(), reason="a closed arena's first chunk goes back to libc at once with the block cache off")
def test_a_kept_chunk_taken_by_a_new_arena_reads_back_its_own_blocks_live_and_the_rest_dead() -> None:
    # Four closed arenas hold their first chunks for their reopening (the
    # most there may be): the next release keeps its chunk for any region.
    holding = [Arena() for _ in range(4)]
    for h in holding:
        with h:
            h(Uint8, 1)
    held_on = rsalloc._rsalloc._fast_paths()["arena_finalizer"]["active"]
    assert rsalloc._rsalloc._held_chunks() == (4 if held_on else 0)
    slots = calloc(Pointer[Uint8], 2)
    with Arena() as old:
        slots[0] = old(Uint8, 24)
        slots[1] = old(Uint8, 24)
    with Arena() as new:
        b = new(Uint8, 24)
        assert b.address == slots[0].address, "the kept first chunk"
        live = slots[0]
        assert live.alive and live.allocator is new
        stale = slots[1]
        assert not stale.alive, "not a view of the new arena's free bytes"
        with pytest.raises(UseAfterFreeError):
            stale[0]
        b2 = new(Uint8, 24)
        assert b2.address == stale.address and slots[1].alive and slots[1].allocator is new
    assert not slots[0].alive and not slots[1].alive
    free(slots)
    del holding


def test_a_released_block_pinned_by_an_export_reads_back_dead() -> None:
    slots = calloc(Pointer[Uint8], 1)
    with Arena() as a:
        big = a(Uint8, 100_000)  # a chunk of its own, never kept
        slots[0] = big + 10
        m = memoryview(big)
    stale = slots[0]
    assert not stale.alive and stale.count == 100_000 - 10
    with pytest.raises(UseAfterFreeError):
        stale[0]
    m.release()  # the parked chunk goes back to libc: forgotten
    assert slots[0].allocator is None
    free(slots)


def test_read_back_dead_pointer_names_both_sites_with_tracking() -> None:
    code = textwrap.dedent(
        """
        import rsalloc
        from rsalloc import Pointer, Uint8, calloc, free, to_native_utf8
        rsalloc.tracking.enable(frames=4)
        arr = calloc(Pointer[Uint8], 1)
        arr[0] = to_native_utf8("x")   # ALLOC-SITE
        free(arr[0])                   # FREE-SITE
        try:
            arr[0].to_str()
        except rsalloc.UseAfterFreeError as e:
            print("UAF", e)
        except UnicodeDecodeError:
            # The cache off (PYTHONMALLOC=malloc): libc has the memory and
            # rsalloc forgot it (docs/safety.md); the bytes are libc's now.
            print("forgotten")
        free(arr)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    if block_cache_on():  # as in the child, by the same environment
        assert "allocated at <string>:6" in out.stdout and "freed at <string>:7" in out.stdout, out.stdout


# --- out-parameters: a C function stores an address into rsalloc memory -----------


def test_strtol_endptr_resolves_inside_the_buffer() -> None:
    buf = to_native_utf8("  1234xyz")
    end = calloc(Pointer[Uint8], 1)
    assert LIBC.strtol(buf, end, 10) == 1234
    tail = end[0]
    assert tail.address == buf.address + 6 and tail.allocator is malloc
    assert tail.to_str() == "xyz" and tail.count == 4  # bounded by buf's block
    with pytest.raises(OwnershipError):
        free(tail)  # interior
    free(buf)
    assert not tail.alive
    free(end)


def test_c_string_written_into_a_char_star_slot_is_adopted_by_length() -> None:
    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    lib.asprintf.restype = ctypes.c_int
    lib.asprintf.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    out = calloc(Pointer[Uint8], 1)
    n = lib.asprintf(out, b"n=%d", 42)
    assert n == 4
    foreign = out[0]  # C's malloc'd string: not rsalloc's yet
    assert foreign.allocator is None and foreign.count is None
    s = malloc.adopt(foreign.address)  # count None: strlen + 1
    assert s.count == 5 and s.to_str() == "n=42"
    assert out[0].allocator is malloc and out[0].count == 5  # now resolves
    with pytest.raises(OwnershipError):
        malloc.adopt(foreign.address)  # adopting a live block again
    with pytest.raises(OwnershipError):
        malloc.adopt(foreign.address + 1, Uint8, 2)
    free(out[0])
    assert not s.alive
    free(out)


# --- a C-built linked list: getaddrinfo ----------------------------------------------


class AddrInfo(ctypes.Structure):
    pass


AddrInfo._fields_ = [
    ("ai_flags", ctypes.c_int),
    ("ai_family", ctypes.c_int),
    ("ai_socktype", ctypes.c_int),
    ("ai_protocol", ctypes.c_int),
    ("ai_addrlen", ctypes.c_uint32),
    ("ai_addr", ctypes.c_void_p),
    ("ai_canonname", ctypes.c_void_p),
    ("ai_next", ctypes.c_void_p),
]
AI_NUMERICHOST = 4


def _getaddrinfo(host: bytes, flags: int, T: Any) -> tuple[ctypes.CDLL, Any]:
    """libc, and a slot getaddrinfo filled with the head of an AF_INET list
    of T (a ctypes or an rsalloc struct of addrinfo's layout)."""
    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    lib.getaddrinfo.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.getaddrinfo.restype = ctypes.c_int
    lib.freeaddrinfo.argtypes = [ctypes.c_void_p]
    lib.freeaddrinfo.restype = None
    hints = calloc(T)
    hints.ref.ai_flags = flags
    hints.ref.ai_family = socket.AF_INET
    res = calloc(Pointer[T], 1)
    assert lib.getaddrinfo(host, None, hints, res) == 0
    free(hints)
    return lib, res


def test_getaddrinfo_list_walked_and_freed_by_a_free_only_owner() -> None:
    lib, res = _getaddrinfo(b"127.0.0.1", AI_NUMERICHOST, AddrInfo)
    owner = ForeignAllocator(None, lib.freeaddrinfo, name="freeaddrinfo")
    head = owner.adopt(res[0].address, AddrInfo, 1)  # freeaddrinfo frees the whole chain
    assert res[0].allocator is owner and res[0].count == 1  # the slot now resolves to it
    nodes = []
    node = head
    while node:
        nodes.append(node)
        nxt = node.ref.ai_next
        node = Pointer.from_address(nxt, AddrInfo, 1)  # a C-built node: unowned, None -> NULL
    assert len(nodes) >= 1 and all(n.ref.ai_family == socket.AF_INET for n in nodes)
    sin = Pointer.from_address(nodes[0].ref.ai_addr, Uint8, 8).read_bytes()
    assert sin[4:8] == bytes([127, 0, 0, 1])
    for call in (lambda: owner(Int32, 2), lambda: owner.allocate(8), lambda: owner.clone(head)):
        with pytest.raises(TypeError):
            call()
    free(res[0])  # freeaddrinfo(res)
    assert not head.alive
    with pytest.raises(UseAfterFreeError):
        head.ref
    with pytest.raises(DoubleFreeError):
        owner.free(head)
    assert owner.stats().live_count == 0
    free(res)


class AddrInfoS(rsalloc.Struct):
    ai_flags: Int32
    ai_family: Int32
    ai_socktype: Int32
    ai_protocol: Int32
    ai_addrlen: rsalloc.Uint32
    ai_addr: Pointer[Uint8]
    ai_canonname: Pointer[Uint8]
    ai_next: "Pointer[AddrInfoS]"


def test_what_a_library_block_points_to_dies_with_it() -> None:
    # addrinfo's ai_next, ai_addr and ai_canonname are the library's: a
    # free-only owner's block hands them out as views that die with it.
    lib, res = _getaddrinfo(b"localhost", socket.AI_CANONNAME, AddrInfoS)
    owner = ForeignAllocator(None, lib.freeaddrinfo, name="freeaddrinfo")
    head = owner.adopt(res[0].address, AddrInfoS, 1)
    nodes = [head]
    while nodes[-1].ref.ai_next:
        nodes.append(nodes[-1].ref.ai_next)  # a sibling, through the previous one
    addrs = [n.ref.ai_addr for n in nodes]
    name = head.ref.ai_canonname
    assert name.to_str(), "AI_CANONNAME gives the head a name"
    assert all(a.view(0, 8).read_bytes()[4:5] == b"\x7f" for a in addrs)  # 127.x.x.x
    assert all(p.alive and p.allocator is None for p in nodes[1:] + addrs + [name])
    assert "part of a freeaddrinfo block" in repr(name)
    # None of them is rsalloc's to free: the library's free of the head is.
    for p in nodes[1:] + addrs + [name]:
        with pytest.raises(OwnershipError, match="hangs off a block a library frees"):
            free(p)
        with pytest.raises(OwnershipError):
            p.detach()
    free(res[0])  # freeaddrinfo(res): the whole list goes
    for p in nodes + addrs + [name]:
        assert not p.alive
        with pytest.raises(UseAfterFreeError):
            p.view(0, 1)[0]
    with pytest.raises(UseAfterFreeError):
        name.to_str()
    assert owner.stats().live_count == 0
    free(res)


def test_an_export_of_a_library_pointee_defers_the_library_free() -> None:
    lib, res = _getaddrinfo(b"127.0.0.1", AI_NUMERICHOST, AddrInfoS)
    owner = ForeignAllocator(None, lib.freeaddrinfo, name="freeaddrinfo")
    head = owner.adopt(res[0].address, AddrInfoS, 1)
    sin = head.ref.ai_addr.view(0, 8)
    m = memoryview(sin)  # pins the head: freeaddrinfo waits for the export
    free(res[0])
    assert not sin.alive
    assert bytes(m[4:8]) == bytes([127, 0, 0, 1])  # still the library's memory, intact
    m.release()  # now freeaddrinfo runs
    assert owner.stats().live_count == 0
    free(res)


def test_what_an_owning_allocator_s_block_points_to_stays_foreign() -> None:
    # malloc's blocks are not a library's structure: an address they hold
    # that is no rsalloc block (here a Python bytes object's) outlives them,
    # as in C.
    text = b"not rsalloc's\0"
    addr = ctypes.cast(ctypes.c_char_p(text), ctypes.c_void_p).value
    s = malloc(AddrInfoS)
    s.ref.ai_canonname = addr
    name = s.ref.ai_canonname
    assert name.allocator is None and "unowned" in repr(name)
    free(s)
    assert name.alive and name.to_str() == "not rsalloc's"


# --- sized frees -------------------------------------------------------------------


def test_sized_free_gets_the_size_allocated_or_adopted_with() -> None:
    freed: list[tuple[int, int]] = []
    proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t)

    @proto
    def sized_free(p: int, n: int) -> None:
        freed.append((p, n))
        LIBC.free(p)

    a = ForeignAllocator(LIBC.malloc, sized_free, sized=True, name="sized")
    p = a(Int64, 5)
    addr = p.address
    free(p)
    q = a.adopt(LIBC.strdup(b"hello"))  # count None: strlen + 1
    qa = q.address
    a.free(q)
    assert freed == [(addr, 40), (qa, 6)]


class SizedPool(rsalloc.Allocator):
    def __init__(self) -> None:
        super().__init__()
        self.freed: list[int] = []

    def _raw_alloc(self, nbytes: int, alignment: int) -> int:
        return LIBC.malloc(nbytes) or 0

    def _raw_free(self, address: int, nbytes: int) -> None:
        self.freed.append(nbytes)
        LIBC.free(address)


def test_python_allocator_with_a_sized_raw_free() -> None:
    pool = SizedPool()
    p = pool(Int32, 3)
    r = pool.realloc(p, 10)
    free(r)
    assert pool.freed == [12, 40]


def test_gmp_frees_its_strings_with_their_size() -> None:
    path = ctypes.util.find_library("gmp")
    if path is None:
        pytest.skip("libgmp is not installed")
    gmp = ctypes.CDLL(path)
    z = (ctypes.c_byte * 32)()  # an mpz_t (16 bytes on LP64), generously sized
    gmp.__gmpz_init_set_str.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    gmp.__gmpz_get_str.restype = ctypes.c_void_p
    gmp.__gmpz_get_str.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    gmp.__gmp_get_memory_functions.argtypes = [ctypes.c_void_p] * 3
    gmp.__gmpz_clear.argtypes = [ctypes.c_void_p]
    assert gmp.__gmpz_init_set_str(z, b"123456789012345678901234567890", 10) == 0
    fns = (ctypes.c_void_p * 3)()
    gmp.__gmp_get_memory_functions(ctypes.byref(fns, 0), ctypes.byref(fns, 8), ctypes.byref(fns, 16))
    gmp_free = ForeignAllocator(None, fns[2], sized=True, name="gmp free")
    s = gmp_free.adopt(gmp.__gmpz_get_str(None, 16, z))
    assert s.to_str() == format(123456789012345678901234567890, "x")
    gmp_free.free(s)  # GMP's free(ptr, strlen + 1)
    assert not s.alive and gmp_free.stats().live_count == 0
    gmp.__gmpz_clear(z)


# --- no address live twice ----------------------------------------------------------


def test_adopt_of_a_live_blocks_address_is_refused() -> None:
    p = malloc.allocate(32)
    for addr in (p.address, p.address + 16):
        with pytest.raises(OwnershipError):
            malloc.adopt(addr, Uint8, 4)
    with pytest.raises(OwnershipError):
        rsalloc.Arena(malloc).adopt(p.address, Uint8, 4)
    assert p.alive
    free(p)


@pytest.mark.skipif(
    os.environ.get("PYTHONMALLOC") in ("malloc", "malloc_debug"),
    reason="under a memory checker's setting the double free is the checker's to report",
)
def test_a_block_c_freed_behind_rsallocs_back_is_not_handed_out_twice() -> None:
    """getline grows its buffer with realloc: the block rsalloc gave it is
    freed by C. rsalloc's later free of it must not put it in the block
    cache, or the cache and libc would both hand it out, nor free it again
    (glibc's abort), with the cache on or off."""
    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    lib.fmemopen.restype = ctypes.c_void_p
    lib.fmemopen.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]
    lib.getline.restype = ctypes.c_ssize_t
    lib.getline.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.fclose.argtypes = [ctypes.c_void_p]
    text = b"a line much longer than the sixteen bytes rsalloc handed getline\n"
    slots = calloc(Pointer[Uint8], 1)
    n = calloc(Int64, 1)
    # Room in glibc's per-thread cache for the block C frees, where glibc
    # marks it: a full cache sends it to a fast bin, which marks nothing
    # (docs/safety.md, the look's bound). Taking blocks of its size empties
    # the cache and the fast bin that refills it.
    room = [LIBC.malloc(16) for _ in range(256)]
    fences = []
    for _ in range(20):
        buf = malloc.allocate(16)
        fences.append(LIBC.malloc(16))  # usually right after buf: realloc must move it
        stream = lib.fmemopen(text, len(text), b"r")
        slots[0] = buf
        n[0] = 16
        assert lib.getline(slots, n, stream) == len(text)
        lib.fclose(stream)
        line = slots[0]
        if line.address != buf.address:
            break  # getline realloc'ed: C freed buf
        free(buf)  # grown in place: still buf's block
    else:
        pytest.skip("realloc grew the buffer in place every time")
    for f in fences:
        LIBC.free(f)
    grown = malloc.adopt(line.address, Uint8, n[0])
    assert grown.read_bytes(len(text)) == text
    free(buf)  # rsalloc's free of a block C freed already: neither cached nor freed again
    a, b = malloc.allocate(16), LIBC.malloc(16)
    try:
        assert a.address != b  # one block, one owner
    finally:
        free(a)
        LIBC.free(b)
    free(grown)
    free(slots)
    free(n)
    for r in room:
        LIBC.free(r)


def test_a_block_c_freed_is_not_freed_again_with_the_block_cache_off() -> None:
    # The test above in an interpreter without the cache (as on a
    # free-threaded build): the look for C's frees works on its own.
    env = dict(os.environ, RSALLOC_BLOCK_CACHE="0")
    test = f"{__file__}::test_a_block_c_freed_behind_rsallocs_back_is_not_handed_out_twice"
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "1 passed" in r.stdout or "1 skipped" in r.stdout, r.stdout


# --- arenas --------------------------------------------------------------------------


@pytest.mark.parametrize("backing", [None, malloc])
def test_arena_blocks_resolve_and_die_with_the_arena(backing) -> None:  # type: ignore[no-untyped-def]
    with Arena(backing) as arena:
        arr = arena(Pointer[Uint8], 3)
        for i, w in enumerate(["x", "yy", "zzz"]):
            arr[i] = to_native_utf8(w, arena)
        got = [arr[i] for i in range(3)]
        assert [g.to_str() for g in got] == ["x", "yy", "zzz"]
        assert [g.count for g in got] == [2, 3, 4]
        assert all(g.allocator is arena for g in got)
        free(arr[0])  # an arena's free is a no-op on a live block
        inner = Pointer.from_address(got[2].address + 1, Uint8)
        assert inner.count == 3 and inner.to_str() == "zz"
        with pytest.raises(OwnershipError):
            free(inner)
        with pytest.raises(IndexError):
            Pointer.from_address(got[1].address, Uint8, 4)  # past the block's end
    assert not any(g.alive for g in got) and not inner.alive
    with pytest.raises(UseAfterFreeError):
        got[0].to_str()


def test_from_address_of_foreign_memory_stays_unowned() -> None:
    raw = ctypes.create_string_buffer(b"abc")
    v = Pointer.from_address(ctypes.addressof(raw), Uint8)
    assert v.allocator is None and v.count is None and v.to_str() == "abc"
    assert Pointer.from_address(None, Uint8).is_null
    with pytest.raises(OwnershipError):
        free(v)


# --- threads -------------------------------------------------------------------------


def test_arena_releases_racing_resolutions_from_threads() -> None:
    """Readers resolve addresses stored by a writer that fills an arena and
    releases it again and again: every resolution is a live view of the
    current generation's string or a dead view that raises; never the
    zeros of a released block or a crash."""
    n = 32
    arr = calloc(Int64, n)
    errors: list[BaseException] = []
    stop = threading.Event()
    # Without the block cache a closed arena's chunk goes back to libc at
    # once: its addresses read back as foreign memory (not read here).
    kept = block_cache_on()

    def reader() -> None:
        try:
            k = 0
            while not stop.is_set():
                k += 1
                addr = arr[k % n]
                if not addr:
                    continue
                v = Pointer.from_address(addr, Uint8)
                if v.alive and v.allocator is None:
                    assert not kept, "an arena block read back as foreign memory"
                    continue
                try:
                    text = v.to_str()
                except UseAfterFreeError:
                    continue
                assert text.startswith("g") and len(text) == 8, text
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def writer() -> None:
        try:
            for g in range(300):
                with Arena() as a:
                    for i in range(n):
                        arr[i] = to_native_utf8(f"g{g:03d}-{i:03d}"[:8], a).address
                    if g % 3 == 0:
                        a.release_all(reuse=True)
                        for i in range(0, n, 2):
                            arr[i] = to_native_utf8(f"g{g:03d}+{i:03d}"[:8], a).address
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    w = threading.Thread(target=writer)
    for t in threads + [w]:
        t.start()
    w.join()
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    if kept:
        for i in range(n):
            assert not Pointer.from_address(arr[i], Uint8).alive
    free(arr)



def test_frees_racing_resolutions_from_threads() -> None:
    """Readers resolve addresses stored in a shared char** while writers
    free and replace the strings: every resolution is a live view with the
    right bytes, or a dead one that raises; never stale bytes or a crash."""
    n = 64
    arr = calloc(Int64, n)  # addresses, stored as plain integers
    lock = threading.Lock()
    strings = [to_native_utf8(f"s{i:03d}") for i in range(n)]
    for i, s in enumerate(strings):
        arr[i] = s.address
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            k = 0
            while not stop.is_set():
                k += 1
                v = Pointer.from_address(arr[k % n], Uint8)
                try:
                    text = v.to_str()
                except UseAfterFreeError:
                    continue
                if v.allocator is malloc:
                    assert text.startswith("s") and len(text) == 4, text
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def writer(seed: int) -> None:
        try:
            for k in range(1500):
                i = (k * 7 + seed) % n
                with lock:
                    old = Pointer.from_address(arr[i], Uint8)
                    fresh = to_native_utf8(f"s{i:03d}")
                    arr[i] = fresh.address
                    free(old)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    writers = [threading.Thread(target=writer, args=(s,)) for s in range(3)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors[0]
    for i in range(n):
        free(Pointer.from_address(arr[i], Uint8))
    free(arr)
