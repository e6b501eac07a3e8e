"""Time: wall-clock jumps neither expire a token early nor skip or advance a refresh.

The daemon is built in-process as cli._run wires it, with a wall clock this test can
jump: every ``datetime.now`` that APScheduler and the daemon read, and the ``wall``
callable of the refresher, client and daemon, are shifted by an offset, while the
monotonic clock is the real one. The schedule must follow the monotonic clock.

A restart with a still-valid token on disk not logging in at once is proven by
tests/test_run.py::test_restart_keeps_a_valid_token_without_logging_in.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from random import Random
from typing import Any

import pytest

from sidecar import config as config_module
from sidecar.api import ApiClient
from sidecar.daemon import Daemon
from sidecar.fake_api import Answer, FakeApi
from sidecar.notify import Notifier
from sidecar.refresher import Refresher
from sidecar.schedule import CLOCK_SLACK_SECONDS
from tests.conftest import base_env, write_config

LIFETIME = 4.0  # refresh at 2.8-3.2 s, expiry at 4 s: room for CLOCK_SLACK_SECONDS
HOUR = 3600.0


class WallClock:
    """Real time plus an offset that the test jumps."""

    offset = 0.0

    @classmethod
    def time(cls) -> float:
        return time.time() + cls.offset


class ShiftedDatetime(datetime):
    """``datetime.now`` as the jumped wall clock tells it."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> Any:
        return datetime.now(tz) + timedelta(seconds=WallClock.offset)


