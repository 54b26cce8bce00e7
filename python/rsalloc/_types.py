"""Element types (DESIGN §2). They are classes, as in Dart's package:ffi, so
that `Pointer[Int32]` is both an element type and an annotation. The Rust
layer reads `_kind_` once per class and caches what it needs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    from typing_extensions import Self

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

    @classmethod
    def from_param(cls, obj: object) -> object:
        """ctypes' argument conversion: `argtypes = [Pointer[Uint8], Size]`
        passes a Size argument range-checked, as element writes are."""
        from ._struct import scalar_param

        return scalar_param(cls, obj)


class Integer(NativeType):
    """Base of the integer element types: their elements are `int`."""

    __slots__ = ()

    if TYPE_CHECKING:
        # What mypy sees of a struct field declared with this type (`x: Int32`
        # in a Struct body): a descriptor reading and writing int. The
        # runtime fields are rsalloc's own descriptors (src/py/structs.rs).
        @overload
        def __get__(self, obj: None, owner: Any) -> Self: ...
        @overload
        def __get__(self, obj: object, owner: Any) -> int: ...
        def __get__(self, obj: object, owner: Any) -> int | Self: ...
        def __set__(self, obj: object, value: int) -> None: ...


class Floating(NativeType):
    """Base of the floating-point element types: their elements are `float`."""

    __slots__ = ()

    if TYPE_CHECKING:
        # What mypy sees of a struct field declared with this type (`x: Float64`
        # in a Struct body): a descriptor reading and writing float. The
        # runtime fields are rsalloc's own descriptors (src/py/structs.rs).
        @overload
        def __get__(self, obj: None, owner: Any) -> Self: ...
        @overload
        def __get__(self, obj: object, owner: Any) -> float: ...
        def __get__(self, obj: object, owner: Any) -> float | Self: ...
        def __set__(self, obj: object, value: float) -> None: ...


class Int8(Integer):
    """C ``int8_t``: 1-byte signed integers (-2**7 .. 2**7 - 1)."""

    _kind_ = "I8"


class Int16(Integer):
    """C ``int16_t``: 2-byte signed integers."""

    _kind_ = "I16"


class Int32(Integer):
    """C ``int32_t``: 4-byte signed integers."""

    _kind_ = "I32"


class Int64(Integer):
    """C ``int64_t``: 8-byte signed integers."""

    _kind_ = "I64"


class Uint8(Integer):
    """C ``uint8_t``: bytes (0 .. 255); the element type of C strings and raw allocations."""

    _kind_ = "U8"


class Uint16(Integer):
    """C ``uint16_t``: 2-byte unsigned integers; the element type of UTF-16 strings."""

    _kind_ = "U16"


class Uint32(Integer):
    """C ``uint32_t``: 4-byte unsigned integers."""

    _kind_ = "U32"


class Uint64(Integer):
    """C ``uint64_t``: 8-byte unsigned integers."""

    _kind_ = "U64"


class Float32(Floating):
    """C ``float``: 4-byte IEEE 754 floats (``Float`` is the same class)."""

    _kind_ = "F32"


class Float64(Floating):
    """C ``double``: 8-byte IEEE 754 floats (``Double`` is the same class)."""

    _kind_ = "F64"


class Bool(NativeType):
    """C ``bool`` (``_Bool``): one byte, elements are ``True``/``False``."""

    _kind_ = "Bool"

    if TYPE_CHECKING:
        # What mypy sees of a struct field declared with this type (`x: Bool`
        # in a Struct body): a descriptor reading and writing bool. The
        # runtime fields are rsalloc's own descriptors (src/py/structs.rs).
        @overload
        def __get__(self, obj: None, owner: Any) -> Self: ...
        @overload
        def __get__(self, obj: object, owner: Any) -> bool: ...
        def __get__(self, obj: object, owner: Any) -> bool | Self: ...
        def __set__(self, obj: object, value: bool) -> None: ...


class IntPtr(Integer):
    """C ``intptr_t``: a signed integer the size of a pointer."""

    _kind_ = "IntPtr"


class Size(Integer):
    """C ``size_t``: an unsigned integer the size of a pointer."""

    _kind_ = "Size"


class Void(NativeType):
    """C ``void``: the type of an untyped pointer (``nullptr``, ``void *``); it has no elements to index, ``cast`` it first."""

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
        from ._rsalloc import _pointer_from_param
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
