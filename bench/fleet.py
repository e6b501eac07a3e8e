"""Discrete-event simulation of a fleet of sidecars refreshing against one upstream.

Every simulated sidecar behaves like the daemon: its first request goes out at its
start time; a success gives a token valid for ``lifetime`` seconds from the send and
schedules the next attempt ``next_refresh`` seconds after the send (``first=True`` for
the first token the sidecar obtains); a failure counts one more consecutive failure and
schedules a retry ``retry_delay`` seconds later, with ``remaining`` = validity left on
the token on disk (or None) and ``failing_for`` = seconds since the first failure of
the current streak. A success resets both. Requests take zero virtual time.

The clock is virtual: a heap of ``(time, sidecar)`` events, one pending event per
sidecar, no sleeping. All randomness comes from one master seed (per-sidecar
``random.Random`` streams, start times and the upstream's own stream), so a run is
reproducible and both strategies see the same start times.

Strategies: ``OurPolicy`` calls :mod:`sidecar.policy` (nothing is copied);
``FixedInterval`` is the baseline (refresh at exactly 80 % of the lifetime, retry
every 5 s flat on any failure).

The upstream has a fixed-window rate limit that applies for the whole run, not only
inside a failure window: a request above R in its 1-second window is answered
LIMIT_EXCEEDED (with ``Retry-After`` when ``--limit-retry-after`` says so) and does
not count against the window. So an upstream that comes back after an outage does not
accept everything at once.

Scenarios (all with a 1 h token lifetime and a rollout of the whole fleet within 10 s):
  a  24 h without failures and without a rate limit.
  b  every request fails (SERVICE_UNAVAILABLE, retryable, no Retry-After) for 30 min
     from each of the ``--starts`` (hours), then the upstream recovers; run until 1.5 h
     after the recovery. Rate limit R_b (default N/100 per second: the whole fleet in
     100 s) throughout, the rollout included.
  c  from 1 h to 7 h: 5 % of the accepted requests fail (retryable); rate limit
     R = 2 x the steady mean rate of our policy in scenario a, throughout (the rollout
     included).
Each scenario runs for every seed of ``--seeds`` (b: for every start too).

Usage: python bench/fleet.py [--sidecars 10000] [--seeds 1 2 3] [--starts 2 2.25 2.5 2.75]
                             [--scenario a|b|c|all] [--limit-retry-after 1|none]
                             [--b-rate-limit R] [--plot DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Protocol

if __package__ in (None, ""):  # run as a script: make the repository's `sidecar` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar import policy
from sidecar.policy import BackoffPolicy, Lane, RefreshPolicy

HOUR = 3600.0
LIFETIME = HOUR
ROLLOUT_SECONDS = 10.0
SETTLE_SECONDS = 60.0  # "after the rollout": rates measured from here on
SEEDS = (1, 2, 3)
OUTAGE_STARTS_HOURS = (2.0, 2.25, 2.5, 2.75)
OUTAGE_SECONDS = 30 * 60.0
AFTER_OUTAGE_SECONDS = 1.5 * HOUR
B_RATE_LIMIT_SHARE = 0.01  # of the fleet per second
FAULTS_START = 1 * HOUR
FAULTS_SECONDS = 6 * HOUR
RANDOM_FAIL_RATE = 0.05
LIMIT_RETRY_AFTER = 1.0
RECOVERY_SECONDS = 60.0  # "first minute after recovery"


# --- strategies -----------------------------------------------------------------------


class Strategy(Protocol):
    """What a sidecar decides: when to refresh after a success, when to retry after a failure."""

    @property
    def name(self) -> str: ...

    def next_refresh(self, lifetime: float, rng: Random, *, first: bool) -> float: ...

    def retry_delay(
        self,
        failures: int,
        lane: Lane,
        rng: Random,
        *,
        retry_after: float | None,
        remaining: float | None,
        failing_for: float,
    ) -> float: ...


@dataclass(frozen=True, slots=True)
class OurPolicy:
    """The daemon's policy: every decision is a call into :mod:`sidecar.policy`."""

    refresh: RefreshPolicy = field(default_factory=RefreshPolicy)
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    name: str = "ours"
    # Diagnostic switch: False hides the token's remaining validity from retry_delay,
    # which disables its patient-while-valid rule (used to attribute effects).
    patience: bool = True

    def next_refresh(self, lifetime: float, rng: Random, *, first: bool) -> float:
        return policy.next_refresh(lifetime, self.refresh, rng, first=first)

    def retry_delay(
        self,
        failures: int,
        lane: Lane,
        rng: Random,
        *,
        retry_after: float | None,
        remaining: float | None,
        failing_for: float,
    ) -> float:
        return policy.retry_delay(
            failures,
            lane,
            self.backoff,
            rng,
            retry_after=retry_after,
            remaining=remaining if self.patience else None,
            failing_for=failing_for,
        )


