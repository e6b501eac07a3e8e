"""The long-running loop, in uvicorn's shape: ``run`` → ``main_loop`` → ``shutdown``.

Signal handlers (``handle_exit``, ``handle_hup``) only set a flag and wake the main
thread; the main thread acts. When attempts run is ``Schedule``'s business, what the
probes answer is ``Probes``', and what an attempt did reaches its observers (the log,
the metrics, systemd) from the refresher itself.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from sidecar import signals
from sidecar.config import Config
from sidecar.errors import Interrupted
from sidecar.notify import Notifier, SystemdStatus
from sidecar.probes import Probes
from sidecar.refresher import Refresher, Stopping
from sidecar.schedule import Schedule

SHUTDOWN_SECONDS = 4.0


class Daemon:
    def __init__(
        self,
        config: Config,
        refresher: Refresher,
        notifier: Notifier,
        log: Any,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.refresher = refresher
        self.notifier = notifier
        self.log = log
        self.monotonic = monotonic
        self.schedule = Schedule(
            self._attempt,
            on_change=self._planned,
            on_crash=self._crashed,
            on_forced=self._forced,
            monotonic=monotonic,
        )
        self.probes = Probes(config, refresher, self.schedule, monotonic=monotonic)
        refresher.observe(SystemdStatus(notifier))
        self._wake = signals.Waker()
        self._previous_handlers: dict[int, Any] = {}
        # The flags: set by the handlers, read by the main thread.
        self.should_exit: int | None = None  # the stop signal
        self._hup = False
        # The first attempt runs in the main thread: a stop aborts it, a SIGHUP is it.
        self._starting = False

    # -- probes (the HTTP server's callbacks) ---------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        return self.probes.health()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.probes.readiness()

    # -- signals --------------------------------------------------------------

    def install_signals(self) -> None:
        """Take over SIGTERM, SIGINT and SIGHUP until ``restore_signals``."""
        self._previous_handlers = signals.install(
            {
                signal.SIGTERM: self.handle_exit,
                signal.SIGINT: self.handle_exit,
                signal.SIGHUP: self.handle_hup,
            }
        )

    def restore_signals(self) -> None:
        signals.restore(self._previous_handlers)
        self._previous_handlers = {}

    def handle_exit(self, signum: int, _frame: FrameType | None) -> None:
        self.should_exit = signum
        self._wake.set()
        if self._starting:
            self._starting = False
            raise Interrupted(signal.Signals(signum).name)

    def handle_hup(self, _signum: int, _frame: FrameType | None) -> None:
        if not self._starting:
            self._hup = True
            self._wake.set()

    def stop_signal_name(self) -> str:
        return signal.Signals(self.should_exit).name if self.should_exit else "error"

    # -- lifecycle ------------------------------------------------------------

    def first_attempt(self) -> float | None:
        """One attempt in the main thread; when the next is due (monotonic), or None if stopped.

        A stop signal aborts it, even while the request hangs: a write under way
        removes its temporary file as the exception passes through.
        """
        try:
            self._starting = True
            if self.should_exit is not None:
                return None
            return self.monotonic() + self.refresher.attempt().delay
        except Interrupted:
            return None
        finally:
            self._starting = False

    def run(self, first_due: float) -> int:
        """Refresh until SIGTERM/SIGINT, the next attempt due at ``first_due`` (monotonic)."""
        self._wake.open()
        try:
            self.schedule.start(first_due)
            self.main_loop()
        finally:
            code = self.shutdown()
            self.restore_signals()
        return code

    def main_loop(self) -> None:
        watchdog = self.notifier.watchdog_seconds
        next_ping = self.monotonic()
        while self.should_exit is None:
            now = self.monotonic()
            if watchdog is not None and now >= next_ping:
                # A stuck loop stops the pings, so systemd restarts us.
                if self.probes.health()[0]:
                    self.notifier.watchdog()
                next_ping = now + watchdog
            if self._hup:
                self._hup = False
                self.schedule.run_soon()
            wake_at = self.schedule.tick()
            if watchdog is not None:
                wake_at = min(wake_at, next_ping)
            self._wake.wait(max(wake_at - self.monotonic(), 0.0))

    def shutdown(self) -> int:
        self.log.info("shutdown", signal=self.stop_signal_name())
        self.notifier.stopping()
        self.refresher.stopping.set()
        self.schedule.shutdown()
        # Wait for a write in progress to finish; none starts after `stopping` is set.
        if self.refresher.write_lock.acquire(timeout=SHUTDOWN_SECONDS):
            self.refresher.write_lock.release()
        for output in self.refresher.outputs:
            for temp in output.sweep():
                self.log.warning("temp_removed", path=str(temp))
        self.notifier.close()
        self._wake.close()
        # A request may still hang in the worker thread: nothing of ours is half-written,
        # and the console script leaves with os._exit instead of joining that thread.
        return 0

    # -- the schedule's callbacks ---------------------------------------------

    def _attempt(self) -> float | None:
        try:
            return self.refresher.attempt().delay
        except Stopping:
            return None

    def _planned(self, due: float) -> None:
        wall = time.time() + max(0.0, due - self.monotonic())
        if self.refresher.metrics is not None:
            self.refresher.metrics.planned(wall)
        self.log.debug("refresh_scheduled", delay=round(max(0.0, due - self.monotonic()), 3))
        self._wake.set()

    def _forced(self, requests: int) -> None:
        """A forced attempt starts; ``requests`` SIGHUPs asked for it."""
        self.log.info(
            "refresh_requested", signal="SIGHUP", coalesced=requests if requests > 1 else None
        )

    def _crashed(self, exc: BaseException) -> float:
        # The refresher counts every failure itself; this is a bug, not an upstream state.
        self.log.error("refresh_job_crashed", message=f"{type(exc).__name__}: {exc}")
        return self.config.backoff.max_seconds
