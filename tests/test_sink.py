"""The file sink: atomic replacement, explicit mode and group, crash leftovers, errors."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import sink
from sidecar.errors import StartupError, WriteError


@pytest.fixture
def world_writable_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="fs-sink-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o777])
def test_mode_is_explicit_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "token"
    old = os.umask(umask)
    try:
        sink.write_atomic(target, b"a.b", mode=0o640)
    finally:
        os.umask(old)
    assert mode_of(target) == 0o640
    assert target.read_bytes() == b"a.b"


def test_replaces_the_file_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "token"
    sink.write_atomic(target, b"old.token", mode=0o600)
    inode = target.stat().st_ino
    sink.write_atomic(target, b"new.token.value", mode=0o600)
    assert target.read_bytes() == b"new.token.value"
    assert target.stat().st_ino != inode  # renamed over, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]


def test_creates_a_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "token"
    sink.write_atomic(target, b"x.y", mode=0o640)
    assert target.read_bytes() == b"x.y"


def test_group_is_applied(tmp_path: Path) -> None:
    """A group other than the one the file would get anyway, so the test can fail."""
    target = tmp_path / "token"
    if os.geteuid() == 0:
        gid = 4242  # root may give any group
    else:
        others = [g for g in os.getgroups() if g != os.getegid()]
        if not others:
            pytest.skip("this user belongs to no second group to give the file")
        gid = others[0]
    assert gid != os.getegid()
    sink.write_atomic(target, b"x.y", mode=0o640, gid=gid)
    assert target.stat().st_gid == gid


def test_a_failed_write_leaves_the_old_token_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "token"
    sink.write_atomic(target, b"old.token", mode=0o640)
    # A directory where the file should be makes the rename fail after the temp is written.
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "x").write_text("")
    with pytest.raises(WriteError, match="cannot write"):
        sink.write_atomic(blocked, b"new.token", mode=0o640)
    assert target.read_bytes() == b"old.token"
    assert not list(sink.stale_temps(blocked))


def test_a_group_we_may_not_use_is_a_write_error_and_changes_nothing(
    world_writable_dir: Path,
) -> None:
    """As an unprivileged user (root may chown to any group), the chown is refused."""
    target = world_writable_dir / "token"
    nobody = 65534
    foreign_gid = 4242 if os.geteuid() == 0 else max([*os.getgroups(), os.getgid()]) + 4242
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, try the write, report, and leave at once
        os.close(read_end)
        message = "no error"
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(nobody)
                os.setuid(nobody)
            sink.write_atomic(target, b"old.token", mode=0o640)
            sink.write_atomic(target, b"new.token", mode=0o640, gid=foreign_gid)
        except WriteError as exc:
            message = f"WriteError {exc}"
        except BaseException as exc:  # noqa: BLE001 - anything else is reported to the parent
            message = f"{type(exc).__name__} {exc}"
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        message = pipe.read()
    os.waitpid(pid, 0)
    assert message.startswith("WriteError cannot write"), message
    assert "Operation not permitted" in message
    assert target.read_bytes() == b"old.token"
    assert not list(sink.stale_temps(target))


def test_sweep_removes_only_our_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "token"
    leftovers = [tmp_path / ".token.tmp-abc123", tmp_path / ".token.tmp-zzz"]
    for path in leftovers:
        path.write_text("half")
    keep = [tmp_path / "token", tmp_path / ".other.tmp-1", tmp_path / "token.tmp-x"]
    for path in keep:
        path.write_text("keep")
    assert sorted(sink.sweep_stale(target)) == sorted(leftovers)
    assert sorted(tmp_path.iterdir()) == sorted(keep)


def test_check_writable_creates_the_directory_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new" / "token"
    sink.check_writable(target)
    assert target.parent.is_dir()
    assert list(target.parent.iterdir()) == []


def test_check_writable_names_the_path_and_the_os_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(StartupError) as caught:
        sink.check_writable(not_a_dir / "sub" / "token")
    assert str(not_a_dir) in str(caught.value)
    assert "Not a directory" in str(caught.value)


def test_read_text_refuses_what_cannot_be_a_token(tmp_path: Path) -> None:
    assert sink.read_text(tmp_path / "missing") is None
    big = tmp_path / "big"
    big.write_bytes(b"a" * 70_000)
    assert sink.read_text(big) is None
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe")
    assert sink.read_text(binary) is None


@pytest.fixture
def chown_forbidden(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """fchown fails as under systemd's ``SystemCallFilter=~@privileged``; the calls are kept."""
    calls: list[int] = []

    def refused(_fd: int, _uid: int, gid: int) -> None:
        calls.append(gid)
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refused)
    return calls


def test_a_group_the_file_gets_anyway_needs_no_chown(
    tmp_path: Path, chown_forbidden: list[int]
) -> None:
    """The systemd case: the group comes from Group=, and token.group names that same group."""
    target = tmp_path / "token"
    own_gid = tmp_path.stat().st_gid if tmp_path.stat().st_mode & stat.S_ISGID else os.getegid()
    sink.write_atomic(target, b"a.b", mode=0o640, gid=own_gid)
    assert target.read_bytes() == b"a.b"
    assert target.stat().st_gid == own_gid
    assert mode_of(target) == 0o640
    assert chown_forbidden == []


def test_another_group_still_asks_for_a_chown(tmp_path: Path, chown_forbidden: list[int]) -> None:
    target = tmp_path / "token"
    other = os.getegid() + 4242
    with pytest.raises(WriteError, match="Operation not permitted"):
        sink.write_atomic(target, b"a.b", mode=0o640, gid=other)
    assert chown_forbidden == [other]
    assert not target.exists()
    assert not list(sink.stale_temps(target))


def test_a_directory_named_like_a_temp_file_does_not_stop_the_sweep(tmp_path: Path) -> None:
    target = tmp_path / "token"
    squatter = tmp_path / ".token.tmp-dir"
    squatter.mkdir()
    (squatter / "inside").write_text("x")
    leftover = tmp_path / ".token.tmp-file"
    leftover.write_text("half")
    assert sink.sweep_stale(target) == [leftover]
    assert squatter.is_dir()
    sink.check_writable(target)
    sink.write_atomic(target, b"a.b", mode=0o640)
    assert target.read_bytes() == b"a.b"
