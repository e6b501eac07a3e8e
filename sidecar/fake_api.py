"""A local stand-in of the Forestreet auth API, with failure injection.

It answers ``GET /v2/auth/session`` the way the published OpenAPI document describes: any
non-empty ``x-api-key`` gets a 200 session with JWT-shaped tokens, a missing or blank key gets
401 ``UNAUTHORISED``. Everything the real API can do wrong can be scripted: an ``errorCode``
with any status, ``Retry-After``, a raw body, a slow or trickled answer, a reset connection, a
redirect, odd lifetimes and fields.

In-process tests use :class:`FakeApi` directly (``script()``, ``requests``, ``issued``). A
sidecar running as a subprocess against a ``fake-api`` subprocess is scripted over HTTP:

- ``POST /_fake/script``: a JSON list of answers (the keys of :meth:`Answer.from_json`) → 204
- ``POST /_fake/reset``: forget the script → 204
- ``GET /_fake/stats``: ``{"requests", "sessionRequests", "issued", "lastToken"}``

Only the standard library is used, so the fake starts anywhere the sidecar does.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import random
import secrets
import signal
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, cast

__all__ = [
    "ERROR_CODES",
    "SESSION_PATH",
    "Answer",
    "FakeApi",
    "Recorded",
    "add_arguments",
    "default_status",
    "run",
]

SESSION_PATH = "/v2/auth/session"
CONTROL_PREFIX = "/_fake/"

# The errorCode enum of the published spec, in its order.
ERROR_CODES: tuple[str, ...] = (
    "USER_NOT_CONFIRMED",
    "INVALID_CREDENTIALS",
    "INCOMPLETE_CREDENTIALS",
    "INVALID_SESSION_TOKEN",
    "FORCE_CHANGE_PASSWORD",
    "PASSWORD_RESET_REQUIRED",
    "PASSWORD_EXPIRED",
    "CODE_EXPIRED",
    "SESSION_EXPIRED",
    "UNAUTHORISED",
    "AUTHENTICATOR_ERROR",
    "SSO_ACCOUNT",
    "FORBIDDEN",
    "METHOD_NOT_ALLOWED",
    "INVALID_INPUT",
    "PATH_VALIDATION_FAILED",
    "QUERY_VALIDATION_FAILED",
    "BODY_VALIDATION_FAILED",
    "RESPONSE_VALIDATION_FAILED",
    "INVALID_OR_MALFORMED_JSON",
    "INTERNAL_SERVER_ERROR",
    "CONFIGURATION_ERROR",
    "SERVICE_UNAVAILABLE",
    "NOT_FOUND",
    "CONFLICT",
    "LIMIT_EXCEEDED",
    "REVIEW_ALREADY_PENDING",
    "REVIEW_NOT_PENDING",
    "REVIEW_PENDING",
    "REVIEW_INSUFFICIENT_DOMAINS",
    "QUOTA_EXCEEDED",
    "UNSUPPORTED_ENDPOINT_VERSION",
    "ENDPOINT_NOT_FOUND",
    "ENDPOINT_ALREADY_EXISTS",
)

_CREDENTIAL_CODES = frozenset(ERROR_CODES[: ERROR_CODES.index("FORBIDDEN") + 1])
_STATUS_BY_CODE: dict[str, int] = {
    **dict.fromkeys(_CREDENTIAL_CODES, 401),
    "LIMIT_EXCEEDED": 429,
    "QUOTA_EXCEEDED": 429,
    "SERVICE_UNAVAILABLE": 503,
    "INTERNAL_SERVER_ERROR": 500,
    "CONFIGURATION_ERROR": 500,
    "RESPONSE_VALIDATION_FAILED": 500,
    "NOT_FOUND": 404,
    "ENDPOINT_NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
}

# A control request may carry a large raw body for a scripted answer, but not an unbounded one.
_MAX_CONTROL_BODY = 64 * 1024 * 1024
_STOP_JOIN_SECONDS = 2.0


def default_status(error_code: str | None) -> int:
    """The HTTP status the fake sends with ``error_code`` when no status is scripted."""
    if error_code is None:
        return 200
    return _STATUS_BY_CODE.get(error_code, 400)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _number(value: float) -> int | float:
    """A JSON number as the API would print it: whole values without ``.0``, else 3 decimals."""
    rounded = round(float(value), 3)
    return int(rounded) if rounded.is_integer() else rounded


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _compact_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _jwt(typ: str, iat: int, lifetime: float) -> str:
    header = {"alg": "HS256", "typ": typ}
    claims = {
        "sub": "fake",
        "iat": iat,
        "exp": _number(iat + lifetime),
        "jti": secrets.token_hex(8),
    }
    # The signature is random: nothing verifies it, and it makes every token unique on its own.
    return ".".join(
        (
            _b64url(_compact_json(header)),
            _b64url(_compact_json(claims)),
            _b64url(secrets.token_bytes(32)),
        )
    )


def _expires_at(when: float, unit: str) -> int | float:
    if unit == "s":
        return _number(when)
    # A scripted non-finite lifetime must reach the client as NaN/Infinity, not crash the fake.
    return round(when * 1000) if math.isfinite(when) else when


def _error_body(code: str, status: int) -> bytes:
    return _compact_json(
        {"success": False, "errorCode": code, "message": f"{_reason(status)} - {code}"}
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """One scripted answer; defaults give a normal 200 session.

    ``status`` None means the default for ``error_code`` (:func:`default_status`; 200 without a
    code). An ``error_code`` always produces the error body, whatever the status, because the
    sidecar must classify by ``errorCode`` and not by status.
    """

    status: int | None = None
    error_code: str | None = None
    retry_after: str | None = None
    body: bytes | None = None
    content_type: str | None = None
    delay: float = 0.0
    trickle: float = 0.0
    reset: bool = False
    location: str | None = None
    lifetime: float | None = None
    extra_fields: dict[str, object] | None = None
    omit_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # 1xx would be an interim answer that clients handle in a completely different way.
        if self.status is not None and not 200 <= self.status <= 599:
            raise ValueError(f"status must be within 200..599, not {self.status}")
        for name in ("delay", "trickle"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")

    @property
    def effective_status(self) -> int:
        return self.status if self.status is not None else default_status(self.error_code)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Answer:
        """Build an answer from its JSON form (camelCase keys, ``body`` as text)."""
        unknown = sorted(set(data) - set(_JSON_FIELDS))
        if unknown:
            raise ValueError(f"unknown answer field {unknown[0]!r}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name, convert = _JSON_FIELDS[key]
            try:
                kwargs[name] = convert(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"answer field {key!r}: {exc}") from exc
        return cls(**kwargs)


def _optional(convert: Callable[[object], Any]) -> Callable[[object], Any]:
    return lambda value: None if value is None else convert(value)


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _as_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _as_str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _as_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _as_retry_after(value: object) -> str:
    # A bare JSON number is the natural way to write delay-seconds; the header carries text.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _as_str(value)


def _as_dict(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {value!r}")
    return dict(value)


def _as_names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list of field names, got {value!r}")
    return tuple(_as_str(item) for item in value)


_JSON_FIELDS: dict[str, tuple[str, Callable[[object], Any]]] = {
    "status": ("status", _optional(_as_int)),
    "errorCode": ("error_code", _optional(_as_str)),
    "retryAfter": ("retry_after", _optional(_as_retry_after)),
    "body": ("body", _optional(lambda value: _as_str(value).encode())),
    "contentType": ("content_type", _optional(_as_str)),
    "delay": ("delay", _as_float),
    "trickle": ("trickle", _as_float),
    "reset": ("reset", _as_bool),
    "location": ("location", _optional(_as_str)),
    "lifetime": ("lifetime", _optional(_as_float)),
    "extraFields": ("extra_fields", _optional(_as_dict)),
    "omitFields": ("omit_fields", _as_names),
}


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as the fake received it (any path)."""

    method: str
    path: str
    api_key: str | None
    received_at: float  # time.monotonic()


