"""A raw-socket upstream that can misbehave at every stage of an HTTP exchange.

`sidecar.fake_api` speaks correct HTTP through http.server, which cannot trickle a
status line, lie about a length or send garbage where a status line belongs. This
server writes bytes itself: each accepted connection reads the request head, then
plays the next `Reply` of its script (the last one repeats), byte for byte.

Everything is bounded: a connection plays for at most `Reply.max_seconds`, endless
replies stop when the client goes away, and `stop()` ends every thread.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

GOOD_TOKEN = "hostile.upstream.token-0123456789"


@dataclass(frozen=True)
class Reply:
    """What the server sends on one connection.

    ``parts`` are written in order, ``pause`` seconds apart (a generator makes an
    endless reply); ``trickle`` splits every part into single bytes that far apart.
    Afterwards the connection is held open ``hold`` seconds, then closed (``reset``:
    with an RST instead of a FIN). ``immediate`` sends at once, without waiting for
    a request (a server that speaks first, or plain HTTP answering a TLS hello).
    """

    parts: Iterable[bytes]
    pause: float = 0.0
    trickle: float | None = None
    hold: float = 0.0
    reset: bool = False
    max_seconds: float = 30.0
    immediate: bool = False


@dataclass
class Request:
    """The head of one request as received."""

    line: str
    headers: dict[str, str]
    at: float


def head(status: str = "200 OK", headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A response head; a line Latin-1 cannot hold goes out as UTF-8, as a careless server sends it."""
    lines = [f"HTTP/1.1 {status}", *(f"{name}: {value}" for name, value in headers), "", ""]
    return b"\r\n".join(_wire(line) for line in lines)


def _wire(line: str) -> bytes:
    try:
        return line.encode("latin-1")
    except UnicodeEncodeError:
        return line.encode("utf-8", "surrogateescape")


def response(
    body: bytes,
    status: str = "200 OK",
    *,
    headers: Iterable[tuple[str, str]] = (),
    length: int | None = None,
    content_type: str = "application/json",
) -> bytes:
    """A complete response; ``length`` overrides the Content-Length (to lie about it)."""
    fields = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body) if length is None else length)),
        ("Connection", "close"),
        *headers,
    ]
    return head(status, fields) + body


def session_body(token: str = GOOD_TOKEN, expires_in: float = 3600, **extra: Any) -> bytes:
    document: dict[str, Any] = {
        "message": "ok",
        "accessToken": token,
        "refreshToken": "refresh." + token,
        "expiresIn": expires_in,
        **extra,
    }
    return json.dumps(document).encode()


def error_body(code: object, message: object = "refused") -> bytes:
    return json.dumps({"success": False, "errorCode": code, "message": message}).encode()


def good(token: str = GOOD_TOKEN, **extra: Any) -> Reply:
    return Reply([response(session_body(token, **extra))])


def chunked(*chunks: bytes, end: bool = True) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return out + (b"0\r\n\r\n" if end else b"")


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data)


def deflated(data: bytes, *, raw: bool = False) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def gzip_bomb(size: int = 50 * 1024 * 1024) -> bytes:
    """``size`` bytes of JSON-looking zeros in a few tens of kilobytes of gzip."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"0" * (1024 * 1024)
    out = [compressor.compress(b"[")]
    out += [compressor.compress(block) for _ in range(size // len(block))]
    out.append(compressor.flush())
    return b"".join(out)


def endless(part: bytes, first: bytes = b"") -> Iterator[bytes]:
    """``first``, then ``part`` for ever (bounded by Reply.max_seconds)."""
    if first:
        yield first
    yield from itertools.repeat(part)


@dataclass
class HostileUpstream:
    """A threaded TCP server on 127.0.0.1 with a script of replies, one per connection."""

    host: str = "127.0.0.1"
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    _script: list[Reply] = field(default_factory=list)
    _default: Reply = field(default_factory=good)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    def script(self, *replies: Reply) -> None:
        """The next connections get these replies in order; the last one then repeats."""
        with self._lock:
            self._script = list(replies)

    def __enter__(self) -> HostileUpstream:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(16)
        listener.settimeout(0.1)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._spawn(self._accept)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        for thread in list(self._threads):
            thread.join(5)

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until every connection served so far is closed on this side too."""
        for thread in list(self._threads[1:]):  # the first is the acceptor
            thread.join(timeout)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _next_reply(self) -> Reply:
        with self._lock:
            if len(self._script) > 1:
                return self._script.pop(0)
            return self._script[0] if self._script else self._default

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by stop(), or out of descriptors for a moment
                if self._stop.is_set():
                    return
                time.sleep(0.05)
                continue
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            reply = self._next_reply()
            if not reply.immediate:
                request = self._read_head(conn)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
            with contextlib.suppress(OSError):
                self._play(conn, reply)

    def _read_head(self, conn: socket.socket) -> Request | None:
        conn.settimeout(5)
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        if b"\r\n\r\n" not in data:
            return None
        lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return Request(lines[0], headers, time.monotonic())

    def _play(self, conn: socket.socket, reply: Reply) -> None:
        give_up = time.monotonic() + reply.max_seconds
        for index, part in enumerate(reply.parts):
            if self._stop.is_set() or time.monotonic() > give_up:
                return
            if index and reply.pause:
                time.sleep(reply.pause)
            if reply.trickle is None:
                conn.sendall(part)
                continue
            for byte in part:
                if self._stop.is_set() or time.monotonic() > give_up:
                    return
                conn.sendall(bytes([byte]))
                time.sleep(reply.trickle)
        deadline = time.monotonic() + reply.hold
        while time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.02)
        if reply.reset:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
