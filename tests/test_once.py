"""`forestreet-sidecar once` as a subprocess against a real local fake API."""

from __future__ import annotations

import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path

from sidecar.fake_api import Answer, FakeApi
from tests.conftest import API_KEY, Sidecar, base_env, json_lines, run_command, write_config


def test_once_writes_the_token_and_exits_0(tmp_path: Path, fake_api: FakeApi) -> None:
    config = write_config(tmp_path, fake_api.url)
    result = run_command(["--config", str(config), "once"])
    assert result.returncode == 0, result.stderr
    token = tmp_path / "out" / "token"
    assert token.read_text() == fake_api.issued[-1]  # the bytes only, no newline
    assert stat.S_IMODE(token.stat().st_mode) == 0o640
    assert [e["event"] for e in json_lines(result.stdout)] == ["token_refreshed"]
    assert fake_api.requests[-1].api_key == API_KEY
    assert sorted(p.name for p in token.parent.iterdir()) == ["token"]


def test_once_gives_up_at_once_on_a_credential_error(tmp_path: Path, fake_api: FakeApi) -> None:
    fake_api.script(Answer(error_code="INVALID_CREDENTIALS"))
    config = write_config(tmp_path, fake_api.url)
    result = run_command(["--config", str(config), "once", "--timeout", "30"])
    assert result.returncode == 1
    assert len(fake_api.requests) == 1
    events = json_lines(result.stdout)
    failed = next(e for e in events if e["event"] == "refresh_failed")
    assert failed["level"] == "error"
    assert failed["error_code"] == "INVALID_CREDENTIALS"
    assert "check the API key" in failed["hint"]
    assert events[-1]["event"] == "once_gave_up"
    assert events[-1]["level"] == "error"
    assert "check the API key" in events[-1]["hint"]
    assert "once gave up after 1 attempt(s)" in result.stderr
    assert "INVALID_CREDENTIALS" in result.stderr
    assert "check the API key" in result.stderr
    assert not (tmp_path / "out" / "token").exists()


def test_once_retries_retryable_errors_until_a_token(tmp_path: Path, fake_api: FakeApi) -> None:
    fake_api.script(
        Answer(error_code="SERVICE_UNAVAILABLE"),
        Answer(status=502, body=b"bad gateway"),
        Answer(body=b"{not json"),
    )
    config = write_config(tmp_path, fake_api.url)
    result = run_command(["--config", str(config), "once", "--timeout", "30"])
    assert result.returncode == 0, result.stdout
    assert len(fake_api.requests) == 4
    reasons = [e["reason"] for e in json_lines(result.stdout) if e["event"] == "refresh_failed"]
    assert reasons == ["SERVICE_UNAVAILABLE", "http_502", "invalid_response"]
    assert (tmp_path / "out" / "token").read_text() == fake_api.issued[-1]


def test_once_stops_at_its_deadline_and_keeps_the_old_token(tmp_path: Path) -> None:
    with FakeApi(fail_rate=1.0, fail_code="SERVICE_UNAVAILABLE") as api:
        config = write_config(tmp_path, api.url)
        token = tmp_path / "out" / "token"
        token.parent.mkdir()
        token.write_text("previous.token")
        started = time.monotonic()
        result = run_command(["--config", str(config), "once", "--timeout", "1.5"])
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert elapsed < 10
    assert len(api.requests) >= 2
    assert json_lines(result.stdout)[-1]["event"] == "once_gave_up"
    assert "no token within 1.5s" in result.stderr
    assert token.read_text() == "previous.token"


def test_unwritable_token_directory_exits_1_naming_the_path(
    tmp_path: Path, fake_api: FakeApi
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    config = write_config(tmp_path, fake_api.url, token={"path": str(blocker / "dir" / "token")})
    result = run_command(["--config", str(config), "once"])
    assert result.returncode == 1
    assert str(blocker) in result.stderr
    assert "Not a directory" in result.stderr
    assert json_lines(result.stdout)[-1]["event"] == "startup_failed"
    assert fake_api.requests == []


def test_sigterm_while_a_request_hangs_exits_1_quickly(
    tmp_path: Path, fake_api: FakeApi, sidecars: Callable[..., Sidecar]
) -> None:
    fake_api.script(Answer(delay=30))
    config = write_config(tmp_path, fake_api.url, api={"timeout_seconds": 20})
    sidecar = sidecars(["--config", str(config), "once"], base_env())
    deadline = time.monotonic() + 10
    while not fake_api.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(5) == 1
    assert time.monotonic() - started < 5
    assert sidecar.events[-1]["event"] == "once_gave_up"
    assert "SIGTERM" in sidecar.events[-1]["reason"]
    assert list((tmp_path / "out").iterdir()) == []


def test_session_file_is_written_beside_the_token(tmp_path: Path, fake_api: FakeApi) -> None:
    import json

    session_path = tmp_path / "out" / "session.json"
    config = write_config(
        tmp_path,
        fake_api.url,
        token={"session_path": str(session_path), "include_refresh_token": True, "mode": "0600"},
    )
    before = time.time()
    assert run_command(["--config", str(config), "once"]).returncode == 0
    document = json.loads(session_path.read_text())
    assert document["accessToken"] == fake_api.issued[-1]
    assert document["refreshToken"] == fake_api.issued_refresh[-1]
    assert document["expiresIn"] == 3600
    assert before - 1 <= document["obtainedAt"] <= time.time()
    assert document["expiresAt"] == document["obtainedAt"] + 3600
    assert stat.S_IMODE(session_path.stat().st_mode) == 0o600
