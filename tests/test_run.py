"""`forestreet-sidecar run` as a subprocess: refreshing, failures, signals, restart, probes."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.fake_api import Answer, FakeApi
from tests.conftest import Sidecar, base_env, get, run_command, wait_until, write_config

Start = Callable[..., Sidecar]
FAST = {"min_interval_seconds": 0.2}


def start_run(start: Start, config: Path, **env: str) -> tuple[Sidecar, str]:
    sidecar = start(["--config", str(config), "run"], base_env(**env))
    started = sidecar.wait_event("started")
    listen = started.get("listen")
    return sidecar, f"http://{listen}" if listen else ""


def listening(tmp_path: Path, url: str, **sections: dict[str, Any]) -> Path:
    return write_config(tmp_path, url, server={"listen": "127.0.0.1:0"}, **sections)


def test_run_writes_and_keeps_refreshing(tmp_path: Path, sidecars: Start) -> None:
    with FakeApi(lifetime=0.5) as api:
        config = write_config(tmp_path, api.url, refresh=FAST)
        sidecar, _ = start_run(sidecars, config)
        for _ in range(4):
            event = sidecar.wait_event("token_refreshed")
            # min_interval (0.2 s) counts from the request's send, next_refresh_in from the
            # log line; a first token may be refreshed from 0.1 of its life (first_from_fraction).
            assert 0.1 <= event["next_refresh_in"] <= 0.4
        token = (tmp_path / "out" / "token").read_text()
        assert token in api.issued[-2:]
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait() == 0


def test_sigterm_exits_0_within_5s_leaving_the_token_and_no_temp(
    tmp_path: Path, fake_api: FakeApi, sidecars: Start
) -> None:
    config = write_config(tmp_path, fake_api.url)
    sidecar, _ = start_run(sidecars, config)
    sidecar.wait_event("token_refreshed")
    started = time.monotonic()
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(5) == 0
    assert time.monotonic() - started < 5
    assert sidecar.events[-1]["event"] == "shutdown"
    assert sidecar.events[-1]["signal"] == "SIGTERM"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["token"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_while_a_request_hangs(
    tmp_path: Path, fake_api: FakeApi, sidecars: Start, signum: int
) -> None:
    fake_api.script(Answer(delay=30))
    config = write_config(tmp_path, fake_api.url, api={"timeout_seconds": 20})
    sidecar = sidecars(["--config", str(config), "run"], base_env())
    wait_until(lambda: bool(fake_api.requests))
    started = time.monotonic()
    sidecar.signal(signum)
    assert sidecar.wait(5) == 0
    assert time.monotonic() - started < 5
    assert list((tmp_path / "out").iterdir()) == []


def test_sighup_forces_an_immediate_refresh(
    tmp_path: Path, fake_api: FakeApi, sidecars: Start
) -> None:
    config = write_config(tmp_path, fake_api.url)
    sidecar, _ = start_run(sidecars, config)
    first = sidecar.wait_event("token_refreshed")
    # An hour-long token: the first refresh comes after 0.1 of its life at the earliest.
    assert first["next_refresh_in"] > 300
    sidecar.signal(signal.SIGHUP)
    sidecar.wait_event("refresh_requested", timeout=5)
    second = sidecar.wait_event("token_refreshed", timeout=5)
    assert second["token_fingerprint"] != first["token_fingerprint"]
    assert len(fake_api.issued) == 2
    assert (tmp_path / "out" / "token").read_text() == fake_api.issued[-1]


@pytest.fixture
def short_lived_api() -> Iterator[FakeApi]:
    with FakeApi(lifetime=1.0, seed=7) as api:
        yield api


def test_failures_never_touch_the_token_on_disk(
    tmp_path: Path, short_lived_api: FakeApi, sidecars: Start
) -> None:
    """Not even an expired token (with a valid one, failures wait patiently: r/4..r/2)."""
    fake_api = short_lived_api
    config = write_config(
        tmp_path,
        fake_api.url,
        backoff={"initial_seconds": 0.05, "max_seconds": 0.1},
        refresh={"min_interval_seconds": 60},
    )
    sidecar, _ = start_run(sidecars, config)
    sidecar.wait_event("token_refreshed")
    token = tmp_path / "out" / "token"
    good = token.read_text()
    inode = token.stat().st_ino
    time.sleep(max(0.0, token.stat().st_mtime + 1.2 - time.time()))
    fake_api.script(
        Answer(error_code="SERVICE_UNAVAILABLE"),
        Answer(body=b"<html>oops</html>", content_type="text/html"),
        Answer(extra_fields={"accessToken": "not a token"}),
        Answer(extra_fields={"expiresIn": -1}),
        Answer(status=500, body=b""),
        Answer(reset=True),
    )
    sidecar.signal(signal.SIGHUP)
    reasons = [sidecar.wait_event("refresh_failed")["reason"] for _ in range(6)]
    assert reasons == [
        "SERVICE_UNAVAILABLE",
        "invalid_response",
        "invalid_response",
        "invalid_response",
        "http_500",
        "connection_error",
    ]
    assert token.read_text() == good
    assert token.stat().st_ino == inode
    recovered = sidecar.wait_event("token_refreshed")
    assert token.read_text() == fake_api.issued[-1]
    assert recovered["token_fingerprint"] != sidecar.events[0].get("token_fingerprint")


def test_a_credential_error_takes_the_slow_lane_but_comes_back_before_expiry(
    tmp_path: Path, sidecars: Start
) -> None:
    with FakeApi(lifetime=4) as api:
        config = write_config(tmp_path, api.url, refresh={"min_interval_seconds": 0.5})
        sidecar, _ = start_run(sidecars, config)
        sidecar.wait_event("token_refreshed")
        api.script(
            Answer(error_code="INVALID_CREDENTIALS"), Answer(error_code="INVALID_CREDENTIALS")
        )
        failed = sidecar.wait_event("refresh_failed", timeout=10)
        assert failed["level"] == "error"
        assert failed["lane"] == "credential"
        # backoff.max_seconds is 0.5 here but a default-like slow lane would be minutes;
        # the retry must still land before the token expires.
        assert failed["retry_in"] < failed["token_valid_for"]


def test_restart_keeps_a_valid_token_without_logging_in(
    tmp_path: Path, fake_api: FakeApi, sidecars: Start
) -> None:
    session = str(tmp_path / "out" / "session.json")
    config = listening(tmp_path, fake_api.url, token={"session_path": session})
    first, _ = start_run(sidecars, config)
    first.wait_event("token_refreshed")
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    token = (tmp_path / "out" / "token").read_text()
    requests_before = len(fake_api.requests)

    second, url = start_run(sidecars, config)
    kept = second.wait_event("token_kept")
    assert kept["next_refresh_in"] > 2000
    ready = get(url + "/readyz")
    assert ready.status_code == 200, ready.text
    time.sleep(0.5)
    assert len(fake_api.requests) == requests_before
    assert (tmp_path / "out" / "token").read_text() == token
    expiry = _sample(
        get(url + "/metrics").text, "forestreet_sidecar_token_expiry_timestamp_seconds"
    )
    assert expiry == pytest.approx(json.loads(Path(session).read_text())["expiresAt"], abs=0.01)


def test_restart_keeps_a_jwt_by_its_exp_claim(
    tmp_path: Path, fake_api: FakeApi, sidecars: Start
) -> None:
    config = write_config(tmp_path, fake_api.url)
    assert run_command(["--config", str(config), "once"]).returncode == 0
    sidecar, _ = start_run(sidecars, config)
    kept = sidecar.wait_event("token_kept")
    assert 0.7 * 3600 - 5 <= kept["next_refresh_in"] <= 0.8 * 3600
    assert len(fake_api.requests) == 1


def test_restart_with_an_expired_token_logs_in_at_once(tmp_path: Path, sidecars: Start) -> None:
    with FakeApi(lifetime=1) as api:
        config = write_config(tmp_path, api.url)
        assert run_command(["--config", str(config), "once"]).returncode == 0
        time.sleep(1.2)
        sidecar, _ = start_run(sidecars, config)
        sidecar.wait_event("token_refreshed")
        assert sidecar.count("token_kept") == 0
        assert len(api.requests) == 2


def test_stale_temp_files_are_swept_at_start(
    tmp_path: Path, fake_api: FakeApi, sidecars: Start
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / ".token.tmp-deadbeef").write_text("half a tok")
    config = write_config(tmp_path, fake_api.url)
    sidecar, _ = start_run(sidecars, config)
    sidecar.wait_event("token_refreshed")
    assert sorted(p.name for p in out.iterdir()) == ["token"]


def test_the_key_file_is_reread_before_every_request(
    tmp_path: Path, fake_api: FakeApi, sidecars: Start
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("first-key-value\n")
    key_file.chmod(0o600)
    config = write_config(tmp_path, fake_api.url, api={"key_file": str(key_file)})
    sidecar, _ = start_run(sidecars, config)
    sidecar.wait_event("token_refreshed")
    key_file.write_text("rotated-key-value")
    sidecar.signal(signal.SIGHUP)
    sidecar.wait_event("token_refreshed")
    assert [r.api_key for r in fake_api.requests] == ["first-key-value", "rotated-key-value"]


def test_probes_follow_the_token(tmp_path: Path, sidecars: Start) -> None:
    with FakeApi(lifetime=1.5) as api:
        api.script(Answer(error_code="SERVICE_UNAVAILABLE", retry_after="2"))
        config = listening(tmp_path, api.url, refresh={"min_interval_seconds": 30})
        sidecar, url = start_run(sidecars, config)
        not_yet = get(url + "/readyz")
        assert not_yet.status_code == 503
        assert "missing" in not_yet.json()["reason"]
        assert get(url + "/healthz").status_code == 200
        sidecar.wait_event("token_refreshed")
        assert get(url + "/readyz").status_code == 200
        # min_interval 30 s > lifetime 1.5 s: the token expires before the next refresh.
        time.sleep(1.7)
        stale = get(url + "/readyz")
        assert stale.status_code == 503
        assert "expired" in stale.json()["reason"]
        assert (tmp_path / "out" / "token").exists()  # an expired token stays on disk
        assert get(url + "/healthz").status_code == 200
        assert get(url + "/nope").status_code == 404


def test_healthz_stays_up_during_an_outage(tmp_path: Path, sidecars: Start) -> None:
    with FakeApi(fail_rate=1.0, fail_code="SERVICE_UNAVAILABLE") as api:
        config = listening(tmp_path, api.url)
        sidecar, url = start_run(sidecars, config)
        for _ in range(3):
            sidecar.wait_event("refresh_failed")
        assert get(url + "/healthz").status_code == 200
        assert get(url + "/readyz").status_code == 503
        failures = _sample(
            get(url + "/metrics").text,
            'forestreet_sidecar_refreshes_total{reason="SERVICE_UNAVAILABLE",result="failure"}',
        )
        assert failures >= 3


def test_port_in_use_exits_1_naming_the_address(tmp_path: Path, fake_api: FakeApi) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, fake_api.url, server={"listen": f"127.0.0.1:{port}"})
        result = run_command(["--config", str(config), "run"], timeout=20)
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert fake_api.requests == []


def test_secrets_never_reach_stdout_or_stderr(tmp_path: Path, sidecars: Start) -> None:
    with FakeApi(lifetime=0.4) as api:
        api.script(
            Answer(error_code="INVALID_CREDENTIALS"), Answer(status=302, location="http://x/")
        )
        config = listening(
            tmp_path,
            api.url,
            refresh=FAST,
            backoff={"initial_seconds": 0.05, "max_seconds": 0.1},
            log={"level": "debug"},
        )
        sidecar, url = start_run(sidecars, config)
        for _ in range(3):
            sidecar.wait_event("token_refreshed")
        scrape = get(url + "/metrics").text
        sidecar.signal(signal.SIGTERM)
        sidecar.wait()
        output = "".join(sidecar.raw) + "".join(sidecar.stderr) + scrape
        secrets = [*api.issued, *api.issued_refresh, base_env()["FORESTREET_API_KEY"]]
        assert secrets
        leaked = [s for s in secrets if s in output]
        assert leaked == []


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or (line.startswith(name + "{") and name.endswith("}")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the scrape")


def test_retries_due_at_once_are_never_dropped(tmp_path: Path, sidecars: Start) -> None:
    """A next run due before APScheduler counts the last one finished must still happen.

    (It used to be skipped as "maximum number of running instances reached", and a
    skipped date job is dropped: the refresh loop stopped.)
    """
    with FakeApi(fail_rate=1.0, fail_code="SERVICE_UNAVAILABLE") as api:
        config = write_config(
            tmp_path, api.url, backoff={"initial_seconds": 0.0001, "max_seconds": 0.0002}
        )
        sidecars(["--config", str(config), "run"], base_env())
        wait_until(lambda: len(api.requests) >= 400, timeout=20)


def test_a_sighup_during_an_attempt_runs_another_right_after(
    tmp_path: Path, fake_api: FakeApi, sidecars: Start
) -> None:
    config = write_config(tmp_path, fake_api.url)
    sidecar, _ = start_run(sidecars, config)
    sidecar.wait_event("token_refreshed")
    fake_api.script(Answer(delay=1.0))
    sidecar.signal(signal.SIGHUP)
    wait_until(lambda: len(fake_api.requests) == 2)
    sidecar.signal(signal.SIGHUP)  # while the second request is still waiting for its answer
    sidecar.wait_event("token_refreshed")
    answered = time.monotonic()
    wait_until(lambda: len(fake_api.requests) == 3, timeout=5)
    # Not the hour-long normal schedule: the pending SIGHUP is served at once.
    assert fake_api.requests[2].received_at - answered < 1.0
    sidecar.wait_event("token_refreshed")
    assert len(fake_api.issued) == 3


def test_an_absurd_but_valid_lifetime_neither_crashes_nor_schedules_for_ever(
    tmp_path: Path, fake_api: FakeApi, sidecars: Start
) -> None:
    """expiresIn 1e300 is a finite positive JSON number; the daemon must keep running."""
    fake_api.script(Answer(lifetime=1e300))
    config = listening(tmp_path, fake_api.url)
    sidecar, url = start_run(sidecars, config)
    refreshed = sidecar.wait_event("token_refreshed")
    assert refreshed["next_refresh_in"] <= 3600  # refresh.max_interval_seconds
    assert get(url + "/readyz").status_code == 200
    assert get(url + "/healthz").status_code == 200
    sidecar.signal(signal.SIGHUP)
    sidecar.wait_event("token_refreshed")
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait() == 0


def test_a_kept_token_with_an_absurd_exp_is_refreshed_within_max_interval(
    tmp_path: Path, fake_api: FakeApi, sidecars: Start
) -> None:
    """A JWT on disk claiming iat and exp in the year 3,000,000 must not crash the start."""
    import base64
    import json as json_module

    def part(document: dict[str, Any]) -> str:
        raw = json_module.dumps(document).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    out = tmp_path / "out"
    out.mkdir()
    claims = {"iat": 9e13, "exp": 9.5e13}
    (out / "token").write_text(f"{part({'alg': 'none'})}.{part(claims)}.sig")
    config = write_config(tmp_path, fake_api.url)
    sidecar, _ = start_run(sidecars, config)
    kept = sidecar.wait_event("token_kept")
    assert kept["next_refresh_in"] <= 3600
    assert fake_api.requests == []
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait() == 0
