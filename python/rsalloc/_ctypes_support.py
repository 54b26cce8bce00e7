"""What the Rust layer needs to know about ctypes classes and functions, read once."""

from __future__ import annotations

import ctypes
from typing import Any

__all__ = ["c_function", "ctypes", "describe"]

_Pointer = type(ctypes.POINTER(ctypes.c_int))
_CFuncPtr = ctypes._CFuncPtr  # type: ignore[attr-defined]
_PTR = ctypes.sizeof(ctypes.c_void_p)
_INT = {1: "b", 2: "h", 4: "i", 8: "q"}
_SIGNED = set("bhilq")
# Simple types rsalloc reads itself (src/py/types.rs); other simple codes
# ('g' long double) are opaque: reachable through p.ref and buffers.
_SCALAR_CODES = set("bBcBhHiIlLqQfd?PzZu")


def _order(cls: type) -> str:
    fmt = memoryview(cls()).format
    return ">" if ">" in fmt else "<"


def _scalar_format(cls: type) -> str:
    """A field's format in standard sizes (numpy rejects ctypes' 'z', '&', 'u', native 'P')."""
    size = ctypes.sizeof(cls)
    if isinstance(cls, _Pointer):
        return "<" + _INT[_PTR].upper()
    code: str = getattr(cls, "_type_")
    if code in "fd?c":
        return _order(cls) + code
    if code in _SIGNED and size in _INT:
        return _order(cls) + _INT[size]
    if code in "BHILQPzZu" and size in _INT:
        return _order(cls) + _INT[size].upper()
    return f"({size})B"


def _fields(cls: type) -> list[tuple[str, type, bool]]:
    # A Structure subclass extends its bases' _fields_.
    out: list[tuple[str, type, bool]] = []
    for klass in reversed(cls.__mro__):
        for f in klass.__dict__.get("_fields_", ()):
            out.append((f[0], f[1], len(f) > 2))
    return out


def _struct_format(cls: type, fmt: dict[type, str]) -> str | None:
    # [format, names]; bitfields sharing a storage unit become one field
    # named "a|b" holding the whole unit. `fmt` has every field type's format.
    parts: list[list[str]] = []
    end = 0
    unit_at: dict[int, list[str]] = {}
    for name, ftype, is_bits in _fields(cls):
        offset = getattr(cls, name).offset
        if is_bits and offset in unit_at:
            unit_at[offset][1] += "|" + name
            continue
        if offset < end:
            return None  # overlapping fields: describe the bytes only
        if offset > end:
            parts.append([f"{offset - end}x", ""])
        part = [_part(ftype, fmt), name]
        if is_bits:
            unit_at[offset] = part
        parts.append(part)
        end = offset + ctypes.sizeof(ftype)
    size = ctypes.sizeof(cls)
    if end > size:
        return None
    if size > end:
        parts.append([f"{size - end}x", ""])
    return "T{" + "".join(f"{fmt}:{name}:" if name else fmt for fmt, name in parts) + "}"


def _part(cls: type, fmt: dict[type, str]) -> str:
    # A part with no format yet is its own container (a struct that holds
    # itself, as ctypes allows before a layout is final): bytes.
    return fmt.get(cls) or f"({ctypes.sizeof(cls)})B"


def _innermost(cls: type) -> tuple[list[int], type]:
    dims: list[int] = []
    inner: Any = cls
    while issubclass(inner, ctypes.Array):
        dims.append(inner._length_)
        inner = inner._type_
    return dims, inner


def _parts(cls: type) -> list[type]:
    """The types whose formats `cls`'s format is made of."""
    if issubclass(cls, ctypes.Array):
        return [_innermost(cls)[1]]
    if issubclass(cls, ctypes.Structure):
        return [f[1] for f in _fields(cls)]
    return []


