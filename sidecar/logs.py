"""structlog set-up: one JSON object per line on stdout, and no secret in any of them."""

from __future__ import annotations

import base64
import json
import logging
import re
import sys
import threading
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

from sidecar.session import fingerprint

# Field names whose value is a secret whatever it looks like.
SECRET_FIELDS = frozenset(
    {"api_key", "key", "x-api-key", "token", "access_token", "accessToken", "refresh_token"}
)
_REMEMBERED = 32
# Below this length a secret could be a word ("demo", "k"): it is replaced only where it
# stands alone. From this length on it is replaced wherever it appears, glued or not.
SHORT_SECRET = 12
_WORD = "A-Za-z0-9_-"
# A short secret starts after a non-word character, or right after an escape that
# ends in a letter or digit (`\n`, `\x00`, `\u00e9`, `%0A`): `'\ndemo'` holds the key.
_BEFORE = (
    rf"(?:(?<![{_WORD}])|(?<=\\[abfnrtv0])|(?<=\\x[0-9A-Fa-f]{{2}})"
    rf"|(?<=\\u[0-9A-Fa-f]{{4}})|(?<=%[0-9A-Fa-f]{{2}}))"
)
_AFTER = rf"(?![{_WORD}])"
_WORD_CHAR = re.compile(rf"[{_WORD}]")
_MAX_DEPTH = 8


def encoded_forms(secret: str) -> set[str]:
    """The secret as messages carry it: clear, repr, JSON, URL-encoded, base64.

    repr and JSON escaping are applied twice as well: an error's repr quotes its
    message, which quoted the value.
    """
    raw = secret.encode("utf-8", "backslashreplace")
    once = {
        secret,
        repr(secret)[1:-1],
        ascii(secret)[1:-1],
        repr(raw)[2:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }
    forms = set(once)
    for form in once:
        forms |= {repr(form)[1:-1], json.dumps(form)[1:-1]}
    for url in (quote(secret), quote(secret, safe=""), quote_plus(secret)):
        forms |= {url, re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), url)}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = encode(raw).decode()
        forms |= {text, text.rstrip("=")}
    return {form for form in forms if form}


def _pattern(form: str, *, short: bool) -> str:
    """``form`` as a regex; for a short secret only where no word character is glued to it."""
    before = _BEFORE if short and _WORD_CHAR.match(form[0]) else ""
    after = _AFTER if short and _WORD_CHAR.match(form[-1]) else ""
    return before + re.escape(form) + after


