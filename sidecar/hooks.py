"""Telling the application a new token is there: ``notify.command``, ``http`` and ``signal``.

``Notifications`` is an observer of the attempt (stamina's hooks, in spirit): it runs in
the refresh thread, so it only records the newest token and wakes one worker thread.
The worker runs the notifications one at a time; tokens arriving while one runs cause
exactly one more run, for the newest of them. A failure is retried from 0.1 s, doubling, with
10 % jitter up to ``notify.retries`` times, then given up until the next token. Nothing
here writes a file, changes readiness or holds up a refresh.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from random import Random
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sidecar import __version__
from sidecar.api import Deadline
from sidecar.child_output import Output, collect
from sidecar.config import Config, HttpHook, SignalHook
from sidecar.config_fields import DIGITS
from sidecar.config_files import InputError, read_small_file
from sidecar.outcome import Outcome

if TYPE_CHECKING:
    from sidecar.metrics import Metrics

FIRST_RETRY_SECONDS = 0.1
RETRY_MULTIPLIER = 2.0
RETRY_JITTER = 0.1
ANSWER_READ_LIMIT = 64 << 10  # of a webhook's answer: read so the connection ends cleanly
PID_FILE_LIMIT = 64
CLOSE_SECONDS = 2.0


class Failed(Exception):  # noqa: N818 - the reason of one failed attempt, not a crash
    """One notification attempt failed; the message is the log's ``reason``."""


