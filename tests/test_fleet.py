"""The fleet simulation (bench/fleet.py): small fleets, short horizons, real properties."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from random import Random

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fleet
from sidecar import policy
from sidecar.fake_api import FakeApi
from sidecar.policy import BackoffPolicy, RefreshPolicy
from tests.conftest import Sidecar, base_env, write_config

N = 200
SEED = 7
LIFETIME = fleet.LIFETIME
OUTAGE = fleet.scenario_b(horizon=3 * fleet.HOUR)


def test_steady_fleet_always_holds_a_token_and_spreads_its_first_refresh() -> None:
    result = fleet.simulate(fleet.OurPolicy(), fleet.scenario_a(horizon=6 * fleet.HOUR), N, SEED)

    assert result.failures == 0
    assert all(t < fleet.ROLLOUT_SECONDS for t in result.first_token)
    assert result.stale_after_first_token == 0
    assert result.stale_at_end == 0
    assert result.requests >= N * 7
    # The first token is refreshed anywhere in [0.1, 0.8] x lifetime, later ones in [0.7, 0.8].
    assert all(s >= 0.1 * LIFETIME - 1e-6 for s in result.spacing_min)
    assert all(s <= 0.8 * LIFETIME + 1e-6 for s in result.spacing_max)
    assert min(result.spacing_min) < 0.15 * LIFETIME
    assert sum(1 for s in result.spacing_min if s < 0.7 * LIFETIME) > N * 0.7


def test_baseline_refreshes_at_exactly_80_percent_and_stays_synchronised() -> None:
    scenario = fleet.scenario_a(horizon=4 * fleet.HOUR)
    base = fleet.simulate(fleet.FixedInterval(), scenario, N, SEED)
    ours = fleet.simulate(fleet.OurPolicy(), scenario, N, SEED)

    assert {round(s, 6) for s in base.spacing_min + base.spacing_max} == {0.8 * LIFETIME}
    # The whole fleet comes back within the 10-s rollout window, cycle after cycle.
    after = fleet.SETTLE_SECONDS
    assert fleet.peak_rps(base, after) >= N / fleet.ROLLOUT_SECONDS / 2
    assert fleet.peak_rps(ours, after) < fleet.peak_rps(base, after) / 5


def test_outage_our_policy_sends_far_fewer_requests_and_a_lower_recovery_peak() -> None:
    ours = fleet.simulate(fleet.OurPolicy(), OUTAGE, N, SEED)
    base = fleet.simulate(fleet.FixedInterval(), OUTAGE, N, SEED)
    w0, w1 = fleet.window_span(ours)

    assert sum(ours.window_requests) * 3 < sum(base.window_requests)
    assert sum(ours.window_requests) / N <= 6
    # Baseline: 5-s flat retries from its synchronised refresh at 2.4 h to the end.
    assert max(base.window_requests) == pytest.approx((w1 - 2.4 * fleet.HOUR) / 5, abs=2)
    recovery = (w1, w1 + fleet.RECOVERY_SECONDS)
    assert fleet.peak_rps(ours, *recovery) < fleet.peak_rps(base, *recovery)
    # Everyone gets a token again, ours within one backoff cap of the recovery.
    assert ours.all_valid_after_window is not None
    assert ours.all_valid_after_window <= BackoffPolicy().max_seconds
    assert ours.stale_at_end == 0
    # Every request inside the outage failed; none outside it did.
    inside = sum(ours.requests_per_second[int(w0) : int(w1)])
    assert ours.failures == inside == sum(ours.window_requests)


def test_patient_sidecars_keep_their_token_and_the_others_recover_at_the_cap() -> None:
    ours = fleet.simulate(fleet.OurPolicy(), OUTAGE, N, SEED)
    _, w1 = fleet.window_span(ours)
    figures = fleet.figures_b(ours)

    lost = [
        t - w1
        for t, valid in zip(ours.recovered_at, ours.valid_at_window_end, strict=True)
        if not valid
    ]
    assert 0 < len(lost) < N
    assert figures["tokenless_at_recovery_pct"] == pytest.approx(100 * len(lost) / N)
    # Equal jitter at the cap: a sidecar without a token waits at most backoff.max_seconds.
    assert max(lost) <= BackoffPolicy().max_seconds
    assert figures["mean_recovery_s"] == pytest.approx(sum(lost) / len(lost))
    # A patient sidecar gets its fresh token later than one that lost its token, never late.
    assert figures["patient_fresh_token_after_s"] is not None
    assert figures["patient_fresh_token_after_s"] > 0
    # Those are not the only gaps: a token with under 2 x 30 s left is not waited for.
    assert ours.stale_after >= sum(lost) - 1e-6


def test_a_rate_limit_throttles_after_recovery_and_outside_the_window() -> None:
    scenario = fleet.scenario_b(rate_limit=4.0, horizon=3 * fleet.HOUR)
    for strategy in (fleet.OurPolicy(), fleet.FixedInterval()):
        result = fleet.simulate(strategy, scenario, N, SEED)
        w0, w1 = fleet.window_span(result)
        accepted = [
            sent - failed
            for sent, failed in zip(
                result.requests_per_second, result.failures_per_second, strict=True
            )
        ]
        assert max(accepted) <= 4
        # The rollout itself (before the window) is throttled too.
        assert sum(result.failures_per_second[: int(w0)]) > 0
        assert result.limited > 0
    base = fleet.simulate(fleet.FixedInterval(), scenario, N, SEED)
    unlimited = fleet.simulate(fleet.FixedInterval(), OUTAGE, N, SEED)
    # The synchronised baseline pays for its wave after recovery.
    assert sum(base.requests_per_second[int(w1) :]) > sum(unlimited.requests_per_second[int(w1) :])


def test_simulation_is_deterministic_for_a_seed() -> None:
    first = fleet.simulate(fleet.OurPolicy(), OUTAGE, N, SEED)
    again = fleet.simulate(fleet.OurPolicy(), OUTAGE, N, SEED)
    other = fleet.simulate(fleet.OurPolicy(), OUTAGE, N, SEED + 1)

    assert first == again
    assert first.requests_per_second != other.requests_per_second


def test_our_strategy_calls_the_project_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"next_refresh": 0, "first": 0, "retry_delay": 0, "failing_for": 0}
    real_next, real_retry = policy.next_refresh, policy.retry_delay

    def next_refresh(
        lifetime: float, refresh: RefreshPolicy, rng: Random, *, first: bool = False
    ) -> float:
        calls["next_refresh"] += 1
        calls["first"] += first
        return real_next(lifetime, refresh, rng, first=first)

    def retry_delay(
        failures: int,
        lane: policy.Lane,
        backoff: BackoffPolicy,
        rng: Random,
        *,
        retry_after: float | None = None,
        remaining: float | None = None,
        failing_for: float = 0.0,
    ) -> float:
        calls["retry_delay"] += 1
        calls["failing_for"] += failing_for > 0
        return real_retry(
            failures,
            lane,
            backoff,
            rng,
            retry_after=retry_after,
            remaining=remaining,
            failing_for=failing_for,
        )

    monkeypatch.setattr(policy, "next_refresh", next_refresh)
    monkeypatch.setattr(policy, "retry_delay", retry_delay)
    result = fleet.simulate(fleet.OurPolicy(), OUTAGE, 20, SEED)

    assert calls["retry_delay"] == result.failures > 0
    assert calls["next_refresh"] == result.requests - result.failures
    assert calls["first"] == 20  # one first token per sidecar
    assert calls["failing_for"] > 0


def test_changing_the_policy_parameters_changes_the_outcome() -> None:
    default = fleet.simulate(fleet.OurPolicy(), OUTAGE, N, SEED)
    short_cap = fleet.simulate(
        fleet.OurPolicy(backoff=BackoffPolicy(max_seconds=30.0)), OUTAGE, N, SEED
    )
    old_first = fleet.simulate(
        fleet.OurPolicy(refresh=RefreshPolicy(jitter_fraction=0.0, first_from_fraction=0.8)),
        fleet.scenario_a(horizon=2 * fleet.HOUR),
        N,
        SEED,
    )

    # A 30-s cap retries several times as often as a 300-s cap during the outage.
    assert sum(short_cap.window_requests) > 3 * sum(default.window_requests)
    assert {round(s, 6) for s in old_first.spacing_min + old_first.spacing_max} == {0.8 * LIFETIME}


def test_patience_switch_only_hides_the_remaining_validity() -> None:
    patient = fleet.simulate(fleet.OurPolicy(), OUTAGE, N, SEED)
    impatient = fleet.simulate(fleet.OurPolicy(patience=False), OUTAGE, N, SEED)

    assert sum(patient.window_requests) * 2 < sum(impatient.window_requests)
    # Before the outage nothing fails, so both runs are identical up to it.
    w0, _ = fleet.window_span(patient)
    assert patient.requests_per_second[: int(w0)] == impatient.requests_per_second[: int(w0)]


def test_rate_limit_never_accepts_more_than_r_per_second_and_waste_is_split() -> None:
    scenario = fleet.scenario_c(rate_limit=2.5, start=600.0, duration=2 * fleet.HOUR)
    for strategy in (fleet.OurPolicy(), fleet.FixedInterval()):
        result = fleet.simulate(strategy, scenario, N, SEED)
        accepted = [
            sent - failed
            for sent, failed in zip(
                result.requests_per_second, result.failures_per_second, strict=True
            )
        ]
        assert max(accepted) <= 2
        assert result.limited_in_window > 0 or strategy.name == "ours"
        # 5 % random failures come on top of the rate limit's answers.
        assert result.random_failures_in_window > 0
        figures = fleet.figures_c(result)
        assert figures["failed_fraction"] == pytest.approx(
            (figures["unavoidable_fraction"] or 0) + (figures["avoidable_fraction"] or 0)
        )


def test_the_retry_after_assumption_is_a_switch() -> None:
    scenario = fleet.scenario_c(rate_limit=2.5, start=600.0, duration=fleet.HOUR)
    without = replace(scenario, retry_after=None)
    seen: list[float | None] = []

    class Recording(fleet.FixedInterval):
        def retry_delay(self, *args: object, **kwargs: object) -> float:
            retry_after = kwargs["retry_after"]
            assert retry_after is None or isinstance(retry_after, float)
            seen.append(retry_after)
            return 5.0

    for variant, expected in ((scenario, {None, 1.0}), (without, {None})):
        seen.clear()
        fleet.simulate(Recording(), variant, 50, SEED)
        assert set(seen) == expected


def test_warm_start_holds_valid_tokens_from_the_first_second() -> None:
    scenario = replace(fleet.scenario_a(horizon=2 * fleet.HOUR), warm_age=0.7 * LIFETIME)
    for strategy in (fleet.OurPolicy(), fleet.FixedInterval()):
        result = fleet.simulate(strategy, scenario, N, SEED)
        assert result.stale_before == 0
        assert all(t <= 0 for t in result.first_token)
        # Spread-out phases: no thundering herd at any second.
        assert fleet.peak_rps(result) <= 10


def test_one_sidecar_failing_through_an_outage() -> None:
    base_mean, base_max = fleet.attempts_while_failing(fleet.FixedInterval(), 1800.0, None, 50)
    ours_mean, ours_max = fleet.attempts_while_failing(fleet.OurPolicy(), 1800.0, None, 500)
    patient_mean, _ = fleet.attempts_while_failing(fleet.OurPolicy(), 1800.0, 900.0, 500)

    assert (base_mean, base_max) == (360, 360)
    # Full jitter up to 300 s (about 9 attempts), then equal jitter: one per ~225 s.
    assert 12 <= ours_mean <= 20
    assert ours_max < 30
    assert patient_mean < ours_mean


def test_aggregated_rows_carry_the_done_when_goals() -> None:
    runs = [fleet.simulate(s, OUTAGE, N, SEED) for s in (fleet.OurPolicy(), fleet.FixedInterval())]
    ours, base = (fleet.aggregate("b", [fleet.figures_b(r)]) for r in runs)
    rows = {row.metric: row for row in fleet.rows_for("b", ours, base)}

    first_minute = rows["1st minute after recovery: mean req/s, max"]
    assert first_minute.goal == "<= 41.7"
    assert first_minute.met is (first_minute.ours is not None and first_minute.ours <= 41.7)
    assert rows["req/sidecar in outage, mean over runs"].met is True
    assert fleet._max([1.0, None]) is None  # a run that never recovers is the worst


def test_command_line_writes_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fleet.json"
    argv = ["--sidecars", "40", "--seeds", "1", "2", "--starts", "2", "2.5", "--json", str(out)]
    assert fleet.main([*argv, "--limit-retry-after", "none"]) == 0

    table = capsys.readouterr().out
    assert "scenario  metric" in table
    assert "Retry-After: none" in table
    assert "run by run" in table
    report = json.loads(out.read_text())
    assert set(report) == {"a", "b", "c"}
    for key, names in fleet.JSON_KEYS.items():
        assert set(report[key]) == {"ours", "baseline"}
        for figures in report[key].values():
            assert set(figures) == set(names)
            assert all(v is None or math.isfinite(v) for v in figures.values())


def test_plot_writes_a_png(tmp_path: Path) -> None:
    scenario = fleet.scenario_b(horizon=3 * fleet.HOUR)
    ours = fleet.simulate(fleet.OurPolicy(), scenario, 50, SEED)
    base = fleet.simulate(fleet.FixedInterval(), scenario, 50, SEED)
    path = tmp_path / "plots" / "fleet-b.png"
    fleet.plot(scenario, ours, base, path)

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_fresh_process_refreshes_its_first_token_between_10_and_80_percent(
    tmp_path: Path, sidecars: Callable[..., Sidecar]
) -> None:
    """Through the real command, six processes: the rollout spreads (refresh.first_from_fraction).

    Every first refresh lands in [0.1·L, 0.8·L]; under the old 70-80 % window all six
    would be at or above 0.7·L (less the time from send to log line, < 0.15 s here), which
    six uniform draws over [0.1, 0.8] all are with a chance of about 0.2^6 ≈ 6e-5. The token
    after it is scheduled in the normal 70-80 %.
    """
    lifetime = 3.0
    with FakeApi(lifetime=lifetime) as api:
        processes = []
        for k in range(6):
            (tmp_path / f"p{k}").mkdir()
            config = write_config(
                tmp_path / f"p{k}", api.url, refresh={"min_interval_seconds": 0.05}
            )
            processes.append(sidecars(["--config", str(config), "run"], base_env()))
        firsts = [p.wait_event("token_refreshed", timeout=20)["next_refresh_in"] for p in processes]
        seconds = [
            p.wait_event("token_refreshed", timeout=10)["next_refresh_in"] for p in processes
        ]

    # next_refresh_in is counted from the log line, a little after the request was sent.
    assert all(0.1 * lifetime - 0.15 <= d <= 0.8 * lifetime for d in firsts), firsts
    assert min(firsts) < 0.7 * lifetime - 0.15, firsts
    assert all(0.7 * lifetime - 0.15 <= d <= 0.8 * lifetime for d in seconds), seconds
