"""The fake's HTTP side: the threading server and the handler that routes each request."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast

from sidecar.fake_api.answers import Answer, Recorded

if TYPE_CHECKING:
    from sidecar.fake_api.server import FakeApi

SESSION_PATH = "/v2/auth/session"
CONTROL_PREFIX = "/_fake/"

# A control request may carry a large raw body for a scripted answer, but not an unbounded one.
_MAX_CONTROL_BODY = 64 * 1024 * 1024


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # stop() must not wait for handlers; they notice the stop event or a shut-down socket.
    block_on_close = False

    def __init__(self, address: tuple[str, int], fake: FakeApi) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.fake = fake
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup of the host, which can stall startup.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up or fails the TLS handshake is routine here, not worth a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a requests.Session expects
    server_version = "forestreet-fake-api"
    # Headers and body go out in separate writes; with Nagle on, the body waits for a delayed ACK.
    disable_nagle_algorithm = True

    @property
    def fake(self) -> FakeApi:
        return cast(Server, self.server).fake

    def setup(self) -> None:
        self.fake._connection_opened(self.request)
        try:
            if isinstance(self.request, ssl.SSLSocket):
                # Deferred from accept() so a slow TLS client cannot stall the accept loop.
                self.request.do_handshake()
            super().setup()
        except BaseException:
            self.fake._connection_closed(self.request)
            raise

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.fake._connection_closed(self.request)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the fake logs one line per request itself, through FakeApi.log

    def do_GET(self) -> None:
        self._dispatch()

    # The base class looks handlers up by these exact names.
    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET  # noqa: N815

    def _read_body(self) -> bytes | None:
        """The request body, or None when it cannot be read (the connection is then closed)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self.close_connection = True
            return None
        if length < 0 or length > _MAX_CONTROL_BODY:
            self.close_connection = True
            return None
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        fake = self.fake
        path = self.path.partition("?")[0]
        body = self._read_body()
        key = self.headers.get("x-api-key")
        fake._record(Recorded(self.command, path, key, time.monotonic()))
        extra_headers: list[tuple[str, str]] = []
        if path.startswith(CONTROL_PREFIX):
            answer = fake._control(self.command, path, body)
        elif path != SESSION_PATH:
            answer = Answer(error_code="ENDPOINT_NOT_FOUND")
        elif self.command not in ("GET", "HEAD"):
            answer = Answer(error_code="METHOD_NOT_ALLOWED")
            extra_headers.append(("Allow", "GET, HEAD"))
        elif key is None or not key.strip():
            answer = Answer(error_code="UNAUTHORISED")
        else:
            answer = fake._next_answer()
        outcome = "aborted"
        try:
            outcome = self._send(answer, extra_headers)
        except OSError:
            self.close_connection = True
            outcome = "client gone"
        finally:
            fake._log_request(self.command, path, answer, outcome)

    def _send(self, answer: Answer, extra_headers: list[tuple[str, str]]) -> str:
        fake = self.fake
        if answer.delay and fake._stopping.wait(answer.delay):
            self.close_connection = True
            return "aborted"
        status = answer.effective_status
        body = fake._render(answer, status, served=self.command != "HEAD")
        if answer.reset and not body:
            self._reset()
            return "reset"
        self._send_head(answer, status, len(body), extra_headers)
        payload = b"" if self.command == "HEAD" else body
        if answer.reset:
            self.wfile.write(payload[: len(payload) // 2])
            self._reset()
            return "reset"
        if answer.trickle > 0:
            for index in range(len(payload)):
                self.wfile.write(payload[index : index + 1])
                if index + 1 < len(payload) and fake._stopping.wait(answer.trickle):
                    self.close_connection = True
                    return "aborted"
        else:
            self.wfile.write(payload)
        return "sent"

    def _send_head(
        self, answer: Answer, status: int, length: int, extra_headers: list[tuple[str, str]]
    ) -> None:
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", answer.content_type or "application/json")
            self.send_header("Content-Length", str(length))
        elif answer.content_type:
            self.send_header("Content-Type", answer.content_type)
        if answer.retry_after is not None:
            self.send_header("Retry-After", answer.retry_after)
        if answer.location is not None:
            self.send_header("Location", answer.location)
        for name, value in extra_headers:
            self.send_header(name, value)
        if answer.reset or self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _reset(self) -> None:
        """Close abruptly: SO_LINGER 0 makes close() send RST instead of FIN."""
        self.close_connection = True
        sock = self.request
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # rfile holds a reference to the socket; the descriptor closes only once both are closed.
        self.rfile.close()
        sock.close()
