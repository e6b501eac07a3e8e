"""sd_notify client against real AF_UNIX datagram sockets."""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.notify import Notifier, socket_address, watchdog_interval

PID = 4242


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd, and its NOTIFY_SOCKET value."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(2)
    try:
        sock.bind(path)
        yield sock, path
    finally:
        sock.close()


def _assert_no_more(sock: socket.socket) -> None:
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda n: n.ready(), b"READY=1"),
        (lambda n: n.ready("token expires 12:00Z"), b"READY=1\nSTATUS=token expires 12:00Z"),
        (lambda n: n.status("refresh failed: timeout"), b"STATUS=refresh failed: timeout"),
        (lambda n: n.watchdog(), b"WATCHDOG=1"),
        (lambda n: n.stopping(), b"STOPPING=1"),
        (lambda n: n.stopping("shutting down"), b"STOPPING=1\nSTATUS=shutting down"),
        (lambda n: n.send("A=1", "B=2"), b"A=1\nB=2"),
    ],
    ids=["ready", "ready+status", "status", "watchdog", "stopping", "stopping+status", "send"],
)
def test_each_notification_arrives_as_exactly_one_datagram(
    receiver: tuple[socket.socket, str],
    call: Callable[[Notifier], bool],
    expected: bytes,
) -> None:
    sock, path = receiver
    with Notifier.from_environ({"NOTIFY_SOCKET": path}, PID) as notifier:
        assert call(notifier) is True
    assert sock.recv(4096) == expected
    _assert_no_more(sock)


def test_status_text_is_flattened_to_one_line(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    with Notifier(path) as notifier:
        assert notifier.status("line one\nline two\r\nthree\rfour\0five")
        assert notifier.ready("a\nb")
    assert sock.recv(4096) == b"STATUS=line one line two three four five"
    assert sock.recv(4096) == b"READY=1\nSTATUS=a b"


def test_sequence_of_notifications_arrives_in_order_over_one_socket(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = receiver
    created: list[socket.socket] = []
    real_socket = socket.socket

    def counting_socket(*args: int) -> socket.socket:
        s = real_socket(*args)
        created.append(s)
        return s

    monkeypatch.setattr(socket, "socket", counting_socket)
    with Notifier(path) as notifier:
        assert notifier.ready("up")
        assert notifier.watchdog()
        assert notifier.status("refreshed")
        assert notifier.stopping()
    assert [sock.recv(4096) for _ in range(4)] == [
        b"READY=1\nSTATUS=up",
        b"WATCHDOG=1",
        b"STATUS=refreshed",
        b"STOPPING=1",
    ]
    assert len(created) == 1
    assert created[0].fileno() == -1, "close() must close the socket"


def test_abstract_socket_address_is_reached() -> None:
    name = f"forestreet-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.bind(b"\0" + name.encode())
        with Notifier.from_environ({"NOTIFY_SOCKET": f"@{name}"}, PID) as notifier:
            assert notifier.enabled
            assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"


def test_unset_notify_socket_is_a_no_op_that_creates_no_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_socket(*args: object) -> socket.socket:
        raise AssertionError("a disabled notifier must not create a socket")

    monkeypatch.setattr(socket, "socket", no_socket)
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "30000000"}, PID)
    assert not notifier.enabled
    assert notifier.watchdog_seconds is None
    assert notifier.send("A=1") is False
    assert notifier.ready("x") is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping("x") is False
    notifier.close()


@pytest.mark.parametrize("value", ["", "relative/notify.sock", "vsock:2:1234"])
def test_empty_or_unusable_notify_socket_gives_a_disabled_notifier(value: str) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": value}, PID)
    assert not notifier.enabled
    assert notifier.ready() is False


def test_missing_socket_path_makes_send_return_false_without_raising(tmp_path: Path) -> None:
    with Notifier(str(tmp_path / "absent.sock")) as notifier:
        assert notifier.ready() is False
        assert notifier.watchdog() is False


def test_send_recovers_once_the_socket_appears(tmp_path: Path) -> None:
    path = str(tmp_path / "late.sock")
    with Notifier(path) as notifier:
        assert notifier.watchdog() is False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            sock.bind(path)
            assert notifier.watchdog() is True
            assert sock.recv(4096) == b"WATCHDOG=1"


def test_send_after_close_returns_false_and_close_is_idempotent(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    notifier = Notifier(path)
    assert notifier.watchdog()
    notifier.close()
    notifier.close()
    assert notifier.watchdog() is False
    assert sock.recv(4096) == b"WATCHDOG=1"
    _assert_no_more(sock)


def test_send_without_lines_sends_nothing(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    with Notifier(path) as notifier:
        assert notifier.send() is False
    _assert_no_more(sock)


def test_concurrent_sends_share_one_socket_and_all_arrive(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    with Notifier(path) as notifier:
        threads = [threading.Thread(target=notifier.watchdog) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [sock.recv(4096) for _ in range(8)] == [b"WATCHDOG=1"] * 8
    _assert_no_more(sock)


def test_from_environ_takes_the_watchdog_interval_for_this_pid(
    receiver: tuple[socket.socket, str],
) -> None:
    _, path = receiver
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_environ(env, os.getpid())
    assert notifier.enabled
    assert notifier.watchdog_seconds == 15.0
    assert Notifier.from_environ(env, os.getpid() + 1).watchdog_seconds is None


def test_explicit_watchdog_is_dropped_when_disabled() -> None:
    assert Notifier(None, watchdog=5.0).watchdog_seconds is None
    assert Notifier("/run/x", watchdog=5.0).watchdog_seconds == 5.0


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1"}, 0.0000005),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(PID)}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(PID + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": ""}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-30000000"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "garbage"}, None),
        ({"WATCHDOG_USEC": "1.5e6"}, None),
        ({"WATCHDOG_USEC": "٣٠"}, None),
        ({"WATCHDOG_PID": str(PID)}, None),
    ],
    ids=[
        "unset",
        "set",
        "one-microsecond",
        "pid-matches",
        "pid-other",
        "pid-garbage",
        "pid-empty",
        "zero",
        "negative",
        "empty",
        "garbage",
        "float",
        "non-ascii-digits",
        "pid-without-usec",
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_only_for_our_pid(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(environ, PID) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@foo", b"\0foo"),
        ("@/org/freedesktop/systemd1/notify/123", b"\0/org/freedesktop/systemd1/notify/123"),
    ],
)
def test_socket_address_maps_paths_and_abstract_names(value: str, expected: str | bytes) -> None:
    assert socket_address(value) == expected


@pytest.mark.parametrize("value", ["", "run/notify", "vsock:2:1234"])
def test_socket_address_rejects_empty_and_relative_values(value: str) -> None:
    with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
        socket_address(value)
