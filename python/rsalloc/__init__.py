"""rsalloc: explicit, checked native memory for Python.

Buffers, structs, strings, out-parameters and pointer arrays for C libraries
called through ctypes or cffi, with a lifetime the program controls. Every
mistake that is undefined behaviour in C (use after free, double free, a
free through the wrong allocator, an index out of bounds) is an exception.
See DESIGN.md / README.md.
"""

from __future__ import annotations

from ._errors import (
    ArenaClosedError,
    DoubleFreeError,
    HeapCorruptionError,
    LeakError,
    NullPointerError,
    OwnershipError,
    RsallocError,
    UseAfterFreeError,
)
from ._rsalloc import (
    Allocator,
    Arena,
    ForeignAllocator,
    Pointer,
    Stats,
    adaptive_calloc,
    adaptive_malloc,
    alignof,
    calloc,
    current_arena,
    diagnostic_calloc,
    diagnostic_malloc,
    free,
    malloc,
    nullptr,
    sizeof,
    stats,
    to_native_utf8,
    to_native_utf16,
)
from ._arena import using
from ._struct import Array, Struct, Union, offsetof
from ._types import (
    Bool,
    Double,
    Float,
    Float32,
    Float64,
    Int8,
    Int16,
    Int32,
    Int64,
    IntPtr,
    NativeType,
    Size,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Void,
)

from . import tracking
from .tracking import LeakRecord, leak_check, leak_report, leaks

__version__ = "0.1.0"

__all__ = [
    "Allocator",
    "Arena",
    "Array",
    "ArenaClosedError",
    "Bool",
    "Double",
    "DoubleFreeError",
    "Float",
    "Float32",
    "Float64",
    "ForeignAllocator",
    "HeapCorruptionError",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "IntPtr",
    "LeakError",
    "LeakRecord",
    "NativeType",
    "NullPointerError",
    "OwnershipError",
    "Pointer",
    "RsallocError",
    "Size",
    "Stats",
    "Struct",
    "Uint8",
    "Uint16",
    "Uint32",
    "Uint64",
    "Union",
    "UseAfterFreeError",
    "Void",
    "adaptive_calloc",
    "adaptive_malloc",
    "alignof",
    "calloc",
    "current_arena",
    "diagnostic_calloc",
    "diagnostic_malloc",
    "free",
    "leak_check",
    "leak_report",
    "leaks",
    "malloc",
    "nullptr",
    "offsetof",
    "sizeof",
    "stats",
    "to_native_utf8",
    "to_native_utf16",
    "using",
    "tracking",
]
