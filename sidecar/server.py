"""The HTTP endpoints: /metrics, /healthz and /readyz, and nothing else."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sidecar.errors import StartupError

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler

    from prometheus_client import CollectorRegistry

Probe = Callable[[], tuple[bool, dict[str, Any]]]


def bind(address: tuple[str, int]) -> socket.socket:
    """A listening socket on ``address``; StartupError naming it when that fails.

    Bound before the first request goes upstream, so a port in use fails the start
    at once; a probe arriving before the server runs waits in the listen backlog.
    """
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise StartupError(f"cannot listen on {shown}: {exc.strerror or exc}") from exc
    return sock


class ProbeServer:
    """Serves the three endpoints from a daemon thread, on a socket from ``bind``.

    ``/metrics`` answers 503 until ``publish`` hands over the registry.
    """

    def __init__(self, sock: socket.socket, health: Probe, ready: Probe) -> None:
        from http.server import ThreadingHTTPServer

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        self._registry: list[CollectorRegistry] = []
        handler = _handler(self._registry, health, ready)
        # Not bound again: HTTPServer.server_bind would also look up the host's FQDN.
        self._server = Server(sock.getsockname()[:2], handler, bind_and_activate=False)
        self._server.socket.close()
        self._server.socket = sock
        self._server.server_address = sock.getsockname()
        # No poll interval: an idle sidecar should not wake up twice a second to check
        # for a shutdown request; ``stop`` wakes the loop with a connection instead.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": None},
            name="probe-server",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def publish(self, registry: CollectorRegistry) -> None:
        self._registry.append(registry)

    def start(self) -> ProbeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            stopping = threading.Thread(target=self._server.shutdown, daemon=True)
            stopping.start()
            for _ in range(20):  # bounded: one poke normally suffices
                self._poke()
                stopping.join(0.05)
                if not stopping.is_alive():
                    break
        self._server.server_close()

    def _poke(self) -> None:
        """Connect to ourselves, so the blocked accept loop sees the shutdown request."""
        host, port = self._server.server_address[:2]
        wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104
        loopback = wildcard.get(str(host), host)
        with contextlib.suppress(OSError):
            socket.create_connection((str(loopback), int(port)), timeout=0.2).close()


def _handler(
    registry: list[CollectorRegistry], health: Probe, ready: Probe
) -> type[BaseHTTPRequestHandler]:
    from http.server import BaseHTTPRequestHandler

    probes = {"/healthz": health, "/readyz": ready}

    class Handler(BaseHTTPRequestHandler):
        server_version = "forestreet-sidecar"
        sys_version = ""

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics" and not registry:
                self._send(503, "text/plain; charset=utf-8", b"metrics not ready yet\n")
            elif path == "/metrics":
                from prometheus_client.exposition import choose_encoder

                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, content_type, encoder(registry[0]))
            elif path in probes:
                ok, detail = probes[path]()
                body = json.dumps(detail, separators=(",", ":")).encode()
                self._send(200 if ok else 503, "application/json", body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")

        def do_HEAD(self) -> None:
            self.do_GET()

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Probes every few seconds would drown the log; they are counted elsewhere."""

    return Handler
