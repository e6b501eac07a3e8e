"""The API client against a real local server: every class of answer, and its guards."""

from __future__ import annotations

from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest

from sidecar.api import MAX_BODY_BYTES, ApiClient
from sidecar.config import ApiConfig, Secret
from sidecar.errors import (
    CredentialError,
    EndpointError,
    InvalidResponseError,
    RefreshError,
    TransientError,
)
from sidecar.fake_api import Answer, FakeApi
from tests import oracle

KEY = Secret("api-key-under-test")


@pytest.fixture
def client(fake_api: FakeApi) -> Iterator[ApiClient]:
    api_client = ApiClient(ApiConfig(base_url=fake_api.url + "/", timeout_seconds=1))
    yield api_client
    api_client.close()


def failure(client: ApiClient) -> RefreshError:
    with pytest.raises(RefreshError) as caught:
        client.fetch(KEY)
    return caught.value


def test_a_session_is_fetched_with_the_key_header(fake_api: FakeApi, client: ApiClient) -> None:
    fetched = client.fetch(KEY)
    assert fetched.session.access_token == fake_api.issued[-1]
    assert fetched.session.expires_in == 3600
    (request,) = fake_api.requests
    assert (request.method, request.path, request.api_key) == ("GET", "/v2/auth/session", KEY.value)


@pytest.mark.parametrize("status", [400, 401, 429, 503, 200])
@pytest.mark.parametrize("code", sorted(oracle.ERROR_CODES))
def test_every_error_code_is_classified_by_code_whatever_the_status(
    fake_api: FakeApi, client: ApiClient, code: str, status: int
) -> None:
    fake_api.script(Answer(status=status, error_code=code))
    error = failure(client)
    expected = (
        TransientError
        if code in oracle.RETRYABLE
        else CredentialError
        if code in oracle.CREDENTIAL
        else EndpointError
    )
    assert type(error) is expected
    assert (error.lane, error.error_code) == (oracle.LANES[code], code)
    assert error.reason == code
    assert error.status == status
    assert KEY.value not in str(error)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (500, TransientError),
        (502, TransientError),
        (503, TransientError),
        (429, TransientError),
        (401, CredentialError),
        (403, CredentialError),
        (400, EndpointError),
        (404, EndpointError),
        (409, EndpointError),
    ],
)
def test_without_a_code_the_status_decides(
    fake_api: FakeApi, client: ApiClient, status: int, kind: type[RefreshError]
) -> None:
    fake_api.script(Answer(status=status, body=b"<html>error</html>", content_type="text/html"))
    error = failure(client)
    assert type(error) is kind
    assert error.reason == f"http_{status}"


def test_unknown_error_code_uses_the_status_as_reason(fake_api: FakeApi, client: ApiClient) -> None:
    fake_api.script(Answer(status=503, error_code="BRAND_NEW_CODE"))
    error = failure(client)
    assert isinstance(error, TransientError)
    assert error.reason == "http_503"


def test_retry_after_seconds_and_http_date(fake_api: FakeApi, client: ApiClient) -> None:
    fake_api.script(Answer(error_code="LIMIT_EXCEEDED", retry_after="42"))
    error = failure(client)
    assert isinstance(error, TransientError)
    assert error.retry_after == 42
    import time

    fake_api.script(
        Answer(
            error_code="SERVICE_UNAVAILABLE", retry_after=formatdate(time.time() + 90, usegmt=True)
        )
    )
    error = failure(client)
    assert isinstance(error, TransientError)
    assert error.retry_after is not None
    assert 85 <= error.retry_after <= 91


