"""The pure refresh and backoff policy: tables with seeded randomness, and properties."""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.policy import (
    CREDENTIAL_CODES,
    ERROR_CODES,
    REQUEST_CODES,
    RETRY_AFTER_CAP_SECONDS,
    RETRYABLE_CODES,
    BackoffPolicy,
    Lane,
    RefreshPolicy,
    backoff_ceiling,
    classify,
    next_refresh,
    parse_retry_after,
    retry_delay,
)

DEFAULT_REFRESH = RefreshPolicy()
DEFAULT_BACKOFF = BackoffPolicy()
SPEC_ENUM = {
    "USER_NOT_CONFIRMED", "INVALID_CREDENTIALS", "INCOMPLETE_CREDENTIALS",
    "INVALID_SESSION_TOKEN", "FORCE_CHANGE_PASSWORD", "PASSWORD_RESET_REQUIRED",
    "PASSWORD_EXPIRED", "CODE_EXPIRED", "SESSION_EXPIRED", "UNAUTHORISED",
    "AUTHENTICATOR_ERROR", "SSO_ACCOUNT", "FORBIDDEN", "METHOD_NOT_ALLOWED", "INVALID_INPUT",
    "PATH_VALIDATION_FAILED", "QUERY_VALIDATION_FAILED", "BODY_VALIDATION_FAILED",
    "RESPONSE_VALIDATION_FAILED", "INVALID_OR_MALFORMED_JSON", "INTERNAL_SERVER_ERROR",
    "CONFIGURATION_ERROR", "SERVICE_UNAVAILABLE", "NOT_FOUND", "CONFLICT", "LIMIT_EXCEEDED",
    "REVIEW_ALREADY_PENDING", "REVIEW_NOT_PENDING", "REVIEW_PENDING",
    "REVIEW_INSUFFICIENT_DOMAINS", "QUOTA_EXCEEDED", "UNSUPPORTED_ENDPOINT_VERSION",
    "ENDPOINT_NOT_FOUND", "ENDPOINT_ALREADY_EXISTS",
}  # fmt: skip


def test_every_published_error_code_has_exactly_one_class() -> None:
    assert ERROR_CODES == SPEC_ENUM
    assert len(RETRYABLE_CODES) + len(CREDENTIAL_CODES) + len(REQUEST_CODES) == len(SPEC_ENUM)


@pytest.mark.parametrize("status", [200, 400, 401, 403, 429, 500, 503])
@pytest.mark.parametrize("code", sorted(SPEC_ENUM))
def test_error_code_decides_the_lane_whatever_the_status(code: str, status: int) -> None:
    lane, reason = classify(status, code)
    expected = (
        Lane.RETRYABLE
        if code in RETRYABLE_CODES
        else Lane.CREDENTIAL
        if code in CREDENTIAL_CODES
        else Lane.REQUEST
    )
    assert (lane, reason) == (expected, code)


@pytest.mark.parametrize(
    ("status", "lane"),
    [
        (500, Lane.RETRYABLE),
        (502, Lane.RETRYABLE),
        (503, Lane.RETRYABLE),
        (429, Lane.RETRYABLE),
        (401, Lane.CREDENTIAL),
        (403, Lane.CREDENTIAL),
        (302, Lane.REQUEST),
        (307, Lane.REQUEST),
        (400, Lane.REQUEST),
        (404, Lane.REQUEST),
        (418, Lane.REQUEST),
    ],
)
def test_without_a_known_code_the_status_decides(status: int, lane: Lane) -> None:
    assert classify(status, None) == (lane, f"http_{status}")
    # An unknown code must never become a metric label.
    assert classify(status, "SOMETHING_NEW") == (lane, f"http_{status}")


def test_default_refresh_lands_between_70_and_80_percent_of_the_lifetime() -> None:
    rng = Random(1)
    delays = [next_refresh(3600, DEFAULT_REFRESH, rng) for _ in range(2000)]
    assert min(delays) >= 0.7 * 3600
    assert max(delays) <= 0.8 * 3600
    # Jitter really spreads the fleet: both ends of the window are used.
    assert min(delays) < 0.71 * 3600
    assert max(delays) > 0.79 * 3600


@pytest.mark.parametrize(
    ("lifetime", "policy", "low", "high"),
    [
        (86400, RefreshPolicy(), 0.875 * 3600, 3600),  # max interval caps a long lifetime
        (2, RefreshPolicy(), 5, 5),  # min interval wins over a very short lifetime
        (100, RefreshPolicy(jitter_fraction=0), 80, 80),
        (100, RefreshPolicy(at_fraction=0.5, jitter_fraction=0.5), 5, 50),
        (100, RefreshPolicy(at_fraction=1, jitter_fraction=0, min_interval_seconds=0), 100, 100),
    ],
)
def test_refresh_window_table(
    lifetime: float, policy: RefreshPolicy, low: float, high: float
) -> None:
    rng = Random(3)
    for _ in range(200):
        assert low <= next_refresh(lifetime, policy, rng) <= high


fractions = st.floats(min_value=0.01, max_value=1.0)
lifetimes = st.floats(min_value=0.001, max_value=1e9, allow_nan=False)


