"""A hostile caller against the Pointer surface (DESIGN §3, §6; issue 15's
classes 1, 3, 4, 5 and 10, and the explicit lengths of issue 16).

Every case that could crash the interpreter runs in a subprocess (`run`),
which must exit 0 having raised what it promised: `expect(Error, fn)` prints
the exception's name, and the test asserts it in the output.

Blocks are 4 MiB where a crash is the risk: glibc serves them with mmap and
unmaps them at free, so a read after free is a SIGSEGV, not stale bytes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import ctypes, gc, sys
import rsalloc
from rsalloc import *
BIG = 4 << 20

def expect(exc, fn):
    try:
        fn()
    except BaseException as e:
        assert isinstance(e, exc), f"{type(e).__name__}: {e}"
        print("raised", type(e).__name__)
    else:
        raise AssertionError(f"{fn} did not raise {exc.__name__}")

class Hook:
    '''An int whose __index__ (and __float__) first runs `action`.'''
    def __init__(self, value, action):
        self.value, self.action = value, action
    def __index__(self):
        self.action()
        return self.value
    def __float__(self):
        self.action()
        return float(self.value)
"""


def run(code: str, *expected: str) -> str:
    """Runs PRELUDE + code in a fresh interpreter: exit 0, each expected text printed."""
    r = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    for text in expected:
        assert text in r.stdout, f"{text!r} not in:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r.stdout


# --- 1. re-entrancy: Python code between a check and a memory touch -------------------

# How a hook kills `p`: each setup defines `p` (4 MiB of Uint8 unless said) and `kill`.
# A hook may run more than once (an iterator's every step): a kill happens once.
KILLERS = {
    "free": "p = malloc(Uint8, BIG)\ndef kill():\n    if p.alive: free(p)\n",
    "realloc": "p = malloc(Uint8, BIG)\ndef kill():\n    if p.alive: malloc.realloc(p, 16)\n",
    "region release": "arena = Arena()\np = arena(Uint8, BIG)\ndef kill(): arena.release_all()\n",
    "arena release": "arena = Arena(malloc)\np = arena(Uint8, BIG)\ndef kill(): arena.release_all()\n",
}

# Each operation gets one argument converted by Python code that kills `p`
# first; the operation must raise UseAfterFreeError and touch nothing.
OPERATIONS = {
    "p[H]": "p[Hook(5, kill)]",
    "p[H:n]": "p[Hook(0, kill):len(p)]",
    "p[0:H]": "p[0:Hook(len(p), kill)]",
    "p[::H]": "p[::Hook(1, kill)]",
    "p[H] = 1": "p.__setitem__(Hook(5, kill), 1)",
    "p[0] = H": "p.__setitem__(0, Hook(7, kill))",
    "p.value = H": "setattr(p, 'value', Hook(7, kill))",
    "p[H:n] = values": "p.__setitem__(slice(Hook(0, kill), 4), [1, 2, 3, 4])",
    "p[0:4] = [1, H, 3, 4]": "p.__setitem__(slice(0, 4), [1, Hook(2, kill), 3, 4])",
    "p[0:4] = iterator that frees": "p.__setitem__(slice(0, 4), (kill() or v for v in [1, 2, 3, 4]))",
    "p + H": "p + Hook(1, kill)",
    "H + p": "Hook(1, kill) + p",
    "p.offset(H)": "p.offset(Hook(1, kill))",
    "p.view(H)": "p.view(Hook(1, kill))",
    "p.view(0, H)": "p.view(0, Hook(8, kill))",
    "p.read_bytes(H)": "p.read_bytes(Hook(len(p), kill))",
    "p.to_str(H)": "p.to_str(Hook(len(p), kill))",
    "p.write_bytes(b, H)": "p.write_bytes(b'x' * 1000, Hook(0, kill))",
    "p.fill(H)": "p.fill(Hook(1, kill))",
}


@pytest.mark.parametrize("killer", list(KILLERS))
def test_reentrant_argument_kills_the_block(killer: str) -> None:
    # One interpreter per way to kill, a fresh block per operation: a crash
    # fails the test, and the output names the last operation that ran.
    code = ""
    for op, expr in OPERATIONS.items():
        code += KILLERS[killer] + f"print({op!r})\nexpect(UseAfterFreeError, lambda: {expr})\nassert not p.alive\n"
    out = run(code)
    for op in OPERATIONS:
        assert f"{op}\nraised UseAfterFreeError\n" in out, op


