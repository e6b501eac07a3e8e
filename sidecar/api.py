"""The HTTP client of the auth API: the one place requests errors become ours.

Everything the upstream sends is hostile until proven otherwise: the exchange as a
whole has a deadline (not only each read), the body is capped before and after
decompression, and every foreign exception becomes a `RefreshError` whose message
says in plain words what happened, the innermost cause first, and never quotes the
key or anything the server chose to send.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import http.client
import re
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.exceptions
from urllib3.util.response import assert_header_parsing

from sidecar import __version__
from sidecar.config import ApiConfig, Secret
from sidecar.config_files import InputError
from sidecar.errors import (
    CredentialError,
    EndpointError,
    InvalidResponseError,
    RefreshError,
    TransientError,
)
from sidecar.key import read_proxy_credential
from sidecar.logs import REDACTOR
from sidecar.policy import Lane, classify, parse_retry_after
from sidecar.session import Session, decode, validate

# A session answer is a few hundred bytes; anything much larger is not one.
MAX_BODY_BYTES = 64 * 1024
MAX_KEY_LENGTH = 4096
CREDENTIAL_HINT = "check the API key (api.key_file / api.key_env) and that it is still active"
REQUEST_HINT = "check api.base_url: the auth endpoint refused the request itself"
KEY_HINT = "put the key alone in the file or variable: 1-4096 visible ASCII characters"
TLS_HINT = "set api.ca_bundle to the CA that signed the server certificate"
PROXY_AUTH_HINT = "put the proxy's user:password alone in api.proxy_auth_file"
PROXY_407_HINT = (
    "the proxy wants a login: set api.proxy_auth_file to a file holding its user:password, "
    "or check the one in it"
)
PROXY_REFUSED_HINT = "ask the proxy's operator to allow CONNECT to the API's host and port"
PROXY_HINT = "check api.proxy_url and that the proxy is up"
PROXY_UPSTREAM_HINT = "the proxy could not connect to the API itself: check its route to the API"
SHORTAGE_HINT = (
    "this host is short of a resource, not a problem of the API or its credentials: "
    "check the process limits (LimitNOFILE=, ulimit -n, memory) and what holds them"
)

_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_KNOWN_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_HOST = re.compile(r"[a-z0-9.:-]{1,253}")
# Content codings we can undo; a chain longer than this is no session answer.
_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_MAX_CODINGS = 2
_OTHER_CODINGS = frozenset(
    {"br", "zstd", "compress", "x-compress", "dcb", "dcz", "exi", "pack200-gzip"}
)


@dataclass(frozen=True, slots=True)
class Fetched:
    """A validated session and when its request was sent."""

    session: Session
    sent_monotonic: float  # lifetimes count from here
    sent_wall: float


class ApiClient:
    """``GET <base_url>/v2/auth/session`` on one connection pool."""

    def __init__(
        self,
        config: ApiConfig,
        *,
        require_refresh_token: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._url = config.session_url
        # host[:port] for messages; userinfo, should a URL carry one, is no one's business.
        self._host = urlsplit(config.base_url).netloc.rpartition("@")[2]
        self._timeout = config.timeout_seconds
        self._require_refresh = require_refresh_token
        self._monotonic = monotonic
        self._wall = wall
        self._http = _Session()
        self._adapter = adapter = _DeadlineAdapter()
        self._http.mount("http://", adapter)
        self._http.mount("https://", adapter)
        # An explicit proxy only (trust_env is off below): https:// goes through it in a
        # CONNECT tunnel, TLS end to end, so the proxy sees the host and port and no more.
        self._proxy = config.proxy_url
        self._proxy_auth_file = config.proxy_auth_file
        self._proxy_label = urlsplit(config.proxy_url).netloc if config.proxy_url else ""
        # http:// through a proxy is forwarded (config allows it only with allow_insecure_http).
        self._deadline = Deadline(2 * self._timeout)  # the last exchange's (for _late)
        self._forwarding = bool(config.proxy_url) and urlsplit(config.base_url).scheme == "http"
        if config.proxy_url:
            self._http.proxies = {"http": config.proxy_url, "https": config.proxy_url}
        self._http.verify = str(config.ca_bundle) if config.ca_bundle else True
        # .netrc would let requests add an Authorization header the operator never chose.
        self._http.trust_env = False
        self._http.headers.update(
            {
                "Accept": "application/json",
                "User-Agent": f"forestreet-sidecar/{__version__}",
                # What arrives compressed anyway is decoded under the same cap (decode_content).
                "Accept-Encoding": "identity",
                # One connection per exchange. Refreshes are minutes apart, longer than the
                # idle timeout of most load balancers and NATs: a pooled connection would be
                # dead by the next one (a reset or a black hole counted as a failure), and
                # one an exchange broke off may still hold the rest of that answer.
                "Connection": "close",
            }
        )

    def close(self) -> None:
        self._http.close()

    def fetch(self, key: Secret) -> Fetched:
        """One request; a Session, or a RefreshError whose class says how to retry."""
        problem = header_value_problem(key.value)
        if problem is not None:
            # Refused before requests sees it: its errors quote a bad header value.
            raise CredentialError(
                "key_unavailable", f"the API key {problem}; it was not sent", hint=KEY_HINT
            )
        if self._proxy is not None:
            self._adapter.set_proxy_authorization(self._proxy_authorization())
        sent_monotonic = self._monotonic()
        sent_wall = self._wall()
        deadline = self._deadline = Deadline(2 * self._timeout)
        try:
            with deadline:
                response = self._http.get(
                    self._url,
                    headers={"x-api-key": key.value},
                    timeout=(self._timeout, self._timeout),
                    allow_redirects=False,
                    stream=True,
                )
                with response:
                    raw = read_raw(response.raw)
                in_time = deadline.finish()
        except (
            requests.exceptions.RequestException,
            urllib3.exceptions.HTTPError,
            http.client.HTTPException,
            OSError,
        ) as exc:
            if deadline.expired:
                raise self._late() from exc
            if self._proxy is not None:
                at_proxy = self._at_proxy(exc)
                if at_proxy is not None:
                    raise at_proxy from exc
            raise translate(exc, self._host, self._timeout) from exc
        finally:
            self._adapter.close()  # whatever the server does with "Connection: close"
        if not in_time:
            raise self._late()
        status, headers = response.status_code, response.headers
        if self._forwarding and status == http.HTTPStatus.PROXY_AUTHENTICATION_REQUIRED:
            raise TransientError(
                "connection_error",
                f"proxy {self._proxy_label} refused the request: 407 Proxy Authentication Required",
                hint=PROXY_407_HINT,
                status=status,
            )
        body = self._decoded(raw, headers.get("Content-Encoding"), status)
        session = interpret(
            status,
            headers,
            body,
            host=self._host,
            now=self._wall(),
            require_refresh_token=self._require_refresh,
            secrets=(key.value,),
        )
        return Fetched(session, sent_monotonic, sent_wall)

    @staticmethod
    def _decoded(raw: bytes | None, content_encoding: str | None, status: int) -> bytes:
        """The body to interpret; for an error status, an unusable body is just no body."""
        if raw is None:
            if status == 200:
                raise InvalidResponseError(f"response body larger than {MAX_BODY_BYTES} bytes")
            return b""
        try:
            return decode_content(raw, content_encoding, status)
        except InvalidResponseError:
            if status == 200:
                raise
            return b""  # the status still says what happened

    def _proxy_authorization(self) -> str | None:
        """The Proxy-Authorization value from api.proxy_auth_file, read afresh; None without one.

        An unusable file is a counted ``connection_error`` (see the README): no tunnel can be
        opened without it, and the API key, whose reason ``key_unavailable`` is, is fine.
        """
        path = self._proxy_auth_file
        if path is None:
            return None
        try:
            credential = read_proxy_credential(path)
        except (OSError, ValueError) as exc:
            short = shortage(exc)
            detail = (
                short
                if short is not None
                else exc.strerror or type(exc).__name__
                if isinstance(exc, OSError)
                else exc.problem
                if isinstance(exc, InputError)
                else "the path holds a NUL byte"
            )
            raise TransientError(
                "connection_error",
                f"cannot use proxy {self._proxy_label}: cannot read the proxy credential "
                f"api.proxy_auth_file {path}: {detail}",
                hint=SHORTAGE_HINT if short is not None else PROXY_AUTH_HINT,
            ) from None
        encoded = base64.b64encode(credential.value.encode("ascii")).decode("ascii")
        password = credential.value.partition(":")[2]
        for secret in (credential.value, password, encoded):
            REDACTOR.add(secret)
        return f"Basic {encoded}"

    def _at_proxy(self, exc: BaseException) -> TransientError | None:
        """The failure in the proxy's name when it happened there (connecting or CONNECT)."""
        chain = list(causes(exc))
        for cause in chain:
            if isinstance(cause, TunnelError):
                return TransientError(
                    cause.reason, f"proxy {self._proxy_label} {cause.words}", hint=cause.hint
                )
        # Every connection goes to the proxy: failing to open one is the proxy's failure.
        if any(
            isinstance(
                cause,
                urllib3.exceptions.ProxyError
                | urllib3.exceptions.NewConnectionError
                | urllib3.exceptions.ConnectTimeoutError,
            )
            for cause in chain
        ):
            error = translate(exc, f"proxy {self._proxy_label}", self._timeout)
            return TransientError(error.reason, str(error), hint=error.hint or PROXY_HINT)
        return None

    def _late(self) -> TransientError:
        if self._deadline.at_proxy:
            return TransientError(
                "timeout",
                f"proxy {self._proxy_label} did not finish answering the CONNECT to "
                f"{self._host}: timed out after {2 * self._timeout:g} s "
                "(the whole exchange may take twice api.timeout_seconds)",
                hint=PROXY_HINT,
            )
        return TransientError(
            "timeout",
            f"{self._host} did not finish answering: timed out after {2 * self._timeout:g} s "
            "(the whole exchange may take twice api.timeout_seconds)",
        )


