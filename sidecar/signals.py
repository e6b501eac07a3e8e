"""Signal handlers set together and put back together, the way they were found.

Handlers set here only set flags or raise; the main thread acts (uvicorn's model).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import Any

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def install(handlers: Mapping[int, Handler]) -> dict[int, Handler]:
    """Set each handler; return the ones they replace, for :func:`restore`."""
    return {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}


def restore(previous: Mapping[int, Handler]) -> None:
    """Put back the handlers :func:`install` returned."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@contextlib.contextmanager
def installed(handlers: Mapping[int, Handler]) -> Iterator[None]:
    """``handlers`` in place for the ``with`` block (main thread only)."""
    previous = install(handlers)
    try:
        yield
    finally:
        restore(previous)
