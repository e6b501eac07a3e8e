"""Discrete-event simulation of a fleet of sidecars refreshing against one upstream.

Every simulated sidecar behaves like the daemon: its first request goes out at its
start time; a success gives a token valid for ``lifetime`` seconds from the send and
schedules the next attempt ``next_refresh`` seconds after the send; a failure counts
one more consecutive failure and schedules a retry ``retry_delay`` seconds later
(with ``remaining`` = validity left on the token on disk, or None). A success resets
the failure count. Requests take zero virtual time.

The clock is virtual: a heap of ``(time, sidecar)`` events, one pending event per
sidecar, no sleeping. All randomness comes from one master seed (per-sidecar
``random.Random`` streams, start times and the upstream's own stream), so a run is
reproducible and both strategies see the same start times.

Strategies: ``OurPolicy`` calls :mod:`sidecar.policy` (nothing is copied);
``FixedInterval`` is the baseline (refresh at exactly 80 % of the lifetime, retry
every 5 s flat on any failure).

Scenarios (all with a 1 h token lifetime and a rollout of the whole fleet within 10 s):
  a  24 h without failures.
  b  every request fails (SERVICE_UNAVAILABLE, retryable, no Retry-After) from 2 h to
     2.5 h, then the upstream recovers; run until 4 h.
  c  from 1 h to 7 h (the fleet has been running for an hour): 5 % of the accepted
     requests fail (retryable) and a fixed-window rate limit answers LIMIT_EXCEEDED with
     ``Retry-After: 1`` to any request above R per 1-second window (R = 2 x the steady
     mean rate of our policy in scenario a).

Usage: python bench/fleet.py [--sidecars 10000] [--seed 1] [--scenario a|b|c|all]
                             [--plot DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
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
OUTAGE_START = 2 * HOUR
OUTAGE_SECONDS = 30 * 60.0
FAULTS_START = 1 * HOUR
FAULTS_SECONDS = 6 * HOUR
RANDOM_FAIL_RATE = 0.05
RECOVERY_PEAK_SECONDS = 60.0  # peak rate measured in this span after recovery


# --- strategies -----------------------------------------------------------------------


class Strategy(Protocol):
    """What a sidecar decides: when to refresh after a success, when to retry after a failure."""

    @property
    def name(self) -> str: ...

    def next_refresh(self, lifetime: float, rng: Random) -> float: ...

    def retry_delay(
        self,
        failures: int,
        lane: Lane,
        rng: Random,
        *,
        retry_after: float | None,
        remaining: float | None,
    ) -> float: ...


@dataclass(frozen=True, slots=True)
class OurPolicy:
    """The daemon's policy: every decision is a call into :mod:`sidecar.policy`."""

    refresh: RefreshPolicy = field(default_factory=RefreshPolicy)
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    name: str = "ours"
    # Diagnostic switch: False hides the token's remaining validity from retry_delay,
    # which disables its "one more attempt before expiry" rule (used to attribute effects).
    rescue: bool = True

    def next_refresh(self, lifetime: float, rng: Random) -> float:
        return policy.next_refresh(lifetime, self.refresh, rng)

    def retry_delay(
        self,
        failures: int,
        lane: Lane,
        rng: Random,
        *,
        retry_after: float | None,
        remaining: float | None,
    ) -> float:
        return policy.retry_delay(
            failures,
            lane,
            self.backoff,
            rng,
            retry_after=retry_after,
            remaining=remaining if self.rescue else None,
        )


@dataclass(frozen=True, slots=True)
class FixedInterval:
    """Baseline: refresh at exactly ``at_fraction`` of the lifetime, retry every N s flat."""

    at_fraction: float = 0.8
    retry_seconds: float = 5.0
    name: str = "baseline"

    def next_refresh(self, lifetime: float, rng: Random) -> float:
        return self.at_fraction * lifetime

    def retry_delay(
        self,
        failures: int,
        lane: Lane,
        rng: Random,
        *,
        retry_after: float | None,
        remaining: float | None,
    ) -> float:
        return self.retry_seconds


# --- scenarios ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """The fleet and the upstream.

    ``window`` is the disturbance ``[start, end)``: inside it every request fails
    (``outage``), or requests above ``rate_limit`` per 1-second window get
    LIMIT_EXCEEDED with ``Retry-After`` and accepted ones fail with ``fail_rate``.
    Outside it every request succeeds.
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
    retry_after: float = 1.0
    # Diagnostic: instead of a rollout, every sidecar starts at 0 already holding a token
    # obtained U(0, warm_age) seconds earlier (as after a restart that kept tokens); its
    # first attempt is when its strategy's schedule says, measured from that token.
    warm_age: float | None = None


