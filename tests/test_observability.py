"""Metrics, probes and systemd notify, observed from outside a real `run` process."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from random import Random
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar import __version__
from sidecar.fake_api import Answer, FakeApi
from sidecar.metrics import FAILURE_REASONS
from tests.conftest import Sidecar, base_env, get, wait_until, write_config

Start = Callable[..., Sidecar]
PREFIX = "forestreet_sidecar_"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, parsed by prometheus_client's own parser."""
    samples = {}
    for family in text_string_to_metric_families(get(url + "/metrics").text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples[(PREFIX + name, tuple(sorted(labels.items())))]


def refreshes(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], result: str, reason: str
) -> float:
    return value(samples, "refreshes_total", result=result, reason=reason)


# SPEC's "patient while valid" retries any failure at r/4..r/2 while the token stays
# valid for r: the tests of quick retries run once the token has expired. A 1 s token,
# and no scheduled refresh for a minute, so only the test's SIGHUP causes attempts.
EXPIRE_FIRST = {"min_interval_seconds": 60}


@pytest.fixture
def short_lived_api() -> Iterator[FakeApi]:
    with FakeApi(lifetime=1.0, seed=7) as api:
        yield api


def expired(path: Path) -> None:
    """Wait until the token written 1 s-lived at ``path`` has expired."""
    time.sleep(max(0.0, path.stat().st_mtime + 1.2 - time.time()))


def start_listening(
    start: Start, config: Path, env: dict[str, str] | None = None
) -> tuple[Sidecar, str]:
    sidecar = start(["--config", str(config), "run"], env or base_env())
    return sidecar, "http://" + sidecar.wait_event("started")["listen"]


def test_every_series_exists_from_the_first_scrape(tmp_path: Path, sidecars: Start) -> None:
    """The first answered scrape (after the first attempt, a failure) has every series."""
    with FakeApi(fail_rate=1.0, fail_code="QUOTA_EXCEEDED") as api:
        config = write_config(tmp_path, api.url, server={"listen": "127.0.0.1:0"})
        _, url = start_listening(sidecars, config)
        samples = scrape(url)
    assert refreshes(samples, "success", "ok") == 0
    assert refreshes(samples, "failure", "QUOTA_EXCEEDED") >= 1
    for reason in set(FAILURE_REASONS) - {"QUOTA_EXCEEDED"}:
        assert refreshes(samples, "failure", reason) == 0
    assert value(samples, "build_info", version=__version__) == 1
    assert value(samples, "token_expiry_timestamp_seconds") == 0
    assert value(samples, "consecutive_failures") >= 1
    assert ("process_resident_memory_bytes", ()) in samples
    assert ("python_info", ()) in {(n, ()) for n, _ in samples}


def test_values_follow_a_scripted_failure_then_success_sequence(
    tmp_path: Path, sidecars: Start
) -> None:
    with FakeApi(lifetime=1.0, expires_at_unit="ms") as api:
        session_path = tmp_path / "out" / "session.json"
        config = write_config(
            tmp_path,
            api.url,
            api={"timeout_seconds": 0.5},
            server={"listen": "127.0.0.1:0"},
            token={"session_path": str(session_path)},
            backoff={"initial_seconds": 0.05, "max_seconds": 0.2},
            refresh=EXPIRE_FIRST,
        )
        sidecar, url = start_listening(sidecars, config)
        first = sidecar.wait_event("token_refreshed")
        samples = scrape(url)
        assert refreshes(samples, "success", "ok") == 1
        expiry = json.loads(session_path.read_text())["expiresAt"]
        assert value(samples, "token_expiry_timestamp_seconds") == pytest.approx(expiry, abs=0.01)
        assert value(samples, "last_success_timestamp_seconds") == pytest.approx(time.time(), abs=5)
        next_refresh = value(samples, "next_refresh_timestamp_seconds")
        assert next_refresh - time.time() == pytest.approx(first["next_refresh_in"], abs=3)
        assert abs(value(samples, "clock_skew_seconds")) < 1

        script = [
            (Answer(error_code="SERVICE_UNAVAILABLE", status=400), "SERVICE_UNAVAILABLE"),
            (Answer(error_code="LIMIT_EXCEEDED", status=401), "LIMIT_EXCEEDED"),
            (Answer(error_code="INVALID_CREDENTIALS"), "INVALID_CREDENTIALS"),
            (Answer(error_code="NOT_FOUND"), "NOT_FOUND"),
            (Answer(status=502, body=b"bad gateway"), "http_502"),
            (Answer(status=418, body=b""), "http_418"),
            (Answer(body=b"{}"), "invalid_response"),
            (Answer(delay=2), "timeout"),
            (Answer(reset=True), "connection_error"),
        ]
        api.script(*(answer for answer, _ in script))
        expired(session_path)
        sidecar.signal(signal.SIGHUP)
        for count, (_, reason) in enumerate(script, start=1):
            failed = sidecar.wait_event("refresh_failed", timeout=10)
            assert failed["reason"] == reason
            assert failed["consecutive_failures"] == count
        after_failures = scrape(url)
        sidecar.wait_event("token_refreshed", timeout=10)
        samples = scrape(url)

    for _, reason in script:
        assert refreshes(samples, "failure", reason) == 1, reason
    assert refreshes(samples, "success", "ok") == 2
    assert value(after_failures, "consecutive_failures") in (len(script), 0)
    assert value(samples, "consecutive_failures") == 0
    assert value(samples, "refresh_duration_seconds_count") == len(script) + 2
    # The token on disk did not change while failing: its expiry gauge held still.
    assert value(after_failures, "token_expiry_timestamp_seconds") == pytest.approx(
        expiry, abs=0.01
    )
    new_expiry = json.loads(session_path.read_text())["expiresAt"]
    assert value(samples, "token_expiry_timestamp_seconds") == pytest.approx(new_expiry, abs=0.01)
    assert new_expiry > expiry


