"""Disk trouble under the real `run`: the old token stays, write_error is counted, it recovers.

Every case follows one script: the daemon writes a token; the disk goes bad; a forced
refresh fails with `write_error` (error level, counted in /metrics) and keeps being
retried, the old token keeps its bytes and inode, /healthz stays 200 and the process
keeps running; the problem is fixed and the daemon writes a new token by itself,
leaving no temporary file.

We run as root here and in CI, where a chmod stops nobody. So: a read-only bind mount
(else `chattr +i`), a full tmpfs, RLIMIT_FSIZE set on the running process with
prlimit(2), and for permissions a sidecar whose capability bounding set lacks
CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH / CAP_FOWNER, i.e. root that obeys file modes
(the same as a container running as root with those capabilities dropped).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.fake_api import FakeApi
from tests.conftest import Sidecar, base_env, get, start_sidecar, wait_until, write_config
from tests.test_faults import TokenState, failure_counts

Breaker = Callable[[Path], contextlib.AbstractContextManager[None]]

BACKOFF = {"initial_seconds": 0.05, "max_seconds": 0.2}
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3


def _run(*command: str) -> bool:
    return subprocess.run(command, capture_output=True, check=False, timeout=10).returncode == 0


def start_with(
    args: list[str],
    env: dict[str, str],
    preexec: Callable[[], None] | None = None,
    *,
    umask: int = -1,
) -> Sidecar:
    """conftest.start_sidecar with a preexec hook (capabilities) and a umask."""
    return start_sidecar(args, env, preexec_fn=preexec, umask=umask)


@pytest.fixture
def launched() -> Iterator[list[Sidecar]]:
    """Processes a test started with start_with; each is killed at the end."""
    started: list[Sidecar] = []
    yield started
    for sidecar in started:
        sidecar.stop()


def obey_file_modes() -> None:
    """In the child: drop the capabilities that let root ignore file modes."""
    if os.geteuid() != 0:
        return  # an ordinary user obeys file modes anyway
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            os._exit(71)


def exercise(
    tmp_path: Path,
    launched: list[Sidecar],
    breaker: Breaker,
    *,
    out: Path | None = None,
    preexec: Callable[[], None] | None = None,
    after_break: Callable[[Sidecar], None] | None = None,
) -> None:
    """Token written → ``breaker`` breaks the disk → write_error, token intact → fixed → new token."""
    out = out or tmp_path / "out"
    token = out / "token"
    # SPEC's "patient while valid" waits r/4..r/2 after any failure while the token stays
    # valid for r: the quick retries under test come once the 2 s token has expired, and
    # min_interval keeps the schedule out of the way (only the SIGHUP starts attempts).
    with FakeApi(lifetime=2.0) as api:
        config = write_config(
            tmp_path,
            api.url,
            server={"listen": "127.0.0.1:0"},
            backoff=BACKOFF,
            refresh={"min_interval_seconds": 60},
        )
        sidecar = start_with(["--config", str(config), "run"], base_env(), preexec)
        launched.append(sidecar)
        sidecar.wait_event("token_refreshed", timeout=15)
        url = "http://" + sidecar.wait_event("started", timeout=15)["listen"]
        wait_until(lambda: get(url + "/healthz").json().get("status") == "ok")
        before = TokenState.of(token)
        assert before.data.decode() == api.issued[-1]
        wait_until(lambda: get(url + "/readyz").status_code == 503, timeout=5)  # expired
        with breaker(out):
            if after_break is not None:
                after_break(sidecar)
            sidecar.signal(signal.SIGHUP)
            failed = [sidecar.wait_event("refresh_failed", timeout=10) for _ in range(3)]
            assert [e["reason"] for e in failed] == ["write_error"] * 3, failed
            assert all(e["level"] == "error" for e in failed)
            assert all(e["lane"] == "retryable" for e in failed)
            assert str(out) in failed[0]["message"]
            assert failure_counts(url)["write_error"] >= 3
            assert get(url + "/healthz").status_code == 200
            assert sidecar.process.poll() is None
            if out.is_dir():
                assert TokenState.of(token) == before
        # Fixed: the retries already scheduled write a new token without any help.
        sidecar.wait_event("token_refreshed", timeout=10)
        assert token.read_text() == api.issued[-1]
        assert token.read_bytes() != before.data
        assert sorted(p.name for p in out.iterdir()) == ["token"]
        assert get(url + "/readyz").status_code == 200
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait(5) == 0


# -- breakers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """A read-only bind mount of the directory over itself; `chattr +i` where mount is denied."""
    if _run("mount", "--bind", str(directory), str(directory)):
        try:
            if not _run("mount", "-o", "remount,bind,ro", str(directory)):
                pytest.skip("cannot remount a bind mount read-only here")
            assert _write_fails(directory, errno.EROFS)
            yield
        finally:
            _run("umount", "-l", str(directory))
        return
    if _run("chattr", "+i", str(directory)):
        try:
            assert _write_fails(directory, errno.EPERM)
            yield
        finally:
            _run("chattr", "-i", str(directory))
        return
    pytest.skip("neither a bind mount nor chattr +i is allowed here")


def _write_fails(directory: Path, expected: int) -> bool:
    """Whether writing a byte in ``directory`` fails with ``expected`` right now (as root)."""
    probe = directory / ".probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
    except OSError as exc:
        return exc.errno == expected
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return False


@contextlib.contextmanager
def removed_and_replaced_by_a_file(directory: Path) -> Iterator[None]:
    shutil.rmtree(directory)
    directory.write_text("not a directory")
    try:
        yield
    finally:
        directory.unlink()


@contextlib.contextmanager
def not_writable(directory: Path) -> Iterator[None]:
    directory.chmod(0o500)
    try:
        yield
    finally:
        directory.chmod(0o755)


# -- tests ------------------------------------------------------------------------------------


def test_a_read_only_directory_is_a_write_error_and_the_daemon_recovers(
    tmp_path: Path, launched: list[Sidecar]
) -> None:
    (tmp_path / "out").mkdir()
    exercise(tmp_path, launched, read_only)


def test_a_full_file_system_is_a_write_error_and_the_daemon_recovers(
    tmp_path: Path, launched: list[Sidecar]
) -> None:
    """A 64 KiB tmpfs filled to the last block: ENOSPC on the temporary file."""
    out = tmp_path / "out"
    out.mkdir()
    if not _run("mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(out)):
        pytest.skip("cannot mount a tmpfs here")

    @contextlib.contextmanager
    def full(directory: Path) -> Iterator[None]:
        filler = directory / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * 4096):
                    pass
        finally:
            os.close(fd)
        assert _write_fails(directory, errno.ENOSPC)
        try:
            yield
        finally:
            filler.unlink()

    try:
        exercise(tmp_path, launched, full)
    finally:
        _run("umount", "-l", str(out))


def test_a_file_size_limit_is_a_write_error_and_the_daemon_recovers(
    tmp_path: Path, launched: list[Sidecar]
) -> None:
    """RLIMIT_FSIZE of 16 bytes set on the running process: the write gets EFBIG part-way."""
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def limit(sidecar: Sidecar) -> None:
        resource.prlimit(sidecar.process.pid, resource.RLIMIT_FSIZE, (16, hard))
        limited.append(sidecar.process.pid)

    limited: list[int] = []

    @contextlib.contextmanager
    def efbig(_directory: Path) -> Iterator[None]:
        try:
            yield
        finally:
            resource.prlimit(limited[0], resource.RLIMIT_FSIZE, (hard, hard))

    exercise(tmp_path, launched, efbig, after_break=limit)


def test_a_directory_replaced_by_a_file_is_a_write_error_and_the_daemon_recovers(
    tmp_path: Path, launched: list[Sidecar]
) -> None:
    exercise(tmp_path, launched, removed_and_replaced_by_a_file)


def test_a_directory_without_write_permission_is_a_write_error_and_the_daemon_recovers(
    tmp_path: Path, launched: list[Sidecar]
) -> None:
    """Root without CAP_DAC_OVERRIDE: chmod 0500 on the directory stops the write."""
    exercise(tmp_path, launched, not_writable, preexec=obey_file_modes)


def test_a_removed_directory_is_created_again_at_the_next_refresh(
    tmp_path: Path, launched: list[Sidecar]
) -> None:
    out = tmp_path / "out"
    with FakeApi(lifetime=3600) as api:
        config = write_config(tmp_path, api.url, server={"listen": "127.0.0.1:0"})
        sidecar = start_with(["--config", str(config), "run"], base_env())
        launched.append(sidecar)
        sidecar.wait_event("token_refreshed", timeout=15)
        url = "http://" + sidecar.wait_event("started", timeout=15)["listen"]
        wait_until(lambda: get(url + "/healthz").json().get("status") == "ok")
        shutil.rmtree(out)
        assert get(url + "/readyz").status_code == 503  # the token is gone: not ready
        assert get(url + "/healthz").status_code == 200
        sidecar.signal(signal.SIGHUP)
        sidecar.wait_event("token_refreshed")
        assert (out / "token").read_text() == api.issued[-1]
        assert get(url + "/readyz").status_code == 200
        assert sidecar.count("refresh_failed") == 0
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait(5) == 0
