"""Validation of a 200 answer: what is accepted, and each way it can be refused."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.errors import InvalidResponseError
from sidecar.session import Session, jwt_claims, parse

TOKEN = "aaa.bbb.ccc"
GOOD = {
    "message": "ok",
    "accessToken": TOKEN,
    "refreshToken": "rrr.sss",
    "expiresIn": 3600,
    "expiresAt": 1_700_003_600_000,
}


def body(**changes: object) -> bytes:
    document = {**GOOD, **changes}
    return json.dumps({k: v for k, v in document.items() if v is not _DROP}).encode()


_DROP = object()


def test_a_published_answer_parses() -> None:
    session = parse(body())
    assert session == Session(TOKEN, 3600.0, "rrr.sss", 1_700_003_600.0)


def test_expires_at_in_seconds_or_milliseconds() -> None:
    assert parse(body(expiresAt=1_700_003_600)).expires_at == 1_700_003_600
    assert parse(body(expiresAt=1_700_003_600_500)).expires_at == 1_700_003_600.5


def test_only_access_token_and_expires_in_are_required() -> None:
    """The other published variant sends idToken and checksum instead of expiresAt."""
    minimal = json.dumps({"accessToken": TOKEN, "expiresIn": 0.5, "idToken": "x", "checksum": 1})
    assert parse(minimal) == Session(TOKEN, 0.5)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"<html>oops</html>", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (body(accessToken=_DROP), "no accessToken"),
        (body(accessToken="no-dots"), "accessToken does not match"),
        (body(accessToken="a.b\n"), "accessToken does not match"),
        (body(accessToken="a.b c"), "accessToken does not match"),
        (body(accessToken=""), "accessToken does not match"),
        (body(accessToken=12), "accessToken does not match"),
        (body(refreshToken="bad token"), "refreshToken does not match"),
        (body(expiresIn=_DROP), "no expiresIn"),
        (body(expiresIn="3600"), "expiresIn is not"),
        (body(expiresIn=True), "expiresIn is not"),
        (body(expiresIn=0), "expiresIn is not"),
        (body(expiresIn=-5), "expiresIn is not"),
        (body(expiresIn=None), "expiresIn is not"),
        (b'{"accessToken": "a.b", "expiresIn": NaN}', "expiresIn is not"),
        (b'{"accessToken": "a.b", "expiresIn": Infinity}', "expiresIn is not"),
        (b'{"accessToken": "a.b", "expiresIn": 1e400}', "expiresIn is not"),
    ],
)
def test_invalid_answers_name_the_problem_without_the_value(raw: bytes, problem: str) -> None:
    with pytest.raises(InvalidResponseError) as caught:
        parse(raw)
    assert problem in str(caught.value)
    assert caught.value.reason == "invalid_response"
    assert "bad token" not in str(caught.value)


def test_refresh_token_required_only_when_asked() -> None:
    assert parse(body(refreshToken=_DROP)).refresh_token is None
    with pytest.raises(InvalidResponseError, match="no refreshToken"):
        parse(body(refreshToken=_DROP), require_refresh_token=True)


def test_tokens_never_appear_in_the_repr() -> None:
    assert TOKEN not in repr(parse(body()))
    assert "rrr.sss" not in repr(parse(body()))


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers())
def test_expires_in_is_accepted_only_when_finite_and_positive(value: float) -> None:
    raw = json.dumps({"accessToken": TOKEN, "expiresIn": value})
    if (isinstance(value, float) and math.isfinite(value) and value > 0) or (
        isinstance(value, int) and value > 0
    ):
        assert parse(raw).expires_in == float(value)
    else:
        with pytest.raises(InvalidResponseError):
            parse(raw)


def test_jwt_claims_are_read_without_verification() -> None:
    from sidecar.fake_api import FakeApi

    with FakeApi(lifetime=60) as api:
        import requests

        with requests.Session() as http:
            answer = http.get(api.url + "/v2/auth/session", headers={"x-api-key": "k"}).json()
    claims = jwt_claims(answer["accessToken"])
    assert claims is not None
    assert claims["exp"] - claims["iat"] == pytest.approx(60, abs=1)
    assert jwt_claims("aaa.bbb") is None
    assert jwt_claims("aaa.!!!.ccc") is None