def scenario_a(horizon: float = 24 * HOUR) -> Scenario:
    return Scenario("a", "rollout in 10 s, 24 h, no failures", horizon)


def scenario_b(
    horizon: float = 4 * HOUR, start: float = OUTAGE_START, duration: float = OUTAGE_SECONDS
) -> Scenario:
    return Scenario(
        "b",
        f"outage {start / HOUR:g} h to {(start + duration) / HOUR:g} h (SERVICE_UNAVAILABLE)",
        horizon,
        window=(start, start + duration),
        outage=True,
    )


def scenario_c(
    rate_limit: float,
    start: float = FAULTS_START,
    duration: float = FAULTS_SECONDS,
    fail_rate: float = RANDOM_FAIL_RATE,
) -> Scenario:
    return Scenario(
        "c",
        f"{fail_rate:.0%} failures + rate limit R={rate_limit:.2f}/s "
        f"({math.floor(rate_limit)} accepted per second), {start / HOUR:g} h to "
        f"{(start + duration) / HOUR:g} h",
        start + duration,
        window=(start, start + duration),
        fail_rate=fail_rate,
        rate_limit=rate_limit,
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
            starts[i] = max(0.0, obtained + strategy.next_refresh(lifetime, rngs[i]))

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
    spacing_min = [inf] * n
    spacing_max = [0.0] * n
    window_requests = [0] * n
    gaps = _Gaps(w0, w1, horizon)
    requests = failed = limited = 0
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
        if w0 <= t < w1:
            window_requests[i] += 1
            if outage:
                ok = False
            else:
                if sec != limit_second:
                    limit_second, limit_count = sec, 0
                if limit_count + 1 > limit:
                    ok = False
                    retry_after = limit_retry_after
                    limited += 1
                else:
                    limit_count += 1
                    ok = upstream.random() >= fail_rate
        else:
            ok = True
        if ok:
            expiry = valid_until[i]
            if t > expiry:
                gaps.add(expiry, t, after_first=first_token[i] < inf)
            previous = last_success[i]
            if previous > -inf:
                spacing = t - previous
                spacing_min[i] = min(spacing_min[i], spacing)
                spacing_max[i] = max(spacing_max[i], spacing)
            else:
                first_token[i] = t
            last_success[i] = t
            failures[i] = 0
            valid_until[i] = t + lifetime
            delay = next_refresh(lifetime, rngs[i])
        else:
            failed += 1
            fps[sec] += 1
            count = failures[i] + 1
            failures[i] = count
            expiry = valid_until[i]
            delay = retry_delay(
                count,
                retryable,
                rngs[i],
                retry_after=retry_after,
                remaining=expiry - t if expiry > t else None,
            )
        heapreplace(heap, (t + delay, i))

    stale_at_end = 0
    for i in range(n):
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
    )


# --- metrics --------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    metric: str
    ours: float | None
    baseline: float | None
    goal: str = ""
    met: bool | None = None  # whether ours meets the goal


def _le(goal: float) -> Callable[[float | None], bool | None]:
    def check(value: float | None) -> bool | None:
        return None if value is None else value <= goal + 1e-9

    return check