@pytest.mark.parametrize("killer", list(KILLERS))
def test_reentrant_float_value_kills_the_block(killer: str) -> None:
    # __float__ of a value for a Float64 slot, single and in a slice.
    setup = KILLERS[killer].replace("(Uint8, BIG)", "(Float64, BIG // 8)")
    run(
        setup
        + "expect(UseAfterFreeError, lambda: p.__setitem__(3, Hook(1, kill)))\n",
        "raised UseAfterFreeError",
    )
    run(
        setup
        + "expect(UseAfterFreeError, lambda: p.__setitem__(slice(0, 2), [1.0, Hook(1, kill)]))\n",
        "raised UseAfterFreeError",
    )


def test_reentrant_bool_value_kills_the_block() -> None:
    run(
        """
        p = malloc(Bool, BIG)
        expect(UseAfterFreeError, lambda: p.__setitem__(1, Hook(1, lambda: free(p))))
        """,
        "raised UseAfterFreeError",
    )


@pytest.mark.parametrize("killer", list(KILLERS))
def test_codec_error_handler_that_kills_the_block(killer: str) -> None:
    # The decoder calls the handler in the middle of reading the block: the
    # memory is pinned, the rest is read safely, and the death is reported.
    # Pinned as by an export, the block cannot move: realloc is refused.
    error = "BufferError" if killer == "realloc" else "UseAfterFreeError"
    run(
        KILLERS[killer]
        + """
import codecs
def handler(err):
    kill()
    return ("?", err.end)
codecs.register_error("rsalloc-kill", handler)
p.fill(ord("a"))
p[10] = 0xFF  # invalid UTF-8: the handler runs there
p[len(p) - 1] = 0
expect(%s, lambda: p.to_str(errors="rsalloc-kill"))
""" % error,
        "raised " + error,
    )


def test_codec_error_handler_sees_a_live_block_unchanged() -> None:
    run(
        """
        import codecs
        codecs.register_error("rsalloc-q", lambda err: ("?", err.end))
        p = malloc(Uint8, 6)
        p.write_bytes(b"ab\\xffcd\\x00")
        assert p.to_str(errors="rsalloc-q") == "ab?cd"
        assert p.to_str(5, errors="rsalloc-q") == "ab?cd"
        assert p.alive
        free(p)  # the pin is gone: a free succeeds
        print("ok")
        """,
        "ok",
    )


@pytest.mark.skipif(
    sys.version_info >= (3, 12),
    reason="3.12+ runs the cycle collector only at the interpreter's safe points, never inside the "
    "slice's C loop: no gc callback can run mid-slice (the loop then ran 2000 full slices, 300 s on 3.13)",
)
def test_slice_of_structs_whose_from_buffer_frees() -> None:
    # Reading aggregates runs Python code per element (ctypes from_buffer):
    # a gc callback that frees the block mid-slice is caught, never a crash.
    run(
        """
        class S(ctypes.Structure):
            _fields_ = [("a", ctypes.c_int32), ("b", ctypes.c_double)]
        p = malloc(S, BIG // ctypes.sizeof(S))
        seen = []
        def cb(phase, info):
            if phase == "start" and p.alive and len(seen) == 0:
                seen.append(1)
                free(p)
        gc.callbacks.append(cb)
        junk = []
        def read():
            for _ in range(2000):
                junk.append([[]])  # gc pressure between elements
                p[0:len(p)]
        expect(UseAfterFreeError, read)
        gc.callbacks.remove(cb)
        """,
        "raised UseAfterFreeError",
    )


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Python-level __buffer__ needs 3.12")
@pytest.mark.parametrize("method", ["write_bytes", "copy_from"])
def test_source_buffer_that_frees_the_destination(method: str) -> None:
    run(
        f"""
        p = malloc(Uint8, BIG)
        class Src:
            def __buffer__(self, flags):
                free(p)
                return memoryview(b"x" * BIG)
        expect(UseAfterFreeError, lambda: p.{method}(Src()))
        """,
        "raised UseAfterFreeError",
    )