def test_sighup_moves_next_refresh(tmp_path: Path, fake_api: FakeApi, sidecars: Start) -> None:
    config = write_config(tmp_path, fake_api.url, server={"listen": "127.0.0.1:0"})
    sidecar, url = start_listening(sidecars, config)
    sidecar.wait_event("token_refreshed")
    before = value(scrape(url), "next_refresh_timestamp_seconds")
    sidecar.signal(signal.SIGHUP)
    second = sidecar.wait_event("token_refreshed")
    # The reschedule follows the logged refresh within moments.
    wait_until(lambda: value(scrape(url), "next_refresh_timestamp_seconds") > time.time() + 60)
    after = value(scrape(url), "next_refresh_timestamp_seconds")
    assert after != before
    assert after - time.time() == pytest.approx(second["next_refresh_in"], abs=3)


def test_a_write_error_is_counted_and_the_daemon_recovers(
    tmp_path: Path, short_lived_api: FakeApi, sidecars: Start
) -> None:
    fake_api = short_lived_api
    config = write_config(
        tmp_path,
        fake_api.url,
        server={"listen": "127.0.0.1:0"},
        backoff={"initial_seconds": 0.3, "max_seconds": 0.6},
        refresh=EXPIRE_FIRST,
    )
    sidecar, url = start_listening(sidecars, config)
    sidecar.wait_event("token_refreshed")
    token = tmp_path / "out" / "token"
    expired(token)
    token.unlink()
    token.mkdir()  # a directory where the file goes: the rename must fail
    sidecar.signal(signal.SIGHUP)
    failed = sidecar.wait_event("refresh_failed")
    assert failed["reason"] == "write_error"
    assert failed["level"] == "error"
    assert refreshes(scrape(url), "failure", "write_error") >= 1
    assert get(url + "/healthz").status_code == 200
    token.rmdir()
    sidecar.wait_event("token_refreshed", timeout=10)
    assert token.read_text() == fake_api.issued[-1]
    assert [p.name for p in token.parent.iterdir()] == ["token"]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield sock, path
    sock.close()


def receive(sock: socket.socket) -> tuple[float, str]:
    data = sock.recv(4096).decode()
    return time.monotonic(), data


def test_notify_sequence_and_watchdog_cadence(
    tmp_path: Path, fake_api: FakeApi, sidecars: Start, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    fake_api.script(Answer(delay=0.5))
    config = write_config(tmp_path, fake_api.url)
    token = tmp_path / "out" / "token"
    env = base_env(NOTIFY_SOCKET=path, WATCHDOG_USEC="400000", WATCHDOG_PID=str(os.getpid()))
    # WATCHDOG_PID names another process: the watchdog is not ours to feed.
    sidecar = sidecars(["--config", str(config), "run"], env)
    messages = [receive(sock)]
    assert messages[0][1].startswith("READY=1")
    # The first attempt reaches the observers too: its STATUS= says when the next comes.
    assert "; next refresh in " in messages[0][1]
    assert token.exists()  # READY only once the token is on disk
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait() == 0
    while True:
        try:
            messages.append(receive(sock))
        except TimeoutError:
            break
        if messages[-1][1].startswith("STOPPING=1"):
            break
    assert not any(m == "WATCHDOG=1" for _, m in messages)

    env["WATCHDOG_PID"] = ""
    del env["WATCHDOG_PID"]
    sidecar = sidecars(["--config", str(config), "run"], env)
    pings: list[float] = []
    seen: list[str] = []
    while len(pings) < 6:
        at, message = receive(sock)
        seen.append(message)
        if message == "WATCHDOG=1":
            pings.append(at)
    assert any(m.startswith("READY=1\nSTATUS=token valid until") for m in seen)
    gaps = [b - a for a, b in itertools.pairwise(pings[1:])]
    assert all(0.1 <= gap <= 0.5 for gap in gaps), gaps  # half of 0.4 s
    # The second run kept the first run's token; SIGHUP makes it fetch a new one.
    sidecar.signal(signal.SIGHUP)
    wait_until(lambda: len(fake_api.issued) >= 2)
    # SIGTERM only once the new token is announced: sent at once, it races the write
    # (the write is then rightly abandoned, and no STATUS follows).
    rest: list[str] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
        m.startswith("STATUS=token valid until") for m in rest
    ):
        rest.append(receive(sock)[1])
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait() == 0
    while True:
        try:
            rest.append(receive(sock)[1])
        except TimeoutError:
            break
        if rest[-1].startswith("STOPPING=1"):
            break
    assert any(m.startswith("STATUS=token valid until") for m in rest)
    assert rest[-1].startswith("STOPPING=1")


