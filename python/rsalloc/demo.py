"""`python -m rsalloc demo`: a tour of rsalloc against real C libraries
(libc and zlib through ctypes). Every step prints one line."""

from __future__ import annotations

import ctypes
import ctypes.util

import rsalloc
from rsalloc._clib import libc as _libc
from rsalloc import Int8, Int32, Pointer, Uint8, UseAfterFreeError, calloc, free, malloc, to_native_utf8


def _zlib() -> ctypes.CDLL:
    z = ctypes.CDLL(ctypes.util.find_library("z") or "libz.so.1")
    for name in ("compress2", "uncompress"):
        getattr(z, name).restype = ctypes.c_int
    z.compress2.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int]
    z.uncompress.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulong]
    z.compressBound.argtypes = [ctypes.c_ulong]
    z.compressBound.restype = ctypes.c_ulong
    return z


def _step(title: str, result: object) -> None:
    print(f"  {title:<44} {result}")


def run() -> int:
    """Runs the tour (``python -m rsalloc demo``) and returns the exit status."""
    # Record every allocation of the tour, so the report at the end can name
    # the line of anything left behind.
    rsalloc.tracking.enable(frames=4)
    libc, z = _libc(), _zlib()
    print("rsalloc demo: checked native memory, driven through ctypes\n")

    # Strings in and out of C.
    s = to_native_utf8("héllo, wörld")
    _step("to_native_utf8 -> libc strlen", f"{libc.strlen(s)} bytes (Python len {len('héllo, wörld')})")
    end = calloc(Pointer[Uint8])  # a char** out-parameter
    num = to_native_utf8("4096 bytes left")
    _step("strtol with a char** out-parameter", f"{libc.strtol(num, end, 10)}, rest {end[0].to_str()!r}")

    # An array sorted by C, calling back into Python.
    n = 8
    arr = malloc(Int32, n)
    arr[:] = [5, -3, 9, 0, 2, 7, -8, 1]
    cmp_t = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)

    def compare(a: int, b: int) -> int:
        x, y = Pointer.from_address(a, Int32)[0], Pointer.from_address(b, Int32)[0]
        return (x > y) - (x < y)

    libc.qsort(arr, n, rsalloc.sizeof(Int32), cmp_t(compare))
    _step("qsort of a malloc'd Int32 array", arr[:])

    # zlib round trip: every buffer and unsigned-long out-parameter in one
    # arena, released together when the block ends.
    text = ("rsalloc " * 64).encode()
    with rsalloc.Arena() as arena:
        src = arena.allocate(len(text))
        src.write_bytes(text)
        bound = z.compressBound(len(text))
        packed = arena.allocate(bound)
        packed_len = arena(ctypes.c_ulong)
        packed_len[0] = bound
        rc = z.compress2(packed, packed_len, src, len(text), 9)
        out = arena.allocate(len(text))
        out_len = arena(ctypes.c_ulong)
        out_len[0] = len(text)
        rc2 = z.uncompress(out, out_len, packed, packed_len[0])
        same = out.read_bytes(out_len[0]) == text
        _step("zlib compress2 / uncompress in an Arena", f"rc={rc},{rc2}: {len(text)} -> {packed_len[0]} -> "
              f"{out_len[0]} bytes, equal={same}, {len(arena)} blocks")
    _step("after the with block", f"arena buffers alive: {packed.alive}")

    # A C struct (a ctypes Structure) living in native memory.
    class TimeSpec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    ts = calloc(TimeSpec)
    libc.clock_gettime(1, ts)  # CLOCK_MONOTONIC, filled in by C
    _step("clock_gettime into calloc(TimeSpec)", f"tv_sec={ts.ref.tv_sec}, tv_nsec>=0: {ts.ref.tv_nsec >= 0}")

    # The same kind of struct declared the Dart way: fields are annotations,
    # pointer fields hold C strings, and the addresses read back from the
    # struct are freeable, checked Pointers (DESIGN §2a, §3a).
    class AuthInfo(rsalloc.Struct):
        appKey: Pointer[Int8]
        accid: Pointer[Int8]
        token: Pointer[Int8]

    info = calloc(AuthInfo)
    info.ref.appKey = to_native_utf8("45c6af3c98409b18a84451215d0bdd6e")
    info.ref.accid = to_native_utf8("user-1")
    info.ref.token = to_native_utf8("e10adc3949ba59abbe56e057f20f883e")
    _step("rsalloc.Struct AuthInfo of three C strings",
          f"sizeof={rsalloc.sizeof(AuthInfo)}, accid={info.ref.accid.cast(Uint8).to_str()!r}, "
          f"strlen(token)={libc.strlen(info.ref.token)}")
    for field in ("appKey", "accid", "token"):
        free(getattr(info.ref, field))  # freed through the addresses stored in the struct
    free(info)
    try:
        info.ref.token
    except UseAfterFreeError:
        _step("info.ref.token after free(info)", "UseAfterFreeError")

    # numpy-style zero-copy view through the buffer protocol.
    view = memoryview(arr)
    _step("memoryview(arr)", f"format {view.format!r}, shape {view.shape}")
    view.release()

    # A mistake that would be undefined behaviour in C.
    free(arr)
    try:
        arr[0]
    except UseAfterFreeError as e:
        _step("arr[0] after free(arr)", f"UseAfterFreeError: {e}")

    for p in (s, end, num, ts):
        free(p)
    st = rsalloc.stats()
    print()
    _step("rsalloc.stats()", f"live={st.live_count} ({st.live_bytes} B), peak={st.peak_bytes} B, "
          f"allocs={st.total_allocs}, frees={st.total_frees}")
    report = rsalloc.leak_report().rstrip()
    _step("rsalloc.leak_report()", report.splitlines()[-1])
    if st.live_count:
        print(report)
    return 0 if st.live_count == 0 and same and rc == rc2 == 0 else 1
