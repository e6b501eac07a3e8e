"""Waking a server blocked in ``accept()``: one connection to its own address."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

# A server bound to every address is reached through the loopback of its family.
_WILDCARD = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # noqa: S104


def poke(address: tuple[Any, ...]) -> None:
    """Connect to ``address`` (a listening socket's own) and hang up; errors are ignored."""
    host, port = str(address[0]), int(address[1])
    with (
        contextlib.suppress(OSError),
        socket.create_connection((_WILDCARD.get(host, host), port), timeout=0.2),
    ):
        pass
