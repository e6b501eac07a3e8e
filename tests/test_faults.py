"""Upstream faults against the real `run` command: class, metric reason, delay, token untouched.

Each fault goes to a real `forestreet-sidecar run` subprocess through the fake API (or a
socket this file controls). For every answer the test checks, from outside the process:
the `lane` of its `refresh_failed` event, the `reason` label counted in `/metrics`, that
the logged `retry_in` lies inside the bounds the contract gives for that lane, and that
the token on disk kept its bytes and its inode.

The expected classes come from tests/oracle.py, copied from SPEC.md, not from `sidecar`,
so a wrong table in the code cannot agree with itself.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.fake_api import ERROR_CODES, Answer, FakeApi
from tests import oracle
from tests.conftest import (
    Sidecar,
    base_env,
    get,
    json_lines,
    run_command,
    wait_until,
    write_config,
)

Start = Callable[..., Sidecar]

# Fast backoff so a long script runs in seconds; the bounds below follow from it.
INITIAL = 0.005
MAXIMUM = 0.02
MULTIPLIER = 2.0
BACKOFF = {"initial_seconds": INITIAL, "max_seconds": MAXIMUM, "multiplier": MULTIPLIER}
ROUNDING = 0.001  # retry_in is logged rounded to milliseconds


# -- helpers other fault files reuse ----------------------------------------------------------


@dataclass(frozen=True)
class TokenState:
    """What a reader of the token file can see: its bytes and its inode."""

    data: bytes
    inode: int

    @classmethod
    def of(cls, path: Path) -> TokenState:
        return cls(path.read_bytes(), path.stat().st_ino)


def start_run(start: Start, config: Path, env: dict[str, str] | None = None) -> tuple[Sidecar, str]:
    """The real `run`, once its refresh loop (and so its signal handling) is up.

    Returns it and the base URL of its probe server, which the config must enable:
    `/healthz` says "ok" only once the scheduler runs, and the loop's SIGHUP/SIGTERM
    handlers are in place by then (before that, SIGHUP would kill the process; see
    test_crash.py::test_sighup_during_startup_is_not_fatal).
    """
    sidecar = start(["--config", str(config), "run"], env or base_env())
    listen = sidecar.wait_event("started", timeout=15).get("listen")
    assert listen, "start_run needs server.listen"
    url = f"http://{listen}"
    wait_until(lambda: get(url + "/healthz").json().get("status") == "ok", timeout=10)
    return sidecar, url


def failure_counts(url: str) -> dict[str, float]:
    """`refreshes_total{result="failure"}` by reason, parsed with prometheus_client's parser."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(get(url + "/metrics").text):
        for sample in family.samples:
            if (
                sample.name == "forestreet_sidecar_refreshes_total"
                and sample.labels.get("result") == "failure"
            ):
                counts[sample.labels["reason"]] = sample.value
    return counts


def retry_bounds(lane: str, failures: int) -> tuple[float, float]:
    """[low, high] of the delay after the ``failures``-th consecutive failure (SPEC.md).

    Without a valid token. The ceiling min(max, initial·multiplier^(n-1)) is raised to
    at least min(max, seconds spent failing), which only the process knows: below the
    cap the delay lies in [0, max]; once the exponential part alone reaches the cap,
    equal jitter puts it in [max/2, max].
    """
    if lane == "retryable":
        if INITIAL * MULTIPLIER ** (failures - 1) >= MAXIMUM:
            return MAXIMUM / 2 - ROUNDING, MAXIMUM + ROUNDING
        return 0.0, MAXIMUM + ROUNDING
    return 0.9 * MAXIMUM - ROUNDING, 1.1 * MAXIMUM + ROUNDING


