"""rsalloc: explicit, checked native memory for Python.

Buffers, structs, strings, out-parameters and pointer arrays for C libraries
called through ctypes or cffi, with a lifetime the program controls. Every
mistake that is undefined behaviour in C (use after free, double free, a
free through the wrong allocator, an index out of bounds) is an exception.
See DESIGN.md / README.md.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._constants import TRACEMALLOC_DOMAIN
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
from ._protocols import AllocatorLike
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

def _load() -> None:
    """Imports the extension and binds every name that needs it here."""
    # import_module, not `from . import`: that would ask this module's
    # __getattr__ for the submodule first, and come back here.
    _rsalloc = importlib.import_module(__name__ + "._rsalloc")
    tracking = importlib.import_module(__name__ + ".tracking")
    using = importlib.import_module(__name__ + "._arena").using
    structs = importlib.import_module(__name__ + "._struct")

    found: dict[str, Any] = {"tracking": tracking, "using": using}
    for name in _EXTENSION_NAMES - found.keys():
        source = next((m for m in (_rsalloc, structs, tracking) if hasattr(m, name)), _rsalloc)
        found[name] = getattr(source, name)
    globals().update(found)


def __getattr__(name: str) -> Any:
    if name in _EXTENSION_NAMES:
        _load()
        return globals()[name]
    raise AttributeError(f"module 'rsalloc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "Allocator",
    "AllocatorLike",
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
    "TRACEMALLOC_DOMAIN",
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
    "set_limit",
    "offsetof",
    "sizeof",
    "stats",
    "to_native_utf8",
    "to_native_utf16",
    "using",
    "tracking",
]

# The names of __all__ not bound above come from the extension, which is
# imported on first use of any of them (PEP 562), not by `import rsalloc`:
# the pytest plugin's entry point imports this package in every pytest run,
# and a run that does not ask for the plugin must not load native code
# (docs/decisions.md). The first lookup binds them all in this module, so
# later ones are plain attribute lookups. Type checkers read __init__.pyi.
# `__version__` is the extension's (from Cargo.toml, the one place it is written).
_EXTENSION_NAMES = frozenset(__all__).union({"__version__"}).difference(globals())
