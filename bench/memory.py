"""Memory: peak RSS of ``once`` and steady RSS of ``run``, against the baseline's peak RSS.

A sidecar's memory is multiplied by the fleet. Per round, interleaved:

- ``once``, then the baseline, each under a tiny wrapper process that runs it and prints
  ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` — a fresh set of children per measurement, so the
  figure is that one child's peak RSS;
- ``run`` against the in-process fake with a 0.1 s token lifetime and a 0.05 s minimum interval:
  ``VmRSS`` from ``/proc/<pid>/status`` once the fake has issued the 100th token (counted by the
  fake), then the baseline again.

Goal: steady RSS of ``run`` ≤ 1.6 x the baseline's peak RSS.

Usage: python bench/memory.py [--runs 20] [--refreshes 100] [--imports] [--json PATH]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Figure,
    baseline_cmd,
    child_env,
    compile_package,
    fake_api,
    free_port,
    median,
    parser,
    proc_status_kib,
    report,
    shell_line,
    sidecar_cmd,
    spawned,
)

GOAL_RATIO = 1.6
TIMEOUT = 60.0
LIFETIME = 0.1
MIN_INTERVAL = 0.05
KIB_PER_MIB = 1024.0
# Runs argv[1:] with its output discarded and prints its peak RSS (KiB on Linux).
WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL,"
    " stderr=subprocess.DEVNULL, timeout=60).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(code)\n"
)


class BenchError(RuntimeError):
    """A child did not do its job; the figure would be meaningless."""


def peak_rss_kib(cmd: Sequence[str], env: dict[str, str], token_path: Path) -> int:
    """Peak RSS of ``cmd`` (which must write the token and exit 0), in KiB."""
    result = subprocess.run(
        [sys.executable, "-c", WRAPPER, *cmd],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT + 5,
        check=False,
    )
    if result.returncode != 0 or not token_path.is_file():
        raise BenchError(f"{' '.join(cmd)}: exit {result.returncode}, token {token_path.exists()}")
    return int(result.stdout.split()[-1])


def steady_rss_kib(
    url: str, api_count: Callable[[], int], token_path: Path, refreshes: int
) -> dict[str, int]:
    """``run`` until ``refreshes`` tokens were issued to it: VmRSS half-way and at the end, VmHWM.

    ``api_count`` returns the number of tokens the fake has issued so far.
    """
    env = child_env(
        url,
        token_path,
        listen=f"127.0.0.1:{free_port()}",
        refresh_min_interval_seconds=MIN_INTERVAL,
    )
    start = api_count()
    half: int | None = None
    with spawned(sidecar_cmd("run"), env) as proc:
        deadline = time.monotonic() + TIMEOUT
        while True:
            issued = api_count() - start
            if half is None and issued >= refreshes // 2:
                half = proc_status_kib(proc.pid, "VmRSS")
            if issued >= refreshes:
                break
            if proc.poll() is not None:
                raise BenchError(f"run exited {proc.returncode} after {issued} refreshes")
            if time.monotonic() > deadline:
                raise BenchError(f"run: only {issued} refreshes within {TIMEOUT:g}s")
            time.sleep(0.005)
        time.sleep(0.02)  # the last token is counted when served: let its write finish
        end = proc_status_kib(proc.pid, "VmRSS")
        peak = proc_status_kib(proc.pid, "VmHWM")
    return {"half": half if half is not None else end, "end": end, "peak": peak}


def measure(runs: int = 20, refreshes: int = 100, warmup: int = 1) -> list[Figure]:
    compile_package()
    samples: dict[str, list[float]] = defaultdict(list)
    with (
        fake_api(lifetime=LIFETIME) as api,
        tempfile.TemporaryDirectory(prefix="bench-") as tmp,
    ):
        root = Path(tmp)
        counter = 0

        def fresh() -> Path:
            nonlocal counter
            counter += 1
            directory = root / str(counter)
            directory.mkdir()
            return directory / "token"

        def issued() -> int:
            return len(api.issued)

        def baseline() -> float:
            token = fresh()
            env = child_env(api.url, token)
            return peak_rss_kib(baseline_cmd(api.url, token), env, token) / KIB_PER_MIB

        for round_ in range(warmup + runs):
            token = fresh()
            once = peak_rss_kib(sidecar_cmd("once"), child_env(api.url, token), token)
            base_1 = baseline()
            steady = steady_rss_kib(api.url, issued, fresh(), refreshes)
            base_2 = baseline()
            if round_ < warmup:
                continue
            samples["once_peak"].append(once / KIB_PER_MIB)
            samples["baseline_peak"] += [base_1, base_2]
            samples["run_half"].append(steady["half"] / KIB_PER_MIB)
            samples["run_steady"].append(steady["end"] / KIB_PER_MIB)
            samples["run_peak"].append(steady["peak"] / KIB_PER_MIB)

    base = median(samples["baseline_peak"])
    example = child_env("http://127.0.0.1:PORT", Path("/tmp/x/token"))
    run_env = {
        **example,
        "FORESTREET_SIDECAR_SERVER_LISTEN": "127.0.0.1:PORT",
        "FORESTREET_SIDECAR_REFRESH_MIN_INTERVAL_SECONDS": str(MIN_INTERVAL),
    }
    growth = median(samples["run_steady"]) - median(samples["run_half"])
    return [
        Figure(
            name="peak RSS: `once`",
            unit="MiB",
            ours=median(samples["once_peak"]),
            baseline=base,
            runs=runs,
            command=shell_line(sidecar_cmd("once"), example) + "  (ru_maxrss via a wrapper)",
            samples={k: samples[k] for k in ("once_peak", "baseline_peak")},
        ),
        Figure(
            name=f"steady RSS: `run` after {refreshes} refreshes",
            unit="MiB",
            ours=median(samples["run_steady"]),
            baseline=base,
            goal_ratio=GOAL_RATIO,
            runs=runs,
            command=shell_line(sidecar_cmd("run"), run_env)
            + f"  (fake-api --lifetime {LIFETIME:g}; VmRSS after the {refreshes}th token)",
            note=(
                f"VmRSS {median(samples['run_half']):.1f} MiB after {refreshes // 2} refreshes, "
                f"{median(samples['run_steady']):.1f} after {refreshes} ({growth:+.2f} MiB); "
                f"VmHWM {median(samples['run_peak']):.1f} MiB; baseline = its peak RSS"
            ),
            samples={k: samples[k] for k in ("run_half", "run_steady", "run_peak")},
        ),
    ]


# What the sidecar's dependencies cost in RSS on their own (each in a fresh interpreter).
IMPORTS = (
    "json, os, tempfile, urllib.request",  # what the baseline imports
    "requests",
    "ssl",
    "structlog",
    "yaml",
    "prometheus_client",
    "apscheduler.schedulers.background",
    "http.server",
    "sidecar.cli",
    "sidecar.api",
    "sidecar.daemon",
)


def import_rss(repeats: int = 5) -> dict[str, float]:
    """Peak RSS (MiB) added by importing each entry of IMPORTS, over ``python -c pass``.

    Modules overlap (``requests`` pulls in ``ssl``...), so the rows do not add up.
    """
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        marker = Path(tmp) / "token"
        marker.write_text("x")  # peak_rss_kib checks that a token exists

        def peak(code: str) -> float:
            cmd = [sys.executable, "-c", code]
            return median([peak_rss_kib(cmd, {}, marker) for _ in range(repeats)]) / KIB_PER_MIB

        empty = peak("pass")
        return {"python -c pass (absolute)": empty} | {
            name: peak(f"import {name}") - empty for name in IMPORTS
        }


def format_import_rss(rows: dict[str, float]) -> str:
    out = ["| import | peak RSS MiB |", "|---|---:|"]
    out += [
        f"| `{name}` | {value:.1f} |" if "absolute" in name else f"| `{name}` | {value:+.1f} |"
        for name, value in rows.items()
    ]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser(__doc__.splitlines()[0] if __doc__ else None, runs=20)
    cli.add_argument("--refreshes", type=int, default=100, help="refreshes before reading VmRSS")
    cli.add_argument(
        "--imports", action="store_true", help="also the RSS each dependency adds when imported"
    )
    args = cli.parse_args(argv)
    rows = import_rss() if args.imports else None
    report(measure(args.runs, args.refreshes), args.json, {"import_rss_mib": rows})
    if rows is not None:
        print()
        print(format_import_rss(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
