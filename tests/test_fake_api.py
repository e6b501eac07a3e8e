"""The fake auth API answers as the published OpenAPI document says, and injects failures."""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
import requests

from sidecar.fake_api import (
    ERROR_CODES,
    SESSION_PATH,
    Answer,
    FakeApi,
    add_arguments,
    default_status,
)
from tests import oracle

KEY = "test-api-key-0123"
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9-_]+(?:\.[A-Za-z0-9-_]+)+$")
FIXED_NOW = 1_700_000_000.5
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with FakeApi(seed=1) as fake:
        yield fake


@pytest.fixture
def http_session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def fetch(
    session: requests.Session, api: FakeApi, key: str | None = KEY, **kwargs: Any
) -> requests.Response:
    headers = {} if key is None else {"x-api-key": key}
    kwargs.setdefault("timeout", 5)
    return session.get(api.url + SESSION_PATH, headers=headers, **kwargs)


def claims(token: str, segment: int = 1) -> dict[str, Any]:
    """One JSON segment of a JWT: 0 the header, 1 the claims."""
    part = token.split(".")[segment]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def assert_session_schema(body: dict[str, Any]) -> None:
    """The 200 schema of the OpenAPI document: every field required, tokens match the pattern."""
    assert set(body) >= {"message", "accessToken", "refreshToken", "expiresIn", "expiresAt"}
    assert isinstance(body["message"], str)
    for name in ("accessToken", "refreshToken"):
        assert isinstance(body[name], str)
        assert TOKEN_PATTERN.match(body[name]), body[name]
    for name in ("expiresIn", "expiresAt"):
        assert isinstance(body[name], int | float)
        assert not isinstance(body[name], bool)


def assert_error_schema(body: dict[str, Any], code: str) -> None:
    assert body["success"] is False
    assert body["errorCode"] == code
    assert isinstance(body["message"], str)


def wait_for(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# -- the 200 session ---------------------------------------------------------------------------


def test_session_matches_the_openapi_schema(api: FakeApi, http_session: requests.Session) -> None:
    response = fetch(http_session, api)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert int(response.headers["Content-Length"]) == len(response.content)
    body = response.json()
    assert_session_schema(body)
    assert body["expiresIn"] == 3600
    assert abs(body["expiresAt"] / 1000 - (time.time() + 3600)) < 5  # milliseconds by default


def test_expires_at_is_clock_plus_lifetime_in_ms_by_default(http_session: requests.Session) -> None:
    with FakeApi(clock=lambda: FIXED_NOW) as api:
        body = fetch(http_session, api).json()
    assert body["expiresAt"] == 1_700_003_600_500
    assert isinstance(body["expiresAt"], int)


def test_expires_at_in_seconds_when_asked(http_session: requests.Session) -> None:
    with FakeApi(clock=lambda: FIXED_NOW, expires_at_unit="s", lifetime=90) as api:
        body = fetch(http_session, api).json()
    assert body["expiresAt"] == 1_700_000_090.5
    assert body["expiresIn"] == 90


def test_tokens_are_jwts_whose_exp_minus_iat_is_the_lifetime(
    http_session: requests.Session,
) -> None:
    with FakeApi(clock=lambda: FIXED_NOW, lifetime=2.5) as api:
        body = fetch(http_session, api).json()
    assert body["expiresIn"] == 2.5
    for name, typ in (("accessToken", "JWT"), ("refreshToken", "refresh")):
        assert claims(body[name], 0) == {"alg": "HS256", "typ": typ}
        access = claims(body[name])
        assert access["iat"] == 1_700_000_000
        assert access["exp"] - access["iat"] == pytest.approx(2.5)
        assert access["sub"] == "fake"


def test_every_token_is_unique_and_recorded_in_order(
    api: FakeApi, http_session: requests.Session
) -> None:
    bodies = [fetch(http_session, api).json() for _ in range(5)]
    access = [body["accessToken"] for body in bodies]
    refresh = [body["refreshToken"] for body in bodies]
    assert len(set(access + refresh)) == 10
    assert api.issued == access
    assert api.issued_refresh == refresh


def test_requests_are_recorded_with_key_and_path_without_query(
    api: FakeApi, http_session: requests.Session
) -> None:
    before = time.monotonic()
    fetch(http_session, api, params={"sessionId": "abc"})
    [recorded] = api.requests
    assert (recorded.method, recorded.path, recorded.api_key) == ("GET", SESSION_PATH, KEY)
    assert before <= recorded.received_at <= time.monotonic()


def test_head_sends_the_headers_of_get_without_a_body(
    api: FakeApi, http_session: requests.Session
) -> None:
    response = http_session.head(api.url + SESSION_PATH, headers={"x-api-key": KEY}, timeout=5)
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) > 0
    assert response.content == b""
    assert api.issued == []  # a HEAD delivers no token