def test_allocator_that_hands_back_a_dead_pointer_for_a_string() -> None:
    run(
        """
        class Liar:
            def allocate(self, n):
                q = malloc.allocate(BIG)
                free(q)
                return q
        expect(UseAfterFreeError, lambda: to_native_utf8("hello", Liar()))
        expect(UseAfterFreeError, lambda: to_native_utf16("hello", Liar()))
        import codecs
        codecs.register_error("rsalloc-r", lambda err: ("?", err.end))
        expect(UseAfterFreeError, lambda: to_native_utf8("a\\udc80b", Liar(), errors="rsalloc-r"))
        """,
        "raised UseAfterFreeError",
    )


def test_codec_handler_that_releases_the_target_arena() -> None:
    # The handler runs before the string's block exists: the allocation
    # then finds its arena closed.
    run(
        """
        import codecs
        for arena in (Arena(malloc), Arena()):
            def handler(err, arena=arena):
                arena.release_all()
                return ("?", err.end)
            codecs.register_error("rsalloc-rel", handler)
            expect(ArenaClosedError, lambda: to_native_utf8("a\\udc80b", arena, errors="rsalloc-rel"))
            expect(ArenaClosedError, lambda: to_native_utf16("a\\udc80b", arena, errors="rsalloc-rel"))
        """,
        "raised ArenaClosedError",
    )


def test_hooks_that_do_not_kill_change_nothing_but_the_target() -> None:
    # The same operations with harmless hooks do their job.
    run(
        """
        p = malloc(Uint8, 16)
        p.fill(0)
        calls = []
        h = lambda v: Hook(v, lambda: calls.append(v))
        p[h(1)] = 5
        p[0] = h(7)
        p[h(2):h(4)] = [8, 9]
        assert p[h(0):h(5)] == [7, 5, 8, 9, 0]
        assert p.read_bytes(h(3)) == bytes([7, 5, 8])
        assert (p + h(2))[0] == 8 and (h(2) + p)[0] == 8
        assert p.view(h(1), h(2)).read_bytes() == bytes([5, 8])
        p.write_bytes(b"zz", h(14))
        assert p[14:16] == [ord("z")] * 2
        assert len(calls) == 12
        free(p)
        print("ok")
        """,
        "ok",
    )


# --- 3. null pointers: arithmetic and access -----------------------------------------

NULL_CASES = [
    "q + 1",
    "1 + q",
    "q + 0",
    "q.offset(1)",
    "q.view()",
    "q.view(1)",
    "q.view(0, 1)",
    "q[0]",
    "q[1]",
    "q.value",
    "(q.cast(Uint8)).to_str()",
    "(q.cast(Uint8)).to_str(4)",
    "q.read_bytes(4)",
    "q.write_bytes(b'abcd')",
    "q.copy_from(b'abcd')",
    "q.cast(Uint8)[0]",
    "nullptr + 1",
    "rsalloc.nullptr.view(0, 4)",
    "Pointer.from_address(0, Int32, 4) + 1",
    "Pointer.from_address(0, Int32, 4)[0:2]",
    "Pointer.from_address(0, Int32, 4).read_bytes()",
    "Pointer.from_address(0, Int32, 4).fill(0)",
    "memoryview(Pointer.from_address(0, Int32, 4))",
    "Pointer.from_address(None, Int32)[0]",
    "malloc(Int32, 4).copy_from(Pointer.from_address(0, Int32, 4))",
]


def test_null_arithmetic_and_access_raise_null_pointer_error() -> None:
    body = "q = calloc(Pointer[Int32], 1)[0]\nassert q.is_null\n"
    for case in NULL_CASES:
        body += f"expect(NullPointerError, lambda: {case})\n"
    out = run(body)
    assert out.count("raised NullPointerError") == len(NULL_CASES)


def test_cast_of_null_stays_null() -> None:
    # A cast is no arithmetic: C's (T *)NULL is NULL. Access still raises.
    run(
        """
        q = calloc(Pointer[Int32], 1)[0]
        c = q.cast(Float64)
        assert c.is_null and c.address == 0 and not c and c.alive
        n = Pointer.from_address(None, Uint8)
        assert n.is_null and n == rsalloc.nullptr
        expect(NullPointerError, lambda: c[0])
        """,
        "raised NullPointerError",
    )


