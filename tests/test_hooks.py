"""notify: a real command, a real local webhook and a real signalled process hear of each
new token, off the refresh loop, one at a time, coalescing, retried, bounded."""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from random import Random
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sidecar.config import Config, load
from sidecar.errors import ConfigError
from sidecar.fake_api import FakeApi
from sidecar.hooks import Notifications
from sidecar.metrics import Metrics
from sidecar.outcome import Outcome, TokenOnDisk
from tests.conftest import (
    API_KEY,
    Sidecar,
    base_env,
    run_command,
    secret_forms,
    wait_until,
    write_config,
)

PYTHON = sys.executable
# Records its argv and environment (one JSON line per run), then sleeps as told.
RECORDER = """
import json, os, sys, time
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({"argv": sys.argv, "env": dict(os.environ), "pid": os.getpid()}) + "\\n")
time.sleep(float(sys.argv[2]))
"""
# Writes its pid (and that of a child of its own) to a file, then hangs for an hour.
HANGER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
with open(sys.argv[1], "a") as out:
    out.write(f"{os.getpid()} {child.pid}\\n")
time.sleep(3600)
"""
# An application: writes its pid file, counts SIGHUPs in another file.
APPLICATION = """
import os, signal, sys, time
def hup(signum, frame):
    with open(sys.argv[2], "a") as out:
        out.write(f"{os.getpid()}\\n")
signal.signal(signal.SIGHUP, hup)
with open(sys.argv[1] + ".tmp", "w") as out:
    out.write(f"{os.getpid()}\\n")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
for _ in range(600):
    time.sleep(0.1)
"""


class Log:
    """A structlog stand-in that keeps every event."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def _at(self, level: str) -> Any:
        def emit(event: str, **fields: Any) -> None:
            self.events.append({"level": level, "event": event, **fields})

        return emit

    def __getattr__(self, level: str) -> Any:
        return self._at(level)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["event"] == name]


def config_for(tmp_path: Path, **notify: Any) -> Config:
    path = write_config(tmp_path, "https://api.example", notify=notify)
    return load(path, {"FORESTREET_API_KEY": API_KEY})


def new_token(expires_wall: float = 2_000_000_000.0) -> Outcome:
    token = TokenOnDisk("abc123", time.monotonic() + 60, expires_wall, time.time(), 60.0)
    return Outcome(
        ok=True, delay=48, duration=0.01, ended_wall=time.time(), failures=0, token=token
    )


@pytest.fixture
def hooks() -> Iterator[list[Notifications]]:
    made: list[Notifications] = []
    yield made
    for each in made:
        each.close()


def notifications(
    made: list[Notifications], config: Config, metrics: Metrics | None = None
) -> tuple[Notifications, Log]:
    log = Log()
    hook = Notifications(
        config, log, environ={"PATH": os.environ["PATH"]}, rng=Random(3), metrics=metrics
    )
    made.append(hook)
    return hook, log


def sample(metrics: Metrics, method: str, result: str) -> float | None:
    return metrics.registry.get_sample_value(
        "forestreet_sidecar_notify_total", {"method": method, "result": result}
    )