# -- the key -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, ""])
def test_missing_or_empty_key_is_401_unauthorised(
    api: FakeApi, http_session: requests.Session, key: str | None
) -> None:
    response = fetch(http_session, api, key=key)
    assert response.status_code == 401
    assert_error_schema(response.json(), "UNAUTHORISED")
    assert api.issued == []


def test_blank_key_is_401_unauthorised(api: FakeApi) -> None:
    # requests refuses a header value with leading whitespace, http.client sends it.
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    try:
        conn.request("GET", SESSION_PATH, headers={"x-api-key": " \t "})
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 401
    assert_error_schema(body, "UNAUTHORISED")


def test_a_401_for_a_missing_key_does_not_consume_the_script(
    api: FakeApi, http_session: requests.Session
) -> None:
    api.script(Answer(error_code="SERVICE_UNAVAILABLE"))
    assert fetch(http_session, api, key=None).status_code == 401
    assert fetch(http_session, api).status_code == 503


# -- scripted answers --------------------------------------------------------------------------


def test_default_status_follows_the_error_code() -> None:
    """Credential codes 401, rate limits 429, outages 503/500, routing 404/405, the rest 400."""
    assert len(ERROR_CODES) == len(set(ERROR_CODES)) == 34
    assert set(ERROR_CODES) == oracle.ERROR_CODES
    expected = dict.fromkeys(ERROR_CODES, 400)
    expected.update(dict.fromkeys(oracle.CREDENTIAL, 401))
    expected.update(LIMIT_EXCEEDED=429, QUOTA_EXCEEDED=429, SERVICE_UNAVAILABLE=503)
    expected.update(INTERNAL_SERVER_ERROR=500, CONFIGURATION_ERROR=500)
    expected.update(RESPONSE_VALIDATION_FAILED=500, NOT_FOUND=404, ENDPOINT_NOT_FOUND=404)
    expected.update(METHOD_NOT_ALLOWED=405)
    assert {code: default_status(code) for code in ERROR_CODES} == expected
    assert default_status(None) == 200
    assert default_status("SOMETHING_NEW") == 400


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("INVALID_CREDENTIALS", 401),
        ("LIMIT_EXCEEDED", 429),
        ("SERVICE_UNAVAILABLE", 503),
        ("INTERNAL_SERVER_ERROR", 500),
        ("INVALID_INPUT", 400),
        ("NOT_FOUND", 404),
        ("SOMETHING_NEW", 400),
    ],
)
def test_scripted_error_code_is_sent_with_its_default_status(
    api: FakeApi, http_session: requests.Session, code: str, status: int
) -> None:
    api.script(Answer(error_code=code))
    response = fetch(http_session, api)
    assert response.status_code == status
    assert_error_schema(response.json(), code)
    assert "Retry-After" not in response.headers


@pytest.mark.parametrize("status", [400, 401, 200])
def test_limit_exceeded_can_come_with_any_status(
    api: FakeApi, http_session: requests.Session, status: int
) -> None:
    api.script(Answer(status=status, error_code="LIMIT_EXCEEDED"))
    response = fetch(http_session, api)
    assert response.status_code == status
    assert_error_schema(response.json(), "LIMIT_EXCEEDED")
    assert api.issued == []


def test_status_without_code_sends_an_error_body_without_error_code(
    api: FakeApi, http_session: requests.Session
) -> None:
    api.script(Answer(status=503))
    response = fetch(http_session, api)
    assert response.status_code == 503
    assert response.json() == {"success": False, "message": "Service Unavailable"}


