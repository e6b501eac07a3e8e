"""When the next attempt runs: one APScheduler date job kept honest to a monotonic due time.

APScheduler fires on the wall clock; a token's lifetime runs on the monotonic one. This
module is the only one that knows: every run date is derived from a monotonic due time,
a job that a forward jump of the wall clock fired early is put back, and one that a
backward jump made late is run at once (``tick``, from the main loop). A forced attempt
(``run_soon``, SIGHUP) runs at once, or right after the attempt under way; more requests
within a second of a forced attempt make exactly one more, at the end of that second.

Threads: ``attempt`` runs in APScheduler's single worker; ``run_soon`` and ``tick`` come
from the main loop; ``due``/``running_since`` from the probe threads. One lock guards the
plan; ``attempt`` runs outside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

JOB_ID = "refresh"
# A job may fire this much early or late before ``tick`` steps in.
CLOCK_SLACK_SECONDS = 0.5
# Forced attempts come at most this often, however many requests arrive.
FORCE_WINDOW_SECONDS = 1.0


class Schedule:
    """One date job running ``attempt``, which returns seconds until the next (None: stop).

    ``attempt`` is meant never to raise; if it does, ``on_crash`` decides the delay.
    """

    def __init__(
        self,
        attempt: Callable[[], float | None],
        *,
        on_change: Callable[[float], None] = lambda _due: None,
        on_crash: Callable[[BaseException], float | None] = lambda _exc: None,
        on_forced: Callable[[int], None] = lambda _requests: None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._attempt = attempt
        self._on_change = on_change  # told every new due time (monotonic)
        self._on_crash = on_crash  # told what ``attempt`` raised; returns the delay to go on
        self._on_forced = on_forced  # told, as an attempt starts, how many requests it serves
        self._monotonic = monotonic
        # Reentrant: ``on_change`` may read ``due()``.
        self._lock = threading.RLock()
        self._due = monotonic()
        self._running_since: float | None = None
        self._busy = False  # from a job's start until its successor is armed
        self._forced_after_busy = False  # run_soon() came while an attempt ran
        self._forced_at: float | None = None  # due time of the last forced attempt
        self._requests = 0  # run_soon() calls since the last attempt started
        self._after: float | None = None  # what the finished job asked for
        self._scheduler: Any = None
        self._stopped = False  # shutdown() began: nothing is armed any more
        # Each arming is a job of its own: APScheduler removes a date job by id after
        # submitting it, which would remove a successor added under the same id meanwhile.
        # A replaced job still fires, sees it is stale, and does nothing.
        self._generation = 0
        self._job_id = ""

    # -- the main loop's side --------------------------------------------------

    def start(self, due: float) -> None:
        """Start the scheduler with the first attempt due at ``due`` (monotonic)."""
        # Imported here: the first token must not wait for the scheduler's imports.
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._scheduler.add_listener(self._job_done, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        self._scheduler.start()
        with self._lock:
            self._arm(max(0.0, due - self._monotonic()))

    def run_soon(self) -> bool:
        """Force an attempt; False when it merged into one already planned for that moment."""
        with self._lock:
            if self._scheduler is None or self._stopped:
                return False
            self._requests += 1
            if self._busy:
                merged = self._forced_after_busy
                self._forced_after_busy = True
                return not merged
            now = self._monotonic()
            at = self._forced_slot(now)
            if self._due <= at:
                return False  # an attempt is due by then anyway
            self._forced_at = at
            self._arm(at - now)
            return True

    def tick(self) -> float:
        """Mend the plan after a wall-clock jump; the monotonic time by which to tick again."""
        from apscheduler.jobstores.base import JobLookupError

        with self._lock:
            now = self._monotonic()
            if (
                self._scheduler is None
                or self._stopped
                or self._busy
                or now <= self._due + CLOCK_SLACK_SECONDS
            ):
                return max(self._due + CLOCK_SLACK_SECONDS, now + CLOCK_SLACK_SECONDS)
            try:  # overdue: the wall clock went back
                self._scheduler.modify_job(self._job_id, next_run_time=self._wall_now())
            except JobLookupError:  # should not happen; never lose the loop
                self._arm(0.0)
            return now + CLOCK_SLACK_SECONDS

    def due(self) -> float:
        """The monotonic time the next attempt is due."""
        with self._lock:
            return self._due

    def running_since(self) -> float | None:
        """The monotonic time the attempt under way started, or None."""
        with self._lock:
            return self._running_since

    def wakeup(self) -> None:
        """Make APScheduler look at the wall clock again now (it sleeps until its next run)."""
        if self._scheduler is not None:
            self._scheduler.wakeup()

    @property
    def started(self) -> bool:
        return self._scheduler is not None

    def alive(self) -> bool:
        return self._scheduler is not None and bool(self._scheduler.running)

    def shutdown(self) -> None:
        """Stop firing; an attempt under way is not waited for.

        APScheduler's own thread removes a fired date job after submitting it, and does so
        from the pending list once the scheduler is stopped, where it is not: a shutdown
        landing in that gap kills the thread with a traceback. So first nothing new is
        armed, then every job is removed (which waits, on APScheduler's job-store lock,
        for a pass under way to finish), and only then is it stopped.
        """
        with self._lock:
            self._stopped = True
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.remove_all_jobs()
            self._scheduler.shutdown(wait=False)

    # -- APScheduler's side --------------------------------------------------

    def _job(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return  # replaced by a newer arming just as it fired
            now = self._monotonic()
            self._busy = True
            early = self._due - now
            if early > CLOCK_SLACK_SECONDS:
                self._after = early  # the wall clock jumped forward; the lifetime did not
                return
            self._running_since = now
            requests, self._requests = self._requests, 0
        if requests:
            self._on_forced(requests)
        try:
            after = self._attempt()
        finally:
            with self._lock:
                self._running_since = None
        self._after = after

    def _job_done(self, event: Any) -> None:
        """Arm the next attempt once APScheduler counts this one as finished.

        Adding the job from inside the job would race APScheduler's instance count
        (max_instances=1): a next run due at once could be skipped, and a skipped date
        job is dropped for good.
        """
        if event.job_id != self._job_id:
            return  # a replaced job
        crash = getattr(event, "exception", None)
        after = self._on_crash(crash) if crash is not None else None
        with self._lock:
            after, self._after = (after if crash is not None else self._after), None
            self._busy = False
            if after is None:
                return
            if self._forced_after_busy:
                self._forced_after_busy = False
                now = self._monotonic()
                at = self._forced_slot(now)
                if now + after > at:
                    self._forced_at = at
                    after = at - now
            self._arm(after)

    # -- under the lock --------------------------------------------------

    def _forced_slot(self, now: float) -> float:
        """When a forced attempt asked for at ``now`` may run."""
        if self._forced_at is not None and now < self._forced_at + FORCE_WINDOW_SECONDS:
            return self._forced_at + FORCE_WINDOW_SECONDS
        return now

    def _arm(self, delay: float) -> None:
        if self._stopped:
            return
        # The job this replaces is left to fire and find itself stale: removing it here
        # could race APScheduler's own removal after it fires, which kills its thread.
        self._due = self._monotonic() + delay
        self._generation += 1
        self._job_id = f"{JOB_ID}-{self._generation}"
        self._scheduler.add_job(
            self._job,
            "date",
            args=(self._generation,),
            run_date=self._wall_now() + timedelta(seconds=delay),
            id=self._job_id,
        )
        self._on_change(self._due)

    @staticmethod
    def _wall_now() -> datetime:
        return datetime.now(UTC)
