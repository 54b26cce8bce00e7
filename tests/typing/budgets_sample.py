"""Type-checked (mypy --strict) and run by tests/test_budgets.py: the stubs
of budgets, the tracemalloc domain and the collapsed leak report."""

from __future__ import annotations

import tracemalloc
from typing import Optional

from typing_extensions import assert_type

import rsalloc
from rsalloc import Allocator, Arena, free, malloc


def budgets() -> int:
    lim = malloc.limited(1024)
    assert_type(lim, Allocator)
    assert_type(lim.stats().limit, Optional[int])
    p = lim.allocate(16)
    free(p)
    with Arena(limit=64) as a:
        a.allocate(8)
    b = Arena(malloc, limit=64)
    b.release_all()
    rsalloc.set_limit(1 << 30)
    rsalloc.set_limit(None)
    return (lim.stats().limit or 0) + (rsalloc.stats().limit or 0)


def tracemalloc_domain() -> tracemalloc.DomainFilter:
    assert_type(rsalloc.TRACEMALLOC_DOMAIN, int)
    return tracemalloc.DomainFilter(True, rsalloc.TRACEMALLOC_DOMAIN)


def collapsed() -> str:
    return rsalloc.leak_report(format="collapsed")