@pytest.mark.parametrize("value", ["5", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_retry_after_is_sent_verbatim(
    api: FakeApi, http_session: requests.Session, value: str
) -> None:
    api.script(Answer(error_code="LIMIT_EXCEEDED", retry_after=value))
    response = fetch(http_session, api)
    assert response.headers["Retry-After"] == value


def test_raw_body_and_content_type_replace_the_generated_answer(
    api: FakeApi, http_session: requests.Session
) -> None:
    page = b"<html><body>502 Bad Gateway</body></html>"
    api.script(
        Answer(status=502, body=page, content_type="text/html"),
        Answer(body=b'{"accessToken": '),
    )
    html = fetch(http_session, api)
    assert (html.status_code, html.content, html.headers["Content-Type"]) == (
        502,
        page,
        "text/html",
    )
    truncated = fetch(http_session, api)
    assert truncated.status_code == 200
    assert truncated.content == b'{"accessToken": '
    assert api.issued == []


def test_delay_beyond_the_read_timeout_raises_read_timeout(
    api: FakeApi, http_session: requests.Session
) -> None:
    api.script(Answer(delay=2.0))
    with pytest.raises(requests.ReadTimeout):
        fetch(http_session, api, timeout=(2, 0.3))
    assert fetch(http_session, api).status_code == 200  # the script moved on


def test_trickle_sends_the_body_one_byte_at_a_time(
    api: FakeApi, http_session: requests.Session
) -> None:
    api.script(Answer(body=b"0123456789", trickle=0.03))
    started = time.monotonic()
    response = fetch(http_session, api, timeout=(2, 1.0))
    assert response.content == b"0123456789"
    assert response.headers["Content-Length"] == "10"
    assert time.monotonic() - started >= 9 * 0.03


def test_reset_without_body_is_a_connection_error(
    api: FakeApi, http_session: requests.Session
) -> None:
    api.script(Answer(reset=True, body=b""))
    with pytest.raises(requests.ConnectionError):
        fetch(http_session, api)
    assert fetch(http_session, api).status_code == 200


def test_reset_after_half_the_body_breaks_the_response(
    api: FakeApi, http_session: requests.Session
) -> None:
    """requests reports an RST during the body as ChunkedEncodingError, not ConnectionError."""
    api.script(Answer(reset=True))
    with pytest.raises((requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        fetch(http_session, api)
    assert api.issued == []


def test_redirect_carries_the_location(api: FakeApi, http_session: requests.Session) -> None:
    api.script(Answer(status=302, location="http://127.0.0.1:9/steal-the-key"))
    response = fetch(http_session, api, allow_redirects=False)
    assert response.status_code == 302
    assert response.headers["Location"] == "http://127.0.0.1:9/steal-the-key"


def test_lifetime_override_applies_to_one_answer(
    api: FakeApi, http_session: requests.Session
) -> None:
    api.script(Answer(lifetime=0.25))
    short = fetch(http_session, api).json()
    assert short["expiresIn"] == 0.25
    assert claims(short["accessToken"])["exp"] - claims(short["accessToken"])["iat"] == (
        pytest.approx(0.25)
    )
    assert fetch(http_session, api).json()["expiresIn"] == 3600


@pytest.mark.parametrize("lifetime", ["Infinity", "NaN", "-5", "0"])
def test_invalid_lifetimes_can_be_scripted(
    api: FakeApi, http_session: requests.Session, lifetime: str
) -> None:
    """A scripted non-finite or non-positive lifetime reaches the client as sent."""
    posted = http_session.post(
        api.url + "/_fake/script", data=f'[{{"lifetime": {lifetime}}}]', timeout=5
    )
    assert posted.status_code == 204
    response = fetch(http_session, api)
    assert response.status_code == 200
    assert f'"expiresIn":{lifetime}' in response.text


def test_extra_fields_override_and_omit_fields_remove(
    api: FakeApi, http_session: requests.Session
) -> None:
    api.script(
        Answer(
            extra_fields={"expiresIn": "60", "idToken": "a.b", "checksum": "x"},
            omit_fields=("expiresAt", "refreshToken"),
        )
    )
    body = fetch(http_session, api).json()
    assert body["expiresIn"] == "60"
    assert (body["idToken"], body["checksum"]) == ("a.b", "x")
    assert "expiresAt" not in body
    assert "refreshToken" not in body
    assert TOKEN_PATTERN.match(body["accessToken"])


def test_script_is_consumed_in_order_then_the_default_resumes(
    api: FakeApi, http_session: requests.Session
) -> None:
    api.script(Answer(error_code="SERVICE_UNAVAILABLE"), Answer(error_code="QUOTA_EXCEEDED"))
    assert [fetch(http_session, api).status_code for _ in range(3)] == [503, 429, 200]
    api.script(Answer(error_code="SERVICE_UNAVAILABLE"))
    api.clear_script()
    assert fetch(http_session, api).status_code == 200


# -- random failures ---------------------------------------------------------------------------


def test_fail_rate_one_always_fails_with_fail_code_and_retry_after(
    http_session: requests.Session,
) -> None:
    with FakeApi(fail_rate=1.0, fail_code="LIMIT_EXCEEDED", retry_after="7") as api:
        responses = [fetch(http_session, api) for _ in range(3)]
    assert [r.status_code for r in responses] == [429, 429, 429]
    assert {r.headers["Retry-After"] for r in responses} == {"7"}
    assert {r.json()["errorCode"] for r in responses} == {"LIMIT_EXCEEDED"}


def test_fail_rate_with_a_seed_is_reproducible(http_session: requests.Session) -> None:
    def statuses() -> list[int]:
        with FakeApi(fail_rate=0.5, seed=7) as api:
            return [fetch(http_session, api).status_code for _ in range(16)]

    first = statuses()
    assert first == statuses()
    assert set(first) == {200, 503}


def test_constructor_rejects_values_outside_the_contract() -> None:
    with pytest.raises(ValueError, match="fail_rate"):
        FakeApi(fail_rate=1.5)
    with pytest.raises(ValueError, match="fail_code"):
        FakeApi(fail_code="NOPE")
    with pytest.raises(ValueError, match="expires_at_unit"):
        FakeApi(expires_at_unit="us")


# -- routing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2/auth/other", "/v2/auth/session/", "/"])
def test_unknown_path_is_404_endpoint_not_found(
    api: FakeApi, http_session: requests.Session, path: str
) -> None:
    response = http_session.get(api.url + path, headers={"x-api-key": KEY}, timeout=5)
    assert response.status_code == 404
    assert_error_schema(response.json(), "ENDPOINT_NOT_FOUND")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_other_method_on_the_session_path_is_405(
    api: FakeApi, http_session: requests.Session, method: str
) -> None:
    response = http_session.request(
        method, api.url + SESSION_PATH, headers={"x-api-key": KEY}, timeout=5
    )
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"
    assert_error_schema(response.json(), "METHOD_NOT_ALLOWED")


def test_request_bodies_are_discarded_so_keep_alive_survives(api: FakeApi) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    try:
        conn.request("POST", SESSION_PATH, body=b"x" * 10_000, headers={"x-api-key": KEY})
        first = conn.getresponse()
        first.read()
        sock = conn.sock
        conn.request("GET", SESSION_PATH, headers={"x-api-key": KEY})
        second = conn.getresponse()
        body = json.loads(second.read())
        assert conn.sock is sock  # the same connection carried both requests
    finally:
        conn.close()
    assert (first.status, second.status) == (405, 200)
    assert_session_schema(body)


def test_log_lines_name_method_path_status_and_code_never_key_or_token(
    http_session: requests.Session,
) -> None:
    lines: list[str] = []
    with FakeApi(log=lines.append) as api:
        api.script(Answer(error_code="SERVICE_UNAVAILABLE"))
        fetch(http_session, api)
        token = fetch(http_session, api).json()["accessToken"]
        fetch(http_session, api, key=None, params={"sessionId": "query-secret"})
        wait_for(lambda: len(lines) == 3)
    assert lines == [
        "GET /v2/auth/session 503 SERVICE_UNAVAILABLE",
        "GET /v2/auth/session 200 ok",
        "GET /v2/auth/session 401 UNAUTHORISED",
    ]
    assert not any(KEY in line or token in line or "query-secret" in line for line in lines)


# -- control endpoints -------------------------------------------------------------------------


def test_control_script_then_session(api: FakeApi, http_session: requests.Session) -> None:
    script = [
        {"errorCode": "QUOTA_EXCEEDED", "retryAfter": 3},
        {"status": 200, "body": "not json", "contentType": "text/plain"},
        {"lifetime": 1.5, "extraFields": {"idToken": "x.y"}, "omitFields": ["expiresAt"]},
    ]
    posted = http_session.post(api.url + "/_fake/script", json=script, timeout=5)
    assert posted.status_code == 204
    quota = fetch(http_session, api)
    assert (quota.status_code, quota.headers["Retry-After"]) == (429, "3")
    assert_error_schema(quota.json(), "QUOTA_EXCEEDED")
    raw = fetch(http_session, api)
    assert (raw.content, raw.headers["Content-Type"]) == (b"not json", "text/plain")
    custom = fetch(http_session, api).json()
    assert (custom["expiresIn"], custom["idToken"]) == (1.5, "x.y")
    assert "expiresAt" not in custom


def test_control_reset_clears_the_script(api: FakeApi, http_session: requests.Session) -> None:
    api.script(Answer(error_code="SERVICE_UNAVAILABLE"))
    assert http_session.post(api.url + "/_fake/reset", timeout=5).status_code == 204
    assert fetch(http_session, api).status_code == 200


def test_control_stats_counts_requests_and_gives_the_last_token(
    api: FakeApi, http_session: requests.Session
) -> None:
    empty = http_session.get(api.url + "/_fake/stats", timeout=5).json()
    assert empty == {"requests": 1, "sessionRequests": 0, "issued": 0, "lastToken": None}
    fetch(http_session, api)
    token = fetch(http_session, api).json()["accessToken"]
    fetch(http_session, api, key=None)
    stats = http_session.get(api.url + "/_fake/stats", timeout=5).json()
    assert stats == {"requests": 5, "sessionRequests": 3, "issued": 2, "lastToken": token}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'[{"errorCode": "LIMIT_EXCEEDED", "bogus": 1}]', "'bogus'"),
        (b'[{"delay": "slow"}]', "'delay'"),
        (b"[1]", "not a JSON object"),
        (b'"LIMIT_EXCEEDED"', "JSON list"),
    ],
)
def test_control_script_rejects_bad_json_with_400(
    api: FakeApi, http_session: requests.Session, payload: bytes, message: str
) -> None:
    response = http_session.post(api.url + "/_fake/script", data=payload, timeout=5)
    assert response.status_code == 400
    assert message in response.json()["message"]
    assert fetch(http_session, api).status_code == 200  # nothing was scripted


def test_control_unknown_endpoint_or_method(api: FakeApi, http_session: requests.Session) -> None:
    assert http_session.get(api.url + "/_fake/nope", timeout=5).status_code == 404
    assert http_session.get(api.url + "/_fake/script", timeout=5).status_code == 405
    assert http_session.post(api.url + "/_fake/stats", timeout=5).status_code == 405


def test_answer_from_json_maps_every_key() -> None:
    answer = Answer.from_json(
        {
            "status": 400,
            "errorCode": "LIMIT_EXCEEDED",
            "retryAfter": "Wed, 21 Oct 2015 07:28:00 GMT",
            "body": "<html>",
            "contentType": "text/html",
            "delay": 1,
            "trickle": 0.5,
            "reset": True,
            "location": "http://x/",
            "lifetime": 0.5,
            "extraFields": {"a": 1},
            "omitFields": ["expiresAt"],
        }
    )
    assert answer == Answer(
        status=400,
        error_code="LIMIT_EXCEEDED",
        retry_after="Wed, 21 Oct 2015 07:28:00 GMT",
        body=b"<html>",
        content_type="text/html",
        delay=1.0,
        trickle=0.5,
        reset=True,
        location="http://x/",
        lifetime=0.5,
        extra_fields={"a": 1},
        omit_fields=("expiresAt",),
    )
    assert Answer.from_json({}) == Answer()


def test_answer_from_json_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match="'error_code'"):
        Answer.from_json({"error_code": "LIMIT_EXCEEDED"})
    with pytest.raises(ValueError, match="'reset'"):
        Answer.from_json({"reset": "yes"})
    with pytest.raises(ValueError, match="status"):
        Answer.from_json({"status": 100})
    with pytest.raises(ValueError, match="delay"):
        Answer(delay=-1)


