"""The schedule: one date job honest to a monotonic due time, forced attempts coalesced.

A real APScheduler runs each test. A wall-clock jump is simulated by shifting the
monotonic clock the schedule is given instead: APScheduler keeps the real wall clock, so
"monotonic +10 s" is what a wall clock gone back 10 s looks like, and "-10 s" a jump
forward.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from sidecar.schedule import FORCE_WINDOW_SECONDS, Schedule


class Clock:
    """The real monotonic clock plus an offset a test can jump."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


class Attempts:
    """Counts attempts (at real monotonic times); each returns the next delay from a list."""

    def __init__(self, delays: list[float | None], takes: float = 0.0) -> None:
        self.delays = delays
        self.takes = takes
        self.at: list[float] = []
        self.changed = threading.Event()

    def __call__(self) -> float | None:
        self.at.append(time.monotonic())
        if self.takes:
            time.sleep(self.takes)
        self.changed.set()
        return self.delays.pop(0) if self.delays else None


@pytest.fixture
def schedules() -> Iterator[Callable[..., Schedule]]:
    made: list[Schedule] = []

    def make(attempt: Callable[[], float | None], **kwargs: object) -> Schedule:
        schedule = Schedule(attempt, **kwargs)  # type: ignore[arg-type]
        made.append(schedule)
        return schedule

    yield make
    for schedule in made:
        schedule.shutdown()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_attempts_follow_the_delays_they_return(schedules: Callable[..., Schedule]) -> None:
    attempts = Attempts([0.2, 0.3, None])
    dues: list[float] = []
    schedule = schedules(attempts, on_change=dues.append)
    start = time.monotonic()
    schedule.start(start + 0.1)
    wait_for(lambda: len(attempts.at) == 3)
    time.sleep(0.4)
    assert len(attempts.at) == 3, "None stops the loop"
    gaps = [b - a for a, b in zip([start, *attempts.at], attempts.at, strict=False)]
    assert gaps == pytest.approx([0.1, 0.2, 0.3], abs=0.15)
    assert len(dues) == 3
    assert schedule.due() == dues[-1]


def test_a_forced_attempt_runs_at_once(schedules: Callable[..., Schedule]) -> None:
    attempts = Attempts([60.0, 60.0])
    schedule = schedules(attempts)
    schedule.start(time.monotonic() + 60)
    asked = time.monotonic()
    assert schedule.run_soon()
    wait_for(lambda: len(attempts.at) == 1)
    assert attempts.at[0] - asked < 0.3
    assert schedule.due() == pytest.approx(time.monotonic() + 60, abs=0.5)


def test_a_storm_of_forced_attempts_makes_one_per_second(
    schedules: Callable[..., Schedule],
) -> None:
    """1000 requests in 1.5 s: one attempt at once, one at the end of each second begun."""
    attempts = Attempts([60.0] * 10)
    schedule = schedules(attempts)
    schedule.start(time.monotonic() + 60)
    start = time.monotonic()
    for _ in range(1000):
        schedule.run_soon()
        time.sleep(0.0015)
    assert time.monotonic() - start < 2 * FORCE_WINDOW_SECONDS
    time.sleep(2.2 * FORCE_WINDOW_SECONDS)
    assert len(attempts.at) == 3, attempts.at
    spacing = [b - a for a, b in zip(attempts.at, attempts.at[1:], strict=False)]
    assert all(gap >= FORCE_WINDOW_SECONDS - 0.05 for gap in spacing), spacing


def test_forcing_during_an_attempt_runs_one_more_after_it(
    schedules: Callable[..., Schedule],
) -> None:
    attempts = Attempts([60.0, 60.0], takes=0.3)
    schedule = schedules(attempts)
    schedule.start(time.monotonic())  # a regular attempt, not a forced one
    wait_for(lambda: len(attempts.at) == 1)
    assert schedule.running_since() is not None
    assert schedule.run_soon()
    assert not schedule.run_soon(), "a second request merges into the first"
    wait_for(lambda: len(attempts.at) == 2)
    assert attempts.at[1] - attempts.at[0] == pytest.approx(0.3, abs=0.2)
    time.sleep(0.5)
    assert len(attempts.at) == 2


