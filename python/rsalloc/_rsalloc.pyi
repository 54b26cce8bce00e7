# Typing stubs for the extension module itself (src/lib.rs wires it). The
# public classes and functions are declared once, in __init__.pyi, and
# re-exported here under the names the extension gives them; the private
# entry points the package's Python modules call are declared here only.
from typing import Any

from . import (
    Allocator as Allocator,
    Arena as Arena,
    ForeignAllocator as ForeignAllocator,
    Pointer as Pointer,
    Stats as Stats,
    __version__ as __version__,
    adaptive_calloc as adaptive_calloc,
    adaptive_malloc as adaptive_malloc,
    alignof as alignof,
    calloc as calloc,
    current_arena as current_arena,
    diagnostic_calloc as diagnostic_calloc,
    diagnostic_malloc as diagnostic_malloc,
    free as free,
    malloc as malloc,
    nullptr as nullptr,
    set_limit as set_limit,
    sizeof as sizeof,
    stats as stats,
    to_native_utf8 as to_native_utf8,
    to_native_utf16 as to_native_utf16,
)

class _StructView:
    """The base of struct and union views: a view of one struct in memory."""

class Field:
    """A struct class's field: a descriptor reading and writing its bytes."""

    def __get__(self, obj: object, owner: type | None = None) -> Any: ...
    def __set__(self, obj: object, value: Any) -> None: ...

def _pointer_from_param(cls: type, obj: object) -> Any: ...

# Leak tracking (rsalloc.tracking): `_track_live` rows are
# (seq, address, size, type, allocator, time, thread_id, thread_name,
#  [(file, line, function), ...]).
def _track_enable(frames: int) -> None: ...
def _track_disable() -> None: ...
def _track_is_enabled() -> bool: ...
def _track_frames() -> int: ...
def _track_seq() -> int: ...
def _track_lost() -> int: ...
def _track_live(
    since: int,
) -> list[tuple[int, int, int, str, str, float, int, str | None, list[tuple[str, int, str]]]]: ...

# tracemalloc reporting (rsalloc._tracemalloc).
def _set_tracemalloc(on: bool) -> None: ...
def _tracemalloc_on() -> bool: ...
def _tracemalloc_domain() -> int: ...

# The freed-block cache: (enabled, blocks kept, bytes kept).
def _block_cache(trim: bool = False) -> tuple[bool, int, int]: ...

# First chunks closed arenas hold for their reopening (at most 4).
def _held_chunks() -> int: ...
def _shared_scopes() -> int: ...
def _kept_calls() -> int: ...
