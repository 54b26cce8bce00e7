"""Structs, unions and fixed arrays declared as Dart declares them (DESIGN §2a).

A class body lists the fields as annotations, in order::

    class AuthInfo(rsalloc.Struct):
        appKey: Pointer[Int8]
        count: Int32

The layout is the platform C ABI's because it is ctypes': the equivalent
ctypes Structure (`AuthInfo.ctype`) is built from the annotations the first
time the class is used, and every offset, size and alignment is read from it.
The Rust layer (src/py/structs.rs) then installs one field descriptor per
field, and `p.ref` / `p[i]` of a `Pointer[AuthInfo]` are views of the struct
in that memory.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

from . import _types
from ._ctypes_support import _element_format, describe
from ._rsalloc import _StructView

__all__ = ["Array", "Struct", "Union", "ctype_of", "offsetof", "param_type", "scalar_param"]

_SCALAR_CTYPES: dict[type, type] = {
    _types.Int8: ctypes.c_int8,
    _types.Int16: ctypes.c_int16,
    _types.Int32: ctypes.c_int32,
    _types.Int64: ctypes.c_int64,
    _types.Uint8: ctypes.c_uint8,
    _types.Uint16: ctypes.c_uint16,
    _types.Uint32: ctypes.c_uint32,
    _types.Uint64: ctypes.c_uint64,
    _types.Float32: ctypes.c_float,
    _types.Float64: ctypes.c_double,
    _types.Bool: ctypes.c_bool,
    _types.IntPtr: ctypes.c_ssize_t,
    _types.Size: ctypes.c_size_t,
}
_CHARS = (_types.Int8, _types.Uint8)


class _Unresolved(TypeError):
    """An annotation names something not defined yet (resolved on first use)."""


# Classes whose layout is being worked out, to refuse a struct inside itself.
_resolving: list[type] = []


def _is_struct(t: object) -> bool:
    return isinstance(t, _StructMeta) and t not in (Struct, Union)


def ctype_of(t: object) -> type:
    """The ctypes type C would declare for the rsalloc element type `t`
    (ctypes types are their own): `Int32` -> `c_int32`, `Pointer[Int8]` ->
    `c_char_p`, `Pointer[T]` -> `POINTER(ctype_of(T))`, a Struct -> its
    `ctype`, `Array[T, n]` -> `ctype_of(T) * n`."""
    if isinstance(t, type):
        scalar = _SCALAR_CTYPES.get(t)
        if scalar is not None:
            return scalar
        if issubclass(t, _types.PointerSlot):
            return _slot_ctype(t._target_)
        if _is_struct(t):
            return _complete(t)._rsalloc_ctype_  # type: ignore[attr-defined,no-any-return]
        if isinstance(t, _ArrayMeta) and t is not Array:
            return t.ctype
        if t is not _types.Void and describe(t) is not None:
            return t
    raise TypeError(f"{t!r} is not a field type: use an rsalloc type (Int32, Pointer[T], a Struct, Array[T, n]) or a ctypes type")


def _slot_ctype(target: type) -> type:
    """The ctypes type of a `Pointer[target]` slot. A pointer to a struct
    needs no layout of it (a linked list's `next`), only its ctypes class."""
    if target is _types.Void:
        return ctypes.c_void_p
    if target in _CHARS:
        return ctypes.c_char_p
    if _is_struct(target):
        shell = _shell(target, for_pointer=True)
        return ctypes.c_void_p if shell is None else ctypes.POINTER(shell)
    return ctypes.POINTER(ctype_of(target))


def param_type(t: type) -> type:
    """The ctypes class a `Pointer[t]` passes to foreign functions as
    (`p._as_parameter_`): `c_void_p` for Void, `POINTER(c_char)` for Int8 and
    Uint8 (what `c_char_p` declarations accept), else `POINTER(ctype_of(t))`."""
    if t is _types.Void:
        return ctypes.c_void_p
    if t in _CHARS:
        return ctypes.POINTER(ctypes.c_char)
    try:
        return ctypes.POINTER(ctype_of(t))
    except TypeError:
        return ctypes.c_void_p  # a type ctypes has no name for: void *


def scalar_param(t: type, obj: object) -> object:
    """`T.from_param(obj)` of an rsalloc scalar type T (`argtypes = [Pointer[Uint8], Size]`):
    the ctypes value, checked as element writes are (DESIGN §2): out of
    range -> OverflowError, wrong kind -> TypeError."""
    ct = _SCALAR_CTYPES.get(t)
    if ct is None:
        raise TypeError(f"{t.__name__} is not an argument type")
    if issubclass(t, _types.Floating):
        if not isinstance(obj, (int, float)) or isinstance(obj, bool):
            raise TypeError(f"{t.__name__} takes a float or an int, not {type(obj).__name__}")
        value = float(obj)
        if t is _types.Float32 and abs(value) != float("inf") and abs(value) > 3.4028234663852886e38:
            raise OverflowError(f"{value} is out of range for Float32")
        return ct(value)
    if t is _types.Bool:
        if obj not in (0, 1) or isinstance(obj, float):
            raise TypeError(f"Bool takes a bool, not {obj!r}")
        return ct(bool(obj))
    if isinstance(obj, float) or not hasattr(type(obj), "__index__"):
        raise TypeError(f"{t.__name__} takes an int, not {type(obj).__name__}")
    n = obj.__index__()  # type: ignore[attr-defined]
    bits = 8 * ctypes.sizeof(ct)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if ct(-1).value == -1 else (0, (1 << bits) - 1)
    if not lo <= n <= hi:
        raise OverflowError(f"{n} is out of range for {t.__name__}")
    return ct(n)


def _shell(cls: type, for_pointer: bool = False) -> type | None:
    """The ctypes class of a struct, before its `_fields_` are set (ctypes'
    own idiom for self-reference). None when `for_pointer` and the class
    derives from a struct whose layout is being worked out."""
    shell = cls.__dict__.get("_rsalloc_shell_")
    if shell is not None:
        return shell  # type: ignore[no-any-return]
    parent = _struct_base(cls)
    if parent is None:
        cbase: type = ctypes.Union if issubclass(cls, Union) else ctypes.Structure
    elif for_pointer and parent in _resolving:
        return None
    else:
        cbase = _complete(parent)._rsalloc_ctype_  # type: ignore[attr-defined]
    ns: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
    pack = cls.__dict__.get("_rsalloc_pack_")
    if pack is not None:
        ns["_pack_"] = pack
    shell = type(cls.__name__, (cbase,), ns)
    type.__setattr__(cls, "_rsalloc_shell_", shell)
    return shell


def _struct_base(cls: type) -> type | None:
    """The struct class `cls` extends (its fields come first), if any."""
    for b in cls.__bases__:
        if _is_struct(b):
            return b
    return None


def _resolve(cls: type, name: str, annotation: object) -> object:
    if not isinstance(annotation, str):
        return annotation
    globalns = cls.__dict__.get("_rsalloc_globals_")
    if globalns is None:
        module = sys.modules.get(cls.__module__)
        globalns = dict(vars(module)) if module is not None else {}
    frame = cls.__dict__.get("_rsalloc_frame_")
    localns = dict(frame.f_locals) if frame is not None else {}
    # The classes being laid out are known by name, though their class
    # statements have not bound them yet (A holds a B that holds an A).
    for c in _resolving:
        localns.setdefault(c.__name__, c)
    localns[cls.__name__] = cls
    try:
        t: object = eval(annotation, globalns, localns)  # noqa: S307 - the class's own annotation
        # Under `from __future__ import annotations` a quoted annotation
        # ("Pointer[Node]") arrives quoted twice: one eval gives the string.
        if isinstance(t, str):
            t = eval(t, globalns, localns)  # noqa: S307 - as above
        return t
    except NameError as e:
        raise _Unresolved(f"{cls.__name__}.{name}: cannot resolve {annotation!r} ({e})") from e


def _complete(cls: type) -> type:
    """Works out the layout of `cls` once: its ctypes class gets its
    `_fields_`; `_rsalloc_ctype_` and `_rsalloc_fields_` are set."""
    if "_rsalloc_ctype_" in cls.__dict__:
        return cls
    if cls in _resolving:
        chain = " -> ".join(c.__name__ for c in _resolving[_resolving.index(cls):] + [cls])
        raise TypeError(f"{cls.__name__} contains itself by value ({chain}): use Pointer[{cls.__name__}]")
    _resolving.append(cls)
    try:
        fields = []
        for name, annotation in cls.__dict__.get("_rsalloc_annotations_", {}).items():
            t = _resolve(cls, name, annotation)
            try:
                ct = ctype_of(t)
            except _Unresolved:
                raise
            except TypeError as e:
                raise TypeError(f"{cls.__name__}.{name}: {e}") from None
            fields.append((name, t, ct))
        shell = _shell(cls)
        assert shell is not None
        shell._fields_ = [(name, ct) for name, _, ct in fields]  # type: ignore[attr-defined]
        info = tuple((name, t, getattr(shell, name).offset, isinstance(t, type) and issubclass(t, _types.PointerSlot)) for name, t, _ in fields)
        type.__setattr__(cls, "_rsalloc_fields_", info)
        type.__setattr__(cls, "_rsalloc_ctype_", shell)
        for scope in ("_rsalloc_frame_", "_rsalloc_globals_"):
            if scope in cls.__dict__:
                type.__delattr__(cls, scope)
    finally:
        _resolving.remove(cls)
    return cls


def _layout(cls: type) -> tuple[int, int, str, type | None, tuple[tuple[str, object, int, bool], ...]]:
    """(size, alignment, buffer format, struct base, own fields) for the Rust layer."""
    if not _is_struct(cls):
        raise TypeError(f"{cls.__name__} is the base of struct classes, not an element type: subclass it")
    ct = _complete(cls)._rsalloc_ctype_  # type: ignore[attr-defined]
    fmt = _element_format(ct)
    return (ctypes.sizeof(ct), ctypes.alignment(ct), fmt, _struct_base(cls), cls._rsalloc_fields_)  # type: ignore[attr-defined]


def _array_layout(cls: type) -> tuple[type, int, str]:
    if cls is Array:
        raise TypeError("Array is not an element type: use Array[T, n]")
    return (cls._element_, cls._length_, _element_format(cls.ctype))  # type: ignore[attr-defined]


class _StructMeta(type(_StructView)):  # type: ignore[misc]
    """Makes struct classes slot-less (a view is a small object) and keeps
    what their layout needs: the annotations, `pack`, the defining scope."""

    def __new__(mcls, name: str, bases: tuple[type, ...], ns: dict[str, Any], *, pack: int | None = None) -> Any:
        annotations = dict(ns.get("__annotations__", {}))
        for field in annotations:
            if field in ns:
                raise TypeError(
                    f"{name}.{field} has a value: struct fields have none (the memory holds them; calloc zeroes it)"
                )
        if pack is not None and (not isinstance(pack, int) or isinstance(pack, bool) or pack < 1 or pack & (pack - 1)):
            raise ValueError(f"pack must be a power of two (1, 2, 4, ...), not {pack!r}")
        ns = dict(ns)
        ns.setdefault("__slots__", ())
        cls = super().__new__(mcls, name, bases, ns)
        if _StructMeta._ready and len([b for b in cls.__mro__ if b in (Struct, Union)]) > 1:
            raise TypeError(f"{name} derives from both Struct and Union")
        type.__setattr__(cls, "_rsalloc_annotations_", annotations)
        type.__setattr__(cls, "_rsalloc_pack_", pack)
        # The scope the class statement ran in, for string annotations that
        # name its local classes. Kept only until the layout is known: a
        # class naming one defined later holds that scope until first use.
        frame = sys._getframe(1)
        type.__setattr__(cls, "_rsalloc_globals_", frame.f_globals)
        if frame.f_locals is not frame.f_globals:
            type.__setattr__(cls, "_rsalloc_frame_", frame)
        if _StructMeta._ready:
            try:
                _types_sizeof(cls)  # resolve now when every name is known
            except _Unresolved:
                pass  # a name defined later: resolved on first use
        return cls

    def __init__(cls, name: str, bases: tuple[type, ...], ns: dict[str, Any], **kw: Any) -> None:
        super().__init__(name, bases, ns)

    _ready = False

    @property
    def ctype(cls) -> type:
        """The equivalent ctypes Structure (or Union) type."""
        return ctype_of(cls)


def _types_sizeof(cls: type) -> int:
    from ._rsalloc import sizeof

    return sizeof(cls)


class Struct(_StructView, metaclass=_StructMeta):
    """Base of struct classes: fields are the class's annotations, in order,
    laid out as C lays them out (`class S(Struct, pack=1)` packs like
    `#pragma pack(1)`). Allocate one with `calloc(S)`; `p.ref` is a view."""

    def __new__(cls, *args: object, **kwargs: object) -> Any:
        raise TypeError(f"{cls.__name__} is a struct type, not a value: allocate one with calloc({cls.__name__}), then use p.ref")


class Union(_StructView, metaclass=_StructMeta):
    """Base of union classes: like Struct, with every field at offset 0."""

    def __new__(cls, *args: object, **kwargs: object) -> Any:
        raise TypeError(f"{cls.__name__} is a union type, not a value: allocate one with calloc({cls.__name__}), then use p.ref")


_StructMeta._ready = True


class _ArrayMeta(type):
    @property
    def ctype(cls) -> type:
        """The equivalent ctypes array type."""
        if cls is Array:
            raise TypeError("Array has no ctype: use Array[T, n]")
        return ctype_of(cls._element_) * cls._length_  # type: ignore[attr-defined,no-any-return]


_arrays: dict[tuple[object, int], type] = {}


def _length(n: object) -> int:
    literal = getattr(n, "__args__", None)  # Literal[4], as the stubs spell it
    if literal is not None and len(literal) == 1 and getattr(n, "__origin__", None) is not None:
        n = literal[0]
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"Array[T, n] takes an int length, not {n!r}")
    if n < 0:
        raise ValueError(f"Array length must not be negative, got {n}")
    return n


