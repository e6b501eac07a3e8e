"""Configuration: defaults < YAML file < environment < command line, validated in one pass.

``load`` collects every problem before failing, names each by its ``section.key``
(and the variable it came from), and keeps where the API key lives, never the key.
"""

from __future__ import annotations

import grp
import ipaddress
import math
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sidecar.errors import ConfigError
from sidecar.policy import BackoffPolicy, RefreshPolicy

ENV_PREFIX = "FORESTREET_SIDECAR_"
CONFIG_ENV = "FORESTREET_SIDECAR_CONFIG"
CREDENTIAL_NAME = "forestreet-api-key"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")

_MODE_PATTERN = re.compile(r"0?[0-7]{3}")
# str.isdigit() and float() take '²' and '٨'; only ASCII digits are numbers here.
_DIGITS = re.compile(r"[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)

KEY_READ_LIMIT = 8 * 1024  # bytes read of a key file at most
KEY_MAX_LENGTH = 4096
CONFIG_READ_LIMIT = 1 << 20
CA_BUNDLE_READ_LIMIT = 16 << 20  # the Mozilla bundle is about 0.2 MiB
MAX_SECONDS = 10**7  # about 116 days: longer is a typo, and breaks date arithmetic
# Nodes from the document down: sections (1), keys (2), a value (3), a list's items (4).
# A value that is a list still gets its typed message; anything deeper is refused
# before PyYAML's recursive composer can run out of stack.
_MAX_DEPTH = 4
_WHITESPACE = " \t\r\n\v\f"
_BOM = "\ufeff"
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
_UNSAFE = re.compile(r"[^\x21-\x7e]")
_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


class InputError(ValueError):
    """A file or value that cannot be what it should be; ``problem`` never quotes a secret.

    A ValueError, so the refresher's re-read turns it into ``key_unavailable``.
    """

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"it {problem}")


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit >> 10} KiB"


def read_small_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    Never blocks (a FIFO is opened non-blocking and refused by ``fstat``), never opens a
    device (``stat`` first), never reads more than ``limit + 1`` bytes. OSError for the
    OS's refusals, InputError for the wrong kind or size of file, ValueError for a NUL.
    """
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"is {_file_type(info.st_mode)}, not a regular file")
    if info.st_size > limit:
        raise InputError(f"is larger than {_size(limit)}")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)  # what was opened, whatever was swapped in since the stat
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"is {_file_type(info.st_mode)}, not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise InputError(f"is larger than {_size(limit)}")
    return b"".join(chunks)


def clean_key(text: str) -> str:
    """The key without surrounding whitespace and a leading BOM, if it can be a header value."""
    text = text.strip(_WHITESPACE)
    if text.startswith(_BOM):
        text = text[1:].strip(_WHITESPACE)
    if not text:
        raise InputError("is empty")
    if len(text) > KEY_MAX_LENGTH:
        raise InputError(f"is longer than {KEY_MAX_LENGTH} characters")
    if not _HEADER_SAFE.fullmatch(text):
        bad = _UNSAFE.search(text)
        assert bad is not None  # noqa: S101 - the fullmatch failed on a non-empty text
        where = f"at position {bad.start() + 1}"
        if bad.group() in "\r\n\x85\u2028\u2029":
            raise InputError(f"holds a line break {where}")
        raise InputError(f"holds a character an HTTP header cannot carry {where}")
    return text


@dataclass(frozen=True, slots=True)
class Secret:
    """A value that must never be printed; its repr says so."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "<SECRET>"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where the API key is read from, fresh before every request."""

    kind: str  # "file" | "env" | "credential"
    location: str  # a path or a variable name: never the key

    def read(self, environ: Mapping[str, str]) -> Secret:
        """The current key; OSError and ValueError (InputError) are the caller's to translate.

        Neither error's text ever holds the key or a part of it.
        """
        if self.kind == "env":
            value = environ.get(self.location)
            if value is None:
                raise InputError("is not set")
            return Secret(clean_key(value))
        data = read_small_file(Path(self.location), KEY_READ_LIMIT)
        # Bytes that are not UTF-8 stay as one bad character each, at their position.
        return Secret(clean_key(data.decode("utf-8", "surrogateescape")))

    def describe(self) -> str:
        if self.kind == "env":
            return f"environment variable {self.location}"
        if self.kind == "credential":
            return f"systemd credential {self.location}"
        return f"file {self.location}"


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """The ``api`` section: where to ask, and how long to wait."""

    base_url: str = "https://rest.forestreet.com"
    key_file: Path | None = None
    key_env: str = "FORESTREET_API_KEY"
    timeout_seconds: float = 10.0
    ca_bundle: Path | None = None
    allow_insecure_http: bool = False

    @property
    def session_url(self) -> str:
        return self.base_url.rstrip("/") + "/v2/auth/session"


