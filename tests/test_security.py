"""Security under the real command: file modes whatever the umask, no secret in any output,
a warning for a world-readable key, and no listening socket but `server.listen`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.fake_api import Answer, FakeApi
from tests.conftest import API_KEY, Sidecar, base_env, get, json_lines, run_command, write_config
from tests.test_disk import start_with
from tests.test_faults import Start, start_run

OTHERS = stat.S_IRWXO


@pytest.fixture
def launched() -> Iterator[list[Sidecar]]:
    """Processes a test started with start_with; each is killed at the end."""
    started: list[Sidecar] = []
    yield started
    for sidecar in started:
        sidecar.stop()


class ModeWatcher:
    """Polls a directory listing and stats every entry, temporary files included."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.modes: dict[str, set[int]] = {}
        self.temps_seen = 0
        self.polls = 0
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.polls += 1
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(self.directory):
                    try:
                        mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
                    except FileNotFoundError:
                        continue  # renamed away between listing and stat
                    kind = "temp" if ".tmp-" in entry.name else entry.name
                    self.temps_seen += kind == "temp"
                    self.modes.setdefault(kind, set()).add(mode)

    @contextlib.contextmanager
    def running(self) -> Iterator[ModeWatcher]:
        thread = threading.Thread(target=self._poll, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(5)


@pytest.mark.parametrize(
    ("umask", "mode", "expected"),
    [(0o000, None, 0o640), (0o077, "0640", 0o640), (0o000, "0600", 0o600)],
    ids=["umask000-default", "umask077-0640", "umask000-0600"],
)
def test_token_session_and_temp_files_are_never_readable_by_others_whatever_the_umask(
    tmp_path: Path, launched: list[Sidecar], umask: int, mode: str | None, expected: int
) -> None:
    out = tmp_path / "out"
    token: dict[str, object] = {"session_path": str(out / "session.json")}
    if mode:
        token["mode"] = mode
    with FakeApi(lifetime=0.03) as api:
        config = write_config(
            tmp_path, api.url, refresh={"min_interval_seconds": 0.01}, token=token
        )
        out.mkdir()
        with ModeWatcher(out).running() as watcher:
            sidecar = start_with(["--config", str(config), "run"], base_env(), umask=umask)
            launched.append(sidecar)
            deadline = time.monotonic() + 10
            while sidecar.count("token_refreshed") < 40:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            sidecar.signal(signal.SIGTERM)
            assert sidecar.wait(5) == 0
    print(f"umask {umask:03o}: {watcher.polls} polls, {watcher.temps_seen} temp files seen")
    assert stat.S_IMODE((out / "token").stat().st_mode) == expected
    assert stat.S_IMODE((out / "session.json").stat().st_mode) == expected
    assert watcher.modes["token"] == {expected}
    assert watcher.modes["session.json"] == {expected}
    # A temp file is created 0600 and set to the final mode before any byte is written.
    assert watcher.modes.get("temp", set()) <= {0o600, expected}
    assert all(not m & OTHERS for modes in watcher.modes.values() for m in modes)


def test_a_world_readable_key_file_gets_a_config_warning(tmp_path: Path, fake_api: FakeApi) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY)
    events = {}
    for mode in (0o600, 0o644):
        key_file.chmod(mode)
        config = write_config(tmp_path, fake_api.url, api={"key_file": str(key_file)})
        result = run_command(["--config", str(config), "once"])
        assert result.returncode == 0, result.stderr
        events[mode] = [e for e in json_lines(result.stdout) if e["event"] == "config_warning"]
    assert events[0o600] == []
    assert len(events[0o644]) == 1
    warning = events[0o644][0]
    assert warning["level"] == "warning"
    assert str(key_file) in warning["message"]
    assert "readable by every user" in warning["message"]


def test_check_config_never_prints_a_key_from_the_environment() -> None:
    result = run_command(["--log-level", "debug", "check-config"], base_env())
    assert result.returncode == 0, result.stderr
    assert API_KEY not in result.stdout + result.stderr
    assert "# API key: from environment variable FORESTREET_API_KEY (sha256:" in result.stdout


