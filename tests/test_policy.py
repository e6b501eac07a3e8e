"""The pure refresh and backoff policy: tables with seeded randomness, and properties."""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.policy import (
    ERROR_CODES,
    RETRY_AFTER_CAP_SECONDS,
    BackoffPolicy,
    Lane,
    RefreshPolicy,
    backoff_ceiling,
    classify,
    next_refresh,
    parse_retry_after,
    retry_delay,
)
from tests import oracle

DEFAULT_REFRESH = RefreshPolicy()
DEFAULT_BACKOFF = BackoffPolicy()


def test_every_published_error_code_has_exactly_one_class() -> None:
    assert set(ERROR_CODES) == oracle.ERROR_CODES
    assert len(oracle.RETRYABLE) + len(oracle.CREDENTIAL) + len(oracle.REQUEST) == len(ERROR_CODES)


@pytest.mark.parametrize("status", [200, 400, 401, 403, 429, 500, 503])
@pytest.mark.parametrize("code", sorted(oracle.ERROR_CODES))
def test_error_code_decides_the_lane_whatever_the_status(code: str, status: int) -> None:
    lane, reason = classify(status, code)
    assert (lane, reason) == (oracle.LANES[code], code)


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


def test_first_token_of_a_process_is_refreshed_anywhere_between_10_and_80_percent() -> None:
    rng = Random(11)
    delays = [next_refresh(3600, DEFAULT_REFRESH, rng, first=True) for _ in range(2000)]
    assert 0.1 * 3600 <= min(delays) < 0.12 * 3600
    assert 0.78 * 3600 < max(delays) <= 0.8 * 3600
    # Uniform over the band: about as many in its lower half as in its upper half.
    assert 900 < sum(1 for d in delays if d < 0.45 * 3600) < 1100


@pytest.mark.parametrize(
    ("lifetime", "policy", "first", "low", "high"),
    [
        (86400, RefreshPolicy(), False, 0.875 * 3600, 3600),  # max interval caps a long lifetime
        (86400, RefreshPolicy(), True, 0.125 * 3600, 3600),  # ... and the first band too
        (2, RefreshPolicy(), False, 5, 5),  # min interval wins over a very short lifetime
        (2, RefreshPolicy(), True, 5, 5),
        (100, RefreshPolicy(jitter_fraction=0), False, 80, 80),
        (100, RefreshPolicy(jitter_fraction=0), True, 10, 80),
        (100, RefreshPolicy(at_fraction=0.5, jitter_fraction=0.5), False, 5, 50),
        (
            100,
            RefreshPolicy(at_fraction=1, jitter_fraction=0, min_interval_seconds=0),
            False,
            100,
            100,
        ),
        # first_from = at - jitter: the first token is scheduled like every other one.
        (100, RefreshPolicy(first_from_fraction=0.7), True, 70, 80),
        (100, RefreshPolicy(first_from_fraction=0, min_interval_seconds=0), True, 0, 80),
    ],
)
def test_refresh_window_table(
    lifetime: float, policy: RefreshPolicy, first: bool, low: float, high: float
) -> None:
    rng = Random(3)
    for _ in range(200):
        assert low <= next_refresh(lifetime, policy, rng, first=first) <= high


fractions = st.floats(min_value=0.01, max_value=1.0)
lifetimes = st.floats(min_value=0.001, max_value=1e9, allow_nan=False)


@given(
    lifetime=lifetimes,
    at=fractions,
    jitter=st.floats(min_value=0, max_value=1),
    first=st.booleans(),
    min_interval=st.floats(min_value=0, max_value=600),
    seed=st.integers(),
)
def test_planned_refresh_never_passes_expiry(
    lifetime: float, at: float, jitter: float, first: bool, min_interval: float, seed: int
) -> None:
    """Unless the lifetime is below the configured minimum interval (SPEC: that wins)."""
    policy = RefreshPolicy(
        at_fraction=at,
        jitter_fraction=jitter,
        first_from_fraction=min(0.1, at),
        min_interval_seconds=min_interval,
        max_interval_seconds=3600,
    )
    delay = next_refresh(lifetime, policy, Random(seed), first=first)
    assert delay >= min_interval
    if lifetime >= min_interval:
        assert delay <= lifetime


