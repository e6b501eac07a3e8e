"""When to refresh and how long to wait after a failure: pure functions.

Nothing here reads a clock, touches the network or draws its own randomness:
``now``, lifetimes and a ``random.Random`` come in as arguments, so every
decision can be tested with a table and a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from random import Random

RETRY_AFTER_CAP_SECONDS = 3600.0
SLOW_LANE_JITTER = 0.1

RETRYABLE_CODES = frozenset(
    {
        "SERVICE_UNAVAILABLE",
        "LIMIT_EXCEEDED",
        "QUOTA_EXCEEDED",
        "INTERNAL_SERVER_ERROR",
        "CONFIGURATION_ERROR",
        "RESPONSE_VALIDATION_FAILED",
    }
)
CREDENTIAL_CODES = frozenset(
    {
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
    }
)
REQUEST_CODES = frozenset(
    {
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
    }
)
ERROR_CODES = RETRYABLE_CODES | CREDENTIAL_CODES | REQUEST_CODES


class Lane(StrEnum):
    """How an error is retried."""

    RETRYABLE = "retryable"
    CREDENTIAL = "credential"
    REQUEST = "request"


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """When to refresh after a success (the ``refresh`` section)."""

    at_fraction: float = 0.8
    jitter_fraction: float = 0.1
    min_interval_seconds: float = 5.0
    max_interval_seconds: float = 3600.0


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """How long to wait after a failure (the ``backoff`` section)."""

    initial_seconds: float = 1.0
    max_seconds: float = 300.0
    multiplier: float = 2.0


def classify(status: int, error_code: str | None) -> tuple[Lane, str]:
    """Lane and metric reason of an HTTP answer that is not a usable session.

    A known ``errorCode`` decides whatever the status; otherwise the status does.
    An unknown code never becomes a label: it would make the label set unbounded.
    """
    if error_code in RETRYABLE_CODES:
        return Lane.RETRYABLE, error_code
    if error_code in CREDENTIAL_CODES:
        return Lane.CREDENTIAL, error_code
    if error_code in REQUEST_CODES:
        return Lane.REQUEST, error_code
    reason = f"http_{status}"
    if status >= 500 or status == 429 or status < 300:
        return Lane.RETRYABLE, reason
    if status in (401, 403):
        return Lane.CREDENTIAL, reason
    return Lane.REQUEST, reason


def next_refresh(lifetime: float, policy: RefreshPolicy, rng: Random) -> float:
    """Seconds after the request was sent at which to refresh a token living ``lifetime`` s.

    Jitter only moves the refresh earlier, inside ``[(1 - jitter/at) * T, T]`` with
    ``T = min(at * lifetime, max_interval)``, so it never passes expiry; the minimum
    interval wins over a shorter lifetime, as a guard against a hot loop.
    """
    target = min(policy.at_fraction * lifetime, policy.max_interval_seconds)
    if policy.at_fraction > 0:
        earliest = max(0.0, (1 - policy.jitter_fraction / policy.at_fraction) * target)
    else:
        earliest = target
    return max(rng.uniform(earliest, target), policy.min_interval_seconds)


def retry_delay(
    failures: int,
    lane: Lane,
    backoff: BackoffPolicy,
    rng: Random,
    *,
    retry_after: float | None = None,
    remaining: float | None = None,
) -> float:
    """Seconds to wait after the ``failures``-th consecutive failed attempt.

    Retryable errors use full-jitter exponential backoff, never sooner than the
    server's ``Retry-After``; credential and request errors take the slow lane
    (``max_seconds`` ± 10 %). While the token on disk is still valid for
    ``remaining`` seconds, a delay that would reach expiry is redrawn from
    ``[remaining/4, remaining/2]`` so one more attempt happens before the token
    expires. That rescue stops once attempts would come closer together than
    ``pre_expiry_floor``, so a fleet near expiry does not pile retries into the
    last seconds.
    """
    if lane is Lane.RETRYABLE:
        ceiling = backoff_ceiling(failures, backoff)
        delay = rng.uniform(0.0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP_SECONDS))
    else:
        ceiling = backoff.max_seconds
        delay = ceiling * rng.uniform(1 - SLOW_LANE_JITTER, 1 + SLOW_LANE_JITTER)
    if (
        remaining is not None
        and delay >= remaining
        and remaining / 2 >= pre_expiry_floor(ceiling, backoff)
    ):
        delay = rng.uniform(remaining / 4, remaining / 2)
    return delay


def pre_expiry_floor(ceiling: float, backoff: BackoffPolicy) -> float:
    """The closest spacing of the extra attempts made before a valid token expires."""
    return max(backoff.initial_seconds, ceiling / 10)


def backoff_ceiling(failures: int, backoff: BackoffPolicy) -> float:
    """Upper bound of the full-jitter draw after ``failures`` consecutive failures."""
    exponent = max(failures - 1, 0)
    if backoff.multiplier > 1:
        # Past this exponent the product only overflows; the cap has long won.
        limit = math.log(backoff.max_seconds / backoff.initial_seconds) / math.log(
            backoff.multiplier
        )
        if exponent >= limit:
            return backoff.max_seconds
    return min(backoff.max_seconds, backoff.initial_seconds * backoff.multiplier**exponent)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from ``now`` (Unix time) that a ``Retry-After`` header asks for, or None.

    Both forms of RFC 9110 are accepted: delay-seconds and an HTTP-date, in any of its
    three formats (IMF-fixdate, RFC 850, asctime). An HTTP-date is always UTC, also
    when, as in asctime, it names no zone. A date in the past means "now" (0);
    anything unparsable is ignored.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    import email.utils  # rare; not worth its import on the way to the first token

    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # asctime has no zone; "-0000" parses the same way
        import datetime

        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now)