def test_an_attempt_due_anyway_absorbs_a_forced_one(schedules: Callable[..., Schedule]) -> None:
    attempts = Attempts([60.0, 60.0, 60.0])
    schedule = schedules(attempts)
    schedule.start(time.monotonic())
    wait_for(lambda: len(attempts.at) == 1)
    wait_for(lambda: schedule.running_since() is None and schedule.due() > time.monotonic())
    schedule.run_soon()  # forced at once: the window starts
    wait_for(lambda: len(attempts.at) == 2)
    wait_for(lambda: schedule.due() > time.monotonic() + 1)
    assert schedule.run_soon(), "the next forced attempt waits for the end of the window"
    due = schedule.due()
    assert not schedule.run_soon()
    assert schedule.due() == due


def test_a_job_fired_early_by_a_forward_jump_is_put_back(
    schedules: Callable[..., Schedule],
) -> None:
    clock = Clock()
    attempts = Attempts([60.0])
    schedule = schedules(attempts, monotonic=clock)
    schedule.start(clock() + 0.3)
    clock.offset = -5.0  # the wall clock ran 5 s ahead: APScheduler fires 5 s early
    time.sleep(0.8)
    assert attempts.at == [], "fired early, but not run"
    assert schedule.due() - clock() == pytest.approx(4.5, abs=0.3)


def test_a_job_made_late_by_a_backward_jump_runs_at_tick(
    schedules: Callable[..., Schedule],
) -> None:
    clock = Clock()
    attempts = Attempts([60.0])
    schedule = schedules(attempts, monotonic=clock)
    schedule.start(clock() + 30)
    clock.offset = 31.0  # the wall clock went back: APScheduler would fire 30 s late
    before = time.monotonic()
    schedule.tick()
    wait_for(lambda: len(attempts.at) == 1, timeout=2)
    assert attempts.at[0] - before < 0.5
    assert schedule.due() == pytest.approx(clock() + 60, abs=0.5)
    assert schedule.tick() >= schedule.due()


def test_an_attempt_that_raises_asks_on_crash_how_to_go_on(
    schedules: Callable[..., Schedule],
) -> None:
    crashes: list[BaseException] = []
    calls: list[float] = []

    def attempt() -> float | None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("boom")
        return None

    def on_crash(exc: BaseException) -> float:
        crashes.append(exc)
        return 0.1

    schedule = schedules(attempt, on_crash=on_crash)
    schedule.start(time.monotonic())
    wait_for(lambda: len(calls) == 2)
    assert [str(c) for c in crashes] == ["boom"]
    assert schedule.alive()


def test_each_attempt_is_told_how_many_requests_it_serves(
    schedules: Callable[..., Schedule],
) -> None:
    attempts = Attempts([60.0] * 5)
    served: list[int] = []
    schedule = schedules(attempts, on_forced=served.append)
    schedule.start(time.monotonic() + 60)
    schedule.run_soon()
    wait_for(lambda: len(attempts.at) == 1)
    for _ in range(10):
        schedule.run_soon()
        time.sleep(0.02)
    wait_for(lambda: len(attempts.at) == 2, timeout=3)
    assert served == [1, 10]


def test_a_shutdown_between_firing_and_removal_leaves_the_scheduler_thread_quiet(
    schedules: Callable[..., Schedule], monkeypatch: pytest.MonkeyPatch
) -> None:
    """APScheduler removes a fired date job after submitting it; a shutdown in that gap
    once killed its thread with a traceback (JobLookupError, seen in CI at SIGTERM)."""
    from apscheduler.executors.base import BaseExecutor

    submitted = threading.Event()
    real_submit = BaseExecutor.submit_job

    def slow_submit(self: BaseExecutor, job: object, run_times: object) -> None:
        real_submit(self, job, run_times)
        submitted.set()
        time.sleep(0.3)  # hold the gap open: the job is submitted, not yet removed

    monkeypatch.setattr(BaseExecutor, "submit_job", slow_submit)
    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))

    schedule = schedules(Attempts([None]))
    schedule.start(time.monotonic())
    assert submitted.wait(5)
    schedule.shutdown()
    assert not schedule.alive()
    assert died == []
