"""One refresh attempt: read the key, fetch a session, write the outputs, tell the observers.

The scheduler, ``once`` and the tests all call ``Refresher.attempt``; it never raises
for a failed refresh. It returns one ``Outcome`` (what happened, and when the next attempt
is due) and hands the same record to every observer: the log line, the metrics, systemd.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from random import Random
from typing import TYPE_CHECKING, Any

from sidecar import outputs as outputs_module
from sidecar import report, sink
from sidecar.api import SHORTAGE_HINT, ApiClient, Fetched, shortage
from sidecar.config import Config
from sidecar.errors import CredentialError, RefreshError, TransientError
from sidecar.logs import REDACTOR
from sidecar.outcome import Observer, Outcome, TokenOnDisk, iso
from sidecar.policy import next_refresh, retry_delay
from sidecar.session import TOKEN_PATTERN, fingerprint, jwt_claims, positive_number

if TYPE_CHECKING:  # prometheus_client is not needed on the way to the first token
    from sidecar.metrics import Metrics

__all__ = ["Outcome", "Refresher", "Stopping", "TokenOnDisk", "iso"]

KEY_HINT = "check that api.key_file (or the key variable / credential) exists and is readable"
BUG_HINT = "an unforeseen failure, counted and retried; please report it with this message"


class Stopping(Exception):  # noqa: N818 - a signal, not an error
    """Raised inside an attempt when shutdown began before the write."""


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
        observers: list[Observer] | None = None,  # the log line (default), told last
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
        self.outputs = outputs_module.from_config(config)
        self.failures = 0
        self._failing_since: float | None = None  # monotonic start of the first failure
        self._obtained = False  # a token fetched by this process (a kept one does not count)
        self._key = ""  # of the attempt under way: never in a message
        self.token: TokenOnDisk | None = None
        self.writing: TokenOnDisk | None = None  # the token whose files are being written
        self.last: Outcome | None = None
        self.observers: list[Observer] = [] if metrics is None else [metrics.observe]
        # Told after every other observer: what a log line says is already in the metrics.
        self.last_observers: list[Observer] = (
            [report.Reporter(config, log)] if observers is None else list(observers)
        )
        self.stopping = threading.Event()
        # Held across every write, so shutdown can wait for one to finish and bar the next.
        self.write_lock = threading.Lock()

    def observe(self, observer: Observer) -> None:
        """Hand every outcome from now on to ``observer``, and the last one at once.

        The metrics exist only after the first attempt (their imports would delay the
        first token); they take that attempt's record as it was, like any other.
        """
        self.observers.append(observer)
        if self.last is not None:
            observer(self.last)

    def attach_metrics(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.observe(metrics.observe)

    def _tell(self, outcome: Outcome) -> Outcome:
        self.last = outcome
        for observer in (*self.observers, *self.last_observers):
            observer(outcome)
        return outcome

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
        session = fetched.session
        issued = outputs_module.Issued(session, obtained_at=fetched.sent_wall)
        with self.write_lock:
            if self.stopping.is_set():
                raise Stopping
            written = TokenOnDisk(
                fingerprint=session.fingerprint,
                expires_monotonic=fetched.sent_monotonic + session.expires_in,
                expires_wall=issued.expires_at,
                obtained_wall=fetched.sent_wall,
                lifetime=session.expires_in,
            )
            # Readiness may read the new file before ``token`` names it: it asks ``writing``.
            self.writing = written
            try:
                for output in self.outputs:  # the token file last
                    output.write(issued)
                self.token = written
            finally:
                self.writing = None

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
        skew = (
            session.expires_at - (fetched.sent_wall + session.expires_in)
            if session.expires_at is not None
            else None
        )
        return self._tell(
            Outcome(
                ok=True,
                delay=delay,
                duration=duration,
                ended_wall=self.wall(),
                failures=0,
                token=self.token,
                valid_for=self.remaining(),
                skew=skew,
            )
        )

    def _failed(self, error: RefreshError, duration: float) -> Outcome:
        self.failures += 1
        now = self.monotonic()
        if self.failures == 1 or self._failing_since is None:
            self._failing_since = now - duration
        retry_after = error.retry_after if isinstance(error, TransientError) else None
        remaining = self.remaining()
        delay = retry_delay(
            self.failures,
            error.lane,
            self.config.backoff,
            self.rng,
            retry_after=retry_after,
            remaining=remaining,
            # A sidecar that waited patiently and then lost its token goes on at the cap.
            failing_for=now - self._failing_since,
        )
        return self._tell(
            Outcome(
                ok=False,
                delay=delay,
                duration=duration,
                ended_wall=self.wall(),
                failures=self.failures,
                token=self.token,
                valid_for=remaining,
                error=error,
                lane=error.lane,
                retry_after=retry_after,
            )
        )

    def adopt_existing(self) -> Outcome | None:
        """Keep a still-valid token from an earlier run; its outcome says when to refresh.

        Its expiry comes from our own session file (when it describes this very
        token) or from the token's JWT claims; without either it is not trusted.
        Nor is it kept while a configured output is missing (one newly added): a new
        token writes it now instead of at the next refresh.
        """
        text = sink.read_text(self.config.token.path)
        if text is None or not TOKEN_PATTERN.fullmatch(text):
            return None
        if self.missing_outputs():
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
            obtained_wall=issued,
            lifetime=lifetime,
        )
        REDACTOR.add(text)
        return self._tell(
            Outcome(
                ok=True,
                delay=delay,
                duration=0.0,
                ended_wall=now,
                failures=0,
                token=self.token,
                valid_for=self.remaining(),
                kept=True,
            )
        )

    def missing_outputs(self) -> list[str]:
        """The configured ``outputs`` not on disk. The token and session files are not
        among them: a JWT alone still tells the expiry of the token (SPEC: Restart)."""
        token = self.config.token
        own = {token.path, token.session_path}
        return [
            str(output.path)
            for output in self.outputs
            if output.path not in own and not output.path.exists()
        ]

    def _expiry_from_session(self, token_text: str) -> tuple[float, float, float] | None:
        path = outputs_module.session_file(self.outputs)
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
