"""What the fake puts on the wire: session tokens, JSON numbers and error bodies."""

from __future__ import annotations

import base64
import json
import math
import secrets
from http import HTTPStatus


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def json_number(value: float) -> int | float:
    """A JSON number as the API would print it: whole values without ``.0``, else 3 decimals."""
    rounded = round(float(value), 3)
    return int(rounded) if rounded.is_integer() else rounded


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def compact_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def fake_jwt(typ: str, iat: int, lifetime: float) -> str:
    header = {"alg": "HS256", "typ": typ}
    claims = {
        "sub": "fake",
        "iat": iat,
        "exp": json_number(iat + lifetime),
        "jti": secrets.token_hex(8),
    }
    # The signature is random: nothing verifies it, and it makes every token unique on its own.
    return ".".join(
        (
            _b64url(compact_json(header)),
            _b64url(compact_json(claims)),
            _b64url(secrets.token_bytes(32)),
        )
    )


def expires_at_value(when: float, unit: str) -> int | float:
    if unit == "s":
        return json_number(when)
    # A scripted non-finite lifetime must reach the client as NaN/Infinity, not crash the fake.
    return round(when * 1000) if math.isfinite(when) else when


def error_body(code: str, status: int) -> bytes:
    return compact_json(
        {"success": False, "errorCode": code, "message": f"{status_phrase(status)} - {code}"}
    )
