"""Fuzzing the pure parsers of upstream answers: a value or our own error, nothing else.

Whatever bytes, headers or exceptions arrive, `session.parse`, `api.interpret`,
`api.decode_content`, `policy.parse_retry_after`, `policy.classify`,
`api.header_value_problem` and `api.translate` return a value or raise a
`RefreshError`: no RecursionError, ValueError, OverflowError or UnicodeError escapes,
no label outside the bounded set appears, and no message quotes what it was given.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import http.client
import json
import math
import re
import socket
import ssl
import zlib
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
import requests
import urllib3.exceptions
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sidecar.api import (
    MAX_BODY_BYTES,
    decode_content,
    header_value_problem,
    interpret,
    translate,
)
from sidecar.errors import InvalidResponseError, RefreshError, TransientError
from sidecar.metrics import failure_reason_allowed
from sidecar.policy import ERROR_CODES, Lane, classify, parse_retry_after
from sidecar.session import TOKEN_PATTERN, Session, parse

MARKER = "MARKER-d41d8cd98f00b204"  # planted in inputs; must never reach a message
SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.just(MARKER)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    ["accessToken", "refreshToken", "expiresIn", "expiresAt", "message", "errorCode", "success"]
)
session_like = st.dictionaries(
    field_names, json_values | st.just("a.b") | st.just(3600), max_size=7
)


def _json(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


bodies = (
    st.binary(max_size=512)
    | json_values.map(_json)
    | session_like.map(_json)
    | st.builds(lambda depth, opener: opener * depth, st.integers(1, 100_000), st.sampled_from([b"[", b'{"a":', b'{"errorCode":[']))
    | st.builds(lambda digits: b'{"accessToken":"a.b","expiresIn":' + b"9" * digits + b"}", st.integers(1, 20_000))
)  # fmt: skip


# -- the 200 body -------------------------------------------------------------------------


@SLOW
@given(bodies, st.booleans())
def test_session_parse_returns_a_session_or_raises_invalid_response(
    body: bytes, require_refresh: bool
) -> None:
    try:
        session = parse(body, require_refresh_token=require_refresh)
    except InvalidResponseError as exc:
        assert exc.reason == "invalid_response"
        assert MARKER not in str(exc)
        assert len(str(exc)) < 120
        return
    assert isinstance(session, Session)
    assert TOKEN_PATTERN.fullmatch(session.access_token)
    assert math.isfinite(session.expires_in)
    assert session.expires_in > 0
    assert session.expires_at is None or math.isfinite(session.expires_at)
    assert not require_refresh or session.refresh_token is not None


@given(st.text(max_size=300))
def test_session_parse_of_any_text(text: str) -> None:
    with contextlib.suppress(InvalidResponseError):
        parse(text)


# -- whole answers: status, headers, body ----------------------------------------------------

header_text = st.text(max_size=60) | st.just(MARKER) | st.sampled_from(
    ["http://[::1", "http://[zz]/", "//u:p@h/", "²", "٣", "9" * 400, "Sun, 06 Nov 1994 08:49:37 GMT"]
)  # fmt: skip
headers = st.dictionaries(st.sampled_from(["Retry-After", "Location", "Content-Type"]), header_text)


@SLOW
@given(st.integers(100, 999), headers, bodies, st.booleans())
def test_interpret_returns_a_session_or_raises_a_refresh_error_with_a_bounded_label(
    status: int, answer_headers: dict[str, str], body: bytes, require_refresh: bool
) -> None:
    try:
        session = interpret(
            status,
            answer_headers,
            body,
            host="api.test:443",
            now=1_700_000_000.0,
            require_refresh_token=require_refresh,
            secrets=(MARKER,),
        )
    except RefreshError as exc:
        assert failure_reason_allowed(exc.reason), exc.reason
        assert exc.reason in ERROR_CODES or re.fullmatch(
            r"http_[0-9]{3}|invalid_response", exc.reason
        )
        assert MARKER not in str(exc)
        assert MARKER.lower() not in str(exc)
        assert len(str(exc)) < 200
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            assert 0 <= exc.retry_after <= 1e9
        return
    assert status == 200
    assert isinstance(session, Session)


@given(st.integers(100, 999), st.sampled_from(sorted(ERROR_CODES)))
def test_a_known_error_code_decides_whatever_the_status(status: int, code: str) -> None:
    body = json.dumps({"success": False, "errorCode": code}).encode()
    with pytest.raises(RefreshError) as caught:
        interpret(status, {}, body, host="h", now=0.0)
    assert caught.value.reason == code


# -- content codings ------------------------------------------------------------------------

codings = st.lists(
    st.sampled_from(["gzip", "x-gzip", "deflate", "identity", "br", "GZIP", " gzip ", ""]),
    max_size=4,
).map(", ".join) | st.text(max_size=20)


@SLOW
@given(st.binary(max_size=2048), codings)
def test_decode_content_of_any_bytes_is_bounded_bytes_or_invalid_response(
    raw: bytes, coding: str
) -> None:
    try:
        out = decode_content(raw, coding, 200)
    except InvalidResponseError as exc:
        assert len(str(exc)) < 160
        return
    assert len(out) <= max(MAX_BODY_BYTES, len(raw))


@SLOW
@given(st.binary(max_size=4096), st.sampled_from(["gzip", "x-gzip", "deflate", "deflate-raw"]))
def test_compressed_bodies_round_trip(data: bytes, coding: str) -> None:
    if coding in ("gzip", "x-gzip"):
        packed = gzip.compress(data)
    else:
        packer = zlib.compressobj(wbits=-15 if coding == "deflate-raw" else 15)
        packed = packer.compress(data) + packer.flush()
    assert decode_content(packed, coding.removesuffix("-raw"), 200) == data


@SLOW
@given(st.integers(MAX_BODY_BYTES + 1, 40 * MAX_BODY_BYTES), st.sampled_from(["gzip", "deflate"]))
def test_anything_that_inflates_past_the_cap_is_refused(size: int, coding: str) -> None:
    data = b"0" * size
    packed = gzip.compress(data) if coding == "gzip" else zlib.compress(data)
    with pytest.raises(InvalidResponseError, match="once decompressed"):
        decode_content(packed, coding, 200)


# -- Retry-After ------------------------------------------------------------------------------

finite_now = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@given(st.text(max_size=80), finite_now)
def test_retry_after_of_any_text_is_none_or_a_finite_non_negative_delay(
    value: str, now: float
) -> None:
    delay = parse_retry_after(value, now)
    assert delay is None or (math.isfinite(delay) and 0 <= delay <= 1e9)


@given(st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=8), finite_now)
def test_retry_after_accepts_ascii_digits_only(value: str, now: float) -> None:
    delay = parse_retry_after(value, now)
    if value.isascii():
        assert delay == float(value)
    else:
        assert delay is None  # '²'.isdigit() and '٣'.isdigit() are True


@given(st.integers(0, 10**12), st.sampled_from(["", " ", "\t"]))
def test_retry_after_delay_seconds(seconds: int, pad: str) -> None:
    assert parse_retry_after(f"{pad}{seconds}{pad}", 0.0) == min(seconds, 1e9)


@given(
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31)),
    finite_now,
    st.sampled_from(["imf", "asctime", "rfc850"]),
)
def test_retry_after_http_dates_in_all_three_forms(moment: datetime, now: float, form: str) -> None:
    moment = moment.replace(microsecond=0, tzinfo=UTC)
    if form == "imf":
        text = format_datetime(moment, usegmt=True)
    elif form == "asctime":
        text = moment.strftime("%a %b ") + f"{moment.day:2d}" + moment.strftime(" %H:%M:%S %Y")
    else:
        text = moment.strftime("%A, %d-%b-%y %H:%M:%S GMT")
    delay = parse_retry_after(text, now)
    assert delay is not None, text
    if form != "rfc850":  # a two-digit year names one of two centuries
        assert delay == pytest.approx(min(max(0.0, moment.timestamp() - now), 1e9))


# -- classify ---------------------------------------------------------------------------------


@given(
    st.integers(-(10**6), 10**6),
    st.none() | st.text(max_size=30) | st.sampled_from(sorted(ERROR_CODES)),
)
def test_classify_returns_a_lane_and_a_bounded_reason(status: int, code: str | None) -> None:
    lane, reason = classify(status, code)
    assert isinstance(lane, Lane)
    if code in ERROR_CODES:
        assert reason == code
    else:
        assert reason == f"http_{status}"  # an unknown code never becomes a label


# -- the key header ---------------------------------------------------------------------------

PROBLEM = re.compile(
    r"is empty|is longer than 4096 characters|starts with a byte order mark"
    r"|holds a line break at position [0-9]+"
    r"|holds a character an HTTP header cannot carry at position [0-9]+"
)


@given(
    st.text(max_size=60)
    | st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60
    )
)
def test_a_key_problem_names_a_position_never_the_key(key: str) -> None:
    problem = header_value_problem(key)
    visible = bool(key) and len(key) <= 4096 and all(0x21 <= ord(c) <= 0x7E for c in key)
    assert (problem is None) == visible
    if problem is not None:
        assert PROBLEM.fullmatch(problem), problem


# -- foreign exceptions -----------------------------------------------------------------------

errnos = st.sampled_from(sorted(errno.errorcode)) | st.integers(-10, 200)
texts = st.text(max_size=30) | st.just(MARKER)


def _os_error(number: int, text: str) -> OSError:
    return OSError(number, text)


leaf_errors = st.one_of(
    st.builds(_os_error, errnos, texts),
    st.builds(TimeoutError, texts),
    st.builds(socket.gaierror, st.sampled_from([socket.EAI_NONAME, socket.EAI_AGAIN, -99]), texts),
    st.builds(lambda t: ssl.SSLError(1, t), texts),
    st.builds(http.client.BadStatusLine, texts),
    st.builds(http.client.LineTooLong, texts),
    st.builds(lambda t: http.client.IncompleteRead(t.encode()), texts),
    st.builds(http.client.RemoteDisconnected, texts),
    st.builds(urllib3.exceptions.InvalidHeader, texts),
    st.builds(ValueError, texts),
)  # fmt: skip


def _wrap(inner: BaseException, how: int) -> BaseException:
    """Wrap the way requests and urllib3 do: args, ``from``, or a bare ``__context__``."""
    outer: BaseException
    if how == 0:
        outer = urllib3.exceptions.ProtocolError("Connection aborted.", inner)
    elif how == 1:
        outer = requests.exceptions.ConnectionError(inner)
    elif how == 2:
        outer = urllib3.exceptions.NewConnectionError(None, f"Failed: {inner}")  # type: ignore[arg-type]
        outer.__cause__ = inner
    else:
        outer = requests.exceptions.RequestException(MARKER)
        outer.__context__ = inner
    return outer


chains = st.recursive(
    leaf_errors, lambda inner: st.builds(_wrap, inner, st.integers(0, 3)), max_leaves=4
)


@given(chains, st.floats(min_value=0.001, max_value=1e7))
def test_translate_turns_any_chain_into_one_plain_transient_error(
    exc: BaseException, timeout: float
) -> None:
    error = translate(exc, "api.test:443", timeout)
    assert type(error) is TransientError
    assert error.reason in {"timeout", "connection_error", "internal_error"}
    assert MARKER not in str(error)
    assert "Errno" not in str(error)
    assert len(str(error)) < 200


def test_translate_survives_a_cycle_of_causes() -> None:
    first, second = OSError(errno.ECONNRESET, "x"), ValueError("y")
    first.__context__, second.__context__ = second, first
    assert "connection reset" in str(translate(first, "h", 1))


@given(st.text(min_size=1, max_size=30))
def test_a_name_that_cannot_be_a_netloc_never_crashes_the_words(host: str) -> None:
    assume("\n" not in host)
    error = translate(ConnectionRefusedError(errno.ECONNREFUSED, "refused"), host, 1)
    assert str(error).endswith("connection refused")