@dataclass(slots=True)
class _State:
    script: deque[Answer] = field(default_factory=deque)
    requests: list[Recorded] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    issued_refresh: list[str] = field(default_factory=list)
    connections: set[socket.socket] = field(default_factory=set)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # stop() must not wait for handlers; they notice the stop event or a shut-down socket.
    block_on_close = False

    def __init__(self, address: tuple[str, int], fake: FakeApi) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.fake = fake
        super().__init__(address, _Handler)

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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a requests.Session expects
    server_version = "forestreet-fake-api"
    # Headers and body go out in separate writes; with Nagle on, the body waits for a delayed ACK.
    disable_nagle_algorithm = True

    @property
    def fake(self) -> FakeApi:
        return cast(_Server, self.server).fake

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
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeApi:
        """Bind and serve in a daemon thread. Raises OSError when the address cannot be bound."""
        if self._server is not None:
            raise RuntimeError("FakeApi already started")
        server = _Server((self._host, self._requested_port), self)
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
            _poke(server)
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

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if self._server is None:
                self.start()
            if ready is not None:
                ready()
            while not received.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()

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
            return _error_body(answer.error_code, status)
        if status == 204:
            return b""
        if 200 <= status < 300:
            return self._session_body(answer, served=served and not answer.reset)
        return _compact_json({"success": False, "message": _reason(status)})

    def _session_body(self, answer: Answer, *, served: bool) -> bytes:
        lifetime = self._lifetime if answer.lifetime is None else answer.lifetime
        now = self._clock()
        iat = math.floor(now)
        access, refresh = _jwt("JWT", iat, lifetime), _jwt("refresh", iat, lifetime)
        expires_at = now + lifetime
        payload: dict[str, object] = {
            "message": "Session created successfully",
            "accessToken": access,
            "refreshToken": refresh,
            "expiresIn": _number(lifetime),
            "expiresAt": _expires_at(expires_at, self._expires_at_unit),
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
        return _compact_json(payload)

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
            return Answer(body=_compact_json(stats))
        if name == "reset":
            self.clear_script()
            return Answer(status=204, body=b"")
        try:
            answers = _parse_script(body)
        except ValueError as exc:
            return Answer(
                status=400,
                body=_compact_json(
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


def _poke(server: _Server) -> None:
    host, port = server.server_address[:2]
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(str(host), str(host))  # noqa: S104
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.2):
        pass


def _parse_script(body: bytes | None) -> list[Answer]:
    if body is None:
        raise ValueError("the script must be sent with a Content-Length")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the script is not valid JSON: {exc}") from exc
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        # ValueError throughout: every problem with a script becomes the same 400.
        raise ValueError("the script must be a JSON list of answer objects")  # noqa: TRY004
    answers = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"answer {index}: not a JSON object")  # noqa: TRY004
        try:
            answers.append(Answer.from_json(item))
        except ValueError as exc:
            raise ValueError(f"answer {index}: {exc}") from exc
    return answers


# -- command line ------------------------------------------------------------------------------


def _fraction(text: str) -> float:
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0..1, not {text}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, not {text}")
    return value


def _positive(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _non_negative(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be within 0..65535 (0 picks a free port): {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``fake-api`` options; invalid values end in ``parser.error`` (exit 2)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port",
        type=_port,
        default=8080,
        help="port to bind; 0 picks a free one (default %(default)s)",
    )
    parser.add_argument(
        "--lifetime",
        type=_positive,
        default=3600.0,
        metavar="SECONDS",
        help="expiresIn of every session, fractions allowed (default %(default)s)",
    )
    parser.add_argument(
        "--fail-rate",
        type=_fraction,
        default=0.0,
        metavar="0..1",
        help="probability that a session request fails with --fail-code (default %(default)s)",
    )
    parser.add_argument(
        "--fail-code",
        choices=ERROR_CODES,
        default="SERVICE_UNAVAILABLE",
        metavar="CODE",
        help="errorCode of injected failures, from the spec's enum (default %(default)s)",
    )
    parser.add_argument(
        "--retry-after",
        metavar="VALUE",
        help="Retry-After header of injected failures: seconds or an HTTP-date",
    )
    parser.add_argument(
        "--expires-at-unit",
        choices=("s", "ms"),
        default="ms",
        help="unit of expiresAt in sessions (default %(default)s)",
    )
    parser.add_argument(
        "--delay",
        type=_non_negative,
        default=0.0,
        metavar="SECONDS",
        help="wait this long before every unscripted session answer (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, help="seed of the failure injection, for repeatable runs"
    )


def _stderr_line(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    """Serve the fake API until SIGTERM/SIGINT; 0 then, 1 when the address cannot be bound."""
    api = FakeApi(
        args.host,
        args.port,
        lifetime=args.lifetime,
        fail_rate=args.fail_rate,
        fail_code=args.fail_code,
        retry_after=args.retry_after,
        expires_at_unit=args.expires_at_unit,
        delay=args.delay,
        seed=args.seed,
        log=_stderr_line,
    )
    try:
        api.start()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        _stderr_line(f"fake-api: cannot listen on {args.host}:{args.port}: {reason}")
        return 1
    listening = f"fake-api listening on {api.url} (lifetime {_number(args.lifetime)}s)"
    api.serve_forever_until_signal(ready=lambda: _stderr_line(listening))
    return 0