# -- lifecycle ---------------------------------------------------------------------------------


def test_stop_returns_quickly_while_a_delayed_answer_is_pending() -> None:
    api = FakeApi().start()
    api.script(Answer(delay=30))
    outcome: list[BaseException | int] = []

    def call() -> None:
        try:
            with requests.get(
                api.url + SESSION_PATH, headers={"x-api-key": KEY}, timeout=10
            ) as response:
                outcome.append(response.status_code)
        except requests.RequestException as exc:
            outcome.append(exc)

    client = threading.Thread(target=call)
    client.start()
    wait_for(lambda: len(api.requests) == 1)
    started = time.monotonic()
    api.stop()
    assert time.monotonic() - started < 2.0
    client.join(5)
    assert not client.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], requests.ConnectionError)
    api.stop()  # idempotent


def test_stop_closes_idle_keep_alive_connections(api: FakeApi) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    try:
        conn.request("GET", SESSION_PATH, headers={"x-api-key": KEY})
        conn.getresponse().read()
        assert conn.sock is not None
        api.stop()
        assert conn.sock.recv(1) == b""  # the server side hung up
    finally:
        conn.close()


def test_port_and_url_need_a_started_server() -> None:
    api = FakeApi()
    with pytest.raises(RuntimeError):
        _ = api.port
    api.stop()  # stopping a server that never started is harmless


