"""`status`: ask the running sidecar at server.listen, and say for a person how it is doing.

It reads what the port already serves (/readyz, /healthz, /metrics): no endpoint exists
for it alone. Exit 0 when ready, 1 when not, 3 when nothing answers (2 is a usage error).
"""

from __future__ import annotations

import http.client
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from sidecar.outcome import iso

EXIT_READY = 0
EXIT_NOT_READY = 1
EXIT_UNREACHABLE = 3
TIMEOUT_SECONDS = 3.0
PREFIX = "forestreet_sidecar_"
# An address that listens everywhere is asked on the loopback of its family.
_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - compared, not bound


class UnreachableError(Exception):
    """Nothing at the address answered as the sidecar does."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes


def ask_address(address: tuple[str, int]) -> tuple[str, int]:
    host, port = address
    return _ANY.get(host, host), port


def shown(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def get(address: tuple[str, int], path: str, timeout: float = TIMEOUT_SECONDS) -> Answer:
    host, port = address
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Accept": "text/plain"})
        response = connection.getresponse()
        return Answer(response.status, response.read(1 << 20))
    except TimeoutError:
        raise UnreachableError(f"no answer to {path} within {timeout:g}s") from None
    except ConnectionRefusedError:
        raise UnreachableError("connection refused (is the sidecar running?)") from None
    except (OSError, http.client.HTTPException) as exc:
        words = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise UnreachableError(f"{path}: {words}") from None
    finally:
        connection.close()


def _probe(answer: Answer) -> dict[str, Any]:
    try:
        detail = json.loads(answer.body)
    except ValueError:
        detail = None
    return detail if isinstance(detail, dict) else {}


def _metrics(text: str) -> tuple[dict[str, float], dict[str, float]]:
    """Our gauges by short name, and the failures since start by reason (non-zero only)."""
    from prometheus_client.parser import text_string_to_metric_families

    gauges: dict[str, float] = {}
    failures: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(PREFIX):
                continue
            name = sample.name.removeprefix(PREFIX)
            if name == "refreshes_total":
                if sample.labels.get("result") == "failure" and sample.value > 0:
                    failures[sample.labels.get("reason", "?")] = sample.value
            elif not sample.labels:
                gauges[name] = sample.value
    return gauges, failures


def collect(address: tuple[str, int], now: float) -> dict[str, Any]:
    """What the sidecar at ``address`` says, as one plain object (the ``--json`` output)."""
    asked = ask_address(address)
    ready = get(asked, "/readyz")
    health = get(asked, "/healthz")
    readiness, liveness = _probe(ready), _probe(health)
    if "ready" not in readiness:
        raise UnreachableError("/readyz did not answer as forestreet-sidecar does")
    report: dict[str, Any] = {
        "address": shown(asked),
        "ready": ready.status == 200,
        "reason": readiness.get("reason"),
        "loop": liveness.get("status", "unknown"),
        "loop_reason": liveness.get("reason"),
    }
    try:
        metrics = get(asked, "/metrics")
    except UnreachableError as exc:  # the first attempt may still be under way
        report["metrics"] = f"unavailable: {exc}"
        return report
    if metrics.status != 200:
        report["metrics"] = f"unavailable: HTTP {metrics.status}"
        return report
    gauges, failures = _metrics(metrics.body.decode("utf-8", "replace"))

    def moment(name: str) -> float | None:
        value = gauges.get(name)
        return value if value is not None and value > 0 and math.isfinite(value) else None

    expires = moment("token_expiry_timestamp_seconds")
    planned = moment("next_refresh_timestamp_seconds")
    success = moment("last_success_timestamp_seconds")
    report.update(
        {
            "expires_at": None if expires is None else iso(expires),
            "expires_in": None if expires is None else round(expires - now, 1),
            "lifetime": moment("token_lifetime_seconds"),
            "next_refresh_at": None if planned is None else iso(planned),
            "next_refresh_in": None if planned is None else round(planned - now, 1),
            "last_success_at": None if success is None else iso(success),
            "last_success_ago": None if success is None else round(now - success, 1),
            "consecutive_failures": int(gauges.get("consecutive_failures", 0)),
            # /healthz names the reason of the last failure while failures run on.
            "last_failure": _text(liveness.get("last_failure")),
            "failures_since_start": {k: int(v) for k, v in sorted(failures.items())},
        }
    )
    return report


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def duration(seconds: float) -> str:
    """``1h 02m``, ``3m 05s``, ``12s``: a span a person reads at a glance."""
    left = round(abs(seconds))
    days, left = divmod(left, 86400)
    hours, left = divmod(left, 3600)
    minutes, secs = divmod(left, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _when(at: str | None, offset: float | None, *, past: bool = False) -> str:
    if at is None or offset is None:
        return "unknown"
    if past or offset < 0:
        return f"{at} ({duration(offset)} ago)"
    return f"{at} (in {duration(offset)})"


def human(report: dict[str, Any]) -> str:
    ready = report["ready"]
    head = f"forestreet-sidecar at {report['address']}: " + (
        "ready" if ready else f"NOT READY: {report.get('reason') or 'no reason given'}"
    )
    lines = [head]
    loop = report["loop"]
    if report.get("loop_reason"):
        loop = f"{loop}: {report['loop_reason']}"
    rows: list[tuple[str, str]] = [("refresh loop", loop)]
    if "metrics" in report:
        rows.append(("metrics", report["metrics"]))
    else:
        expires_in = report["expires_in"]
        if expires_in is None:
            on_disk = "none written yet"
        else:
            state = "valid" if expires_in > 0 else "EXPIRED"
            on_disk = f"{state}, expires {_when(report['expires_at'], expires_in)}"
        if report.get("lifetime"):
            on_disk += f", lifetime {duration(report['lifetime'])}"
        failures = report["failures_since_start"]
        counted = ", ".join(f"{reason}: {count}" for reason, count in failures.items())
        in_a_row = f"{report['consecutive_failures']} in a row"
        if report["consecutive_failures"] and report.get("last_failure"):
            in_a_row += f", the last {report['last_failure']}"
        rows += [
            ("token", on_disk),
            ("next refresh", _when(report["next_refresh_at"], report["next_refresh_in"])),
            (
                "last success",
                _when(report["last_success_at"], report["last_success_ago"], past=True),
            ),
            ("failures", in_a_row),
            ("since start", counted or "no failure"),
        ]
    lines += [f"  {label:<13} {value}" for label, value in rows]
    return "\n".join(lines)


def answer(address: tuple[str, int] | None, *, as_json: bool) -> tuple[int, str, str]:
    """(exit code, what goes to stdout, the one line for stderr) of ``status``."""
    if address is None:
        message = "server.listen is empty: this configuration runs no port to ask"
        return _unreachable(None, message, as_json=as_json)
    try:
        report = collect(address, time.time())
    except UnreachableError as exc:
        return _unreachable(address, str(exc), as_json=as_json)
    text = json.dumps(report) if as_json else human(report)
    return (EXIT_READY if report["ready"] else EXIT_NOT_READY), text, ""


def _unreachable(
    address: tuple[str, int] | None, message: str, *, as_json: bool
) -> tuple[int, str, str]:
    asked = shown(ask_address(address)) if address is not None else None
    where = f" at {asked}" if asked else ""
    line = f"forestreet-sidecar: status: cannot reach the sidecar{where}: {message}"
    text = json.dumps({"address": asked, "reachable": False, "error": message}) if as_json else ""
    return EXIT_UNREACHABLE, text, line