@pytest.mark.parametrize(
    "answer",
    [
        Answer(body=b"not json", content_type="application/json"),
        Answer(body=b"<html><body>Bad gateway</body></html>", content_type="text/html"),
        Answer(omit_fields=("accessToken",)),
        Answer(extra_fields={"accessToken": "has spaces in it"}),
        Answer(extra_fields={"expiresIn": "3600"}),
        Answer(extra_fields={"expiresIn": 0}),
        Answer(extra_fields={"expiresIn": -1}),
        Answer(body=b'{"accessToken": "a.b", "expiresIn": NaN}'),
        Answer(body=b'{"success": false, "errorCode": "NEW_THING"}'),
    ],
)
def test_invalid_200_answers_are_retryable_invalid_response(
    fake_api: FakeApi, client: ApiClient, answer: Answer
) -> None:
    fake_api.script(answer)
    error = failure(client)
    assert isinstance(error, InvalidResponseError)
    assert isinstance(error, TransientError)
    assert error.reason == "invalid_response"


def test_unknown_fields_are_ignored(fake_api: FakeApi, client: ApiClient) -> None:
    fake_api.script(Answer(extra_fields={"idToken": "x", "checksum": "y", "nested": {"a": 1}}))
    assert client.fetch(KEY).session.access_token == fake_api.issued[-1]


def test_an_oversized_body_is_refused(fake_api: FakeApi, client: ApiClient) -> None:
    fake_api.script(Answer(body=b"x" * (10 * 1024 * 1024)))
    error = failure(client)
    assert isinstance(error, InvalidResponseError)
    assert str(MAX_BODY_BYTES) in str(error)


def test_redirects_are_never_followed_and_the_key_stays_home(
    fake_api: FakeApi, client: ApiClient
) -> None:
    with FakeApi() as elsewhere:
        fake_api.script(Answer(status=302, location=elsewhere.url + "/v2/auth/session"))
        error = failure(client)
        assert isinstance(error, EndpointError)
        assert error.reason == "http_302"
        assert "never followed" in str(error)
        assert elsewhere.requests == []


def test_connection_refused_is_a_connection_error() -> None:
    with FakeApi() as api:
        url = api.url
    refused = ApiClient(ApiConfig(base_url=url, timeout_seconds=1))
    try:
        error = failure(refused)
    finally:
        refused.close()
    assert isinstance(error, TransientError)
    assert error.reason == "connection_error"


def test_a_slow_answer_is_a_timeout(fake_api: FakeApi, client: ApiClient) -> None:
    fake_api.script(Answer(delay=3))
    error = failure(client)
    assert isinstance(error, TransientError)
    assert error.reason == "timeout"


def test_a_body_trickling_past_the_deadline_is_a_timeout(
    fake_api: FakeApi, client: ApiClient
) -> None:
    """Each byte arrives within the read timeout; the whole answer does not."""
    fake_api.script(Answer(trickle=0.3))
    error = failure(client)
    assert isinstance(error, TransientError)
    assert error.reason == "timeout"


def test_a_reset_mid_body_is_a_connection_error(fake_api: FakeApi, client: ApiClient) -> None:
    fake_api.script(Answer(reset=True))
    error = failure(client)
    assert type(error) is TransientError
    assert error.reason == "connection_error"
    fake_api.script(Answer(reset=True, body=b""))
    assert failure(client).reason == "connection_error"


def test_tls_with_a_ca_bundle(tls_api: tuple[FakeApi, Path]) -> None:
    api, bundle = tls_api
    assert api.url.startswith("https://")
    tls_client = ApiClient(ApiConfig(base_url=api.url, ca_bundle=bundle, timeout_seconds=2))
    try:
        assert tls_client.fetch(KEY).session.access_token == api.issued[-1]
    finally:
        tls_client.close()


def test_tls_without_the_ca_fails_clearly(tls_api: tuple[FakeApi, Path]) -> None:
    api, _ = tls_api
    tls_client = ApiClient(ApiConfig(base_url=api.url, timeout_seconds=2))
    try:
        error = failure(tls_client)
    finally:
        tls_client.close()
    assert error.reason == "connection_error"
    assert "TLS" in str(error)
    assert "ca_bundle" in error.hint
    assert api.issued == []
