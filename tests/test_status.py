"""`once --min-validity` spares a request while the token on disk will do, and `status`
asks a real running sidecar how its token is doing (exit 0 ready, 1 not, 3 unreachable)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar import status
from sidecar.fake_api import Answer, FakeApi
from tests.conftest import Sidecar, base_env, json_lines, run_command, wait_until, write_config

# --- once --min-validity -----------------------------------------------------------------


def session_config(tmp_path: Path, url: str) -> Path:
    return write_config(tmp_path, url, token={"session_path": str(tmp_path / "out" / "s.json")})


def test_once_min_validity_makes_no_request_while_the_token_will_do(
    tmp_path: Path, fake_api: FakeApi
) -> None:
    config = session_config(tmp_path, fake_api.url)
    assert run_command(["--config", str(config), "once"]).returncode == 0
    assert len(fake_api.requests) == 1
    token = (tmp_path / "out" / "token").read_text()
    result = run_command(["--config", str(config), "once", "--min-validity", "600"])
    assert result.returncode == 0, result.stderr
    assert len(fake_api.requests) == 1  # no second request
    (kept,) = json_lines(result.stdout)
    assert kept["event"] == "token_kept"
    assert "at least --min-validity 600s" in kept["reason"]
    assert 3500 < kept["valid_for"] <= 3600
    assert (tmp_path / "out" / "token").read_text() == token


def test_once_min_validity_knows_a_jwt_by_its_exp(tmp_path: Path, fake_api: FakeApi) -> None:
    """Without a session file, the fake's JWT carries its expiry, as at restart."""
    config = write_config(tmp_path, fake_api.url)
    assert run_command(["--config", str(config), "once"]).returncode == 0
    result = run_command(["--config", str(config), "once", "--min-validity", "60"])
    assert result.returncode == 0, result.stderr
    assert len(fake_api.requests) == 1
    assert json_lines(result.stdout)[0]["event"] == "token_kept"


def test_once_min_validity_fetches_when_the_token_is_too_short_lived(
    tmp_path: Path, fake_api: FakeApi
) -> None:
    config = session_config(tmp_path, fake_api.url)
    assert run_command(["--config", str(config), "once"]).returncode == 0
    result = run_command(["--config", str(config), "once", "--min-validity", "7200"])
    assert result.returncode == 0, result.stderr
    assert len(fake_api.requests) == 2  # exactly one more
    events = json_lines(result.stdout)
    assert [e["event"] for e in events] == ["token_not_kept", "token_refreshed"]
    assert "less than 7200s" in events[0]["reason"]
    assert (tmp_path / "out" / "token").read_text() == fake_api.issued[-1]


def test_once_min_validity_fetches_without_a_token_or_with_an_output_missing(
    tmp_path: Path, fake_api: FakeApi
) -> None:
    config = session_config(tmp_path, fake_api.url)
    result = run_command(["--config", str(config), "once", "--min-validity", "1"])
    assert result.returncode == 0, result.stderr
    assert len(fake_api.requests) == 1
    assert json_lines(result.stdout)[0]["reason"].startswith("no token on disk (")
    (tmp_path / "out" / "token").write_text("not.ours")  # a token whose expiry nobody knows
    result = run_command(["--config", str(config), "once", "--min-validity", "1"])
    assert result.returncode == 0
    assert len(fake_api.requests) == 2
    assert json_lines(result.stdout)[0]["reason"] == "no valid token on disk whose expiry is known"
    (tmp_path / "out" / "s.json").unlink()  # the JWT alone tells its expiry (SPEC: Restart)
    result = run_command(["--config", str(config), "once", "--min-validity", "1"])
    assert result.returncode == 0
    assert len(fake_api.requests) == 2
    assert json_lines(result.stdout)[0]["event"] == "token_kept"
    config.write_text(
        config.read_text() + f"outputs:\n- {{path: {tmp_path / 'out' / 'app.env'}, format: env}}\n"
    )
    result = run_command(["--config", str(config), "once", "--min-validity", "1"])
    assert result.returncode == 0
    assert len(fake_api.requests) == 3  # a newly configured output is written at once
    assert json_lines(result.stdout)[0]["reason"].endswith("app.env is missing")
    assert (tmp_path / "out" / "app.env").exists()


def test_min_validity_must_be_a_number_of_seconds() -> None:
    assert run_command(["once", "--min-validity", "soon"]).returncode == 2
    assert run_command(["once", "--min-validity", "-1"]).returncode == 2


# --- status ------------------------------------------------------------------------------


def start_run(
    tmp_path: Path, url: str, sidecars: Callable[..., Sidecar], **sections: dict[str, Any]
) -> tuple[Sidecar, str]:
    config = write_config(tmp_path, url, server={"listen": "127.0.0.1:0"}, **sections)
    sidecar = sidecars(["--config", str(config), "run"], base_env())
    started = sidecar.wait_event("started")
    return sidecar, started["listen"]


def ask(listen: str, *extra: str) -> tuple[int, str, str]:
    env = base_env(FORESTREET_SIDECAR_SERVER_LISTEN=listen)
    del env["FORESTREET_API_KEY"]  # status needs no key
    done = run_command(["status", *extra], env)
    return done.returncode, done.stdout, done.stderr


