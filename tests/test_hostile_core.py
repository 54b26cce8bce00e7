"""Hostile input against the core (issue 15): each class of crash, abort or
leak a hostile caller found, attacked from every angle we could derive.
Cases that could crash the interpreter run in a subprocess that must exit 0
after printing what it saw."""

from __future__ import annotations

import ctypes
import gc
import subprocess
import sys
import textwrap
import warnings

import pytest

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
