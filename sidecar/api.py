"""The HTTP client of the auth API: the one place requests errors become ours."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
import urllib3

from sidecar import __version__
from sidecar.config import ApiConfig, Secret
from sidecar.errors import (
    CredentialError,
    EndpointError,
    InvalidResponseError,
    RefreshError,
    TransientError,
)
from sidecar.policy import Lane, classify, parse_retry_after
from sidecar.session import Session, decode, validate

# A session answer is a few hundred bytes; anything much larger is not one.
MAX_BODY_BYTES = 64 * 1024
CREDENTIAL_HINT = "check the API key (api.key_file / api.key_env) and that it is still active"
REQUEST_HINT = "check api.base_url: the auth endpoint refused the request itself"


@dataclass(frozen=True, slots=True)
class Fetched:
    """A validated session and when its request was sent."""

    session: Session
    sent_monotonic: float  # lifetimes count from here
    sent_wall: float


class ApiClient:
    """``GET <base_url>/v2/auth/session`` on one keep-alive connection pool."""

    def __init__(
        self,
        config: ApiConfig,
        *,
        require_refresh_token: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._url = config.session_url
        self._host = urlsplit(config.base_url).netloc
        self._timeout = config.timeout_seconds
        self._require_refresh = require_refresh_token
        self._monotonic = monotonic
        self._wall = wall
        self._http = requests.Session()
        self._http.verify = str(config.ca_bundle) if config.ca_bundle else True
        # .netrc would let requests add an Authorization header the operator never chose.
        self._http.trust_env = False
        self._http.headers.update(
            {"Accept": "application/json", "User-Agent": f"forestreet-sidecar/{__version__}"}
        )

    def close(self) -> None:
        self._http.close()

    def fetch(self, key: Secret) -> Fetched:
        """One request; a Session, or a RefreshError whose class says how to retry."""
        sent_monotonic = self._monotonic()
        sent_wall = self._wall()
        deadline = sent_monotonic + 2 * self._timeout
        try:
            response = self._http.get(
                self._url,
                headers={"x-api-key": key.value},
                timeout=(self._timeout, self._timeout),
                allow_redirects=False,
                stream=True,
            )
            with response:
                body = self._read_body(response, deadline)
        except RefreshError:
            raise
        except requests.exceptions.SSLError as exc:
            raise TransientError(
                "connection_error",
                f"TLS handshake with {self._host} failed: {_short(exc)}",
                hint="set api.ca_bundle to the CA that signed the server certificate",
            ) from exc
        except (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError) as exc:
            raise TransientError(
                "timeout", f"no answer from {self._host} within {self._timeout:g}s"
            ) from exc
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(
                "connection_error", f"cannot reach {self._host}: {_short(exc)}"
            ) from exc
        return Fetched(self._interpret(response, body), sent_monotonic, sent_wall)

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        # read1 returns after one recv, so a body trickling in a byte at a time still
        # meets the deadline instead of resetting the read timeout on every byte.
        chunks: list[bytes] = []
        size = 0
        while True:
            if self._monotonic() > deadline:
                raise TransientError(
                    "timeout", f"the answer from {self._host} took longer than the deadline"
                )
            chunk = response.raw.read1(8192)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise InvalidResponseError(
                    f"response body larger than {MAX_BODY_BYTES} bytes", status=response.status_code
                )
            chunks.append(chunk)

    def _interpret(self, response: requests.Response, body: bytes) -> Session:
        status = response.status_code
        # Decoded once: the errorCode decides first, then the same document is validated.
        try:
            data, not_json = decode(body), None
        except InvalidResponseError as exc:
            data, not_json = None, exc
        code = _error_code(data)
        if status == 200 and code is None:
            if not_json is not None:
                raise not_json
            return validate(data, require_refresh_token=self._require_refresh)
        lane, reason = classify(status, code)
        if status == 200 and reason == "http_200":
            # A 200 that carries an unknown errorCode is still not a session.
            raise InvalidResponseError("response has an unknown errorCode", status=status)
        detail = f"{self._host} answered {status}" + (f" {code}" if code else "")
        if 300 <= status < 400:
            target = urlsplit(response.headers.get("Location", "")).netloc or "elsewhere"
            detail += f" redirecting to {target}; redirects are never followed"
        if lane is Lane.RETRYABLE:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), self._wall())
            raise TransientError(reason, detail, retry_after=retry_after, status=status)
        if lane is Lane.CREDENTIAL:
            raise CredentialError(reason, detail, hint=CREDENTIAL_HINT, status=status)
        raise EndpointError(reason, detail, hint=REQUEST_HINT, status=status)


def _error_code(data: object) -> str | None:
    """The errorCode of an error body, if the body is one."""
    if isinstance(data, dict) and isinstance(data.get("errorCode"), str):
        return str(data["errorCode"])
    return None


def _short(exc: BaseException) -> str:
    """The innermost cause, one line: requests nests urllib3 errors three deep."""
    while exc.__context__ is not None and not isinstance(exc, OSError):
        exc = exc.__context__
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
