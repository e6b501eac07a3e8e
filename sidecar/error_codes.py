"""The published ``errorCode`` enum, written once: each code's lane and the fake's status.

The rows follow the enum of forestreet-session.openapi.yaml in its order; the lanes are
SPEC.md's "Every answer falls in exactly one class". ``policy.classify`` reads the lane,
the errors carry it, ``metrics`` declares one label per code, and ``fake_api`` sends the
status when a test scripts a code without one. Only the standard library: the fake and the
first token both import this.
"""

from __future__ import annotations

from enum import StrEnum


class Lane(StrEnum):
    """How an error is retried."""

    RETRYABLE = "retryable"
    CREDENTIAL = "credential"
    REQUEST = "request"


_R, _C, _Q = Lane.RETRYABLE, Lane.CREDENTIAL, Lane.REQUEST

# code, lane, the HTTP status the fake API sends with it when none is scripted
TABLE: tuple[tuple[str, Lane, int], ...] = (
    ("USER_NOT_CONFIRMED", _C, 401),
    ("INVALID_CREDENTIALS", _C, 401),
    ("INCOMPLETE_CREDENTIALS", _C, 401),
    ("INVALID_SESSION_TOKEN", _C, 401),
    ("FORCE_CHANGE_PASSWORD", _C, 401),
    ("PASSWORD_RESET_REQUIRED", _C, 401),
    ("PASSWORD_EXPIRED", _C, 401),
    ("CODE_EXPIRED", _C, 401),
    ("SESSION_EXPIRED", _C, 401),
    ("UNAUTHORISED", _C, 401),
    ("AUTHENTICATOR_ERROR", _C, 401),
    ("SSO_ACCOUNT", _C, 401),
    ("FORBIDDEN", _C, 401),
    ("METHOD_NOT_ALLOWED", _Q, 405),
    ("INVALID_INPUT", _Q, 400),
    ("PATH_VALIDATION_FAILED", _Q, 400),
    ("QUERY_VALIDATION_FAILED", _Q, 400),
    ("BODY_VALIDATION_FAILED", _Q, 400),
    ("RESPONSE_VALIDATION_FAILED", _R, 500),
    ("INVALID_OR_MALFORMED_JSON", _Q, 400),
    ("INTERNAL_SERVER_ERROR", _R, 500),
    ("CONFIGURATION_ERROR", _R, 500),
    ("SERVICE_UNAVAILABLE", _R, 503),
    ("NOT_FOUND", _Q, 404),
    ("CONFLICT", _Q, 400),
    ("LIMIT_EXCEEDED", _R, 429),
    ("REVIEW_ALREADY_PENDING", _Q, 400),
    ("REVIEW_NOT_PENDING", _Q, 400),
    ("REVIEW_PENDING", _Q, 400),
    ("REVIEW_INSUFFICIENT_DOMAINS", _Q, 400),
    ("QUOTA_EXCEEDED", _R, 429),
    ("UNSUPPORTED_ENDPOINT_VERSION", _Q, 400),
    ("ENDPOINT_NOT_FOUND", _Q, 404),
    ("ENDPOINT_ALREADY_EXISTS", _Q, 400),
)

ERROR_CODES: tuple[str, ...] = tuple(code for code, _lane, _status in TABLE)
LANES: dict[str, Lane] = {code: lane for code, lane, _status in TABLE}
STATUSES: dict[str, int] = {code: status for code, _lane, status in TABLE}


def lane_for(code: str | None) -> Lane | None:
    """The lane of a published code; None for no code or one the document does not list."""
    return None if code is None else LANES.get(code)