def test_null_numpy_array_raises() -> None:
    pytest.importorskip("numpy")
    run(
        """
        import numpy as np
        expect(NullPointerError, lambda: np.asarray(Pointer.from_address(0, Int32, 4)))
        q = calloc(Pointer[Int32], 1)[0]
        expect(NullPointerError, lambda: q + np.int64(1))
        """,
        "raised NullPointerError",
    )


# --- 4. foreign buffers: strided and reversed sources -------------------------------


def test_strided_memoryview_is_copied_element_by_element() -> None:
    run(
        """
        p = malloc(Uint8, 8)
        p.fill(0)
        p.write_bytes(memoryview(b"abcdefgh")[::2])
        assert p.read_bytes(4) == b"aceg", p.read_bytes()
        p.copy_from(memoryview(b"ABCDEFGH")[::-3])
        assert p.read_bytes(3) == b"HEB", p.read_bytes()
        p.write_bytes(memoryview(b"12345678")[1::3], 5)
        assert p.read_bytes() == b"HEBg\\x00258", p.read_bytes()
        # a strided source longer than the rest of the view: refused, nothing written
        expect(IndexError, lambda: p.write_bytes(memoryview(b"x" * 32)[::2], 1))
        assert p.read_bytes() == b"HEBg\\x00258"
        print("ok")
        """,
        "ok",
    )


def test_numpy_columns_transposes_and_reversed_arrays() -> None:
    pytest.importorskip("numpy")
    run(
        """
        import numpy as np
        a = np.arange(12, dtype=np.int32).reshape(4, 3)
        p = malloc(Int32, 4)
        p.copy_from(a[:, 1])
        assert p[:] == [1, 4, 7, 10], p[:]
        p.write_bytes(a[::-1, 2])
        assert p[:] == [11, 8, 5, 2], p[:]
        t = malloc(Int32, 12)
        t.copy_from(a.T)  # Fortran-ordered memory: copied in C order, as bytes(a.T)
        assert t.read_bytes() == a.T.tobytes()
        # slice assignment iterates the values: strided sources too
        p[0:4] = a[:, 0]
        assert p[:] == [0, 3, 6, 9]
        # the big reversed source that used to crash: both methods
        n = 16 << 20
        src = np.frombuffer(bytes(range(251)) * (n // 251 + 1), np.uint8)[:n]
        big = malloc(Uint8, n)
        big.copy_from(src[::-1])
        assert big.read_bytes() == src[::-1].tobytes()
        big.fill(0)
        big.write_bytes(src[::-1])
        assert big.read_bytes() == src[::-1].tobytes()
        # strided 2-D
        big.write_bytes(src.reshape(4096, 4096)[::2, ::3])
        assert big.read_bytes(2048 * 1366) == src.reshape(4096, 4096)[::2, ::3].tobytes()
        print("ok")
        """,
        "ok",
    )


def test_empty_sources_copy_nothing() -> None:
    run(
        """
        p = malloc(Uint8, 4)
        p.write_bytes(b"abcd")
        for src in (b"", bytearray(), memoryview(b"abc")[3:], memoryview(b"abc")[::-1][3:]):
            p.write_bytes(src)
            p.write_bytes(src, 4)
            p.copy_from(src)
            Pointer.from_address(p.address, Uint8).write_bytes(src)
        assert p.read_bytes() == b"abcd"
        print("ok")
        """,
        "ok",
    )


def test_overlapping_reversed_source_is_its_own_destination() -> None:
    # The source is the destination's memory, reversed: gathered first.
    run(
        """
        p = malloc(Uint8, BIG)
        data = bytes(range(256)) * (BIG // 256)
        p.write_bytes(data)
        m = memoryview(p)
        p.write_bytes(m[::-1])
        assert p.read_bytes() == data[::-1]
        p.copy_from(m[::-1])
        assert p.read_bytes() == data
        m.release()
        free(p)
        print("ok")
        """,
        "ok",
    )


def test_non_buffers_and_dead_exporters_keep_their_errors() -> None:
    run(
        """
        p = malloc(Uint8, 8)
        expect(TypeError, lambda: p.write_bytes("text"))
        expect(TypeError, lambda: p.copy_from(42))
        dead = malloc(Uint8, 8)
        free(dead)
        expect(UseAfterFreeError, lambda: p.write_bytes(dead))  # its own error, not TypeError
        """,
        "raised TypeError",
        "raised UseAfterFreeError",
    )