class Array(metaclass=_ArrayMeta):
    """`Array[T, n]`: a field of n elements of T, held inline (C's `T x[n]`).
    A view's array field reads as a `Pointer[T]` of count n into the struct."""

    __slots__ = ()
    _element_: type
    _length_: int

    def __new__(cls, *args: object, **kwargs: object) -> Any:
        raise TypeError("Array[T, n] is a field type, not a value")

    def __class_getitem__(cls, params: object) -> type:
        if not isinstance(params, tuple) or len(params) != 2:
            raise TypeError("Array takes a type and a length: Array[T, n]")
        t, n = params
        n = _length(n)
        if not isinstance(t, type) or t is _types.Void:
            raise TypeError(f"Array[T, n] needs an element type with a size, not {t!r}")
        key = (t, n)
        made = _arrays.get(key)
        if made is None:
            name = f"Array[{getattr(t, '__name__', repr(t))}, {n}]"
            made = _ArrayMeta(name, (Array,), {"__slots__": (), "_element_": t, "_length_": n, "__module__": "rsalloc"})
            made = _arrays.setdefault(key, made)
        return made


def offsetof(t: type, field: str) -> int:
    """The byte offset of `field` in the struct or union `t` (an rsalloc
    Struct/Union or a ctypes Structure/Union), as C's `offsetof`."""
    ct = ctype_of(t) if _is_struct(t) else t
    if not (isinstance(ct, type) and issubclass(ct, (ctypes.Structure, ctypes.Union))):
        raise TypeError(f"offsetof() takes a struct or union type, not {t!r}")
    desc = getattr(ct, field, None) if isinstance(field, str) else None
    if desc is None or not hasattr(desc, "offset"):
        raise AttributeError(f"{t.__name__} has no field {field!r}")
    return desc.offset  # type: ignore[no-any-return]
