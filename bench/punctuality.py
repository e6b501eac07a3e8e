"""Punctuality: how late each refresh request goes out against the time the policy planned.

``run`` against the in-process fake with a short token lifetime (0.3 s; minimum interval 0.05 s),
for ``--refreshes`` refreshes. The sidecar logs one JSON ``token_refreshed`` event per success,
with ``next_refresh_in`` (rounded to 1 ms) and ``duration`` (of the attempt, 0.1 ms). In the
code, ``next_refresh_in`` is counted from the end of the attempt (``delay = sent + plan - now``),
so the planned time of the next request is

    planned ≈ received(previous request) + duration + next_refresh_in

(the attempt starts a fraction of a millisecond before the fake receives its request, so this
errs late by that much: lateness is under-stated by < 1 ms), and lateness = received(next
request) - planned. As a bound that cannot under-state, ``received(previous) + next_refresh_in``
(the attempt taking no time) is reported too. Events and requests are matched by the token's
fingerprint, so a refresh missing from the log cannot shift the pairing.

There is no baseline: the baseline script does not refresh.
Goal: p99 lateness ≤ 50 ms.

Usage: python bench/punctuality.py [--refreshes 200] [--lifetime 0.3] [--json PATH]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Figure,
    child_env,
    compile_package,
    fake_api,
    free_port,
    median,
    parser,
    percentile,
    report,
    shell_line,
    sidecar_cmd,
    stop,
    terminate,
)
from sidecar.fake_api import SESSION_PATH
from sidecar.session import fingerprint

GOAL_P99_MS = 50.0
MIN_INTERVAL = 0.05


class BenchError(RuntimeError):
    """A child did not do its job; the figure would be meaningless."""


@dataclass(frozen=True, slots=True)
class Event:
    fingerprint: str
    next_refresh_in: float
    duration: float


def parse_events(lines: Sequence[str]) -> list[Event]:
    """The ``token_refreshed`` events among the JSON log lines (others are skipped)."""
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or event.get("event") != "token_refreshed":
            continue
        events.append(
            Event(
                str(event.get("token_fingerprint")),
                float(event["next_refresh_in"]),
                float(event.get("duration") or 0.0),
            )
        )
    return events


def lateness(
    events: Sequence[Event], issued: Sequence[str], received: Sequence[float]
) -> tuple[list[float], list[float]]:
    """Per refresh with a following request: (estimate, upper bound) of its lateness, seconds.

    ``issued`` and ``received`` are the fake's tokens and session-request times, in order (one
    sidecar, every answer a 200, so the i-th request got the i-th token).
    """
    index = {fingerprint(token): i for i, token in enumerate(issued)}
    estimate, upper = [], []
    for event in events:
        i = index.get(event.fingerprint)
        if i is None or i + 1 >= len(received):
            continue
        actual = received[i + 1]
        estimate.append(actual - (received[i] + event.duration + event.next_refresh_in))
        upper.append(actual - (received[i] + event.next_refresh_in))
    return estimate, upper


def measure(refreshes: int = 200, lifetime: float = 0.3) -> list[Figure]:
    compile_package()
    timeout = 30.0 + 2 * refreshes * lifetime
    lines: list[str] = []
    with (
        fake_api(lifetime=lifetime) as api,
        tempfile.TemporaryDirectory(prefix="bench-") as tmp,
    ):
        token = Path(tmp) / "token"
        env = child_env(
            api.url,
            token,
            listen=f"127.0.0.1:{free_port()}",
            refresh_min_interval_seconds=MIN_INTERVAL,
        )
        proc = subprocess.Popen(
            sidecar_cmd("run"), env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )

        def reader() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                lines.append(raw.decode(errors="replace"))

        thread = threading.Thread(target=reader, name="bench-stdout", daemon=True)
        thread.start()
        offsets = [time.time() - time.monotonic()]  # APScheduler fires by the wall clock
        try:
            deadline = time.monotonic() + timeout
            # One request more than the refreshes: the last refresh needs its successor.
            while sum(r.path == SESSION_PATH for r in api.requests) < refreshes + 1:
                offsets.append(time.time() - time.monotonic())
                if proc.poll() is not None:
                    raise BenchError(f"run exited {proc.returncode}")
                if time.monotonic() > deadline:
                    raise BenchError(f"run: fewer than {refreshes + 1} requests in {timeout:g}s")
                time.sleep(0.05)
            time.sleep(min(lifetime, 0.5))  # the log line of the last counted refresh
        finally:
            terminate(proc)
            thread.join(5.0)
            stop(proc)
        issued = api.issued
        received = [r.received_at for r in api.requests if r.path == SESSION_PATH]

    if len(issued) != len(received):
        raise BenchError(f"{len(received)} session requests but {len(issued)} tokens issued")
    estimate, upper = lateness(parse_events(lines), issued, received)
    estimate, upper = estimate[:refreshes], upper[:refreshes]
    if not estimate:
        raise BenchError("no token_refreshed event matched a request")
    ms = [value * 1000 for value in estimate]
    upper_ms = [value * 1000 for value in upper]
    example = child_env(
        "http://127.0.0.1:PORT",
        Path("/tmp/x/token"),
        listen="127.0.0.1:PORT",
        refresh_min_interval_seconds=MIN_INTERVAL,
    )
    command = shell_line(sidecar_cmd("run"), example) + f"  (fake-api --lifetime {lifetime:g})"
    note = (
        f"{len(ms)} refreshes; the first {ms[0]:.1f} ms, "
        f"max {max(ms):.1f} ms, min {min(ms):.1f} ms; "
        f"upper bound (attempt taken as instant) p50 {median(upper_ms):.1f} ms, "
        f"p99 {percentile(upper_ms, 99):.1f} ms; wall clock moved "
        f"{(max(offsets) - min(offsets)) * 1000:.1f} ms against the monotonic clock meanwhile; "
        "no baseline (it does not refresh)"
    )
    return [
        Figure(
            name="refresh lateness p50",
            unit="ms",
            ours=median(ms),
            runs=len(ms),
            command=command,
            samples={
                "lateness_ms": ms,
                "upper_bound_ms": upper_ms,
                "clock_offset_spread_ms": [(max(offsets) - min(offsets)) * 1000],
            },
        ),
        Figure(
            name="refresh lateness p99",
            unit="ms",
            ours=percentile(ms, 99),
            goal_max=GOAL_P99_MS,
            runs=len(ms),
            command=command,
            note=note,
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser(__doc__.splitlines()[0] if __doc__ else None, runs=None)
    cli.add_argument("--refreshes", type=int, default=200, help="refreshes to time (≥ 200)")
    cli.add_argument("--lifetime", type=float, default=0.3, help="token lifetime of the fake")
    args = cli.parse_args(argv)
    report(measure(args.refreshes, args.lifetime), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
