"""SIGHUP against a real `run` process: forced refreshes, coalesced to about one a second."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from sidecar.fake_api import Answer, FakeApi
from tests.conftest import Sidecar, base_env, wait_until, write_config
from tests.test_redaction import assert_clean, secrets_of

Start = Callable[..., Sidecar]


def start_run(start: Start, config: Path) -> Sidecar:
    sidecar = start(["--config", str(config), "run"], base_env())
    sidecar.wait_event("started")
    return sidecar


def stop_within_5s(sidecar: Sidecar, api: FakeApi) -> None:
    started = time.monotonic()
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(5) == 0
    assert time.monotonic() - started < 5
    assert_clean(sidecar, secrets_of(api))


def test_a_storm_of_1000_sighups_sends_about_one_request_a_second(
    tmp_path: Path, fake_api: FakeApi, sidecars: Start
) -> None:
    config = write_config(tmp_path, fake_api.url)
    sidecar = start_run(sidecars, config)
    sidecar.wait_event("token_refreshed")
    before = len(fake_api.requests)
    storm_started = time.monotonic()
    for index in range(1000):
        os.kill(sidecar.process.pid, signal.SIGHUP)
        # ~1.5 s in all, like a `systemctl reload` loop
        pause = storm_started + (index + 1) * 0.0015 - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    storm = time.monotonic() - storm_started
    time.sleep(2.5)  # the deferred attempts of the last second come at its end
    during = [r.received_at - storm_started for r in fake_api.requests[before:]]
    # One at once, one at the end of each second the storm lasts: 1 s and 2 s.
    assert 2 <= len(during) <= 3, (storm, during)
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert all(gap >= 0.9 for gap in gaps), during
    assert sidecar.count("refresh_failed") == 0
    stop_within_5s(sidecar, fake_api)


def test_sighups_within_a_second_make_exactly_one_more_attempt_at_its_end(
    tmp_path: Path, fake_api: FakeApi, sidecars: Start
) -> None:
    config = write_config(tmp_path, fake_api.url)
    sidecar = start_run(sidecars, config)
    sidecar.wait_event("token_refreshed")
    before = len(fake_api.requests)
    sidecar.signal(signal.SIGHUP)
    wait_until(lambda: len(fake_api.requests) == before + 1, timeout=5)
    first = fake_api.requests[-1].received_at
    for _ in range(10):
        time.sleep(0.05)
        sidecar.signal(signal.SIGHUP)
    wait_until(lambda: len(fake_api.requests) == before + 2, timeout=5)
    second = fake_api.requests[-1].received_at
    assert 0.9 <= second - first <= 1.5
    time.sleep(1.5)
    assert len(fake_api.requests) == before + 2
    coalesced = sidecar.wait_event("refresh_requested", where=lambda e: "coalesced" in e)
    assert coalesced["coalesced"] == 10
    # A second later a SIGHUP is served at once again.
    sidecar.signal(signal.SIGHUP)
    sent = time.monotonic()
    wait_until(lambda: len(fake_api.requests) == before + 3, timeout=5)
    assert fake_api.requests[-1].received_at - sent < 0.5
    stop_within_5s(sidecar, fake_api)


def test_a_sighup_during_the_first_attempt_is_ignored(
    tmp_path: Path, fake_api: FakeApi, sidecars: Start
) -> None:
    """The refresh it asks for is the one under way."""
    fake_api.script(Answer(delay=1.0))
    config = write_config(tmp_path, fake_api.url)
    sidecar = sidecars(["--config", str(config), "run"], base_env())
    wait_until(lambda: bool(fake_api.requests), timeout=15)
    for _ in range(5):
        sidecar.signal(signal.SIGHUP)
        time.sleep(0.05)
    sidecar.wait_event("token_refreshed")
    time.sleep(1.5)
    assert len(fake_api.requests) == 1
    stop_within_5s(sidecar, fake_api)