@given(
    lifetime=lifetimes,
    at=fractions,
    jitter=st.floats(min_value=0, max_value=1),
    min_interval=st.floats(min_value=0, max_value=600),
    seed=st.integers(),
)
def test_planned_refresh_never_passes_expiry(
    lifetime: float, at: float, jitter: float, min_interval: float, seed: int
) -> None:
    """Unless the lifetime is below the configured minimum interval (SPEC: that wins)."""
    policy = RefreshPolicy(at, jitter, min_interval, 3600)
    delay = next_refresh(lifetime, policy, Random(seed))
    assert delay >= min_interval
    if lifetime >= min_interval:
        assert delay <= lifetime


@pytest.mark.parametrize(
    ("failures", "ceiling"), [(1, 1), (2, 2), (3, 4), (9, 256), (10, 300), (10_000, 300)]
)
def test_backoff_ceiling_doubles_up_to_the_cap(failures: int, ceiling: float) -> None:
    assert backoff_ceiling(failures, DEFAULT_BACKOFF) == ceiling


def test_full_jitter_uses_the_whole_range() -> None:
    rng = Random(5)
    delays = [retry_delay(4, Lane.RETRYABLE, DEFAULT_BACKOFF, rng) for _ in range(2000)]
    assert 0 <= min(delays) < 0.2
    assert 7.8 < max(delays) <= 8


def test_slow_lane_waits_max_seconds_within_ten_percent() -> None:
    rng = Random(9)
    for lane in (Lane.CREDENTIAL, Lane.REQUEST):
        delays = [retry_delay(1, lane, DEFAULT_BACKOFF, rng) for _ in range(500)]
        assert min(delays) >= 270 and max(delays) <= 330
        assert max(delays) - min(delays) > 40


def test_retry_after_is_a_lower_bound_that_may_exceed_the_cap() -> None:
    rng = Random(2)
    assert retry_delay(1, Lane.RETRYABLE, DEFAULT_BACKOFF, rng, retry_after=900) == 900
    assert (
        retry_delay(1, Lane.RETRYABLE, DEFAULT_BACKOFF, rng, retry_after=10**6)
        == RETRY_AFTER_CAP_SECONDS
    )


def test_a_valid_token_pulls_a_long_delay_in_before_expiry() -> None:
    rng = Random(4)
    for _ in range(200):
        assert 30 <= retry_delay(1, Lane.CREDENTIAL, DEFAULT_BACKOFF, rng, remaining=120) <= 60
        delay = retry_delay(1, Lane.RETRYABLE, DEFAULT_BACKOFF, rng, retry_after=600, remaining=100)
        assert 25 <= delay <= 50


def test_no_rescue_attempts_closer_together_than_the_floor() -> None:
    """At the cap (300 s) the floor is 30 s: with 50 s left, no extra attempt is squeezed in."""
    rng = Random(8)
    delay = retry_delay(20, Lane.RETRYABLE, DEFAULT_BACKOFF, rng, retry_after=200, remaining=50)
    assert delay == 200


backoffs = st.builds(
    BackoffPolicy,
    initial_seconds=st.floats(min_value=0.001, max_value=60),
    max_seconds=st.floats(min_value=60, max_value=3600),
    multiplier=st.floats(min_value=1, max_value=10),
)


@given(
    failures=st.integers(min_value=1, max_value=10_000),
    backoff=backoffs,
    retry_after=st.none() | st.floats(min_value=0, max_value=1e7),
    seed=st.integers(),
)
def test_backoff_never_above_the_cap_nor_below_retry_after(
    failures: int, backoff: BackoffPolicy, retry_after: float | None, seed: int
) -> None:
    delay = retry_delay(failures, Lane.RETRYABLE, backoff, Random(seed), retry_after=retry_after)
    floor = 0.0 if retry_after is None else min(retry_after, RETRY_AFTER_CAP_SECONDS)
    assert floor <= delay <= max(backoff.max_seconds, floor)


@given(
    failures=st.integers(min_value=1, max_value=100),
    lane=st.sampled_from(list(Lane)),
    backoff=backoffs,
    retry_after=st.none() | st.floats(min_value=0, max_value=1e5),
    remaining=st.floats(min_value=0, max_value=1e5),
    seed=st.integers(),
)
def test_with_a_valid_token_an_attempt_always_fits_before_expiry(
    failures: int,
    lane: Lane,
    backoff: BackoffPolicy,
    retry_after: float | None,
    remaining: float,
    seed: int,
) -> None:
    """The rescue stops once attempts would come closer than the floor (at most max/10)."""
    delay = retry_delay(
        failures, lane, backoff, Random(seed), retry_after=retry_after, remaining=remaining
    )
    assert delay >= 0
    if remaining >= 2 * max(backoff.initial_seconds, backoff.max_seconds / 10):
        assert delay < remaining


def test_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after(" 7 ", now) == 7
    assert parse_retry_after("Tue, 14 Nov 2023 22:15:00 GMT", now) == pytest.approx(100)
    assert parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0  # in the past
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after("1.5", now) is None
