"""Element types (DESIGN §2). They are classes, as in Dart's package:ffi, so
that `Pointer[Int32]` is both an element type and an annotation. The Rust
layer reads `_kind_` once per class and caches what it needs."""

from __future__ import annotations

from typing import Any

__all__ = [
    "NativeType",
    "Integer",
    "Floating",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "Uint8",
    "Uint16",
    "Uint32",
    "Uint64",
    "Float32",
    "Float64",
    "Float",
    "Double",
    "Bool",
    "IntPtr",
    "Size",
    "Void",
]


class NativeType:
    """Base class of rsalloc's element types. Not instantiated."""

    __slots__ = ()
    _kind_: str = ""

    def __new__(cls, *args: object, **kwargs: object) -> NativeType:
        raise TypeError(f"{cls.__name__} is an element type, not a value; allocate one with calloc({cls.__name__})")


class Integer(NativeType):
    """Base of the integer element types: their elements are `int`."""

    __slots__ = ()


class Floating(NativeType):
    """Base of the floating-point element types: their elements are `float`."""

    __slots__ = ()


class Int8(Integer):
    _kind_ = "I8"


class Int16(Integer):
    _kind_ = "I16"


class Int32(Integer):
    _kind_ = "I32"


class Int64(Integer):
    _kind_ = "I64"


class Uint8(Integer):
    _kind_ = "U8"


class Uint16(Integer):
    _kind_ = "U16"


class Uint32(Integer):
    _kind_ = "U32"


class Uint64(Integer):
    _kind_ = "U64"


class Float32(Floating):
    _kind_ = "F32"


class Float64(Floating):
    _kind_ = "F64"


class Bool(NativeType):
    _kind_ = "Bool"


class IntPtr(Integer):
    _kind_ = "IntPtr"


class Size(Integer):
    _kind_ = "Size"


class Void(NativeType):
    _kind_ = "Void"


Float = Float32
Double = Float64

SCALARS = (Int8, Int16, Int32, Int64, Uint8, Uint16, Uint32, Uint64, Float32, Float64, Bool, IntPtr, Size, Void)


class PointerSlot(NativeType):
    """Base of the classes `Pointer[T]` returns: a pointer-sized slot
    holding the address of a T."""

    _kind_ = "Ptr"
    _target_: type = Void

    @classmethod
    def from_param(cls, obj: object) -> object:
        """ctypes' argument conversion: `argtypes = [Pointer[Uint8], Size]`
        takes a live Pointer to T (any Pointer for `Pointer[Void]`) or None."""
        return _from_param()(cls, obj)


def _from_param() -> Any:
    global _pointer_from_param
    if _pointer_from_param is None:
        from ._rsalloc import _pointer_from_param  # type: ignore[attr-defined]
    return _pointer_from_param


_pointer_from_param: Any = None


_slot_types: dict[object, type] = {}


def pointer_type(target: type) -> type:
    """The element type `Pointer[target]`, one class per target."""
    try:
        return _slot_types[target]
    except KeyError:
        pass
    name = getattr(target, "__name__", repr(target))
    cls = type(f"Pointer[{name}]", (PointerSlot,), {"__slots__": (), "_target_": target, "__module__": "rsalloc"})
    return _slot_types.setdefault(target, cls)
