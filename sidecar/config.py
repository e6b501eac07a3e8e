"""Configuration: defaults < YAML file < environment < command line, validated in one pass.

``load`` collects every problem before failing, names each by its ``section.key``
(and the variable it came from), and keeps where the API key lives, never the key.
"""

from __future__ import annotations

import grp
import math
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
        """The current key; OSError/KeyError are the caller's to translate."""
        if self.kind == "env":
            value = environ.get(self.location, "")
        else:
            value = Path(self.location).read_text(encoding="utf-8")
        value = value.strip()
        if not value:
            raise ValueError(f"the API key from {self.describe()} is empty")
        return Secret(value)

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
        suffix = f" (from {origin})" if origin.startswith(ENV_PREFIX) else ""
        self.problems.append(f"{key}: {message}{suffix}")


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
    key, warnings = _find_key(api, environ, sources, problems)
    if problems.problems:
        raise ConfigError(problems.problems)
    assert key is not None  # noqa: S101 - _find_key reports a problem otherwise
    return Config(**sections, key=key, sources=sources, warnings=tuple(warnings))


def _read_file(
    path: Path, raw: dict[tuple[str, str], tuple[object, str]], problems: _Collector
) -> None:
    import yaml  # only a file needs it; the environment alone does not

    origin = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.add("config", f"cannot read {path}: {exc.strerror or exc}", origin)
        return
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problems.add("config", f"{path} is not valid YAML{where}", origin)
        return
    if data is None:
        return
    if not isinstance(data, dict):
        problems.add("config", f"{path} must be a mapping of sections", origin)
        return
    for section, entries in data.items():
        if section not in SECTIONS:
            problems.add(str(section), "unknown section", origin)
            continue
        if entries is None:
            continue
        if not isinstance(entries, dict):
            problems.add(section, "must be a mapping of keys", origin)
            continue
        for key, value in entries.items():
            if (section, key) not in _KEYS:
                problems.add(f"{section}.{key}", "unknown key", origin)
                continue
            if section == "token" and key == "mode" and isinstance(value, int):
                raw[(section, key)] = (
                    _UnquotedMode(value, _raw_scalar(text, section, key)),
                    origin,
                )
            else:
                raw[(section, key)] = (value, origin)


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
        text = _text(dotted, value, origin, problems, allow_empty=True)
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
    return str(value)


def _convert_number(dotted: str, value: object, origin: str, problems: _Collector) -> object:
    if isinstance(value, _EnvText):
        try:
            value = float(value.strip())
        except ValueError:
            problems.add(dotted, f"must be a number, got {str(value)!r}", origin)
            return _INVALID
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.add(dotted, f"must be a number, got {_kind(value)}", origin)
        return _INVALID
    number = float(value)
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
        problems.add(dotted, f"must be true or false, got {str(value)!r}", origin)
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
        shown = repr(str(value)) if isinstance(value, str) else _kind(value)
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
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"a {type(value).__name__}"


def _raw_scalar(text: str, section: str, key: str) -> str:
    """The source text of ``section.key`` in a YAML document, for error messages."""
    import yaml

    node = yaml.compose(text)
    if isinstance(node, yaml.MappingNode):
        for name, child in node.value:
            if name.value == section and isinstance(child, yaml.MappingNode):
                for inner, leaf in child.value:
                    if inner.value == key and isinstance(leaf, yaml.ScalarNode):
                        return str(leaf.value)
    return "?"


_Check = tuple[str, str, Callable[[float], bool], str]
_RANGES: tuple[_Check, ...] = (
    ("api", "timeout_seconds", lambda v: v > 0, "must be > 0"),
    ("refresh", "at_fraction", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("refresh", "jitter_fraction", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    ("refresh", "min_interval_seconds", lambda v: v >= 0, "must be ≥ 0"),
    ("refresh", "max_interval_seconds", lambda v: v > 0, "must be > 0"),
    ("backoff", "initial_seconds", lambda v: v > 0, "must be > 0"),
    ("backoff", "max_seconds", lambda v: v > 0, "must be > 0"),
    ("backoff", "multiplier", lambda v: v >= 1, "must be ≥ 1"),
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

    api = values["api"]
    if "base_url" in api:
        problem = _url_problem(api["base_url"])
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


def _url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "must start with https:// (or http:// for local use)"
    if not parts.hostname:
        return "must name a host"
    if parts.username or parts.password:
        return "must not carry credentials"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    return None


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) → (host, port); an empty host means all interfaces."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"must be host:port like 0.0.0.0:9877, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets like [::1]:9877, got {listen!r}")
    return host or "0.0.0.0", int(port_text)  # noqa: S104


def _resolve_group(
    group: str | None, sources: Mapping[str, str], problems: _Collector
) -> int | None:
    if group is None:
        return None
    if group.isdigit():
        if int(group) >= 2**32 - 1:  # (gid_t)-1 means "leave unchanged" to chown
            problems.add("token.group", f"gid {group} is out of range", sources["token.group"])
            return None
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        problems.add("token.group", f"unknown group {group!r}", sources.get("token.group", ""))
        return None


def _find_key(
    api: ApiConfig, environ: Mapping[str, str], sources: Mapping[str, str], problems: _Collector
) -> tuple[KeySource | None, list[str]]:
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
        except (ValueError, UnicodeDecodeError):
            problems.add("api.key_file", f"{api.key_file} is empty or not text", origin)
            return None, warnings
        if readable_by_all:
            warnings.append(
                f"api.key_file: {api.key_file} is readable by every user; chmod 0600 or 0640 it"
            )
        return source, warnings
    if environ.get(api.key_env, "").strip():
        return KeySource("env", api.key_env), warnings
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        candidate = Path(credentials) / CREDENTIAL_NAME
        if candidate.is_file():
            return KeySource("credential", str(candidate)), warnings
    problems.add(
        "api.key_file",
        f"no API key found: set api.key_file, the environment variable {api.key_env}, "
        f"or a systemd credential named {CREDENTIAL_NAME}",
        sources.get("api.key_file", ""),
    )
    return None, warnings


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
