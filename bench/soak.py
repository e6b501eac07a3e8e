"""A bounded soak of the real `run` command: leaks, lost tokens and refresh lateness.

The sidecar runs as a subprocess against the fake API served in this process, with a
1-second token lifetime, 20 % injected SERVICE_UNAVAILABLE failures and, every few
seconds, one scripted transport fault (a reset, an HTML 502, a non-JSON 200, a
LIMIT_EXCEEDED with Retry-After). Every second it samples the sidecar's open file
descriptors (/proc/<pid>/fd) and resident memory (VmRSS in /proc/<pid>/status).

Figures:
- fd and RSS slopes (least squares, per minute) after a warm-up, and their growth
  (median of the last quarter of samples minus median of the first quarter);
- tokens issued by the fake API vs `token_refreshed` events (every issued token written);
- refresh lateness: each `token_refreshed` / `refresh_failed` event logs the delay to
  the next attempt (`next_refresh_in` / `retry_in`); planned = the event's timestamp +
  that delay, actual = when the fake API received the next request (its monotonic
  `received_at`, on the wall clock through one offset measured at start; both
  processes read the same system-wide CLOCK_MONOTONIC). Lateness = actual - planned.

Exit 1 when a threshold is crossed: fd growth > 2, RSS growth > 4 MiB, p99 lateness >
100 ms, or a token issued and never written (one in flight at the stop is allowed).

Usage: python bench/soak.py [--minutes 10] [--json PATH] [--seed 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's `sidecar` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.fake_api import SESSION_PATH, Answer, FakeApi

LIFETIME = 1.0
FAIL_RATE = 0.2
WARM_UP_SECONDS = 10.0
MAX_FD_GROWTH = 2
MAX_RSS_GROWTH_KIB = 4 * 1024
MAX_P99_LATENESS_MS = 100.0
KEY = "soak-test-key-0123456789"


@dataclass
class Sample:
    at: float  # monotonic
    fds: int
    rss_kib: int


@dataclass
class Run:
    events: list[dict[str, Any]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


def sample(pid: int) -> Sample | None:
    try:
        fds = sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return Sample(time.monotonic(), fds, rss)


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, in value per minute."""
    if len(points) < 2:
        return 0.0
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return 0.0
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return cov / var * 60


