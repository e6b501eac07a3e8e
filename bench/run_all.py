"""Every benchmark of forestreet-sidecar in one pass, and one table of the results.

Startup, memory, idle CPU and punctuality, each against the baseline (``bench/baseline_fetch.py``)
run interleaved in the same pass where there is one. The table has: figure, baseline, ours,
ratio, goal, met. ``--quick`` is a fast pass with small parameters (a smoke run; its figures
are not the ones to quote).

Usage: python bench/run_all.py [--quick] [--json PATH] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import idle_cpu, memory, punctuality, startup
from bench.common import Figure, machine_line, table, write_json


@dataclass(frozen=True, slots=True)
class Settings:
    startup_runs: int = 20
    memory_runs: int = 20
    refreshes: int = 100
    idle_seconds: float = 60.0
    punctuality_refreshes: int = 200


FULL = Settings()
QUICK = Settings(
    startup_runs=3, memory_runs=2, refreshes=20, idle_seconds=5.0, punctuality_refreshes=30
)


def benchmarks(settings: Settings) -> list[tuple[str, Callable[[], list[Figure]]]]:
    return [
        ("startup", lambda: startup.measure(settings.startup_runs)),
        ("memory", lambda: memory.measure(settings.memory_runs, settings.refreshes)),
        ("idle_cpu", lambda: idle_cpu.measure(settings.idle_seconds)),
        ("punctuality", lambda: punctuality.measure(settings.punctuality_refreshes)),
    ]


def markdown(
    figures: Sequence[Figure],
    imports: dict[str, object] | None,
    import_rss: dict[str, float] | None = None,
) -> str:
    out = [machine_line(), "", table(figures), ""]
    out += [f"- {fig.name}: {fig.note}" for fig in figures if fig.note]
    out += ["", "Commands:", ""]
    out += [f"- {fig.name}: `{fig.command}`" for fig in figures]
    if imports is not None:
        out += ["", startup.format_import_report(imports)]
    if import_rss is not None:
        out += ["", memory.format_import_rss(import_rss)]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    cli.add_argument("--quick", action="store_true", help="a fast pass with small parameters")
    cli.add_argument("--json", type=Path, default=None, help="also write the results here")
    cli.add_argument("--markdown", type=Path, default=None, help="also write a Markdown report")
    cli.add_argument(
        "--no-imports", action="store_true", help="skip the import breakdowns (time, RSS)"
    )
    args = cli.parse_args(argv)
    settings = QUICK if args.quick else FULL

    figures: list[Figure] = []
    failed: dict[str, str] = {}
    timings: dict[str, float] = {}
    for name, run in benchmarks(settings):
        print(f"# {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            figures += run()
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not lose the others
            traceback.print_exc()
            failed[name] = f"{exc.__class__.__name__}: {exc}"
        timings[name] = round(time.monotonic() - started, 1)
    imports = None if args.no_imports else startup.import_report()
    import_rss = None if args.no_imports else memory.import_rss(2 if args.quick else 5)

    print(machine_line())
    print(table(figures))
    for fig in figures:
        if fig.note:
            print(f"- {fig.name}: {fig.note}")
    for name, error in failed.items():
        print(f"- {name} FAILED: {error}")
    if imports is not None:
        print()
        print(startup.format_import_report(imports))
    if import_rss is not None:
        print()
        print(memory.format_import_rss(import_rss))
    extra: dict[str, object] = {
        "quick": args.quick,
        "settings": asdict(settings),
        "seconds": timings,
        "failed": failed,
        "imports": imports,
        "import_rss_mib": import_rss,
    }
    if args.json is not None:
        write_json(args.json, figures, extra)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(figures, imports, import_rss), encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