class Log:
    """Stands in for the structlog logger; records each event with its monotonic time."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def _add(self, level: str, event: str, **fields: Any) -> None:
        with self._lock:
            self.events.append({"event": event, "level": level, "at": time.monotonic(), **fields})

    def info(self, event: str, **fields: Any) -> None:
        self._add("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._add("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._add("error", event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._add("debug", event, **fields)

    def named(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["event"] == name]


@pytest.fixture
def jumpable_wall(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[WallClock]]:
    import apscheduler.executors.base
    import apscheduler.schedulers.base
    import apscheduler.triggers.date

    import sidecar.schedule

    for module in (
        sidecar.schedule,
        apscheduler.schedulers.base,
        apscheduler.executors.base,
        apscheduler.triggers.date,
    ):
        monkeypatch.setattr(module, "datetime", ShiftedDatetime)
    WallClock.offset = 0.0
    yield WallClock
    WallClock.offset = 0.0


def wait_for(log: Log, name: str, count: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while len(log.named(name)) < count:
        assert time.monotonic() < deadline, f"no {name} #{count}; saw {log.events}"
        time.sleep(0.01)
    return log.named(name)[count - 1]


def test_wall_clock_jumps_move_no_refresh_and_expire_no_token(
    tmp_path: Path, jumpable_wall: type[WallClock]
) -> None:
    """+1 h, then -2 h: each refresh comes when the monotonic plan says, none is skipped."""
    with FakeApi(lifetime=LIFETIME) as api:
        path = write_config(tmp_path, api.url, refresh={"min_interval_seconds": 0.1})
        environ = base_env()
        config = config_module.load(path, environ, {})
        log = Log()
        client = ApiClient(config.api, wall=jumpable_wall.time)
        refresher = Refresher(
            config, client, None, log, rng=Random(5), environ=environ, wall=jumpable_wall.time
        )
        daemon = Daemon(config, refresher, Notifier.from_environ({}, os.getpid()), log)
        codes: list[int] = []
        runner = threading.Thread(target=lambda: codes.append(daemon.run(time.monotonic())))
        not_ready: list[str] = []
        try:
            runner.start()
            first = wait_for(log, "token_refreshed", 1, timeout=5)
            # Forward an hour, and make APScheduler look at its clock again at once.
            jumpable_wall.offset += HOUR
            daemon.schedule.wakeup()
            second = wait_for(log, "token_refreshed", 2, timeout=LIFETIME)
            # Back two hours: APScheduler now thinks the next run is an hour away.
            api.script(Answer(lifetime=HOUR))  # the third token lets the daemon rest
            jumpable_wall.offset -= 2 * HOUR
            daemon.schedule.wakeup()
            deadline = time.monotonic() + LIFETIME
            while len(log.named("token_refreshed")) < 3 and time.monotonic() < deadline:
                ready, detail = daemon.readiness()
                if not ready:
                    not_ready.append(detail.get("reason", "?"))
                time.sleep(0.02)
            third = wait_for(log, "token_refreshed", 3, timeout=1)
        finally:
            # No attempt runs now (the next is ~45 min away): stop as SIGTERM would.
            daemon.handle_exit(signal.SIGTERM, None)
            runner.join(10)
        assert codes == [0]

    received = [r.received_at for r in api.requests]
    assert len(received) == 3  # nothing skipped, nothing extra
    planned = [e["at"] + e["next_refresh_in"] for e in (first, second)]
    lateness = [actual - plan for actual, plan in zip(received[1:], planned, strict=True)]
    # After the forward jump the job fired at once, found it early and waited for its time.
    assert -0.05 <= lateness[0] <= 0.2, lateness
    # After the backward jump the main loop noticed it overdue and ran it (slack + a poll).
    assert -0.05 <= lateness[1] <= CLOCK_SLACK_SECONDS + 0.3, lateness
    assert not_ready == []  # the token never counted as expired
    assert third["expires_in"] == HOUR
    assert refresher.remaining() is not None


def test_expiry_follows_the_monotonic_clock_whatever_the_wall_clock_says(
    tmp_path: Path, jumpable_wall: type[WallClock]
) -> None:
    """Readiness and remaining() ignore wall jumps: +1 h does not expire, -1 h does not extend."""
    with FakeApi(lifetime=1.0) as api:
        path = write_config(tmp_path, api.url, refresh={"min_interval_seconds": 0.1})
        environ = base_env()
        config = config_module.load(path, environ, {})
        log = Log()
        client = ApiClient(config.api, wall=jumpable_wall.time)
        refresher = Refresher(
            config, client, None, log, rng=Random(1), environ=environ, wall=jumpable_wall.time
        )
        daemon = Daemon(config, refresher, Notifier.from_environ({}, os.getpid()), log)
        try:
            assert refresher.attempt().ok
        finally:
            client.close()
    jumpable_wall.offset = HOUR
    assert daemon.readiness()[0]
    remaining = refresher.remaining()
    assert remaining is not None
    assert 0.5 < remaining <= 1.0
    jumpable_wall.offset = -HOUR
    time.sleep(1.05)
    assert refresher.remaining() is None
    ready, detail = daemon.readiness()
    assert not ready
    assert "expired" in detail["reason"]


def test_what_a_failed_attempt_says_of_the_token_follows_the_monotonic_clock(
    tmp_path: Path, jumpable_wall: type[WallClock]
) -> None:
    """After +1 h on the wall, a failure still reports the token valid for ~its lifetime
    (the plan's view), not expired; the log line says the same."""
    with FakeApi(lifetime=60.0) as api:
        path = write_config(tmp_path, api.url)
        environ = base_env()
        config = config_module.load(path, environ, {})
        log = Log()
        client = ApiClient(config.api, wall=jumpable_wall.time)
        refresher = Refresher(
            config, client, None, log, rng=Random(2), environ=environ, wall=jumpable_wall.time
        )
        try:
            assert refresher.attempt().ok
            jumpable_wall.offset = HOUR
            api.script(Answer(error_code="SERVICE_UNAVAILABLE"))
            failed = refresher.attempt()
        finally:
            client.close()
    assert not failed.ok
    assert failed.valid_for is not None and 55 < failed.valid_for <= 60
    logged = log.named("refresh_failed")[-1]
    assert 55 < logged["token_valid_for"] <= 60
