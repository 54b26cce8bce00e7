"""`rsalloc.using`: a computation inside a fresh arena (Dart's `using`)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._rsalloc import Allocator, Arena

__all__ = ["using"]

_R = TypeVar("_R")


def using(fn: Callable[[Arena], Any], allocator: Allocator | None = None) -> Any:
    """Calls ``fn(arena)`` inside a fresh ``Arena(allocator)``, releases the
    arena (also when fn raises) and returns fn's result.

    For an ``async def`` fn, returns a coroutine that runs it inside
    ``async with Arena(allocator)``, so the arena lives until fn finishes.
    """
    if inspect.iscoroutinefunction(fn):
        return _using_async(fn, allocator)
    with Arena(allocator) as arena:
        return fn(arena)


async def _using_async(fn: Callable[[Arena], Awaitable[_R]], allocator: Allocator | None) -> _R:
    async with Arena(allocator) as arena:
        return await fn(arena)
