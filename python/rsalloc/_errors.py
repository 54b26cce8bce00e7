"""The exception hierarchy (DESIGN §8). Defined in Python so that
NullPointerError can also be a ValueError; the Rust layer raises these."""

from typing import Any


__all__ = [
    "RsallocError",
    "UseAfterFreeError",
    "DoubleFreeError",
    "OwnershipError",
    "NullPointerError",
    "ArenaClosedError",
    "LeakError",
    "HeapCorruptionError",
]


class RsallocError(Exception):
    """Base of every error rsalloc raises for a misuse of native memory."""


class UseAfterFreeError(RsallocError):
    """Access through a pointer whose block was freed, reallocated or released."""


class DoubleFreeError(UseAfterFreeError):
    """Free of a pointer whose block is already dead."""


class OwnershipError(RsallocError):
    """Free by a non-owner; of a foreign, detached or interior pointer."""


class NullPointerError(RsallocError, ValueError):
    """Access through a null pointer."""


class ArenaClosedError(RsallocError):
    """Allocation or registration on an arena that was released for good."""


class LeakError(RsallocError):
    """leak_check() found allocations still live at its end."""

    #: The LeakRecords of the allocations still live.
    leaks: list[Any]


class HeapCorruptionError(RsallocError):
    """Guard bytes around a diagnostic block were overwritten."""
