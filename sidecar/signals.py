"""Signal handlers set together and put back together, the way they were found.

Handlers set here only set flags or raise; the main thread acts (uvicorn's model).
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import time
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


class Waker:
    """Wakes the main loop from a signal handler or another thread, taking no lock.

    ``threading.Event.set`` takes the event's lock; a signal handler calling it while
    the main thread holds that lock (inside ``Event.wait``/``clear``, or an earlier
    handler's ``set``) deadlocks the main thread for good, SIGTERM included. A byte
    sent on a non-blocking socket pair takes no Python lock. Until ``open`` (and after
    ``close``) ``set`` does nothing: the flags the handlers set are read anyway.
    """

    def __init__(self) -> None:
        self._pair: tuple[socket.socket, socket.socket] | None = None

    def open(self) -> None:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._pair = (reader, writer)

    def set(self) -> None:
        pair = self._pair
        if pair is not None:
            with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
                pair[1].send(b"\0")

    def wait(self, timeout: float) -> None:
        pair = self._pair
        if pair is None:
            time.sleep(timeout)
            return
        select.select([pair[0]], [], [], timeout)
        with contextlib.suppress(OSError):
            while pair[0].recv(4096):
                pass

    def close(self) -> None:
        pair, self._pair = self._pair, None
        if pair is not None:
            for sock in pair:
                sock.close()