# -- the deadline of one exchange --------------------------------------------------------

_CURRENT: ContextVar[Deadline | None] = ContextVar("forestreet_exchange", default=None)


class Deadline:
    """Ends one exchange at its deadline, whatever stage it is in.

    requests and urllib3 only have per-read timeouts: a server sending one byte per
    read timeout (a trickled status line, endless ``100 Continue``, a trickled body)
    would hold a request for ever. A timer shuts down, at the deadline, every socket
    the exchange uses (the connection classes below register them), which wakes the
    blocked recv with EOF; whatever exception follows, the caller sees ``expired`` and
    reports a timeout. ``shutdown`` rather than ``close``: the reading thread keeps
    owning the descriptor, so none is freed, and reused, under its feet.

    Connecting and the TLS handshake are each bounded by the socket timeout; a socket
    registered after the deadline is shut down at once.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._expired = False
        self._finished = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self.at_proxy = False  # inside a CONNECT exchange with the proxy

    @property
    def expired(self) -> bool:
        with self._lock:
            return self._expired

    def __enter__(self) -> Deadline:
        self._timer.start()
        self._token = _CURRENT.set(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._timer.cancel()
        _CURRENT.reset(self._token)
        with self._lock:
            self._finished = True
            self._sockets.clear()

    def finish(self) -> bool:
        """Mark the exchange complete; False when the deadline came first."""
        with self._lock:
            self._finished = True
            self._sockets.clear()
            return not self._expired

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if self._expired:
                _shut(sock)
            elif not self._finished and sock not in self._sockets:
                self._sockets.append(sock)

    def _expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    # The plain socket's shutdown also for an SSLSocket: it acts on the descriptor
    # and leaves the TLS object, which the reading thread is using, alone.
    with contextlib.suppress(OSError):  # already closed: nothing left to cut
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _watch(sock: Any) -> None:
    deadline = _CURRENT.get()
    if deadline is not None and isinstance(sock, socket.socket):
        deadline.watch(sock)


class _CheckedResponse(http.client.HTTPResponse):
    """An http.client response that refuses a head it could not parse.

    http.client keeps what it cannot parse as "payload" and urllib3 only logs it (to
    stderr, quoting it); urllib3 refuses contradicting Content-Lengths only after
    http.client is done, leaking the socket. Refused here, http.client closes it.
    """

    def begin(self) -> None:
        super().begin()
        try:
            assert_header_parsing(self.msg)
        except urllib3.exceptions.HeaderParsingError as exc:
            raise BadHeadError("sent a header that cannot be parsed") from exc
        lengths = {
            part.strip()
            for value in self.msg.get_all("Content-Length") or ()
            for part in value.split(",")
        }
        if len(lengths) > 1:
            raise BadHeadError("sent an invalid header (two different Content-Length values)")


class BadHeadError(http.client.HTTPException):
    """A response head we refuse; ``words`` says why, without quoting it."""

    def __init__(self, words: str) -> None:
        self.words = words
        super().__init__(words)


class TunnelError(OSError):
    """The proxy did not open the CONNECT tunnel; ``words`` say why, after its name."""

    def __init__(self, reason: str, words: str, hint: str = PROXY_HINT) -> None:
        self.reason = reason
        self.words = words
        self.hint = hint
        super().__init__(words)


_TUNNEL_STATUS = re.compile(r"Tunnel connection failed: ([0-9]{3})\b")


def _tunnel_failure(  # noqa: PLR0911 - a table of failures
    exc: BaseException, timeout: float | None
) -> TunnelError:
    """A failed CONNECT in words: the status and its standard phrase, never the proxy's text."""
    status = _TUNNEL_STATUS.match(str(exc)) if type(exc) is OSError else None
    if status is not None:
        code = int(status.group(1))
        try:
            phrase = f"{code} {http.HTTPStatus(code).phrase}"
        except ValueError:
            phrase = f"status {code}"
        hints = {401: PROXY_407_HINT, 407: PROXY_407_HINT, 403: PROXY_REFUSED_HINT}
        hint = hints.get(code, PROXY_UPSTREAM_HINT if 500 <= code <= 599 else PROXY_HINT)
        return TunnelError("connection_error", f"refused the tunnel: {phrase}", hint)
    if isinstance(exc, TimeoutError):
        seconds = f" after {timeout:g} s" if timeout else ""
        return TunnelError("timeout", f"did not answer the CONNECT: timed out{seconds}")
    if isinstance(exc, http.client.RemoteDisconnected):
        return TunnelError(
            "connection_error", "closed the connection without answering the CONNECT"
        )
    if isinstance(exc, http.client.LineTooLong):
        return TunnelError(
            "connection_error", "answered the CONNECT with a line longer than 64 KiB"
        )
    if isinstance(exc, http.client.HTTPException):
        return TunnelError("connection_error", "did not answer the CONNECT in HTTP")
    if isinstance(exc, OSError) and exc.errno in _ERRNO_WORDS:
        return TunnelError(
            "connection_error", f"failed during the CONNECT: {_ERRNO_WORDS[exc.errno]}"
        )
    return TunnelError("connection_error", f"failed during the CONNECT: {_name(exc)}")


