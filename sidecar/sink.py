"""The only place that writes files: atomic replacement of the token and session files."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sidecar.errors import StartupError, WriteError


def temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def write_atomic(path: Path, data: bytes, *, mode: int, gid: int | None = None) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, whole.

    The temporary file gets its mode (and group) before any byte is written, so the
    secret is never readable by anyone else even for an instant; fsync of the file
    and of the directory makes the rename survive a power cut.
    """
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=temp_prefix(path), dir=directory)
    except OSError as exc:
        raise WriteError(f"cannot create a temporary file in {directory}: {_why(exc)}") from exc
    temp = Path(temp_name)
    try:
        try:
            _own(fd, mode, gid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        temp.replace(path)
        _fsync_directory(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise WriteError(f"cannot write {path}: {_why(exc)}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def _own(fd: int, mode: int, gid: int | None) -> None:
    """Give the new file its group and mode, calling only what would change something.

    A hardened unit forbids chown altogether (systemd's ``@privileged`` set holds the
    chown calls): there the group comes from ``Group=``, and a chown to the group the
    file was created with anyway must not fail the write.
    """
    created = os.fstat(fd)
    if gid is not None and created.st_gid != gid:
        os.fchown(fd, -1, gid)
    if stat.S_IMODE(created.st_mode) != mode:
        os.fchmod(fd, mode)


def write_json_atomic(
    path: Path, document: dict[str, object], *, mode: int, gid: int | None
) -> None:
    write_atomic(path, json.dumps(document, separators=(",", ":")).encode(), mode=mode, gid=gid)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems (tmpfs on old kernels, some FUSE) refuse fsync on a directory.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def stale_temps(path: Path) -> Iterator[Path]:
    """Temporary files of ``path`` left behind by a crash."""
    prefix = temp_prefix(path)
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    yield from (entry for entry in entries if entry.name.startswith(prefix))


def sweep_stale(path: Path) -> list[Path]:
    """Remove the temporary files a crash left next to ``path``; return what was removed.

    Only files (or links) are ours to remove: a directory that merely bears the name, or
    an entry we may not delete, is left alone rather than stopping the start.
    """
    removed = []
    for entry in stale_temps(path):
        try:
            if stat.S_ISDIR(entry.lstat().st_mode):
                continue
            entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


def check_writable(path: Path) -> None:
    """Create the directory of ``path`` if needed and prove a temporary file can be made there."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=temp_prefix(path), dir=directory)
        os.close(fd)
        Path(probe).unlink()
    except OSError as exc:
        raise StartupError(f"token directory {directory} is not writable: {_why(exc)}") from exc


def read_text(path: Path, limit: int = 1 << 16) -> str | None:
    """The file's text, or None when it is missing, unreadable or too large to be ours."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError:
        return None
    if len(data) > limit:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)