def compare(scenario: Scenario, ours: Result, base: Result, backoff: BackoffPolicy) -> list[Row]:
    """The figures of one scenario, ours next to the baseline, with goals where there are."""
    n = ours.n
    rows: list[Row] = []

    def row(
        metric: str,
        get: Callable[[Result], float | None],
        goal: str = "",
        check: Callable[[float | None], bool | None] | None = None,
    ) -> None:
        value = get(ours)
        met = check(value) if check is not None else None
        rows.append(Row(scenario.key, metric, value, get(base), goal, met))

    if scenario.key == "a":
        row("peak req/s (incl. rollout)", peak_rps)
        row("peak req/s after rollout (t >= 60 s)", lambda r: peak_rps(r, SETTLE_SECONDS))
        row(
            "peak req/s in the last 6 h",
            lambda r: peak_rps(r, max(0.0, r.horizon - 6 * HOUR)),
        )
        row("mean req/s after rollout", lambda r: mean_rps(r, SETTLE_SECONDS))
        row(
            "min refresh spacing / lifetime",
            lambda r: min(r.spacing_min) / scenario.lifetime,
        )
        row(
            "max refresh spacing / lifetime",
            lambda r: max(r.spacing_max) / scenario.lifetime,
        )
        row(
            "sidecar-s without token after 1st token",
            lambda r: r.stale_after_first_token,
            "0",
            _le(0.0),
        )
        return rows

    w0, w1 = window_span(ours)
    if scenario.key == "b":
        peak_goal = 1.25 * n / backoff.max_seconds
        row(
            "req/sidecar in outage, mean (all)",
            lambda r: sum(r.window_requests) / n,
            "<= 25",
            _le(25.0),
        )
        row(
            "req/sidecar in outage, mean (those sending)",
            lambda r: _mean([c for c in r.window_requests if c]),
        )
        row("req/sidecar in outage, max", lambda r: max(r.window_requests))
        row(
            "sidecars sending during outage (%)",
            lambda r: 100 * sum(1 for c in r.window_requests if c) / n,
        )
        row("peak req/s during outage", lambda r: peak_rps(r, w0, w1))
        row(
            "peak req/s, 1st minute after recovery",
            lambda r: peak_rps(r, w1, w1 + RECOVERY_PEAK_SECONDS),
            f"<= {peak_goal:.1f}",
            _le(peak_goal),
        )
        row("peak req/s after recovery (to horizon)", lambda r: peak_rps(r, w1))
        row(
            "s from recovery until all hold a token",
            lambda r: r.all_valid_after_window,
        )
        row("sidecar-s without token during outage", lambda r: r.stale_during)
        row("sidecar-s without token after recovery", lambda r: r.stale_after)
        return rows

    # scenario c
    def window_failures(r: Result) -> float:
        fails = sum(r.failures_per_second[int(w0) : math.ceil(w1)])
        sent = sum(r.requests_per_second[int(w0) : math.ceil(w1)])
        return fails / sent if sent else 0.0

    row(
        "sidecar-s without token / sidecar-s (%)",
        lambda r: 100 * r.stale_during / (n * (w1 - w0)),
        "0",
        _le(0.0),
    )
    row("sidecar-s without token", lambda r: r.stale_during)
    row("requests in window", lambda r: sum(r.requests_per_second[int(w0) : math.ceil(w1)]))
    row("wasted: failed / all requests (%)", lambda r: 100 * window_failures(r))
    row("LIMIT_EXCEEDED answers", lambda r: r.limited)
    row("peak req/s (offered)", lambda r: peak_rps(r, w0, w1))
    row("mean req/s (offered)", lambda r: mean_rps(r, w0, w1))
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
            t += strategy.retry_delay(sent, Lane.RETRYABLE, rng, retry_after=None, remaining=left)
        total += sent
        worst = max(worst, sent)
    return total / draws, worst


def single_sidecar_rows(
    ours: Strategy, base: Strategy, duration: float, draws: int, seed: int
) -> list[Row]:
    """The worst case behind the 25-request goal: a sidecar failing through the whole outage."""
    rows: list[Row] = []
    for label, remaining in (("no valid token", None), ("token valid 15 min", 15 * 60.0)):
        (mean_ours, max_ours), (mean_base, _) = (
            attempts_while_failing(s, duration, remaining, draws, seed) for s in (ours, base)
        )
        metric = f"1 sidecar failing all {duration / 60:g} min, {label}: req mean"
        rows.append(Row("b", metric, mean_ours, mean_base, "<= 25", mean_ours <= 25))
        rows.append(Row("b", f"  ... req max (of {draws:,} draws)", max_ours, None))
    return rows


DIAGNOSTIC_METRICS = {
    "b": (
        "req/sidecar in outage, mean (all)",
        "req/sidecar in outage, max",
        "peak req/s, 1st minute after recovery",
        "s from recovery until all hold a token",
        "sidecar-s without token after recovery",
    ),
    "c": (
        "sidecar-s without token / sidecar-s (%)",
        "wasted: failed / all requests (%)",
        "peak req/s (offered)",
    ),
}


