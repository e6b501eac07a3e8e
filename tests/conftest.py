"""Shared fixtures: a real fake API on 127.0.0.1, config files, and the real command."""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
import yaml

from sidecar.fake_api import FakeApi

API_KEY = "test-key-0123456789abcdef"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    with FakeApi(lifetime=3600.0, seed=7) as api:
        yield api


@pytest.fixture
def tls_api(tmp_path: Path) -> Iterator[tuple[FakeApi, Path]]:
    """The fake API over HTTPS with a certificate from a local CA, and that CA's bundle."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with FakeApi(ssl_context=server_context) as api:
        yield api, bundle


def write_config(directory: Path, base_url: str, **sections: dict[str, Any]) -> Path:
    """A config file for a test: our fake API, a token under ``directory``, no server."""
    document: dict[str, dict[str, Any]] = {
        "api": {"base_url": base_url, "timeout_seconds": 2},
        "token": {"path": str(directory / "out" / "token")},
        "server": {"listen": ""},
        "backoff": {"initial_seconds": 0.05, "max_seconds": 0.5},
    }
    for section, values in sections.items():
        document.setdefault(section, {}).update(values)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def base_env(**extra: str) -> dict[str, str]:
    """A clean environment: none of the developer's FORESTREET_* variables leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORESTREET")}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("CREDENTIALS_DIRECTORY", None)
    env["FORESTREET_API_KEY"] = API_KEY
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def secret_forms(secret: str) -> set[str]:
    """Every encoding in which a secret could leak into output: clear, repr, JSON, URL, base64."""
    raw = secret.encode("utf-8", "surrogateescape")
    forms = {
        secret,
        repr(secret)[1:-1],
        json.dumps(secret)[1:-1],
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret, safe=""),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }
    return {form for form in forms if form}


def assert_clean_output(text: str, secrets: list[str]) -> None:
    """What the command printed holds no traceback and no secret in any encoding."""
    assert "Traceback (most recent call last)" not in text, text[-4000:]
    for secret in secrets:
        for form in secret_forms(secret):
            assert form not in text, f"a secret leaked in the form {form!r}"


def env_secrets(env: dict[str, str]) -> list[str]:
    """The API key the command was given, when it is long enough to be told from other text."""
    key = env.get("FORESTREET_API_KEY", "").strip()
    return [key] if len(key) >= 8 else []


@dataclass
class Sidecar:
    """The real command in a subprocess, with its stdout parsed as JSON log lines."""

    process: subprocess.Popen[str]
    secrets: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    _lines: queue.Queue[str] = field(default_factory=queue.Queue)
    _seen: dict[str, int] = field(default_factory=dict)

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)

    def _pump_err(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    def _drain(self, timeout: float) -> None:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return
        self.raw.append(line)
        self.events.append(json.loads(line))

    def wait_event(
        self, name: str, timeout: float = 10.0, where: Callable[[dict[str, Any]], bool] = bool
    ) -> dict[str, Any]:
        """The next event called ``name`` after the last one this method returned."""
        deadline = time.monotonic() + timeout
        seen = self._seen.get(name, 0)
        while True:
            for index in range(seen, len(self.events)):
                event = self.events[index]
                if event["event"] == name and where(event):
                    self._seen[name] = index + 1
                    return event
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                names = [e["event"] for e in self.events]
                raise AssertionError(f"no {name!r} event within {timeout}s; saw {names}")
            self._drain(min(left, 0.2))

    def count(self, name: str) -> int:
        while not self._lines.empty():
            self._drain(0)
        return sum(1 for e in self.events if e["event"] == name)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        code = self.process.wait(timeout)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and (self.process.stdout and not self._lines.empty()):
            self._drain(0.05)
        for thread in self._threads:
            thread.join(2)
        while not self._lines.empty():
            self._drain(0)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        for thread in self._threads:
            thread.join(2)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        while not self._lines.empty():
            self.raw.append(self._lines.get())
        self.assert_clean()

    def assert_clean(self) -> None:
        """No traceback and no secret in anything the process printed (checked at every stop)."""
        assert_clean_output("".join(self.raw) + "".join(self.stderr), self.secrets)

    _threads: list[threading.Thread] = field(default_factory=list)


def start_sidecar(
    args: list[str], env: dict[str, str], cwd: Path | None = None, **popen: Any
) -> Sidecar:
    """The command in a subprocess; ``popen`` adds Popen options (preexec_fn, umask)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        **popen,
    )
    sidecar = Sidecar(process, secrets=env_secrets(env))
    for target in (sidecar._pump, sidecar._pump_err):
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        sidecar._threads.append(thread)
    return sidecar


@pytest.fixture
def sidecars() -> Iterator[Callable[..., Sidecar]]:
    """Start the real command; every process started is killed at the end of the test."""
    started: list[Sidecar] = []

    def start(
        args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Sidecar:
        sidecar = start_sidecar(args, env or base_env(), cwd)
        started.append(sidecar)
        return sidecar

    yield start
    unclean: list[AssertionError] = []
    for sidecar in started:  # every process is stopped before any finding is raised
        try:
            sidecar.stop()
        except AssertionError as exc:
            unclean.append(exc)
    if unclean:
        raise unclean[0]


def run_command(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The command to its end; what it printed is checked for tracebacks and secrets."""
    env = env or base_env()
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert_clean_output(done.stdout + done.stderr, env_secrets(env))
    return done


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def get(url: str, timeout: float = 5) -> requests.Response:
    with requests.Session() as session:
        return session.get(url, timeout=timeout)


def wait_until(predicate: Callable[[], bool], timeout: float = 10, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
