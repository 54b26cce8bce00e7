# Typing stubs for rsalloc: the whole public API (DESIGN.md §2-§9).
import builtins
import ctypes
import types
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import Any, ClassVar, Generic, Literal, SupportsIndex, TypeVar, overload

from typing_extensions import Self

from ._errors import (
    ArenaClosedError as ArenaClosedError,
    DoubleFreeError as DoubleFreeError,
    HeapCorruptionError as HeapCorruptionError,
    LeakError as LeakError,
    NullPointerError as NullPointerError,
    OwnershipError as OwnershipError,
    RsallocError as RsallocError,
    UseAfterFreeError as UseAfterFreeError,
)
from ._protocols import AllocatorLike as AllocatorLike
from ._types import (
    Bool as Bool,
    Double as Double,
    Float as Float,
    Float32 as Float32,
    Float64 as Float64,
    Floating as Floating,
    Int8 as Int8,
    Int16 as Int16,
    Int32 as Int32,
    Int64 as Int64,
    Integer as Integer,
    IntPtr as IntPtr,
    NativeType as NativeType,
    Size as Size,
    Uint8 as Uint8,
    Uint16 as Uint16,
    Uint32 as Uint32,
    Uint64 as Uint64,
    Void as Void,
)
from . import tracking as tracking
from .tracking import (
    LeakRecord as LeakRecord,
    leak_check as leak_check,
    leak_report as leak_report,
    leaks as leaks,
)

__version__: str

_T_co = TypeVar("_T_co", covariant=True)
_T = TypeVar("_T")
_U = TypeVar("_U")
_S = TypeVar("_S", bound=ctypes.Structure | ctypes.Union | Struct | Union)
_N = TypeVar("_N", bound=int)
_R = TypeVar("_R")

_Buffer = bytes | bytearray | memoryview
_Errors = Literal["strict", "ignore", "replace", "backslashreplace", "surrogateescape", "surrogatepass"] | str

class Pointer(Generic[_T_co]):
    """A typed, checked view of native memory."""

    @property
    def address(self) -> int: ...
    def __int__(self) -> int: ...
    @property
    def type(self) -> type[_T_co]: ...
    @property
    def count(self) -> int | None: ...
    @property
    def nbytes(self) -> int | None: ...
    def __len__(self) -> int: ...
    @overload
    def __getitem__(self: Pointer[Integer], i: SupportsIndex) -> int: ...
    @overload
    def __getitem__(self: Pointer[Floating], i: SupportsIndex) -> float: ...
    @overload
    def __getitem__(self: Pointer[Bool], i: SupportsIndex) -> bool: ...
    @overload
    def __getitem__(self: Pointer[Pointer[_U]], i: SupportsIndex) -> Pointer[_U]: ...
    @overload
    def __getitem__(self: Pointer[_S], i: SupportsIndex) -> _S: ...
    @overload
    def __getitem__(self: Pointer[Integer], i: slice) -> list[int]: ...
    @overload
    def __getitem__(self: Pointer[Floating], i: slice) -> list[float]: ...
    @overload
    def __getitem__(self: Pointer[Bool], i: slice) -> list[bool]: ...
    @overload
    def __getitem__(self, i: SupportsIndex) -> Any: ...
    @overload
    def __getitem__(self, i: slice) -> list[Any]: ...
    def __setitem__(self, i: SupportsIndex | slice, value: Any) -> None: ...
    def __iter__(self) -> Iterator[Any]: ...
    @property
    def value(self) -> Any: ...
    @value.setter
    def value(self, v: Any) -> None: ...
    @property
    def ref(self: Pointer[_S]) -> _S: ...
    def __add__(self, n: SupportsIndex) -> Pointer[_T_co]: ...
    def __radd__(self, n: SupportsIndex) -> Pointer[_T_co]: ...
    def offset(self, n: int) -> Pointer[_T_co]: ...
    def view(self, start: SupportsIndex = 0, count: SupportsIndex | None = None) -> Pointer[_T_co]:
        """`count` elements from element `start` of the same memory (None: to the end)."""
    __array_ufunc__: ClassVar[None]
    def __array__(self, dtype: Any = None, copy: bool | None = None) -> Any: ...
    def cast(self, t: builtins.type[_U]) -> Pointer[_U]: ...
    def to_str(self, length: int | None = None, errors: _Errors = "strict") -> str: ...
    def read_bytes(self, n: int | None = None) -> bytes: ...
    def write_bytes(self, data: _Buffer, offset: int = 0) -> None: ...
    def fill(self, byte: int) -> None: ...
    def copy_from(self, src: Pointer[Any] | _Buffer) -> None: ...
    def __buffer__(self, flags: int) -> memoryview: ...
    @property
    def _as_parameter_(self) -> ctypes.c_void_p: ...
    @property
    def allocator(self) -> Allocator | Arena | None: ...
    @property
    def alive(self) -> bool: ...
    @property
    def is_null(self) -> bool: ...
    def __bool__(self) -> bool: ...
    @staticmethod
    def from_address(address: int | None, type: builtins.type[_U], count: int | None = None) -> Pointer[_U]: ...
    def detach(self) -> int: ...
    def autofree(self) -> Pointer[_T_co]: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...
    @classmethod
    def from_param(cls, obj: Pointer[Any] | None) -> Any:
        """ctypes' argument conversion, for `argtypes = [Pointer[Uint8], Size]`."""
    # A struct field declared `Pointer[T]` (`appKey: Pointer[Int8]` in a
    # Struct body): reads a Pointer[T]; takes any Pointer (C converts
    # pointers to the declared type), an int address or None (NULL).
    @overload
    def __get__(self, obj: None, owner: Any) -> Self: ...
    @overload
    def __get__(self, obj: object, owner: Any) -> Pointer[_T_co]: ...
    def __set__(self, obj: object, value: Pointer[Any] | int | None) -> None: ...

