"""The log line of each attempt: one canonical event per unit of work, an observer of it."""

from __future__ import annotations

from typing import Any

from sidecar.config import Config
from sidecar.error_codes import Lane
from sidecar.outcome import Outcome, iso

# Failures an operator must see even while they are retried.
LOUD_REASONS = frozenset({"write_error", "internal_error"})


class Reporter:
    """Logs ``token_refreshed``, ``token_kept`` or ``refresh_failed`` for each outcome.

    In ``once`` (``until`` set, Unix time of its deadline) nothing refreshes later, so
    there is no ``next_refresh_in``, and no ``retry_in`` past the deadline.
    """

    def __init__(self, config: Config, log: Any, *, until: float | None = None) -> None:
        self.config = config
        self.log = log
        self.until = until

    def __call__(self, outcome: Outcome) -> None:
        if outcome.kept:
            self._kept(outcome)
        elif outcome.ok:
            self._refreshed(outcome)
        else:
            self._failed(outcome)
        self._planned(outcome)

    def _next(self, outcome: Outcome, name: str) -> dict[str, object]:
        if self.until is not None and (name == "next_refresh_in" or outcome.next_wall > self.until):
            return {}
        return {name: round(outcome.delay, 3)}

    def _kept(self, outcome: Outcome) -> None:
        token = outcome.token
        assert token is not None  # noqa: S101 - a kept outcome always has its token
        self.log.info(
            "token_kept",
            path=str(self.config.token.path),
            token_fingerprint=token.fingerprint,
            expires_at=iso(token.expires_wall),
            **self._next(outcome, "next_refresh_in"),
        )

    def _refreshed(self, outcome: Outcome) -> None:
        token = outcome.token
        assert token is not None  # noqa: S101 - a success always wrote its token
        minimum = self.config.refresh.min_interval_seconds
        if token.lifetime < minimum:
            self.log.warning(
                "short_lifetime",
                expires_in=token.lifetime,
                min_interval_seconds=minimum,
                message="expiresIn is below refresh.min_interval_seconds; "
                "the token will expire before the next refresh",
            )
        self.log.info(
            "token_refreshed",
            path=str(self.config.token.path),
            token_fingerprint=token.fingerprint,
            expires_in=token.lifetime,
            expires_at=iso(token.expires_wall),
            **self._next(outcome, "next_refresh_in"),
            clock_skew=None if outcome.skew is None else round(outcome.skew, 3),
            duration=round(outcome.duration, 4),
        )

    def _failed(self, outcome: Outcome) -> None:
        error = outcome.error
        assert error is not None  # noqa: S101 - a failure always carries its error
        remaining = outcome.valid_for
        fields: dict[str, object] = {
            "reason": error.reason,
            "lane": str(error.lane),
            "message": str(error),
            **self._next(outcome, "retry_in"),
            "consecutive_failures": outcome.failures,
            "status": error.status,
            "error_code": error.error_code,
            "retry_after": outcome.retry_after,
            "hint": error.hint or None,
            "token_valid_for": None if remaining is None else round(remaining, 3),
        }
        loud = error.lane is not Lane.RETRYABLE or error.reason in LOUD_REASONS
        (self.log.error if loud else self.log.warning)("refresh_failed", **fields)

    def _planned(self, outcome: Outcome) -> None:
        """At debug level: what the policy was given and what it decided."""
        refresh, backoff = self.config.refresh, self.config.backoff
        remaining = outcome.valid_for
        self.log.debug(
            "attempt_planned",
            ok=outcome.ok,
            reason=outcome.reason,
            lane=None if outcome.error is None else str(outcome.error.lane),
            retry_after=outcome.retry_after,
            consecutive_failures=outcome.failures,
            token_valid_for=None if remaining is None else round(remaining, 3),
            duration=round(outcome.duration, 4),
            delay=round(outcome.delay, 3),
            at_fraction=refresh.at_fraction,
            jitter_fraction=refresh.jitter_fraction,
            first_from_fraction=refresh.first_from_fraction,
            min_interval_seconds=refresh.min_interval_seconds,
            max_interval_seconds=refresh.max_interval_seconds,
            backoff_initial_seconds=backoff.initial_seconds,
            backoff_max_seconds=backoff.max_seconds,
            backoff_multiplier=backoff.multiplier,
        )