def test_status_of_a_ready_sidecar(
    tmp_path: Path, fake_api: FakeApi, sidecars: Callable[..., Sidecar]
) -> None:
    sidecar, listen = start_run(tmp_path, fake_api.url, sidecars)
    sidecar.wait_event("token_refreshed")
    code, out, err = ask(listen)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"forestreet-sidecar at {listen}: ready"
    text = "\n".join(lines[1:])
    assert "refresh loop  ok" in text
    assert "token         valid, expires 20" in text
    assert "(in 59m" in text or "(in 1h 00m)" in text
    assert "lifetime 1h 00m" in text
    assert "next refresh  20" in text
    assert "last success  20" in text
    assert "failures      0 in a row" in text
    assert "since start   no failure" in text
    assert err == ""

    code, out, _ = ask(listen, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["ready"] is True
    assert report["address"] == listen
    assert report["consecutive_failures"] == 0
    assert report["failures_since_start"] == {}
    assert 3500 < report["expires_in"] <= 3600
    assert report["lifetime"] == 3600
    assert 0 < report["next_refresh_in"] < 3600
    assert 0 <= report["last_success_ago"] < 60
    assert report["expires_at"].endswith("Z")


def test_status_of_a_sidecar_whose_token_expired_while_failing(
    tmp_path: Path, fake_api: FakeApi, sidecars: Callable[..., Sidecar]
) -> None:
    fake_api.script(Answer(lifetime=1.5), *[Answer(error_code="SERVICE_UNAVAILABLE")] * 500)
    sidecar, listen = start_run(
        tmp_path, fake_api.url, sidecars, refresh={"min_interval_seconds": 0}
    )
    sidecar.wait_event("token_refreshed")
    deadline = time.monotonic() + 10
    while True:
        code, out, err = ask(listen, "--json")
        report = json.loads(out)
        if code == 1 and report["consecutive_failures"] >= 2:
            break
        assert time.monotonic() < deadline, (code, out, err)
        time.sleep(0.3)
    assert report["ready"] is False
    assert report["reason"] == "the token on disk has expired"
    assert report["expires_in"] <= 0  # just expired rounds to -0.0
    assert report["failures_since_start"]["SERVICE_UNAVAILABLE"] >= 2
    code, out, _ = ask(listen)
    assert code == 1
    assert out.splitlines()[0] == (
        f"forestreet-sidecar at {listen}: NOT READY: the token on disk has expired"
    )
    token_line = next(line for line in out.splitlines() if line.startswith("  token "))
    assert token_line.startswith("  token         EXPIRED, expires 20")
    assert " ago)" in token_line
    assert "SERVICE_UNAVAILABLE: " in out
    wait_until(lambda: sidecar.count("refresh_failed") >= 2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_status_with_nothing_listening_exits_3_with_one_line() -> None:
    listen = f"127.0.0.1:{free_port()}"
    code, out, err = ask(listen)
    assert code == 3
    assert out == ""
    assert err.splitlines() == [
        f"forestreet-sidecar: status: cannot reach the sidecar at {listen}: "
        "connection refused (is the sidecar running?)"
    ]
    code, out, _ = ask(listen, "--json")
    assert code == 3
    assert json.loads(out) == {
        "address": listen,
        "reachable": False,
        "error": "connection refused (is the sidecar running?)",
    }


def test_status_without_a_port_exits_3() -> None:
    code, _, err = ask("")
    assert code == 3
    assert "server.listen is empty" in err


def test_status_asks_an_any_address_on_the_loopback() -> None:
    assert status.ask_address(("0.0.0.0", 9877)) == ("127.0.0.1", 9877)
    assert status.ask_address(("::", 9877)) == ("::1", 9877)
    assert status.ask_address(("10.1.2.3", 1)) == ("10.1.2.3", 1)
    assert status.shown(("::1", 9877)) == "[::1]:9877"


def test_status_durations_read_at_a_glance() -> None:
    assert [status.duration(s) for s in (5, 65, 3725, 90000, -30)] == [
        "5s",
        "1m 05s",
        "1h 02m",
        "1d 01h",
        "30s",
    ]


def test_status_names_the_reason_of_the_last_failure_not_only_the_counts(
    tmp_path: Path, fake_api: FakeApi, sidecars: Callable[..., Sidecar]
) -> None:
    """Three SERVICE_UNAVAILABLE, then a run of http_502: the counts favour the first, the
    last reason is the second."""
    fake_api.script(
        Answer(lifetime=1.0),
        *[Answer(error_code="SERVICE_UNAVAILABLE")] * 3,
        *[Answer(status=502, body=b"<html>bad gateway</html>")] * 500,
    )
    sidecar, listen = start_run(
        tmp_path,
        fake_api.url,
        sidecars,
        refresh={"min_interval_seconds": 0},
        backoff={"initial_seconds": 0.05, "max_seconds": 0.1},
    )
    sidecar.wait_event("token_refreshed")
    deadline = time.monotonic() + 15
    while True:
        code, out, err = ask(listen, "--json")
        report = json.loads(out)
        if report.get("failures_since_start", {}).get("http_502", 0) >= 2:
            break
        assert time.monotonic() < deadline, (code, out, err)
        time.sleep(0.2)
    assert report["failures_since_start"]["SERVICE_UNAVAILABLE"] == 3
    assert report["last_failure"] == "http_502"
    code, out, _ = ask(listen)
    failures = next(line for line in out.splitlines() if line.startswith("  failures "))
    assert failures.endswith(" in a row, the last http_502"), failures
    fake_api.clear_script()  # the default answer: a token
    wait_until(lambda: ask(listen)[0] == 0, timeout=10)
    code, out, _ = ask(listen, "--json")
    assert json.loads(out)["last_failure"] is None, "no failure in a row, none named"
