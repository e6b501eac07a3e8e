"""Idle CPU: what ``run`` costs between refreshes, in percent of one core.

``run`` against the in-process fake with a 3600 s token lifetime, so nothing is due during the
window. utime + stime of the whole process (``/proc/<pid>/stat``, clock ticks) is sampled once the
first token is on disk and a short settling time has passed (``run`` finishes importing its
scheduler, metrics and server right after the first token — that is start-up, not idle), and
again ``--seconds`` later. Two sidecars are measured side by side in the same window: with the
probe server on a free port (the production default) and with it disabled. Voluntary context
switches over every thread give the wake-ups per second, which is where idle CPU comes from.

There is no baseline: the baseline script exits after its one request and has no idle phase,
so the figure is absolute. Goal: ≤ 0.1 % of one core.

Usage: python bench/idle_cpu.py [--seconds 60] [--settle 2] [--json PATH]
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Figure,
    child_env,
    compile_package,
    fake_api,
    free_port,
    parser,
    proc_context_switches,
    proc_cpu_ticks,
    report,
    shell_line,
    sidecar_cmd,
    spawned,
    wait_until,
)

GOAL_PERCENT = 0.1
LIFETIME = 3600.0
TIMEOUT = 30.0


class BenchError(RuntimeError):
    """A child did not do its job; the figure would be meaningless."""


def measure(seconds: float = 60.0, settle: float = 2.0) -> list[Figure]:
    compile_package()
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    with (
        fake_api(lifetime=LIFETIME) as api,
        tempfile.TemporaryDirectory(prefix="bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        variants = {
            "with probe server": f"127.0.0.1:{free_port()}",
            "server disabled": "",
        }
        procs = {}
        tokens = {}
        for index, (name, listen) in enumerate(variants.items()):
            token = Path(tmp) / str(index) / "token"
            token.parent.mkdir()
            tokens[name] = token
            procs[name] = stack.enter_context(
                spawned(sidecar_cmd("run"), child_env(api.url, token, listen=listen))
            )
        for name, token in tokens.items():
            if not wait_until(token.exists, TIMEOUT, 0.01):
                raise BenchError(f"run ({name}): no token within {TIMEOUT:g}s")
        time.sleep(settle)
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise BenchError(f"run ({name}) exited {proc.returncode}")
        first = {
            n: (proc_cpu_ticks(p.pid), proc_context_switches(p.pid), time.monotonic())
            for n, p in procs.items()
        }
        time.sleep(seconds)
        last = {
            n: (proc_cpu_ticks(p.pid), proc_context_switches(p.pid), time.monotonic())
            for n, p in procs.items()
        }
        requests = len(api.issued)

    figures = []
    example = child_env("http://127.0.0.1:PORT", Path("/tmp/x/token"))
    for name, listen in variants.items():
        ticks = last[name][0] - first[name][0]
        switches = last[name][1] - first[name][1]
        elapsed = last[name][2] - first[name][2]
        cpu_seconds = ticks / ticks_per_second
        percent = 100.0 * cpu_seconds / elapsed
        env = {**example, "FORESTREET_SIDECAR_SERVER_LISTEN": "127.0.0.1:PORT" if listen else ""}
        figures.append(
            Figure(
                name=f"idle CPU of `run`, {name}",
                unit="%",
                ours=percent,
                goal_max=GOAL_PERCENT,
                runs=1,
                command=shell_line(sidecar_cmd("run"), env)
                + f"  (fake-api --lifetime {LIFETIME:g}; /proc/PID/stat over {seconds:g} s)",
                note=(
                    f"{cpu_seconds:.2f} CPU s in {elapsed:.1f} s ({ticks} ticks of "
                    f"{1000 / ticks_per_second:g} ms), {switches / elapsed:.1f} wake-ups/s; "
                    "no baseline (it has no idle phase)"
                ),
                samples={"cpu_seconds": [cpu_seconds], "wakeups_per_second": [switches / elapsed]},
            )
        )
    if requests != len(variants):
        figures[0].note += f"; warning: the fake issued {requests} tokens, expected {len(variants)}"
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser(__doc__.splitlines()[0] if __doc__ else None, runs=None)
    cli.add_argument("--seconds", type=float, default=60.0, help="length of the idle window")
    cli.add_argument("--settle", type=float, default=2.0, help="wait after the first token")
    args = cli.parse_args(argv)
    report(measure(args.seconds, args.settle), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
