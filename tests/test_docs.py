"""`help()` documents every public name: each object in `rsalloc.__all__` (and
`rsalloc.tracking.__all__`), and each public method and property of each
class, has a non-empty docstring; every callable has a signature inspect can
read, without a placeholder default."""

from __future__ import annotations

import inspect
import pydoc
import types
from collections.abc import Iterator
from typing import Any

import pytest

import rsalloc
import rsalloc.tracking

# Dunders that are part of a class's documented protocol when the class
# defines them as methods (rather than CPython slots, which CPython documents).
PROTOCOL = ("__init__", "__enter__", "__exit__", "__aenter__", "__aexit__", "__call__")
# Methods a dataclass writes; their behaviour is the dataclass's.
GENERATED = ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__")


def public_names() -> list[tuple[str, Any]]:
    names = [(f"rsalloc.{n}", getattr(rsalloc, n)) for n in rsalloc.__all__]
    names += [(f"rsalloc.tracking.{n}", getattr(rsalloc.tracking, n)) for n in rsalloc.tracking.__all__]
    return names


def own_classes(cls: type) -> Iterator[type]:
    """cls and its bases that belong to rsalloc."""
    for c in cls.__mro__:
        if c.__module__.startswith("rsalloc"):
            yield c


def members(cls: type) -> Iterator[tuple[str, Any]]:
    is_dataclass = hasattr(cls, "__dataclass_fields__")
    seen: set[str] = set()
    for c in own_classes(cls):
        for name, value in vars(c).items():
            if name in seen:
                continue
            seen.add(name)
            if name.startswith("_") and name not in PROTOCOL:
                continue
            if is_dataclass and name in GENERATED:
                continue
            if isinstance(value, (types.WrapperDescriptorType, types.MethodWrapperType)):
                continue  # a CPython slot: documented by CPython
            if getattr(value, "__module__", None) == "typing":
                continue  # written by typing.Protocol (AllocatorLike's __init__)
            if not (callable(value) or isinstance(value, (property, classmethod, staticmethod))
                    or inspect.isdatadescriptor(value) or inspect.isgetsetdescriptor(value)):
                continue  # a plain class attribute (`_kind_`, a dataclass default)
            yield f"{cls.__name__}.{name}", value


def all_documented() -> list[tuple[str, Any]]:
    out = []
    for qual, obj in public_names():
        out.append((qual, obj))
        cls = obj if inspect.isclass(obj) else None
        if cls is not None:
            out += [(f"rsalloc.{m}", v) for m, v in members(cls)]
    return out


def doc_of(obj: Any) -> str | None:
    if isinstance(obj, (classmethod, staticmethod)):
        obj = obj.__func__
    return obj.__doc__


def test_the_walk_sees_the_pyo3_classes_and_their_members() -> None:
    names = {q for q, _ in all_documented()}
    for expected in (
        "rsalloc.Pointer",
        "rsalloc.Allocator",
        "rsalloc.Arena",
        "rsalloc.Pointer.is_null",
        "rsalloc.Pointer.from_address",
        "rsalloc.Allocator.adopt",
        "rsalloc.Arena.name",
        "rsalloc.Arena.__enter__",
        "rsalloc.Arena.__aexit__",
        "rsalloc.Stats.total_frees",
        "rsalloc.ForeignAllocator.allocate",
        "rsalloc.leak_check.__exit__",
        "rsalloc.LeakRecord.datetime",
        "rsalloc.Int32",
        "rsalloc.tracking.is_enabled",
    ):
        assert expected in names, expected


@pytest.mark.parametrize("qual,obj", all_documented(), ids=lambda x: x if isinstance(x, str) else "")
def test_public_name_has_a_docstring(qual: str, obj: Any) -> None:
    doc = doc_of(obj)
    assert doc is not None and doc.strip(), f"{qual} has no docstring"


def signature_targets() -> list[tuple[str, Any]]:
    out = []
    for qual, obj in all_documented():
        if isinstance(obj, (property, classmethod, staticmethod)) or inspect.isgetsetdescriptor(obj):
            continue
        if not inspect.isroutine(obj):
            continue  # classes, and Allocator instances (called through a CPython slot)
        out.append((qual, obj))
    return out


@pytest.mark.parametrize("qual,obj", signature_targets(), ids=lambda x: x if isinstance(x, str) else "")
def test_callable_has_a_readable_signature(qual: str, obj: Any) -> None:
    sig = inspect.signature(obj)
    for p in sig.parameters.values():
        assert p.default is not Ellipsis, f"{qual}{sig}: {p.name}'s default is unknown"


def test_allocator_instances_share_their_class_documentation() -> None:
    for a in (rsalloc.malloc, rsalloc.calloc, rsalloc.adaptive_malloc, rsalloc.diagnostic_calloc):
        assert a.__doc__ == rsalloc.Allocator.__doc__
    assert rsalloc.nullptr.__doc__ == rsalloc.Pointer.__doc__


def test_help_renders_the_class_documentation() -> None:
    text = pydoc.render_doc(rsalloc.Pointer, renderer=pydoc.plaintext)
    assert "typed, checked view of native memory" in text
    text = pydoc.render_doc(rsalloc.Arena, renderer=pydoc.plaintext)
    assert "released" in text and "Arena(allocator=None)" in text
    text = pydoc.render_doc(rsalloc.Allocator, renderer=pydoc.plaintext)
    assert "_raw_alloc" in text and "adopt(self, /, address, type=None, count=None)" in text
    assert "Ellipsis" not in text