class Notifications:
    """The notify observer: enqueue on a new token, deliver in a worker thread."""

    def __init__(
        self,
        config: Config,
        log: Any,
        *,
        environ: Mapping[str, str],
        rng: Random,
        metrics: Metrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.notify = config.notify
        self.methods = config.notify.methods
        self.log = log
        self.environ = environ
        self.rng = rng
        self.metrics = metrics
        self.monotonic = monotonic
        if metrics is not None:
            metrics.notify_methods(self.methods)
        self._wake = threading.Condition()
        self._latest: Outcome | None = None
        self._pending = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self.runs = 0  # notification runs started: one per coalesced batch of tokens

    # -- the observer (the refresh thread): never blocks ------------------------------

    def __call__(self, outcome: Outcome) -> None:
        if not outcome.ok or outcome.kept or outcome.token is None or not self.methods:
            return
        with self._wake:
            if self._stopping:
                return
            self._latest = outcome
            self._pending = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="notify", daemon=True)
                self._thread.start()
            self._wake.notify()

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Stop the worker: a running command's process group is killed, and the worker
        is waited for at most ``timeout`` s (a webhook still connecting is left behind)."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
            child, thread = self._child, self._thread
        if child is not None:
            _kill_group(child)
        if thread is not None:
            thread.join(timeout)

    # -- the worker -------------------------------------------------------------------

    def _stopped(self) -> bool:
        return self._stopping

    def _work(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._pending or self._stopping)
                if self._stopping:
                    return
                outcome, self._pending = self._latest, False
                self.runs += 1
            assert outcome is not None  # noqa: S101 - pending always comes with an outcome
            try:
                self._deliver(outcome)
            except Exception as exc:  # noqa: BLE001 - the worker outlives a bug in one run
                self.log.error("notify_crashed", message=f"{type(exc).__name__}: {exc}")

    def _deliver(self, outcome: Outcome) -> None:
        """Every method until it succeeds, retried with backoff, or given up; a newer
        token ends the wait between retries (it starts a run of its own at once)."""
        waiting = list(self.methods)
        attempt = 0
        while waiting:
            attempt += 1
            failed: list[tuple[str, str]] = []
            for method in waiting:
                if self._stopped():
                    return
                reason = self._attempt(method, outcome, attempt)
                if self._stopped():  # a command killed by close() is no failure to report
                    return
                if reason is not None:
                    failed.append((method, reason))
            if not failed:
                return
            if attempt > self.notify.retries:
                for method, reason in failed:
                    self.log.error(
                        "notify_failed", method=method, reason=reason, attempt=attempt, gave_up=True
                    )
                return
            gap = FIRST_RETRY_SECONDS * RETRY_MULTIPLIER ** (attempt - 1)
            gap *= self.rng.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)
            for method, reason in failed:
                self.log.warning(
                    "notify_failed",
                    method=method,
                    reason=reason,
                    attempt=attempt,
                    retry_in=round(gap, 3),
                )
            waiting = [method for method, _ in failed]
            with self._wake:
                if self._wake.wait_for(lambda: self._pending or self._stopping, timeout=gap):
                    return

    def _attempt(self, method: str, outcome: Outcome, attempt: int) -> str | None:
        """One attempt of one method: None when it worked, else the reason it did not."""
        started = self.monotonic()
        reason: str | None = None
        try:
            if method == "command":
                self._command(outcome, attempt)
            elif method == "http":
                assert self.notify.http is not None  # noqa: S101 - configured
                self._http(self.notify.http, outcome)
            else:
                assert self.notify.signal is not None  # noqa: S101 - configured
                self._signal(self.notify.signal)
        except Failed as exc:
            reason = str(exc)
        duration = self.monotonic() - started
        if self.metrics is not None:
            self.metrics.notified(method, ok=reason is None, duration=duration)
        if reason is None:
            self.log.info(
                "notify_sent", method=method, duration=round(duration, 4), attempt=attempt
            )
        return reason

    # -- the methods --------------------------------------------------------------------

    def command_environment(self, outcome: Outcome) -> dict[str, str]:
        """PATH and where the token is, until when: never the key or a token."""
        token = self.config.token
        env = {
            "PATH": self.environ.get("PATH") or os.defpath,
            "FORESTREET_TOKEN_PATH": str(token.path),
        }
        if token.session_path is not None:
            env["FORESTREET_SESSION_PATH"] = str(token.session_path)
        if outcome.token is not None:
            env["FORESTREET_EXPIRES_AT"] = f"{outcome.token.expires_wall:.0f}"
        return env

    def _command(self, outcome: Outcome, attempt: int) -> None:
        timeout = self.notify.timeout_seconds
        # Its output is read and logged (redacted), never passed through: stdout carries our
        # JSON log lines only, and a script may well print the token.
        read_end, write_end = os.pipe()
        try:
            child = subprocess.Popen(
                list(self.notify.command),
                env=self.command_environment(outcome),
                stdin=subprocess.DEVNULL,
                stdout=write_end,
                stderr=write_end,
                cwd="/",
                close_fds=True,
                start_new_session=True,  # its own process group, killed whole at the timeout
            )
        except OSError as exc:
            os.close(read_end)
            raise Failed(f"cannot run {self.notify.command[0]}: {exc.strerror or exc}") from None
        finally:
            os.close(write_end)
        with self._wake:
            self._child = child
        output = Output()
        try:
            try:
                code = collect(child, read_end, timeout, output)
            except OSError as exc:
                _kill_group(child)
                raise Failed(f"cannot read its output: {exc.strerror or exc}") from None
            if code is None:
                _kill_group(child)
                raise Failed(f"no exit within {timeout:g}s; its process group was killed")
        finally:
            os.close(read_end)
            with self._wake:
                self._child = None
            self._log_output(output, attempt)
        if code < 0:
            raise Failed(f"killed by {_signal_name(-code)}")
        if code != 0:
            raise Failed(f"exit status {code}")

    def _log_output(self, output: Output, attempt: int) -> None:
        lines, more = output.lines()
        if lines:
            self.log.info(
                "notify_output",
                method="command",
                attempt=attempt,
                output=lines,
                more_lines=more or None,
                dropped_bytes=output.dropped_bytes or None,
            )

    def _http(self, hook: HttpHook, outcome: Outcome) -> None:
        timeout = self.notify.timeout_seconds
        deadline = self.monotonic() + timeout
        parts = urlsplit(hook.url)
        connection_class = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        connection = connection_class(parts.hostname or "", parts.port, timeout=timeout)
        body = None
        headers = {"User-Agent": f"forestreet-sidecar/{__version__}"}
        if hook.method == "POST":
            token = outcome.token
            body = json.dumps(
                {
                    "tokenPath": str(self.config.token.path),
                    "expiresAt": None if token is None else token.expires_wall,
                }
            ).encode()
            headers["Content-Type"] = "application/json"
        # A per-read timeout does not bound an answer trickled a byte at a time: the
        # exchange deadline the upstream fetch uses shuts the socket down at the deadline.
        late = Failed(f"no answer within {timeout:g}s")
        try:
            with Deadline(timeout) as exchange:
                connection.request(hook.method, parts.path or "/", body=body, headers=headers)
                exchange.watch(connection.sock)
                if connection.sock is not None:  # the answer within what is left of the timeout
                    connection.sock.settimeout(max(deadline - self.monotonic(), 0.001))
                answer = connection.getresponse()
                answer.read(ANSWER_READ_LIMIT)
                status = answer.status
                if not exchange.finish():  # read to its end only because the socket was cut
                    raise late
        except TimeoutError:
            raise late from None
        except http.client.HTTPException as exc:
            raise (
                late if exchange.expired else Failed(f"invalid answer: {type(exc).__name__}")
            ) from None
        except OSError as exc:
            if exchange.expired:
                raise late from None
            raise Failed(f"cannot reach {parts.netloc}: {exc.strerror or exc}") from None
        finally:
            connection.close()
        if 300 <= status < 400:
            raise Failed(f"HTTP {status}: redirects are not followed")
        if not 200 <= status < 300:
            raise Failed(f"HTTP {status}")

    def _signal(self, hook: SignalHook) -> None:
        try:
            text = read_small_file(hook.pid_file, PID_FILE_LIMIT).decode("ascii", "replace")
        except OSError as exc:
            raise Failed(f"cannot read {hook.pid_file}: {exc.strerror or exc}") from None
        except (InputError, ValueError) as exc:
            raise Failed(f"{hook.pid_file} {getattr(exc, 'problem', exc)}") from None
        number = text.strip()
        if not DIGITS.fullmatch(number) or not 0 < int(number) < 2**31:
            raise Failed(f"{hook.pid_file} holds no process id")
        pid = int(number)
        if pid == os.getpid():  # our SIGHUP means "refresh now": a loop, not a notification
            raise Failed(f"{hook.pid_file} names the sidecar itself (pid {pid})")
        try:
            os.kill(pid, signal.Signals[hook.name])
        except ProcessLookupError:
            raise Failed(f"no process {pid} (from {hook.pid_file})") from None
        except PermissionError:
            raise Failed(f"not allowed to signal process {pid} (another user?)") from None


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(CLOSE_SECONDS)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
