"""The kinds of configuration value: one converter each, its constraint declared with it.

A section's dataclass declares each key as ``name: type = field(default=..., metadata=kind)``
where the kind (``url()``, ``seconds(positive=True)``, ``octal_mode()``, ...) holds the
``Setting`` that turns what the file or the environment gave into the field's value, or
raises ``InvalidValueError`` with the message. ``config.load`` walks the fields: a new key
is one field, a new kind of value one function here.
"""

from __future__ import annotations

import ipaddress
import math
import re
import signal
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

ENV_PREFIX = "FORESTREET_SIDECAR_"
SETTING = "sidecar.setting"  # the key of a field's metadata holding its Setting
DERIVED = "sidecar.derived"  # a field computed from others, not a key a user may set
MAX_SECONDS = 10**7  # about 116 days: longer is a typo, and breaks date arithmetic
TOO_LONG = f"must be ≤ {MAX_SECONDS} (10^7 s, about 116 days)"

_MODE_PATTERN = re.compile(r"0?[0-7]{3}")
# str.isdigit() and float() take '²' and '٨'; only ASCII digits are numbers here.
DIGITS = re.compile(r"[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
WHITESPACE = " \t\r\n\v\f"
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class InvalidValueError(ValueError):
    """A value a kind refuses; ``message`` follows the key in the problem line."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class EnvText(str):
    """Text from the environment: numbers and booleans are parsed from it."""

    __slots__ = ()


class Written(NamedTuple):
    """An integer YAML read from the file, with its text there (for ``Setting.written``)."""

    number: int
    text: str


class Setting(NamedTuple):
    """How one key is read: ``convert`` (raising InvalidValueError) and ``show`` for check-config.

    ``written``: an integer from the file reaches ``convert`` as ``Written``, so the
    message can quote what the user typed (``mode: 0640`` is the number 416 to YAML).
    """

    convert: Callable[[object], Any]
    show: Callable[[Any], object] = lambda value: value
    written: bool = False


Kind = Mapping[str, Setting]  # a field's metadata: ``field(default=..., metadata=kind)``


def kind_of(setting: Setting) -> Kind:
    return {SETTING: setting}


def derived() -> Mapping[str, object]:
    """The metadata of a field the loader computes from others (``token.gid`` of the group)."""
    return {DERIVED: True}


class Problems:
    """Gathers problems so one run reports all of them, one line each."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, key: str, message: str, origin: str) -> None:
        suffix = f" (from {printable(origin)})" if origin.startswith(ENV_PREFIX) else ""
        self.lines.append(f"{printable(key)}: {printable(message)}{suffix}")


# --- the kinds -------------------------------------------------------------------------


def text(*, empty: bool = False, check: Callable[[str], str | None] | None = None) -> Kind:
    """A string; ``empty`` lets it be empty (or YAML's nothing); ``check`` names a problem."""

    def convert(value: object) -> str:
        result = _text(value, empty=empty)
        problem = check(result) if check is not None and result else None
        if problem:
            raise InvalidValueError(problem)
        return result

    return kind_of(Setting(convert))


def choice(*options: str) -> Kind:
    def convert(value: object) -> str:
        result = _text(value, empty=False)
        if result not in options:
            raise InvalidValueError(f"must be one of {', '.join(options)}")
        return result

    return kind_of(Setting(convert))


def variable_name() -> Kind:
    """The name of an environment variable."""
    return text(
        check=lambda name: (
            None if _VARIABLE.fullmatch(name) else "must be an environment variable name"
        )
    )


def required_path(check: Callable[[Path], str | None] | None = None) -> Kind:
    """A path that must be given; ``check`` names why it can never do (checked at load)."""
    return _path(check, empty=False)


def optional_path(check: Callable[[Path], str | None] | None = None) -> Kind:
    """A path, or empty for none."""
    return _path(check, empty=True)


def _path(check: Callable[[Path], str | None] | None, *, empty: bool) -> Kind:
    def convert(value: object) -> Path | None:
        result = _text(value, empty=empty)
        if not result:
            return None
        where = Path(result)
        problem = check(where) if check is not None else None
        if problem:
            raise InvalidValueError(problem)
        return where

    return kind_of(Setting(convert, show=lambda value: None if value is None else str(value)))


def number(
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    too_big: str | None = None,
) -> Kind:
    """A finite number (``int`` or ``float`` in the file, ASCII decimal text in the environment).

    With a lower bound and ``le`` the message names the interval (``must be in (0, 1]``);
    ``too_big`` is the message of ``le`` alone, and of an integer too large for a float.
    """
    low_message = f"must be > {gt:g}" if gt is not None else f"must be ≥ {ge or 0:g}"
    high_message = too_big or f"must be ≤ {le or 0:g}"
    if too_big is None and le is not None and (gt, ge) != (None, None):
        low = f"({gt:g}" if gt is not None else f"[{ge or 0:g}"
        low_message = high_message = f"must be in {low}, {le:g}]"

    def convert(value: object) -> float:
        result = _number(value, too_big=too_big, too_small=low_message)
        if (gt is not None and not result > gt) or (ge is not None and not result >= ge):
            raise InvalidValueError(low_message)
        if le is not None and not result <= le:
            raise InvalidValueError(high_message)
        return result

    return kind_of(Setting(convert))


def seconds(*, positive: bool = False) -> Kind:
    """A duration: ≥ 0 (or > 0), at most 10^7 s."""
    if positive:
        return number(gt=0, le=MAX_SECONDS, too_big=TOO_LONG)
    return number(ge=0, le=MAX_SECONDS, too_big=TOO_LONG)


def fraction(*, zero: bool = True) -> Kind:
    """A fraction in [0, 1], or (0, 1] without ``zero``."""
    return number(ge=0, le=1) if zero else number(gt=0, le=1)


def flag() -> Kind:
    """A boolean: YAML's true/false, or true/yes/on/1 and false/no/off/0 in the environment."""

    def convert(value: object) -> bool:
        if isinstance(value, EnvText):
            word = value.strip().lower()
            if word in _TRUE | _FALSE:
                return word in _TRUE
            raise InvalidValueError(f"must be true or false, got {short(str(value))}")
        if not isinstance(value, bool):
            raise InvalidValueError(f"must be true or false, got {kind(value)}")
        return value

    return kind_of(Setting(convert))


def octal_mode() -> Kind:
    """A file mode as a quoted octal string; one that lets every user read is refused."""
    hint = 'must be a quoted octal string like "0640"'

    def convert(value: object) -> int:
        if isinstance(value, Written):
            raise InvalidValueError(f"{hint} (YAML read {value.text} as the number {value.number})")
        if not isinstance(value, str) or not _MODE_PATTERN.fullmatch(value.strip()):
            shown = short(value) if isinstance(value, str) else kind(value)
            raise InvalidValueError(f"{hint}, got {shown}")
        mode = int(value.strip(), 8)
        if mode & 0o007:
            raise InvalidValueError(
                f"{value.strip()} lets every user read the token; use 0640 or 0600"
            )
        return mode

    return kind_of(Setting(convert, show=lambda mode: f"0{mode:o}", written=True))


def group_name() -> Kind:
    """A group name or numeric gid (YAML's number is taken as the gid), or empty for none.

    Whether it exists is the section's check: it also yields the gid.
    """

    def convert(value: object) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return _text(value, empty=True) or None

    return kind_of(Setting(convert))


def listen_address() -> Kind:
    """``host:port`` as ``parse_listen`` reads it, or empty to disable."""

    def convert(value: object) -> str:
        result = _text(value, empty=True)
        if result:
            try:
                parse_listen(result)
            except ValueError as exc:
                raise InvalidValueError(str(exc)) from None
        return result

    return kind_of(Setting(convert))


def url() -> Kind:
    """An http(s) URL of a host, without credentials, query or fragment.

    Whether ``http://`` may leave the machine is a check of the section that holds it.
    """

    def convert(value: object) -> str:
        result = _text(value, empty=False)
        problem = _url_problem(result)
        if problem:
            raise InvalidValueError(problem)
        return result

    return kind_of(Setting(convert))


def proxy_url() -> Kind:
    """``http://host:port`` of an HTTP proxy, or empty for none; never quoted in a message
    (a URL with a password in it must not end up in a log)."""

    def convert(value: object) -> str | None:
        result = _text(value, empty=True)
        if not result:
            return None
        problem = _proxy_url_problem(result)
        if problem:
            raise InvalidValueError(problem)
        return result

    return kind_of(Setting(convert))


def _proxy_url_problem(address: str) -> str | None:  # noqa: PLR0911 - one per rule
    shape = "must be http://host:port"
    port_message = f"{shape} with a port 1-65535, like http://proxy.internal:3128"
    try:
        parts = urlsplit(address)
        hostname = parts.hostname
    except ValueError:
        return f"{shape} (it is not a valid URL)"
    try:
        port = parts.port
    except ValueError:
        port = None
    if "@" in parts.netloc:
        return f"{shape} without user or password: put user:password in api.proxy_auth_file"
    if any(c.isspace() or not c.isprintable() for c in address):
        return f"{shape} (it holds spaces or control characters)"
    if parts.scheme == "https":
        return (
            f"{shape}: an https:// proxy is not supported (the API's TLS runs end to end "
            "through the proxy's CONNECT tunnel anyway); a proxy password goes in "
            "api.proxy_auth_file"
        )
    if parts.scheme != "http":
        return shape
    if not hostname:
        return f"{shape} (it names no host)"
    port_text = parts.netloc.rpartition(":")[2]
    if port is None or not DIGITS.fullmatch(port_text) or not 1 <= port <= 65535:
        return port_message
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"{shape} (no path, query or fragment)"
    return None


def whole_number(*, ge: int = 0, le: int) -> Kind:
    """An integer in [ge, le] (YAML's integer in the file, ASCII digits in the environment)."""
    message = f"must be a whole number in [{ge}, {le}]"

    def convert(value: object) -> int:
        if isinstance(value, EnvText):
            stripped = value.strip(WHITESPACE)
            if not DIGITS.fullmatch(stripped) or len(stripped) > 12:
                raise InvalidValueError(f"{message}, got {short(str(value))}")
            value = int(stripped)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidValueError(f"{message}, got {kind(value)}")
        if not ge <= value <= le:
            raise InvalidValueError(message)
        return value

    return kind_of(Setting(convert))


FROM_THE_FILE = "set it in the configuration file: a variable cannot hold a {0}"


def argv() -> Kind:
    """A command as a list of arguments, from the file only; empty (or nothing) for none.

    A string is refused, not split: no shell ever reads the configuration.
    """

    def convert(value: object) -> tuple[str, ...]:
        if isinstance(value, EnvText):
            raise InvalidValueError(FROM_THE_FILE.format("list"))
        if value is None:
            return ()
        if isinstance(value, str):
            raise InvalidValueError(
                "must be a list of arguments, not a shell string "
                f'(write ["/path/to/program", "--flag"]), got {short(value)}'
            )
        if not isinstance(value, list):
            raise InvalidValueError(f"must be a list of arguments, got {kind(value)}")
        arguments = []
        for index, item in enumerate(value):
            try:
                arguments.append(_text(item, empty=index > 0))
            except InvalidValueError as exc:
                raise InvalidValueError(f"argument {index} {exc.message}") from None
        return tuple(arguments)

    return kind_of(Setting(convert, show=lambda value: list(value) if value else None))


def record(cls: type[Any], check: Callable[[Any], str | None] | None = None) -> Kind:
    """A mapping of the file (not a variable) read into the dataclass ``cls`` by the kinds
    of its fields, or nothing for none. ``check`` names a problem between its keys."""

    def convert(value: object) -> Any:
        if isinstance(value, EnvText):
            raise InvalidValueError(FROM_THE_FILE.format("mapping"))
        if value is None:
            return None
        if not isinstance(value, dict):
            raise InvalidValueError(f"must be a mapping, got {kind(value)}")
        known = {each.name: each for each in fields(cls)}
        given: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str) or key not in known:
                raise InvalidValueError(f"has the unknown key {name(key)}")
            try:
                given[key] = known[key].metadata[SETTING].convert(item)
            except InvalidValueError as exc:
                raise InvalidValueError(f"{key} {exc.message}") from None
        for each in fields(cls):
            if each.default is MISSING and each.name not in given:
                raise InvalidValueError(f"needs {each.name}")
        result = cls(**given)
        problem = check(result) if check is not None else None
        if problem:
            raise InvalidValueError(problem)
        return result

    def show(value: Any) -> object:
        if value is None:
            return None
        return {
            each.name: each.metadata[SETTING].show(getattr(value, each.name))
            for each in fields(cls)
        }

    return kind_of(Setting(convert, show=show))


