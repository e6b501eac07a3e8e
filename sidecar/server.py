"""The HTTP endpoints: /metrics, /healthz and /readyz, and nothing else."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from sidecar.errors import StartupError

Probe = Callable[[], tuple[bool, dict[str, Any]]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class ProbeServer:
    """Serves the three endpoints from a daemon thread."""

    def __init__(
        self, address: tuple[str, int], registry: CollectorRegistry, health: Probe, ready: Probe
    ) -> None:
        self._address = address
        handler = _handler(registry, health, ready)
        server_class = _IPv6Server if ":" in address[0] else _Server
        shown = (
            f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
        )
        try:
            self._server = server_class(address, handler)
        except OSError as exc:
            raise StartupError(f"cannot listen on {shown}: {exc.strerror or exc}") from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="probe-server", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ProbeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


def _handler(
    registry: CollectorRegistry, health: Probe, ready: Probe
) -> type[BaseHTTPRequestHandler]:
    probes = {"/healthz": health, "/readyz": ready}

    class Handler(BaseHTTPRequestHandler):
        server_version = "forestreet-sidecar"
        sys_version = ""

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, content_type, encoder(registry))
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
