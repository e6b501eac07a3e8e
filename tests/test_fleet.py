"""The fleet simulation (bench/fleet.py): small fleets, short horizons, real properties."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from random import Random

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fleet
from sidecar import policy
from sidecar.policy import BackoffPolicy, RefreshPolicy

N = 200
SEED = 7
LIFETIME = fleet.LIFETIME
OUTAGE = fleet.scenario_b(horizon=3 * fleet.HOUR)


def test_steady_fleet_always_holds_a_token_and_refreshes_between_70_and_80_percent() -> None:
    result = fleet.simulate(fleet.OurPolicy(), fleet.scenario_a(horizon=6 * fleet.HOUR), N, SEED)

    assert result.failures == 0
    assert all(t < fleet.ROLLOUT_SECONDS for t in result.first_token)
    assert result.stale_after_first_token == 0
    assert result.stale_at_end == 0
    # 6 h / (0.7..0.8 h) refreshes each: every sidecar has several spacings to check.
    assert result.requests >= N * 7
    assert all(s >= 0.7 * LIFETIME - 1e-6 for s in result.spacing_min)
    assert all(s <= 0.8 * LIFETIME + 1e-6 for s in result.spacing_max)
    # Jitter really spreads: the spacings are not all the same.
    assert max(result.spacing_max) - min(result.spacing_min) > 0.05 * LIFETIME


def test_baseline_refreshes_at_exactly_80_percent_and_stays_synchronised() -> None:
    scenario = fleet.scenario_a(horizon=4 * fleet.HOUR)
    base = fleet.simulate(fleet.FixedInterval(), scenario, N, SEED)
    ours = fleet.simulate(fleet.OurPolicy(), scenario, N, SEED)

    assert {round(s, 6) for s in base.spacing_min + base.spacing_max} == {0.8 * LIFETIME}
    # The whole fleet comes back within the 10-s rollout window, cycle after cycle.
    after = fleet.SETTLE_SECONDS
    assert fleet.peak_rps(base, after) >= N / fleet.ROLLOUT_SECONDS / 2
    assert fleet.peak_rps(ours, after) < fleet.peak_rps(base, after) / 3


def test_outage_our_policy_sends_far_fewer_requests_and_a_lower_recovery_peak() -> None:
    ours = fleet.simulate(fleet.OurPolicy(), OUTAGE, N, SEED)
    base = fleet.simulate(fleet.FixedInterval(), OUTAGE, N, SEED)
    w0, w1 = fleet.window_span(ours)

    assert sum(ours.window_requests) * 3 < sum(base.window_requests)
    assert sum(ours.window_requests) / N <= 25
    # Baseline: 5-s flat retries from its synchronised refresh at 2.4 h to the end.
    assert max(base.window_requests) == pytest.approx((w1 - 2.4 * fleet.HOUR) / 5, abs=2)
    recovery = (w1, w1 + fleet.RECOVERY_PEAK_SECONDS)
    assert fleet.peak_rps(ours, *recovery) < fleet.peak_rps(base, *recovery)
    # Everyone gets a token again, ours within one backoff cap of the recovery.
    assert ours.all_valid_after_window is not None
    assert ours.all_valid_after_window <= BackoffPolicy().max_seconds
    assert ours.stale_at_end == 0
    # Every request inside the outage failed; none outside it did.
    inside = sum(ours.requests_per_second[int(w0) : int(w1)])
    assert ours.failures == inside == sum(ours.window_requests)


def test_simulation_is_deterministic_for_a_seed() -> None:
    first = fleet.simulate(fleet.OurPolicy(), OUTAGE, N, SEED)
    again = fleet.simulate(fleet.OurPolicy(), OUTAGE, N, SEED)
    other = fleet.simulate(fleet.OurPolicy(), OUTAGE, N, SEED + 1)

    assert first == again
    assert first.requests_per_second != other.requests_per_second


def test_our_strategy_calls_the_project_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"next_refresh": 0, "retry_delay": 0}
    real_next, real_retry = policy.next_refresh, policy.retry_delay

    def next_refresh(lifetime: float, refresh: RefreshPolicy, rng: Random) -> float:
        calls["next_refresh"] += 1
        return real_next(lifetime, refresh, rng)

    def retry_delay(
        failures: int,
        lane: policy.Lane,
        backoff: BackoffPolicy,
        rng: Random,
        *,
        retry_after: float | None = None,
        remaining: float | None = None,
    ) -> float:
        calls["retry_delay"] += 1
        return real_retry(
            failures, lane, backoff, rng, retry_after=retry_after, remaining=remaining
        )

    monkeypatch.setattr(policy, "next_refresh", next_refresh)
    monkeypatch.setattr(policy, "retry_delay", retry_delay)
    result = fleet.simulate(fleet.OurPolicy(), OUTAGE, 20, SEED)

    assert calls["retry_delay"] == result.failures > 0
    assert calls["next_refresh"] == result.requests - result.failures


def test_changing_the_policy_parameters_changes_the_outcome() -> None:
    default = fleet.simulate(fleet.OurPolicy(), OUTAGE, N, SEED)
    short_cap = fleet.simulate(
        fleet.OurPolicy(backoff=BackoffPolicy(max_seconds=30.0)), OUTAGE, N, SEED
    )
    no_jitter = fleet.simulate(
        fleet.OurPolicy(refresh=RefreshPolicy(jitter_fraction=0.0)),
        fleet.scenario_a(horizon=2 * fleet.HOUR),
        N,
        SEED,
    )

    # A 30-s cap retries about ten times as often as a 300-s cap during the outage.
    assert sum(short_cap.window_requests) > 3 * sum(default.window_requests)
    assert {round(s, 6) for s in no_jitter.spacing_min} == {0.8 * LIFETIME}


def test_rescue_switch_only_hides_the_remaining_validity() -> None:
    with_rescue = fleet.simulate(fleet.OurPolicy(), OUTAGE, N, SEED)
    without = fleet.simulate(fleet.OurPolicy(rescue=False), OUTAGE, N, SEED)

    assert with_rescue.requests != without.requests
    # Before the outage nothing fails, so both runs are identical up to it.
    w0, _ = fleet.window_span(with_rescue)
    assert with_rescue.requests_per_second[: int(w0)] == without.requests_per_second[: int(w0)]


def test_rate_limit_never_accepts_more_than_r_per_second() -> None:
    scenario = fleet.scenario_c(rate_limit=2.5, start=600.0, duration=2 * fleet.HOUR)
    for strategy in (fleet.OurPolicy(), fleet.FixedInterval()):
        result = fleet.simulate(strategy, scenario, N, SEED)
        w0, w1 = fleet.window_span(result)
        accepted = [
            sent - failed
            for sent, failed in zip(
                result.requests_per_second[int(w0) : int(w1)],
                result.failures_per_second[int(w0) : int(w1)],
                strict=True,
            )
        ]
        assert max(accepted) <= 2
        assert result.limited > 0
        # 5 % random failures come on top of the rate limit's answers.
        assert result.failures > result.limited


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

    assert (base_mean, base_max) == (360, 360)
    # Full jitter up to 300 s: about 9 attempts to reach the cap, then one per ~150 s.
    assert 15 <= ours_mean <= 25
    assert ours_max < 60


def test_compare_reports_goals_for_the_outage() -> None:
    ours = fleet.simulate(fleet.OurPolicy(), OUTAGE, N, SEED)
    base = fleet.simulate(fleet.FixedInterval(), OUTAGE, N, SEED)
    rows = fleet.compare(OUTAGE, ours, base, BackoffPolicy())
    by_metric = {row.metric: row for row in rows}

    peak = by_metric["peak req/s, 1st minute after recovery"]
    assert peak.goal == f"<= {1.25 * N / 300:.1f}"
    assert peak.met is (peak.ours is not None and peak.ours <= 1.25 * N / 300)
    assert by_metric["req/sidecar in outage, mean (all)"].met is True
    table = fleet.format_table(rows)
    assert "peak req/s, 1st minute after recovery" in table
    assert len(table.splitlines()) == len(rows) + 2


def test_command_line_writes_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fleet.json"
    assert fleet.main(["--sidecars", "50", "--scenario", "all", "--json", str(out)]) == 0

    table = capsys.readouterr().out
    assert "scenario  metric" in table
    assert "diagnostics" in table
    report = json.loads(out.read_text())
    assert report["sidecars"] == 50
    assert set(report["scenarios"]) == {"a", "b", "c"}
    assert report["scenarios"]["c"]["rate_limit"] >= 1
    metrics = report["scenarios"]["b"]["metrics"]
    assert all(m["ours"] is None or math.isfinite(m["ours"]) for m in metrics)


def test_plot_writes_a_png(tmp_path: Path) -> None:
    scenario = fleet.scenario_b(horizon=3 * fleet.HOUR)
    ours = fleet.simulate(fleet.OurPolicy(), scenario, 50, SEED)
    base = fleet.simulate(fleet.FixedInterval(), scenario, 50, SEED)
    path = tmp_path / "plots" / "fleet-b.png"
    fleet.plot(scenario, ours, base, path)

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
