"""structlog set-up: one JSON object per line on stdout, and no secret in any of them."""

from __future__ import annotations

import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

from sidecar.session import fingerprint

# Field names whose value is a secret whatever it looks like.
SECRET_FIELDS = frozenset(
    {"api_key", "key", "x-api-key", "token", "access_token", "accessToken", "refresh_token"}
)
_REMEMBERED = 32


class Redactor:
    """A structlog processor that replaces every known secret with its fingerprint.

    Secrets are registered as they become known (the key when it is read, each
    token when it arrives), so even a message that quotes one by accident is clean.
    """

    def __init__(self) -> None:
        self._secrets: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        if not secret:
            return
        with self._lock:
            self._secrets.pop(secret, None)
            self._secrets[secret] = fingerprint(secret)
            while len(self._secrets) > _REMEMBERED:
                del self._secrets[next(iter(self._secrets))]

    def scrub(self, text: str) -> str:
        with self._lock:
            secrets = list(self._secrets.items())
        for secret, name in secrets:
            if secret in text:
                text = text.replace(secret, name)
        return text

    def __call__(
        self, _logger: object, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for field, value in event_dict.items():
            if field in SECRET_FIELDS and isinstance(value, str):
                event_dict[field] = fingerprint(value)
            elif isinstance(value, str):
                event_dict[field] = self.scrub(value)
            elif not isinstance(value, int | float | bool | type(None)):
                event_dict[field] = self.scrub(str(value))
        return event_dict


REDACTOR = Redactor()


_settings: dict[str, Any] = {"level": "info", "fmt": "json", "stream": None}


def configure(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Remember the settings; structlog itself is set up by the first log line.

    Importing structlog costs tens of milliseconds, which the first token need not wait for.
    """
    _settings.update(level=level, fmt=fmt, stream=stream)
    _LOGGER.bound = None


def _build() -> Any:
    import logging

    import structlog

    renderer: Any
    if _settings["fmt"] == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            REDACTOR,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[str(_settings["level"]).upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(_settings["stream"] or sys.stdout),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger()


class _LazyLogger:
    """Stands in for a structlog logger until the first event is logged."""

    def __init__(self) -> None:
        self.bound: Any = None

    def __getattr__(self, name: str) -> Any:
        if self.bound is None:
            self.bound = _build()
        return getattr(self.bound, name)


_LOGGER = _LazyLogger()


def get() -> Any:
    return _LOGGER
