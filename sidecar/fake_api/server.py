"""``FakeApi``: the fake served from a daemon thread, its script, state and control routes."""

from __future__ import annotations

import contextlib
import math
import random
import signal
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from sidecar import loopback, signals
from sidecar.error_codes import ERROR_CODES
from sidecar.fake_api.answers import Answer, Recorded, parse_script
from sidecar.fake_api.bodies import (
    compact_json,
    error_body,
    expires_at_value,
    fake_jwt,
    json_number,
    status_phrase,
)
from sidecar.fake_api.handler import CONTROL_PREFIX, SESSION_PATH, Server

_STOP_JOIN_SECONDS = 2.0


@dataclass(slots=True)
class _State:
    script: deque[Answer] = field(default_factory=deque)
    requests: list[Recorded] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    issued_refresh: list[str] = field(default_factory=list)
    connections: set[socket.socket] = field(default_factory=set)


class FakeApi:
    """The fake auth API, served from a daemon thread; use as a context manager in tests."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        lifetime: float = 3600.0,
        fail_rate: float = 0.0,
        fail_code: str = "SERVICE_UNAVAILABLE",
        retry_after: str | None = None,
        expires_at_unit: str = "ms",
        delay: float = 0.0,
        ssl_context: ssl.SSLContext | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be within 0..1, not {fail_rate}")
        if fail_code not in ERROR_CODES:
            raise ValueError(f"fail_code must be one of the spec's error codes, not {fail_code!r}")
        if expires_at_unit not in ("s", "ms"):
            raise ValueError(f"expires_at_unit must be 's' or 'ms', not {expires_at_unit!r}")
        if not (math.isfinite(delay) and delay >= 0):
            raise ValueError(f"delay must be a finite number >= 0, not {delay!r}")
        self._host = host
        self._requested_port = port
        self._lifetime = lifetime
        self._fail_rate = fail_rate
        self._fail_code = fail_code
        self._retry_after = retry_after
        self._expires_at_unit = expires_at_unit
        self._delay = delay
        self._ssl_context = ssl_context
        self._rng = random.Random(seed)
        self._clock = clock
        self._log = log
        self._lock = threading.Lock()
        self._state = _State()
        self._stopping = threading.Event()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeApi:
        """Bind and serve in a daemon thread. Raises OSError when the address cannot be bound."""
        if self._server is not None:
            raise RuntimeError("FakeApi already started")
        server = Server((self._host, self._requested_port), self)
        if self._ssl_context is not None:
            server.socket = self._ssl_context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-api:{server.server_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop every open connection; bounded, idempotent."""
        server, thread = self._server, self._thread
        if server is None or self._stopping.is_set():
            return
        self._stopping.set()
        stopper = threading.Thread(target=server.shutdown, name="fake-api-stop", daemon=True)
        stopper.start()
        # serve_forever notices shutdown only between two polls; a connection ends the current
        # one at once, which keeps stop() (and every test using the fake) fast.
        deadline = time.monotonic() + _STOP_JOIN_SECONDS
        while stopper.is_alive() and time.monotonic() < deadline:
            loopback.poke(server.server_address)
            stopper.join(0.01)
        server.server_close()
        with self._lock:
            connections = list(self._state.connections)
        for conn in connections:
            # The plain-socket shutdown also unblocks a handler waiting on a TLS socket, without
            # touching the TLS object another thread is using.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
        if thread is not None:
            thread.join(_STOP_JOIN_SECONDS)

    def __enter__(self) -> FakeApi:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def serve_forever_until_signal(self, ready: Callable[[], None] | None = None) -> None:
        """Serve until SIGTERM or SIGINT (main thread only), then stop and restore the handlers.

        ``ready`` is called once the handlers are in place: a caller that announces the address
        from it cannot be killed by a signal sent in reply to that announcement.
        """
        received = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            received.set()

        try:
            with signals.installed(dict.fromkeys((signal.SIGTERM, signal.SIGINT), on_signal)):
                if self._server is None:
                    self.start()
                if ready is not None:
                    ready()
                while not received.wait(0.5):
                    pass
        finally:
            self.stop()  # the previous handlers are back by now, as before the start

    # -- public state --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeApi not started")
        return self._server.server_port

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self.port}"

    def script(self, *answers: Answer) -> None:
        """Queue answers, consumed one per authorised session request before the default."""
        with self._lock:
            self._state.script.extend(answers)

    def clear_script(self) -> None:
        with self._lock:
            self._state.script.clear()

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._state.requests)

    @property
    def issued(self) -> list[str]:
        """Every accessToken served in a 200, in order."""
        with self._lock:
            return list(self._state.issued)

    @property
    def issued_refresh(self) -> list[str]:
        with self._lock:
            return list(self._state.issued_refresh)

    # -- used by the handler -------------------------------------------------------------------

    def _connection_opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._state.connections.add(conn)

    def _connection_closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._state.connections.discard(conn)

    def _record(self, recorded: Recorded) -> None:
        with self._lock:
            self._state.requests.append(recorded)

    def _next_answer(self) -> Answer:
        with self._lock:
            if self._state.script:
                return self._state.script.popleft()
            failing = self._fail_rate > 0 and self._rng.random() < self._fail_rate
        if failing:
            return Answer(
                error_code=self._fail_code, retry_after=self._retry_after, delay=self._delay
            )
        return Answer(delay=self._delay)

    def _render(self, answer: Answer, status: int, *, served: bool = True) -> bytes:
        if answer.body is not None:
            return answer.body
        if answer.error_code is not None:
            return error_body(answer.error_code, status)
        if status == 204:
            return b""
        if 200 <= status < 300:
            return self._session_body(answer, served=served and not answer.reset)
        return compact_json({"success": False, "message": status_phrase(status)})

    def _session_body(self, answer: Answer, *, served: bool) -> bytes:
        lifetime = self._lifetime if answer.lifetime is None else answer.lifetime
        now = self._clock()
        iat = math.floor(now)
        access, refresh = fake_jwt("JWT", iat, lifetime), fake_jwt("refresh", iat, lifetime)
        expires_at = now + lifetime
        payload: dict[str, object] = {
            "message": "Session created successfully",
            "accessToken": access,
            "refreshToken": refresh,
            "expiresIn": json_number(lifetime),
            "expiresAt": expires_at_value(expires_at, self._expires_at_unit),
        }
        payload.update(answer.extra_fields or {})
        for name in answer.omit_fields:
            payload.pop(name, None)
        # Recorded before sending so a test that has just read the answer always finds it; neither
        # a reset answer nor a HEAD delivers the tokens, so they do not count as served.
        if served:
            with self._lock:
                self._state.issued.append(access)
                self._state.issued_refresh.append(refresh)
        return compact_json(payload)

    def _control(self, method: str, path: str, body: bytes | None) -> Answer:
        name = path[len(CONTROL_PREFIX) :]
        if name not in ("script", "reset", "stats"):
            return Answer(error_code="ENDPOINT_NOT_FOUND")
        if (method == "GET") != (name == "stats") or method not in ("GET", "POST"):
            return Answer(error_code="METHOD_NOT_ALLOWED")
        if name == "stats":
            with self._lock:
                stats = {
                    "requests": len(self._state.requests),
                    "sessionRequests": sum(r.path == SESSION_PATH for r in self._state.requests),
                    "issued": len(self._state.issued),
                    "lastToken": self._state.issued[-1] if self._state.issued else None,
                }
            return Answer(body=compact_json(stats))
        if name == "reset":
            self.clear_script()
            return Answer(status=204, body=b"")
        try:
            answers = parse_script(body)
        except ValueError as exc:
            return Answer(
                status=400,
                body=compact_json(
                    {"success": False, "errorCode": "INVALID_INPUT", "message": str(exc)}
                ),
            )
        self.script(*answers)
        return Answer(status=204, body=b"")

    def _log_request(self, method: str, path: str, answer: Answer, outcome: str) -> None:
        if self._log is None:
            return
        status = answer.effective_status
        label = answer.error_code or ("ok" if 200 <= status < 300 else "-")
        suffix = "" if outcome == "sent" else f" ({outcome})"
        # Only method, path (no query string), status and code: never the key or a token.
        self._log(f"{method} {path} {status} {label}{suffix}")