@dataclass(frozen=True, slots=True)
class TokenConfig:
    """The ``token`` section: where and how the token is written."""

    path: Path = Path("/var/run/forestreet/token")
    mode: int = 0o640
    group: str | None = None
    gid: int | None = None
    session_path: Path | None = None
    include_refresh_token: bool = False


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The ``server`` section: the probe and metrics address."""

    listen: str = "0.0.0.0:9877"

    @property
    def address(self) -> tuple[str, int] | None:
        return parse_listen(self.listen) if self.listen else None


@dataclass(frozen=True, slots=True)
class LogConfig:
    """The ``log`` section."""

    level: str = "info"
    format: str = "json"


@dataclass(frozen=True, slots=True)
class Config:
    """The effective configuration, with where each value came from."""

    api: ApiConfig = field(default_factory=ApiConfig)
    token: TokenConfig = field(default_factory=TokenConfig)
    refresh: RefreshPolicy = field(default_factory=RefreshPolicy)
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    key: KeySource = KeySource("env", "FORESTREET_API_KEY")
    sources: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


SECTIONS: dict[str, type[Any]] = {
    "api": ApiConfig,
    "token": TokenConfig,
    "refresh": RefreshPolicy,
    "backoff": BackoffPolicy,
    "server": ServerConfig,
    "log": LogConfig,
}
# Derived fields are not keys a user may set.
_DERIVED = {("token", "gid")}


def keys() -> list[tuple[str, str]]:
    """Every configurable ``(section, key)``, in documentation order."""
    return [
        (section, name)
        for section, cls in SECTIONS.items()
        for name in cls.__dataclass_fields__
        if (section, name) not in _DERIVED
    ]


def env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section}_{key}".upper()


class _Collector:
    """Gathers problems so one run reports all of them."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, key: str, message: str, origin: str) -> None:
        suffix = f" (from {_printable(origin)})" if origin.startswith(ENV_PREFIX) else ""
        self.problems.append(f"{_printable(key)}: {_printable(message)}{suffix}")


def _printable(text: str) -> str:
    """One line of text a terminal shows as it is: control characters and lone surrogates
    escaped, so a problem is always exactly one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _name(value: object) -> str:
    """A user's key or section name, fit for the start of a problem line."""
    text = str(value)
    if len(text) > 60:
        return repr(text[:60] + "...")
    return text if text.isprintable() and text else repr(text)


