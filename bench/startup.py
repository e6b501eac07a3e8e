"""Startup: time from exec of the command to the token on disk, against the baseline.

A sidecar's start delays its application (the native-sidecar startupProbe gates it), so this is
the time a pod waits. Per round, interleaved: ``forestreet-sidecar once``, the baseline, then
``forestreet-sidecar run`` (with the probe server on a free port), the baseline again. The clock
starts just before ``Popen``; it stops when a poll of the token file (every 0.5 ms) first sees
it. For ``once`` and the baseline the time to their exit (exit 0 checked) is reported too: an
init container's successor waits for that. ``run`` is stopped with SIGTERM once its token is
there. A fresh directory per run, so ``run`` never adopts a token.

It also reports where the time goes: ``python -X importtime -c "import sidecar.cli"`` (top entries
by cumulative time, median over a few runs), and for ``once`` and ``run`` against the fake, which
top-level packages are imported before the fake API receives the first request.

Usage: python bench/startup.py [--runs 20] [--json PATH] [--imports-only]
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
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
    report,
    shell_line,
    sidecar_cmd,
    stop,
    terminate,
)
from sidecar.fake_api import SESSION_PATH

GOAL_RATIO = 2.5
TIMEOUT = 30.0
POLL_SECONDS = 0.0005
# Packages worth naming when saying what is imported before the first request.
WATCHED = (
    "requests",
    "urllib3",
    "structlog",
    "yaml",
    "apscheduler",
    "prometheus_client",
    "sidecar.fake_api",
    "sidecar.config",
    "sidecar.api",
    "http.server",
    "ssl",
    "json",
    "urllib.request",
)


class BenchError(RuntimeError):
    """A child did not do its job; the figure would be meaningless."""


def _check_token(token_path: Path, what: str) -> None:
    if not token_path.is_file() or token_path.stat().st_size == 0:
        raise BenchError(f"{what}: no token at {token_path}")


def time_to_exit(cmd: Sequence[str], env: dict[str, str], token_path: Path) -> tuple[float, float]:
    """Seconds from Popen of a command that writes the token and exits 0: (to token, to exit).

    The token file is polled while waiting, so the figure by exit can be split into the time to
    the token and the time the process takes to finish after it.
    """
    started = time.perf_counter()
    deadline = time.monotonic() + TIMEOUT
    proc = subprocess.Popen(
        list(cmd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    token_at = exit_at = None
    try:
        while exit_at is None:
            if token_at is None and token_path.exists():
                token_at = time.perf_counter()
            if proc.poll() is not None:
                exit_at = time.perf_counter()
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{' '.join(cmd)}: no exit within {TIMEOUT:g}s")
            time.sleep(POLL_SECONDS)
    finally:
        stop(proc)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)}: exit {proc.returncode}")
    _check_token(token_path, " ".join(cmd))
    return (exit_at if token_at is None else token_at) - started, exit_at - started


def time_to_token(cmd: Sequence[str], env: dict[str, str], token_path: Path) -> float:
    """Seconds from Popen of a long-running command until the token file exists."""
    started = time.perf_counter()
    deadline = time.monotonic() + TIMEOUT
    proc = subprocess.Popen(
        list(cmd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while not token_path.exists():
            if proc.poll() is not None:
                raise BenchError(f"{' '.join(cmd)}: exited {proc.returncode} before the token")
            if time.monotonic() > deadline:
                raise BenchError(f"{' '.join(cmd)}: no token within {TIMEOUT:g}s")
            time.sleep(POLL_SECONDS)
        elapsed = time.perf_counter() - started
    finally:
        stop(proc)
    return elapsed


def measure(runs: int = 20, warmup: int = 1) -> list[Figure]:
    """Interleaved rounds of once / baseline / run / baseline; medians and ratios."""
    compile_package()
    samples: dict[str, list[float]] = defaultdict(list)
    with fake_api(lifetime=3600.0) as api, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        root = Path(tmp)
        counter = 0

        def fresh() -> Path:
            nonlocal counter
            counter += 1
            directory = root / str(counter)
            directory.mkdir()
            return directory / "token"

        def once() -> tuple[float, float]:
            token = fresh()
            return time_to_exit(sidecar_cmd("once"), child_env(api.url, token), token)

        def baseline() -> tuple[float, float]:
            token = fresh()
            return time_to_exit(baseline_cmd(api.url, token), child_env(api.url, token), token)

        def run() -> float:
            token = fresh()
            env = child_env(api.url, token, listen=f"127.0.0.1:{free_port()}")
            return time_to_token(sidecar_cmd("run"), env, token)

        for round_ in range(warmup + runs):  # the warm-up rounds byte-compile, fill the caches
            record = round_ >= warmup
            results = {
                "once": once(),
                "baseline-1": baseline(),
                "run": (run(), math.nan),
                "baseline-2": baseline(),
            }
            if record:
                for name, (to_token, to_exit) in results.items():
                    kind = name.split("-")[0]
                    samples[f"{kind}_token"].append(to_token * 1000)
                    if not math.isnan(to_exit):
                        samples[f"{kind}_exit"].append(to_exit * 1000)

    base = median(samples["baseline_token"])
    base_exit = median(samples["baseline_exit"])
    example = child_env("http://127.0.0.1:PORT", Path("/tmp/x/token"))
    return [
        Figure(
            name="start → token on disk: `once`",
            unit="ms",
            ours=median(samples["once_token"]),
            baseline=base,
            goal_ratio=GOAL_RATIO,
            runs=runs,
            command=shell_line(sidecar_cmd("once"), example),
            note="both: first poll (every 0.5 ms) that sees the token file",
            samples={k: samples[k] for k in ("once_token", "baseline_token")},
        ),
        Figure(
            name="start → exit: `once` (init-container mode)",
            unit="ms",
            ours=median(samples["once_exit"]),
            baseline=base_exit,
            goal_ratio=None,
            runs=runs,
            command=shell_line(sidecar_cmd("once"), example),
            note="what an init container's successor waits for; no goal was set",
            samples={k: samples[k] for k in ("once_exit", "baseline_exit")},
        ),
        Figure(
            name="start → token: `run` (file appears)",
            unit="ms",
            ours=median(samples["run_token"]),
            baseline=base,
            goal_ratio=GOAL_RATIO,
            runs=runs,
            command=shell_line(
                sidecar_cmd("run"),
                {**example, "FORESTREET_SIDECAR_SERVER_LISTEN": "127.0.0.1:PORT"},
            ),
            note="both: first poll (every 0.5 ms) that sees the token file",
            samples={k: samples[k] for k in ("run_token", "baseline_token")},
        ),
    ]


# --- where the time goes -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportLine:
    name: str
    self_us: int
    cumulative_us: int
    depth: int
    read_at: float = 0.0  # time.monotonic() when the line was read


def parse_importtime(
    lines: Sequence[str], read_at: Sequence[float] | None = None
) -> list[ImportLine]:
    """The ``import time: self | cumulative | name`` lines of ``-X importtime`` output."""
    parsed = []
    for index, line in enumerate(lines):
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        self_text, cumulative_text, name = line[len("import time:") :].split("|")
        if not self_text.strip().isdigit():
            continue  # the header line
        stripped = name.strip()
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        parsed.append(
            ImportLine(
                stripped,
                int(self_text),
                int(cumulative_text),
                depth,
                read_at[index] if read_at is not None else 0.0,
            )
        )
    return parsed


def import_top(top: int = 15, repeats: int = 5) -> list[dict[str, object]]:
    """``-X importtime -c "import sidecar.cli"``: top entries by cumulative time (median µs)."""
    cumulative: dict[str, list[int]] = defaultdict(list)
    own: dict[str, list[int]] = defaultdict(list)
    depth: dict[str, int] = {}
    for _ in range(repeats):
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import sidecar.cli"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        )
        for line in parse_importtime(result.stderr.splitlines()):
            cumulative[line.name].append(line.cumulative_us)
            own[line.name].append(line.self_us)
            depth.setdefault(line.name, line.depth)
    rows = [
        {
            "module": name,
            "cumulative_ms": median(values) / 1000,
            "self_ms": median(own[name]) / 1000,
            "depth": depth[name],
        }
        for name, values in cumulative.items()
    ]
    rows.sort(key=lambda row: float(str(row["cumulative_ms"])), reverse=True)
    return rows[:top]


def imports_before_first_request(command: str) -> dict[str, object]:
    """Run ``command`` under ``-X importtime`` against the fake; split imports at the request.

    Each stderr line is timestamped when read; a module counts as imported before the first
    request when its line was read before the fake received that request.
    """
    with fake_api(lifetime=3600.0) as api, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        token = Path(tmp) / "token"
        listen = f"127.0.0.1:{free_port()}" if command == "run" else ""
        env = child_env(api.url, token, listen=listen)
        proc = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "sidecar", command],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[str] = []
        stamps: list[float] = []

        def reader() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                stamps.append(time.monotonic())
                lines.append(line.rstrip("\n"))

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + TIMEOUT
            while not token.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.2)  # let `run` finish what it imports right after the first token
        finally:
            terminate(proc)
            thread.join(TIMEOUT)
            stop(proc)
        requests = [r.received_at for r in api.requests if r.path == SESSION_PATH]
    if not requests:
        raise BenchError(f"{command}: the fake received no request")
    first = requests[0]
    parsed = parse_importtime(lines, stamps)
    before = [line for line in parsed if line.read_at <= first]
    after = [line for line in parsed if line.read_at > first]
    before_names = {line.name for line in before}
    after_names = {line.name for line in after}
    top_before = sorted(
        (line for line in before if line.depth == 0), key=lambda line: -line.cumulative_us
    )
    return {
        "command": command,
        "top_before": [
            {"module": line.name, "cumulative_ms": line.cumulative_us / 1000}
            for line in top_before[:8]
        ],
        "modules_before": len(before),
        "modules_after": len(after),
        "import_ms_before": sum(line.self_us for line in before) / 1000,
        "import_ms_after": sum(line.self_us for line in after) / 1000,
        "watched": {
            name: "before" if name in before_names else "after" if name in after_names else "never"
            for name in WATCHED
        },
    }


def import_report(top: int = 15) -> dict[str, object]:
    return {
        "importtime_top": import_top(top),
        "first_request": [imports_before_first_request(c) for c in ("once", "run")],
    }


def format_import_report(data: dict[str, object]) -> str:
    out = ['`python -X importtime -c "import sidecar.cli"`, top entries by cumulative time:', ""]
    out += ["| module | cumulative ms | self ms |", "|---|---:|---:|"]
    rows = data["importtime_top"]
    assert isinstance(rows, list)
    for row in rows:
        indent = "&nbsp;&nbsp;" * int(row["depth"])
        out.append(
            f"| {indent}`{row['module']}` | {float(row['cumulative_ms']):.1f} "
            f"| {float(row['self_ms']):.1f} |"
        )
    first = data["first_request"]
    assert isinstance(first, list)
    for entry in first:
        out += [
            "",
            f"`{entry['command']}` (under -X importtime): {entry['modules_before']} modules "
            f"({float(entry['import_ms_before']):.0f} ms of import self time) before the first "
            f"request, {entry['modules_after']} ({float(entry['import_ms_after']):.0f} ms) after.",
        ]
        top_before = entry["top_before"]
        assert isinstance(top_before, list)
        out.append(
            "- largest imports before it (cumulative ms): "
            + ", ".join(f"`{t['module']}` {float(t['cumulative_ms']):.0f}" for t in top_before)
        )
        watched = entry["watched"]
        assert isinstance(watched, dict)
        for when in ("before", "after", "never"):
            names = [name for name, w in watched.items() if w == when]
            if names:
                label = "not imported" if when == "never" else f"imported {when} the first request"
                out.append(f"- {label}: {', '.join(f'`{n}`' for n in names)}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser(__doc__.splitlines()[0] if __doc__ else None, runs=20)
    cli.add_argument("--top", type=int, default=15, help="import-time entries to show")
    cli.add_argument("--imports-only", action="store_true", help="only the import breakdown")
    args = cli.parse_args(argv)
    imports = import_report(args.top)
    figures = [] if args.imports_only else measure(args.runs)
    report(figures, args.json, {"imports": imports})
    print()
    print(format_import_report(imports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