def test_serves_https_with_an_ssl_context(tmp_path: Path, http_session: requests.Session) -> None:
    import trustme

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with FakeApi(ssl_context=context) as api:
        assert api.url == f"https://127.0.0.1:{api.port}"
        with pytest.raises(requests.exceptions.SSLError):
            fetch(http_session, api)  # not trusted by the system store
        response = fetch(http_session, api, verify=str(ca_file))
    assert response.status_code == 200
    assert_session_schema(response.json())


# -- command line ------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(prog="fake-api")
    add_arguments(result)
    return result


def test_cli_defaults() -> None:
    args = parser().parse_args([])
    assert (args.host, args.port, args.lifetime, args.fail_rate) == ("127.0.0.1", 8080, 3600, 0)
    assert (args.fail_code, args.expires_at_unit, args.delay) == ("SERVICE_UNAVAILABLE", "ms", 0)
    assert (args.retry_after, args.seed) == (None, None)


@pytest.mark.parametrize(
    "argv",
    [
        ["--fail-code", "NOPE"],
        ["--fail-rate", "1.5"],
        ["--lifetime", "0"],
        ["--lifetime", "nan"],
        ["--port", "70000"],
        ["--expires-at-unit", "us"],
        ["--delay", "-1"],
    ],
)
def test_cli_rejects_bad_values_as_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        parser().parse_args(argv)
    assert excinfo.value.code == 2
    assert argv[0] in capsys.readouterr().err