class _StructMeta(type):
    @property
    def ctype(cls) -> builtins.type[ctypes.Structure | ctypes.Union]:
        """The equivalent ctypes Structure or Union type."""

class Struct(metaclass=_StructMeta):
    """Base of struct classes: the annotations are the fields, in C layout.
    `p.ref` of a `Pointer[S]` is a view; `class S(Struct, pack=1)` packs."""

    def __init_subclass__(cls, *, pack: int | None = None) -> None: ...

class Union(metaclass=_StructMeta):
    """Base of union classes: like Struct, every field at offset 0."""

    def __init_subclass__(cls, *, pack: int | None = None) -> None: ...

class Array(Generic[_T, _N]):
    """`Array[T, n]` (typed `Array[T, Literal[n]]`): a field of n T held
    inline; reads as a `Pointer[T]` of count n into the struct."""

    ctype: ClassVar[builtins.type[ctypes.Array[Any]]]
    @overload
    def __get__(self, obj: None, owner: Any) -> Self: ...
    @overload
    def __get__(self, obj: object, owner: Any) -> Pointer[_T]: ...
    def __set__(self, obj: object, value: Iterable[Any]) -> None: ...

def offsetof(t: type[Struct | Union | ctypes.Structure | ctypes.Union], field: str) -> int: ...

class Stats:
    """A snapshot of allocation counters."""

    @property
    def live_count(self) -> int: ...
    @property
    def live_bytes(self) -> int: ...
    @property
    def peak_bytes(self) -> int: ...
    @property
    def total_allocs(self) -> int: ...
    @property
    def total_frees(self) -> int: ...
    @property
    def limit(self) -> int | None:
        """The cap on live_bytes (`a.limited(n)`, `Arena(limit=n)`, `set_limit(n)`), None when unset."""
    def _asdict(self) -> dict[str, int]: ...

class Allocator(AllocatorLike):
    """An owner of native memory: malloc, calloc, arenas, custom allocators.

    Subclass it to define an allocator in Python: implement `_raw_alloc` and
    `_raw_free`; set `zeroed = True` in the class body for calloc semantics;
    an `__init__` of your own must call `super().__init__()`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None: ...
    def _raw_alloc(self, nbytes: int, alignment: int) -> int:
        """(Subclasses) the address of nbytes (>= 1) aligned to alignment, or 0 when out of memory."""
    def _raw_free(self, address: int) -> None:
        """(Subclasses) return a block that _raw_alloc gave."""
    @property
    def zeroed(self) -> bool: ...
    def limited(self, max_bytes: int) -> Allocator:
        """A new allocator (an owner of its own) over this one whose live bytes never pass max_bytes."""

class ForeignAllocator(Allocator):
    """An allocator over two C functions (`void *alloc(size_t)`, `void free(void *)`:
    ctypes function objects or addresses, called natively) or two Python
    callables (`alloc(nbytes) -> int`, `free(address)`). `alloc=None` makes a
    free-only owner for memory a library hands out (adopt works; allocating
    raises TypeError); `sized=True` calls `free(address, nbytes)` with the
    size the block was allocated or adopted with."""

    def __init__(
        self,
        alloc: Callable[[int], int | None] | int | None,
        free: Callable[[int], object] | Callable[[int, int], object] | int,
        zeroed: bool = False,
        *,
        sized: bool = False,
        name: str | None = None,
    ) -> None: ...

class Arena(AllocatorLike):
    """Everything allocated from it is released together (DESIGN §5).

    ``Arena()`` is a bump region of zeroed memory; ``Arena(allocator)``
    allocates through that allocator and frees through it at release.
    It takes every call an Allocator takes (`AllocatorLike`).
    """

    def __init__(self, allocator: Allocator | None = None, limit: int | None = None) -> None: ...
    @property
    def allocator(self) -> Allocator | None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def native_free(self) -> None: ...
    def using(self, resource: _R, release: Callable[[_R], object]) -> _R: ...
    def on_release_all(self, cb: Callable[[], object]) -> None: ...
    def release_all(self, reuse: bool = False) -> None: ...
    def detach(self, p: Pointer[_T]) -> Pointer[_T]: ...
    def __len__(self) -> int: ...
    def __enter__(self) -> Arena: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> Literal[False]: ...
    def __aenter__(self) -> Awaitable[Arena]: ...
    def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> Awaitable[Literal[False]]: ...

malloc: Allocator
calloc: Allocator
adaptive_malloc: Allocator
adaptive_calloc: Allocator
diagnostic_malloc: Allocator
diagnostic_calloc: Allocator
nullptr: Pointer[Void]

def free(p: Pointer[Any]) -> None: ...
def sizeof(t: type[Any]) -> int: ...
def alignof(t: type[Any]) -> int: ...
def stats() -> Stats: ...
def set_limit(max_bytes: int | None) -> None:
    """Caps the live bytes of every rsalloc allocation in the process together; None lifts the cap."""

TRACEMALLOC_DOMAIN: int
def to_native_utf8(s: str, allocator: Allocator | Arena | None = None, *, errors: _Errors = "strict") -> Pointer[Uint8]: ...
def to_native_utf16(s: str, allocator: Allocator | Arena | None = None, *, errors: _Errors = "strict") -> Pointer[Uint16]: ...
def current_arena() -> Arena: ...
@overload
def using(fn: Callable[[Arena], Coroutine[Any, Any, _R]], allocator: Allocator | None = None) -> Coroutine[Any, Any, _R]: ...
@overload
def using(fn: Callable[[Arena], _R], allocator: Allocator | None = None) -> _R: ...