def diagnostics(
    scenario: Scenario, ours_strategy: OurPolicy, base: Result, n: int, seed: int
) -> list[Row]:
    """Variants that show what drives the figures of b and c.

    ``warm``: the fleet starts in spread-out phases instead of a 10-s rollout (the baseline
    is run warm too); ``no-rescue``: our policy without its pre-expiry rescue (the
    baseline column is then the normal baseline).
    """
    wanted = DIAGNOSTIC_METRICS[scenario.key]
    warm = replace(scenario, warm_age=0.7 * scenario.lifetime)
    base_warm = simulate(FixedInterval(), warm, n, seed)
    no_rescue = replace(ours_strategy, rescue=False)
    rows: list[Row] = []
    for label, strategy, variant, baseline in (
        ("warm", ours_strategy, warm, base_warm),
        ("no-rescue", no_rescue, scenario, base),
        ("warm, no-rescue", no_rescue, warm, base_warm),
    ):
        result = simulate(strategy, variant, n, seed)
        for row in compare(variant, result, baseline, ours_strategy.backoff):
            if row.metric in wanted:
                rows.append(replace(row, scenario=f"{scenario.key} {label}"))
    return rows


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


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
    widths = [max(len(line[k]) for line in [header, *body]) for k in range(len(header))]
    right = {2, 3}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if k in right else c.ljust(w)
            for k, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(b) for b in body)])


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
    axes[0].set_title(f"scenario {scenario.key}: {scenario.title} — N = {ours.n}")
    axes[1].set_title("zoom" + (" (grey: disturbance)" if scenario.window else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(result: Result) -> str:
    return f"{result.requests:,} requests"


# --- command line ---------------------------------------------------------------------


@dataclass(slots=True)
class ScenarioRun:
    scenario: Scenario
    ours: Result
    base: Result
    rows: list[Row]
    diagnostics: list[Row]
    wall_seconds: float

    def report(self) -> dict[str, object]:
        scenario = self.scenario
        return {
            "title": scenario.title,
            "horizon_seconds": scenario.horizon,
            "window": scenario.window,
            "rate_limit": scenario.rate_limit,
            "fail_rate": scenario.fail_rate,
            "requests": {"ours": self.ours.requests, "baseline": self.base.requests},
            "wall_seconds": round(self.wall_seconds, 2),
            "metrics": [_dict(r) for r in self.rows],
            "diagnostics": [_dict(r) for r in self.diagnostics],
        }


def run_scenario(
    key: str, n: int, seed: int, ours_strategy: OurPolicy, base_strategy: FixedInterval
) -> ScenarioRun:
    """Simulate both strategies in scenario ``key`` and compare them."""
    began = time.perf_counter()
    if key == "a":
        scenario = scenario_a()
    elif key == "b":
        scenario = scenario_b()
    else:
        scenario = scenario_c(rate_limit_for(simulate(ours_strategy, scenario_a(), n, seed)))
    ours = simulate(ours_strategy, scenario, n, seed)
    base = simulate(base_strategy, scenario, n, seed)
    rows = compare(scenario, ours, base, ours_strategy.backoff)
    if key == "b":
        draws = max(100, min(n, 10_000))
        rows += single_sidecar_rows(ours_strategy, base_strategy, OUTAGE_SECONDS, draws, seed)
    extra = diagnostics(scenario, ours_strategy, base, n, seed) if key in DIAGNOSTIC_METRICS else []
    return ScenarioRun(scenario, ours, base, rows, extra, time.perf_counter() - began)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sidecars", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenario", choices=["a", "b", "c", "all"], default="all")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write one PNG per scenario")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write all figures as JSON")
    args = parser.parse_args(argv)
    n: int = args.sidecars
    seed: int = args.seed
    if n < 1:
        parser.error("--sidecars must be at least 1")

    ours_strategy = OurPolicy()
    base_strategy = FixedInterval()
    began = time.perf_counter()
    runs: dict[str, ScenarioRun] = {}
    for key in ["a", "b", "c"] if args.scenario == "all" else [args.scenario]:
        run = runs[key] = run_scenario(key, n, seed, ours_strategy, base_strategy)
        print(f"scenario {key}: {run.wall_seconds:.1f} s", file=sys.stderr)
        if args.plot is not None:
            plot(run.scenario, run.ours, run.base, args.plot / f"fleet-{key}.png")
    total = time.perf_counter() - began

    print(f"fleet of {n:,} sidecars, seed {seed}, requests take 0 s of virtual time")
    for key, run in runs.items():
        print(f"  {key}: {run.scenario.title}")
    print()
    print(format_table([row for run in runs.values() for row in run.rows]))
    print()
    diagnostic_rows = [row for run in runs.values() for row in run.diagnostics]
    if diagnostic_rows:
        print("diagnostics: warm = fleet starts in spread-out phases (baseline too);")
        print("no-rescue = our policy without retry_delay's pre-expiry halving (remaining=None)")
        print()
        print(format_table(diagnostic_rows))
        print()
    print(f"wall time {total:.1f} s")
    if args.json is not None:
        report = {
            "sidecars": n,
            "seed": seed,
            "request_duration_seconds": 0.0,
            "ours": {
                "refresh": _dict(ours_strategy.refresh),
                "backoff": _dict(ours_strategy.backoff),
            },
            "baseline": {
                "at_fraction": base_strategy.at_fraction,
                "retry_seconds": base_strategy.retry_seconds,
            },
            "wall_seconds": round(total, 2),
            "scenarios": {key: run.report() for key, run in runs.items()},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


def _dict(obj: object) -> dict[str, object]:
    slots: Sequence[str] = getattr(obj, "__slots__", ())
    return {name: getattr(obj, name) for name in slots}


if __name__ == "__main__":
    raise SystemExit(main())
