"""`AllocatorLike`: the calls every owner of native memory takes.

`Allocator` (malloc, calloc, custom allocators) and `Arena` both take these;
a function that only allocates and frees can accept either by annotating its
parameter `AllocatorLike`. The stubs derive both classes from it, so the
signatures are written once, here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar, overload, runtime_checkable

if TYPE_CHECKING:
    from . import Pointer, Stats, Uint8

_T = TypeVar("_T")


def _theirs(name: str) -> NoReturn:
    # A body of its own, not an empty one: the stubs derive Allocator and
    # Arena from the protocol, and mypy makes members with empty bodies
    # abstract in classes that derive from it.
    raise NotImplementedError(f"AllocatorLike.{name}: Allocator and Arena implement it")


@runtime_checkable
class AllocatorLike(Protocol):
    """What an Allocator and an Arena both are: `a(T, count)`,
    `a.allocate(nbytes)`, `a.free(p)`, `a.realloc(p, count)`, `a.adopt(...)`,
    `a.clone(p)`, `a.stats()`, its name and its native free function."""

    @property
    def name(self) -> str:
        """Shown in reprs, reports and error messages."""
        _theirs("name")

    @overload
    def __call__(self, *, alignment: int | None = None) -> Pointer[Uint8]: ...
    @overload
    def __call__(self, type: type[_T], count: int = 1, *, alignment: int | None = None) -> Pointer[_T]: ...
    def __call__(self, type: Any = None, count: int = 1, *, alignment: int | None = None) -> Pointer[Any]:
        """A Pointer[type] to count new elements (one Uint8 without a type)."""
        _theirs("__call__")

    def allocate(self, nbytes: int, *, alignment: int | None = None) -> Pointer[Uint8]:
        """A Pointer[Uint8] to nbytes new bytes."""
        _theirs("allocate")

    def free(self, p: Pointer[Any]) -> None:
        """Frees p's block, which this owner gave."""
        _theirs("free")

    def realloc(self, p: Pointer[_T], count: int) -> Pointer[_T]:
        """p's block resized to count elements (p is stale afterwards)."""
        _theirs("realloc")

    @overload
    def adopt(self, address: int | None) -> Pointer[Uint8]: ...
    @overload
    def adopt(self, address: int | None, type: type[_T], count: int | None = None) -> Pointer[_T]: ...
    def adopt(self, address: int | None, type: Any = None, count: int | None = None) -> Pointer[Any]:
        """Takes ownership of a block C handed over, to be freed through this owner."""
        _theirs("adopt")

    def clone(self, p: Pointer[_T]) -> Pointer[_T]:
        """A new block holding a copy of p's bytes."""
        _theirs("clone")

    @property
    def native_free(self) -> int | None:
        """The address of the C function that frees this owner's blocks, None when C cannot."""
        _theirs("native_free")

    def stats(self) -> Stats:
        """This owner's live and total blocks and bytes."""
        _theirs("stats")