CLI = (
    "import sys, argparse; from sidecar import fake_api as f; p = argparse.ArgumentParser(); "
    "f.add_arguments(p); sys.exit(f.run(p.parse_args(sys.argv[1:])))"
)


class LineReader:
    """Lines of a subprocess pipe, with a deadline, so a silent child fails the test fast."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._fd = stream.fileno()
        self._buffer = b""

    def next(self, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no line within {timeout}s, got {self._buffer!r}"
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if ready:
                chunk = os.read(self._fd, 4096)
                assert chunk, f"stream closed, got {self._buffer!r}"
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()


@contextmanager
def fake_api_process(*argv: str) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", CLI, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
        env=env,
        cwd=REPO_ROOT,
    ) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_logs_without_secrets_and_exits_0_on_signal(
    http_session: requests.Session, signum: signal.Signals
) -> None:
    with fake_api_process("--port", "0", "--lifetime", "90", "--expires-at-unit", "s") as proc:
        assert proc.stderr is not None
        lines = LineReader(proc.stderr)
        listening = lines.next()
        match = re.fullmatch(
            r"fake-api listening on (http://127\.0\.0\.1:(\d+)) \(lifetime 90s\)", listening
        )
        assert match, listening
        assert int(match[2]) != 0
        response = http_session.get(match[1] + SESSION_PATH, headers={"x-api-key": KEY}, timeout=5)
        token = response.json()["accessToken"]
        assert response.json()["expiresIn"] == 90
        assert lines.next() == "GET /v2/auth/session 200 ok"
        http_session.close()  # an open keep-alive connection must not delay the exit
        proc.send_signal(signum)
        stdout, rest = proc.communicate(timeout=5)
    assert proc.returncode == 0
    assert stdout == b""
    assert b"Traceback" not in rest
    assert KEY not in rest.decode()
    assert token not in rest.decode()


def test_cli_port_in_use_exits_1_naming_the_address() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with fake_api_process("--port", str(port)) as proc:
            _, stderr = proc.communicate(timeout=5)
    assert proc.returncode == 1
    assert f"127.0.0.1:{port}" in stderr.decode()