def signal_name(*, refused: tuple[str, ...] = ()) -> Kind:
    """A signal's name as ``kill -l`` knows it (SIGHUP, or HUP), stored as SIGHUP."""

    def convert(value: object) -> str:
        result = _text(value, empty=False).strip()
        full = result if result.startswith("SIG") else f"SIG{result}"
        if full not in signal.Signals.__members__ or full in refused:
            others = f" (not {', '.join(refused)})" if refused else ""
            raise InvalidValueError(
                f"must be a signal name like SIGHUP or SIGUSR1{others}, got {short(result)}"
            )
        return full

    return kind_of(Setting(convert))


# --- what the kinds share ----------------------------------------------------------------


def _text(value: object, *, empty: bool) -> str:
    if value is None and empty:
        return ""
    if not isinstance(value, str):
        raise InvalidValueError(f"must be a string, got {kind(value)}")
    if not value and not empty:
        raise InvalidValueError("must not be empty")
    if "\x00" in value:
        raise InvalidValueError("must not hold a NUL byte")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: bytes of the environment that are not UTF-8
        raise InvalidValueError("must be UTF-8 text (it holds bytes that are not)") from None
    return str(value)


def _number(value: object, *, too_big: str | None, too_small: str) -> float:
    if isinstance(value, EnvText):
        stripped = value.strip(WHITESPACE)
        if _NON_FINITE.fullmatch(stripped):
            raise InvalidValueError("must be a finite number")
        if not _NUMBER.fullmatch(stripped):
            raise InvalidValueError(f"must be a number, got {short(str(value))}")
        value = float(stripped)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidValueError(f"must be a number, got {kind(value)}")
    try:
        result = float(value)
    except OverflowError:  # an integer of hundreds of digits
        if too_big is not None:
            raise InvalidValueError(too_big if value > 0 else too_small) from None
        raise InvalidValueError("must be a finite number") from None
    if not math.isfinite(result):
        raise InvalidValueError("must be a finite number")
    return result


