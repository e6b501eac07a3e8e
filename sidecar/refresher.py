"""One refresh attempt: read the key, fetch a session, write it, record the outcome.

The scheduler, ``once`` and the tests all call ``Refresher.attempt``; it never raises
for a failed refresh, it returns the decision of what to do next.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from random import Random
from typing import TYPE_CHECKING, Any

from sidecar import sink
from sidecar.api import SHORTAGE_HINT, ApiClient, Fetched, shortage
from sidecar.config import Config
from sidecar.errors import CredentialError, EndpointError, RefreshError, TransientError
from sidecar.logs import REDACTOR
from sidecar.policy import Lane, next_refresh, retry_delay
from sidecar.session import TOKEN_PATTERN, fingerprint, jwt_claims, positive_number

if TYPE_CHECKING:  # prometheus_client is not needed on the way to the first token
    from sidecar.metrics import Metrics

KEY_HINT = "check that api.key_file (or the key variable / credential) exists and is readable"
BUG_HINT = "an unforeseen failure, counted and retried; please report it with this message"


class Stopping(Exception):  # noqa: N818 - a signal, not an error
    """Raised inside an attempt when shutdown began before the write."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt did and when the next one is due (seconds from now)."""

    ok: bool
    delay: float
    error: RefreshError | None = None
    lane: Lane | None = None


@dataclass(slots=True)
class TokenOnDisk:
    """What this process knows about the token file: whose token, and until when."""

    fingerprint: str
    expires_monotonic: float
    expires_wall: float


