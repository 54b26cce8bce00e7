"""What the Rust layer needs to know about ctypes classes, read once per class."""

from __future__ import annotations

import ctypes

__all__ = ["ctypes", "describe"]

_Pointer = type(ctypes.POINTER(ctypes.c_int))


def _aggregate_format(cls: type) -> str:
    # The element format a consumer of the buffer protocol sees: ctypes'
    # own, with an array's shape folded into a PEP 3118 sub-array.
    view = memoryview(cls())
    if view.ndim <= 1 and not issubclass(cls, ctypes.Array):
        return view.format
    return "(" + ",".join(str(n) for n in view.shape) + ")" + view.format


def describe(cls: type) -> tuple[str, int, int, str, type | None] | None:
    """(code, size, alignment, format, pointee) of a ctypes class, None otherwise.

    code is the ctypes `_type_` letter of a simple type, "P" for a
    `POINTER(T)` type (pointee T), or "aggregate" for a Structure, Union or
    array type.
    """
    if not isinstance(cls, type):
        return None
    if issubclass(cls, (ctypes.Structure, ctypes.Union, ctypes.Array)):
        return ("aggregate", ctypes.sizeof(cls), ctypes.alignment(cls), _aggregate_format(cls), None)
    if isinstance(cls, _Pointer):
        return ("P", ctypes.sizeof(cls), ctypes.alignment(cls), "N", cls._type_)
    if issubclass(cls, ctypes._SimpleCData):
        code = cls._type_
        return (code, ctypes.sizeof(cls), ctypes.alignment(cls), code, None)
    return None
