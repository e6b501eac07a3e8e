"""The tests' one copy of the published errorCode enum, as SPEC.md sorts it into classes.

Copied by hand from SPEC.md ("Every answer falls in exactly one class"), never derived
from ``sidecar``: a wrong table in the code cannot agree with itself. Its order, the
OpenAPI document's, is checked against that document by tests/test_error_codes.py.
"""

from __future__ import annotations

from pathlib import Path

RETRYABLE = frozenset(
    [
        "SERVICE_UNAVAILABLE",
        "LIMIT_EXCEEDED",
        "QUOTA_EXCEEDED",
        "INTERNAL_SERVER_ERROR",
        "CONFIGURATION_ERROR",
        "RESPONSE_VALIDATION_FAILED",
    ]
)
CREDENTIAL = frozenset(
    [
        "USER_NOT_CONFIRMED",
        "INVALID_CREDENTIALS",
        "INCOMPLETE_CREDENTIALS",
        "INVALID_SESSION_TOKEN",
        "FORCE_CHANGE_PASSWORD",
        "PASSWORD_RESET_REQUIRED",
        "PASSWORD_EXPIRED",
        "CODE_EXPIRED",
        "SESSION_EXPIRED",
        "UNAUTHORISED",
        "AUTHENTICATOR_ERROR",
        "SSO_ACCOUNT",
        "FORBIDDEN",
    ]
)
REQUEST = frozenset(
    [
        "METHOD_NOT_ALLOWED",
        "INVALID_INPUT",
        "PATH_VALIDATION_FAILED",
        "QUERY_VALIDATION_FAILED",
        "BODY_VALIDATION_FAILED",
        "INVALID_OR_MALFORMED_JSON",
        "NOT_FOUND",
        "CONFLICT",
        "REVIEW_ALREADY_PENDING",
        "REVIEW_NOT_PENDING",
        "REVIEW_PENDING",
        "REVIEW_INSUFFICIENT_DOMAINS",
        "UNSUPPORTED_ENDPOINT_VERSION",
        "ENDPOINT_NOT_FOUND",
        "ENDPOINT_ALREADY_EXISTS",
    ]
)

# code -> "retryable" | "credential" | "request" (the values of sidecar's Lane)
LANES: dict[str, str] = {
    **dict.fromkeys(RETRYABLE, "retryable"),
    **dict.fromkeys(CREDENTIAL, "credential"),
    **dict.fromkeys(REQUEST, "request"),
}
ERROR_CODES = frozenset(LANES)

# The published document; a clone without the shared/ folder next to it has none.
OPENAPI = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "forestreet-session.openapi.yaml"
)
