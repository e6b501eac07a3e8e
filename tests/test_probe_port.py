"""The probe port against a hostile client: caps, read timeouts, floods, and start-up order.

Every test starts the real `run` command and looks only from outside: sockets to its
port, the fake API's request log, the token file and the process's own log lines.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import resource
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sidecar import server
from sidecar.fake_api import Answer, FakeApi
from tests.conftest import Sidecar, base_env, get, start_sidecar, wait_until, write_config
from tests.test_redaction import assert_clean, secrets_of

Start = Callable[..., Sidecar]
CAP = 64
READ_TIMEOUT = 5.0
# A token every 0.5 s: a stall of the refresh loop shows at once.
STEADY = {
    "at_fraction": 0.5,
    "jitter_fraction": 0.0,
    "min_interval_seconds": 0.2,
}


@pytest.fixture
def launched() -> Iterator[list[Sidecar]]:
    """Processes started with start_sidecar (to pass preexec_fn); killed at the end."""
    started: list[Sidecar] = []
    yield started
    for sidecar in started:
        sidecar.stop()


def start_run(
    started: list[Sidecar], config: Path, preexec: Callable[[], None] | None = None
) -> tuple[Sidecar, int]:
    sidecar = start_sidecar(["--config", str(config), "run"], base_env(), preexec_fn=preexec)
    started.append(sidecar)
    listen = sidecar.wait_event("started", timeout=15)["listen"]
    return sidecar, int(listen.rsplit(":", 1)[1])


def stop_cleanly(sidecar: Sidecar, secrets: list[str]) -> None:
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(5) == 0
    assert_clean(sidecar, secrets)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(5)
    return sock


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True when the server closes (or resets) the connection within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def http_get(port: int, path: str) -> int:
    return get(f"http://127.0.0.1:{port}{path}").status_code


def answers(port: int, path: str) -> int:
    """The status, or 0 while the port still refuses (at its cap, a connection is closed)."""
    try:
        return http_get(port, path)
    except requests.ConnectionError:
        return 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def low_fd_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def test_connections_beyond_64_are_closed_at_once_not_queued(
    tmp_path: Path, fake_api: FakeApi, launched: list[Sidecar]
) -> None:
    config = write_config(tmp_path, fake_api.url, server={"listen": "127.0.0.1:0"})
    sidecar, port = start_run(launched, config)
    held = [connect(port) for _ in range(CAP)]
    try:
        time.sleep(0.3)  # let the server accept all of them
        # On a loaded host one of the 64 may still be in the backlog when the next
        # arrives, which then takes its slot: a second or third one must be refused.
        refused_after = None
        for _ in range(3):
            extra = connect(port)
            held.append(extra)
            started = time.monotonic()
            if closed_by_peer(extra, within=2.0):
                refused_after = time.monotonic() - started
                break
        assert refused_after is not None, "a 65th connection was queued, not refused"
        assert refused_after < 2.0
    finally:
        for sock in held:
            sock.close()
    # Once the idle ones are gone, the port serves again.
    wait_until(lambda: answers(port, "/healthz") == 200, timeout=5, interval=0.1)
    stop_cleanly(sidecar, secrets_of(fake_api))


def test_an_idle_connection_is_dropped_after_5s(
    tmp_path: Path, fake_api: FakeApi, launched: list[Sidecar]
) -> None:
    config = write_config(tmp_path, fake_api.url, server={"listen": "127.0.0.1:0"})
    sidecar, port = start_run(launched, config)
    with connect(port) as idle:
        started = time.monotonic()
        assert closed_by_peer(idle, within=READ_TIMEOUT + 3)
        assert READ_TIMEOUT - 0.5 <= time.monotonic() - started <= READ_TIMEOUT + 2
    stop_cleanly(sidecar, secrets_of(fake_api))


def test_a_trickled_request_head_is_cut_at_5s_whatever_its_pace(
    tmp_path: Path, fake_api: FakeApi, launched: list[Sidecar]
) -> None:
    """Slowloris: one byte every 0.5 s keeps each read short, but not the request."""
    config = write_config(tmp_path, fake_api.url, server={"listen": "127.0.0.1:0"})
    sidecar, port = start_run(launched, config)
    with connect(port) as slow:
        started = time.monotonic()
        cut = None
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40:
            try:
                slow.send(bytes([byte]))
            except OSError:
                cut = time.monotonic() - started
                break
            if closed_by_peer(slow, within=0.5):
                cut = time.monotonic() - started
                break
        assert cut is not None, "the server waited more than 30 s for a request head"
        assert READ_TIMEOUT - 0.5 <= cut <= READ_TIMEOUT + 2
    stop_cleanly(sidecar, secrets_of(fake_api))


def test_a_connection_flood_neither_stalls_nor_starves_the_refresh_loop(
    tmp_path: Path, launched: list[Sidecar]
) -> None:
    """2000 connections held against a process limited to 256 file descriptors.

    Tokens keep coming every 0.5 s, no attempt fails (in particular not for lack of
    descriptors), and the port answers again once the flood is gone.
    """
    with FakeApi(lifetime=1.0) as api:
        config = write_config(tmp_path, api.url, server={"listen": "127.0.0.1:0"}, refresh=STEADY)
        sidecar, port = start_run(launched, config, preexec=low_fd_limit(256))
        sidecar.wait_event("token_refreshed")
        before = len(api.requests)
        flood: list[socket.socket] = []
        try:
            opened = time.monotonic()
            for _ in range(2000):
                sock = socket.socket()
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", port))
                flood.append(sock)
            for sock in flood[::10]:  # some of them send a partial head too
                with contextlib.suppress(OSError):
                    sock.send(b"GET /metrics HTTP/1.1\r\n")
            time.sleep(max(0.0, 6.0 - (time.monotonic() - opened)))
            during = [r.received_at for r in api.requests[before:] if r.received_at >= opened]
        finally:
            for sock in flood:
                sock.close()
        assert sidecar.count("refresh_failed") == 0
        # Every 0.5 s for 6 s: at least 9 (slack for scheduling on a busy host).
        assert len(during) >= 9, during
        gaps = [b - a for a, b in zip([opened, *during], during, strict=False)]
        assert max(gaps) < 1.5, gaps
        wait_until(lambda: answers(port, "/healthz") == 200, timeout=10, interval=0.2)
        assert http_get(port, "/metrics") == 200
        stop_cleanly(sidecar, secrets_of(api))


def test_metrics_answer_200_the_instant_the_first_token_is_on_disk(tmp_path: Path) -> None:
    """Repeated over fresh processes: a scrape racing the start never sees a 503."""
    runs = 20
    statuses: list[int] = []
    with FakeApi(lifetime=3600.0) as api:
        for attempt in range(runs):
            directory = tmp_path / str(attempt)
            directory.mkdir()
            port = free_port()
            config = write_config(directory, api.url, server={"listen": f"127.0.0.1:{port}"})
            token = directory / "out" / "token"
            sidecar = start_sidecar(["--config", str(config), "run"], base_env())
            try:
                wait_until(token.exists, timeout=15, interval=0.001)
                statuses.append(http_get(port, "/metrics"))
                stop_cleanly(sidecar, secrets_of(api))
            finally:
                sidecar.stop()
    assert statuses == [200] * runs


def test_healthz_answers_while_the_first_attempt_hangs(
    tmp_path: Path, fake_api: FakeApi, launched: list[Sidecar]
) -> None:
    fake_api.script(Answer(delay=4.0))
    port = free_port()
    config = write_config(
        tmp_path,
        fake_api.url,
        server={"listen": f"127.0.0.1:{port}"},
        api={"timeout_seconds": 10},
    )
    sidecar = start_sidecar(["--config", str(config), "run"], base_env())
    launched.append(sidecar)
    wait_until(lambda: bool(fake_api.requests), timeout=15)
    started = time.monotonic()
    health = get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    assert health.status_code == 200
    assert time.monotonic() - started < 2
    ready = get(f"http://127.0.0.1:{port}/readyz", timeout=2)
    assert ready.status_code == 503
    # A scrape during the first attempt waits for its end instead of failing.
    metrics = get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert 'forestreet_sidecar_refreshes_total{reason="ok",result="success"} 1.0' in metrics.text
    stop_cleanly(sidecar, secrets_of(fake_api))


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"nonsense\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"GET /nothing-here HTTP/1.1\r\n\r\n", 404),
        (b"\xff\xfe\x00 /healthz HTTP/1.1\r\n\r\n", 400),
    ],
)
def test_malformed_requests_get_a_status_and_the_port_carries_on(
    tmp_path: Path, fake_api: FakeApi, launched: list[Sidecar], request_bytes: bytes, status: int
) -> None:
    config = write_config(tmp_path, fake_api.url, server={"listen": "127.0.0.1:0"})
    sidecar, port = start_run(launched, config)
    with connect(port) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(request_bytes)
        answer = _read_all(sock)
    assert answer.startswith(f"HTTP/1.0 {status} ".encode()), answer[:80]
    assert http_get(port, "/healthz") == 200
    stop_cleanly(sidecar, secrets_of(fake_api))


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


class _ShortOfDescriptors:
    """A listening socket whose first accepts fail with EMFILE, as under a flood."""

    def __init__(self, sock: socket.socket, failures: int) -> None:
        self._sock = sock
        self._failures = failures
        self.failed_at: list[float] = []

    def accept(self) -> tuple[socket.socket, Any]:
        if len(self.failed_at) < self._failures:
            self.failed_at.append(time.monotonic())
            raise OSError(errno.EMFILE, "Too many open files")
        return self._sock.accept()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_running_out_of_descriptors_pauses_accepting_instead_of_spinning_or_dying() -> None:
    listener = _ShortOfDescriptors(server.bind(("127.0.0.1", 0)), failures=5)
    probes = server.ProbeServer(
        listener,  # type: ignore[arg-type]  # duck-typed on purpose
        lambda: (True, {"status": "ok"}),
        lambda: (True, {"ready": True}),
    ).start()
    try:
        assert http_get(probes.port, "/healthz") == 200
        gaps = [b - a for a, b in itertools.pairwise(listener.failed_at)]
        assert len(listener.failed_at) == 5
        assert all(gap >= 0.05 for gap in gaps), gaps
    finally:
        probes.stop()