def load(
    path: Path | None,
    environ: Mapping[str, str],
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Build the effective configuration or raise ConfigError with every problem."""
    problems = _Collector()
    raw: dict[tuple[str, str], tuple[object, str]] = {}

    if path is None and environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
    if path is not None:
        _read_file(path, raw, problems)
    _read_environ(environ, raw, problems)
    for dotted, value in (overrides or {}).items():
        section, _, name = dotted.partition(".")
        raw[(section, name)] = (value, "command line")

    values: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    sources: dict[str, str] = {}
    for (section, name), (value, origin) in raw.items():
        converted = _convert(section, name, value, origin, problems)
        if converted is not _INVALID:
            values[section][name] = converted
            sources[f"{section}.{name}"] = origin

    _check_ranges(values, sources, problems)
    gid = _resolve_group(values["token"].get("group"), sources, problems)
    if gid is not None:
        values["token"]["gid"] = gid

    sections = {name: SECTIONS[name](**vals) for name, vals in values.items()}
    api: ApiConfig = sections["api"]
    key: KeySource | None = None
    warnings: list[str] = []
    # A key_file or key_env already reported as wrong is not searched past: "no API key
    # found" on top would send the reader after the wrong problem.
    if not any(
        (("api", name) in raw and name not in values["api"]) for name in ("key_file", "key_env")
    ):
        key, warnings = _find_key(api, environ, sources, problems)
    if problems.problems:
        raise ConfigError(problems.problems)
    assert key is not None  # noqa: S101 - _find_key reports a problem otherwise
    return Config(**sections, key=key, sources=sources, warnings=tuple(warnings))


def _read_file(
    path: Path, raw: dict[tuple[str, str], tuple[object, str]], problems: _Collector
) -> None:
    origin = str(path)
    data = _read_config_text(path, problems)
    if data is None:
        return
    text, document = data
    if document is None:
        return
    if not isinstance(document, dict):
        problems.add("config", f"{path} must be a mapping of sections, got {_kind(document)}", "")
        return
    for section, entries in document.items():
        if section not in SECTIONS:
            problems.add(_name(section), "unknown section", origin)
            continue
        if entries is None:
            continue
        if not isinstance(entries, dict):
            problems.add(section, "must be a mapping of keys", origin)
            continue
        for key, value in entries.items():
            if not isinstance(key, str) or (section, key) not in _KEYS:
                problems.add(f"{section}.{_name(key)}", "unknown key", origin)
                continue
            if section == "token" and key == "mode" and isinstance(value, int):
                raw[(section, key)] = (
                    _UnquotedMode(value, _raw_scalar(text, section, key)),
                    origin,
                )
            else:
                raw[(section, key)] = (value, origin)


def _read_config_text(path: Path, problems: _Collector) -> tuple[str, object] | None:
    """The file's text and its YAML document, or None after adding the one problem."""
    import yaml  # only a file needs it; the environment alone does not

    def problem(message: str) -> None:
        problems.add("config", message, "")

    try:
        data = read_small_file(path, CONFIG_READ_LIMIT)
    except OSError as exc:
        problem(f"cannot read {path}: {exc.strerror or exc}")
        return None
    except InputError as exc:
        problem(f"{path} {exc.problem}")
        return None
    except ValueError:  # a NUL byte in the path
        problem(f"cannot read {path}: the path holds a NUL byte")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        problem(f"{path} is not UTF-8 text (line {line}); save it as UTF-8")
        return None
    try:
        return text, yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except _RefusedError as exc:
        problem(f"{path} {exc}")
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        problem(f"{path} is not valid YAML at line {line}: it holds a control character")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or getattr(exc, "context", None) or "unreadable"
        problem(f"{path} is not valid YAML{where}: {what}")
    except (ValueError, OverflowError, TypeError) as exc:
        # PyYAML's constructors let a few foreign errors through (an integer of 5000
        # digits, a timestamp of month 13): still one line naming the file.
        problem(f"{path} holds a value YAML cannot build: {type(exc).__name__}")
    return None


class _RefusedError(Exception):
    """A YAML document this configuration will not compose (too deep, aliases, twice a key)."""


def _refuse_duplicates(node: Any) -> None:
    """A key given twice: YAML keeps the last silently, and typos must not pass silently."""
    seen: dict[tuple[str, str], int] = {}
    for key, _value in node.value:
        if not isinstance(key.value, str):
            continue
        line = key.start_mark.line + 1
        first = seen.get((key.tag, key.value))
        if first is not None:
            where = f"line {line}" if first == line else f"lines {first} and {line}"
            raise _RefusedError(f"has the key {_name(key.value)} twice ({where}); keep one")
        seen[(key.tag, key.value)] = line


@cache
def _loader() -> type[Any]:
    """A SafeLoader that refuses aliases and nesting deeper than the schema, as it composes.

    Aliases are what YAML bombs are made of (the merge key ``<<`` copies, so a chain of
    them grows exponentially), and a 20-key, two-level configuration never needs one.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()  # type: ignore[no-untyped-call]
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent):
                raise _RefusedError(f"uses a YAML alias (line {line}); write the value out")
            self.depth += 1
            try:
                if self.depth > _MAX_DEPTH:
                    raise _RefusedError(
                        f"is nested deeper than the configuration allows (line {line})"
                    )
                node = super().compose_node(parent, index)
            finally:
                self.depth -= 1
            if isinstance(node, yaml.MappingNode):
                _refuse_duplicates(node)
            return node

    # YAML 1.2's floats: 1e12 and 1.5e3 are numbers (YAML 1.1 wants "1.0e+12"), so a
    # value out of range is reported as such, not as "got the string '1e12'".
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)$"),
        list("-+.0123456789"),
    )
    return Loader


def _read_environ(
    environ: Mapping[str, str],
    raw: dict[tuple[str, str], tuple[object, str]],
    problems: _Collector,
) -> None:
    known = {env_name(section, key): (section, key) for section, key in _KEYS}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        if name not in known:
            problems.add(name, "unknown variable (typo?)", name)
            continue
        raw[known[name]] = (_EnvText(value), name)


class _EnvText(str):
    """Text from the environment: numbers and booleans are parsed from it."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class _UnquotedMode:
    """A ``token.mode`` that YAML read as a number, with its source text."""

    number: int
    text: str


_INVALID = object()
_KEYS = set(keys())


def _convert(  # noqa: PLR0911 - one return per kind of key reads best
    section: str, key: str, value: object, origin: str, problems: _Collector
) -> object:
    dotted = f"{section}.{key}"
    default = getattr(SECTIONS[section](), key)
    if key == "mode":
        return _convert_mode(dotted, value, origin, problems)
    if key == "group":
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return _text(dotted, value, origin, problems, allow_empty=True) or None
    if isinstance(default, bool):
        return _convert_bool(dotted, value, origin, problems)
    if isinstance(default, float):
        return _convert_number(dotted, value, origin, problems)
    if key in ("key_file", "ca_bundle", "path", "session_path"):
        text = _text(dotted, value, origin, problems, allow_empty=key != "path")
        if text is _INVALID:
            return _INVALID
        return Path(str(text)) if text else None
    return _text(dotted, value, origin, problems, allow_empty=key == "listen")


def _text(
    dotted: str, value: object, origin: str, problems: _Collector, *, allow_empty: bool
) -> Any:
    if value is None and allow_empty:
        return ""
    if not isinstance(value, str):
        problems.add(dotted, f"must be a string, got {_kind(value)}", origin)
        return _INVALID
    if not value and not allow_empty:
        problems.add(dotted, "must not be empty", origin)
        return _INVALID
    if "\x00" in value:
        problems.add(dotted, "must not hold a NUL byte", origin)
        return _INVALID
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: bytes of the environment that are not UTF-8
        problems.add(dotted, "must be UTF-8 text (it holds bytes that are not)", origin)
        return _INVALID
    return str(value)


def _convert_number(dotted: str, value: object, origin: str, problems: _Collector) -> object:
    if isinstance(value, _EnvText):
        text = value.strip(_WHITESPACE)
        if _NON_FINITE.fullmatch(text):
            problems.add(dotted, "must be a finite number", origin)
            return _INVALID
        if not _NUMBER.fullmatch(text):
            problems.add(dotted, f"must be a number, got {_short(str(value))}", origin)
            return _INVALID
        value = float(text)
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.add(dotted, f"must be a number, got {_kind(value)}", origin)
        return _INVALID
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        number = math.inf if value > 0 else -math.inf
        if dotted.endswith("_seconds"):
            problems.add(dotted, _TOO_LONG, origin)
            return _INVALID
    if not math.isfinite(number):
        problems.add(dotted, "must be a finite number", origin)
        return _INVALID
    return number


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _convert_bool(dotted: str, value: object, origin: str, problems: _Collector) -> object:
    if isinstance(value, _EnvText):
        text = value.strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        problems.add(dotted, f"must be true or false, got {_short(str(value))}", origin)
        return _INVALID
    if not isinstance(value, bool):
        problems.add(dotted, f"must be true or false, got {_kind(value)}", origin)
        return _INVALID
    return value


def _convert_mode(dotted: str, value: object, origin: str, problems: _Collector) -> object:
    hint = 'must be a quoted octal string like "0640"'
    if isinstance(value, _UnquotedMode):
        problems.add(
            dotted, f"{hint} (YAML read {value.text} as the number {value.number})", origin
        )
        return _INVALID
    if not isinstance(value, str) or not _MODE_PATTERN.fullmatch(value.strip()):
        shown = _short(value) if isinstance(value, str) else _kind(value)
        problems.add(dotted, f"{hint}, got {shown}", origin)
        return _INVALID
    mode = int(value.strip(), 8)
    if mode & 0o007:
        problems.add(
            dotted, f"{value.strip()} lets every user read the token; use 0640 or 0600", origin
        )
        return _INVALID
    return mode


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        try:
            text = str(value)
        except ValueError:  # an int beyond the interpreter's digit limit
            text = ""
        return f"the number {text}" if 0 < len(text) <= 40 else "a number of very many digits"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    return f"a {type(value).__name__}"


def _short(text: str) -> str:
    """A user's value in a message: quoted, escaped, and cut to a sane length."""
    return repr(text) if len(text) <= 60 else repr(text[:60]) + "..."


def _raw_scalar(text: str, section: str, key: str) -> str:
    """The source text of ``section.key`` in a YAML document, for error messages."""
    import yaml

    node = yaml.compose(text, Loader=_loader())
    if isinstance(node, yaml.MappingNode):
        for name, child in node.value:
            if name.value == section and isinstance(child, yaml.MappingNode):
                for inner, leaf in child.value:
                    if inner.value == key and isinstance(leaf, yaml.ScalarNode):
                        return str(leaf.value)
    return "?"


_TOO_LONG = f"must be ≤ {MAX_SECONDS} (10^7 s, about 116 days)"
_Check = tuple[str, str, Callable[[float], bool], str]
_RANGES: tuple[_Check, ...] = (
    ("api", "timeout_seconds", lambda v: v > 0, "must be > 0"),
    ("refresh", "at_fraction", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("refresh", "jitter_fraction", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    ("refresh", "first_from_fraction", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    ("refresh", "min_interval_seconds", lambda v: v >= 0, "must be ≥ 0"),
    ("refresh", "max_interval_seconds", lambda v: v > 0, "must be > 0"),
    ("backoff", "initial_seconds", lambda v: v > 0, "must be > 0"),
    ("backoff", "max_seconds", lambda v: v > 0, "must be > 0"),
    ("backoff", "multiplier", lambda v: v >= 1, "must be ≥ 1"),
    # Beyond this a schedule overflows datetime and crashes `run`; it is always a typo.
    *(
        (section, key, lambda v: v <= MAX_SECONDS, _TOO_LONG)
        for section, key in (
            ("api", "timeout_seconds"),
            ("refresh", "min_interval_seconds"),
            ("refresh", "max_interval_seconds"),
            ("backoff", "initial_seconds"),
            ("backoff", "max_seconds"),
        )
    ),
)


def _check_ranges(
    values: dict[str, dict[str, Any]], sources: Mapping[str, str], problems: _Collector
) -> None:
    for section, key, ok, message in _RANGES:
        if key in values[section] and not ok(values[section][key]):
            problems.add(f"{section}.{key}", message, sources[f"{section}.{key}"])
            del values[section][key]
    for names in (
        ("refresh", "min_interval_seconds", "max_interval_seconds"),
        ("backoff", "initial_seconds", "max_seconds"),
    ):
        _check_order(values, sources, problems, names)
    _check_first_fraction(values["refresh"], sources, problems)

    api = values["api"]
    if "base_url" in api:
        problem = _url_problem(
            api["base_url"], allow_insecure=api.get("allow_insecure_http", False)
        )
        if problem:
            problems.add("api.base_url", problem, sources["api.base_url"])
            del api["base_url"]
    if "listen" in values["server"] and values["server"]["listen"]:
        try:
            parse_listen(values["server"]["listen"])
        except ValueError as exc:
            problems.add("server.listen", str(exc), sources["server.listen"])
            del values["server"]["listen"]
    for key, allowed in (("level", LOG_LEVELS), ("format", LOG_FORMATS)):
        if key in values["log"] and values["log"][key] not in allowed:
            problems.add(
                f"log.{key}", f"must be one of {', '.join(allowed)}", sources[f"log.{key}"]
            )
            del values["log"][key]
    if "key_env" in api and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", api["key_env"]):
        problems.add("api.key_env", "must be an environment variable name", sources["api.key_env"])
        del api["key_env"]
    if api.get("ca_bundle") is not None:
        problem = _ca_bundle_problem(api["ca_bundle"])
        if problem:
            problems.add("api.ca_bundle", problem, sources["api.ca_bundle"])
            del api["ca_bundle"]
    _check_token_paths(values["token"], sources, problems)


def _ca_bundle_problem(path: Path) -> str | None:
    """Why ``path`` cannot verify a server: checked once here, not retried as a TLS failure."""
    try:
        data = read_small_file(path, CA_BUNDLE_READ_LIMIT)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    except InputError as exc:
        return f"{path} {exc.problem}"
    if _PEM_CERTIFICATE not in data:
        return f"{path} holds no PEM certificate (no {_PEM_CERTIFICATE.decode()} line)"
    return None


def _check_token_paths(
    token: dict[str, Any], sources: Mapping[str, str], problems: _Collector
) -> None:
    """A path that can never be a token file is a mistake to report now, not to retry."""
    for key in ("path", "session_path"):
        path = token.get(key)
        if path is None:
            continue
        problem = _output_path_problem(path)
        if problem:
            problems.add(f"token.{key}", problem, sources[f"token.{key}"])
            del token[key]
    path = token.get("path", TokenConfig().path)
    session_path = token.get("session_path")
    if session_path is not None and Path(session_path).absolute() == Path(path).absolute():
        problems.add(
            "token.session_path",
            f"must not be token.path ({path}): each needs a file of its own",
            sources["token.session_path"],
        )
        del token["session_path"]


def _output_path_problem(path: Path) -> str | None:
    try:
        mode = path.lstat().st_mode
    except OSError:
        mode = None  # missing, or not for us to see: check_writable speaks at start
    # A symlink is replaced by the rename, whatever it points at.
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        return f"{path} is {_file_type(mode)}, not a regular file"
    parent = path.parent
    try:
        parent_mode = parent.stat().st_mode
    except OSError:
        return None
    if not stat.S_ISDIR(parent_mode):
        return f"{parent} is {_file_type(parent_mode)}, not a directory"
    return None


def _check_first_fraction(
    refresh: dict[str, Any], sources: Mapping[str, str], problems: _Collector
) -> None:
    """The first token's refresh window starts at first_from/at of T: never past T."""
    first, at = (
        refresh.get(name, getattr(RefreshPolicy(), name))
        for name in ("first_from_fraction", "at_fraction")
    )
    if first > at:
        origin = sources.get("refresh.first_from_fraction") or sources.get(
            "refresh.at_fraction", ""
        )
        problems.add(
            "refresh.first_from_fraction", f"must be ≤ refresh.at_fraction ({at:g})", origin
        )
        refresh.pop("first_from_fraction", None)
        refresh.pop("at_fraction", None)


def _check_order(
    values: dict[str, dict[str, Any]],
    sources: Mapping[str, str],
    problems: _Collector,
    names: tuple[str, str, str],
) -> None:
    section, low, high = names
    defaults = SECTIONS[section]()
    low_value = values[section].get(low, getattr(defaults, low))
    high_value = values[section].get(high, getattr(defaults, high))
    if low_value > high_value:
        origin = sources.get(f"{section}.{high}") or sources.get(f"{section}.{low}", "")
        problems.add(f"{section}.{high}", f"must be ≥ {section}.{low} ({low_value:g})", origin)
        values[section].pop(low, None)
        values[section].pop(high, None)


def _url_problem(url: str, *, allow_insecure: bool) -> str | None:  # noqa: PLR0911 - one per rule
    if any(c.isspace() or not c.isprintable() for c in url):
        return "must not hold spaces or control characters"
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        port = parts.port
    except ValueError:
        return f"is not a valid URL: {_short(url)}"
    if parts.scheme not in ("http", "https"):
        return "must start with https:// (or http:// for local use)"
    if not hostname:
        return "must name a host"
    port_text = parts.netloc.rpartition(":")[2] if port is not None else ""
    if port is not None and (not _DIGITS.fullmatch(port_text) or not 1 <= port <= 65535):
        return f"has a port that is not 1-65535: {_short(port_text)}"
    if parts.username or parts.password:
        return "must not carry credentials"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    if parts.scheme == "http" and not allow_insecure and not _is_loopback(hostname):
        return (
            f"http:// would send the API key in clear text to {hostname}; use https://, "
            "or set api.allow_insecure_http: true if the network in between is yours"
        )
    return None


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        address = ipaddress.ip_address(hostname)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) → (host, port); an empty host means all interfaces.

    Port 0 asks the OS for a free port (tests and demos use it).
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep or not _DIGITS.fullmatch(port_text) or int(port_text) > 65535:
        raise ValueError(f"must be host:port like 0.0.0.0:9877, got {_short(listen)}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets like [::1]:9877, got {_short(listen)}")
    if any(not c.isprintable() or c.isspace() for c in host):
        raise ValueError(
            f"the host must not hold spaces or control characters, got {_short(listen)}"
        )
    return host or "0.0.0.0", int(port_text)  # noqa: S104


def _resolve_group(
    group: str | None, sources: Mapping[str, str], problems: _Collector
) -> int | None:
    if group is None:
        return None
    if _DIGITS.fullmatch(group):
        if int(group) >= 2**32 - 1:  # (gid_t)-1 means "leave unchanged" to chown
            problems.add(
                "token.group", f"gid {_short(group)} is out of range", sources["token.group"]
            )
            return None
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        problems.add(
            "token.group", f"unknown group {_short(group)}", sources.get("token.group", "")
        )
        return None


def _find_key(  # noqa: PLR0911 - one return per place the key can be
    api: ApiConfig, environ: Mapping[str, str], sources: Mapping[str, str], problems: _Collector
) -> tuple[KeySource | None, list[str]]:
    """Where the key is, after reading it once by the same rules every re-read follows."""
    warnings: list[str] = []
    if api.key_file is not None:
        origin = sources.get("api.key_file", "")
        source = KeySource("file", str(api.key_file))
        try:
            source.read(environ)
            readable_by_all = api.key_file.stat().st_mode & stat.S_IROTH
        except OSError as exc:
            problems.add("api.key_file", f"cannot read {api.key_file}: {exc.strerror}", origin)
            return None, warnings
        except InputError as exc:
            problems.add("api.key_file", f"{api.key_file} {exc.problem}", origin)
            return None, warnings
        if readable_by_all:
            warnings.append(
                f"api.key_file: {api.key_file} is readable by every user; chmod 0600 or 0640 it"
            )
        return source, warnings
    if environ.get(api.key_env, "").strip(_WHITESPACE + _BOM):
        source = KeySource("env", api.key_env)
        try:
            source.read(environ)
        except InputError as exc:
            problems.add(
                "api.key_env",
                f"environment variable {api.key_env} {exc.problem}",
                sources.get("api.key_env", ""),
            )
            return None, warnings
        return source, warnings
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        return _find_credential(Path(credentials), api, environ, sources, problems), warnings
    _no_key(api, sources, problems)
    return None, warnings


def _find_credential(  # noqa: PLR0911 - one return per way a directory fails
    directory: Path,
    api: ApiConfig,
    environ: Mapping[str, str],
    sources: Mapping[str, str],
    problems: _Collector,
) -> KeySource | None:
    """The systemd credential, if there is one; an unusable directory is a problem to name."""

    def problem(message: str) -> None:
        problems.add("CREDENTIALS_DIRECTORY", message, "")

    candidate = directory / CREDENTIAL_NAME
    try:
        if not stat.S_ISDIR(directory.stat().st_mode):
            problem(f"{directory} is not a directory")
            return None
        candidate.stat()
    except FileNotFoundError as exc:
        if exc.filename == str(candidate):
            _no_key(api, sources, problems)
        else:
            problem(f"cannot read {directory}: {exc.strerror}")
        return None
    except OSError as exc:  # EACCES on a mode-000 directory, ELOOP, ...
        problem(f"cannot read {exc.filename or directory}: {exc.strerror}")
        return None
    except ValueError:
        problem("the directory's name holds a NUL byte")
        return None
    source = KeySource("credential", str(candidate))
    try:
        source.read(environ)
    except OSError as exc:
        problem(f"cannot read {candidate}: {exc.strerror}")
        return None
    except InputError as exc:
        problem(f"systemd credential {candidate} {exc.problem}")
        return None
    return source


def _no_key(api: ApiConfig, sources: Mapping[str, str], problems: _Collector) -> None:
    # An api.key_env holding the key itself (a careless paste) must not be echoed here:
    # only a conventional variable name is.
    variable = (
        f"the environment variable {api.key_env}"
        if _ENV_NAME.fullmatch(api.key_env)
        else "the environment variable api.key_env names"
    )
    problems.add(
        "api.key_file",
        f"no API key found: set api.key_file, {variable}, "
        f"or a systemd credential named {CREDENTIAL_NAME}",
        sources.get("api.key_file", ""),
    )


def effective(config: Config) -> dict[str, dict[str, object]]:
    """The configuration as plain data for ``check-config``: no secret in it."""
    out: dict[str, dict[str, object]] = {}
    for section, key in keys():
        value = getattr(getattr(config, section), key)
        if key == "mode":
            value = f"0{value:o}"
        elif isinstance(value, Path):
            value = str(value)
        out.setdefault(section, {})[key] = value
    return out