def _fault_script(elsewhere: str) -> list[Answer]:
    """Every kind of failure, several carrying a valid-looking token that must not leak."""
    big = b'{"accessToken":"a.b","expiresIn":60,"pad":"' + b"x" * 100_000 + b'"}'
    return [
        Answer(error_code="INVALID_CREDENTIALS"),
        Answer(error_code="LIMIT_EXCEEDED", status=503, retry_after="0"),
        Answer(status=302, location=elsewhere),
        Answer(extra_fields={"expiresIn": -1}),  # a real token in an invalid answer
        Answer(extra_fields={"expiresIn": "60"}),
        Answer(omit_fields=("expiresIn",)),
        Answer(extra_fields={"refreshToken": "not a token"}),
        Answer(reset=True),
        Answer(body=big),
        Answer(body=b"<html>" + API_KEY.encode() + b"</html>", content_type="text/html"),
        Answer(error_code="INVALID_INPUT", status=400),
        Answer(trickle=0.05),
        Answer(delay=0.5),
        Answer(status=500, body=b""),
    ]


def test_no_key_or_token_in_any_output_or_scrape_over_a_fault_heavy_run(
    tmp_path: Path, sidecars: Start
) -> None:
    with FakeApi(lifetime=0.3) as api, FakeApi() as other:
        session = tmp_path / "out" / "session.json"
        config = write_config(
            tmp_path,
            api.url,
            api={"timeout_seconds": 0.2},
            refresh={"min_interval_seconds": 0.05},
            token={"session_path": str(session), "include_refresh_token": True},
            backoff={"initial_seconds": 0.01, "max_seconds": 0.05},
            server={"listen": "127.0.0.1:0"},
            log={"level": "debug"},
        )
        sidecar, url = start_run(sidecars, config)
        scrapes = []
        script = _fault_script(other.url + "/v2/auth/session")
        for round_ in range(1, 4):
            api.script(*script)
            sidecar.signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while sidecar.count("refresh_failed") < len(script) * round_:
                assert time.monotonic() < deadline
                scrapes.append(get(url + "/metrics").text)
                scrapes.append(get(url + "/readyz").text + get(url + "/healthz").text)
                time.sleep(0.05)
            sidecar.wait_event("token_refreshed", timeout=10)
        scrapes.append(get(url + "/metrics").text)
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait(5) == 0
        secrets = {API_KEY, *api.issued, *api.issued_refresh}
        assert other.requests == []
    output = "".join(sidecar.raw) + "".join(sidecar.stderr) + "".join(scrapes)
    assert len(secrets) > 20
    assert sidecar.count("refresh_failed") >= 42
    leaked = sorted(s[:12] + "..." for s in secrets if s in output)
    print(f"scanned {len(output)} characters for {len(secrets)} secrets: {len(leaked)} found")
    assert leaked == []


def _listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every LISTEN TCP socket the process holds, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                found.append((_address(local), int(local.rsplit(":", 1)[1], 16)))
    for table in ("udp", "udp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            assert line.split()[9] not in inodes, f"a UDP socket: {line}"
    return found


def _address(local: str) -> str:
    hex_address = local.rsplit(":", 1)[0]
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ".".join(str(b) for b in reversed(raw))
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]  # four host-order 32-bit words
    import ipaddress

    return str(ipaddress.IPv6Address(b"".join(words)))


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:0", ""])
def test_nothing_listens_but_server_listen(
    tmp_path: Path, fake_api: FakeApi, sidecars: Start, listen: str
) -> None:
    config = write_config(tmp_path, fake_api.url, server={"listen": listen})
    sidecar = sidecars(["--config", str(config), "run"], base_env())
    started = sidecar.wait_event("started", timeout=15)
    if listen:
        url = f"http://{started['listen']}"
        assert get(url + "/healthz").status_code == 200
    else:
        assert "listen" not in started  # a field that does not apply is left out
        time.sleep(0.3)  # let the loop start whatever it starts
    found = _listening(sidecar.process.pid)
    if not listen:
        assert found == []
    else:
        host = listen.rsplit(":", 1)[0].strip("[]")
        port = int(started["listen"].rsplit(":", 1)[1])
        assert found == [(host, port)]
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(5) == 0
