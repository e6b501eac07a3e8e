"""systemd ``sd_notify`` over ``$NOTIFY_SOCKET``, without libsystemd.

The protocol (sd_notify(3)): one AF_UNIX datagram per notification to the socket named by
``$NOTIFY_SOCKET``, holding newline-separated ``KEY=VALUE`` assignments. A value starting with
``@`` names a Linux abstract socket. When the variable is unset the service is not run by
systemd (or not as ``Type=notify``) and every call here is a no-op returning False.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.outcome import Outcome

__all__ = ["Notifier", "socket_address", "watchdog_interval"]

_DIGITS = re.compile(r"[0-9]+")
# Bounds a send when systemd's receive queue is full: a notification is never worth stalling
# the refresh loop or a shutdown that must finish within 5 s.
_SEND_TIMEOUT_SECONDS = 1.0


def socket_address(value: str) -> str | bytes:
    """Turn a ``$NOTIFY_SOCKET`` value into an address for ``socket.sendto``.

    ``@name`` is an abstract socket (a leading NUL byte); otherwise an absolute path.
    Anything else (empty, relative, ``vsock:``) raises ValueError, as libsystemd refuses it.
    """
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    raise ValueError(f"NOTIFY_SOCKET must be an absolute path or start with '@', got {value!r}")


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``, or None.

    None unless ``WATCHDOG_USEC`` is a positive integer and ``WATCHDOG_PID`` is unset or
    equal to ``pid`` (systemd sets both for the main process only; a child that inherited
    them must not ping on its parent's behalf).
    """
    usec = environ.get("WATCHDOG_USEC", "").strip()
    if not _DIGITS.fullmatch(usec) or int(usec) == 0:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid is not None:
        watchdog_pid = watchdog_pid.strip()
        if not _DIGITS.fullmatch(watchdog_pid) or int(watchdog_pid) != pid:
            return None
    # Half the timeout, as sd_watchdog_enabled(3) advises, so one late ping is not fatal.
    return int(usec) / 2_000_000


def _one_line(text: str) -> str:
    # A newline would start a new assignment and a NUL makes systemd drop the whole datagram.
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ").replace("\0", " ")


class Notifier:
    """sd_notify client; every method is a no-op when NOTIFY_SOCKET is unset.

    Safe to call from several threads. The socket is created on the first send and kept;
    after ``close()`` every send returns False (so a late watchdog tick cannot leak a socket).
    """

    def __init__(self, address: str | bytes | None, watchdog: float | None = None) -> None:
        self._address = address
        self._watchdog = watchdog if address is not None else None
        self._sock: socket.socket | None = None
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], pid: int) -> Notifier:
        """Build from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        An unset, empty or unusable ``NOTIFY_SOCKET`` gives a disabled notifier: nothing could
        be delivered to it, and notification must never stop the daemon from keeping a token.
        """
        try:
            address = socket_address(environ.get("NOTIFY_SOCKET", ""))
        except ValueError:
            return cls(None)
        return cls(address, watchdog_interval(environ, pid))

    @property
    def enabled(self) -> bool:
        """Whether a notification socket is configured."""
        return self._address is not None

    @property
    def watchdog_seconds(self) -> float | None:
        """Interval at which to call ``watchdog()``; None when systemd expects no pings."""
        return self._watchdog

    def send(self, *lines: str) -> bool:
        """Send ``lines`` as one datagram; True when it was handed to the kernel. Never raises."""
        if self._address is None or not lines:
            return False
        payload = "\n".join(lines).encode()
        with self._lock:
            if self._closed:
                return False
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    sock.settimeout(_SEND_TIMEOUT_SECONDS)
                    self._sock = sock
                self._sock.sendto(payload, self._address)
            except OSError:
                # systemd may be restarting or the socket gone; the next tick tries again.
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: startup is finished (the first token is on disk)."""
        return self._send_with_status("READY=1", status)

    def status(self, text: str) -> bool:
        """``STATUS=text``, shown by ``systemctl status``."""
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is alive; resets systemd's watchdog timer."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self._send_with_status("STOPPING=1", status)

    def close(self) -> None:
        """Close the socket; idempotent, and final."""
        with self._lock:
            self._closed = True
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Notifier(address={self._address!r}, watchdog={self._watchdog!r})"

    def _send_with_status(self, line: str, status: str | None) -> bool:
        if status is None:
            return self.send(line)
        return self.send(line, f"STATUS={_one_line(status)}")


class SystemdStatus:
    """The sd_notify observer of every attempt: ``READY=1`` with the first token, then ``STATUS=``.

    ``READY=1`` goes out with the first outcome that left a token on disk (written, or kept
    from an earlier run), never before; each later outcome updates ``STATUS=``.
    """

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self._ready = False

    def __call__(self, outcome: Outcome) -> None:
        from sidecar.outcome import iso

        token = outcome.token
        valid = (
            f"token valid until {iso(token.expires_wall)}"
            if token is not None and outcome.valid_for is not None
            else "no valid token"
        )
        if not outcome.ok:
            self.notifier.status(
                f"refresh failed ({outcome.reason}); retry in {outcome.delay:.0f}s; {valid}"
            )
            return
        text = f"{valid}; next refresh in {outcome.delay:.0f}s"
        if self._ready:
            self.notifier.status(text)
        else:
            self._ready = True
            self.notifier.ready(text)