@given(
    lifetime=lifetimes,
    at=fractions,
    first_share=st.floats(min_value=0, max_value=1),
    max_interval=st.floats(min_value=1, max_value=1e6),
    seed=st.integers(),
)
def test_first_token_draw_stays_in_its_band(
    lifetime: float, at: float, first_share: float, max_interval: float, seed: int
) -> None:
    """[(first_from/at)·T, T] with T = min(at·L, max_interval), min_interval aside."""
    first_from = first_share * at
    policy = RefreshPolicy(
        at_fraction=at,
        first_from_fraction=first_from,
        min_interval_seconds=0,
        max_interval_seconds=max_interval,
    )
    target = min(at * lifetime, max_interval)
    delay = next_refresh(lifetime, policy, Random(seed), first=True)
    assert first_from / at * target * (1 - 1e-9) <= delay <= target * (1 + 1e-9)


@pytest.mark.parametrize(
    ("failures", "ceiling"), [(1, 1), (2, 2), (3, 4), (9, 256), (10, 300), (10_000, 300)]
)
def test_backoff_ceiling_doubles_up_to_the_cap(failures: int, ceiling: float) -> None:
    assert backoff_ceiling(failures, DEFAULT_BACKOFF) == ceiling


@pytest.mark.parametrize(
    ("failures", "failing_for", "ceiling"),
    [(1, 0, 1), (1, 40, 40), (3, 2.5, 4), (3, 100, 100), (2, 299.9, 299.9), (1, 900, 300)],
)
def test_backoff_ceiling_is_raised_to_the_time_spent_failing(
    failures: int, failing_for: float, ceiling: float
) -> None:
    assert backoff_ceiling(failures, DEFAULT_BACKOFF, failing_for) == ceiling


def test_full_jitter_uses_the_whole_range() -> None:
    rng = Random(5)
    delays = [retry_delay(4, Lane.RETRYABLE, DEFAULT_BACKOFF, rng) for _ in range(2000)]
    assert 0 <= min(delays) < 0.2
    assert 7.8 < max(delays) <= 8


def test_equal_jitter_at_the_cap() -> None:
    """At the cap the draw is [max/2, max]: a fleet sends ~1.33·N/max req/s, not 2·N/max."""
    rng = Random(6)
    delays = [retry_delay(12, Lane.RETRYABLE, DEFAULT_BACKOFF, rng) for _ in range(2000)]
    assert 150 <= min(delays) < 152
    assert 298 < max(delays) <= 300
    assert sum(delays) / len(delays) == pytest.approx(225, rel=0.02)


def test_a_token_lost_after_a_long_wait_continues_at_the_cap() -> None:
    """Second failure, but 20 min spent failing: equal jitter at the cap, not [0, 2]."""
    rng = Random(7)
    for _ in range(200):
        delay = retry_delay(2, Lane.RETRYABLE, DEFAULT_BACKOFF, rng, failing_for=1200)
        assert 150 <= delay <= 300
        assert 0 <= retry_delay(2, Lane.RETRYABLE, DEFAULT_BACKOFF, rng, failing_for=1.5) <= 2


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
    assert retry_delay(1, Lane.CREDENTIAL, DEFAULT_BACKOFF, rng, retry_after=900) == 900


@pytest.mark.parametrize("lane", list(Lane))
@pytest.mark.parametrize(
    ("failures", "remaining", "retry_after", "low", "high"),
    [
        (1, 120, None, 30, 60),  # patient: U[r/4, r/2] instead of 1 s or the slow lane
        (30, 1000, None, 250, 500),  # whatever the count of failures
        (1, 1000, 600, 600, 600),  # Retry-After stays a lower bound, the patient wait included
        (1, 1000, 300, 300, 500),
        (1, 60, None, 15, 30),  # r/2 = 30 = max/10: still patient
    ],
)
def test_patient_while_valid_table(
    lane: Lane,
    failures: int,
    remaining: float,
    retry_after: float | None,
    low: float,
    high: float,
) -> None:
    rng = Random(4)
    for _ in range(200):
        delay = retry_delay(
            failures, lane, DEFAULT_BACKOFF, rng, retry_after=retry_after, remaining=remaining
        )
        assert low <= delay <= high