def _tunnel(connection: Any, tunnel: Callable[[], None]) -> None:
    """http.client's CONNECT exchange, its failure named as the proxy's, under the deadline."""
    deadline = _CURRENT.get()
    if deadline is not None:
        deadline.at_proxy = True
    try:
        tunnel()
    except (OSError, http.client.HTTPException) as exc:
        if shortage(exc) is not None:
            raise
        raise _tunnel_failure(exc, connection.timeout) from exc
    # A deadline that cut the CONNECT's headers leaves an EOF that reads as their end.
    if deadline is not None and not deadline.expired:
        deadline.at_proxy = False


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    response_class = _CheckedResponse

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch(sock)  # from the start: the CONNECT exchange is under the deadline too
        return sock

    def _tunnel(self) -> None:
        _tunnel(self, super()._tunnel)

    def connect(self) -> None:
        super().connect()
        _watch(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self.sock)  # a kept-alive connection does not connect again
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    response_class = _CheckedResponse

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch(sock)
        return sock

    def _tunnel(self) -> None:
        _tunnel(self, super()._tunnel)

    def connect(self) -> None:
        super().connect()
        _watch(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self.sock)
        super().request(*args, **kwargs)


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _Session(requests.Session):
    """A requests session that never even computes where a redirect would lead.

    Redirects are never followed, yet requests parses a 3xx's Location to offer the
    next request, and an unparsable one ("http://[::1") raised ValueError out of get().
    """

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        return None


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _DeadlineAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter with connections the exchange deadline can cut, direct or proxied.

    The proxy's ``Proxy-Authorization`` is what ``set_proxy_authorization`` last gave (the
    credential file, read before each request); urllib3 sends it on the CONNECT only.
    """

    _proxy_authorization: str | None = None

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.ProxyManager:
        manager: urllib3.ProxyManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = dict(_POOLS)
        return manager

    def proxy_headers(self, proxy: str) -> dict[str, str]:
        # Never from userinfo in the URL (the configuration refuses one).
        if self._proxy_authorization is None:
            return {}
        return {"Proxy-Authorization": self._proxy_authorization}

    def set_proxy_authorization(self, value: str | None) -> None:
        """A changed credential: tunnels opened with the old one are dropped."""
        if value == self._proxy_authorization:
            return
        self._proxy_authorization = value
        for manager in self.proxy_manager.values():
            manager.clear()
        self.proxy_manager.clear()


# -- the body ----------------------------------------------------------------------------


def read_raw(raw: Any) -> bytes | None:
    """The body as sent (still compressed, if it is); None when over MAX_BODY_BYTES."""
    chunks: list[bytes] = []
    size = 0
    while True:
        # read1 returns after one recv; the exchange deadline bounds the whole loop.
        chunk = raw.read1(8192)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)


def decode_content(raw: bytes, content_encoding: str | None, status: int) -> bytes:
    """Undo gzip/deflate (asked for or not), never producing more than MAX_BODY_BYTES."""
    codings = [
        coding
        for coding in (part.strip().lower() for part in (content_encoding or "").split(","))
        if coding and coding != "identity"
    ]
    if not codings:
        return raw
    unknown = [coding for coding in codings if coding not in _CODINGS]
    if unknown:
        # Named only when it is a registered coding: the header is the server's text.
        name = unknown[0] if unknown[0] in _OTHER_CODINGS else "an unknown coding"
        raise InvalidResponseError(
            f"response is compressed with {name}, which the sidecar cannot decode",
            status=status,
        )
    if len(codings) > _MAX_CODINGS:
        raise InvalidResponseError(
            f"response is compressed {len(codings)} times over; "
            f"the sidecar undoes at most {_MAX_CODINGS} codings",
            status=status,
        )
    body = raw
    for coding in reversed(codings):
        body = _inflate(body, coding, status)
    return body


def _inflate(data: bytes, coding: str, status: int) -> bytes:
    """One content coding undone; gzip may hold several members, deflate may be raw."""
    wbits = _CODINGS[coding]
    out = bytearray()
    first = True
    while first or data:
        first = False
        inflater = zlib.decompressobj(wbits)
        try:
            out += inflater.decompress(data, MAX_BODY_BYTES + 1 - len(out))
        except zlib.error:
            if coding == "deflate" and wbits > 0 and not out:
                wbits = -zlib.MAX_WBITS  # servers send raw deflate as often as zlib
                first = True
                continue
            raise InvalidResponseError(
                f"response body is not valid {coding} data", status=status
            ) from None
        if len(out) > MAX_BODY_BYTES:
            raise InvalidResponseError(
                f"response body larger than {MAX_BODY_BYTES} bytes once decompressed",
                status=status,
            )
        if not inflater.eof:
            raise InvalidResponseError(f"response body is truncated {coding} data", status=status)
        data = inflater.unused_data
        if data and wbits != _CODINGS["gzip"]:
            raise InvalidResponseError(
                f"response body has data after its {coding} stream", status=status
            )
    return bytes(out)


# -- the answer --------------------------------------------------------------------------


def interpret(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    host: str,
    now: float,
    require_refresh_token: bool = False,
    secrets: tuple[str, ...] = (),
) -> Session:
    """A Session from a 200 answer, or the RefreshError an answer stands for. Pure."""
    # Decoded once: the errorCode decides first, then the same document is validated.
    try:
        data, not_json = decode(body), None
    except InvalidResponseError as exc:
        data, not_json = None, exc
    code = _error_code(data)
    if status == 200 and code is None:
        if not_json is not None:
            raise not_json
        return validate(data, require_refresh_token=require_refresh_token)
    lane, reason = classify(status, code)
    if status == 200 and reason == "http_200":
        # A 200 that carries an unknown errorCode is still not a session.
        raise InvalidResponseError("response has an unknown errorCode", status=status)
    detail = f"{host} answered {status}"
    if code is not None:
        detail += f" {code}" if reason == code else " with an unknown errorCode"
    if 300 <= status < 400:
        target = _redirect_host(headers.get("Location"), secrets)
        detail += f" redirecting to {target}; redirects are never followed"
    if lane is Lane.RETRYABLE:
        retry_after = parse_retry_after(headers.get("Retry-After"), now)
        raise TransientError(reason, detail, retry_after=retry_after, status=status)
    if lane is Lane.CREDENTIAL:
        raise CredentialError(reason, detail, hint=CREDENTIAL_HINT, status=status)
    raise EndpointError(reason, detail, hint=REQUEST_HINT, status=status)


def _error_code(data: object) -> str | None:
    """The errorCode of an error body, if the body is one."""
    if isinstance(data, dict):
        code = data.get("errorCode")
        if isinstance(code, str):
            return code if _KNOWN_CODE.fullmatch(code) else "?"
    return None


def _redirect_host(location: str | None, secrets: tuple[str, ...]) -> str:
    """Only the host of a Location, and only when it looks like one and quotes no secret."""
    try:
        host = urlsplit(location or "").hostname
    except ValueError:
        return "elsewhere"
    if not host or not _HOST.fullmatch(host):
        return "elsewhere"
    if any(secret and secret.lower() in host for secret in secrets):
        return "elsewhere"
    return host


def header_value_problem(value: str) -> str | None:  # noqa: PLR0911 - one per problem
    """Why ``value`` cannot go out as the key header, or None. Names a position, never a value."""
    if not value:
        return "is empty"
    if len(value) > MAX_KEY_LENGTH:
        return f"is longer than {MAX_KEY_LENGTH} characters"
    if _VISIBLE_ASCII.fullmatch(value):
        return None
    if value.startswith("\ufeff"):
        return "starts with a byte order mark"
    for position, char in enumerate(value, start=1):
        if char in "\r\n":
            return f"holds a line break at position {position}"
        if not _VISIBLE_ASCII.fullmatch(char):
            return f"holds a character an HTTP header cannot carry at position {position}"
    return "cannot be sent"  # pragma: no cover - the loop finds the character


# -- foreign errors in plain words ---------------------------------------------------------

_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset by the server",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "the server closed the connection",
    errno.EHOSTUNREACH: "no route to host",
    errno.EHOSTDOWN: "host is down",
    errno.ENETUNREACH: "network is unreachable",
    errno.ENETDOWN: "network is down",
    errno.EADDRNOTAVAIL: "no local address available",
    errno.EACCES: "permission denied (a firewall or sandbox refuses the connection)",
    errno.EPERM: "operation not permitted (a firewall or sandbox refuses the connection)",
}
_SHORTAGE_WORDS = {
    errno.EMFILE: "too many open files (this process is out of file descriptors)",
    errno.ENFILE: "too many open files in the system",
    errno.ENOBUFS: "no buffer space available",
    errno.ENOMEM: "out of memory",
}
_RESOLVER_WORDS = {
    socket.EAI_NONAME: "name does not resolve",
    socket.EAI_NODATA: "name does not resolve",
    socket.EAI_AGAIN: "name resolution failed for now (temporary failure in name resolution)",
    socket.EAI_FAIL: "name resolution failed (the name server gave up)",
}


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps: ``__cause__``, ``__context__``, ``reason``, ``args``.

    requests wraps urllib3's MaxRetryError, which wraps a NewConnectionError, which
    wraps the ConnectionRefusedError that says what happened.
    """
    seen: set[int] = set()
    pending = [exc]
    while pending and len(seen) < 64:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        nested += list(current.args) if isinstance(current.args, tuple) else []
        pending += [item for item in nested if isinstance(item, BaseException)]


