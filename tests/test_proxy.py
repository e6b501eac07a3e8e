"""api.proxy_url through a real proxy program (tinyproxy) to the fake API behind TLS.

The proxy sees a CONNECT to the API's host and port and nothing else: the key travels
inside TLS. A proxy that refuses, is down, or stalls is a counted failure naming it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sidecar.api import ApiClient
from sidecar.config import ApiConfig, Secret
from sidecar.errors import ConfigError, RefreshError
from sidecar.fake_api import FakeApi
from tests.conftest import API_KEY, base_env, run_command, write_config

KEY = Secret(API_KEY)
USER, PASSWORD = "sidecar", "proxy-pass-0123456789"


@pytest.fixture(scope="session")
def tinyproxy_bin() -> str:
    """tinyproxy, installed with apt-get where the test set-up may (root and CI=true)."""
    found = shutil.which("tinyproxy")
    if found:
        return found
    apt_get = shutil.which("apt-get")
    if os.geteuid() == 0 and os.environ.get("CI") == "true" and apt_get:
        done = subprocess.run(
            [apt_get, "install", "-y", "--no-install-recommends", "tinyproxy"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        found = shutil.which("tinyproxy")
        if found:
            return found
        pytest.skip(f"tinyproxy could not be installed: apt-get exit {done.returncode}")
    pytest.skip(
        "tinyproxy is not installed (apt-get install tinyproxy; the tests install it "
        "themselves only as root with CI=true)"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Proxy:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def label(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def tinyproxy(tinyproxy_bin: str, tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    """Start tinyproxy in the foreground (-d) with a config of the test's; stopped by pid."""
    started: list[subprocess.Popen[bytes]] = []

    def start(connect_port: int, *, auth: tuple[str, str] | None = None) -> Proxy:
        port = free_port()
        log = tmp_path / f"tinyproxy-{port}.log"
        lines = [
            f"Port {port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            "Allow 127.0.0.1",
            f'LogFile "{log}"',
            "LogLevel Info",
            "MaxClients 20",
            f"ConnectPort {connect_port}",
        ]
        if auth:
            lines.append(f"BasicAuth {auth[0]} {auth[1]}")
        conf = tmp_path / f"tinyproxy-{port}.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        process = subprocess.Popen(
            [tinyproxy_bin, "-d", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"tinyproxy did not start: {log.read_text(errors='replace')}")
                time.sleep(0.05)
        return Proxy(process, port, log)

    yield start
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, 15)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, 9)
            process.wait(10)


def auth_file(directory: Path, text: str) -> Path:
    path = directory / "proxy-auth"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def client_for(
    api: FakeApi, bundle: Path, proxy_url: str, auth: Path | None = None, timeout: float = 2
) -> ApiClient:
    return ApiClient(
        ApiConfig(
            base_url=api.url,
            ca_bundle=bundle,
            timeout_seconds=timeout,
            proxy_url=proxy_url,
            proxy_auth_file=auth,
        )
    )


def fetch_failure(client: ApiClient) -> RefreshError:
    try:
        with pytest.raises(RefreshError) as caught:
            client.fetch(KEY)
    finally:
        client.close()
    return caught.value


def proxy_config(tmp_path: Path, api: FakeApi, bundle: Path, **api_keys: object) -> Path:
    return write_config(tmp_path, api.url, api={"ca_bundle": str(bundle), **api_keys})


# --- the real command through the real proxy ------------------------------------------


def test_once_through_tinyproxy_tunnels_tls_and_the_proxy_never_sees_the_key(
    tls_api: tuple[FakeApi, Path], tinyproxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    api, bundle = tls_api
    proxy = tinyproxy(api.port)
    config = proxy_config(tmp_path, api, bundle, proxy_url=proxy.url)
    done = run_command(["once", "--config", str(config)], base_env())
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "token").read_text() == api.issued[-1]
    (request,) = api.requests
    assert request.api_key == API_KEY  # the API got the key, through the tunnel
    log = proxy.log_text()
    assert f"CONNECT 127.0.0.1:{api.port}" in log
    assert "GET " not in log  # no request but the CONNECT was readable to the proxy
    assert API_KEY not in log
    assert api.issued[-1] not in log