def _format_of(cls: type, fmt: dict[type, str]) -> str:
    size = ctypes.sizeof(cls)
    if issubclass(cls, ctypes.Array):
        dims, inner = _innermost(cls)
        inner_fmt = _part(inner, fmt)
        if inner_fmt.startswith("("):  # bytes: fold into the dimensions
            dims.append(ctypes.sizeof(inner))
            inner_fmt = "B"
        return "(" + ",".join(map(str, dims)) + ")" + inner_fmt
    if issubclass(cls, ctypes.Structure):
        return _struct_format(cls, fmt) or f"({size})B"
    if issubclass(cls, ctypes.Union):
        return f"({size})B"
    return _scalar_format(cls)


def _element_format(cls: type) -> str:
    """The PEP 3118 format of one element of a ctypes type, one numpy accepts:
    standard sizes with explicit padding (so packed and big-endian layouts
    stay exact), pointers as unsigned integers, unions as raw bytes.

    Nested types are worked out with an explicit stack, innermost first:
    structs nested thousands deep (legal) must not hit the recursion limit.
    """
    fmt: dict[type, str] = {}
    stack = [cls]
    opened: set[type] = set()
    while stack:
        top = stack[-1]
        if top in fmt:
            stack.pop()
        elif top not in opened:
            opened.add(top)
            stack.extend(p for p in _parts(top) if p not in fmt and p not in opened)
        else:
            fmt[top] = _format_of(top, fmt)
            stack.pop()
    return fmt[cls]


def _has_fields(cls: type) -> bool:
    return any("_fields_" in klass.__dict__ for klass in cls.__mro__)


def describe(cls: type) -> tuple[str, int, int, str, object, bool] | None:
    """(code, size, alignment, format, pointee, final) of a ctypes class, None otherwise.

    code is the ctypes `_type_` letter of a simple type, "P" for a
    `POINTER(T)` type (pointee T, not resolved here: the Rust layer walks
    pointer chains in a loop), "aggregate" for a Structure, Union or array
    type and for simple types rsalloc does not read itself, or "incomplete"
    for a Structure or Union whose `_fields_` are not set anywhere yet.
    final is False for a Structure or Union that inherits its fields and
    may still get `_fields_` of its own (its layout may change).
    """
    if not isinstance(cls, type):
        return None
    if issubclass(cls, (ctypes.Structure, ctypes.Union)):
        if not _has_fields(cls):
            return ("incomplete", 0, 1, "", None, False)
        final = "_fields_" in cls.__dict__
        return ("aggregate", ctypes.sizeof(cls), ctypes.alignment(cls), _element_format(cls), None, final)
    if issubclass(cls, ctypes.Array):
        return ("aggregate", ctypes.sizeof(cls), ctypes.alignment(cls), _element_format(cls), None, True)
    if isinstance(cls, _Pointer):
        return ("P", _PTR, _PTR, "N", getattr(cls, "_type_", None), True)
    if issubclass(cls, ctypes._SimpleCData):
        code = getattr(cls, "_type_")
        if code == "O":
            return None  # py_object: a PyObject* in native memory cannot be refcounted
        kind = code if code in _SCALAR_CODES else "aggregate"
        return (kind, ctypes.sizeof(cls), ctypes.alignment(cls), code, None, True)
    return None


def _max_size(f: object) -> int:
    """The largest size the first parameter of `f` carries (argtypes, when declared)."""
    argtypes = getattr(f, "argtypes", None)
    if argtypes:
        t = argtypes[0]
        bits = 8 * ctypes.sizeof(t)
        if bits < 8 * _PTR:
            signed = getattr(t, "_type_", "") in _SIGNED
            return (1 << (bits - signed)) - 1
    return (1 << (8 * _PTR)) - 1


def c_function(f: object) -> tuple[int, int] | None:
    """(address, max_size) of a C function given as a ctypes function object
    or an int address; None for anything else (a Python callable)."""
    if isinstance(f, _CFuncPtr):
        return (ctypes.cast(f, ctypes.c_void_p).value or 0, _max_size(f))
    if isinstance(f, int) and not isinstance(f, bool):
        if f <= 0:
            raise ValueError(f"{f} is not the address of a C function")
        return (f, (1 << (8 * _PTR)) - 1)
    return None