def gone(pid: int) -> bool:
    """No such process, or only its zombie (an orphan waits for pid 1 to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def kill_hook_groups(pids: Path) -> None:
    """Whatever hook the test leaves behind (its groups: the test started them)."""
    for line in lines(pids):
        leader = int(line.split()[0])
        if not gone(leader):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(leader, signal.SIGKILL)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# --- command -------------------------------------------------------------------------


def test_command_gets_its_argv_and_an_environment_without_the_key_or_a_token(
    tmp_path: Path, sidecars: Any
) -> None:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    record = tmp_path / "runs.jsonl"
    with FakeApi(lifetime=3600.0, seed=11) as api:
        config = write_config(
            tmp_path,
            api.url,
            token={"path": str(tmp_path / "out" / "token"), "session_path": str(tmp_path / "s")},
            notify={"command": [PYTHON, str(script), str(record), "0", "--quiet"]},
        )
        sidecar: Sidecar = sidecars(["--config", str(config), "run"], base_env())
        sidecar.wait_event("token_refreshed")
        sent = sidecar.wait_event("notify_sent")
        assert (sent["method"], sent["attempt"]) == ("command", 1)
        token = (tmp_path / "out" / "token").read_text()
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait() == 0
    runs = [json.loads(line) for line in lines(record)]
    assert len(runs) == 1
    assert runs[0]["argv"] == [str(script), str(record), "0", "--quiet"]
    env = runs[0]["env"]
    # Python adds LC_CTYPE when it coerces the C locale; nothing of ours is in it.
    assert set(env) - {"LC_CTYPE"} == {
        "PATH",
        "FORESTREET_TOKEN_PATH",
        "FORESTREET_SESSION_PATH",
        "FORESTREET_EXPIRES_AT",
    }
    assert env["FORESTREET_TOKEN_PATH"] == str(tmp_path / "out" / "token")
    assert env["FORESTREET_SESSION_PATH"] == str(tmp_path / "s")
    assert abs(int(env["FORESTREET_EXPIRES_AT"]) - (time.time() + 3600)) < 60
    text = record.read_text()
    for secret in (API_KEY, token, *api.issued):
        for form in secret_forms(secret):
            assert form not in text


# Prints the token it is pointed at in clear, in base64 and across the 500-character cut of
# a log line, then much more than is kept.
TALKER = """
import base64, os, sys
token = open(os.environ["FORESTREET_TOKEN_PATH"]).read()
print("reloading with", token)
print(base64.b64encode(token.encode()).decode(), file=sys.stderr)
print("x" * 490 + token + "y" * 1000)
for index in range(30):
    print("line", index)