# --- 5. exports against ownership changes ---------------------------------------------


def test_detach_while_exported_raises_buffer_error_and_changes_nothing() -> None:
    run(
        """
        n = BIG
        p = malloc(Uint8, n)
        live = malloc.stats().live_count
        m = memoryview(p)
        expect(BufferError, lambda: p.detach())
        assert p.alive and p.allocator is malloc and malloc.stats().live_count == live
        c = (ctypes.c_uint8 * n).from_buffer(p)
        m.release()
        expect(BufferError, lambda: p.detach())
        del c
        a = p.detach()  # no export left: allowed
        q = malloc.adopt(a, Uint8, n)
        q[-1] = 7
        assert q[-1] == 7
        free(q)
        """,
        "raised BufferError",
    )


def test_the_issue_reproducer_no_longer_crashes() -> None:
    run(
        """
        n = BIG
        p = malloc(Uint8, n)
        m = memoryview(p)
        expect(BufferError, lambda: p.detach())
        free(p)           # dead at once, memory kept for the export
        m[-1] = 1
        assert m[-1] == 1
        m.release()
        """,
        "raised BufferError",
    )


def test_every_ownership_change_against_an_export() -> None:
    run(
        """
        # realloc: refused while exported
        p = malloc(Uint8, BIG)
        m = memoryview(p)
        expect(BufferError, lambda: malloc.realloc(p, 16))
        assert p.alive
        # autofree: the export keeps the block until it goes
        before = malloc.stats().live_count
        p.autofree()
        del p
        gc.collect()
        assert malloc.stats().live_count == before
        m[-1] = 3
        assert m[-1] == 3
        m.release()
        del m
        gc.collect()
        assert malloc.stats().live_count == before - 1
        # an arena over malloc: detach from the arena keeps the export valid
        arena = Arena(malloc)
        r = arena(Uint8, BIG)
        m = memoryview(r)
        arena.detach(r)
        arena.release_all()
        assert r.alive and r.allocator is malloc
        expect(BufferError, lambda: r.detach())
        m[-1] = 4
        m.release()
        free(r)
        # the arena's release with an export out: dead at once, memory kept
        arena = Arena(malloc)
        r = arena(Uint8, BIG)
        m = memoryview(r)
        arena.release_all()
        assert not r.alive
        m[-1] = 5
        assert m[-1] == 5
        m.release()
        # a bump region: never detaches, exported or not
        arena = Arena()
        r = arena(Uint8, BIG)
        m = memoryview(r)
        expect(OwnershipError, lambda: r.detach())
        arena.release_all()
        m[-1] = 6
        m.release()
        """,
        "raised BufferError",
        "raised OwnershipError",
    )


def test_numpy_export_blocks_detach() -> None:
    pytest.importorskip("numpy")
    run(
        """
        import numpy as np
        p = malloc(Int32, 4)
        a = np.asarray(p)
        expect(BufferError, lambda: p.detach())
        del a
        gc.collect()
        free(malloc.adopt(p.detach(), Int32, 4))
        """,
        "raised BufferError",
    )


# --- 10. numpy values ------------------------------------------------------------------


def test_numpy_scalars_are_their_python_counterparts() -> None:
    pytest.importorskip("numpy")
    run(
        """
        import numpy as np
        b = calloc(Bool, 4)
        b[0] = np.True_
        b[1] = np.False_
        b[2:4] = [np.True_, np.bool_(True)]
        assert b[:] == [True, False, True, True]
        i = calloc(Int32, 4)
        i[0] = np.True_
        i[1] = np.int64(-5)
        i[2] = np.uint8(200)
        i[3] = np.int16(7)
        assert i[:] == [1, -5, 200, 7]
        expect(OverflowError, lambda: i.__setitem__(0, np.int64(2**40)))
        expect(TypeError, lambda: i.__setitem__(0, np.float64(1.0)))
        expect(TypeError, lambda: i.__setitem__(0, np.float32(1.0)))
        expect(OverflowError, lambda: b.__setitem__(0, np.int64(2)))
        u = calloc(Uint64, 1)
        u[0] = np.uint64(2**64 - 1)
        assert u[0] == 2**64 - 1
        expect(OverflowError, lambda: u.__setitem__(0, np.int64(-1)))
        s = calloc(Int8, 1)
        expect(OverflowError, lambda: s.__setitem__(0, np.int64(128)))
        f = calloc(Float32, 3)
        f[0] = np.float64(1.5)
        f[1] = np.float32(2.5)
        f[2] = np.True_
        assert f[:] == [1.5, 2.5, 1.0]
        expect(OverflowError, lambda: f.__setitem__(0, np.float64(1e300)))
        print("ok")
        """,
        "ok",
        "raised OverflowError",
        "raised TypeError",
    )