class Redactor:
    """A structlog processor that replaces every known secret with its fingerprint.

    Secrets are registered as they become known (the key when it is read, each
    token when it arrives), so even a message that quotes one by accident is clean.
    Adding one is cheap (it sits between a token's arrival and its write); a form's
    regex is compiled only once a text holds it.
    """

    def __init__(self) -> None:
        self._secrets: dict[str, str] = {}
        # (form, fingerprint, short), longest form first.
        self._forms: list[tuple[str, str, bool]] = []
        self._compiled: dict[str, re.Pattern[str]] = {}
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        if not secret:
            return
        with self._lock:
            known = secret in self._secrets
            self._secrets.pop(secret, None)
            self._secrets[secret] = fingerprint(secret)
            if known:  # only its place in the eviction order changed
                return
            while len(self._secrets) > _REMEMBERED:
                del self._secrets[next(iter(self._secrets))]
            forms = {
                (form, name, len(secret) < SHORT_SECRET)
                for secret, name in self._secrets.items()
                for form in encoded_forms(secret)
            }
            self._forms = sorted(forms, key=lambda item: len(item[0]), reverse=True)
            kept = {form for form, _name, _short in forms}
            self._compiled = {f: p for f, p in self._compiled.items() if f in kept}

    def scrub(self, text: str) -> str:
        with self._lock:
            forms = self._forms
        for form, name, short in forms:
            if form not in text:
                continue
            if not short:
                text = text.replace(form, name)
                continue
            regex = self._compiled.get(form)
            if regex is None:
                regex = self._compiled[form] = re.compile(_pattern(form, short=True))
            # A function, not a template: nothing in the name is read as a backreference.
            text = regex.sub(_constant(name), text)
        return text

    def clean(self, value: Any, field: object = None, depth: int = 0) -> Any:
        """``value`` with every secret replaced; containers keep their shape."""
        if isinstance(value, str):
            return fingerprint(value) if field in SECRET_FIELDS else self.scrub(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if depth < _MAX_DEPTH and isinstance(value, Mapping):
            return {
                self.scrub(str(key)): self.clean(item, key, depth + 1)
                for key, item in value.items()
            }
        if depth < _MAX_DEPTH and isinstance(value, list | tuple | set | frozenset):
            return [self.clean(item, None, depth + 1) for item in value]
        if isinstance(value, bytes | bytearray):
            return self.scrub(repr(bytes(value)))
        try:
            text = str(value)
        except Exception:  # noqa: BLE001 - a broken __str__ must not lose the log line
            text = f"<unprintable {type(value).__name__}>"
        return self.scrub(text)

    def __call__(
        self, _logger: object, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for field in list(event_dict):
            event_dict[field] = self.clean(event_dict[field], field)
        return event_dict


def _constant(name: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: name


REDACTOR = Redactor()


def drop_none(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A field that does not apply is left out, not logged as null."""
    for field in [name for name, value in event_dict.items() if value is None]:
        del event_dict[field]
    return event_dict


_FIRST = ("message", "hint")
_BARE = re.compile(r"[A-Za-z0-9_.:/@+-]+")


def render_console(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> str:
    """For people: level, event, then message and hint, then the rest; a traceback below."""
    fields = dict(event_dict)
    level = str(fields.pop("level", ""))
    event = str(fields.pop("event", ""))
    exception = fields.pop("exception", None)
    timestamp = fields.pop("timestamp", None)
    ordered = [(name, fields.pop(name)) for name in _FIRST if name in fields]
    ordered += list(fields.items())
    if timestamp is not None:
        ordered.append(("timestamp", timestamp))
    line = " ".join([level, event, *(f"{name}={_shown(value)}" for name, value in ordered)])
    return f"{line}\n{exception}" if exception else line


def _shown(value: object) -> str:
    if isinstance(value, str):
        return value if _BARE.fullmatch(value) else json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool | int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


_settings: dict[str, Any] = {"level": "info", "fmt": "json", "stream": None}


class _LibraryLogs(logging.Handler):
    """Library log records (urllib3) as structlog events, redacted like ours.

    Without it a library warning would go to stderr through logging's last resort,
    unredacted; at debug level it also shows each request's line and status.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            args = record.args if isinstance(record.args, tuple) else ()
            if record.msg == '%s://%s:%s "%s %s %s" %s %s' and len(args) == 8:
                scheme, host, port, method, path, _version, status, length = args
                event = "http_request"
                fields.update(method=method, url=f"{scheme}://{host}:{port}{path}", status=status)
                fields["length"] = length
            else:
                event = "library_log"
                fields["message"] = record.getMessage()
            level = record.levelname.lower()
            method_name = level if level in {"debug", "info", "warning", "error"} else "error"
            getattr(get(), method_name)(event, **fields)
        except Exception:  # noqa: BLE001 - a log line must never break a request
            return


_LIBRARY_HANDLER = _LibraryLogs()


def configure(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Remember the settings; structlog itself is set up by the first log line.

    Importing structlog costs tens of milliseconds, which the first token need not wait for.
    """
    _settings.update(level=level, fmt=fmt, stream=stream)
    _LOGGER.bound = None
    library = logging.getLogger("urllib3")
    library.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    if _LIBRARY_HANDLER not in library.handlers:
        library.addHandler(_LIBRARY_HANDLER)


def debug_enabled() -> bool:
    return bool(_settings["level"] == "debug")


def _build() -> Any:
    import structlog

    renderer: Any = (
        render_console if _settings["fmt"] == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            drop_none,
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
