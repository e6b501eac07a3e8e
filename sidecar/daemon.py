"""The long-running loop: APScheduler runs attempts, the main thread handles signals.

Signal handlers only set flags and wake the main thread; the main thread acts.
APScheduler's date trigger fires on the wall clock, so every run date is derived
from a monotonic due time, and the main thread fixes the schedule if the wall clock
jumps (a job fired early is put back; one the clock made late is run now).
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from sidecar import signals, sink
from sidecar.config import Config
from sidecar.errors import Interrupted
from sidecar.notify import Notifier
from sidecar.refresher import Outcome, Refresher, Stopping, iso
from sidecar.session import fingerprint

JOB_ID = "refresh"
SHUTDOWN_SECONDS = 4.0
# A job may fire this much early or late before the main thread steps in.
CLOCK_SLACK_SECONDS = 0.5
# Beyond its own deadline (twice the timeout), an attempt this late means a stuck loop.
STUCK_SLACK_SECONDS = 10.0
# SIGHUPs within this long of a forced refresh make one more attempt at its end, not one each.
HUP_COALESCE_SECONDS = 1.0


class _Waker:
    """Wakes the main loop from a signal handler or another thread, taking no lock.

    ``threading.Event.set`` takes the event's lock; a signal handler calling it while
    the main thread holds that lock (inside ``Event.wait``/``clear``, or an earlier
    handler's ``set``) deadlocks the main thread for good, SIGTERM included. A byte
    sent on a non-blocking socket pair takes no Python lock. Until ``open`` (and after
    ``close``) ``set`` does nothing: the flags the handlers set are read anyway.
    """

    def __init__(self) -> None:
        self._pair: tuple[socket.socket, socket.socket] | None = None

    def open(self) -> None:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._pair = (reader, writer)

    def set(self) -> None:
        pair = self._pair
        if pair is not None:
            with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
                pair[1].send(b"\0")

    def wait(self, timeout: float) -> None:
        pair = self._pair
        if pair is None:
            time.sleep(timeout)
            return
        select.select([pair[0]], [], [], timeout)
        with contextlib.suppress(OSError):
            while pair[0].recv(4096):
                pass

    def close(self) -> None:
        pair, self._pair = self._pair, None
        if pair is not None:
            for sock in pair:
                sock.close()


class Daemon:
    def __init__(
        self,
        config: Config,
        refresher: Refresher,
        notifier: Notifier,
        log: Any,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.refresher = refresher
        self.notifier = notifier
        self.log = log
        self.monotonic = monotonic
        self.wall = wall
        self._wake = _Waker()
        self._stop_signal: int | None = None
        self._hup = False
        self._hup_pending = False
        # The last forced refresh, and the one more that SIGHUPs since then have asked for.
        self._last_forced: float | None = None
        self._hup_deferred: float | None = None
        self._hups_coalesced = 0
        self._in_first_attempt = False
        self._lock = threading.Lock()
        self._due_monotonic = monotonic()
        self._running_since: float | None = None
        self._ready_sent = False
        self._scheduler: Any = None
        self._raise_on_stop = False
        self._previous_handlers: dict[int, Any] = {}
        # From a job's start until its successor is scheduled: what to schedule next.
        self._busy = False
        self._after: float | None = None
        self._dropped_code = 0
        # Time an attempt may take before the loop counts as stuck.
        self._stuck_after = 2 * config.api.timeout_seconds + STUCK_SLACK_SECONDS

    # -- probes -------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Alive unless the loop is stuck; an upstream outage is not a liveness problem."""
        now = self.monotonic()
        with self._lock:
            running_since, due = self._running_since, self._due_monotonic
        if self._scheduler is None:
            return True, {"status": "starting"}
        if not self._scheduler.running:
            return False, {"status": "stopped", "reason": "scheduler is not running"}
        if running_since is not None and now - running_since > self._stuck_after:
            late = round(now - running_since, 1)
            return False, {"status": "stuck", "reason": f"attempt running for {late}s"}
        if running_since is None and now - due > self._stuck_after:
            late = round(now - due, 1)
            return False, {"status": "stuck", "reason": f"refresh overdue by {late}s"}
        return True, {"status": "ok", "consecutive_failures": self.refresher.failures}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when the file on disk holds the token we wrote (or kept) and it is unexpired."""
        path = self.config.token.path
        text = sink.read_text(path)
        known = self.refresher.token
        problem = None
        if not text:
            problem = f"{path} is missing or empty"
        elif known is None:
            problem = "no token written or kept by this process yet"
        elif fingerprint(text) != known.fingerprint:
            problem = f"{path} holds a token this process did not write"
        elif self.refresher.remaining() is None:
            problem = "the token on disk has expired"
        detail: dict[str, Any] = {"ready": problem is None}
        if problem is not None:
            detail["reason"] = problem
        if known is not None:
            detail["expires_at"] = iso(known.expires_wall)
        return problem is None, detail

    # -- lifecycle ----------------------------------------------------------

    def install_signals(self) -> None:
        """Take over SIGTERM, SIGINT and SIGHUP until ``run`` returns."""
        self._previous_handlers = self._install_signals()

    def first_attempt(self) -> float | None:
        """One attempt in the main thread; when the next is due (monotonic), or None if stopped.

        A stop signal aborts it, even while the request hangs: a write under way
        removes its temporary file as the exception passes through.
        """
        try:
            self._raise_on_stop = True
            # The refresh a SIGHUP asks for is the one under way.
            self._in_first_attempt = True
            if self._stop_signal is not None:
                return None
            started = self.monotonic()
            outcome = self.refresher.attempt()
            self._debug_outcome(outcome, self.monotonic() - started)
            due = self.monotonic() + outcome.delay
        except Interrupted:
            return None
        finally:
            self._raise_on_stop = False
            self._in_first_attempt = False
            self._hup = False
        return due

    def run(self, first_due: float) -> int:
        """Refresh until SIGTERM/SIGINT, the next attempt due at ``first_due`` (monotonic)."""
        # Imported here: the first token must not wait for the scheduler's imports.
        from apscheduler.events import (
            EVENT_JOB_ERROR,
            EVENT_JOB_EXECUTED,
            EVENT_JOB_MAX_INSTANCES,
        )
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._dropped_code = EVENT_JOB_MAX_INSTANCES
        self._scheduler.add_listener(
            self._job_done, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MAX_INSTANCES
        )
        self._wake.open()
        try:
            self._scheduler.start()
            self._schedule(max(0.0, first_due - self.monotonic()))
            if self.refresher.token is not None:
                self._announce_ready()
            self._loop()
        finally:
            code = self._shutdown()
            self.restore_signals()
        return code

    def restore_signals(self) -> None:
        signals.restore(self._previous_handlers)
        self._previous_handlers = {}

    def _loop(self) -> None:
        watchdog = self.notifier.watchdog_seconds
        next_ping = self.monotonic()
        while self._stop_signal is None:
            now = self.monotonic()
            if watchdog is not None and now >= next_ping:
                # A stuck loop stops the pings, so systemd restarts us.
                if self.health()[0]:
                    self.notifier.watchdog()
                next_ping = now + watchdog
            self._handle_hup()
            self._catch_up_after_clock_jump()
            with self._lock:
                due = self._due_monotonic
            wait = max(due + CLOCK_SLACK_SECONDS - self.monotonic(), CLOCK_SLACK_SECONDS)
            if watchdog is not None:
                wait = min(wait, max(next_ping - self.monotonic(), 0.0))
            if self._hup_deferred is not None:
                wait = min(wait, max(self._hup_deferred - self.monotonic(), 0.0))
            self._wake.wait(wait)

    def _handle_hup(self) -> None:
        """SIGHUP forces a refresh; those within a second of one make one more at its end.

        So a reload loop sends at most about one request per second, and the last
        SIGHUP of a burst is still followed by a refresh (a rotated key is picked up).
        """
        now = self.monotonic()
        if self._hup:
            self._hup = False
            if self._last_forced is None or now >= self._last_forced + HUP_COALESCE_SECONDS:
                self._force(now, coalesced=0)
            else:
                if self._hup_deferred is None:
                    self._hup_deferred = self._last_forced + HUP_COALESCE_SECONDS
                self._hups_coalesced += 1
        if self._hup_deferred is not None and now >= self._hup_deferred:
            coalesced, self._hups_coalesced = self._hups_coalesced, 0
            self._hup_deferred = None
            self._force(now, coalesced=coalesced)

    def _force(self, now: float, *, coalesced: int) -> None:
        self._last_forced = now
        self.log.info("refresh_requested", signal="SIGHUP", coalesced=coalesced or None)
        self._schedule(0.0, force=True)

    def _catch_up_after_clock_jump(self) -> None:
        """Run an overdue job now; re-add one that APScheduler dropped."""
        from apscheduler.jobstores.base import JobLookupError

        with self._lock:
            if self._busy or self.monotonic() <= self._due_monotonic + CLOCK_SLACK_SECONDS:
                return
            try:
                self._scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))
            except JobLookupError:
                self.log.warning("refresh_job_lost", message="rescheduling the refresh now")
                self._due_monotonic = self.monotonic()
                self._add_job(0.0)

    def _job(self) -> None:
        now = self.monotonic()
        with self._lock:
            self._busy = True
            early = self._due_monotonic - now
            if early > CLOCK_SLACK_SECONDS:
                # The wall clock jumped forward; the token's lifetime did not.
                self._after = early
                return
            self._running_since = now
        try:
            outcome = self.refresher.attempt()
        except Stopping:
            self._after = None
            return
        finally:
            with self._lock:
                self._running_since = None
        self._after = outcome.delay
        self._debug_outcome(outcome, self.monotonic() - now)
        self._report(outcome)

    def _debug_outcome(self, outcome: Outcome, duration: float) -> None:
        """At debug level: what the policy was given and what it decided."""
        refresh, backoff = self.config.refresh, self.config.backoff
        remaining = self.refresher.remaining()
        error = outcome.error
        self.log.debug(
            "attempt_planned",
            ok=outcome.ok,
            reason=error.reason if error else "ok",
            lane=str(outcome.lane) if outcome.lane is not None else None,
            retry_after=getattr(error, "retry_after", None),
            consecutive_failures=self.refresher.failures,
            token_valid_for=None if remaining is None else round(remaining, 3),
            duration=round(duration, 4),
            delay=round(outcome.delay, 3),
            at_fraction=refresh.at_fraction,
            jitter_fraction=refresh.jitter_fraction,
            min_interval_seconds=refresh.min_interval_seconds,
            max_interval_seconds=refresh.max_interval_seconds,
            backoff_initial_seconds=backoff.initial_seconds,
            backoff_max_seconds=backoff.max_seconds,
            backoff_multiplier=backoff.multiplier,
        )

    def _job_done(self, event: Any) -> None:
        """Schedule the next attempt once APScheduler counts this one as finished.

        Adding the job from inside the job would race APScheduler's instance count
        (max_instances=1): a next run due at once could be skipped, and a skipped date
        job is dropped for good.
        """
        if event.job_id != JOB_ID:
            return
        if event.code == self._dropped_code:
            # Should not happen; the main loop re-adds a dropped job once it is overdue.
            self._wake.set()
            return
        if getattr(event, "exception", None) is not None:
            self.log.error("refresh_job_crashed", message=repr(event.exception))
            self._after = self.config.backoff.max_seconds
        after, self._after = self._after, None
        if after is not None and self._stop_signal is None:
            self._schedule(after, done=True)
        self._wake.set()

    def _schedule(self, delay: float, *, force: bool = False, done: bool = False) -> None:
        with self._lock:
            if done:
                self._busy = False
                if self._hup_pending:  # a SIGHUP came while the attempt was under way
                    self._hup_pending = False
                    delay = 0.0
            elif force and self._busy:
                # An attempt is under way; run again as soon as it ends.
                self._hup_pending = True
                return
            self._due_monotonic = self.monotonic() + delay
            self._add_job(delay)
        if self.refresher.metrics is not None:
            self.refresher.metrics.next_refresh.set(self.wall() + delay)
        self.log.debug(
            "refresh_scheduled",
            delay=round(delay, 3),
            at=iso(self.wall() + delay),
            cause="signal" if force else "after_attempt" if done else "start",
        )

    def _add_job(self, delay: float) -> None:
        run_date = datetime.now(UTC) + timedelta(seconds=delay)
        self._scheduler.add_job(
            self._job, "date", run_date=run_date, id=JOB_ID, replace_existing=True
        )

    def _report(self, outcome: Outcome) -> None:
        token = self.refresher.token
        valid = f"token valid until {iso(token.expires_wall)}" if token else "no valid token"
        if outcome.ok:
            self._announce_ready()
            self.notifier.status(f"{valid}; next refresh in {outcome.delay:.0f}s")
        else:
            reason = outcome.error.reason if outcome.error else "unknown"
            self.notifier.status(
                f"refresh failed ({reason}); retry in {outcome.delay:.0f}s; {valid}"
            )

    def _announce_ready(self) -> None:
        if not self._ready_sent:
            self._ready_sent = True
            token = self.refresher.token
            status = f"token valid until {iso(token.expires_wall)}" if token else None
            self.notifier.ready(status)

    def _install_signals(self) -> dict[int, Any]:
        def stop(signum: int, _frame: FrameType | None) -> None:
            self._stop_signal = signum
            self._wake.set()
            if self._raise_on_stop:
                self._raise_on_stop = False
                raise Interrupted(signal.Signals(signum).name)

        def hup(_signum: int, _frame: FrameType | None) -> None:
            if self._in_first_attempt:
                return
            self._hup = True
            self._wake.set()

        return signals.install({signal.SIGTERM: stop, signal.SIGINT: stop, signal.SIGHUP: hup})

    def stop_signal_name(self) -> str:
        return signal.Signals(self._stop_signal).name if self._stop_signal else "error"

    def _shutdown(self) -> int:
        self.log.info("shutdown", signal=self.stop_signal_name())
        self.notifier.stopping()
        self.refresher.stopping.set()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        # Wait for a write in progress to finish; none starts after `stopping` is set.
        finished = self.refresher.write_lock.acquire(timeout=SHUTDOWN_SECONDS)
        if finished:
            self.refresher.write_lock.release()
        for path in (self.config.token.path, self.config.token.session_path):
            for temp in sink.sweep_stale(path) if path is not None else ():
                self.log.warning("temp_removed", path=str(temp))
        self.notifier.close()
        self._wake.close()
        # A request may still hang in the worker thread: nothing of ours is half-written,
        # and the console script leaves with os._exit instead of joining that thread.
        return 0
