"""structlog set-up: one JSON object per line on stdout, and no secret in any of them."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

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


def configure(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    renderer: Any
    if fmt == "console":
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
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )


def get() -> Any:
    return structlog.get_logger()