def shortage(exc: BaseException) -> str | None:
    """Plain words for a local resource shortage anywhere in the chain, or None."""
    for cause in causes(exc):
        if isinstance(cause, MemoryError):
            return "out of memory"
        if (
            isinstance(cause, OSError)
            and not isinstance(cause, ssl.SSLError | socket.gaierror)
            and cause.errno in _SHORTAGE_WORDS
        ):
            return _SHORTAGE_WORDS[cause.errno]
    return None


def translate(  # noqa: PLR0911, PLR0912 - a table of causes, most telling first
    exc: BaseException, host: str, timeout: float
) -> RefreshError:
    """The RefreshError for a failed exchange, its message the innermost cause in words."""
    chain = list(causes(exc))
    short = shortage(exc)
    if short is not None:
        return TransientError(
            "internal_error", f"cannot open a connection to {host}: {short}", hint=SHORTAGE_HINT
        )
    connecting = any(isinstance(c, urllib3.exceptions.NewConnectionError) for c in chain)
    reach = f"cannot reach {host}"
    for cause in chain:
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or "the certificate is not trusted"
            return TransientError(
                "connection_error",
                f"TLS handshake with {host} failed: certificate verify failed: {reason}",
                hint=TLS_HINT,
            )
    for cause in chain:
        if isinstance(cause, socket.gaierror):
            words = _RESOLVER_WORDS.get(cause.errno or 0, "name resolution failed")
            return TransientError("connection_error", f"{reach}: {words}")
    for cause in chain:
        if isinstance(cause, TimeoutError) or (
            isinstance(cause, OSError) and cause.errno == errno.ETIMEDOUT
        ):
            where = reach if _connect_phase(chain) else f"no answer from {host}"
            return TransientError("timeout", f"{where}: timed out after {timeout:g} s")
    for cause in chain:
        if (
            isinstance(cause, OSError)
            and not isinstance(cause, ssl.SSLError | socket.gaierror)
            and cause.errno in _ERRNO_WORDS
        ):
            words = _ERRNO_WORDS[cause.errno]
            where = reach if connecting else f"the connection to {host} failed"
            return TransientError("connection_error", f"{where}: {words}")
    for cause in chain:
        if isinstance(cause, ssl.SSLError):
            return TransientError(
                "connection_error", f"TLS handshake with {host} failed: {_ssl_words(cause)}"
            )
    for cause in chain:
        broken = _protocol_words(cause, host)
        if broken is not None:
            return TransientError("connection_error", broken)
    innermost = chain[-1] if chain else exc
    return TransientError("connection_error", f"{reach}: {_name(innermost)}")


