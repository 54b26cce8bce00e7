"""Leak tracking and diagnostics (DESIGN §7, docs/tracking.md).

While tracking is on, every allocation that must be freed (the libc family,
custom allocators; not arena memory) is recorded with its address, size,
element type, allocator, time, thread and the Python traceback of the
allocation. ``diagnostic_malloc``/``diagnostic_calloc`` record always.

The traceback is captured as (code object, instruction offset) pairs and
resolved to file:line only here, when records are listed or reported.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from . import _rsalloc
from ._constants import DEFAULT_FRAMES  # frames per allocation unless told otherwise
from ._errors import LeakError

__all__ = [
    "DEFAULT_FRAMES",
    "SCHEMA_VERSION",
    "LeakFilter",
    "LeakRecord",
    "by_address",
    "by_allocator",
    "by_type",
    "disable",
    "enable",
    "frames",
    "in_traceback",
    "is_enabled",
    "leak_check",
    "leak_report",
    "leaks",
]

#: Version of the JSON report's schema (docs/tracking.md); bumped on any
#: incompatible change, never for added keys.
SCHEMA_VERSION = 1

Frame = tuple[str, int, str]


@dataclass(frozen=True)
class LeakRecord:
    """A live tracked allocation, or an arena made while tracking was on and
    not released yet (type ``"Arena"``, address 0, size its live bytes).

    ``traceback`` lists ``(file, line, function)`` innermost first:
    ``traceback[0]`` is the line that allocated.
    """

    address: int
    size: int
    type: str
    allocator: str
    time: float
    thread: int
    thread_name: str | None
    traceback: list[Frame] = field(default_factory=list)
    sequence: int = 0

    @property
    def location(self) -> str:
        """``file:line in function`` of the allocation, or ``<unknown>``."""
        if not self.traceback:
            return "<unknown>"
        file, line, func = self.traceback[0]
        return f"{file}:{line} in {func}"

    @property
    def datetime(self) -> datetime.datetime:
        """``time`` (when the block was allocated) as an aware UTC datetime."""
        return datetime.datetime.fromtimestamp(self.time, datetime.timezone.utc)

    def describe(self) -> str:
        """One line: size, type, address, allocator and where it was allocated."""
        ty = self.type or "?"
        if ty == "Arena" and not self.address:
            return f"unreleased {self.allocator} holding {self.size} bytes, made at {self.location}"
        return f"{self.size} bytes ({ty}) at {self.address:#x} from {self.allocator}, allocated at {self.location}"

    def to_dict(self) -> dict[str, Any]:
        """The record as the JSON report writes it (docs/tracking.md)."""
        return {
            "sequence": self.sequence,
            "address": self.address,
            "size": self.size,
            "type": self.type,
            "allocator": self.allocator,
            "time": self.datetime.isoformat(),
            "timestamp": self.time,
            "thread": {"id": self.thread, "name": self.thread_name},
            "traceback": [{"file": f, "line": ln, "function": fn} for f, ln, fn in self.traceback],
        }


def _record(t: tuple[Any, ...]) -> LeakRecord:
    seq, address, size, ty, allocator, time, thread, thread_name, frames_ = t
    return LeakRecord(address, size, ty, allocator, time, thread, thread_name, list(frames_), seq)


# -- the switch ---------------------------------------------------------------


def enable(frames: int = DEFAULT_FRAMES) -> None:
    """Turns tracking on, capturing ``frames`` frames per allocation (0..128)."""
    if isinstance(frames, bool) or not isinstance(frames, int):
        raise TypeError(f"frames must be an int, not {type(frames).__name__}")
    if frames < 0:
        raise ValueError(f"frames must not be negative: {frames}")
    _rsalloc._track_enable(frames)


def disable() -> None:
    """Turns tracking off. Records already made stay until their blocks are freed."""
    _rsalloc._track_disable()


def is_enabled() -> bool:
    """True while allocations are being tracked."""
    return bool(_rsalloc._track_is_enabled())


def frames() -> int:
    """Frames captured per allocation."""
    return int(_rsalloc._track_frames())


# -- filters ------------------------------------------------------------------


class LeakFilter:
    """A predicate over LeakRecords, combinable with ``&``, ``|`` and ``~``."""

    __slots__ = ("_pred", "_text")

    def __init__(self, pred: Callable[[LeakRecord], bool], text: str = "filter") -> None:
        """``pred`` decides; ``text`` is what ``repr`` shows."""
        self._pred = pred
        self._text = text

    def __call__(self, record: LeakRecord) -> bool:
        """True when ``record`` passes the filter."""
        return bool(self._pred(record))

    def __and__(self, other: LeakFilter) -> LeakFilter:
        o = _as_filter(other)
        return LeakFilter(lambda r: self(r) and o(r), f"({self._text} & {o._text})")

    def __or__(self, other: LeakFilter) -> LeakFilter:
        o = _as_filter(other)
        return LeakFilter(lambda r: self(r) or o(r), f"({self._text} | {o._text})")

    def __invert__(self) -> LeakFilter:
        return LeakFilter(lambda r: not self(r), f"~{self._text}")

    def __repr__(self) -> str:
        return f"<LeakFilter {self._text}>"


def _as_filter(f: Any) -> LeakFilter:
    if isinstance(f, LeakFilter):
        return f
    if callable(f):
        return LeakFilter(f, getattr(f, "__name__", "callable"))
    raise TypeError(f"a filter must be a LeakFilter or a callable, not {type(f).__name__}")


def by_allocator(*allocators: Any) -> LeakFilter:
    """Records made by any of these allocators (objects or names)."""
    names = {a if isinstance(a, str) else a.name for a in allocators}
    return LeakFilter(lambda r: r.allocator in names, f"by_allocator({', '.join(sorted(names))})")


def by_type(*types: Any) -> LeakFilter:
    """Records allocated as any of these element types (classes or names)."""
    names = {t if isinstance(t, str) else t.__name__ for t in types}
    return LeakFilter(lambda r: r.type in names, f"by_type({', '.join(sorted(names))})")


def in_traceback(substring: str) -> LeakFilter:
    """Records with a frame whose ``file:line in function`` contains ``substring``."""
    if not isinstance(substring, str):
        raise TypeError("in_traceback() takes a str")
    return LeakFilter(
        lambda r: any(substring in f"{f}:{ln} in {fn}" for f, ln, fn in r.traceback),
        f"in_traceback({substring!r})",
    )


def by_address(address: Any) -> LeakFilter:
    """The record whose block contains ``address`` (an int or a Pointer)."""
    a = int(address)
    return LeakFilter(lambda r: r.address <= a < r.address + max(r.size, 1), f"by_address({a:#x})")


# -- queries and reports -----------------------------------------------------


def _live(since: int = 0, filter: Any = None) -> list[LeakRecord]:
    records = [_record(t) for t in _rsalloc._track_live(since)]
    if filter is not None:
        f = _as_filter(filter)
        records = [r for r in records if f(r)]
    return records


def leaks(filter: Any = None) -> list[LeakRecord]:
    """The live tracked allocations, oldest first, optionally filtered."""
    return _live(0, filter)


def _size_then_age(r: LeakRecord) -> tuple[int, int]:
    return (-r.size, r.sequence)


# The report's code makes no function object as it runs (a module-level
# key, not a lambda; list comprehensions, which are inlined, not generator
# expressions): making one while memory is exhausted crashes CPython 3.13.0
# (PyFunction_NewWithQualName; tests/test_fault_injection.py), and a leak
# report is read just then.
def _largest_first(records: Iterable[LeakRecord]) -> list[LeakRecord]:
    return sorted(records, key=_size_then_age)


def _summary(records: list[LeakRecord]) -> str:
    n = len(records)
    total = sum([r.size for r in records])
    return f"rsalloc: {n} leak{'' if n == 1 else 's'}, {total} byte{'' if total == 1 else 's'} in total"


def _text(records: list[LeakRecord]) -> str:
    lines = []
    for r in _largest_first(records):
        thread = r.thread_name or str(r.thread)
        when = r.datetime.astimezone().strftime("%H:%M:%S.%f")[:-3]
        lines.append(
            f"{r.size} bytes ({r.type or '?'}) at {r.address:#x} from {r.allocator}, thread {thread}, at {when}"
        )
        if r.traceback:
            lines.extend([f"    {f}:{ln} in {fn}" for f, ln, fn in r.traceback])
        else:
            lines.append("    (no traceback: tracking captured 0 frames)")
    lost = _rsalloc._track_lost()
    if lost:
        lines.append(f"({lost} tracked allocations could not be recorded: out of memory)")
    lines.append(_summary(records))
    return "\n".join(lines) + "\n"


def _frame_name(file: str, line: int, func: str) -> str:
    # ';' separates frames and a line ends a stack: neither may appear in one.
    name = f"{func} ({file}:{line})"
    return name.replace(";", ",").replace("\n", " ").replace("\r", " ")


def _collapsed(records: list[LeakRecord]) -> str:
    """Folded stacks (flamegraph.pl, inferno, speedscope): one line per
    distinct allocating traceback, root first, weighted by its live bytes."""
    weights: dict[str, int] = {}
    for r in records:
        frames = [_frame_name(*f) for f in reversed(r.traceback)] or ["<no traceback>"]
        stack = ";".join(frames)
        weights[stack] = weights.get(stack, 0) + r.size
    return "".join([f"{stack} {n}\n" for stack, n in sorted(weights.items())])


def leak_report(format: Literal["text", "json", "collapsed"] = "text", filter: Any = None) -> str:
    """A report of the live tracked allocations, largest first.

    ``"text"``: one block per allocation and a summary line (count, bytes).
    ``"json"``: the stable schema of docs/tracking.md.
    ``"collapsed"``: folded stacks for flame graphs (flamegraph.pl, inferno,
    speedscope): ``frame;frame;frame bytes`` per allocating traceback, root
    first, frames as ``function (file:line)``, live bytes as weights.
    """
    records = leaks(filter)
    if format == "text":
        return _text(records)
    if format == "collapsed":
        return _collapsed(records)
    if format == "json":
        doc = {
            "schema_version": SCHEMA_VERSION,
            "summary": {
                "count": len(records),
                "bytes": sum([r.size for r in records]),
                "unrecorded": _rsalloc._track_lost(),
            },
            "leaks": [r.to_dict() for r in _largest_first(records)],
        }
        return json.dumps(doc, indent=2)
    raise ValueError(f'format must be "text", "json" or "collapsed", not {format!r}')


# -- leak_check ---------------------------------------------------------------


class leak_check(contextlib.ContextDecorator):
    """``with leak_check():`` (or ``@leak_check()``) turns tracking on for its
    span and raises LeakError naming file:line of every allocation made inside
    and still live at its end. Allocations by other threads during the span
    count too. An exception already leaving the block is not masked.
    """

    def __init__(self, frames: int | None = None, filter: Any = None) -> None:
        """``frames``: frames captured per allocation inside the span (default:
        the current setting, or DEFAULT_FRAMES when tracking is off);
        ``filter``: only records it accepts count as leaks (see ``leaks``)."""
        self._frames = frames
        self._filter = filter
        self._stack: list[tuple[bool, int, int]] = []

    def __enter__(self) -> leak_check:
        """Turns tracking on and opens a span; spans nest."""
        was_on, was_frames = is_enabled(), frames()
        n = self._frames if self._frames is not None else (was_frames if was_on else DEFAULT_FRAMES)
        enable(n)
        self._stack.append((was_on, was_frames, _rsalloc._track_seq()))
        return self

    def found(self) -> list[LeakRecord]:
        """The allocations made inside the innermost open span and still live."""
        return _live(self._stack[-1][2], self._filter)

    def finish(self) -> list[LeakRecord]:
        """Ends the innermost span (restoring the switch) and returns what it leaked."""
        found = self.found()
        was_on, was_frames, _ = self._stack.pop()
        if was_on:
            enable(was_frames)
        else:
            disable()
        return found

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        """Ends the span; raises LeakError if it leaked and nothing else is raised."""
        __tracebackhide__ = True
        found = self.finish()
        if found and exc_type is None:
            raise _leak_error(found, "leak_check()")


def _leak_error(found: list[LeakRecord], where: str) -> LeakError:
    total = sum([r.size for r in found])
    n = len(found)
    lines = [f"{n} allocation{'' if n == 1 else 's'} made inside {where} still live ({total} bytes):"]
    lines.extend([f"  {r.describe()}" for r in _largest_first(found)])
    err = LeakError("\n".join(lines))
    err.leaks = found
    return err


# -- environment and exit -----------------------------------------------------


def _from_environment() -> None:
    flag = os.environ.get("RSALLOC_TRACK", "").strip().lower()
    if flag in ("", "0", "false", "no", "off"):
        return
    n = DEFAULT_FRAMES
    raw = os.environ.get("RSALLOC_TRACK_FRAMES")
    if raw:
        try:
            n = int(raw)
            if n < 0:
                raise ValueError(raw)
        except ValueError:
            warnings.warn(f"RSALLOC_TRACK_FRAMES={raw!r} is not a count; using {DEFAULT_FRAMES}", stacklevel=2)
            n = DEFAULT_FRAMES
    enable(n)


@atexit.register
def _exit_report() -> None:
    if not is_enabled():
        return
    found = leaks()
    if found:
        sys.stderr.write("rsalloc: native memory still allocated at exit\n" + _text(found))
        sys.stderr.flush()


_from_environment()
