"""Smoke tests of the benchmarks (bench/): each runs with tiny parameters and gives sane numbers.

Nothing here asserts a timing: the figures of a shared machine are noise at this size. The
benchmarks start real processes against the in-process fake API on 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common, idle_cpu, memory, punctuality, run_all, startup
from bench.common import Figure
from sidecar.fake_api import FakeApi
from sidecar.session import fingerprint

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with common.fake_api(lifetime=3600.0) as fake:
        yield fake


def _sane(value: float, low: float, high: float) -> bool:
    return math.isfinite(value) and low <= value <= high


# --- baseline ----------------------------------------------------------------------------------


def test_baseline_fetch_writes_the_token_atomically_with_mode_0640(
    api: FakeApi, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    result = subprocess.run(
        common.baseline_cmd(api.url, token),
        env=common.child_env(api.url, token),
        capture_output=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert token.read_text() == api.issued[-1]
    assert stat.S_IMODE(token.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["token"]  # no temporary file left
    assert [r.api_key for r in api.requests] == [common.API_KEY]


def test_baseline_fetch_without_a_key_is_a_usage_error(api: FakeApi, tmp_path: Path) -> None:
    env = common.child_env(api.url, tmp_path / "token")
    del env["FORESTREET_API_KEY"]
    result = subprocess.run(
        common.baseline_cmd(api.url, tmp_path / "token"),
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 2
    assert not (tmp_path / "token").exists()


# --- shared helpers ----------------------------------------------------------------------------


def test_statistics_and_table() -> None:
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    assert common.percentile([0.0, 10.0], 50) == 5.0
    assert common.percentile(list(map(float, range(101))), 99) == 99.0
    assert math.isnan(common.percentile([], 99))
    within = Figure("a", "ms", ours=20.0, baseline=10.0, goal_ratio=2.5)
    over = Figure("b", "%", ours=0.2, goal_max=0.1)
    informative = Figure("c", "MiB", ours=30.0, baseline=20.0)

    assert (within.ratio, within.met) == (2.0, True)
    assert (over.ratio, over.met) == (None, False)
    assert informative.met is None
    text = common.table([within, over, informative])
    assert "| a | 10.0 ms | 20.0 ms | 2.00x | ≤ 2.5x baseline | yes |" in text
    assert "| b | — | 0.2 % | — | ≤ 0.1 % | **no** |" in text
    assert json.dumps(within.as_json())  # serialisable as written by --json


def test_child_env_is_clean_and_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORESTREET_SIDECAR_LOG_LEVEL", "debug")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/x")
    env = common.child_env("http://127.0.0.1:1", Path("/tmp/t"), refresh_min_interval_seconds=0.05)

    assert "FORESTREET_SIDECAR_LOG_LEVEL" not in env
    assert "NOTIFY_SOCKET" not in env
    assert env["FORESTREET_SIDECAR_REFRESH_MIN_INTERVAL_SECONDS"] == "0.05"
    assert env["FORESTREET_SIDECAR_SERVER_LISTEN"] == ""
    assert common.sidecar_exe().is_file()


def test_proc_readers_on_ourselves() -> None:
    pid = os.getpid()

    assert common.proc_status_kib(pid, "VmRSS") > 1000
    assert common.proc_cpu_ticks(pid) >= 0
    assert common.proc_context_switches(pid) >= 0


# --- benchmarks with tiny parameters -----------------------------------------------------------


def test_startup_measures_once_and_run_against_the_baseline() -> None:
    figures = startup.measure(runs=1, warmup=0)

    assert [f.name.split(":")[0] for f in figures] == [
        "start → token on disk",
        "start → exit",
        "start → token",
    ]
    for fig in figures:
        assert _sane(fig.ours, 1.0, 30_000.0), fig
        assert fig.baseline is not None
        assert _sane(fig.baseline, 1.0, 30_000.0), fig
        assert fig.ratio is not None
        assert fig.ratio > 0
        assert fig.met in ((None,) if fig.goal_ratio is None else (True, False))
        assert "forestreet-sidecar" in fig.command


def test_importtime_parsing_and_breakdown() -> None:
    lines = [
        "import time: self [us] | cumulative | imported package",
        "import time:       120 |        120 |   _io",
        "import time:      1000 |       3000 | sidecar.cli",
        "not an import line",
    ]
    parsed = startup.parse_importtime(lines)
    assert [(p.name, p.self_us, p.cumulative_us, p.depth) for p in parsed] == [
        ("_io", 120, 120, 1),
        ("sidecar.cli", 1000, 3000, 0),
    ]

    top = startup.import_top(top=5, repeats=1)
    assert 0 < len(top) <= 5
    assert {"sidecar.cli"} <= {row["module"] for row in startup.import_top(top=1000, repeats=1)}
    first = startup.imports_before_first_request("once")
    assert int(str(first["modules_before"])) > 0
    watched = first["watched"]
    assert isinstance(watched, dict)
    assert set(watched.values()) <= {"before", "after", "never"}
    assert "first request" in startup.format_import_report(
        {"importtime_top": top, "first_request": [first]}
    )


def test_memory_measures_peak_and_steady_rss() -> None:
    figures = memory.measure(runs=1, refreshes=4, warmup=0)

    assert [f.unit for f in figures] == ["MiB", "MiB"]
    for fig in figures:
        assert _sane(fig.ours, 5.0, 2000.0), fig
        assert fig.baseline is not None
        assert _sane(fig.baseline, 5.0, 2000.0), fig
    assert figures[1].met in (True, False)


def test_idle_cpu_measures_both_variants() -> None:
    figures = idle_cpu.measure(seconds=1.0, settle=0.3)

    assert len(figures) == 2
    for fig in figures:
        assert _sane(fig.ours, 0.0, 200.0), fig
        assert fig.baseline is None
        assert "no baseline" in fig.note


def test_punctuality_pairs_events_with_requests() -> None:
    figures = punctuality.measure(refreshes=4, lifetime=0.3)

    p50, p99 = figures
    assert p50.runs == 4
    assert _sane(p50.ours, -100.0, 10_000.0)
    assert _sane(p99.ours, p50.ours, 10_000.0)
    assert p99.met in (True, False)


def test_lateness_arithmetic() -> None:
    issued = ["a.b", "c.d", "e.f"]
    received = [10.0, 10.5, 11.0]
    lines = [
        json.dumps({"event": "started"}),
        "not json",
        json.dumps(
            {
                "event": "token_refreshed",
                "token_fingerprint": fingerprint("a.b"),
                "next_refresh_in": 0.4,
                "duration": 0.05,
            }
        ),
        json.dumps(
            {
                "event": "token_refreshed",
                "token_fingerprint": fingerprint("c.d"),
                "next_refresh_in": 0.5,
                "duration": 0.01,
            }
        ),
    ]
    estimate, upper = punctuality.lateness(punctuality.parse_events(lines), issued, received)

    assert estimate == pytest.approx([0.05, -0.01])
    assert upper == pytest.approx([0.1, 0.0])


def test_run_all_prints_one_table_and_writes_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def fake_benchmarks(_settings: run_all.Settings) -> list[tuple[str, object]]:
        def broken() -> list[Figure]:
            raise RuntimeError("boom")

        return [
            ("ok", lambda: [Figure("x", "ms", ours=2.0, baseline=1.0, goal_ratio=2.5)]),
            ("broken", broken),
        ]

    monkeypatch.setattr(run_all, "benchmarks", fake_benchmarks)
    out = tmp_path / "results.json"
    code = run_all.main(
        ["--quick", "--no-imports", "--json", str(out), "--markdown", str(tmp_path / "r.md")]
    )

    assert code == 1  # a benchmark failed, the others are still reported
    printed = capsys.readouterr().out
    assert "| x | 1 ms | 2 ms | 2.00x | ≤ 2.5x baseline | yes |" in printed
    assert "broken FAILED: RuntimeError: boom" in printed
    document = json.loads(out.read_text())
    assert document["machine"]["cpu_count"] == os.cpu_count()
    assert document["figures"][0]["met"] is True
    assert document["failed"] == {"broken": "RuntimeError: boom"}
    assert "| x |" in (tmp_path / "r.md").read_text()


def test_import_rss_table() -> None:
    text = memory.format_import_rss({"python -c pass (absolute)": 11.6, "requests": 15.04})

    assert "| `python -c pass (absolute)` | 11.6 |" in text
    assert "| `requests` | +15.0 |" in text