class Refresher:
    def __init__(
        self,
        config: Config,
        client: ApiClient,
        metrics: Metrics | None,
        log: Any,
        *,
        rng: Random,
        environ: Mapping[str, str],
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.client = client
        self.metrics = metrics
        self.log = log
        self.rng = rng
        self.environ = environ
        self.monotonic = monotonic
        self.wall = wall
        self.failures = 0
        self._failing_since: float | None = None  # monotonic start of the first failure
        self._obtained = False  # a token fetched by this process (a kept one does not count)
        self._key = ""  # of the attempt under way: never in a message
        self.token: TokenOnDisk | None = None
        self._unrecorded: list[Callable[[Metrics], None]] = []
        self.stopping = threading.Event()
        # Held across every write, so shutdown can wait for one to finish and bar the next.
        self.write_lock = threading.Lock()

    def attach_metrics(self, metrics: Metrics) -> None:
        """Start recording, replaying what happened before the metrics existed."""
        self.metrics = metrics
        for record in self._unrecorded:
            record(metrics)
        self._unrecorded.clear()

    def _record(self, record: Callable[[Metrics], None]) -> None:
        if self.metrics is None:
            self._unrecorded.append(record)
        else:
            record(self.metrics)

    def remaining(self) -> float | None:
        """Seconds the token on disk stays valid, or None when there is none valid."""
        if self.token is None:
            return None
        left = self.token.expires_monotonic - self.monotonic()
        return left if left > 0 else None

    def attempt(self) -> Outcome:
        """One attempt, always counted, never raising but for shutdown.

        The boundary of the attempt: a failure nobody foresaw (a parser's MemoryError or
        RecursionError, an OSError from deep in a library, a bug) is an
        ``internal_error``, counted and retried like a network blip, not a crash of the
        loop, an uncounted attempt or a credential problem.
        """
        started = self.monotonic()
        try:
            fetched = self._fetch()
            self._write(fetched)
        except RefreshError as exc:
            return self._failed(exc, self.monotonic() - started)
        except Stopping:
            raise
        except Exception as exc:  # noqa: BLE001 - see the docstring
            return self._failed(self._unexpected(exc), self.monotonic() - started)
        return self._succeeded(fetched, self.monotonic() - started)

    def _unexpected(self, exc: Exception) -> TransientError:
        words = shortage(exc)
        hint = SHORTAGE_HINT
        if words is None:
            hint = BUG_HINT
            if isinstance(exc, RecursionError):
                words = "nesting too deep (RecursionError)"
            else:
                text = self._scrub(str(exc).strip().split("\n", 1)[0])[:160]
                words = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        error = TransientError(
            "internal_error", f"unexpected failure in the attempt: {words}", hint=hint
        )
        error.__cause__ = exc
        return error

    def _scrub(self, text: str) -> str:
        """An exception's text without the key, in any form a library may have quoted it."""
        key = self._key
        if key:
            for form in {key, repr(key)[1:-1], json.dumps(key)[1:-1]}:
                text = text.replace(form, "<key>")
        return REDACTOR.scrub(text)

    def _fetch(self) -> Fetched:
        self._key = ""
        try:
            key = self.config.key.read(self.environ)
        except (OSError, ValueError) as exc:
            short = shortage(exc)
            if short is not None:
                raise TransientError(
                    "internal_error",
                    f"cannot read the API key from {self.config.key.describe()}: {short}",
                    hint=SHORTAGE_HINT,
                ) from exc
            detail = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise CredentialError(
                "key_unavailable",
                f"cannot read the API key from {self.config.key.describe()}: {detail}",
                hint=KEY_HINT,
            ) from exc
        self._key = key.value
        REDACTOR.add(key.value)
        fetched = self.client.fetch(key)
        REDACTOR.add(fetched.session.access_token)
        if fetched.session.refresh_token:
            REDACTOR.add(fetched.session.refresh_token)
        return fetched

    def _write(self, fetched: Fetched) -> None:
        token = self.config.token
        session = fetched.session
        with self.write_lock:
            if self.stopping.is_set():
                raise Stopping
            sink.write_atomic(
                token.path, session.access_token.encode(), mode=token.mode, gid=token.gid
            )
            self.token = TokenOnDisk(
                fingerprint=session.fingerprint,
                expires_monotonic=fetched.sent_monotonic + session.expires_in,
                expires_wall=fetched.sent_wall + session.expires_in,
            )
            if token.session_path is not None:
                document: dict[str, object] = {
                    "accessToken": session.access_token,
                    "expiresIn": session.expires_in,
                    "obtainedAt": round(fetched.sent_wall, 3),
                    "expiresAt": round(fetched.sent_wall + session.expires_in, 3),
                }
                if token.include_refresh_token and session.refresh_token:
                    document["refreshToken"] = session.refresh_token
                sink.write_json_atomic(token.session_path, document, mode=token.mode, gid=token.gid)

    def _succeeded(self, fetched: Fetched, duration: float) -> Outcome:
        session = fetched.session
        self.failures = 0
        self._failing_since = None
        # The first token of a process refreshes anywhere in a wide window, so a fleet
        # rolled out at once does not refresh in one wave.
        plan = next_refresh(
            session.expires_in, self.config.refresh, self.rng, first=not self._obtained
        )
        self._obtained = True
        delay = max(0.0, fetched.sent_monotonic + plan - self.monotonic())
        expires_wall = fetched.sent_wall + session.expires_in
        skew = (
            session.expires_at - (fetched.sent_wall + session.expires_in)
            if session.expires_at is not None
            else None
        )
        succeeded_at = self.wall()

        def record(metrics: Metrics) -> None:
            metrics.success(duration)
            metrics.token_expiry.set(expires_wall)
            metrics.last_success.set(succeeded_at)
            if skew is not None:
                metrics.clock_skew.set(skew)

        self._record(record)
        if session.expires_in < self.config.refresh.min_interval_seconds:
            self.log.warning(
                "short_lifetime",
                expires_in=session.expires_in,
                min_interval_seconds=self.config.refresh.min_interval_seconds,
                message="expiresIn is below refresh.min_interval_seconds; "
                "the token will expire before the next refresh",
            )
        self.log.info(
            "token_refreshed",
            path=str(self.config.token.path),
            token_fingerprint=session.fingerprint,
            expires_in=session.expires_in,
            expires_at=iso(expires_wall),
            next_refresh_in=round(delay, 3),
            clock_skew=None if skew is None else round(skew, 3),
            duration=round(duration, 4),
        )
        return Outcome(ok=True, delay=delay)

    def _failed(self, error: RefreshError, duration: float) -> Outcome:
        self.failures += 1
        now = self.monotonic()
        if self.failures == 1 or self._failing_since is None:
            self._failing_since = now - duration
        lane = lane_of(error)
        retry_after = error.retry_after if isinstance(error, TransientError) else None
        remaining = self.remaining()
        delay = retry_delay(
            self.failures,
            lane,
            self.config.backoff,
            self.rng,
            retry_after=retry_after,
            remaining=remaining,
            # A sidecar that waited patiently and then lost its token goes on at the cap.
            failing_for=now - self._failing_since,
        )
        failures = self.failures
        self._record(lambda metrics: metrics.failure(error.reason, duration, failures))
        loud = lane is not Lane.RETRYABLE or error.reason in ("write_error", "internal_error")
        fields: dict[str, object] = {
            "reason": error.reason,
            "lane": str(lane),
            "message": str(error),
            "retry_in": round(delay, 3),
            "consecutive_failures": self.failures,
        }
        if error.status is not None:
            fields["status"] = error.status
        if error.reason.isupper():
            fields["error_code"] = error.reason
        if retry_after is not None:
            fields["retry_after"] = retry_after
        if error.hint:
            fields["hint"] = error.hint
        fields["token_valid_for"] = None if remaining is None else round(remaining, 3)
        (self.log.error if loud else self.log.warning)("refresh_failed", **fields)
        return Outcome(ok=False, delay=delay, error=error, lane=lane)

    def adopt_existing(self) -> float | None:
        """Keep a still-valid token from an earlier run; return the delay to its refresh.

        Its expiry comes from our own session file (when it describes this very
        token) or from the token's JWT claims; without either it is not trusted.
        """
        token = self.config.token
        text = sink.read_text(token.path)
        if text is None or not TOKEN_PATTERN.fullmatch(text):
            return None
        now = self.wall()
        known = self._expiry_from_session(text) or _expiry_from_jwt(text, now)
        if known is None:
            return None
        issued, lifetime, expires = known
        if expires <= now:
            return None
        due = issued + next_refresh(lifetime, self.config.refresh, self.rng)
        # Never past expiry (a lifetime below min_interval), never beyond max_interval:
        # what is on disk is not to be trusted with a schedule for years.
        delay = min(max(0.0, due - now), expires - now, self.config.refresh.max_interval_seconds)
        self.token = TokenOnDisk(
            fingerprint=fingerprint(text),
            expires_monotonic=self.monotonic() + (expires - now),
            expires_wall=expires,
        )
        REDACTOR.add(text)

        def record(metrics: Metrics) -> None:
            metrics.token_expiry.set(expires)
            metrics.last_success.set(issued)

        self._record(record)
        self.log.info(
            "token_kept",
            path=str(token.path),
            token_fingerprint=fingerprint(text),
            expires_at=iso(expires),
            next_refresh_in=round(delay, 3),
        )
        return delay

    def _expiry_from_session(self, token_text: str) -> tuple[float, float, float] | None:
        path = self.config.token.session_path
        if path is None:
            return None
        raw = sink.read_text(path)
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("accessToken") != token_text:
            return None
        obtained = positive_number(data.get("obtainedAt"))
        lifetime = positive_number(data.get("expiresIn"))
        if obtained is None or lifetime is None:
            return None
        return obtained, lifetime, obtained + lifetime


def _expiry_from_jwt(token_text: str, now: float) -> tuple[float, float, float] | None:
    claims = jwt_claims(token_text)
    expires = positive_number(claims.get("exp")) if claims is not None else None
    if claims is None or expires is None:
        return None
    issued = positive_number(claims.get("iat"))
    if issued is not None and issued < expires:
        return issued, expires - issued, expires
    return now, expires - now, expires


def lane_of(error: RefreshError) -> Lane:
    if isinstance(error, CredentialError):
        return Lane.CREDENTIAL
    if isinstance(error, EndpointError):
        return Lane.REQUEST
    return Lane.RETRYABLE


def iso(timestamp: float) -> str:
    """ISO-8601 UTC for logs; a time outside what datetime holds is shown as a number.

    An expiresIn of 1e300 is valid JSON and a finite, positive number: it must not crash.
    """
    try:
        moment = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return f"{timestamp:.0f}"
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
