"""Leak tracking (DESIGN §7, issue 4): the switch, records, filters, reports,
leak_check, better error messages, the environment switch, the exit report
and the pytest plugin (the last three in subprocesses)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import rsalloc
from rsalloc import tracking
from rsalloc.tracking import by_address, by_allocator, by_type, in_traceback

HERE = __file__


def line() -> int:
    """The caller's line number."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


@pytest.fixture(autouse=True)
def switched_off() -> Iterator[None]:
    tracking.disable()
    yield
    tracking.disable()


def mine(*pointers: rsalloc.Pointer) -> list[tracking.LeakRecord]:
    addrs = {p.address for p in pointers}
    return [r for r in rsalloc.leaks() if r.address in addrs]


def run(code: str, env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("RSALLOC_")}
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=e, cwd=cwd, timeout=120
    )


# -- the switch ---------------------------------------------------------------


def test_enable_disable_and_frames() -> None:
    assert not tracking.is_enabled()
    tracking.enable(frames=3)
    assert tracking.is_enabled() and tracking.frames() == 3
    tracking.enable(1000)
    assert tracking.frames() == 128  # capped
    tracking.disable()
    assert not tracking.is_enabled()


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)])
def test_enable_rejects_bad_frames_and_changes_nothing(bad: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        tracking.enable(bad)  # type: ignore[arg-type]
    assert not tracking.is_enabled()


def test_nothing_is_recorded_while_off() -> None:
    before = tracking._rsalloc._track_seq()
    p = rsalloc.malloc.allocate(16)
    q = rsalloc.adaptive_calloc(rsalloc.Int32, 2)
    assert mine(p, q) == []
    assert tracking._rsalloc._track_seq() == before
    assert "allocated at" not in _double_free_message(p)
    rsalloc.free(q)


# -- records ------------------------------------------------------------------


def test_a_record_has_every_field() -> None:
    tracking.enable(frames=4)
    t0 = time.time()
    p = rsalloc.calloc(rsalloc.Int32, 5); where = line()  # noqa: E702
    (r,) = mine(p)
    assert (r.address, r.size, r.type, r.allocator) == (p.address, 20, "Int32", "calloc")
    assert t0 - 1 <= r.time <= time.time() + 1
    assert r.thread == threading.get_ident() and r.thread_name == threading.current_thread().name
    assert r.traceback[0] == (HERE, where, "test_a_record_has_every_field")
    assert 1 <= len(r.traceback) <= 4
    assert r.location == f"{HERE}:{where} in test_a_record_has_every_field"
    rsalloc.free(p)
    assert mine(p) == []


def _nested(depth: int, frames: int) -> tracking.LeakRecord:
    if depth:
        return _nested(depth - 1, frames)
    p = rsalloc.malloc.allocate(1)
    (r,) = mine(p)
    rsalloc.free(p)
    return r


@pytest.mark.parametrize("frames", [0, 1, 5])
def test_the_traceback_has_the_asked_frames(frames: int) -> None:
    tracking.enable(frames)
    r = _nested(8, frames)
    assert len(r.traceback) == frames
    assert [fn for _, _, fn in r.traceback] == ["_nested"] * frames


def test_a_dropped_pointer_is_a_leak() -> None:
    # In a subprocess: the leaked record must stay, and would pollute this one.
    code = """
        import gc, rsalloc
        rsalloc.tracking.enable()
        p = rsalloc.malloc.allocate(24)
        addr = p.address
        del p
        gc.collect()
        (r,) = rsalloc.leaks(rsalloc.tracking.by_address(addr))
        print(r.size, r.type, r.address == addr)
        rsalloc.tracking.disable()
    """
    r = run(code)
    assert (r.stdout, r.stderr) == ("24 Uint8 True\n", "")


def test_free_paths_leave_the_registry(libc) -> None:
    tracking.enable()
    a = rsalloc.malloc(rsalloc.Int16, 4)
    rsalloc.calloc.free(a)  # same owner group
    assert mine(a) == []

    b = rsalloc.malloc(rsalloc.Int16, 4)
    c = rsalloc.calloc.realloc(b, 100)
    assert mine(b) == [] or mine(b)[0].size == 200  # realloc may keep the address
    (rc,) = mine(c)
    assert (rc.size, rc.type, rc.allocator) == (200, "Int16", "calloc")
    addr = c.detach()
    assert mine(c) == []
    libc.free(addr)

    d = rsalloc.malloc.allocate(8).autofree()
    assert mine(d) == []  # the garbage collector owns it: it cannot leak
    del d

    e = rsalloc.malloc.allocate(8)
    with pytest.raises(rsalloc.OwnershipError):
        rsalloc.free(e + 1)
    assert len(mine(e)) == 1  # a refused free changes nothing
    rsalloc.free(e)
    assert mine(e) == []


def test_allocations_made_before_enable_are_not_records() -> None:
    p = rsalloc.malloc.allocate(8)
    tracking.enable()
    assert mine(p) == []
    rsalloc.free(p)


def test_records_stay_after_disable_and_go_at_free() -> None:
    tracking.enable()
    p = rsalloc.malloc.allocate(8)
    tracking.disable()
    assert len(mine(p)) == 1
    rsalloc.free(p)
    assert mine(p) == []


def test_adopt_and_strings_are_recorded(libc) -> None:
    tracking.enable()
    s = rsalloc.to_native_utf8("héllo"); where = line()  # noqa: E702
    (r,) = mine(s)
    assert (r.size, r.type, r.traceback[0][1]) == (7, "Uint8", where)
    addr = libc.strdup(b"abc")
    q = rsalloc.malloc.adopt(addr, rsalloc.Uint8, 4)
    assert mine(q)[0].type == "Uint8"
    rsalloc.free(q)
    rsalloc.free(s)


def test_adaptive_allocators_record_exactly_when_on() -> None:
    assert rsalloc.adaptive_malloc.native_free == rsalloc.malloc.native_free
    p = rsalloc.adaptive_malloc.allocate(8)
    assert mine(p) == []
    tracking.enable()
    q = rsalloc.adaptive_calloc(rsalloc.Uint8, 8)
    assert q[:] == [0] * 8
    assert [r.allocator for r in mine(q)] == ["adaptive_calloc"]
    rsalloc.malloc.free(q)  # libc owner group
    rsalloc.adaptive_malloc.free(p)
    assert mine(p, q) == []


def test_diagnostic_allocators_always_record() -> None:
    p = rsalloc.diagnostic_malloc(rsalloc.Float64, 2)
    q = rsalloc.diagnostic_calloc.allocate(3)
    assert [(r.allocator, r.type, r.size) for r in mine(p, q)] == [
        ("diagnostic_malloc", "Float64", 16),
        ("diagnostic_calloc", "Uint8", 3),
    ]
    assert mine(p)[0].traceback  # a traceback although the switch is off
    rsalloc.free(p)
    rsalloc.free(q)
    assert mine(p, q) == []


def test_arena_memory_is_not_recorded() -> None:
    tracking.enable()
    with rsalloc.Arena() as arena:
        p = arena.allocate(8)
        assert mine(p) == []
    with rsalloc.Arena(rsalloc.malloc) as arena:
        q = arena(rsalloc.Int32, 2)
        assert mine(q) == []


def test_a_block_detached_from_an_arena_is_recorded_as_its_allocators() -> None:
    tracking.enable()
    with rsalloc.Arena(rsalloc.malloc) as arena:
        q = arena.detach(arena(rsalloc.Int32, 2))
    [rec] = mine(q)
    assert (rec.allocator, rec.type, rec.size) == ("malloc", "Int32", 8)
    rsalloc.free(q)
    assert mine(q) == []


def test_threads_record_their_name_and_the_registry_stays_exact() -> None:
    tracking.enable(2)
    start = tracking._rsalloc._track_seq()
    kept: list[rsalloc.Pointer] = []

    def work() -> None:
        for i in range(500):
            p = rsalloc.malloc.allocate(i % 9)
            if i == 7:
                kept.append(p)
            else:
                rsalloc.free(p)

    threads = [threading.Thread(target=work, name=f"worker-{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    live = [r for r in rsalloc.leaks() if r.sequence >= start]
    assert sorted(r.thread_name or "" for r in live) == [f"worker-{i}" for i in range(4)]
    assert {r.thread for r in live} == {t.ident for t in threads}
    for p in kept:
        rsalloc.free(p)
    assert [r for r in rsalloc.leaks() if r.sequence >= start] == []


# -- filters and reports ------------------------------------------------------


def test_filters_compose() -> None:
    tracking.enable()
    a = rsalloc.malloc(rsalloc.Int32, 4)
    b = rsalloc.calloc(rsalloc.Float64, 1)
    c = rsalloc.adaptive_malloc.allocate(3)
    ours = by_address(a) | by_address(b) | by_address(c)
    assert {r.address for r in rsalloc.leaks(ours)} == {a.address, b.address, c.address}
    assert [r.address for r in rsalloc.leaks(ours & by_allocator(rsalloc.malloc))] == [a.address]
    assert [r.address for r in rsalloc.leaks(ours & by_allocator("calloc", "adaptive_malloc") & ~by_type(rsalloc.Uint8))] == [b.address]
    assert [r.address for r in rsalloc.leaks(ours & by_type("Uint8", rsalloc.Int32) & ~by_allocator(rsalloc.malloc))] == [c.address]
    assert [r.address for r in rsalloc.leaks(by_address((a + 3).address))] == [a.address]  # interior address
    assert rsalloc.leaks(ours & in_traceback("test_filters_compose")) == rsalloc.leaks(ours)
    assert rsalloc.leaks(ours & in_traceback("no_such_function")) == []
    assert rsalloc.leaks(ours & (lambda r: r.size == 8)) == rsalloc.leaks(by_address(b))
    assert [r.address for r in rsalloc.leaks(lambda r: r.address == c.address)] == [c.address]
    with pytest.raises(TypeError):
        rsalloc.leaks(42)
    for p in (a, b, c):
        rsalloc.free(p)
    assert rsalloc.leaks(ours) == []


def test_text_report_is_largest_first_with_a_summary() -> None:
    tracking.enable()
    small = rsalloc.malloc.allocate(10); small_line = line()  # noqa: E702
    big = rsalloc.malloc(rsalloc.Int64, 100)
    report = rsalloc.leak_report(filter=by_address(small) | by_address(big))
    lines = report.splitlines()
    assert lines[0].startswith(f"800 bytes (Int64) at {big.address:#x} from malloc, thread MainThread")
    assert f"    {HERE}:{small_line} in test_text_report_is_largest_first_with_a_summary" in lines
    assert report.index("800 bytes") < report.index("10 bytes")
    assert lines[-1] == "rsalloc: 2 leaks, 810 bytes in total"
    rsalloc.free(small)
    rsalloc.free(big)
    assert rsalloc.leak_report(filter=by_address(small)).splitlines() == ["rsalloc: 0 leaks, 0 bytes in total"]
    with pytest.raises(ValueError):
        rsalloc.leak_report(format="xml")  # type: ignore[arg-type]


def test_json_report_schema() -> None:
    tracking.enable(2)
    p = rsalloc.calloc(rsalloc.Uint16, 3); where = line()  # noqa: E702
    q = rsalloc.malloc.allocate(64)
    doc = json.loads(rsalloc.leak_report("json", filter=by_address(p) | by_address(q)))
    assert doc["schema_version"] == tracking.SCHEMA_VERSION == 1
    assert doc["summary"] == {"count": 2, "bytes": 70, "unrecorded": 0}
    assert [e["size"] for e in doc["leaks"]] == [64, 6]
    e = doc["leaks"][1]
    assert set(e) == {"sequence", "address", "size", "type", "allocator", "time", "timestamp", "thread", "traceback"}
    assert (e["address"], e["type"], e["allocator"]) == (p.address, "Uint16", "calloc")
    assert e["thread"] == {"id": threading.get_ident(), "name": "MainThread"}
    assert e["traceback"][0] == {"file": HERE, "line": where, "function": "test_json_report_schema"}
    assert e["time"].endswith("+00:00") and isinstance(e["timestamp"], float)
    rsalloc.free(p)
    rsalloc.free(q)


# -- leak_check ---------------------------------------------------------------


def test_leak_check_names_each_leak_and_restores_the_switch() -> None:
    with pytest.raises(rsalloc.LeakError) as info:
        with rsalloc.leak_check():
            assert tracking.is_enabled()
            p = rsalloc.malloc.allocate(5); where = line()  # noqa: E702
            ok = rsalloc.malloc.allocate(6)
            rsalloc.free(ok)
    assert not tracking.is_enabled()
    msg = str(info.value)
    assert msg.startswith("1 allocation made inside leak_check() still live (5 bytes):")
    assert f"{HERE}:{where}" in msg and f"{p.address:#x}" in msg
    assert [r.address for r in info.value.leaks] == [p.address]
    rsalloc.free(p)


def test_leak_check_passes_when_everything_is_freed_and_ignores_older_blocks() -> None:
    tracking.enable(3)
    old = rsalloc.malloc.allocate(4)
    with rsalloc.leak_check(frames=1):
        assert tracking.frames() == 1
        p = rsalloc.calloc(rsalloc.Int8, 3)
        rsalloc.free(p)
    assert tracking.is_enabled() and tracking.frames() == 3
    rsalloc.free(old)


def test_leak_check_does_not_mask_an_exception() -> None:
    with pytest.raises(KeyError):
        with rsalloc.leak_check():
            p = rsalloc.malloc.allocate(4)
            raise KeyError("boom")
    assert not tracking.is_enabled()
    rsalloc.free(p)


def test_leak_check_as_a_decorator_and_nested() -> None:
    leaked: list[rsalloc.Pointer] = []

    @rsalloc.leak_check()
    def leaky() -> None:
        leaked.append(rsalloc.malloc.allocate(1))

    with pytest.raises(rsalloc.LeakError, match="test_leak_check_as_a_decorator_and_nested.<locals>.leaky"):
        leaky()
    with pytest.raises(rsalloc.LeakError) as outer:
        with rsalloc.leak_check():
            with rsalloc.leak_check():
                pass
            leaked.append(rsalloc.malloc.allocate(2))
    assert [r.size for r in outer.value.leaks] == [2]
    for p in leaked:
        rsalloc.free(p)


def test_leak_check_filter() -> None:
    keep = []
    with rsalloc.leak_check(filter=~by_allocator("adaptive_malloc")):
        keep.append(rsalloc.adaptive_malloc.allocate(3))
    rsalloc.free(keep[0])


# -- better error messages ----------------------------------------------------


def _double_free_message(p: rsalloc.Pointer) -> str:
    rsalloc.free(p)
    with pytest.raises(rsalloc.DoubleFreeError) as info:
        rsalloc.free(p)
    return str(info.value)


def test_use_after_free_and_double_free_name_both_sites() -> None:
    tracking.enable()
    p = rsalloc.malloc(rsalloc.Int32, 2); alloc_line = line()  # noqa: E702
    v = p + 1
    rsalloc.free(p); free_line = line()  # noqa: E702
    with pytest.raises(rsalloc.UseAfterFreeError) as uaf:
        v[0] = 1
    name = "test_use_after_free_and_double_free_name_both_sites"
    want = f"allocated at {HERE}:{alloc_line} in {name}; freed at {HERE}:{free_line} in {name}"
    assert want in str(uaf.value)
    assert f"Pointer[Int32] at {v.address:#x}" in str(uaf.value)
    with pytest.raises(rsalloc.DoubleFreeError) as df:
        rsalloc.malloc.free(p)
    assert want in str(df.value)


def test_realloc_names_where_the_block_moved() -> None:
    tracking.enable()
    p = rsalloc.malloc.allocate(4)
    q = rsalloc.malloc.realloc(p, 4096); moved = line()  # noqa: E702
    with pytest.raises(rsalloc.UseAfterFreeError, match=f"reallocated.*freed at {HERE}:{moved}"):
        p[0]
    rsalloc.free(q)


def test_a_block_freed_under_tracking_names_the_free_site_only() -> None:
    p = rsalloc.malloc.allocate(4)
    tracking.enable()
    msg = _double_free_message(p)
    assert "allocated at" not in msg and f"freed at {HERE}:" in msg


# -- subprocesses: environment, exit report, plugin ---------------------------


def test_environment_switch() -> None:
    code = "import rsalloc; print(rsalloc.tracking.is_enabled(), rsalloc.tracking.frames())"
    assert run(code, {"RSALLOC_TRACK": "1", "RSALLOC_TRACK_FRAMES": "3"}).stdout.split() == ["True", "3"]
    assert run(code, {"RSALLOC_TRACK": "1"}).stdout.split() == ["True", str(tracking.DEFAULT_FRAMES)]
    assert run(code, {"RSALLOC_TRACK": "0"}).stdout.split()[0] == "False"
    assert run(code).stdout.split()[0] == "False"
    bad = run(code, {"RSALLOC_TRACK": "1", "RSALLOC_TRACK_FRAMES": "many"})
    assert bad.stdout.split() == ["True", str(tracking.DEFAULT_FRAMES)] and "RSALLOC_TRACK_FRAMES" in bad.stderr


def test_exit_report_goes_to_stderr_when_something_leaked() -> None:
    code = """
        import rsalloc
        def make():
            return rsalloc.malloc(rsalloc.Int32, 8)
        kept = make()
        lost = rsalloc.calloc.allocate(3)
        del lost
        freed = rsalloc.malloc.allocate(100)
        rsalloc.free(freed)
        print("done")
    """
    r = run(code, {"RSALLOC_TRACK": "1"})
    assert r.returncode == 0 and r.stdout == "done\n"
    err = r.stderr.splitlines()
    assert err[0] == "rsalloc: native memory still allocated at exit"
    assert err[1].startswith("32 bytes (Int32) at 0x")
    assert err[2] == '    <string>:4 in make' and err[3] == "    <string>:5 in <module>"
    assert err[4].startswith("3 bytes (Uint8)") and err[5] == "    <string>:6 in <module>"
    assert err[-1] == "rsalloc: 2 leaks, 35 bytes in total"


def test_exit_report_is_silent_when_nothing_leaked_or_tracking_is_off() -> None:
    clean = "import rsalloc; p = rsalloc.malloc.allocate(8); rsalloc.free(p)"
    assert run(clean, {"RSALLOC_TRACK": "1"}).stderr == ""
    leaky = "import rsalloc; p = rsalloc.malloc.allocate(8)"
    assert run(leaky).stderr == ""
    off_again = "import rsalloc; p = rsalloc.malloc.allocate(8); rsalloc.tracking.disable()"
    assert run(off_again, {"RSALLOC_TRACK": "1"}).stderr == ""


PLUGIN_TESTS = """
    import pytest
    import rsalloc

    KEEP = []

    def test_clean():
        p = rsalloc.malloc.allocate(16)
        rsalloc.free(p)

    def test_leaky():
        KEEP.append(rsalloc.malloc(rsalloc.Int64, 2))

    @pytest.mark.no_rsalloc_leaks
    def test_opted_out():
        KEEP.append(rsalloc.malloc.allocate(1))

    @pytest.mark.rsalloc_leaks
    def test_opted_in():
        KEEP.append(rsalloc.calloc.allocate(7))

    def test_fails_by_itself():
        KEEP.append(rsalloc.malloc.allocate(2))
        assert False, "own failure"
"""


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_leaky.py").write_text(textwrap.dedent(PLUGIN_TESTS))
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RSALLOC_", "PYTEST_"))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, "test_leaky.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=e,
        timeout=120,
    )


def test_pytest_plugin_fails_leaking_tests(tmp_path: Path) -> None:
    r = _pytest(tmp_path, "-p", "rsalloc.pytest_plugin", "--rsalloc-leaks")
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert "3 failed, 2 passed" in out
    assert "FAILED test_leaky.py::test_leaky - rsalloc._errors.LeakError" in out
    assert "FAILED test_leaky.py::test_opted_in" in out
    assert "FAILED test_leaky.py::test_fails_by_itself - AssertionError: own failure" in out
    assert "1 allocation made inside test test_leaky.py::test_leaky still live (16 bytes)" in out
    assert "16 bytes (Int64)" in out and "test_leaky.py:12 in test_leaky" in out


def test_pytest_plugin_is_off_without_the_option(tmp_path: Path) -> None:
    r = _pytest(tmp_path)  # the entry point loads the plugin: only the marked test is checked
    assert "2 failed, 3 passed" in r.stdout, r.stdout + r.stderr
    assert "FAILED test_leaky.py::test_opted_in" in r.stdout
    assert "test_leaky.py:20 in test_opted_in" in r.stdout
