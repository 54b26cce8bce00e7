"""pytest plugin (entry point ``pytest11``): ``pytest --rsalloc-leaks`` fails
every test whose call leaves native memory from rsalloc allocated, and shows
where each block was allocated.

Markers: ``@pytest.mark.rsalloc_leaks`` checks one test even without the
option; ``@pytest.mark.no_rsalloc_leaks`` never checks it. Without the option
and the marker the plugin does nothing, and does not even import the
extension: rsalloc.tracking is imported by the first test it checks.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from ._constants import DEFAULT_FRAMES


def pytest_addoption(parser: pytest.Parser) -> None:
    """Adds ``--rsalloc-leaks`` and ``--rsalloc-frames``."""
    group = parser.getgroup("rsalloc", "rsalloc native memory")
    group.addoption(
        "--rsalloc-leaks",
        action="store_true",
        default=False,
        help="fail each test that leaks native memory allocated through rsalloc",
    )
    group.addoption(
        "--rsalloc-frames",
        type=int,
        default=None,
        metavar="N",
        help=f"frames of traceback recorded per allocation (default {DEFAULT_FRAMES})",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Declares the ``rsalloc_leaks`` and ``no_rsalloc_leaks`` markers."""
    config.addinivalue_line("markers", "rsalloc_leaks: fail this test if it leaks rsalloc native memory")
    config.addinivalue_line("markers", "no_rsalloc_leaks: never check this test for rsalloc leaks")


def _checked(item: pytest.Item) -> bool:
    if item.get_closest_marker("no_rsalloc_leaks") is not None:
        return False
    if item.get_closest_marker("rsalloc_leaks") is not None:
        return True
    return bool(item.config.getoption("--rsalloc-leaks", default=False))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    """Runs a checked test inside a ``leak_check`` span and fails it if it leaked."""
    if not _checked(item):
        return (yield)
    from . import tracking

    check = tracking.leak_check(frames=item.config.getoption("--rsalloc-frames", default=None))
    check.__enter__()
    try:
        result = yield
    finally:
        found = check.finish()
    if found:
        __tracebackhide__ = True
        raise tracking._leak_error(found, f"test {item.nodeid}")
    return result
