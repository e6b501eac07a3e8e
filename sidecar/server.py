"""The HTTP endpoints: /metrics, /healthz and /readyz, and nothing else.

The port is open to anyone who can reach the pod, so it is no lever on the token:
at most ``MAX_CONNECTIONS`` are served at once (the next is closed at once), a
request head must arrive within ``READ_TIMEOUT_SECONDS`` however it is paced, and
running out of file descriptors only pauses accepting. A small HTTP/1.0 reader of
our own, not ``http.server``: it costs no import before the first token, and every
read is under one deadline instead of a per-read timeout a trickle can renew.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import resource
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sidecar import loopback
from sidecar.errors import StartupError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

Probe = Callable[[], tuple[bool, dict[str, Any]]]

MAX_CONNECTIONS = 64
READ_TIMEOUT_SECONDS = 5.0
MAX_HEAD_BYTES = 8192
# After EMFILE and the like: the kernel keeps the connection queued; try again soon.
ACCEPT_PAUSE_SECONDS = 0.1
_SHORTAGE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_TOKEN = re.compile("[A-Z]{1,16}")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


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
        sock.listen(MAX_CONNECTIONS)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise StartupError(f"cannot listen on {shown}: {exc.strerror or exc}") from exc
    return sock


def connection_cap() -> int:
    """``MAX_CONNECTIONS``, or fewer when the descriptor limit is low.

    Each served connection may hold two descriptors (its socket and a /proc file
    the process metrics read); three quarters of the limit stay for the refresh loop.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft // 8))


class ProbeServer:
    """Serves the three endpoints from a daemon thread, on a socket from ``bind``.

    ``/metrics`` waits (up to ``metrics_wait`` seconds) until ``publish`` hands over
    the registry, which happens once the first attempt has ended.
    """

    def __init__(
        self,
        sock: socket.socket,
        health: Probe,
        ready: Probe,
        *,
        metrics_wait: float = 30.0,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        log: Any = None,
    ) -> None:
        self._sock = sock
        self._probes = {"/healthz": health, "/readyz": ready}
        self._registry: CollectorRegistry | None = None
        self._published = threading.Event()
        self._metrics_wait = metrics_wait
        self._read_timeout = read_timeout
        self._log = log
        self._cap = connection_cap()
        self._active = 0
        self._count_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="probe-server", daemon=True)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def publish(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._published.set()

    def start(self) -> ProbeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._published.set()  # a scrape still waiting gets its 503 now
        # Wakes the blocked accept on Linux; the connection to ourselves elsewhere.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive():
            loopback.poke(self._sock.getsockname())
            self._thread.join(1.0)
        self._sock.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _peer = self._sock.accept()
            except OSError as exc:
                if self._stopping.is_set():
                    return
                # Out of descriptors (or anything else): pause, never spin or die.
                pause = (
                    ACCEPT_PAUSE_SECONDS if exc.errno in _SHORTAGE else ACCEPT_PAUSE_SECONDS / 10
                )
                time.sleep(pause)
                continue
            with self._count_lock:
                admitted = self._active < self._cap
                if admitted:
                    self._active += 1
            if not admitted:
                conn.close()
                continue
            try:
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
            except RuntimeError:  # no thread to be had: as full as at the cap
                self._release(conn)

    def _release(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.close()
        with self._count_lock:
            self._active -= 1

    def _serve(self, conn: socket.socket) -> None:
        started = time.monotonic()
        method = path = "-"
        status = 0
        try:
            head = self._read_head(conn, started + self._read_timeout)
            if head is None:
                return
            method, path, reply = self._answer(head)
            status = reply.status
            conn.settimeout(self._read_timeout)
            conn.sendall(_response(reply, with_body=method != "HEAD"))
            _linger(conn, started + 2 * self._read_timeout)
        except OSError:
            return
        except Exception:  # noqa: BLE001 - no traceback on stderr from a client's bytes
            if self._log is not None:
                self._log.error("probe_failed", message="answering a probe raised an error")
        finally:
            self._release(conn)
            if self._log is not None and status:
                self._log.debug(
                    "probe_request",
                    method=method[:16],
                    path=path[:200],
                    status=status,
                    duration=round(time.monotonic() - started, 4),
                )

    def _read_head(self, conn: socket.socket, deadline: float) -> bytes | None:
        """The request line and headers, or None when the client is too slow or gone."""
        head = b""
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            conn.settimeout(left)
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                return None
            if not chunk:
                return None
            head += chunk
            if len(head) > MAX_HEAD_BYTES:
                return b""  # answered 431
        return head

    def _answer(self, head: bytes) -> tuple[str, str, Reply]:
        """(method, path, reply) for a request head."""
        request = _parse(head)
        if isinstance(request, Reply):
            return "-", "-", request
        method, path, accept = request
        if method not in {"GET", "HEAD"}:
            reply = _text(405, "only GET and HEAD\n")
            reply.headers["Allow"] = "GET, HEAD"
            return method, path, reply
        try:
            if path == "/metrics":
                return method, path, self._metrics(accept)
            probe = self._probes.get(path)
            if probe is None:
                return method, path, _text(404, "not found\n")
            ok, detail = probe()
        except Exception:  # noqa: BLE001 - a probe must answer, never kill the port
            if self._log is not None:
                self._log.error("probe_failed", path=path, message="the probe raised an error")
            return method, path, _text(500, "internal error\n")
        body = json.dumps(detail, separators=(",", ":")).encode()
        return method, path, Reply(200 if ok else 503, {"Content-Type": "application/json"}, body)

    def _metrics(self, accept: str) -> Reply:
        # Bounded: the first attempt ends within twice the API timeout.
        self._published.wait(self._metrics_wait)
        registry = self._registry
        if registry is None:
            return _text(503, "metrics not ready yet\n")
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        return Reply(200, {"Content-Type": content_type}, encoder(registry))


@dataclass(slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def _parse(head: bytes) -> tuple[str, str, str] | Reply:
    """(method, path, Accept header) of a request head, or the error reply."""
    if not head:
        return _text(431, "request head too large\n")
    lines = head.decode("latin-1").splitlines()
    parts = lines[0].split(" ") if lines else []
    if len(parts) != 3 or not parts[2].startswith("HTTP/") or not _TOKEN.fullmatch(parts[0]):
        return _text(400, "bad request\n")
    return parts[0], parts[1].split("?", 1)[0], _header(lines[1:], "accept")


def _header(lines: list[str], name: str) -> str:
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name:
            return value.strip()
    return ""


def _text(status: int, text: str) -> Reply:
    return Reply(status, {"Content-Type": "text/plain; charset=utf-8"}, text.encode())


def _response(reply: Reply, *, with_body: bool) -> bytes:
    lines = [f"HTTP/1.0 {reply.status} {_REASONS.get(reply.status, '')}"]
    lines += ["Server: forestreet-sidecar", *(f"{k}: {v}" for k, v in reply.headers.items())]
    lines += [f"Content-Length: {len(reply.body)}", "Cache-Control: no-store", "Connection: close"]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + reply.body if with_body else head


def _linger(conn: socket.socket, deadline: float) -> None:
    """Close only once the client has read the answer: unread input would turn the
    close into a reset that can discard the answer (a 431 to a client still sending).
    Bounded in time and bytes."""
    conn.shutdown(socket.SHUT_WR)
    drained = 0
    while drained < 1 << 20:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        conn.settimeout(min(left, 1.0))
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            return
        if not chunk:
            return
        drained += len(chunk)