sys.stdout.write("z" * 200_000)
"""


def test_what_a_command_prints_is_logged_redacted_and_bounded(
    tmp_path: Path, sidecars: Any
) -> None:
    script = tmp_path / "talker.py"
    script.write_text(TALKER)
    token_path = tmp_path / "out" / "token"
    with FakeApi(lifetime=3600.0, seed=12) as api:
        config = write_config(
            tmp_path,
            api.url,
            token={"path": str(token_path)},
            notify={"command": [PYTHON, str(script)]},
        )
        sidecar: Sidecar = sidecars(["--config", str(config), "run"], base_env())
        said = sidecar.wait_event("notify_output")
        assert sidecar.wait_event("notify_sent")["method"] == "command"
        token = token_path.read_text()
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait() == 0
    output = said["output"]
    assert (said["method"], said["attempt"]) == ("command", 1)
    # stdout is buffered in the script, stderr is not: the base64 line may come first.
    assert any(line.startswith("reloading with sha256:") for line in output)
    assert any(line.startswith("sha256:") for line in output)  # the base64 form
    assert len(output) == 20
    assert all(len(line) <= 500 for line in output)
    assert said["more_lines"] > 0
    assert said["dropped_bytes"] > 100_000
    printed = "".join(sidecar.raw) + "".join(sidecar.stderr)
    for form in secret_forms(token):
        assert form not in printed
    # Cut after scrubbing: no piece of the token is left at the end of the long line.
    (long_line,) = [line for line in output if line.startswith("xxx")]
    assert long_line.endswith("…")
    assert "sha256:" in long_line
    assert token[:8] not in long_line


def test_a_command_that_leaves_a_process_holding_its_output_is_not_waited_for(
    tmp_path: Path, hooks: list[Notifications]
) -> None:
    pid_file = tmp_path / "straggler.pid"
    command = ["/bin/sh", "-c", f"sleep 30 & echo $! > {pid_file}; echo reloaded"]
    hook, log = notifications(hooks, config_for(tmp_path, command=command, timeout_seconds=10))
    try:
        started = time.monotonic()
        hook(new_token())
        wait_until(lambda: bool(log.named("notify_sent")), timeout=5)
        assert time.monotonic() - started < 3  # not the 30 s of the straggler, nor the timeout
        assert log.named("notify_output")[0]["output"] == ["reloaded"]
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_twenty_tokens_while_one_run_is_under_way_cause_exactly_one_more(
    tmp_path: Path, hooks: list[Notifications]
) -> None:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    record = tmp_path / "runs.jsonl"
    config = config_for(tmp_path, command=[PYTHON, str(script), str(record), "0.5"])
    hook, log = notifications(hooks, config)
    hook(new_token(2_000_000_000))
    wait_until(lambda: len(lines(record)) == 1)
    for index in range(20):
        hook(new_token(2_000_000_001 + index))
    wait_until(lambda: len(log.named("notify_sent")) == 2, timeout=10)
    time.sleep(0.8)  # a third run would have started and recorded itself by now
    runs = [json.loads(line) for line in lines(record)]
    assert len(runs) == 2
    assert hook.runs == 2
    assert runs[1]["env"]["FORESTREET_EXPIRES_AT"] == "2000000020"  # the newest token


def test_a_kept_token_or_a_failure_notifies_nobody(
    tmp_path: Path, hooks: list[Notifications]
) -> None:
    record = tmp_path / "runs.jsonl"
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    hook, _ = notifications(
        hooks, config_for(tmp_path, command=[PYTHON, str(script), str(record), "0"])
    )
    token = new_token()
    hook(
        Outcome(
            ok=True, delay=1, duration=0, ended_wall=0, failures=0, token=token.token, kept=True
        )
    )
    hook(Outcome(ok=False, delay=1, duration=0, ended_wall=0, failures=1, token=token.token))
    time.sleep(0.3)
    assert hook.runs == 0
    assert not record.exists()


def test_once_notifies_nobody(tmp_path: Path, fake_api: FakeApi) -> None:
    marker = tmp_path / "notified"
    config = write_config(
        tmp_path, fake_api.url, notify={"command": ["/usr/bin/touch", str(marker)]}
    )
    done = run_command(["--config", str(config), "once"])
    assert done.returncode == 0, done.stderr
    time.sleep(0.3)
    assert not marker.exists()
    assert "notify_" not in done.stdout


# --- a hook that hangs ---------------------------------------------------------------


def test_a_hook_that_hangs_delays_no_refresh_and_its_process_group_is_killed_at_the_timeout(
    tmp_path: Path, sidecars: Any
) -> None:
    script = tmp_path / "hanger.py"
    script.write_text(HANGER)
    pids = tmp_path / "pids"
    try:
        with FakeApi(lifetime=1.0, seed=5) as api:
            config = write_config(
                tmp_path,
                api.url,
                refresh={"min_interval_seconds": 0.2},
                notify={
                    "command": [PYTHON, str(script), str(pids)],
                    "timeout_seconds": 2,
                    "retries": 0,
                },
            )
            sidecar: Sidecar = sidecars(["--config", str(config), "run"], base_env())
            sidecar.wait_event("token_refreshed")
            wait_until(lambda: len(lines(pids)) == 1)
            started = time.monotonic()
            leader, child = (int(p) for p in lines(pids)[0].split())
            failed = sidecar.wait_event("notify_failed", timeout=5)
            killed_after = time.monotonic() - started
            assert failed["method"] == "command" and failed["gave_up"] is True
            assert "no exit within 2s" in failed["reason"]
            for pid in (leader, child):  # the hook and its own child: the whole group
                assert gone(pid), pid
            time.sleep(1.5)
            sidecar.signal(signal.SIGTERM)
            assert sidecar.wait() == 0
        refreshed = [e for e in sidecar.events if e["event"] == "token_refreshed"]
        stamps = [datetime.fromisoformat(e["timestamp"]).timestamp() for e in refreshed]
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(stamps)]
        print(f"refreshes: {len(refreshed)}, gaps: {gaps}, hook killed after {killed_after:.2f}s")
        assert 1.5 <= killed_after <= 3.0
        assert len(refreshed) >= 5  # about 4 s of 1 s tokens, each refreshed at 70-80 % of it
        assert max(gaps) <= 1.0  # never later than the token's lifetime, hook or no hook
        assert all(e["event"] != "refresh_failed" for e in sidecar.events)
    finally:
        # The sidecar first (its close() kills the hook under way), then what is left.
        if "sidecar" in locals() and sidecar.process.poll() is None:
            sidecar.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                sidecar.process.wait(10)
        kill_hook_groups(pids)


# --- http ------------------------------------------------------------------------------


class Webhook:
    """A real HTTP server on 127.0.0.1: answers ``statuses`` in turn (then 200), or hangs."""

    def __init__(self, statuses: list[int], *, hang: bool = False, trickle: float = 0.0) -> None:
        self.statuses = list(statuses)
        self.hang = hang
        self.trickle = trickle  # seconds between the bytes of the answer's head
        self.arrivals: list[tuple[float, str, bytes]] = []
        self.release = threading.Event()
        webhook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                webhook.arrivals.append((time.monotonic(), self.path, body))
                if webhook.hang:
                    webhook.release.wait(10)
                    return
                status = webhook.statuses.pop(0) if webhook.statuses else 200
                if webhook.trickle:
                    head = f"HTTP/1.1 {status} OK\r\nContent-Length: 0\r\n\r\n".encode()
                    with contextlib.suppress(OSError):
                        for byte in head:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            if webhook.release.wait(webhook.trickle):
                                return
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/-/reload"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhooks() -> Iterator[list[Webhook]]:
    made: list[Webhook] = []
    yield made
    for each in made:
        each.close()


def test_a_webhook_answering_503_twice_is_retried_with_growing_gaps(
    tmp_path: Path, hooks: list[Notifications], webhooks: list[Webhook]
) -> None:
    server = Webhook([503, 503])
    webhooks.append(server)
    metrics = Metrics(CollectorRegistry(), "test")
    hook, log = notifications(hooks, config_for(tmp_path, http={"url": server.url}), metrics)
    assert sample(metrics, "http", "success") == 0.0
    assert sample(metrics, "command", "success") is None  # only configured methods
    hook(new_token())
    wait_until(lambda: len(log.named("notify_sent")) == 1, timeout=5)
    times = [arrival for arrival, _, _ in server.arrivals]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    print(f"gaps between the three requests: {[round(g, 3) for g in gaps]}")
    assert len(times) == 3
    assert 0.09 <= gaps[0] < 0.2
    assert 0.18 <= gaps[1] < 0.35
    assert gaps[1] > 1.5 * gaps[0]
    failed = log.named("notify_failed")
    assert [(e["attempt"], e["reason"]) for e in failed] == [(1, "HTTP 503"), (2, "HTTP 503")]
    assert all(e["level"] == "warning" and "retry_in" in e for e in failed)
    assert log.named("notify_sent")[0]["attempt"] == 3
    assert sample(metrics, "http", "failure") == 2.0
    assert sample(metrics, "http", "success") == 1.0
    body = json.loads(server.arrivals[0][2])
    assert body == {"tokenPath": str(tmp_path / "out" / "token"), "expiresAt": 2_000_000_000.0}


def test_a_webhook_trickling_its_answer_is_cut_at_the_timeout_too(
    tmp_path: Path, hooks: list[Notifications], webhooks: list[Webhook]
) -> None:
    """One byte every 0.1 s never trips a per-read timeout of 0.5 s; the deadline still holds."""
    server = Webhook([], trickle=0.1)  # a head of ~40 bytes: ~4 s
    webhooks.append(server)
    config = config_for(tmp_path, http={"url": server.url}, timeout_seconds=0.5, retries=0)
    hook, log = notifications(hooks, config)
    started = time.monotonic()
    hook(new_token())
    wait_until(lambda: len(log.named("notify_failed")) == 1, timeout=6)
    took = time.monotonic() - started
    print(f"trickling webhook given up after {took:.3f}s")
    assert 0.45 <= took < 1.5
    assert log.named("notify_failed")[0]["reason"] == "no answer within 0.5s"
    assert log.named("notify_sent") == []


def test_a_hanging_webhook_is_cut_at_the_timeout_and_given_up(
    tmp_path: Path, hooks: list[Notifications], webhooks: list[Webhook]
) -> None:
    server = Webhook([], hang=True)
    webhooks.append(server)
    config = config_for(tmp_path, http={"url": server.url}, timeout_seconds=0.5, retries=0)
    hook, log = notifications(hooks, config)
    started = time.monotonic()
    hook(new_token())
    wait_until(lambda: len(log.named("notify_failed")) == 1, timeout=5)
    took = time.monotonic() - started
    failed = log.named("notify_failed")[0]
    print(f"hanging webhook given up after {took:.3f}s")
    assert 0.45 <= took < 1.5
    assert failed["reason"] == "no answer within 0.5s"
    assert (failed["level"], failed["gave_up"], failed["attempt"]) == ("error", True, 1)


# --- signal ----------------------------------------------------------------------------


def start_application(tmp_path: Path, pid_file: Path, hups: Path) -> subprocess.Popen[bytes]:
    script = tmp_path / "app.py"
    script.write_text(APPLICATION)
    process = subprocess.Popen([PYTHON, str(script), str(pid_file), str(hups)])
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() == str(process.pid))
    return process


def test_the_signal_reaches_whoever_the_pid_file_names_now(
    tmp_path: Path, hooks: list[Notifications]
) -> None:
    pid_file, hups = tmp_path / "app.pid", tmp_path / "hups"
    config = config_for(tmp_path, signal={"name": "SIGHUP", "pid_file": str(pid_file)})
    hook, log = notifications(hooks, config)
    first = start_application(tmp_path, pid_file, hups)
    second: subprocess.Popen[bytes] | None = None
    try:
        hook(new_token())
        wait_until(lambda: lines(hups) == [str(first.pid)])
        # The application restarts between two refreshes: the old pid is gone, the
        # file still names it for a while, then the new process rewrites it.
        first.kill()
        first.wait(5)
        hook(new_token())
        time.sleep(0.35)
        second = start_application(tmp_path, pid_file, hups)
        wait_until(lambda: lines(hups) == [str(first.pid), str(second.pid)], timeout=10)
        failed = log.named("notify_failed")
        assert failed and all(f"no process {first.pid}" in e["reason"] for e in failed)
        assert log.named("notify_sent")[-1]["attempt"] == len(failed) + 1
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(5)


# --- check-config ----------------------------------------------------------------------


def test_check_config_rejects_a_shell_string_a_remote_webhook_and_an_unknown_signal(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path,
        "https://api.example",
        notify={
            "command": "/usr/local/bin/reload-app --quiet",
            "http": {"url": "http://10.1.2.3:8080/-/reload"},
            "signal": {"name": "SIGBOGUS", "pid_file": "/run/app/app.pid"},
        },
    )
    done = run_command(["--config", str(config), "check-config"])
    assert done.returncode == 78
    problems = done.stderr.splitlines()
    assert len(problems) == 3, problems
    assert problems[0].startswith("notify.command: must be a list of arguments, not a shell")
    assert problems[1].startswith("notify.http: url 'http://10.1.2.3:8080/-/reload' is not on")
    assert "allow_remote" in problems[1]
    assert problems[2].startswith("notify.signal: name must be a signal name")


@pytest.mark.parametrize(
    ("notify", "problem"),
    [
        ({"retries": -1}, "notify.retries: must be a whole number in [0, 20]"),
        ({"retries": 2.5}, "notify.retries: must be a whole number in [0, 20]"),
        ({"timeout_seconds": 1e8}, "notify.timeout_seconds: must be ≤ 10000000"),
        ({"http": {"url": "http://127.0.0.1/", "method": "PUT"}}, "notify.http: method must be"),
        ({"http": {"url": "http://127.0.0.1/", "urll": 1}}, "notify.http: has the unknown key"),
        ({"signal": {"name": "SIGKILL", "pid_file": "/p"}}, "notify.signal: name must be"),
        ({"signal": {"name": "SIGHUP"}}, "notify.signal: needs pid_file"),
        ({"command": ["/bin/true", 3]}, "notify.command: argument 1 must be a string"),
    ],
)
def test_bad_notify_values_are_one_line_each(
    tmp_path: Path, notify: dict[str, Any], problem: str
) -> None:
    path = write_config(tmp_path, "https://api.example", notify=notify)
    with pytest.raises(ConfigError) as caught:
        load(path, {"FORESTREET_API_KEY": API_KEY})
    lines_ = caught.value.problems
    assert len(lines_) == 1 and lines_[0].startswith(problem), lines_


def test_remote_webhooks_need_allow_remote_and_loopback_ones_do_not(tmp_path: Path) -> None:
    for url, allow in (
        ("http://127.0.0.7:80/", False),
        ("http://[::1]:8080/x", False),
        ("http://localhost/", False),
        ("https://app.internal/reload", True),
    ):
        config = config_for(tmp_path, http={"url": url, "allow_remote": allow})
        assert config.notify.http is not None and config.notify.http.url == url
        assert config.notify.methods == ("http",)


def test_lists_and_mappings_come_from_the_file_and_scalars_also_from_variables() -> None:
    env = {
        "FORESTREET_API_KEY": API_KEY,
        "FORESTREET_SIDECAR_NOTIFY_TIMEOUT_SECONDS": "5",
        "FORESTREET_SIDECAR_NOTIFY_RETRIES": "3",
    }
    config = load(None, env)
    assert (config.notify.timeout_seconds, config.notify.retries) == (5.0, 3)
    with pytest.raises(ConfigError) as caught:
        load(None, {**env, "FORESTREET_SIDECAR_NOTIFY_COMMAND": "/bin/true"})
    assert caught.value.problems == [
        "notify.command: set it in the configuration file: a variable cannot hold a list"
        " (from FORESTREET_SIDECAR_NOTIFY_COMMAND)"
    ]