@dataclass(frozen=True, slots=True)
class FixedInterval:
    """Baseline: refresh at exactly ``at_fraction`` of the lifetime, retry every N s flat."""

    at_fraction: float = 0.8
    retry_seconds: float = 5.0
    name: str = "baseline"

    def next_refresh(self, lifetime: float, rng: Random, *, first: bool) -> float:
        return self.at_fraction * lifetime

    def retry_delay(
        self,
        failures: int,
        lane: Lane,
        rng: Random,
        *,
        retry_after: float | None,
        remaining: float | None,
        failing_for: float,
    ) -> float:
        return self.retry_seconds


# --- scenarios ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """The fleet and the upstream.

    ``window`` is the disturbance ``[start, end)``: inside it every request fails
    (``outage``), or accepted requests fail with ``fail_rate``. ``rate_limit`` applies
    for the whole run: requests above it per 1-second window get LIMIT_EXCEEDED with
    ``retry_after`` (None: no header).
    """

    key: str
    title: str
    horizon: float
    lifetime: float = LIFETIME
    rollout: float = ROLLOUT_SECONDS
    window: tuple[float, float] | None = None
    outage: bool = False
    fail_rate: float = 0.0
    rate_limit: float | None = None
    retry_after: float | None = LIMIT_RETRY_AFTER
    # Diagnostic: instead of a rollout, every sidecar starts at 0 already holding a token
    # obtained U(0, warm_age) seconds earlier (as after a restart that kept tokens); its
    # first attempt is when its strategy's schedule says, measured from that token.
    warm_age: float | None = None


def scenario_a(horizon: float = 24 * HOUR) -> Scenario:
    return Scenario("a", "rollout in 10 s, 24 h, no failures, no rate limit", horizon)


def scenario_b(
    start: float = OUTAGE_STARTS_HOURS[0] * HOUR,
    duration: float = OUTAGE_SECONDS,
    *,
    rate_limit: float | None = None,
    retry_after: float | None = LIMIT_RETRY_AFTER,
    horizon: float | None = None,
) -> Scenario:
    limit = "" if rate_limit is None else f", rate limit {rate_limit:g}/s throughout"
    return Scenario(
        "b",
        f"outage {start / HOUR:g} h to {(start + duration) / HOUR:g} h "
        f"(SERVICE_UNAVAILABLE){limit}",
        start + duration + AFTER_OUTAGE_SECONDS if horizon is None else horizon,
        window=(start, start + duration),
        outage=True,
        rate_limit=rate_limit,
        retry_after=retry_after,
    )


def scenario_c(
    rate_limit: float,
    start: float = FAULTS_START,
    duration: float = FAULTS_SECONDS,
    fail_rate: float = RANDOM_FAIL_RATE,
    retry_after: float | None = LIMIT_RETRY_AFTER,
) -> Scenario:
    header = "no Retry-After" if retry_after is None else f"Retry-After: {retry_after:g}"
    return Scenario(
        "c",
        f"{fail_rate:.0%} failures {start / HOUR:g} h to {(start + duration) / HOUR:g} h, "
        f"rate limit R={rate_limit:.2f}/s ({math.floor(rate_limit)} accepted per second, "
        f"{header}) throughout",
        start + duration,
        window=(start, start + duration),
        fail_rate=fail_rate,
        rate_limit=rate_limit,
        retry_after=retry_after,
    )


# --- simulation -----------------------------------------------------------------------


@dataclass(slots=True)
class Result:
    strategy: str
    scenario: str
    n: int
    seed: int
    horizon: float
    window: tuple[float, float] | None
    requests_per_second: list[int]
    failures_per_second: list[int]
    requests: int
    failures: int
    limited: int  # LIMIT_EXCEEDED answers (part of failures)
    limited_in_window: int
    random_failures_in_window: int  # accepted, then failed at random (fail_rate)
    window_requests: list[int]  # per sidecar: requests sent inside the window
    # Sidecar-seconds without a valid token (counted from each sidecar's start), split by
    # the window: before it, inside it, after it (until the horizon).
    stale_before: float
    stale_during: float
    stale_after: float
    stale_after_first_token: float  # whole run, only after each sidecar's first success
    first_token: list[float]  # per sidecar: time of its first success (inf: none)
    spacing_min: list[float]  # per sidecar: shortest time between two successes (inf: < 2)
    spacing_max: list[float]  # per sidecar: longest time between two successes (0: < 2)
    # Seconds from the window's end until every sidecar holds a valid token
    # (None: some sidecar still had none at the horizon).
    all_valid_after_window: float | None
    stale_at_end: int  # sidecars without a valid token at the horizon
    # Per sidecar: first success at or after the window's end (inf: none), and whether
    # the token on disk was still valid at the window's end.
    recovered_at: list[float]
    valid_at_window_end: list[bool]


class _Gaps:
    """Accumulates intervals during which a sidecar held no valid token."""

    def __init__(self, w0: float, w1: float, horizon: float) -> None:
        self.w0, self.w1, self.horizon = w0, w1, horizon
        self.before = self.during = self.after = self.after_first = 0.0
        self.last_end_after_window = w1
        self.open_after_window = False

    def add(self, start: float, end: float, *, after_first: bool, open_end: bool = False) -> None:
        w0, w1 = self.w0, self.w1
        self.before += max(0.0, min(end, w0) - start)
        self.during += max(0.0, min(end, w1) - max(start, w0))
        self.after += max(0.0, end - max(start, w1))
        if after_first:
            self.after_first += end - start
        if end > w1:
            if open_end:
                self.open_after_window = True
            self.last_end_after_window = max(self.last_end_after_window, end)


# One flat loop on purpose: it runs millions of times, and locals are what make it fast.
def simulate(  # noqa: PLR0912, PLR0915
    strategy: Strategy, scenario: Scenario, n: int, seed: int
) -> Result:
    """Run ``n`` sidecars with ``strategy`` through ``scenario``; deterministic for ``seed``."""
    master = Random(seed)
    starts = [master.uniform(0.0, scenario.rollout) for _ in range(n)]
    rngs = [Random(master.getrandbits(64)) for _ in range(n)]
    upstream = Random(master.getrandbits(64))
    lifetime = scenario.lifetime
    inf = math.inf
    first_token = [inf] * n
    valid_until = starts[:]  # expiry of the token on disk; before the first: the start
    last_success = [-inf] * n
    if scenario.warm_age is not None:
        for i in range(n):
            obtained = -master.uniform(0.0, scenario.warm_age)
            first_token[i] = last_success[i] = obtained
            valid_until[i] = obtained + lifetime
            due = obtained + strategy.next_refresh(lifetime, rngs[i], first=False)
            starts[i] = max(0.0, due)

    horizon = scenario.horizon
    w0, w1 = scenario.window if scenario.window is not None else (math.inf, math.inf)
    outage = scenario.outage
    fail_rate = scenario.fail_rate
    limit = scenario.rate_limit if scenario.rate_limit is not None else math.inf
    limit_retry_after = scenario.retry_after
    next_refresh = strategy.next_refresh
    retry_delay = strategy.retry_delay
    retryable = Lane.RETRYABLE
    heapreplace = heapq.heapreplace

    seconds = math.ceil(horizon) + 1
    rps = [0] * seconds
    fps = [0] * seconds
    failures = [0] * n
    failing_since = [0.0] * n
    spacing_min = [inf] * n
    spacing_max = [0.0] * n
    window_requests = [0] * n
    recovered_at = [inf] * n
    valid_at_w1 = [False] * n
    gaps = _Gaps(w0, w1, horizon)
    requests = failed = limited = limited_window = random_window = 0
    limit_second = -1
    limit_count = 0

    heap = [(starts[i], i) for i in range(n)]
    heapq.heapify(heap)
    while heap:
        t, i = heap[0]
        if t >= horizon:
            break
        sec = int(t)
        rps[sec] += 1
        requests += 1
        retry_after: float | None = None
        inside = w0 <= t < w1
        if inside:
            window_requests[i] += 1
        if inside and outage:
            ok = False
        else:
            if sec != limit_second:
                limit_second, limit_count = sec, 0
            if limit_count + 1 > limit:
                ok = False
                retry_after = limit_retry_after
                limited += 1
                if inside:
                    limited_window += 1
            else:
                limit_count += 1
                ok = upstream.random() >= fail_rate if inside else True
                if not ok:
                    random_window += 1
        if ok:
            expiry = valid_until[i]
            if t > expiry:
                gaps.add(expiry, t, after_first=first_token[i] < inf)
            if t >= w1 and recovered_at[i] == inf:
                recovered_at[i] = t
                valid_at_w1[i] = expiry > w1
            previous = last_success[i]
            first = previous == -inf
            if first:
                first_token[i] = t
            else:
                spacing = t - previous
                spacing_min[i] = min(spacing_min[i], spacing)
                spacing_max[i] = max(spacing_max[i], spacing)
            last_success[i] = t
            failures[i] = 0
            valid_until[i] = t + lifetime
            delay = next_refresh(lifetime, rngs[i], first=first)
        else:
            failed += 1
            fps[sec] += 1
            count = failures[i] + 1
            failures[i] = count
            if count == 1:
                failing_since[i] = t
            expiry = valid_until[i]
            delay = retry_delay(
                count,
                retryable,
                rngs[i],
                retry_after=retry_after,
                remaining=expiry - t if expiry > t else None,
                failing_for=t - failing_since[i],
            )
        heapreplace(heap, (t + delay, i))

    stale_at_end = 0
    for i in range(n):
        if recovered_at[i] == inf:
            valid_at_w1[i] = valid_until[i] > w1
        if valid_until[i] < horizon:
            stale_at_end += 1
            gaps.add(valid_until[i], horizon, after_first=first_token[i] < inf, open_end=True)
    if gaps.open_after_window:
        all_valid: float | None = None
    else:
        all_valid = max(0.0, gaps.last_end_after_window - w1) if w1 < horizon else None

    return Result(
        strategy=strategy.name,
        scenario=scenario.key,
        n=n,
        seed=seed,
        horizon=horizon,
        window=scenario.window,
        requests_per_second=rps[: math.ceil(horizon)],
        failures_per_second=fps[: math.ceil(horizon)],
        requests=requests,
        failures=failed,
        limited=limited,
        limited_in_window=limited_window,
        random_failures_in_window=random_window,
        window_requests=window_requests,
        stale_before=gaps.before,
        stale_during=gaps.during,
        stale_after=gaps.after,
        stale_after_first_token=gaps.after_first,
        first_token=first_token,
        spacing_min=spacing_min,
        spacing_max=spacing_max,
        all_valid_after_window=all_valid,
        stale_at_end=stale_at_end,
        recovered_at=recovered_at,
        valid_at_window_end=valid_at_w1,
    )


# --- figures of one run ---------------------------------------------------------------


def peak_rps(result: Result, start: float = 0.0, end: float | None = None) -> int:
    """Most requests in one 1-second bucket of ``[start, end)``."""
    series = result.requests_per_second[int(start) : None if end is None else math.ceil(end)]
    return max(series, default=0)


def mean_rps(result: Result, start: float = 0.0, end: float | None = None) -> float:
    series = result.requests_per_second[int(start) : None if end is None else math.ceil(end)]
    return sum(series) / len(series) if series else 0.0


def window_span(result: Result) -> tuple[float, float]:
    if result.window is None:
        raise ValueError(f"scenario {result.scenario} has no disturbance window")
    return result.window


def rate_limit_for(result_a: Result) -> float:
    """R of scenario c: twice the steady mean rate of a fleet (after its rollout)."""
    return max(1.0, 2 * mean_rps(result_a, SETTLE_SECONDS))


def b_rate_limit_for(n: int) -> float:
    """R_b: the upstream serves 1 % of the fleet per second (the whole fleet in 100 s)."""
    return max(1.0, B_RATE_LIMIT_SHARE * n)


Figures = dict[str, float | None]


def figures_a(result: Result) -> Figures:
    lifetime = LIFETIME
    return {
        "steady_peak_rps": peak_rps(result, SETTLE_SECONDS),
        "peak_last_6h_rps": peak_rps(result, max(0.0, result.horizon - 6 * HOUR)),
        "mean_rps": mean_rps(result, SETTLE_SECONDS),
        "min_spacing_lifetimes": min(result.spacing_min) / lifetime,
        "max_spacing_lifetimes": max(result.spacing_max) / lifetime,
        "tokenless_after_first_token_s": result.stale_after_first_token,
    }


def figures_b(result: Result) -> Figures:
    w0, w1 = window_span(result)
    n = result.n
    lost = [
        t - w1
        for t, valid in zip(result.recovered_at, result.valid_at_window_end, strict=True)
        if not valid
    ]
    patient = [
        t - w1
        for t, valid, sent in zip(
            result.recovered_at, result.valid_at_window_end, result.window_requests, strict=True
        )
        if valid and sent
    ]
    return {
        "requests_per_sidecar": sum(result.window_requests) / n,
        "requests_per_sidecar_max": max(result.window_requests),
        "peak_outage_rps": peak_rps(result, w0, w1),
        "first_minute_mean_rps": mean_rps(result, w1, w1 + RECOVERY_SECONDS),
        "peak_1s_rps": peak_rps(result, w1, w1 + RECOVERY_SECONDS),
        "all_valid_after_recovery_s": result.all_valid_after_window,
        "tokenless_at_recovery_pct": 100 * len(lost) / n,
        "mean_recovery_s": _mean(lost) if lost else 0.0,
        "patient_fresh_token_after_s": _mean(patient) if patient else 0.0,
        "tokenless_during_outage_s": result.stale_during,
        "tokenless_after_recovery_s": result.stale_after,
        "limited": result.limited,
    }


def figures_c(result: Result) -> Figures:
    w0, w1 = window_span(result)
    sent = sum(result.requests_per_second[int(w0) : math.ceil(w1)])
    fails = sum(result.failures_per_second[int(w0) : math.ceil(w1)])
    n = result.n
    return {
        "tokenless_fraction": result.stale_during / (n * (w1 - w0)),
        "tokenless_s": result.stale_during,
        "requests_in_window": sent,
        "failed_fraction": fails / sent if sent else 0.0,
        "unavoidable_fraction": result.random_failures_in_window / sent if sent else 0.0,
        "avoidable_fraction": result.limited_in_window / sent if sent else 0.0,
        "peak_rps": peak_rps(result, w0, w1),
        "mean_rps": mean_rps(result, w0, w1),
    }


# --- aggregation ----------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _max(values: Sequence[float | None]) -> float | None:
    """Largest value; None (never reached) beats any number."""
    if any(v is None for v in values):
        return None
    return max(v for v in values if v is not None) if values else None


def _mean_of(values: Sequence[float | None]) -> float | None:
    if any(v is None for v in values):
        return None
    return _mean([v for v in values if v is not None])


def _min(values: Sequence[float | None]) -> float | None:
    numbers = [v for v in values if v is not None]
    return min(numbers) if numbers else None


# How the Done-when reads each figure over the runs: (key, label, how, goal).
Aggregate = tuple[str, str, Callable[[Sequence[float | None]], float | None], float | None]
AGGREGATES: dict[str, tuple[Aggregate, ...]] = {
    "a": (
        ("steady_peak_rps", "peak req/s after rollout (t >= 60 s), max over seeds", _max, 20),
        ("peak_last_6h_rps", "peak req/s in the last 6 h, max", _max, None),
        ("mean_rps", "mean req/s after rollout (24 h), mean", _mean_of, 3.72),
        ("min_spacing_lifetimes", "min refresh spacing / lifetime", _min, None),
        ("max_spacing_lifetimes", "max refresh spacing / lifetime", _max, None),
        ("tokenless_after_first_token_s", "sidecar-s without token after 1st token", _max, 0),
    ),
    "b": (
        ("requests_per_sidecar", "req/sidecar in outage, mean over runs", _mean_of, 6),
        ("requests_per_sidecar_max", "req/sidecar in outage, max", _max, None),
        ("peak_outage_rps", "peak req/s during outage, max", _max, None),
        ("first_minute_mean_rps", "1st minute after recovery: mean req/s, max", _max, 41.7),
        ("peak_1s_rps", "1st minute after recovery: busiest 1 s, max", _max, None),
        ("all_valid_after_recovery_s", "s from recovery until all hold a token, max", _max, 310),
        ("tokenless_at_recovery_pct", "% sidecars without token at recovery, mean", _mean_of, None),
        ("mean_recovery_s", "  ... their mean s until a token, mean", _mean_of, None),
        (
            "patient_fresh_token_after_s",
            "valid-at-recovery sidecars that failed: mean s to a fresh token",
            _mean_of,
            None,
        ),
        (
            "tokenless_during_outage_s",
            "sidecar-s without token during outage, mean",
            _mean_of,
            None,
        ),
        (
            "tokenless_after_recovery_s",
            "sidecar-s without token after recovery, mean",
            _mean_of,
            None,
        ),
        ("limited", "LIMIT_EXCEEDED answers, mean", _mean_of, None),
    ),
    "c": (
        ("tokenless_fraction", "sidecar-s without token / sidecar-s, max over seeds", _max, 0),
        ("tokenless_s", "sidecar-s without token, max", _max, None),
        ("requests_in_window", "requests in window, mean", _mean_of, None),
        ("failed_fraction", "failed / all requests, mean", _mean_of, 0.08),
        ("unavoidable_fraction", "  ... unavoidable (5 % random), mean", _mean_of, None),
        ("avoidable_fraction", "  ... avoidable (LIMIT_EXCEEDED), mean", _mean_of, None),
        ("peak_rps", "peak req/s (offered), max", _max, None),
        ("mean_rps", "mean req/s (offered), mean", _mean_of, None),
    ),
}
# What --json writes per scenario and strategy (the Done-when's figures).
JSON_KEYS = {
    "a": ("steady_peak_rps", "mean_rps"),
    "b": (
        "requests_per_sidecar_mean",
        "first_minute_mean_rps",
        "peak_1s_rps",
        "all_valid_after_recovery_s",
        "single_sidecar_requests",
    ),
    "c": ("tokenless_fraction", "failed_fraction"),
}


def aggregate(key: str, runs: Sequence[Figures]) -> Figures:
    """One figure per metric over the runs of one strategy in scenario ``key``."""
    return {name: how([run[name] for run in runs]) for name, _label, how, _goal in AGGREGATES[key]}


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    metric: str
    ours: float | None
    baseline: float | None
    goal: str = ""
    met: bool | None = None  # whether ours meets the goal


def rows_for(key: str, ours: Figures, base: Figures) -> list[Row]:
    rows = []
    for name, label, _how, goal in AGGREGATES[key]:
        value = ours[name]
        percent = name.endswith("_fraction")
        scale = 100.0 if percent else 1.0

        def shown(v: float | None, scale: float = scale) -> float | None:
            return None if v is None else scale * v

        met = None
        goal_text = ""
        if goal is not None:
            met = value is not None and value <= goal + 1e-9
            goal_text = f"<= {100 * goal:g} %" if percent else f"<= {goal:g}"
        label_text = label + (" (%)" if percent else "")
        rows.append(Row(key, label_text, shown(value), shown(base[name]), goal_text, met))
    return rows


def attempts_while_failing(
    strategy: Strategy,
    duration: float,
    remaining: float | None,
    draws: int = 10_000,
    seed: int = 1,
) -> tuple[float, int]:
    """Requests of one sidecar whose every attempt fails for ``duration`` s (mean, max).

    ``remaining``: validity left on its token when the first attempt fails (None: none).
    """
    rng = Random(seed)
    total = worst = 0
    for _ in range(draws):
        t = 0.0
        sent = 0
        while t < duration:
            sent += 1
            left = remaining - t if remaining is not None and remaining > t else None
            t += strategy.retry_delay(
                sent, Lane.RETRYABLE, rng, retry_after=None, remaining=left, failing_for=t
            )
        total += sent
        worst = max(worst, sent)
    return total / draws, worst


SINGLE_CASES = (("no valid token", None), ("token valid 15 min", 15 * 60.0))


def single_sidecar(strategy: Strategy, draws: int, seed: int) -> list[tuple[float, int]]:
    """Mean and max requests of one sidecar failing through a whole outage, per case."""
    return [
        attempts_while_failing(strategy, OUTAGE_SECONDS, remaining, draws, seed)
        for _label, remaining in SINGLE_CASES
    ]


def single_rows(ours: list[tuple[float, int]], base: list[tuple[float, int]]) -> list[Row]:
    rows = []
    for (label, _), (mean_ours, max_ours), (mean_base, max_base) in zip(
        SINGLE_CASES, ours, base, strict=True
    ):
        metric = f"1 sidecar failing all {OUTAGE_SECONDS / 60:g} min, {label}: req mean"
        rows.append(Row("b", metric, mean_ours, mean_base, "<= 25", mean_ours <= 25))
        rows.append(Row("b", "  ... req max", max_ours, max_base))
    return rows


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def format_table(rows: Sequence[Row]) -> str:
    header = ("scenario", "metric", "ours", "baseline", "goal", "met")
    body = [
        (
            r.scenario,
            r.metric,
            _fmt(r.ours),
            _fmt(r.baseline),
            r.goal or "-",
            "-" if r.met is None else ("yes" if r.met else "NO"),
        )
        for r in rows
    ]
    return _columns(header, body, right={2, 3})


def _columns(header: Sequence[str], body: Sequence[Sequence[str]], right: set[int]) -> str:
    widths = [max(len(line[k]) for line in [header, *body]) for k in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if k in right else c.ljust(w)
            for k, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(b) for b in body)])


B_RUN_COLUMNS = (
    ("requests_per_sidecar", "req/sc"),
    ("first_minute_mean_rps", "1st-min mean"),
    ("peak_1s_rps", "1-s peak"),
    ("all_valid_after_recovery_s", "all valid s"),
    ("tokenless_at_recovery_pct", "% tokenless"),
    ("mean_recovery_s", "recovery s"),
)


def format_b_runs(runs: Sequence[BRun]) -> str:
    """One line per outage start and seed: what a single run would have shown."""
    header = ["start h", "seed"] + [
        f"{label} {who}" for _, label in B_RUN_COLUMNS for who in ("ours", "base")
    ]
    body = [
        [f"{run.start / HOUR:g}", str(run.seed)]
        + [_fmt(f[key]) for key, _ in B_RUN_COLUMNS for f in (run.ours, run.base)]
        for run in runs
    ]
    return _columns(header, body, right=set(range(2, len(header))))


# --- plots ----------------------------------------------------------------------------


def plot(scenario: Scenario, ours: Result, base: Result, path: Path) -> None:
    """One PNG: requests per second over the whole run and around the interesting part."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if scenario.window is not None:
        w0, w1 = scenario.window
        zoom = (w0 - 5 * 60, w1 + 15 * 60) if scenario.outage else (w0, min(w1, w0 + 2 * HOUR))
    else:
        zoom = (0.0, 3 * HOUR)

    fig, axes = plt.subplots(2, 1, figsize=(12, 8), constrained_layout=True)
    for ax, (lo, hi), unit, scale in (
        (axes[0], (0.0, scenario.horizon), "h", HOUR),
        (axes[1], zoom, "min", 60.0),
    ):
        for result, colour in ((base, "tab:red"), (ours, "tab:blue")):
            series = result.requests_per_second[int(lo) : math.ceil(hi)]
            xs = [(int(lo) + k) / scale for k in range(len(series))]
            ax.plot(xs, series, lw=0.7, color=colour, label=f"{result.strategy} ({_label(result)})")
        if scenario.window is not None:
            ax.axvspan(scenario.window[0] / scale, scenario.window[1] / scale, color="0.85")
        if scenario.rate_limit is not None:
            ax.axhline(math.floor(scenario.rate_limit), color="k", ls="--", lw=0.8, label="R")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(bottom=0)
        ax.set_xlim(lo / scale, hi / scale)
        ax.set_xlabel(f"time ({unit})")
        ax.set_ylabel("requests / s")
        ax.grid(visible=True, which="both", alpha=0.3)
        ax.legend(loc="upper right")
    axes[0].set_title(f"scenario {scenario.key}: {scenario.title} — N = {ours.n}, seed {ours.seed}")
    axes[1].set_title("zoom" + (" (grey: disturbance)" if scenario.window else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(result: Result) -> str:
    return f"{result.requests:,} requests"


# --- command line ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BRun:
    start: float
    seed: int
    ours: Figures
    base: Figures


@dataclass(slots=True)
class Bench:
    """Everything one invocation simulates, and the figures it reports."""

    n: int
    seeds: Sequence[int]
    starts: Sequence[float]  # seconds
    ours_strategy: OurPolicy
    base_strategy: FixedInterval
    limit_retry_after: float | None = LIMIT_RETRY_AFTER
    b_rate_limit: float | None = None
    plot_dir: Path | None = None
    aggregated: dict[str, dict[str, Figures]] = field(default_factory=dict)
    rows: dict[str, list[Row]] = field(default_factory=dict)
    b_runs: list[BRun] = field(default_factory=list)
    c_rate_limits: list[float] = field(default_factory=list)
    wall: dict[str, float] = field(default_factory=dict)

    def _pair(self, scenario: Scenario, seed: int) -> tuple[Result, Result]:
        ours = simulate(self.ours_strategy, scenario, self.n, seed)
        base = simulate(self.base_strategy, scenario, self.n, seed)
        if self.plot_dir is not None and seed == self.seeds[0]:
            name = f"fleet-{scenario.key}.png"
            if scenario.key != "b" or scenario.window == (
                self.starts[0],
                self.starts[0] + OUTAGE_SECONDS,
            ):
                plot(scenario, ours, base, self.plot_dir / name)
        return ours, base

    def run(self, key: str) -> None:
        began = time.perf_counter()
        ours_runs: list[Figures] = []
        base_runs: list[Figures] = []
        if key == "a":
            for seed in self.seeds:
                ours, base = self._pair(scenario_a(), seed)
                ours_runs.append(figures_a(ours))
                base_runs.append(figures_a(base))
        elif key == "b":
            limit = self.b_rate_limit if self.b_rate_limit is not None else b_rate_limit_for(self.n)
            for start in self.starts:
                for seed in self.seeds:
                    scenario = scenario_b(
                        start, rate_limit=limit, retry_after=self.limit_retry_after
                    )
                    ours, base = self._pair(scenario, seed)
                    run = BRun(start, seed, figures_b(ours), figures_b(base))
                    self.b_runs.append(run)
                    ours_runs.append(run.ours)
                    base_runs.append(run.base)
        else:
            for seed in self.seeds:
                rate = rate_limit_for(simulate(self.ours_strategy, scenario_a(), self.n, seed))
                self.c_rate_limits.append(rate)
                ours, base = self._pair(scenario_c(rate, retry_after=self.limit_retry_after), seed)
                ours_runs.append(figures_c(ours))
                base_runs.append(figures_c(base))
        ours_fig, base_fig = aggregate(key, ours_runs), aggregate(key, base_runs)
        rows = rows_for(key, ours_fig, base_fig)
        if key == "b":
            draws = max(100, min(self.n, 10_000))
            single_ours = single_sidecar(self.ours_strategy, draws, self.seeds[0])
            single_base = single_sidecar(self.base_strategy, draws, self.seeds[0])
            rows += single_rows(single_ours, single_base)
            for figures, single in ((ours_fig, single_ours), (base_fig, single_base)):
                figures["requests_per_sidecar_mean"] = figures["requests_per_sidecar"]
                figures["single_sidecar_requests"] = max(mean for mean, _ in single)
        self.aggregated[key] = {"ours": ours_fig, "baseline": base_fig}
        self.rows[key] = rows
        self.wall[key] = time.perf_counter() - began

    def report(self) -> dict[str, dict[str, dict[str, float | None]]]:
        """The --json document: per scenario, per strategy, the Done-when's figures."""
        return {
            key: {
                who: {name: _plain(figures[name]) for name in JSON_KEYS[key]}
                for who, figures in by_strategy.items()
            }
            for key, by_strategy in self.aggregated.items()
        }


def _plain(value: float | None) -> float | None:
    return None if value is None else float(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sidecars", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), metavar="SEED")
    parser.add_argument(
        "--starts",
        type=float,
        nargs="+",
        default=list(OUTAGE_STARTS_HOURS),
        metavar="HOURS",
        help="outage start times of scenario b, in hours",
    )
    parser.add_argument("--scenario", choices=["a", "b", "c", "all"], default="all")
    parser.add_argument(
        "--limit-retry-after",
        default="1",
        metavar="SECONDS|none",
        help="Retry-After of the rate limit's LIMIT_EXCEEDED (an assumption: the API "
        "documents no such header); 'none' sends none",
    )
    parser.add_argument(
        "--b-rate-limit",
        type=float,
        metavar="R",
        help="rate limit of scenario b in req/s (default: 1 %% of the fleet per second)",
    )
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write one PNG per scenario")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures as JSON")
    args = parser.parse_args(argv)
    n: int = args.sidecars
    if n < 1:
        parser.error("--sidecars must be at least 1")
    if args.limit_retry_after.lower() == "none":
        retry_after: float | None = None
    else:
        try:
            retry_after = float(args.limit_retry_after)
        except ValueError:
            parser.error("--limit-retry-after must be a number of seconds or 'none'")
    bench = Bench(
        n=n,
        seeds=args.seeds,
        starts=[h * HOUR for h in args.starts],
        ours_strategy=OurPolicy(),
        base_strategy=FixedInterval(),
        limit_retry_after=retry_after,
        b_rate_limit=args.b_rate_limit,
        plot_dir=args.plot,
    )
    began = time.perf_counter()
    for key in ["a", "b", "c"] if args.scenario == "all" else [args.scenario]:
        bench.run(key)
        print(f"scenario {key}: {bench.wall[key]:.1f} s", file=sys.stderr)
    total = time.perf_counter() - began

    seeds = ", ".join(str(s) for s in bench.seeds)
    print(f"fleet of {n:,} sidecars, seeds {seeds}; requests take 0 s of virtual time")
    header = "none" if retry_after is None else f"{retry_after:g} s"
    print(f"rate limits answer LIMIT_EXCEEDED with Retry-After: {header}")
    if "b" in bench.rows:
        limit = args.b_rate_limit if args.b_rate_limit is not None else b_rate_limit_for(n)
        starts = ", ".join(f"{h:g}" for h in args.starts)
        print(f"  b: 30-min outage from {starts} h; rate limit {limit:g} req/s throughout")
    if bench.c_rate_limits:
        rates = ", ".join(f"{r:.2f}" for r in bench.c_rate_limits)
        print(f"  c: 5 % failures 1-7 h; rate limit R = {rates} req/s (per seed) throughout")
    print()
    print(format_table([row for rows in bench.rows.values() for row in rows]))
    if bench.b_runs:
        print()
        print("scenario b, run by run:")
        print(format_b_runs(bench.b_runs))
    print()
    print(f"wall time {total:.1f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(bench.report(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