def test_pointer_plus_numpy_integer_is_a_pointer() -> None:
    pytest.importorskip("numpy")
    run(
        """
        import numpy as np
        p = malloc(Int32, 8)
        for n in (np.int64(2), np.int32(2), np.uint8(2), np.intp(2)):
            for q in (p + n, n + p):
                assert type(q) is Pointer, type(q)
                assert q.address == p.address + 8 and q.count == 6
        assert type(3 + p) is Pointer and (3 + p).count == 5
        expect(TypeError, lambda: p + np.float64(1))
        expect(TypeError, lambda: np.float64(1) + p)
        expect(IndexError, lambda: p + np.int64(9))
        expect(IndexError, lambda: np.int64(-1) + p)
        print("ok")
        """,
        "ok",
        "raised TypeError",
        "raised IndexError",
    )


def test_numpy_asarray_of_dead_and_live_pointers() -> None:
    pytest.importorskip("numpy")
    run(
        """
        import numpy as np
        p = malloc(Int32, BIG // 4)
        free(p)
        expect(UseAfterFreeError, lambda: np.asarray(p))
        expect(UseAfterFreeError, lambda: np.array(p))
        expect(BufferError, lambda: np.asarray(Pointer.from_address(p.address, Int32)))
        arena = Arena()
        r = arena(Float64, 4)
        arena.release_all()
        expect(UseAfterFreeError, lambda: np.asarray(r))
        # asked for objects, numpy holds the Pointers themselves, dead or foreign
        q = Pointer.from_address(4096, Int32)
        objs = np.array([p, q, r], dtype=object)
        assert objs.shape == (3,) and objs[0] is p and objs[1] is q and objs[2] is r
        assert np.asarray(q, dtype=object)[()] is q

        # live: zero-copy, writable, right dtype and shape, and it pins
        p = malloc(Int32, BIG // 4)
        a = np.asarray(p)
        assert a.dtype == np.int32 and a.shape == (BIG // 4,) and a.flags.writeable
        a[-1] = 41
        assert p[-1] == 41
        p[0] = 5
        assert a[0] == 5
        via = p.__array__()  # the interface numpy falls back to
        assert via.dtype == np.int32 and via.shape == a.shape
        via[1] = 9
        assert p[1] == 9
        c = p.__array__(np.float64)
        assert c.dtype == np.float64 and c[1] == 9.0
        free(p)
        assert not p.alive
        a[-1] += 1       # the array keeps the memory alive
        via[-2] = 1
        assert a[-1] == 42
        del a, via
        print("ok")
        """,
        "ok",
        "raised UseAfterFreeError",
        "raised BufferError",
    )


# --- explicit lengths on views of unknown count, view(), None as NULL ---------------------


def test_explicit_lengths_on_foreign_memory() -> None:
    run(
        """
        buf = ctypes.create_string_buffer(b"hello\\x00world", 16)
        addr = ctypes.addressof(buf)
        v = Pointer.from_address(addr, Uint8)
        assert v.count is None
        assert v.read_bytes(5) == b"hello" == ctypes.string_at(addr, 5)
        assert v.to_str() == "hello"
        assert v.to_str(5) == "hello"
        assert v.to_str(11) == "hello\\x00world"  # exactly length bytes, NULs included
        v.write_bytes(b"HEL")
        assert ctypes.string_at(addr, 5) == b"HELlo"
        v.write_bytes(b"!!", 9)
        assert ctypes.string_at(addr, 11) == b"HELlo\\x00wor!!"
        v.copy_from(b"ab")
        assert ctypes.string_at(addr, 3) == b"abL"
        src = malloc(Uint8, 3)
        src.write_bytes(b"xyz")
        v.copy_from(src)
        assert ctypes.string_at(addr, 4) == b"xyzl"
        w = Pointer.from_address(addr, Uint16)
        assert w.to_str(1) == bytes([ord("x"), ord("y")]).decode("utf-16-le")
        expect(IndexError, lambda: v.read_bytes(2**63))
        expect(ValueError, lambda: v.read_bytes(-1))
        expect(TypeError, lambda: v.read_bytes())   # no length known, none stated
        expect(TypeError, lambda: v.fill(0))
        expect(TypeError, lambda: malloc(Uint8, 4).copy_from(v))  # the source states no length
        print("ok")
        """,
        "ok",
        "raised IndexError",
        "raised TypeError",
    )


