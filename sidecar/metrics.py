"""Every forestreet_sidecar_* metric, declared once on a registry that is passed in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from sidecar.error_codes import ERROR_CODES

if TYPE_CHECKING:
    from sidecar.outcome import Outcome

PREFIX = "forestreet_sidecar"
LOCAL_REASONS = (
    "timeout",
    "connection_error",
    "invalid_response",
    "write_error",
    "key_unavailable",  # the key file or variable could not be read
    "internal_error",  # an unforeseen failure or a local shortage (file descriptors, memory)
)
# Statuses an HTTP API plausibly answers without a known errorCode; they are
# pre-initialised so the series exist from the first scrape. Another status still
# counts, as http_<status>, and its series appears when it first happens.
COMMON_STATUSES = (
    301, 302, 303, 307, 308,
    400, 401, 403, 404, 405, 406, 408, 409, 410, 413, 415, 422, 429,
    500, 501, 502, 503, 504,
)  # fmt: skip
FAILURE_REASONS = (
    *sorted(ERROR_CODES),
    *LOCAL_REASONS,
    *(f"http_{status}" for status in COMMON_STATUSES),
)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def failure_reason_allowed(reason: str) -> bool:
    """A label value we may emit: the documented set, or http_ and three digits."""
    if reason in FAILURE_REASONS:
        return True
    return reason.startswith("http_") and reason[5:].isdigit() and len(reason) == 8


class Metrics:
    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        # *_created series would double the exposition for a value nobody alerts on.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry
        self.refreshes = Counter(
            f"{PREFIX}_refreshes",
            "Refresh attempts by result and reason (ok, an upstream errorCode, or a local cause).",
            ["result", "reason"],
            registry=registry,
        )
        self.duration = Histogram(
            f"{PREFIX}_refresh_duration_seconds",
            "Time of one refresh attempt: the request plus the write.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.token_expiry = Gauge(
            f"{PREFIX}_token_expiry_timestamp_seconds",
            "Unix time at which the token on disk expires (0 while there is none).",
            registry=registry,
        )
        self.token_lifetime = Gauge(
            f"{PREFIX}_token_lifetime_seconds",
            "expiresIn of the token on disk (0 while there is none).",
            registry=registry,
        )
        self.last_success = Gauge(
            f"{PREFIX}_last_success_timestamp_seconds",
            "Unix time at which the last token was written (0 before the first).",
            registry=registry,
        )
        self.next_refresh = Gauge(
            f"{PREFIX}_next_refresh_timestamp_seconds",
            "Unix time of the next scheduled refresh attempt.",
            registry=registry,
        )
        self.consecutive_failures = Gauge(
            f"{PREFIX}_consecutive_failures",
            "Failed attempts since the last success.",
            registry=registry,
        )
        self.clock_skew = Gauge(
            f"{PREFIX}_clock_skew_seconds",
            "expiresAt minus (local time + expiresIn) at the last success.",
            registry=registry,
        )
        build_info = Gauge(
            f"{PREFIX}_build_info",
            "Always 1; the version label names the running build.",
            ["version"],
            registry=registry,
        )
        build_info.labels(version=version).set(1)
        self.notify_total = Counter(
            f"{PREFIX}_notify",
            "Notifications of the application by method (command, http, signal) and result.",
            ["method", "result"],
            registry=registry,
        )
        self.notify_duration = Histogram(
            f"{PREFIX}_notify_duration_seconds",
            "Time of one notification attempt.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.refreshes.labels(result="success", reason="ok")
        for reason in FAILURE_REASONS:
            self.refreshes.labels(result="failure", reason=reason)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    def observe(self, outcome: Outcome) -> None:
        """The metrics observer of every attempt: the only writer of these gauges."""
        token = outcome.token
        if token is not None:
            self.token_expiry.set(token.expires_wall)
            self.token_lifetime.set(token.lifetime)
        if outcome.kept:
            self.last_success.set(token.obtained_wall if token is not None else 0.0)
        elif outcome.ok:
            self.success(outcome.duration)
            self.last_success.set(outcome.ended_wall)
            if outcome.skew is not None:
                self.clock_skew.set(outcome.skew)
        else:
            self.failure(outcome.reason, outcome.duration, outcome.failures)
        self.next_refresh.set(outcome.next_wall)

    def notify_methods(self, methods: tuple[str, ...]) -> None:
        """The series of the configured notification methods exist from the first scrape."""
        for method in methods:
            for result in ("success", "failure"):
                self.notify_total.labels(method=method, result=result)

    def notified(self, method: str, *, ok: bool, duration: float) -> None:
        """One notification attempt (sidecar.hooks is the only caller)."""
        self.notify_total.labels(method=method, result="success" if ok else "failure").inc()
        self.notify_duration.observe(duration)

    def planned(self, wall: float) -> None:
        """The next attempt moved (a forced refresh, a wall-clock jump)."""
        self.next_refresh.set(wall)

    def success(self, duration: float) -> None:
        self.refreshes.labels(result="success", reason="ok").inc()
        self.duration.observe(duration)
        self.consecutive_failures.set(0)

    def failure(self, reason: str, duration: float, failures: int) -> None:
        label = reason if failure_reason_allowed(reason) else "invalid_response"
        self.refreshes.labels(result="failure", reason=label).inc()
        self.duration.observe(duration)
        self.consecutive_failures.set(failures)
