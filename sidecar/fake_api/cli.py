"""The ``fake-api`` command: its options and a serve-until-signal run."""

from __future__ import annotations

import argparse
import math
import sys

from sidecar.error_codes import ERROR_CODES
from sidecar.fake_api.bodies import json_number
from sidecar.fake_api.server import FakeApi


def _fraction(text: str) -> float:
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0..1, not {text}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, not {text}")
    return value


def _positive(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _non_negative(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be within 0..65535 (0 picks a free port): {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``fake-api`` options; invalid values end in ``parser.error`` (exit 2)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port",
        type=_port,
        default=8080,
        help="port to bind; 0 picks a free one (default %(default)s)",
    )
    parser.add_argument(
        "--lifetime",
        type=_positive,
        default=3600.0,
        metavar="SECONDS",
        help="expiresIn of every session, fractions allowed (default %(default)s)",
    )
    parser.add_argument(
        "--fail-rate",
        type=_fraction,
        default=0.0,
        metavar="0..1",
        help="probability that a session request fails with --fail-code (default %(default)s)",
    )
    parser.add_argument(
        "--fail-code",
        choices=ERROR_CODES,
        default="SERVICE_UNAVAILABLE",
        metavar="CODE",
        help="errorCode of injected failures, from the spec's enum (default %(default)s)",
    )
    parser.add_argument(
        "--retry-after",
        metavar="VALUE",
        help="Retry-After header of injected failures: seconds or an HTTP-date",
    )
    parser.add_argument(
        "--expires-at-unit",
        choices=("s", "ms"),
        default="ms",
        help="unit of expiresAt in sessions (default %(default)s)",
    )
    parser.add_argument(
        "--delay",
        type=_non_negative,
        default=0.0,
        metavar="SECONDS",
        help="wait this long before every unscripted session answer (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, help="seed of the failure injection, for repeatable runs"
    )


def _stderr_line(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    """Serve the fake API until SIGTERM/SIGINT; 0 then, 1 when the address cannot be bound."""
    api = FakeApi(
        args.host,
        args.port,
        lifetime=args.lifetime,
        fail_rate=args.fail_rate,
        fail_code=args.fail_code,
        retry_after=args.retry_after,
        expires_at_unit=args.expires_at_unit,
        delay=args.delay,
        seed=args.seed,
        log=_stderr_line,
    )
    try:
        api.start()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        _stderr_line(f"fake-api: cannot listen on {args.host}:{args.port}: {reason}")
        return 1
    listening = f"fake-api listening on {api.url} (lifetime {json_number(args.lifetime)}s)"
    api.serve_forever_until_signal(ready=lambda: _stderr_line(listening))
    return 0
