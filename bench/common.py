"""Shared helpers of the benchmarks: commands, environment, child processes, statistics, tables.

Every benchmark returns :class:`Figure` rows; ``run_all.py`` prints them as one table. Timings
on a shared machine are noisy, so each figure is a median over interleaved runs of ours and the
baseline (``bench/baseline_fetch.py``), and the ratio is what the goals are about.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sidecar.fake_api import SESSION_PATH, FakeApi

REPO = Path(__file__).resolve().parents[1]

BASELINE_SCRIPT = REPO / "bench" / "baseline_fetch.py"
API_KEY = "bench-key-0123456789abcdef"
LOCALHOST = "127.0.0.1"
STOP_SECONDS = 5.0
# Variables of the caller's environment that would change what the sidecar does.
_FOREIGN = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY")


# --- commands and environment ------------------------------------------------------------------


def sidecar_exe() -> Path:
    """The console script of the interpreter running the benchmark (the repository's venv)."""
    return Path(sys.executable).parent / "forestreet-sidecar"


def sidecar_cmd(*args: str) -> list[str]:
    return [str(sidecar_exe()), *args]


def baseline_cmd(url: str, token_path: Path) -> list[str]:
    return [sys.executable, str(BASELINE_SCRIPT), url, str(token_path)]


def child_env(
    url: str, token_path: Path, *, listen: str = "", **settings: object
) -> dict[str, str]:
    """A clean environment for a sidecar (or baseline) child against ``url``.

    ``settings`` are configuration keys in the ``section_key`` form, e.g.
    ``refresh_min_interval_seconds=0.05`` → ``FORESTREET_SIDECAR_REFRESH_MIN_INTERVAL_SECONDS``.
    """
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("FORESTREET") and k not in _FOREIGN
    }
    env.update(
        FORESTREET_API_KEY=API_KEY,
        FORESTREET_SIDECAR_API_BASE_URL=url,
        FORESTREET_SIDECAR_TOKEN_PATH=str(token_path),
        FORESTREET_SIDECAR_SERVER_LISTEN=listen,
    )
    for name, value in settings.items():
        env[f"FORESTREET_SIDECAR_{name.upper()}"] = str(value)
    return env


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (the child binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def shell_line(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """A copy-pasteable rendering of a command (only the FORESTREET_* part of ``env``)."""
    shown = [f"{k}={v}" for k, v in sorted((env or {}).items()) if k.startswith("FORESTREET")]
    return " ".join([*shown, *cmd])


# --- fake API and child processes --------------------------------------------------------------


@contextlib.contextmanager
def fake_api(lifetime: float = 3600.0) -> Iterator[FakeApi]:
    """The in-process fake auth API on 127.0.0.1, stopped on exit."""
    api = FakeApi(LOCALHOST, 0, lifetime=lifetime, seed=1)
    api.start()
    try:
        yield api
    finally:
        api.stop()


def session_count(api: FakeApi) -> int:
    return sum(r.path == SESSION_PATH for r in api.requests)


def terminate(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str], sig: int = signal.SIGTERM
) -> None:
    """End a child we started: ``sig``, then SIGKILL after STOP_SECONDS; always reaped."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_SECONDS)


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    """:func:`terminate`, then close the pipes (join any thread reading them first)."""
    terminate(proc, sig)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


@contextlib.contextmanager
def spawned(
    cmd: Sequence[str], env: Mapping[str, str], *, capture: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process that is always stopped (SIGTERM, then SIGKILL) when the block ends."""
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    proc = subprocess.Popen(list(cmd), env=dict(env), stdout=out, stderr=out)
    try:
        yield proc
    finally:
        stop(proc)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.001) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def proc_status_kib(pid: int, field_name: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM`` ...), in KiB."""
    with Path(f"/proc/{pid}/status").open(encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name == field_name:
                return int(value.split()[0])
    raise KeyError(f"{field_name} not in /proc/{pid}/status")


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads) in clock ticks, from ``/proc/<pid>/stat``."""
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = text[text.rindex(")") + 2 :].split()
    # After "pid (comm) ": state is field 3; utime and stime are fields 14 and 15.
    return int(fields[11]) + int(fields[12])


