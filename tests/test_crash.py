"""Crash consistency: SIGKILL at random moments never leaves a torn, empty or foreign token.

A reader thread reads the token (and session) file in a tight loop, as an application
would, while the real `run` command refreshes a 25 ms token every ~20 ms and is
SIGKILLed at random moments and restarted, over and over. Every read must be a whole
token the fake API issued; the file must never vanish once written; a clean start
afterwards must sweep every temporary file the kills left behind.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sidecar.fake_api import FakeApi
from tests.conftest import Sidecar, base_env, get, start_sidecar, wait_until, write_config

Start = Callable[..., Sidecar]
TOKEN = re.compile(rb"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+")

LIFETIME = 0.025  # a refresh every ~20 ms
MIN_CYCLES = 200  # tokens written across all process lives
MIN_KILLS = 60
MAX_LIVES = 150
BUDGET_SECONDS = 60.0
# A life is killed after this many tokens (counted, so a loaded host cannot starve the
# cycles), at a random moment within about one refresh period after the last.
REFRESHES_BEFORE_KILL = (1, 8)
KILL_AFTER = (0.0, 0.03)
EARLY_KILLS = 0.2  # this share of lives is killed during start-up instead (0-0.4 s)


@dataclass
class Reader:
    """Reads the token and session files as fast as it can and judges every read."""

    token: Path
    session: Path
    api: FakeApi
    reads: int = 0
    session_reads: int = 0
    distinct: set[bytes] = field(default_factory=set)
    bad: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _known: set[str] = field(default_factory=set)

    def _issued(self, value: str) -> bool:
        if value not in self._known:
            self._known = set(self.api.issued)  # recorded before it is sent: no race
        return value in self._known

    def _check_token(self) -> None:
        try:
            data = self.token.read_bytes()
        except FileNotFoundError:
            if self.distinct:
                self.bad.append("token file missing after a token was written")
            return
        self.reads += 1
        if not TOKEN.fullmatch(data):
            self.bad.append(f"torn or empty token read: {len(data)} bytes")
        elif not self._issued(data.decode()):
            self.bad.append("a token the API never issued")
        else:
            self.distinct.add(data)

    def _check_session(self) -> None:
        try:
            text = self.session.read_bytes()
        except FileNotFoundError:
            return
        self.session_reads += 1
        try:
            document = json.loads(text)
        except ValueError:
            self.bad.append(f"torn session file: {len(text)} bytes")
            return
        if not self._issued(str(document.get("accessToken"))):
            self.bad.append("session file with a token the API never issued")

    def run(self) -> None:
        while not self._stop.is_set():
            self._check_token()
            self._check_session()

    @contextlib.contextmanager
    def running(self) -> Iterator[Reader]:
        thread = threading.Thread(target=self.run, name="token-reader", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(5)


def temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_tears_the_token(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    out = tmp_path / "out"
    rng = random.Random(20240611)
    with FakeApi(lifetime=LIFETIME) as api:
        config = write_config(
            tmp_path,
            api.url,
            refresh={"min_interval_seconds": 0.01},
            token={"session_path": str(out / "session.json")},
        )
        env = base_env()
        reader = Reader(out / "token", out / "session.json", api)
        cycles = kills = temps_after_kill = swept = 0
        started = time.monotonic()
        with reader.running():
            while (
                (cycles < MIN_CYCLES or kills < MIN_KILLS)
                and kills < MAX_LIVES
                and time.monotonic() - started < BUDGET_SECONDS
            ):
                life = start_sidecar(["--config", str(config), "run"], env)
                try:
                    if rng.random() < EARLY_KILLS:
                        time.sleep(rng.uniform(0.0, 0.4))  # while sweeping or writing the first
                    else:
                        for _ in range(rng.randint(*REFRESHES_BEFORE_KILL)):
                            life.wait_event("token_refreshed", timeout=10)
                        time.sleep(rng.uniform(*KILL_AFTER))
                    life.signal(signal.SIGKILL)
                    life.wait(10)
                finally:
                    life.stop()
                kills += 1
                cycles += life.count("token_refreshed")
                swept += life.count("stale_temp_removed")
                temps_after_kill += len(temps(out))
                assert life.count("startup_failed") == 0

            # A clean start sweeps what the last kill left, then SIGTERM leaves nothing.
            final = start_sidecar(["--config", str(config), "run"], env)
            try:
                final.wait_event("token_refreshed", timeout=10)
                swept += final.count("stale_temp_removed")
                final.signal(signal.SIGTERM)
                assert final.wait(10) == 0
            finally:
                final.stop()
        elapsed = time.monotonic() - started

    figures = {
        "refresh_cycles": cycles,
        "kills": kills,
        "reads": reader.reads,
        "session_reads": reader.session_reads,
        "distinct_tokens_read": len(reader.distinct),
        "issued": len(api.issued),
        "temps_left_by_kills": temps_after_kill,
        "temps_swept_at_start": swept,
        "bad_reads": len(reader.bad),
        "seconds": round(elapsed, 1),
    }
    print("crash consistency:", json.dumps(figures))
    for name, number in figures.items():
        record_property(name, number)
    assert reader.bad == []
    assert cycles >= MIN_CYCLES, figures
    assert kills >= MIN_KILLS, figures
    assert reader.reads > 10 * cycles
    assert sorted(p.name for p in out.iterdir()) == ["session.json", "token"]
    assert (out / "token").read_text() in api.issued


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_a_signal_right_after_the_first_token_is_handled_not_fatal(
    tmp_path: Path, sidecars: Start, signum: int
) -> None:
    """From the first token on, SIGTERM exits 0, and a storm of SIGHUPs neither kills
    the daemon nor deadlocks it (a handler re-entering a lock): SIGTERM still stops it."""
    with FakeApi() as api:
        config = write_config(tmp_path, api.url, server={"listen": "127.0.0.1:0"})
        sidecar = sidecars(["--config", str(config), "run"], base_env())
        sidecar.wait_event("token_refreshed")
        if signum == signal.SIGTERM:
            sidecar.signal(signum)
            assert sidecar.wait(5) == 0
            return
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and sidecar.process.poll() is None:
            sidecar.signal(signum)
            time.sleep(0.005)
        assert sidecar.process.poll() is None, f"killed by {sidecar.process.returncode}"
        url = "http://" + sidecar.wait_event("started")["listen"]
        wait_until(lambda: get(url + "/healthz").status_code == 200)
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait(5) == 0
