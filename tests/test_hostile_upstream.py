"""A hostile or broken upstream, byte for byte: every answer is a clear, counted failure.

The raw-socket server in `tests.hostile_upstream` trickles heads, sends endless
`100 Continue`, lies about lengths, compresses uninvited, sends garbage where a status
line belongs and hostile JSON. Through `ApiClient`, `Refresher` and the real command,
each must end as one `RefreshError` (or one counted failed attempt) with a plain
message, within the exchange deadline, with no traceback and no secret in any output.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import gc
import json
import os
import resource
import signal
import socket
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from random import Random
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from prometheus_client import CollectorRegistry

from sidecar import config as config_module
from sidecar.api import MAX_BODY_BYTES, ApiClient
from sidecar.config import ApiConfig, Secret
from sidecar.errors import CredentialError, InvalidResponseError, RefreshError, TransientError
from sidecar.fake_api import FakeApi
from sidecar.metrics import Metrics
from sidecar.refresher import Refresher
from tests.conftest import API_KEY, Sidecar, base_env, get, json_lines, run_command, write_config
from tests.hostile_upstream import (
    GOOD_TOKEN,
    HostileUpstream,
    Reply,
    chunked,
    deflated,
    endless,
    error_body,
    good,
    gzip_bomb,
    gzipped,
    head,
    response,
    session_body,
)
from tests.test_faults import BACKOFF, closed_port, failure_counts, start_run, unanswered_port

KEY = Secret("hostile-test-key-0123456789")
TIMEOUT = 0.5  # api.timeout_seconds here: the whole exchange must end within 1 s
SLACK = 0.6  # thread wake-up and teardown on a busy 2-CPU box


@pytest.fixture
def upstream() -> Iterator[HostileUpstream]:
    with HostileUpstream() as server:
        yield server


@pytest.fixture
def client(upstream: HostileUpstream) -> Iterator[ApiClient]:
    api_client = ApiClient(ApiConfig(base_url=upstream.url, timeout_seconds=TIMEOUT))
    yield api_client
    api_client.close()
    gc.collect()  # a socket left open shows up here, in the test that left it


def failure(client: ApiClient, key: Secret = KEY) -> RefreshError:
    with pytest.raises(RefreshError) as caught:
        client.fetch(key)
    return caught.value


def timed_failure(client: ApiClient) -> tuple[RefreshError, float]:
    started = time.monotonic()
    error = failure(client)
    return error, time.monotonic() - started


def secret_forms(secret: str) -> set[str]:
    """The ways a secret can show up in text: clear, repr, JSON, URL-encoded, base64."""
    raw = secret.encode("utf-8", "surrogatepass")
    forms = {
        secret,
        repr(secret)[1:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(raw, safe=""),
        quote_plus(raw),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        repr(raw)[2:-1],
    }
    # A key cut by a line break leaks as its halves just as well.
    for piece in secret.replace("\r", "\n").split("\n"):
        if len(piece.strip()) >= 8:
            forms.add(piece.strip())
    return {form for form in forms if len(form) >= 6}


def assert_clean(text: str, *secrets: str) -> None:
    """No traceback and no secret in any encoding."""
    assert "Traceback" not in text, text
    for secret in secrets:
        for form in secret_forms(secret):
            assert form not in text, f"{form!r} of a secret in output"


# -- 1. the exchange as a whole ends within twice the timeout -------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply([response(session_body())], trickle=0.25), id="head-trickled"),
        pytest.param(
            Reply(endless(b"HTTP/1.1 100 Continue\r\n\r\n"), pause=0.1), id="endless-100-continue"
        ),
        pytest.param(
            Reply(endless(b"X-Slow: 1\r\n", first=b"HTTP/1.1 200 OK\r\n"), pause=0.2),
            id="headers-one-line-at-a-time",
        ),
        pytest.param(
            Reply(endless(b" ", first=head("200 OK", [("Content-Length", "100")])), pause=0.2),
            id="body-trickled",
        ),
        pytest.param(
            Reply(
                endless(b"1\r\n \r\n", first=head("200 OK", [("Transfer-Encoding", "chunked")])),
                pause=0.2,
            ),
            id="endless-chunks",
        ),
    ],
)
def test_a_slow_head_or_body_is_cut_off_at_twice_the_timeout(
    upstream: HostileUpstream, client: ApiClient, reply: Reply
) -> None:
    """Every read arrives within the per-read timeout; the whole exchange does not."""
    upstream.script(reply)
    error, took = timed_failure(client)
    assert type(error) is TransientError
    assert error.reason == "timeout"
    assert "timed out after 1 s" in str(error)
    assert 2 * TIMEOUT - 0.05 <= took <= 2 * TIMEOUT + SLACK


def test_the_next_attempt_after_a_cut_off_exchange_works(
    upstream: HostileUpstream, client: ApiClient
) -> None:
    upstream.script(Reply([response(session_body())], trickle=0.25), good())
    assert failure(client).reason == "timeout"
    assert client.fetch(KEY).session.access_token == GOOD_TOKEN


def test_a_silent_server_is_a_read_timeout_in_plain_words(
    upstream: HostileUpstream, client: ApiClient
) -> None:
    upstream.script(Reply([], hold=5))
    error = failure(client)
    assert error.reason == "timeout"
    assert str(error) == f"no answer from {upstream.netloc}: timed out after 0.5 s"


def test_a_silent_tls_handshake_is_a_timeout(upstream: HostileUpstream) -> None:
    """The handshake is bounded by the socket timeout; the exchange by twice that."""
    upstream.script(Reply([], hold=5, immediate=True))
    api_client = ApiClient(
        ApiConfig(base_url=upstream.url.replace("http:", "https:"), timeout_seconds=TIMEOUT)
    )
    started = time.monotonic()
    try:
        error = failure(api_client)
    finally:
        api_client.close()
    assert error.reason == "timeout"
    assert "timed out after" in str(error)
    assert time.monotonic() - started <= 2 * TIMEOUT + SLACK


def test_a_connect_timeout_is_a_timeout_in_plain_words() -> None:
    with unanswered_port() as port:
        api_client = ApiClient(
            ApiConfig(base_url=f"http://127.0.0.1:{port}", timeout_seconds=TIMEOUT)
        )
        try:
            error = failure(api_client)
        finally:
            api_client.close()
    assert error.reason == "timeout"
    assert str(error) == f"cannot reach 127.0.0.1:{port}: timed out after 0.5 s"


# -- 2. encodings and framing ---------------------------------------------------------------


def test_requests_ask_for_no_compression(upstream: HostileUpstream, client: ApiClient) -> None:
    client.fetch(KEY)
    (request,) = upstream.requests
    assert request.headers["accept-encoding"] == "identity"
    assert request.headers["x-api-key"] == KEY.value


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip", gzipped),
        ("x-gzip", gzipped),
        ("GZip", gzipped),
        ("deflate", deflated),
        ("deflate", lambda data: deflated(data, raw=True)),
        ("identity", lambda data: data),
        ("gzip, identity", gzipped),
        ("deflate, gzip", lambda data: gzipped(deflated(data))),
    ],
)
def test_a_compressed_answer_is_decoded_anyway(
    upstream: HostileUpstream,
    client: ApiClient,
    coding: str,
    encode: Callable[[bytes], bytes],
) -> None:
    upstream.script(
        Reply([response(encode(session_body()), headers=[("Content-Encoding", coding)])])
    )
    assert client.fetch(KEY).session.access_token == GOOD_TOKEN


def test_a_compressed_error_body_is_decoded_and_its_code_decides(
    upstream: HostileUpstream, client: ApiClient
) -> None:
    body = gzipped(error_body("LIMIT_EXCEEDED"))
    upstream.script(
        Reply([response(body, "401 Unauthorized", headers=[("Content-Encoding", "gzip")])])
    )
    error = failure(client)
    assert type(error) is TransientError
    assert error.reason == "LIMIT_EXCEEDED"


def test_a_gzip_bomb_is_refused_after_64_kib_without_inflating_it(
    upstream: HostileUpstream, client: ApiClient
) -> None:
    bomb = gzip_bomb()
    assert len(bomb) < MAX_BODY_BYTES
    upstream.script(Reply([response(bomb, headers=[("Content-Encoding", "gzip")])]))
    tracemalloc.start()
    try:
        error = failure(client)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(error, InvalidResponseError)
    assert str(error) == f"response body larger than {MAX_BODY_BYTES} bytes once decompressed"
    assert peak < 4 * 1024 * 1024  # 50 MB inflated would show here


@pytest.mark.parametrize(
    ("coding", "data", "problem"),
    [
        ("gzip", gzipped(session_body())[:-12], "truncated"),
        ("gzip", b"definitely not gzip", "not valid gzip"),
        ("deflate", b"\x00\x01\x02garbage", "not valid deflate"),
        ("br", b"\x0b\x02\x80{}\x03", "br"),
        ("gzip, gzip, gzip, gzip", b"x", "compressed 4 times over"),
        (f"x-{KEY.value}", b"x", "compressed with an unknown coding,"),
    ],
)
def test_a_broken_or_unknown_compression_is_an_invalid_response(
    upstream: HostileUpstream, client: ApiClient, coding: str, data: bytes, problem: str
) -> None:
    upstream.script(Reply([response(data, headers=[("Content-Encoding", coding)])]))
    error = failure(client)
    assert isinstance(error, InvalidResponseError)
    assert problem in str(error)


def broken(parts: list[bytes], **reply: Any) -> Reply:
    return Reply(parts, **reply)


BODY = session_body()
FRAMING = [
    pytest.param(
        broken([response(BODY, length=len(BODY) + 50)]),
        "connection_error",
        "broke off before its announced end",
        id="content-length-too-long",
    ),
    pytest.param(
        broken([response(BODY, length=len(BODY) - 5)]),
        "invalid_response",
        "response body is not JSON",
        id="content-length-too-short",
    ),
    pytest.param(
        broken([response(BODY, length=len(BODY) + 9, headers=[("Content-Length", "7")])]),
        "connection_error",
        "sent an invalid header",
        id="two-content-lengths",
    ),
    pytest.param(
        broken([head("200 OK", [("Transfer-Encoding", "chunked")]), chunked(BODY[:20], end=False)]),
        "connection_error",
        "broke off before its announced end",
        id="chunked-truncated",
    ),
    pytest.param(
        broken([head("200 OK", [("Transfer-Encoding", "chunked")]), b"zz\r\n{}\r\n0\r\n\r\n"]),
        "connection_error",
        "broke off before its announced end",  # http.client says IncompleteRead for both
        id="chunk-size-garbage",
    ),
    pytest.param(
        broken([b"SSH-2.0-OpenSSH_9.6\r\n"]),
        "connection_error",
        "did not answer in HTTP",
        id="garbage-status-line",
    ),
    pytest.param(
        broken([b"HTTP/1.1 2000 OK\r\n\r\n"]),
        "connection_error",
        "did not answer in HTTP",
        id="four-digit-status",
    ),
    pytest.param(
        broken([b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40)]),
        "connection_error",
        "did not answer in HTTP",
        id="binary-instead-of-a-head",
    ),
    pytest.param(
        broken([]), "connection_error", "closed the connection without answering", id="no-answer"
    ),
    pytest.param(
        broken([b"HTTP/1.1 200 OK\r\nContent-Le"]),
        "connection_error",
        "sent a header that cannot be parsed",
        id="closed-mid-head",
    ),
    pytest.param(
        broken([head("200 OK", [("X-Fill", "a" * 70_000)])]),
        "connection_error",
        "sent a header line longer than 64 KiB",
        id="header-line-too-long",
    ),
    pytest.param(
        broken([head("200 OK", [(f"X-H{i}", "1") for i in range(150)])]),
        "connection_error",
        "sent more than 100 header lines",
        id="too-many-headers",
    ),
    pytest.param(
        broken([b"HTTP/1.1 200 OK\r\nno colon in this line\r\nContent-Length: 2\r\n\r\n{}"]),
        "connection_error",
        "sent a header that cannot be parsed",
        id="header-without-colon",
    ),
    pytest.param(
        broken([response(BODY)[:-10]], reset=True),
        "connection_error",
        None,
        id="reset-mid-body",
    ),
    pytest.param(
        broken([b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + response(BODY)]),
        "http_103",
        "answered 103",
        id="interim-103-taken-for-the-answer",
    ),
]


@pytest.mark.parametrize(("reply", "reason", "words"), FRAMING)
def test_broken_framing_is_a_counted_retryable_failure_in_plain_words(
    upstream: HostileUpstream,
    client: ApiClient,
    reply: Reply,
    reason: str,
    words: str | None,
) -> None:
    upstream.script(reply, good())
    error, took = timed_failure(client)
    assert isinstance(error, TransientError)
    assert (error.reason, type(error).__name__) == (
        reason,
        "InvalidResponseError" if reason == "invalid_response" else "TransientError",
    )
    if words is not None:
        assert words in str(error)
    for library_talk in ("HTTPConnectionPool", "Errno", "object at 0x", "Error("):
        assert library_talk not in str(error)
    assert took < 2 * TIMEOUT + SLACK
    # The next exchange starts clean: nothing left over from the broken one.
    assert client.fetch(KEY).session.access_token == GOOD_TOKEN


# -- 3. hostile bodies and headers ----------------------------------------------------------


HOSTILE_BODIES = [
    pytest.param(b"[" * 60_000, id="nested-arrays"),
    pytest.param(b'{"a":' * 20_000, id="nested-objects"),
    pytest.param(b'{"accessToken": "a.b", "expiresIn": ' + b"[" * 30_000, id="nested-in-a-field"),
    pytest.param(b'{"accessToken": "a.b", "expiresIn": ' + b"9" * 5000 + b"}", id="5000-digits"),
    pytest.param(b'{"accessToken": "a.b", "expiresIn": 1e999999}', id="huge-exponent"),
    pytest.param(b'{"accessToken": "a.b", "expiresIn": NaN}', id="nan"),
    pytest.param(b'{"accessToken": "a.b", "expiresIn": -Infinity}', id="minus-infinity"),
    pytest.param(b"\xff\xfe\xfd not utf-8", id="not-utf-8"),
    pytest.param(b'{"accessToken": "a.\xff", "expiresIn": 1}', id="invalid-utf-8-inside"),
    pytest.param(b'"just a string"', id="a-string"),
    pytest.param(b"null", id="null"),
    pytest.param(b"[]", id="an-array"),
    pytest.param(b"", id="empty"),
    pytest.param(json.dumps({"errorCode": 7}).encode(), id="errorcode-number"),
    pytest.param(json.dumps({"errorCode": ["LIMIT_EXCEEDED"]}).encode(), id="errorcode-list"),
    pytest.param(json.dumps({"errorCode": {"a": 1}}).encode(), id="errorcode-object"),
    pytest.param(json.dumps({"errorCode": "x" * 60_000}).encode(), id="errorcode-huge"),
    pytest.param(
        json.dumps({"accessToken": GOOD_TOKEN, "expiresIn": 3600, "errorCode": None}).encode()[:-1]
        + b", " * 10
        + b"}",
        id="trailing-commas",
    ),
]


@pytest.mark.parametrize("body", HOSTILE_BODIES)
@pytest.mark.parametrize("status", ["200 OK", "503 Service Unavailable", "400 Bad Request"])
def test_a_hostile_body_is_a_plain_failure_never_a_crash(
    upstream: HostileUpstream, client: ApiClient, body: bytes, status: str
) -> None:
    upstream.script(Reply([response(body, status)]))
    error = failure(client)
    code = int(status[:3])
    if code == 200:
        assert isinstance(error, InvalidResponseError)
    else:
        assert error.reason == f"http_{code}"
        assert error.status == code
    assert len(str(error)) < 200
    assert "x" * 100 not in str(error)


@pytest.mark.parametrize(
    "value",
    ["²", "٣", "1²", "๑๒", "1e3", "0x10", "+5", "-5", "1.5", "", "9" * 5000, "\u200b5",
     "Tue, 14 Nov 2023 25:61:00 GMT", "Tue, 31 Feb 2023 10:00:00 GMT",
     "Tue, 14 Nov 99999 22:15:00 GMT", "Tue, 14 Nov 0000 22:15:00 GMT", "Mon, 1 Jan 1 0:0:0 -9999"],
)  # fmt: skip
def test_a_hostile_retry_after_is_ignored_or_used_never_a_crash(
    upstream: HostileUpstream, client: ApiClient, value: str
) -> None:
    upstream.script(
        Reply(
            [response(error_body("SERVICE_UNAVAILABLE"), "503 X", headers=[("Retry-After", value)])]
        )
    )
    error = failure(client)
    assert isinstance(error, TransientError)
    assert error.reason == "SERVICE_UNAVAILABLE"
    if value == "9" * 5000:
        assert error.retry_after is not None
        assert error.retry_after >= 3600  # enormous, still finite, capped later by the policy
    else:
        assert error.retry_after is None


@pytest.mark.parametrize(
    ("location", "target"),
    [
        ("http://[::1", "elsewhere"),
        ("http://[zz]/x", "elsewhere"),
        ("//user:secret@evil.example:8080/x", "evil.example"),
        (f"http://{KEY.value}.example/", "elsewhere"),
        ("\x00\x01", "elsewhere"),
        ("http://" + "a" * 5000 + "/", "elsewhere"),
    ],
)
def test_a_hostile_redirect_names_only_a_plain_host(
    upstream: HostileUpstream, client: ApiClient, location: str, target: str
) -> None:
    upstream.script(Reply([response(b"", "302 Found", headers=[("Location", location)])]))
    error = failure(client)
    assert error.reason == "http_302"
    assert f"redirecting to {target};" in str(error)
    assert "secret" not in str(error)
    assert KEY.value not in str(error)


# -- 5. messages in plain words -------------------------------------------------------------


def test_connection_refused_in_plain_words() -> None:
    port = closed_port()
    api_client = ApiClient(ApiConfig(base_url=f"http://127.0.0.1:{port}", timeout_seconds=1))
    try:
        error = failure(api_client)
    finally:
        api_client.close()
    assert (error.reason, str(error)) == (
        "connection_error",
        f"cannot reach 127.0.0.1:{port}: connection refused",
    )


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (socket.EAI_NONAME, "name does not resolve"),
        (socket.EAI_AGAIN, "name resolution failed for now (temporary failure in name resolution)"),
    ],
)
def test_a_name_that_does_not_resolve_in_plain_words(
    monkeypatch: pytest.MonkeyPatch, code: int, words: str
) -> None:
    """getaddrinfo is the OS boundary; no DNS is reachable from the test box."""

    def unresolvable(*_args: object, **_kwargs: object) -> None:
        messages = {socket.EAI_NONAME: "Name or service not known"}
        raise socket.gaierror(code, messages.get(code, "Temporary failure in name resolution"))

    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
    api_client = ApiClient(ApiConfig(base_url="http://api.forestreet.invalid", timeout_seconds=1))
    try:
        error = failure(api_client)
    finally:
        api_client.close()
    assert error.reason == "connection_error"
    assert str(error) == f"cannot reach api.forestreet.invalid: {words}"


def test_a_certificate_that_does_not_verify_in_plain_words(
    tls_api: tuple[FakeApi, Path],
) -> None:
    api, _ = tls_api
    api_client = ApiClient(ApiConfig(base_url=api.url, timeout_seconds=2))
    try:
        error = failure(api_client)
    finally:
        api_client.close()
    host = api.url.removeprefix("https://")
    assert str(error) == (
        f"TLS handshake with {host} failed: certificate verify failed: "
        "unable to get local issuer certificate"
    )


def test_tls_to_a_plain_http_server_in_plain_words(upstream: HostileUpstream) -> None:
    api_client = ApiClient(
        ApiConfig(base_url=upstream.url.replace("http:", "https:"), timeout_seconds=1)
    )
    upstream.script(Reply([response(b"{}", "400 Bad Request")], immediate=True))
    try:
        error = failure(api_client)
    finally:
        api_client.close()
    assert error.reason == "connection_error"
    assert str(error) == f"TLS handshake with {upstream.netloc} failed: wrong version number"


@contextlib.contextmanager
def out_of_file_descriptors() -> Iterator[None]:
    """Lower the soft fd limit to what is open now, plus a few, and fill those.

    A descriptor freed after the fill would be taken by the next socket: so the garbage an
    earlier test left (a subprocess's pipes, a socket) is collected first, and the collector
    is off meanwhile.
    """
    gc.collect()
    gc.disable()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(list(Path("/proc/self/fd").iterdir()))
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 8, hard))
    try:
        with contextlib.suppress(OSError):
            for _ in range(64):
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        gc.enable()


def test_out_of_file_descriptors_is_a_resource_shortage_not_a_network_or_key_problem(
    upstream: HostileUpstream, client: ApiClient
) -> None:
    client.fetch(KEY)  # every lazy import done: none needs a descriptor below
    # The server closes its side after the answer: a descriptor freed once the fill is done
    # would let the client connect and the in-process server fail to accept (a timeout).
    upstream.settle()
    upstream.requests.clear()
    with out_of_file_descriptors():
        error = failure(client)
    assert type(error) is TransientError
    assert error.reason == "internal_error"
    assert str(error) == (
        f"cannot open a connection to {upstream.netloc}: too many open files "
        "(this process is out of file descriptors)"
    )
    assert "key" not in error.hint
    assert upstream.requests == []
    assert client.fetch(KEY).session.access_token == GOOD_TOKEN


# -- 6. the key never reaches a message ----------------------------------------------------

BAD_KEYS = [
    pytest.param("hostile-key-0123\n456789abcdef", "holds a line break at position 17", id="lf"),
    pytest.param(
        "hostile-key-0123\r\n456789abcdef", "holds a line break at position 17", id="crlf"
    ),
    pytest.param("\ufeffhostile-key-0123456789", "starts with a byte order mark", id="bom"),
    pytest.param(
        "\u201chostile-key-0123456789\u201d",
        "holds a character an HTTP header cannot carry at position 1",
        id="curly-quotes",
    ),
    pytest.param(
        "hostile-k\u00e9y-0123456789",
        "holds a character an HTTP header cannot carry at position 10",
        id="latin-1",
    ),
    pytest.param(
        "hostile-key 0123456789",
        "holds a character an HTTP header cannot carry at position 12",
        id="space",
    ),
    pytest.param(
        "hostile-key-\x000123456789",
        "holds a character an HTTP header cannot carry at position 13",
        id="nul",
    ),
    pytest.param(
        "hostile-key-\udcff0123456789",
        "holds a character an HTTP header cannot carry at position 13",
        id="surrogate",
    ),
    pytest.param("k" * 4097, "is longer than 4096 characters", id="too-long"),
    pytest.param("", "is empty", id="empty"),
]


@pytest.mark.parametrize(("key", "problem"), BAD_KEYS)
def test_a_key_a_header_cannot_carry_is_never_sent_nor_quoted(
    upstream: HostileUpstream, client: ApiClient, key: str, problem: str
) -> None:
    error = failure(client, Secret(key))
    assert type(error) is CredentialError
    assert error.reason == "key_unavailable"
    assert str(error) == f"the API key {problem}; it was not sent"
    assert_clean(str(error) + repr(error) + repr(error.args) + error.hint, key)
    assert upstream.requests == []


def test_the_longest_allowed_key_is_sent(upstream: HostileUpstream, client: ApiClient) -> None:
    key = "".join(chr(c) for c in range(0x21, 0x7F)) * 43
    client.fetch(Secret(key[:4096]))
    assert upstream.requests[-1].headers["x-api-key"] == key[:4096]


# -- 4. the attempt boundary: anything unforeseen is counted, retried, never a crash ---------


class Log:
    """A structlog-like logger that keeps the events."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def log(event: str, **fields: Any) -> None:
            self.events.append({"event": event, "level": level, **fields})

        return log


@pytest.fixture
def refresher(tmp_path: Path, upstream: HostileUpstream) -> Iterator[tuple[Refresher, Log]]:
    path = write_config(tmp_path, upstream.url, api={"timeout_seconds": TIMEOUT})
    environ = base_env(FORESTREET_API_KEY=KEY.value)
    config = config_module.load(path, environ, {})
    client = ApiClient(config.api)
    log = Log()
    metrics = Metrics(CollectorRegistry(), "test")
    refresher = Refresher(config, client, metrics, log, rng=Random(3), environ=environ)
    yield refresher, log
    client.close()


def attempts_counted(refresher: Refresher) -> float:
    assert refresher.metrics is not None
    total = 0.0
    for family in refresher.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "forestreet_sidecar_refreshes_total":
                total += sample.value
    return total


def counted(refresher: Refresher, reason: str) -> float | None:
    assert refresher.metrics is not None
    return refresher.metrics.registry.get_sample_value(
        "forestreet_sidecar_refreshes_total", {"result": "failure", "reason": reason}
    )


@pytest.mark.parametrize(
    ("raised", "words"),
    [
        (MemoryError(), "out of memory"),
        (RecursionError("maximum recursion depth exceeded"), "nesting too deep"),
        (KeyError("x-api-key"), "KeyError"),
        (ValueError(f"bad header value {KEY.value!r}"), "ValueError"),
        (
            UnicodeEncodeError("latin-1", KEY.value, 1, 2, "ordinal not in range"),
            "UnicodeEncodeError",
        ),
        (OSError(errno.EMFILE, "Too many open files"), "too many open files"),
        (RuntimeError("can't start new thread"), "RuntimeError"),
    ],
)
def test_an_unforeseen_failure_is_one_counted_retryable_internal_error(
    refresher: tuple[Refresher, Log],
    monkeypatch: pytest.MonkeyPatch,
    raised: BaseException,
    words: str,
) -> None:
    sidecar, log = refresher

    def explode(_key: Secret) -> None:
        raise raised

    monkeypatch.setattr(sidecar.client, "fetch", explode)
    before = attempts_counted(sidecar)
    outcome = sidecar.attempt()
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.reason == "internal_error"
    assert str(outcome.lane) == "retryable"
    assert words in str(outcome.error)
    assert attempts_counted(sidecar) == before + 1
    assert counted(sidecar, "internal_error") == 1
    (event,) = [e for e in log.events if e["event"] == "refresh_failed"]
    assert event["reason"] == "internal_error"
    assert "check the API key" not in json.dumps(event)
    assert_clean(json.dumps(event, default=str), KEY.value)
    assert 0 <= outcome.delay <= 0.5


def test_out_of_file_descriptors_reading_the_key_is_a_shortage_not_a_credential_problem(
    tmp_path: Path, upstream: HostileUpstream
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY.value)
    path = write_config(
        tmp_path, upstream.url, api={"timeout_seconds": TIMEOUT, "key_file": str(key_file)}
    )
    config = config_module.load(path, base_env(), {})
    client = ApiClient(config.api)
    log = Log()
    sidecar = Refresher(
        config, client, Metrics(CollectorRegistry(), "t"), log, rng=Random(1), environ=base_env()
    )
    try:
        with out_of_file_descriptors():
            outcome = sidecar.attempt()
    finally:
        client.close()
    assert outcome.error is not None
    assert (outcome.error.reason, str(outcome.lane)) == ("internal_error", "retryable")
    assert "too many open files" in str(outcome.error)
    assert "key" not in outcome.error.hint
    assert counted(sidecar, "internal_error") == 1


def test_every_hostile_answer_adds_exactly_one_attempt_sample(
    refresher: tuple[Refresher, Log], upstream: HostileUpstream
) -> None:
    sidecar, _ = refresher
    replies = [
        Reply([response(b"[" * 60_000)]),
        Reply([response(b"[" * 60_000, "503 X")]),
        Reply([response(error_body("LIMIT_EXCEEDED"), "503 X", headers=[("Retry-After", "²")])]),
        Reply([response(b"", "302 Found", headers=[("Location", "http://[::1")])]),
        Reply([response(session_body())], trickle=0.25),
        Reply(endless(b"HTTP/1.1 100 Continue\r\n\r\n"), pause=0.1),
        Reply([response(gzip_bomb(), headers=[("Content-Encoding", "gzip")])]),
        Reply([b"SSH-2.0-OpenSSH_9.6\r\n"]),
        good(),
    ]
    upstream.script(*replies)
    reasons = []
    for index in range(len(replies)):
        outcome = sidecar.attempt()
        assert attempts_counted(sidecar) == index + 1
        reasons.append(outcome.error.reason if outcome.error else "ok")
    assert reasons == [
        "invalid_response",
        "http_503",
        "LIMIT_EXCEEDED",
        "http_302",
        "timeout",
        "timeout",
        "invalid_response",
        "connection_error",
        "ok",
    ]
    assert sidecar.config.token.path.read_text() == GOOD_TOKEN


# -- what the refresher hands the policy (issue 12's inputs) ----------------------------------


def test_only_the_first_token_of_a_process_gets_the_wide_refresh_window(tmp_path: Path) -> None:
    """[0.1·L, 0.8·L] for the first token, [0.7·L, 0.8·L] for every later one (SPEC)."""
    firsts, laters = [], []
    with FakeApi(lifetime=1000) as api:
        path = write_config(tmp_path, api.url, refresh={"min_interval_seconds": 0})
        environ = base_env()
        config = config_module.load(path, environ, {})
        for seed in range(20):
            client = ApiClient(config.api)
            sidecar = Refresher(config, client, None, Log(), rng=Random(seed), environ=environ)
            try:
                firsts.append(sidecar.attempt().delay)
                laters.append(sidecar.attempt().delay)
            finally:
                client.close()
    assert all(80 - 1 <= delay <= 800 for delay in firsts)
    assert min(firsts) < 700  # 20 draws from [80, 800]: all above 700 has odds of 1e-17
    assert all(700 - 1 <= delay <= 800 for delay in laters)


def test_after_a_long_patient_wait_the_backoff_goes_on_at_the_cap(
    tmp_path: Path, upstream: HostileUpstream
) -> None:
    """The ceiling is raised to min(max, seconds spent failing): 1000 s of failing → the cap."""
    upstream.script(Reply([response(error_body("SERVICE_UNAVAILABLE"), "503 X")]))
    path = write_config(tmp_path, upstream.url, backoff={"initial_seconds": 1, "max_seconds": 300})
    environ = base_env()
    config = config_module.load(path, environ, {})
    clock = [5000.0]
    client = ApiClient(config.api)
    sidecar = Refresher(
        config, client, None, Log(), rng=Random(2), environ=environ, monotonic=lambda: clock[0]
    )
    try:
        first = sidecar.attempt()
        clock[0] += 1000
        second = sidecar.attempt()
    finally:
        client.close()
    assert 0 <= first.delay <= 1
    assert 150 <= second.delay <= 300  # equal jitter at the cap, not [0, 2] for failure #2


# -- the real command ---------------------------------------------------------------------


def assert_output_clean(*texts: str, secrets: tuple[str, ...] = (API_KEY,)) -> None:
    for text in texts:
        assert_clean(text, *secrets, GOOD_TOKEN)


def test_once_against_hostile_json_gives_up_cleanly_and_counts_every_attempt(
    tmp_path: Path, upstream: HostileUpstream
) -> None:
    upstream.script(Reply([response(b"[" * 60_000)]))
    config = write_config(tmp_path, upstream.url, backoff=BACKOFF)
    result = run_command(["--config", str(config), "once", "--timeout", "1.5"], timeout=30)
    assert result.returncode == 1, result.stderr
    assert_output_clean(result.stdout, result.stderr)
    events = json_lines(result.stdout)
    failed = [e for e in events if e["event"] == "refresh_failed"]
    assert len(failed) >= 2
    assert {e["reason"] for e in failed} == {"invalid_response"}
    assert {e["message"] for e in failed} == {"response body is not JSON (nested too deeply)"}
    assert result.stderr.strip().splitlines()[-1].startswith("forestreet-sidecar: once gave up")


def test_once_survives_a_non_ascii_retry_after_and_writes_the_next_token(
    tmp_path: Path, upstream: HostileUpstream
) -> None:
    upstream.script(
        Reply(
            [response(error_body("SERVICE_UNAVAILABLE"), "503 X", headers=[("Retry-After", "²")])]
        ),
        Reply([response(gzipped(session_body()), headers=[("Content-Encoding", "gzip")])]),
    )
    config = write_config(tmp_path, upstream.url, backoff=BACKOFF)
    result = run_command(["--config", str(config), "once", "--timeout", "10"], timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_output_clean(result.stdout, result.stderr)
    events = [e["event"] for e in json_lines(result.stdout)]
    assert events.count("refresh_failed") == 1
    assert (tmp_path / "out" / "token").read_text() == GOOD_TOKEN


@pytest.mark.parametrize(
    "key",
    [
        "test-key-0123\n456789abcdef",
        "\u201ctest-key-0123456789abcdef\u201d",
        "test-k\u00e9y-0123456789abcdef",
    ],
)
def test_once_with_a_key_a_header_cannot_carry_never_prints_it(
    tmp_path: Path, upstream: HostileUpstream, key: str
) -> None:
    config = write_config(tmp_path, upstream.url)
    result = run_command(
        ["--config", str(config), "once", "--timeout", "5"],
        env=base_env(FORESTREET_API_KEY=key),
        timeout=30,
    )
    # 78 once key loading refuses it (config), 1 when the request boundary does.
    assert result.returncode in (1, 78), result.stdout + result.stderr
    assert_output_clean(result.stdout, result.stderr, secrets=(key,))
    assert upstream.requests == []


def test_run_counts_every_hostile_answer_and_stays_alive(
    tmp_path: Path, upstream: HostileUpstream, sidecars: Callable[..., Sidecar]
) -> None:
    """One `run` process: every hostile answer once, each a counted, retried failure."""
    config = write_config(
        tmp_path,
        upstream.url,
        api={"timeout_seconds": 0.3},
        server={"listen": "127.0.0.1:0"},
        backoff=BACKOFF,
    )
    hostile = [
        (Reply([response(b"[" * 60_000)]), "invalid_response"),
        (Reply([response(b'{"errorCode": ' + b"[" * 60_000, "503 X")]), "http_503"),
        (
            Reply(
                [response(error_body("LIMIT_EXCEEDED"), "429 X", headers=[("Retry-After", "٣")])]
            ),
            "LIMIT_EXCEEDED",
        ),
        (Reply([response(b"", "503 X", headers=[("Location", "http://[::1")])]), "http_503"),
        (Reply([response(session_body())], trickle=0.2), "timeout"),
        (Reply(endless(b"HTTP/1.1 100 Continue\r\n\r\n"), pause=0.05), "timeout"),
        (
            Reply([response(gzip_bomb(), headers=[("Content-Encoding", "gzip")])]),
            "invalid_response",
        ),
        (Reply([b"SSH-2.0-OpenSSH_9.6\r\n"]), "connection_error"),
        (Reply([response(BODY, length=len(BODY) + 50)]), "connection_error"),
    ]
    upstream.script(*(reply for reply, _ in hostile), good())
    sidecar, url = start_run(sidecars, config)
    failed = [sidecar.wait_event("refresh_failed", timeout=10) for _ in hostile]
    sidecar.wait_event("token_refreshed", timeout=10)
    counts = failure_counts(url)
    assert get(url + "/healthz").status_code == 200
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait() == 0
    assert [e["reason"] for e in failed] == [reason for _, reason in hostile]
    assert [e["consecutive_failures"] for e in failed] == list(range(1, len(hostile) + 1))
    for event in failed:
        assert "HTTPConnectionPool" not in event["message"]
    assert sum(counts.values()) == len(hostile)
    assert (tmp_path / "out" / "token").read_text() == GOOD_TOKEN
    assert_output_clean("".join(sidecar.raw), "".join(sidecar.stderr))
    assert not [e for e in sidecar.events if e["event"] == "refresh_job_crashed"]


def test_every_exchange_has_a_connection_of_its_own(
    upstream: HostileUpstream, client: ApiClient
) -> None:
    # A server that keeps the connection open after answering (keep-alive, one request per
    # connection here): had the client pooled it, the second request would go down a
    # connection nobody reads any more, the way a balancer's idle timeout leaves one.
    kept_open = head(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))],
    )
    upstream.script(Reply([kept_open + BODY], hold=5.0))
    for _ in range(2):
        assert client.fetch(KEY).session.access_token == GOOD_TOKEN
    assert [r.headers.get("connection") for r in upstream.requests] == ["close", "close"]