def test_proxy_that_wants_a_login_without_proxy_auth_file_is_a_counted_connection_error(
    tls_api: tuple[FakeApi, Path], tinyproxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    api, bundle = tls_api
    proxy = tinyproxy(api.port, auth=(USER, PASSWORD))
    config = proxy_config(tmp_path, api, bundle, proxy_url=proxy.url)
    done = run_command(["once", "--config", str(config), "--timeout", "0.5"], base_env())
    assert done.returncode == 1
    expected = f"proxy {proxy.label} refused the tunnel: 407 Proxy Authentication Required"
    assert expected in done.stderr
    assert "connection_error" in done.stderr
    assert api.requests == []


def test_proxy_auth_file_opens_the_tunnel_and_the_credential_is_never_printed(
    tls_api: tuple[FakeApi, Path], tinyproxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    api, bundle = tls_api
    proxy = tinyproxy(api.port, auth=(USER, PASSWORD))
    credential = auth_file(tmp_path, f"{USER}:{PASSWORD}\n")
    config = proxy_config(
        tmp_path, api, bundle, proxy_url=proxy.url, proxy_auth_file=str(credential)
    )
    done = run_command(["once", "--config", str(config), "--log-level", "debug"], base_env())
    assert done.returncode == 0, done.stderr
    assert [r.api_key for r in api.requests] == [API_KEY]
    assert PASSWORD not in done.stdout + done.stderr
    assert f"CONNECT 127.0.0.1:{api.port}" in proxy.log_text()
    checked = run_command(["check-config", "--config", str(config)], base_env())
    assert checked.returncode == 0, checked.stderr
    assert PASSWORD not in checked.stdout + checked.stderr
    assert str(credential) in checked.stdout


def test_a_wrong_proxy_credential_is_a_connection_error_naming_the_proxy(
    tls_api: tuple[FakeApi, Path], tinyproxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    api, bundle = tls_api
    proxy = tinyproxy(api.port, auth=(USER, PASSWORD))
    credential = auth_file(tmp_path, f"{USER}:not-the-password")
    error = fetch_failure(client_for(api, bundle, proxy.url, credential))
    assert error.reason == "connection_error"
    # tinyproxy answers a wrong login with 401 where it means 407.
    assert str(error).startswith(f"proxy {proxy.label} refused the tunnel: 40")
    assert "not-the-password" not in str(error)
    assert "proxy_auth_file" in error.hint
    assert api.requests == []


def test_the_credential_is_re_read_before_every_request(
    tls_api: tuple[FakeApi, Path], tinyproxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    api, bundle = tls_api
    proxy = tinyproxy(api.port, auth=(USER, PASSWORD))
    credential = auth_file(tmp_path, f"{USER}:stale")
    client = client_for(api, bundle, proxy.url, credential)
    try:
        with pytest.raises(RefreshError):
            client.fetch(KEY)
        credential.write_text(f"{USER}:{PASSWORD}", encoding="utf-8")  # rotated
        assert client.fetch(KEY).session.access_token == api.issued[-1]
        credential.unlink()
        with pytest.raises(RefreshError) as caught:
            client.fetch(KEY)
    finally:
        client.close()
    error = caught.value
    assert error.reason == "connection_error"
    assert f"cannot use proxy {proxy.label}" in str(error)
    assert f"api.proxy_auth_file {credential}: No such file or directory" in str(error)


def test_a_proxy_refusing_the_port_is_a_403_connection_error(
    tls_api: tuple[FakeApi, Path], tinyproxy: Callable[..., Proxy]
) -> None:
    api, bundle = tls_api
    proxy = tinyproxy(free_port())  # ConnectPort allows another port only
    error = fetch_failure(client_for(api, bundle, proxy.url))
    assert error.reason == "connection_error"
    assert str(error) == f"proxy {proxy.label} refused the tunnel: 403 Forbidden"
    assert "CONNECT" in error.hint


def test_tls_through_the_tunnel_is_verified_against_the_api_host(
    tls_api: tuple[FakeApi, Path], tinyproxy: Callable[..., Proxy]
) -> None:
    api, _bundle = tls_api
    proxy = tinyproxy(api.port)
    client = ApiClient(ApiConfig(base_url=api.url, timeout_seconds=2, proxy_url=proxy.url))
    error = fetch_failure(client)
    assert error.reason == "connection_error"
    assert f"TLS handshake with 127.0.0.1:{api.port} failed: certificate verify failed" in str(
        error
    )
    assert api.requests == []


def test_a_proxy_that_is_down_is_a_connection_error_naming_it(
    tls_api: tuple[FakeApi, Path], tmp_path: Path
) -> None:
    api, bundle = tls_api
    port = free_port()
    config = proxy_config(tmp_path, api, bundle, proxy_url=f"http://127.0.0.1:{port}")
    done = run_command(["once", "--config", str(config), "--timeout", "0.5"], base_env())
    assert done.returncode == 1
    assert f"cannot reach proxy 127.0.0.1:{port}: connection refused" in done.stderr
    assert "connection_error" in done.stderr
    assert api.requests == []


def test_a_proxy_that_cannot_reach_the_api_is_a_connection_error_naming_it(
    tinyproxy: Callable[..., Proxy],
) -> None:
    closed = free_port()
    proxy = tinyproxy(closed)
    client = ApiClient(
        ApiConfig(base_url=f"https://127.0.0.1:{closed}", timeout_seconds=2, proxy_url=proxy.url)
    )
    error = fetch_failure(client)
    assert error.reason == "connection_error"
    # tinyproxy says 500 where others say 502 or 503.
    assert str(error).startswith(f"proxy {proxy.label} refused the tunnel: 5")
    assert "could not connect to the API" in error.hint


@pytest.fixture
def raw_proxy() -> Iterator[Callable[[bytes], int]]:
    """A listener that reads the CONNECT, sends ``reply`` (maybe nothing), and hangs up."""
    servers: list[socket.socket] = []

    def start(reply: bytes) -> int:
        server = socket.create_server(("127.0.0.1", 0))
        servers.append(server)

        def serve() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(65536)
                    conn.sendall(reply)

        threading.Thread(target=serve, daemon=True).start()
        return int(server.getsockname()[1])

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (b"", "closed the connection without answering the CONNECT"),
        (b"HTTP/1.1 502 sekrit words\r\n\r\n", "refused the tunnel: 502 Bad Gateway"),
        (b"HTTP/1.1 407 Nope\r\n\r\n", "refused the tunnel: 407 Proxy Authentication Required"),
        (b"SSH-2.0-OpenSSH\r\n", "did not answer the CONNECT in HTTP"),
    ],
    ids=["closes", "502", "407", "not-http"],
)
def test_a_failed_connect_is_a_connection_error_in_plain_words(
    tls_api: tuple[FakeApi, Path], raw_proxy: Callable[[bytes], int], reply: bytes, words: str
) -> None:
    api, bundle = tls_api
    port = raw_proxy(reply)
    error = fetch_failure(client_for(api, bundle, f"http://127.0.0.1:{port}"))
    assert error.reason == "connection_error"
    assert str(error) == f"proxy 127.0.0.1:{port} {words}"  # never the proxy's own text
    assert api.requests == []


# --- a proxy that stalls: a raw socket server ---------------------------------------------


@pytest.fixture
def stalling_proxy() -> Iterator[Callable[[bytes | None], int]]:
    """A listener that accepts and then says nothing (None) or trickles ``drip`` forever."""
    stop = threading.Event()
    servers: list[socket.socket] = []

    def start(drip: bytes | None) -> int:
        server = socket.create_server(("127.0.0.1", 0))
        servers.append(server)

        def serve(conn: socket.socket) -> None:
            with conn:
                conn.recv(65536)
                if drip is not None:
                    conn.sendall(b"HTTP/1.1 200 Connection established\r\n")
                while not stop.wait(0.2):
                    if drip is not None:
                        try:
                            conn.sendall(drip)
                        except OSError:
                            return

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return int(server.getsockname()[1])

    yield start
    stop.set()
    for server in servers:
        server.close()


@pytest.mark.parametrize("drip", [None, b"X-Wait: 1\r\n"], ids=["silent", "trickling"])
def test_the_deadline_cuts_a_proxy_that_never_finishes_the_connect(
    tls_api: tuple[FakeApi, Path],
    stalling_proxy: Callable[[bytes | None], int],
    drip: bytes | None,
) -> None:
    api, bundle = tls_api
    port = stalling_proxy(drip)
    client = client_for(api, bundle, f"http://127.0.0.1:{port}", timeout=0.5)
    started = time.monotonic()
    error = fetch_failure(client)
    elapsed = time.monotonic() - started
    assert error.reason == "timeout"
    assert elapsed < 2 * 0.5 + 0.5
    assert f"proxy 127.0.0.1:{port}" in str(error)
    assert "CONNECT" in str(error)
    if drip is not None:  # no read ever times out: only the whole-exchange deadline cuts it
        assert elapsed >= 2 * 0.5 - 0.05
        assert "timed out after 1 s" in str(error)
    assert api.requests == []


# --- the environment stays ignored ------------------------------------------------------


@pytest.fixture
def recording_listener() -> Iterator[tuple[int, list[bytes]]]:
    """A listener that records every connection (its first bytes) and answers nothing."""
    seen: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(1)
                try:
                    seen.append(conn.recv(4096))
                except OSError:
                    seen.append(b"")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1]), seen
    stop.set()
    thread.join(2)
    server.close()


