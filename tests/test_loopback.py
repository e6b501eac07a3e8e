"""sidecar.loopback.poke wakes an accept() on the socket's own address, wildcard or not."""

from __future__ import annotations

import socket
import threading

import pytest

from sidecar import loopback


@pytest.mark.parametrize(
    ("family", "host"),
    [
        (socket.AF_INET, "127.0.0.1"),
        (socket.AF_INET, "0.0.0.0"),
        (socket.AF_INET6, "::"),
    ],
)
def test_poke_wakes_a_blocking_accept(family: socket.AddressFamily, host: str) -> None:
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with socket.socket(family, socket.SOCK_STREAM) as server:
        try:
            server.bind((host, 0))
        except OSError as exc:
            pytest.skip(f"cannot bind {host}: {exc}")
        server.listen(1)
        accepted = threading.Event()

        def accept() -> None:
            conn, _peer = server.accept()
            conn.close()
            accepted.set()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        loopback.poke(server.getsockname())
        assert accepted.wait(5)
        thread.join(5)


def test_poke_of_a_closed_port_is_quiet() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = probe.getsockname()
    loopback.poke(address)  # nothing listens there any more: no exception
