"""The command line: the one place where errors become exit codes."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from random import Random
from types import FrameType
from typing import Any

from sidecar import __version__, signals
from sidecar.errors import ConfigError, Interrupted, StartupError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78
COMMANDS = ("run", "once", "status", "check-config", "fake-api")


def entry() -> None:
    """The console script: ``main``, then leave without tearing the interpreter down.

    Everything of ours is flushed and fsynced by then; unwinding some 350 imported
    modules only delays an init container's successor (tens of milliseconds).
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    parser = _parser(with_fake_api="fake-api" in args_list)
    if not args_list and not _configured(env):
        # `run` is the default command, but with no argument and nothing configured it
        # could only fail on the missing key: a first-time user typing the bare name wants
        # to know what the command does. Exit 2 (usage) rather than 78, since nothing was
        # configured wrongly; any configuration at all (a config file, one
        # FORESTREET_SIDECAR_* variable, a key) keeps `run` the default, as containers
        # and units rely on.
        parser.print_usage(sys.stderr)
        print(
            "forestreet-sidecar: nothing is configured (no --config, no FORESTREET_SIDECAR_*"
            " variables, no API key); see --help, or run `forestreet-sidecar run`",
            file=sys.stderr,
        )
        return EXIT_USAGE
    # `run` is the default command; insert it after the global options.
    if not any(arg in COMMANDS for arg in args_list) and not {"-h", "--help", "--version"} & set(
        args_list
    ):
        args_list.append("run")
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.command == "fake-api":
        from sidecar import fake_api

        return fake_api.run(args)
    try:
        return _dispatch(args, env)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as exc:
        print(f"forestreet-sidecar: {exc}", file=sys.stderr)
        from sidecar import logs

        logs.get().error("startup_failed", message=str(exc))
        return EXIT_FAILURE


def _configured(environ: Mapping[str, str]) -> bool:
    """Whether anything at all points at a configuration or a key."""
    return any(
        name.startswith("FORESTREET_SIDECAR_")
        or name in ("FORESTREET_API_KEY", "CREDENTIALS_DIRECTORY")
        for name, value in environ.items()
        if value
    )


