"""Keeps the extension's "tracemalloc is tracing" flag current (DESIGN §7).

While the flag is on, every rsalloc block is reported to tracemalloc in the
domain ``rsalloc.TRACEMALLOC_DOMAIN``. Asking ``tracemalloc.is_tracing()`` per
block would cost a Python call each, so the flag is set when rsalloc loads
and refreshed by ``tracemalloc.start()`` / ``tracemalloc.stop()``, which
rsalloc wraps at that moment (the wrappers call the originals, then refresh).
Code that starts or stops tracing without going through the ``tracemalloc``
module (``_tracemalloc.start`` directly, or C) should call ``refresh()``.
"""

from __future__ import annotations

import atexit
import functools
import tracemalloc
from types import ModuleType
from typing import Any, Callable

from ._constants import TRACEMALLOC_DOMAIN

__all__ = ["install", "refresh"]

_ext: ModuleType | None = None


def refresh() -> None:
    """Sets the extension's flag from ``tracemalloc.is_tracing()``."""
    if _ext is not None:
        _ext._set_tracemalloc(tracemalloc.is_tracing())


def _wrap(original: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(original, "_rsalloc_wrapped", False):
        return original

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        finally:
            refresh()

    wrapper._rsalloc_wrapped = True  # type: ignore[attr-defined]
    return wrapper


def _off_at_exit() -> None:
    # The interpreter stops tracemalloc in C while finalizing; blocks freed
    # after this point are not reported (tracemalloc is about to forget
    # everything anyway).
    if _ext is not None:
        _ext._set_tracemalloc(False)


def install(ext: ModuleType) -> None:
    """Wraps tracemalloc.start/stop (once) and sets the flag now."""
    global _ext
    if _ext is not None:
        return
    if ext._tracemalloc_domain() != TRACEMALLOC_DOMAIN:
        raise ImportError("rsalloc: the extension's tracemalloc domain differs from TRACEMALLOC_DOMAIN")
    _ext = ext
    tracemalloc.start = _wrap(tracemalloc.start)
    tracemalloc.stop = _wrap(tracemalloc.stop)
    atexit.register(_off_at_exit)
    refresh()