def _connect_phase(chain: list[BaseException]) -> bool:
    return any(
        isinstance(c, urllib3.exceptions.ConnectTimeoutError | requests.exceptions.ConnectTimeout)
        for c in chain
    )


def _ssl_words(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return "the server closed the connection during the TLS handshake"
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and re.fullmatch(r"[A-Z0-9_]{1,80}", reason):
        return reason.lower().replace("_", " ")
    return "TLS error"


def _protocol_words(exc: BaseException, host: str) -> str | None:  # noqa: PLR0911 - a table
    """A violation of HTTP by the server, in words (never the bytes it sent)."""
    if isinstance(exc, http.client.RemoteDisconnected):
        return f"{host} closed the connection without answering"
    if isinstance(exc, http.client.LineTooLong):
        return f"{host} sent a header line longer than 64 KiB"
    if isinstance(exc, http.client.BadStatusLine):
        return f"{host} did not answer in HTTP (no valid status line)"
    if isinstance(exc, urllib3.exceptions.InvalidChunkLength):
        return f"{host} sent an invalid chunked body"
    if isinstance(exc, http.client.IncompleteRead):
        # http.client reports a chunk size that is not hex the same way.
        return (
            f"the answer from {host} broke off before its announced end "
            "(short of its Content-Length, or a broken chunked body)"
        )
    if isinstance(exc, BadHeadError):
        return f"{host} {exc.words}"
    if isinstance(exc, urllib3.exceptions.InvalidHeader | requests.exceptions.InvalidHeader):
        return f"{host} sent an invalid header (for example two different Content-Length values)"
    if isinstance(exc, http.client.HTTPException) and "more than" in str(exc):
        return f"{host} sent more than 100 header lines"
    return None


def _name(exc: BaseException) -> str:
    """An unrecognised cause: its class, and its errno words when it has them."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"unexpected {type(exc).__name__}"
