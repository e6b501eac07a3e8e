"""What a notify command prints: read off a pipe, bounded, and made fit for the log.

A command's output used to go straight to the sidecar's stderr, so a script that echoed the
token (``cat "$FORESTREET_TOKEN_PATH"``) put it in the log in clear. Now it is read here
and logged as lines of an event, which the log's redactor sees like every other field.
Every line is scrubbed whole before it is cut to length: a cut first could leave part of a
secret the redactor no longer recognises.
"""

from __future__ import annotations

import os
import select
import subprocess
import time

from sidecar.logs import REDACTOR

KEPT_BYTES = 64 << 10  # of the output, from the start; the rest is read and dropped
LOGGED_LINES = 20
LINE_CHARS = 500
AFTER_EXIT_SECONDS = 0.2  # output still arriving once the command has exited
POLL_SECONDS = 0.05  # how often a silent, running command is checked for its exit


class Output:
    """The first ``KEPT_BYTES`` of the output in complete lines, and how much was dropped."""

    def __init__(self) -> None:
        self._kept = bytearray()
        self._full = False
        self.dropped_bytes = 0

    def feed(self, chunk: bytes) -> None:
        if self._full:
            self.dropped_bytes += len(chunk)
            return
        room = KEPT_BYTES - len(self._kept)
        self._kept += chunk[:room]
        self.dropped_bytes += max(len(chunk) - room, 0)
        if len(self._kept) >= KEPT_BYTES:
            # Only whole lines are kept: half a line may hold half a secret.
            self._full = True
            cut = self._kept.rfind(b"\n") + 1
            self.dropped_bytes += len(self._kept) - cut
            del self._kept[cut:]

    def lines(self) -> tuple[list[str], int]:
        """Up to ``LOGGED_LINES`` scrubbed lines of at most ``LINE_CHARS``, and how many more."""
        text = self._kept.decode("utf-8", "replace")
        lines = [line.rstrip("\r") for line in text.splitlines()]
        lines = [line for line in lines if line.strip()]
        shown = [_cut(REDACTOR.scrub(line)) for line in lines[:LOGGED_LINES]]
        return shown, len(lines) - len(shown)


def _cut(line: str) -> str:
    return line if len(line) <= LINE_CHARS else line[: LINE_CHARS - 1] + "…"


def collect(
    child: subprocess.Popen[bytes],
    fd: int,
    timeout: float,
    output: Output,
) -> int | None:
    """Read ``fd`` into ``output`` until the command exits; its exit status, or None at the
    timeout (the caller kills it). A process the command left behind holding the pipe open
    is not waited for: ``AFTER_EXIT_SECONDS`` after the exit, reading stops."""
    deadline = time.monotonic() + timeout
    poller = select.poll()  # not select(): descriptors above 1024 are fine here
    poller.register(fd, select.POLLIN)
    open_pipe = True
    exited_at: float | None = None
    code: int | None = None
    while True:
        now = time.monotonic()
        if code is None:
            code = child.poll()
            if code is not None:
                exited_at = now
        if exited_at is not None and (not open_pipe or now - exited_at >= AFTER_EXIT_SECONDS):
            return code
        if code is None and now >= deadline:
            return None
        if not open_pipe:  # the pipe is closed; only the exit is left to wait for
            try:
                return child.wait(max(deadline - now, 0))
            except subprocess.TimeoutExpired:
                return None
        limit = deadline if exited_at is None else exited_at + AFTER_EXIT_SECONDS
        wait = min(max(limit - now, 0), POLL_SECONDS)
        if poller.poll(wait * 1000):
            chunk = os.read(fd, 65536)
            if chunk:
                output.feed(chunk)
            else:
                open_pipe = False