@pytest.mark.parametrize("explicit", [False, True], ids=["no-proxy-url", "with-proxy-url"])
def test_https_proxy_and_no_proxy_in_the_environment_are_ignored(
    tls_api: tuple[FakeApi, Path],
    tinyproxy: Callable[..., Proxy],
    recording_listener: tuple[int, list[bytes]],
    tmp_path: Path,
    explicit: bool,
) -> None:
    api, bundle = tls_api
    port, seen = recording_listener
    extra = {}
    proxy = None
    if explicit:
        proxy = tinyproxy(api.port)
        extra["proxy_url"] = proxy.url
    config = proxy_config(tmp_path, api, bundle, **extra)
    decoy = f"http://127.0.0.1:{port}"
    env = base_env(
        HTTPS_PROXY=decoy, https_proxy=decoy, HTTP_PROXY=decoy, ALL_PROXY=decoy,
        NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
    )  # fmt: skip
    done = run_command(["once", "--config", str(config)], env)
    assert done.returncode == 0, done.stderr
    assert seen == []
    assert [r.api_key for r in api.requests] == [API_KEY]
    if proxy is not None:  # NO_PROXY did not route around the configured proxy
        assert f"CONNECT 127.0.0.1:{api.port}" in proxy.log_text()


# --- http:// through a proxy ------------------------------------------------------------


