"""Where `Arena()` records it was made: the line its ResourceWarning names
when it is collected unreleased (the fence's `arena_finalizer` warns). With
the fence's `caller_frames` on, the code object and instruction offset are
read from the interpreter's frame record (no frame object made); off
(RSALLOC_CALLER_FRAMES=0, in a child process here), through the frame
object. Either way the line is the one of the `Arena()` call, wherever that
call runs."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest

import rsalloc
from rsalloc import _rsalloc

from _native import needs_fast_path

MARK = "# <- made here"

pytestmark = needs_fast_path("arena_finalizer")


def _made_lines(src: str, run) -> list[int]:  # type: ignore[no-untyped-def]
    """Runs `src` (defining `go`), then `run(go)`; the lines named by the
    ResourceWarnings of the arenas it left unreleased, and the lines marked."""
    code = compile(textwrap.dedent(src), "<frames-test>", "exec")
    ns: dict[str, object] = {"rsalloc": rsalloc, "Arena": rsalloc.Arena}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        exec(code, ns)
        run(ns["go"])
        gc.collect()
    made = []
    for w in seen:
        msg = str(w.message)
        if "garbage-collected unreleased" in msg and "<frames-test>:" in msg:
            made.append(int(msg.split("<frames-test>:")[1].split(")")[0]))
    return sorted(made)


def _marked(src: str) -> list[int]:
    return [i for i, line in enumerate(textwrap.dedent(src).splitlines(), 1) if MARK in line]


CASES = {
    "function": """
        def go():
            a = Arena()  # <- made here
            a(rsalloc.Uint8, 4)
        """,
    "nested function, second statement of a line": """
        def go():
            def inner():
                x = 1; a = Arena(); a(rsalloc.Uint8, 1)  # <- made here
            inner()
        """,
    "loop of calls": """
        def one():
            Arena()(rsalloc.Uint8, 1)  # <- made here
        def go():
            for _ in range(3):
                one()
        """,
    "generator": """
        def gen():
            yield Arena()  # <- made here
        def go():
            for a in gen():
                a(rsalloc.Uint8, 1)
        """,
    "coroutine": """
        async def co():
            await asyncio.sleep(0)
            a = Arena()  # <- made here
            a(rsalloc.Uint8, 1)
        def go():
            asyncio.run(co())
        """,
    "lambda and comprehension": """
        make = lambda: Arena()  # <- made here
        def go():
            held = [make() for _ in range(2)]
            keep = [Arena() for _ in range(2)]  # <- made here
            for a in held + keep:
                a(rsalloc.Uint8, 1)
        """,
    "class body": """
        def go():
            class C:
                a = Arena()  # <- made here
            C.a(rsalloc.Uint8, 1)
        """,
    "a thread": """
        def work():
            Arena()(rsalloc.Uint8, 1)  # <- made here
        def go():
            t = threading.Thread(target=work)
            t.start()
            t.join()
        """,
}


@pytest.mark.parametrize("name", list(CASES))
def test_an_unreleased_arena_names_the_line_that_made_it(name: str) -> None:
    src = "import asyncio, threading\n" + textwrap.dedent(CASES[name])
    made = _made_lines(src, lambda go: go())
    marked = _marked(src)
    # Every marked line made at least one arena, and no other line did.
    assert sorted(set(made)) == marked, (made, marked)


def test_the_line_is_the_one_the_frame_object_gives() -> None:
    # Beside the public answer at the same point: f_lineno of the frame
    # one level up is the line of the call that is running.
    seen = []

    def go():
        seen.append(sys._getframe().f_lineno + 1)
        a = Arena()  # the next line after the one recorded above
        a(rsalloc.Uint8, 1)

    def run():
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            go()
            gc.collect()
        return [str(x.message) for x in w]

    msgs = run()
    assert any(f"{__file__}:{seen[0]})" in m for m in msgs), (msgs, seen)


CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
import test_caller_frames as t
from rsalloc import _rsalloc
out = {{"state": _rsalloc._fast_paths()["caller_frames"]}}
for name, src in t.CASES.items():
    src = "import asyncio, threading\\n" + t.textwrap.dedent(src)
    out[name] = t._made_lines(src, lambda go: go())
print(json.dumps(out))
"""


def test_the_frame_object_route_names_the_same_lines() -> None:
    # The same cases in a process with this one trick off: the lines agree.
    import json

    env = dict(os.environ, RSALLOC_CALLER_FRAMES="0")
    child = CHILD.format(tests=os.path.dirname(__file__))
    r = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out.pop("state") == {"active": False, "reason": "RSALLOC_CALLER_FRAMES=0 at import"}
    here = {name: _made_lines("import asyncio, threading\n" + textwrap.dedent(src), lambda go: go()) for name, src in CASES.items()}
    assert out == here


def test_the_trick_reports_why_when_off() -> None:
    state = _rsalloc._fast_paths()["caller_frames"]
    assert set(state) >= {"active", "reason"}
    if not state["active"]:
        assert state["reason"]


Arena = rsalloc.Arena
