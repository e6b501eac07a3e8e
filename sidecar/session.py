"""The session value object and the pure validation of a 200 answer."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from sidecar.errors import InvalidResponseError

TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+")
# expiresAt comes in seconds or milliseconds; 10^11 s is the year 5138, 10^11 ms is 1973.
MILLISECONDS_THRESHOLD = 1e11


def fingerprint(secret: str) -> str:
    """A short, stable, one-way name for a secret: safe for logs."""
    # surrogatepass: a key from os.environ may hold lone surrogates; it still gets a name.
    return "sha256:" + hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Session:
    """A usable answer of ``GET /v2/auth/session``. Tokens never appear in its repr."""

    access_token: str = field(repr=False)
    expires_in: float
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None  # Unix seconds, as the server sees it

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.access_token)


def parse(body: bytes | str, *, require_refresh_token: bool = False) -> Session:
    """Validate a 200 body; raise InvalidResponseError naming what is wrong (never a value)."""
    return validate(decode(body), require_refresh_token=require_refresh_token)


def decode(body: bytes | str) -> object:
    """The JSON document of a body; InvalidResponseError when it is not JSON.

    Whatever the bytes: 60000 ``[`` make the parser recurse past the interpreter's
    limit (RecursionError), a 5000-digit number exceeds int's conversion limit
    (ValueError); neither is a reason to crash.
    """
    try:
        return json.loads(body)
    except RecursionError as exc:
        raise InvalidResponseError("response body is not JSON (nested too deeply)") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidResponseError("response body is not JSON") from exc


def validate(data: object, *, require_refresh_token: bool = False) -> Session:
    """Validate a decoded 200 body (see ``parse``)."""
    if not isinstance(data, dict):
        raise InvalidResponseError("response body is not a JSON object")

    access = data.get("accessToken")
    if access is None:
        raise InvalidResponseError("response has no accessToken")
    if not _is_token(access):
        raise InvalidResponseError("accessToken does not match the token pattern")

    refresh = data.get("refreshToken")
    if refresh is not None and not _is_token(refresh):
        raise InvalidResponseError("refreshToken does not match the token pattern")
    if require_refresh_token and refresh is None:
        raise InvalidResponseError("response has no refreshToken")

    if "expiresIn" not in data:
        raise InvalidResponseError("response has no expiresIn")
    expires_in = positive_number(data["expiresIn"])
    if expires_in is None:
        raise InvalidResponseError("expiresIn is not a finite positive number")

    expires_at = data.get("expiresAt")
    expires_at_seconds = _timestamp_seconds(expires_at) if expires_at is not None else None
    return Session(
        access_token=access,
        expires_in=expires_in,
        refresh_token=refresh,
        expires_at=expires_at_seconds,
    )


def _is_token(value: object) -> bool:
    return isinstance(value, str) and TOKEN_PATTERN.fullmatch(value) is not None


def positive_number(value: object) -> float | None:
    """A finite number > 0 as a float, or None; a JSON boolean is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def _timestamp_seconds(value: object) -> float | None:
    number = positive_number(value)
    if number is None:
        return None  # optional and only reported; a bad one is not worth a failure
    return number / 1000 if number > MILLISECONDS_THRESHOLD else number


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The unverified claims of a JWT, or None when the token is not one.

    Used only to learn the expiry of a token found on disk at restart; the
    signature is irrelevant for that and cannot be checked here anyway.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return None
    return claims if isinstance(claims, dict) else None