def test_http_base_url_through_a_proxy_needs_allow_insecure_http(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9", api={"proxy_url": "http://127.0.0.1:8"})
    done = run_command(["check-config", "--config", str(config)], base_env())
    assert done.returncode == 78
    assert "api.proxy_url: with an http:// api.base_url the proxy would read the API key" in (
        done.stderr
    )


def test_http_base_url_with_allow_insecure_http_is_forwarded(
    fake_api: FakeApi, tinyproxy: Callable[..., Proxy]
) -> None:
    proxy = tinyproxy(fake_api.port)
    client = ApiClient(
        ApiConfig(
            base_url=fake_api.url, proxy_url=proxy.url, allow_insecure_http=True, timeout_seconds=2
        )
    )
    try:
        assert client.fetch(KEY).session.access_token == fake_api.issued[-1]
    finally:
        client.close()
    assert f"GET http://127.0.0.1:{fake_api.port}/v2/auth/session" in proxy.log_text()


# --- configuration ----------------------------------------------------------------------


def load(tmp_path: Path, api: dict[str, object]) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"api": api}), encoding="utf-8")
    from sidecar.config import load as load_config

    try:
        load_config(path, {"FORESTREET_API_KEY": API_KEY})
    except ConfigError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize(
    ("proxy_url", "words"),
    [
        ("https://proxy.internal:3128", "an https:// proxy is not supported"),
        ("http://user:secret-pw@proxy.internal:3128", "put user:password in api.proxy_auth_file"),
        ("https://user:secret-pw@proxy.internal:3128", "put user:password in api.proxy_auth_file"),
        ("http://proxy.internal", "with a port 1-65535"),
        ("http://proxy.internal:99999", "with a port 1-65535"),
        ("http://proxy.internal:3128/path", "no path"),
        ("socks5://proxy.internal:1080", "must be http://host:port"),
    ],
)
def test_proxy_url_must_be_plain_http_host_port(tmp_path: Path, proxy_url: str, words: str) -> None:
    (problem,) = load(tmp_path, {"proxy_url": proxy_url})
    assert problem.startswith("api.proxy_url: must be http://host:port")
    assert words in problem
    assert "secret-pw" not in problem


def test_proxy_url_from_the_environment(tmp_path: Path) -> None:
    from sidecar.config import load as load_config

    config = load_config(
        None,
        {"FORESTREET_API_KEY": API_KEY, "FORESTREET_SIDECAR_API_PROXY_URL": "http://10.0.0.1:3128"},
    )
    assert config.api.proxy_url == "http://10.0.0.1:3128"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "No such file or directory"),
        ("", "is empty"),
        ("no-colon-here", "holds no colon"),
        (":password", "has no user before the colon"),
        ("user:pass\nword", "holds a line break at position 10"),
    ],
)
def test_an_unusable_proxy_auth_file_is_a_config_error(
    tmp_path: Path, content: str | None, words: str
) -> None:
    path = tmp_path / "auth"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    (problem,) = load(
        tmp_path, {"proxy_url": "http://127.0.0.1:3128", "proxy_auth_file": str(path)}
    )
    assert problem.startswith("api.proxy_auth_file: ")
    assert words in problem
    assert "pass" not in problem.replace(str(path), "").replace("password", "")


def test_proxy_auth_file_without_proxy_url_is_a_config_error(tmp_path: Path) -> None:
    path = auth_file(tmp_path, "user:pw")
    assert load(tmp_path, {"proxy_auth_file": str(path)}) == [
        "api.proxy_auth_file: is set but api.proxy_url is not"
    ]


def test_an_unusable_proxy_auth_file_at_start_exits_78(
    tls_api: tuple[FakeApi, Path], tmp_path: Path
) -> None:
    api, bundle = tls_api
    config = proxy_config(
        tmp_path,
        api,
        bundle,
        proxy_url="http://127.0.0.1:9",
        proxy_auth_file=str(tmp_path / "missing"),
    )
    done = run_command(["once", "--config", str(config)], base_env())
    assert done.returncode == 78
    assert "api.proxy_auth_file: cannot read" in done.stderr
    assert api.requests == []
