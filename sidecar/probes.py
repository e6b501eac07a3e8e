"""What /healthz and /readyz answer: liveness of the refresh loop, readiness of the token."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sidecar import sink
from sidecar.config import Config
from sidecar.outcome import iso
from sidecar.refresher import Refresher
from sidecar.schedule import Schedule
from sidecar.session import fingerprint

# Beyond its own deadline (twice the timeout), an attempt this late means a stuck loop.
STUCK_SLACK_SECONDS = 10.0


class Probes:
    def __init__(
        self,
        config: Config,
        refresher: Refresher,
        schedule: Schedule,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.refresher = refresher
        self.schedule = schedule
        self.monotonic = monotonic
        # Time an attempt may take before the loop counts as stuck.
        self.stuck_after = 2 * config.api.timeout_seconds + STUCK_SLACK_SECONDS

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Alive unless the loop is stuck; an upstream outage is not a liveness problem."""
        if not self.schedule.started:
            return True, {"status": "starting"}
        if not self.schedule.alive():
            return False, {"status": "stopped", "reason": "scheduler is not running"}
        now = self.monotonic()
        running_since, due = self.schedule.running_since(), self.schedule.due()
        if running_since is not None and now - running_since > self.stuck_after:
            late = round(now - running_since, 1)
            return False, {"status": "stuck", "reason": f"attempt running for {late}s"}
        if running_since is None and now - due > self.stuck_after:
            late = round(now - due, 1)
            return False, {"status": "stuck", "reason": f"refresh overdue by {late}s"}
        detail: dict[str, Any] = {"status": "ok", "consecutive_failures": self.refresher.failures}
        last = self.refresher.last
        if detail["consecutive_failures"] and last is not None and not last.ok:
            # The reason only (a metric label, a closed set): the probe port may be open to
            # the cluster, and an error's message can quote what the upstream sent.
            detail["last_failure"] = last.reason
        return True, detail

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when the file on disk holds the token we wrote (or kept) and it is unexpired."""
        path = self.config.token.path
        # In this order (the writer sets writing, renames, sets token, clears writing): a
        # file renamed into place before ``token`` names it is still named by ``writing``.
        text = sink.read_text(path)
        known = self.refresher.token
        writing = self.refresher.writing
        if text and writing is not None and fingerprint(text) == writing.fingerprint:
            known = writing
        problem = None
        if not text:
            problem = f"{path} is missing or empty"
        elif known is None:
            problem = "no token written or kept by this process yet"
        elif fingerprint(text) != known.fingerprint:
            problem = f"{path} holds a token this process did not write"
        elif known.expires_monotonic <= self.refresher.monotonic():
            problem = "the token on disk has expired"
        detail: dict[str, Any] = {"ready": problem is None}
        if problem is not None:
            detail["reason"] = problem
        if known is not None:
            detail["expires_at"] = iso(known.expires_wall)
        return problem is None, detail