def proc_context_switches(pid: int) -> int:
    """Voluntary context switches (≈ wake-ups) summed over every thread of the process."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError), (task / "status").open(encoding="ascii") as status:
            for line in status:
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


# --- statistics and results --------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(slots=True)
class Figure:
    """One row of the results table.

    ``goal_ratio`` is a goal on ours / baseline; ``goal_max`` a goal on the absolute value of
    ours (in ``unit``). ``met`` is None when there is no goal.
    """

    name: str
    unit: str
    ours: float
    baseline: float | None = None
    goal_ratio: float | None = None
    goal_max: float | None = None
    runs: int = 0
    command: str = ""
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline or math.isnan(self.baseline):
            return None
        return self.ours / self.baseline

    @property
    def goal(self) -> str:
        if self.goal_ratio is not None:
            return f"≤ {self.goal_ratio:g}x baseline"
        if self.goal_max is not None:
            return f"≤ {self.goal_max:g} {self.unit}"
        return "—"

    @property
    def met(self) -> bool | None:
        if self.goal_ratio is not None:
            ratio = self.ratio
            return None if ratio is None else ratio <= self.goal_ratio
        if self.goal_max is not None:
            return self.ours <= self.goal_max
        return None

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data.update(ratio=self.ratio, goal=self.goal, met=self.met)
        return data


def _number(value: float | None, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "—"
    magnitude = abs(value)
    if magnitude >= 100:
        text = f"{value:.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def table(figures: Sequence[Figure]) -> str:
    """A Markdown table: figure, baseline, ours, ratio, goal, met."""
    rows = [
        "| figure | baseline | ours | ratio | goal | met | runs |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for fig in figures:
        ratio = fig.ratio
        met = {True: "yes", False: "**no**", None: "—"}[fig.met]
        rows.append(
            f"| {fig.name} | {_number(fig.baseline, fig.unit)} | {_number(fig.ours, fig.unit)} "
            f"| {'—' if ratio is None else f'{ratio:.2f}x'} | {fig.goal} | {met} | {fig.runs} |"
        )
    return "\n".join(rows)


def machine() -> dict[str, object]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }


def machine_line() -> str:
    info = machine()
    return (
        f"machine: {info['cpu_count']} CPUs, {info['platform']}, "
        f"{info['implementation']} {info['python']}"
    )


def write_json(
    path: Path, figures: Sequence[Figure], extra: Mapping[str, object] | None = None
) -> None:
    document: dict[str, object] = {
        "machine": machine(),
        "figures": [fig.as_json() for fig in figures],
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def compile_package() -> None:
    """Byte-compile ``sidecar`` as an installed package would be (pip and the image do).

    With PYTHONDONTWRITEBYTECODE set (as on these machines), an editable install otherwise
    recompiles every edited module on every start, and the benchmark would time the
    compiler rather than the sidecar.
    """
    import compileall

    compileall.compile_dir(REPO / "sidecar", quiet=1)


def report(
    figures: Sequence[Figure], json_path: Path | None, extra: Mapping[str, object] | None = None
) -> None:
    """Print the table (and the machine) and optionally write the JSON document."""
    print(machine_line())
    print(table(figures))
    for fig in figures:
        if fig.note:
            print(f"- {fig.name}: {fig.note}")
    if json_path is not None:
        write_json(json_path, figures, extra)


def parser(description: str | None, runs: int | None) -> argparse.ArgumentParser:
    """A command line with the options every benchmark takes (``--runs`` unless None)."""
    cli = argparse.ArgumentParser(description=description)
    if runs is not None:
        cli.add_argument(
            "--runs", type=int, default=runs, help=f"interleaved runs (default {runs})"
        )
    cli.add_argument("--json", type=Path, default=None, help="also write the results here")
    return cli