def _url_problem(address: str) -> str | None:  # noqa: PLR0911 - one per rule
    if any(c.isspace() or not c.isprintable() for c in address):
        return "must not hold spaces or control characters"
    try:
        parts = urlsplit(address)
        hostname = parts.hostname
        port = parts.port
    except ValueError:
        return f"is not a valid URL: {short(address)}"
    if parts.scheme not in ("http", "https"):
        return "must start with https:// (or http:// for local use)"
    if not hostname:
        return "must name a host"
    port_text = parts.netloc.rpartition(":")[2] if port is not None else ""
    if port is not None and (not DIGITS.fullmatch(port_text) or not 1 <= port <= 65535):
        return f"has a port that is not 1-65535: {short(port_text)}"
    if parts.username or parts.password:
        return "must not carry credentials"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    return None


def is_loopback(hostname: str) -> bool:
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
    if not sep or not DIGITS.fullmatch(port_text) or int(port_text) > 65535:
        raise ValueError(f"must be host:port like 0.0.0.0:9877, got {short(listen)}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets like [::1]:9877, got {short(listen)}")
    if any(not c.isprintable() or c.isspace() for c in host):
        raise ValueError(
            f"the host must not hold spaces or control characters, got {short(listen)}"
        )
    return host or "0.0.0.0", int(port_text)  # noqa: S104


def kind(value: object) -> str:
    """What a value the user gave is, for a message: never more than a short line."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        try:
            shown = str(value)
        except ValueError:  # an int beyond the interpreter's digit limit
            shown = ""
        return f"the number {shown}" if 0 < len(shown) <= 40 else "a number of very many digits"
    if isinstance(value, str):
        return f"the string {short(value)}"
    return f"a {type(value).__name__}"


def short(value: str) -> str:
    """A user's value in a message: quoted, escaped, and cut to a sane length."""
    return repr(value) if len(value) <= 60 else repr(value[:60]) + "..."


def name(value: object) -> str:
    """A user's key or section name, fit for the start of a problem line."""
    shown = str(value)
    if len(shown) > 60:
        return repr(shown[:60] + "...")
    return shown if shown.isprintable() and shown else repr(shown)


def printable(line: str) -> str:
    """One line of text a terminal shows as it is: control characters and lone surrogates
    escaped, so a problem is always exactly one line."""
    if line.isprintable():
        return line
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