def growth(values: Sequence[float]) -> float:
    quarter = max(1, len(values) // 4)
    return statistics.median(values[-quarter:]) - statistics.median(values[:quarter])


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def unix(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def scripted_fault(rng: random.Random) -> Answer:
    return rng.choice(
        [
            Answer(reset=True),
            Answer(status=502, body=b"<html>bad gateway</html>", content_type="text/html"),
            Answer(body=b"{not json"),
            Answer(error_code="LIMIT_EXCEEDED", status=429, retry_after="1"),
            Answer(error_code="INTERNAL_SERVER_ERROR"),
        ]
    )


@dataclass
class Observed:
    """What one soak saw, before any figure is computed."""

    run: Run
    issued: list[str]
    requests: list[float]  # monotonic received_at of every session request
    wall_offset: float  # time.time() - time.monotonic() at start
    started: float
    code: int
    on_disk: str
    minutes: float


def _drain(lines: queue.Queue[str], run: Run, until: float) -> None:
    while time.monotonic() < until:
        with contextlib.suppress(queue.Empty):
            run.events.append(json.loads(lines.get(timeout=0.1)))


def _start(config: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORESTREET")}
    env.update(FORESTREET_API_KEY=KEY, PYTHONUNBUFFERED="1")
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.Popen(
        [sys.executable, "-m", "sidecar", "--config", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _write_config(workdir: Path, url: str) -> Path:
    config = workdir / "config.yaml"
    document = {
        "api": {"base_url": url, "timeout_seconds": 2},
        "token": {"path": str(workdir / "out" / "token")},
        "server": {"listen": "127.0.0.1:0"},
        "refresh": {"min_interval_seconds": 0.1},
        "backoff": {"initial_seconds": 0.05, "max_seconds": 0.5},
    }
    config.write_text(json.dumps(document))  # JSON is YAML
    return config


def _drive(
    process: subprocess.Popen[str], api: FakeApi, run: Run, minutes: float, seed: int
) -> tuple[float, int]:
    """Sample, inject faults and collect events until the time is up; then SIGTERM."""
    rng = random.Random(seed)
    lines: queue.Queue[str] = queue.Queue()

    def pump_out() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    def pump_err() -> None:
        assert process.stderr is not None
        run.stderr.extend(process.stderr)

    pumps = [threading.Thread(target=t, daemon=True) for t in (pump_out, pump_err)]
    for pump in pumps:
        pump.start()
    started = time.monotonic()
    end = started + minutes * 60
    next_fault = started + 5
    try:
        while time.monotonic() < end and process.poll() is None:
            tick = time.monotonic()
            taken = sample(process.pid)
            if taken is not None:
                run.samples.append(taken)
            if tick >= next_fault:
                api.script(scripted_fault(rng))
                next_fault = tick + rng.uniform(3, 8)
            _drain(lines, run, tick + 1)
        # Stop right after an event: the next attempt is then at least 50 ms away.
        count, deadline = len(run.events), time.monotonic() + 5
        while len(run.events) == count and time.monotonic() < deadline:
            _drain(lines, run, time.monotonic() + 0.05)
        process.send_signal(signal.SIGTERM)
        code = process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for pump in pumps:
            pump.join(5)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    while not lines.empty():
        run.events.append(json.loads(lines.get()))
    return started, code


def soak(minutes: float, seed: int, workdir: Path) -> dict[str, Any]:
    run = Run()
    with FakeApi(lifetime=LIFETIME, fail_rate=FAIL_RATE, seed=seed) as api:
        config = _write_config(workdir, api.url)
        wall_offset = time.time() - time.monotonic()
        started, code = _drive(_start(config), api, run, minutes, seed)
        observed = Observed(
            run=run,
            issued=api.issued,
            requests=[r.received_at for r in api.requests if r.path == SESSION_PATH],
            wall_offset=wall_offset,
            started=started,
            code=code,
            on_disk=(workdir / "out" / "token").read_text(),
            minutes=minutes,
        )
    return figures(observed)


def figures(seen: Observed) -> dict[str, Any]:
    run, issued, requests = seen.run, seen.issued, seen.requests
    started, code, minutes = seen.started, seen.code, seen.minutes
    outcomes = [e for e in run.events if e["event"] in ("token_refreshed", "refresh_failed")]
    written = sum(e["event"] == "token_refreshed" for e in outcomes)
    # Request k+1 is the attempt planned by outcome k.
    lateness = []
    for event, actual in zip(outcomes, requests[1:], strict=False):
        delay = event["next_refresh_in"] if "next_refresh_in" in event else event["retry_in"]
        planned = unix(event["timestamp"]) + float(delay)
        lateness.append((actual + seen.wall_offset - planned) * 1000)
    steady = [s for s in run.samples if s.at - started >= min(WARM_UP_SECONDS, minutes * 20)]
    fds = [float(s.fds) for s in steady]
    rss = [float(s.rss_kib) for s in steady]
    result = {
        "minutes": minutes,
        "exit_code": code,
        "requests": len(requests),
        "issued": len(issued),
        "written": written,
        "failures": len(outcomes) - written,
        "last_token_on_disk": bool(issued) and seen.on_disk == issued[-1],
        "samples": len(run.samples),
        "fds_first": fds[0] if fds else None,
        "fds_last": fds[-1] if fds else None,
        "fd_slope_per_min": round(slope_per_minute([(s.at, s.fds) for s in steady]), 3),
        "fd_growth": growth(fds) if fds else 0.0,
        "rss_kib_first": rss[0] if rss else None,
        "rss_kib_last": rss[-1] if rss else None,
        "rss_slope_kib_per_min": round(slope_per_minute([(s.at, s.rss_kib) for s in steady]), 1),
        "rss_growth_kib": growth(rss) if rss else 0.0,
        "lateness_samples": len(lateness),
        "lateness_p50_ms": round(percentile(lateness, 0.5), 2),
        "lateness_p99_ms": round(percentile(lateness, 0.99), 2),
        "lateness_max_ms": round(max(lateness), 2) if lateness else None,
        "lateness_min_ms": round(min(lateness), 2) if lateness else None,
        "stderr_lines": len(run.stderr),
    }
    problems = []
    if code != 0:
        problems.append(f"exit code {code}")
    if result["fd_growth"] > MAX_FD_GROWTH:
        problems.append(f"fds grew by {result['fd_growth']}")
    if result["rss_growth_kib"] > MAX_RSS_GROWTH_KIB:
        problems.append(f"RSS grew by {result['rss_growth_kib']} KiB")
    if not lateness or result["lateness_p99_ms"] > MAX_P99_LATENESS_MS:
        problems.append(f"p99 lateness {result['lateness_p99_ms']} ms")
    if not 0 <= len(issued) - written <= 1:
        problems.append(f"{len(issued)} tokens issued but {written} written")
    if not result["last_token_on_disk"] and len(issued) == written:
        problems.append("the last token issued is not on disk")
    result["problems"] = problems
    return result


def table(result: dict[str, Any]) -> str:
    r = result
    rows = [
        ("duration", f"{r['minutes']} min, {r['samples']} samples"),
        ("requests / issued / written", f"{r['requests']} / {r['issued']} / {r['written']}"),
        ("failed attempts", str(r["failures"])),
        ("open fds first -> last", f"{r['fds_first']} -> {r['fds_last']}"),
        ("fd slope, growth", f"{r['fd_slope_per_min']}/min, {r['fd_growth']}"),
        ("RSS KiB first -> last", f"{r['rss_kib_first']} -> {r['rss_kib_last']}"),
        ("RSS slope, growth", f"{r['rss_slope_kib_per_min']} KiB/min, {r['rss_growth_kib']} KiB"),
        (
            "lateness p50 / p99 / max",
            f"{r['lateness_p50_ms']} / {r['lateness_p99_ms']} / {r['lateness_max_ms']} ms",
        ),
        ("verdict", "ok" if not r["problems"] else "; ".join(r["problems"])),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    with tempfile.TemporaryDirectory(prefix="soak-") as workdir:
        result = soak(args.minutes, args.seed, Path(workdir))
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
