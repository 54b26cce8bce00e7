"""Constants that pure-Python parts of the package need without importing the
extension (the pytest plugin's options, the package's top level)."""

from __future__ import annotations

__all__ = ["DEFAULT_FRAMES", "TRACEMALLOC_DOMAIN"]

#: Frames of Python traceback recorded per allocation while tracking is on.
DEFAULT_FRAMES = 8

#: The tracemalloc domain rsalloc reports its blocks in (DESIGN §7): filter a
#: snapshot with ``tracemalloc.DomainFilter(True, TRACEMALLOC_DOMAIN)``.
#: An arbitrary constant, distinct from Python's own domain 0 and numpy's
#: 389047; the digits spell "rsal" on a phone keypad (7725).
TRACEMALLOC_DOMAIN = 7725