def wait_for_expiry(url: str, timeout: float = 10) -> None:
    """Until /readyz calls the token stale: a valid token makes every retry patient."""
    wait_until(lambda: get(url + "/readyz").status_code == 503, timeout=timeout)


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A port whose accept queue is full: a SYN to it is dropped, so connect() times out.

    Linux queues backlog + 1 connections on a socket that never accepts; a few
    non-blocking connects fill it, and later SYNs are dropped (tcp_abort_on_overflow=0).
    """
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.1)
        with socket.socket() as probe:
            probe.settimeout(0.3)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                pass
            else:
                pytest.skip("this kernel accepts beyond the backlog; no connect timeout to test")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- one long script through one process ------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    answer: Answer
    reason: str
    lane: str
    name: str


def _error_code_faults() -> list[Fault]:
    faults = []
    for code in ERROR_CODES:
        for status in (400, 401, 429, 503):
            faults.append(
                Fault(Answer(error_code=code, status=status), code, oracle.LANES[code], code)
            )
    return faults


def _transport_faults(other: FakeApi) -> list[Fault]:
    big = b'{"accessToken":"a.b","expiresIn":60,"pad":"' + b"x" * (10 * 1024 * 1024) + b'"}'
    html = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"
    elsewhere = other.url + "/v2/auth/session"
    return [
        Fault(Answer(delay=0.6), "timeout", "retryable", "read timeout"),
        Fault(Answer(trickle=0.05), "timeout", "retryable", "body trickling past the deadline"),
        Fault(Answer(reset=True), "connection_error", "retryable", "reset mid-body"),
        Fault(Answer(reset=True, body=b""), "connection_error", "retryable", "reset, no answer"),
        Fault(Answer(body=big), "invalid_response", "retryable", "10 MB body"),
        Fault(
            Answer(status=502, body=html, content_type="text/html"),
            "http_502",
            "retryable",
            "HTML error page",
        ),
        Fault(
            Answer(body=html, content_type="text/html"), "invalid_response", "retryable", "HTML 200"
        ),
        Fault(
            Answer(body=b"accessToken=a.b", content_type="application/x-www-form-urlencoded"),
            "invalid_response",
            "retryable",
            "wrong content type, not JSON",
        ),
        Fault(
            Answer(error_code="NOT_A_KNOWN_CODE", status=400), "http_400", "request", "unknown 400"
        ),
        Fault(
            Answer(error_code="NOT_A_KNOWN_CODE", status=503),
            "http_503",
            "retryable",
            "unknown 503",
        ),
        Fault(
            Answer(error_code="NOT_A_KNOWN_CODE", status=200),
            "invalid_response",
            "retryable",
            "unknown code in a 200",
        ),
        Fault(Answer(status=302, location=elsewhere), "http_302", "request", "302 elsewhere"),
        Fault(Answer(status=307, location=elsewhere), "http_307", "request", "307 elsewhere"),
        Fault(Answer(status=308, location=elsewhere), "http_308", "request", "308 elsewhere"),
    ]


def test_every_fault_gets_its_lane_reason_and_delay_and_never_touches_the_token(
    tmp_path: Path, sidecars: Start
) -> None:
    """136 errorCode/status pairs and 14 transport faults through one `run` process.

    The token has expired when the faults begin: with a valid one every retry would
    wait patiently, a quarter to a half of its remaining life (SPEC.md, "Patient while
    valid"), and the backoff lanes checked here would never show.
    """
    assert len(ERROR_CODES) == 34
    assert set(ERROR_CODES) == oracle.ERROR_CODES
    assert len(oracle.REQUEST) == 15
    with FakeApi(lifetime=1) as api, FakeApi() as other:
        config = write_config(
            tmp_path,
            api.url,
            api={"timeout_seconds": 0.3},
            server={"listen": "127.0.0.1:0"},
            backoff=BACKOFF,
        )
        sidecar, url = start_run(sidecars, config)
        sidecar.wait_event("token_refreshed")
        token = tmp_path / "out" / "token"
        before = TokenState.of(token)
        wait_for_expiry(url)

        faults = _transport_faults(other) + _error_code_faults()
        # Then one more failure whose Retry-After parks the loop for an hour, so nothing
        # succeeds behind the checks below; the success after them is forced by SIGHUP.
        park = Answer(error_code="SERVICE_UNAVAILABLE", retry_after="3600")
        api.script(*(fault.answer for fault in faults), park)
        sidecar.signal(signal.SIGHUP)
        wrong = []
        for index, fault in enumerate(faults, start=1):
            try:
                event = sidecar.wait_event("refresh_failed", timeout=10)
            except AssertionError as exc:
                last = api.requests[-1].received_at if api.requests else 0.0
                raise AssertionError(
                    f"fault #{index} ({fault.name}, {fault.answer.effective_status}): no event; "
                    f"{len(api.requests)} requests, the last {time.monotonic() - last:.1f}s ago, "
                    f"process exit code {sidecar.process.poll()}"
                ) from exc
            low, high = retry_bounds(fault.lane, event["consecutive_failures"])
            seen = (event["reason"], event["lane"])
            if seen != (fault.reason, fault.lane) or not low <= event["retry_in"] <= high:
                wrong.append((fault.name, fault.answer.effective_status, seen, event["retry_in"]))
            assert event["consecutive_failures"] == index
            if fault.lane != "retryable":
                assert event["level"] == "error"
                assert event["hint"]
        assert wrong == []
        parked = sidecar.wait_event("refresh_failed", timeout=10)
        assert parked["reason"] == "SERVICE_UNAVAILABLE"
        assert parked["retry_in"] == 3600
        counted = failure_counts(url)
        assert TokenState.of(token) == before  # expired, still on disk, untouched
        assert get(url + "/healthz").status_code == 200
        assert get(url + "/readyz").status_code == 503

        # The first success after the faults; served as text/plain with extra and missing
        # optional fields: the body is what counts, not the header.
        api.script(
            Answer(
                content_type="text/plain",
                extra_fields={"idToken": "x.y", "checksum": "abc", "nested": {"a": [1, 2]}},
                omit_fields=("expiresAt", "message"),
            )
        )
        sidecar.signal(signal.SIGHUP)
        sidecar.wait_event("token_refreshed", timeout=10)
        assert token.read_text() == api.issued[-1]
        assert token.stat().st_ino != before.inode
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait() == 0
        assert other.requests == []  # the key never left for the redirect target

    expected = Counter(fault.reason for fault in faults)
    expected["SERVICE_UNAVAILABLE"] += 1  # the parking failure
    assert {reason: counted.get(reason) for reason in expected} == dict(expected)
    assert sum(counted.values()) == len(faults) + 1


def test_retry_after_seconds_and_http_dates_are_lower_bounds_and_capped_at_an_hour(
    tmp_path: Path, sidecars: Start
) -> None:
    """The next request waits for Retry-After (seconds, IMF-fixdate, asctime), capped at 1 h.

    Against an expired token, so the backoff, not patience, is what Retry-After bounds.
    """
    with FakeApi(lifetime=1) as api:
        config = write_config(tmp_path, api.url, backoff=BACKOFF, server={"listen": "127.0.0.1:0"})
        sidecar, url = start_run(sidecars, config)
        sidecar.wait_event("token_refreshed")
        before = TokenState.of(tmp_path / "out" / "token")
        wait_for_expiry(url)
        now = int(time.time())
        fixdate_at, asctime_at = now + 3, now + 5
        api.script(
            Answer(error_code="SERVICE_UNAVAILABLE", retry_after="1"),
            Answer(
                error_code="LIMIT_EXCEEDED",
                status=401,
                retry_after=formatdate(fixdate_at, usegmt=True),
            ),
            # RFC 9110 5.6.7: a recipient MUST accept the obsolete asctime form (no zone: UTC).
            Answer(status=503, retry_after=time.asctime(time.gmtime(asctime_at))),
            Answer(status=429, retry_after="99999"),
        )
        sidecar.signal(signal.SIGHUP)
        seconds = sidecar.wait_event("refresh_failed")
        fixdate = sidecar.wait_event("refresh_failed", timeout=10)
        asctime = sidecar.wait_event("refresh_failed", timeout=10)
        capped = sidecar.wait_event("refresh_failed", timeout=10)
        stamps = [r.received_at for r in api.requests]
        assert TokenState.of(tmp_path / "out" / "token") == before
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait() == 0

    assert seconds["reason"] == "SERVICE_UNAVAILABLE"
    assert seconds["retry_after"] == 1
    assert 1 <= seconds["retry_in"] < 1.1  # far above backoff.max_seconds (0.02)
    assert fixdate["reason"] == "LIMIT_EXCEEDED"  # retryable with a 401: the code decides
    assert fixdate["lane"] == "retryable"
    assert asctime["reason"] == "http_503"
    for event, date_at in ((fixdate, fixdate_at), (asctime, asctime_at)):
        assert "retry_after" in event, event
        # Parsed before the event was logged, so at least this far from the date.
        assert event["retry_after"] >= date_at - _unix(event["timestamp"]) - 0.01
        assert event["retry_in"] >= event["retry_after"] - ROUNDING
        assert event["retry_after"] > 0.5
    assert capped["reason"] == "http_429"
    assert capped["retry_after"] == 99999
    assert capped["retry_in"] == 3600
    # The requests really were that far apart (sent after the delay, never before).
    gaps = [b - a for a, b in itertools.pairwise(stamps[-4:])]
    for gap, event in zip(gaps, (seconds, fixdate, asctime), strict=True):
        assert gap >= event["retry_in"] - 0.01


def _unix(timestamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("dead", ["connection refused", "connect timeout"])
def test_an_unreachable_api_is_retryable_and_keeps_the_token(
    tmp_path: Path, fake_api: FakeApi, sidecars: Start, dead: str
) -> None:
    """A restart with a kept token, then an API that refuses or never answers the SYN.

    The failure is retryable, counted, and, the token being valid for about an hour,
    the next attempt waits patiently: a quarter to a half of its remaining life.
    """
    config = write_config(
        tmp_path,
        fake_api.url,
        api={"timeout_seconds": 0.3},
        server={"listen": "127.0.0.1:0"},
        backoff=BACKOFF,
    )
    assert run_command(["--config", str(config), "once"]).returncode == 0
    token = tmp_path / "out" / "token"
    before = TokenState.of(token)
    reason = "connection_error" if dead == "connection refused" else "timeout"
    with contextlib.ExitStack() as stack:
        port = (
            closed_port()
            if reason == "connection_error"
            else stack.enter_context(unanswered_port())
        )
        env = base_env(FORESTREET_SIDECAR_API_BASE_URL=f"http://127.0.0.1:{port}")
        sidecar, url = start_run(sidecars, config, env)
        sidecar.wait_event("token_kept")
        sidecar.signal(signal.SIGHUP)
        events = [sidecar.wait_event("refresh_failed", timeout=10)]
        time.sleep(0.5)  # no second attempt follows soon
        assert sidecar.count("refresh_failed") == 1
        counted = failure_counts(url)
        healthz, readyz = get(url + "/healthz").status_code, get(url + "/readyz").status_code
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait() == 0
    for event in events:
        assert (event["reason"], event["lane"]) == (reason, "retryable")
        left = event["token_valid_for"]
        assert left > 3000
        assert left / 4 - ROUNDING <= event["retry_in"] <= left / 2 + ROUNDING
    if reason == "timeout":
        assert "0.3" in events[0]["message"]
    assert counted[reason] == 1
    assert (healthz, readyz) == (200, 200)  # an outage is not a liveness problem
    assert TokenState.of(token) == before
    assert len(fake_api.requests) == 1


# -- TLS through the real command ---------------------------------------------------------------


def test_once_over_tls_succeeds_with_ca_bundle(
    tmp_path: Path, tls_api: tuple[FakeApi, Path]
) -> None:
    api, bundle = tls_api
    config = write_config(tmp_path, api.url, api={"ca_bundle": str(bundle)})
    result = run_command(["--config", str(config), "once", "--timeout", "5"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert api.url.startswith("https://")
    assert (tmp_path / "out" / "token").read_text() == api.issued[-1]


def test_once_over_tls_without_ca_bundle_fails_clearly_and_writes_nothing(
    tmp_path: Path, tls_api: tuple[FakeApi, Path]
) -> None:
    api, _ = tls_api
    config = write_config(tmp_path, api.url)
    started = time.monotonic()
    result = run_command(["--config", str(config), "once", "--timeout", "1"], timeout=20)
    assert result.returncode == 1
    assert time.monotonic() - started < 10
    events = json_lines(result.stdout)
    failed = [e for e in events if e["event"] == "refresh_failed"]
    assert failed
    assert all(e["reason"] == "connection_error" for e in failed)
    assert "TLS" in failed[0]["message"]
    assert "api.ca_bundle" in failed[0]["hint"]
    assert events[-1]["event"] == "once_gave_up"
    assert api.issued == []
    assert list((tmp_path / "out").iterdir()) == []
