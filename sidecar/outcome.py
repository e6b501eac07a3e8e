"""The record of one attempt, which every observer receives (stamina's hooks, in spirit).

An attempt ends in exactly one ``Outcome``: the log line, the metrics, systemd's ``STATUS=``
and, later, notify hooks are observers of it, the first attempt included. Observers only
read the record; what to do next is already decided in it (``delay``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sidecar.errors import RefreshError
from sidecar.policy import Lane


@dataclass(frozen=True, slots=True)
class TokenOnDisk:
    """What this process knows about the token file: whose token, and until when."""

    fingerprint: str
    expires_monotonic: float
    expires_wall: float
    obtained_wall: float  # when its request was sent (for a kept token: its issue time)
    lifetime: float  # its expiresIn


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt did, and when the next one is due (``delay`` s after ``ended_wall``).

    ``kept`` marks the start-up "attempt" that made no request because a valid token from
    an earlier run was kept: observers show it, metrics do not count it.
    """

    ok: bool
    delay: float
    duration: float
    ended_wall: float
    failures: int  # consecutive failures after this attempt
    token: TokenOnDisk | None  # the token on disk afterwards, valid or not
    error: RefreshError | None = None
    lane: Lane | None = None
    retry_after: float | None = None
    skew: float | None = None
    kept: bool = False
    # Seconds the token on disk was still valid when the attempt ended, on the monotonic
    # clock the plan uses (a wall-clock jump must not change what the log line says).
    valid_for: float | None = None

    @property
    def reason(self) -> str:
        return "ok" if self.error is None else self.error.reason

    @property
    def next_wall(self) -> float:
        return self.ended_wall + self.delay


Observer = Callable[[Outcome], None]


def iso(timestamp: float) -> str:
    """ISO-8601 UTC for logs; a time outside what datetime holds is shown as a number.

    An expiresIn of 1e300 is valid JSON and a finite, positive number: it must not crash.
    """
    try:
        moment = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return f"{timestamp:.0f}"
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