def test_view_of_known_count() -> None:
    run(
        """
        p = malloc(Int32, 8)
        p[:] = list(range(8))
        assert p.view().count == 8 and p.view()[:] == p[:]
        v = p.view(2, 3)
        assert v.count == 3 and v[:] == [2, 3, 4] and v.address == p.address + 8
        assert p.view(2).count == 6 and p.view(8).count == 0 and p.view(8, 0).count == 0
        assert v.allocator is malloc
        v[0] = 20
        assert p[2] == 20
        expect(IndexError, lambda: v[3])
        expect(IndexError, lambda: p.view(9))
        expect(IndexError, lambda: p.view(2, 7))
        expect(IndexError, lambda: p.view(0, 2**62))
        expect(ValueError, lambda: p.view(-1))
        expect(ValueError, lambda: p.view(0, -1))
        expect(TypeError, lambda: p.view(1.5))
        expect(OwnershipError, lambda: free(p.view(1)))
        w = p.view(0, 4)
        free(w)  # a view at the start is the block, as p + 0 is
        expect(UseAfterFreeError, lambda: p[0])
        expect(UseAfterFreeError, lambda: v[0])
        expect(UseAfterFreeError, lambda: p.view(1))
        # bytes of a Void pointer
        b = malloc.allocate(16).cast(Void)
        assert b.view(4, 8).nbytes == 8 and b.view(4).nbytes == 12
        # an arena block
        arena = Arena()
        r = arena(Uint8, 16)
        rv = r.view(4, 4)
        arena.release_all()
        expect(UseAfterFreeError, lambda: rv[0])
        print("ok")
        """,
        "ok",
        "raised IndexError",
        "raised ValueError",
        "raised OwnershipError",
        "raised UseAfterFreeError",
    )


def test_view_states_the_length_of_foreign_memory() -> None:
    pytest.importorskip("numpy")
    run(
        """
        buf = (ctypes.c_int32 * 6)(0, 1, 2, 3, 4, 5)
        v = Pointer.from_address(ctypes.addressof(buf), Int32)
        expect(TypeError, lambda: len(v))
        w = v.view(1, 4)
        assert w.count == 4 and len(w) == 4 and w[:] == [1, 2, 3, 4] and w[-1] == 4
        expect(IndexError, lambda: w[4])
        assert w.read_bytes() == bytes(buf)[4:20]
        assert v.view(2).count is None and v.view(2)[0] == 2
        import numpy as np
        assert np.asarray(w).tolist() == [1, 2, 3, 4]
        expect(OverflowError, lambda: v.view(0, 2**61))
        print("ok")
        """,
        "ok",
        "raised IndexError",
        "raised OverflowError",
    )


def test_none_is_null_in_address_arguments() -> None:
    run(
        """
        assert Pointer.from_address(None, Int32).is_null
        assert Pointer.from_address(None, Int32, 0).is_null
        expect(NullPointerError, lambda: malloc.adopt(None, Uint8, 4))
        expect(NullPointerError, lambda: Arena(malloc).adopt(None, Uint8, 4))

        class Null(Allocator):
            def _raw_alloc(self, nbytes, alignment):
                return None      # what a c_void_p function gives for NULL
            def _raw_free(self, address):
                raise AssertionError("never called")
        expect(MemoryError, lambda: Null()(Int32, 4))

        f = ForeignAllocator(lambda n: None, lambda address: None)
        expect(MemoryError, lambda: f.allocate(16))
        assert f.stats().live_count == 0
        """,
        "raised NullPointerError",
        "raised MemoryError",
    )