def _parser(*, with_fake_api: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forestreet-sidecar",
        description="Keeps a fresh Forestreet session token on disk.",
    )
    parser.add_argument("--version", action="version", version=f"forestreet-sidecar {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    for target, default in ((parser, None), (common, argparse.SUPPRESS)):
        target.add_argument("--config", type=Path, default=default, help="YAML configuration file")
        target.add_argument(
            "--log-level", choices=("debug", "info", "warning", "error"), default=default
        )
        target.add_argument("--log-format", choices=("json", "console"), default=default)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", parents=[common], help="long-running daemon (default)")
    once = commands.add_parser(
        "once", parents=[common], help="fetch one session, write it, exit (init containers)"
    )
    once.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="retry retryable failures until this many seconds have passed (default 60)",
    )
    once.add_argument(
        "--min-validity",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="exit 0 without a request when the token on disk is still valid this long",
    )
    status = commands.add_parser(
        "status", parents=[common], help="ask the running sidecar how its token is doing"
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    commands.add_parser(
        "check-config", parents=[common], help="validate and print the effective configuration"
    )
    fake = commands.add_parser("fake-api", help="a local stand-in of the Forestreet auth API")
    if with_fake_api:  # its module is not worth importing for the other commands
        from sidecar import fake_api

        fake_api.add_arguments(fake)
    return parser


def _seconds(text: str) -> float:
    """A command-line number of seconds: finite and ≥ 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 10**7:
        raise argparse.ArgumentTypeError(f"must be between 0 and 10^7 seconds: {text!r}")
    return value


def _dispatch(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from sidecar import config as config_module

    overrides: dict[str, object] = {}
    if args.log_level:
        overrides["log.level"] = args.log_level
    if args.log_format:
        overrides["log.format"] = args.log_format
    # status only asks the running sidecar: it needs server.listen, not the API key.
    need_key = args.command != "status"
    config = config_module.load(args.config, environ, overrides, need_key=need_key)
    if args.command == "check-config":
        return _check_config(config, environ)
    if args.command == "status":
        return _status(config, as_json=args.json)

    from sidecar import logs, outputs

    logs.configure(config.log.level, config.log.format)
    log = logs.get()
    for warning in config.warnings:
        log.warning("config_warning", message=warning)
    for output in outputs.from_config(config):
        output.check_writable()
        for temp in output.sweep():
            log.info("stale_temp_removed", path=str(temp))
    if args.command == "once":
        return _once(config, environ, log, args.timeout, args.min_validity)
    return _run(config, environ, log)


def _check_config(config: Any, environ: Mapping[str, str]) -> int:
    import yaml

    from sidecar.config import effective
    from sidecar.session import fingerprint

    class Dumper(yaml.SafeDumper):
        """A template's lines shown as they are written (``|``), not folded into quotes."""

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    print(yaml.dump(effective(config), Dumper=Dumper, sort_keys=False), end="")
    try:
        key_fingerprint = fingerprint(config.key.read(environ).value)
    except (OSError, ValueError) as exc:
        key_fingerprint = f"unreadable ({exc.__class__.__name__})"
    print(f"# API key: from {config.key.describe()} ({key_fingerprint})")
    for name, origin in sorted(config.sources.items()):
        print(f"# {name}: from {origin}")
    for warning in config.warnings:
        print(f"# warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _status(config: Any, *, as_json: bool) -> int:
    from sidecar import status

    code, text, problem = status.answer(config.server.address, as_json=as_json)
    if text:
        print(text)
    if problem:
        print(problem, file=sys.stderr)
    return code


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGTERM/SIGINT abort what the main thread is doing, even a hanging request.

    A write under way cleans up its temporary file as the exception passes through.
    SIGHUP asks for a refresh, which is what is happening anyway.
    """

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    handlers: dict[int, signals.Handler] = {
        signal.SIGTERM: interrupt,
        signal.SIGINT: interrupt,
        signal.SIGHUP: signal.SIG_IGN,
    }
    with signals.installed(handlers):
        yield


def _kept_long_enough(refresher: Any, log: Any, min_validity: float) -> bool:
    """once --min-validity: whether the token on disk (known as at restart) will do.

    A crash-looping init container must not mint a session per restart; every output
    must be there too, or a newly configured one would never be written.
    """
    from sidecar.outcome import iso

    missing = refresher.missing_outputs()
    kept = None if missing else refresher.adopt_existing()  # no observer yet: decided here
    valid_for = kept.valid_for if kept is not None else None
    token_path = refresher.config.token.path
    if not token_path.exists():
        reason = f"no token on disk ({token_path} is missing)"
    elif missing:
        reason = f"{missing[0]} is missing"
    elif kept is None or valid_for is None:
        reason = "no valid token on disk whose expiry is known"
    elif valid_for < min_validity:
        reason = f"the token on disk is valid for {valid_for:.0f}s, less than {min_validity:g}s"
    else:
        log.info(
            "token_kept",
            reason=f"valid for {valid_for:.0f}s, at least --min-validity {min_validity:g}s",
            path=str(refresher.config.token.path),
            token_fingerprint=kept.token.fingerprint,
            expires_at=iso(kept.token.expires_wall),
            valid_for=round(valid_for, 3),
        )
        return True
    log.info("token_not_kept", reason=reason, min_validity=min_validity)
    return False


def _once(
    config: Any,
    environ: Mapping[str, str],
    log: Any,
    timeout: float,
    min_validity: float | None = None,
) -> int:
    from sidecar.api import ApiClient
    from sidecar.policy import Lane
    from sidecar.refresher import Refresher
    from sidecar.report import Reporter

    client = ApiClient(config.api, require_refresh_token=config.token.include_refresh_token)
    # Nothing refreshes after once: its log lines name no next refresh past its deadline.
    reporter = Reporter(config, log, until=time.time() + timeout)
    refresher = Refresher(config, client, None, log, rng=Random(), environ=environ, observers=[])
    if min_validity is not None and _kept_long_enough(refresher, log, min_validity):
        client.close()
        return EXIT_OK
    refresher.last_observers.append(reporter)
    deadline = time.monotonic() + timeout
    attempts = 0
    try:
        with _interruptible():
            while True:
                attempts += 1
                outcome = refresher.attempt()
                if outcome.ok:
                    return EXIT_OK
                left = deadline - time.monotonic()
                if outcome.lane is not Lane.RETRYABLE:
                    error = outcome.error
                    detail = f"{error}; {error.hint}" if error else "needs a human"
                    return _give_up(log, detail, attempts, hint=error.hint if error else "")
                if outcome.delay >= left:
                    error = outcome.error
                    last = f"; last attempt: {error.reason}: {error}" if error else ""
                    return _give_up(log, f"no token within {timeout:g}s{last}", attempts)
                time.sleep(outcome.delay)
    except Interrupted as exc:
        return _give_up(log, f"interrupted by {exc}", attempts)
    finally:
        client.close()


def _give_up(log: Any, reason: str, attempts: int, hint: str = "") -> int:
    """An exit-1 message goes to stderr and, as an error event, to the log."""
    from sidecar.logs import REDACTOR  # already imported: the log is configured

    line = f"forestreet-sidecar: once gave up after {attempts} attempt(s): {reason}"
    print(REDACTOR.scrub(line), file=sys.stderr)
    fields: dict[str, object] = {"reason": reason, "attempts": attempts}
    if hint:
        fields["hint"] = hint
    log.error("once_gave_up", **fields)
    return EXIT_FAILURE


def _run(config: Any, environ: Mapping[str, str], log: Any) -> int:
    from sidecar import server
    from sidecar.api import ApiClient
    from sidecar.daemon import Daemon
    from sidecar.notify import Notifier
    from sidecar.refresher import Refresher

    address = config.server.address
    # Bound first, so a port in use fails before any request goes upstream.
    listener = server.bind(address) if address else None
    client = ApiClient(config.api, require_refresh_token=config.token.include_refresh_token)
    refresher = Refresher(config, client, None, log, rng=Random(), environ=environ)
    daemon = Daemon(config, refresher, Notifier.from_environ(environ, os.getpid()), log)
    probes = None
    notifications: Any = None
    daemon.install_signals()
    try:
        if listener is not None:
            # Serving from the start: /healthz answers during the first attempt, and a
            # scrape that early waits for its end (bounded like the attempt itself).
            probes = server.ProbeServer(
                listener,
                daemon.health,
                daemon.readiness,
                metrics_wait=2 * config.api.timeout_seconds + 10,
                log=log,
            ).start()
        kept = refresher.adopt_existing()
        # Without a kept token, the first token waits for nothing else: not the
        # scheduler or the metrics, whose imports cost more than the request itself.
        first_due = time.monotonic() + kept.delay if kept is not None else daemon.first_attempt()
        if first_due is None:
            log.info("shutdown", signal=daemon.stop_signal_name())
            return EXIT_OK

        from prometheus_client import CollectorRegistry

        from sidecar.metrics import Metrics

        registry = CollectorRegistry()
        metrics = Metrics(registry, __version__)
        refresher.attach_metrics(metrics)
        if config.notify.methods:
            from sidecar.hooks import Notifications

            notifications = Notifications(
                config, log, environ=environ, rng=Random(), metrics=metrics
            )
            refresher.observe(notifications)  # the first token's outcome too, at once
        if probes is not None:
            probes.publish(registry)
        log.info(
            "started",
            version=__version__,
            token_path=str(config.token.path),
            api=config.api.base_url,
            key_source=config.key.describe(),
            listen=f"{_host(address)}:{probes.port}" if address and probes else None,
        )
        return daemon.run(first_due)
    finally:
        daemon.restore_signals()
        if notifications is not None:
            notifications.close()
        if probes is not None:
            probes.stop()
        elif listener is not None:
            listener.close()
        client.close()


def _host(address: tuple[str, int]) -> str:
    return f"[{address[0]}]" if ":" in address[0] else address[0]