def test_no_patient_attempts_closer_together_than_the_floor() -> None:
    """r/2 below max(initial, max/10) = 30 s: the normal backoff, here equal jitter at the cap."""
    rng = Random(8)
    for _ in range(200):
        delay = retry_delay(20, Lane.RETRYABLE, DEFAULT_BACKOFF, rng, remaining=50)
        assert 150 <= delay <= 300
        assert 0 <= retry_delay(1, Lane.RETRYABLE, DEFAULT_BACKOFF, rng, remaining=50) <= 1
        delay = retry_delay(20, Lane.RETRYABLE, DEFAULT_BACKOFF, rng, retry_after=200, remaining=50)
        assert delay >= 200


backoffs = st.builds(
    BackoffPolicy,
    initial_seconds=st.floats(min_value=0.001, max_value=60),
    max_seconds=st.floats(min_value=60, max_value=3600),
    multiplier=st.floats(min_value=1, max_value=10),
)
retry_afters = st.none() | st.floats(min_value=0, max_value=1e7)


def _floor(retry_after: float | None) -> float:
    return 0.0 if retry_after is None else min(retry_after, RETRY_AFTER_CAP_SECONDS)


@given(
    failures=st.integers(min_value=1, max_value=10_000),
    backoff=backoffs,
    retry_after=retry_afters,
    failing_for=st.floats(min_value=0, max_value=1e6),
    seed=st.integers(),
)
def test_backoff_never_above_the_cap_nor_below_retry_after(
    failures: int,
    backoff: BackoffPolicy,
    retry_after: float | None,
    failing_for: float,
    seed: int,
) -> None:
    delay = retry_delay(
        failures,
        Lane.RETRYABLE,
        backoff,
        Random(seed),
        retry_after=retry_after,
        failing_for=failing_for,
    )
    floor = _floor(retry_after)
    assert floor <= delay <= max(backoff.max_seconds, floor)


@given(
    failures=st.integers(min_value=1, max_value=10_000),
    backoff=backoffs,
    failing_for=st.floats(min_value=0, max_value=1e6),
)
def test_ceiling_never_below_the_time_spent_failing_capped(
    failures: int, backoff: BackoffPolicy, failing_for: float
) -> None:
    ceiling = backoff_ceiling(failures, backoff, failing_for)
    assert min(backoff.max_seconds, failing_for) <= ceiling <= backoff.max_seconds
    assert ceiling >= backoff_ceiling(failures, backoff)


@given(
    failures=st.integers(min_value=1, max_value=10_000),
    backoff=backoffs,
    failing_for=st.floats(min_value=0, max_value=1e6),
    seed=st.integers(),
)
def test_at_the_cap_the_draw_is_between_half_the_cap_and_the_cap(
    failures: int, backoff: BackoffPolicy, failing_for: float, seed: int
) -> None:
    delay = retry_delay(failures, Lane.RETRYABLE, backoff, Random(seed), failing_for=failing_for)
    if backoff_ceiling(failures, backoff, failing_for) >= backoff.max_seconds:
        assert backoff.max_seconds / 2 <= delay <= backoff.max_seconds
    else:
        assert 0 <= delay < backoff.max_seconds


@given(
    failures=st.integers(min_value=1, max_value=100),
    lane=st.sampled_from(list(Lane)),
    backoff=backoffs,
    retry_after=retry_afters,
    remaining=st.floats(min_value=0, max_value=1e5),
    failing_for=st.floats(min_value=0, max_value=1e5),
    seed=st.integers(),
)
def test_a_patient_wait_never_passes_retry_after_nor_the_expiry_rule(
    failures: int,
    lane: Lane,
    backoff: BackoffPolicy,
    retry_after: float | None,
    remaining: float,
    failing_for: float,
    seed: int,
) -> None:
    """Patient (r/2 ≥ max(initial, max/10)): in [r/4, r/2], unless Retry-After asks for more."""
    delay = retry_delay(
        failures,
        lane,
        backoff,
        Random(seed),
        retry_after=retry_after,
        remaining=remaining,
        failing_for=failing_for,
    )
    floor = _floor(retry_after)
    assert delay >= floor
    if remaining / 2 >= max(backoff.initial_seconds, backoff.max_seconds / 10):
        assert max(remaining / 4, floor) <= delay <= max(remaining / 2, floor)
        if floor < remaining:
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