class HeldAttempts:
    """The refresher's attempts, each held until the test lets it go: a stuck loop.

    Nothing outside the process can hold an attempt any more (a key read never blocks,
    every exchange ends within twice the timeout), so the stuck attempt is made here.
    """

    def __init__(self, attempt: Callable[[], Any]) -> None:
        self.attempt = attempt
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> Any:
        self.started.set()
        self.release.wait(30)
        return self.attempt()


class ShiftedClock:
    """The real monotonic clock plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def watchdog_pings(sock: socket.socket, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    pings = 0
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            pings += sock.recv(4096) == b"WATCHDOG=1"
        except TimeoutError:
            break
    return pings


def test_a_stuck_loop_fails_healthz_and_stops_the_watchdog(
    tmp_path: Path, fake_api: FakeApi, notify_socket: tuple[socket.socket, str]
) -> None:
    """An attempt held past twice the timeout + 10 s: /healthz says stuck, the pings stop."""
    from sidecar import config as config_module
    from sidecar import logs
    from sidecar.api import ApiClient
    from sidecar.daemon import Daemon
    from sidecar.notify import Notifier
    from sidecar.refresher import Refresher

    sock, path = notify_socket
    environ = base_env()
    config = config_module.load(write_config(tmp_path, fake_api.url), environ, {})
    client = ApiClient(config.api)
    log = logs.get()
    clock = ShiftedClock()
    refresher = Refresher(config, client, None, log, rng=Random(3), environ=environ)
    assert refresher.attempt().ok
    held = HeldAttempts(refresher.attempt)
    refresher.attempt = held  # type: ignore[method-assign]
    notifier = Notifier(path, watchdog=0.1)
    daemon = Daemon(config, refresher, notifier, log, monotonic=clock)
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(daemon.run(clock())))
    try:
        runner.start()
        assert held.started.wait(5)
        assert daemon.health()[0]
        assert watchdog_pings(sock, 0.5) >= 2, "pinging while the attempt is young"
        clock.offset += 2 * config.api.timeout_seconds + 10 + 1
        healthy, detail = daemon.health()
        assert not healthy
        assert detail["status"] == "stuck"
        assert "attempt running for" in detail["reason"]
        assert daemon.readiness()[0], "the token itself is still fine"
        watchdog_pings(sock, 0.2)  # drain what was sent before the jump
        assert watchdog_pings(sock, 1.0) == 0, "no pings while stuck: systemd restarts us"
        held.release.set()
        wait_until(lambda: daemon.health()[0], timeout=5)
        assert watchdog_pings(sock, 0.5) >= 2, "pinging again once the attempt ended"
    finally:
        held.release.set()
        daemon.handle_exit(signal.SIGTERM, None)
        runner.join(10)
        client.close()
    assert codes == [0]


def test_an_unreadable_key_is_a_credential_failure_with_its_own_reason(
    tmp_path: Path, short_lived_api: FakeApi, sidecars: Start
) -> None:
    fake_api = short_lived_api
    key_file = tmp_path / "key"
    key_file.write_text("a-key-for-this-test")
    config = write_config(
        tmp_path,
        fake_api.url,
        api={"key_file": str(key_file)},
        server={"listen": "127.0.0.1:0"},
        backoff={"initial_seconds": 0.05, "max_seconds": 0.3},
        refresh=EXPIRE_FIRST,
    )
    sidecar, url = start_listening(sidecars, config)
    sidecar.wait_event("token_refreshed")
    expired(tmp_path / "out" / "token")
    key_file.unlink()  # a Secret being rotated, or a credential gone
    sidecar.signal(signal.SIGHUP)
    failed = sidecar.wait_event("refresh_failed")
    assert (failed["reason"], failed["lane"], failed["level"]) == (
        "key_unavailable",
        "credential",
        "error",
    )
    assert str(key_file) in failed["message"]
    assert refreshes(scrape(url), "failure", "key_unavailable") == 1
    key_file.write_text("the-rotated-key")
    sidecar.wait_event("token_refreshed", timeout=10)
    assert fake_api.requests[-1].api_key == "the-rotated-key"
