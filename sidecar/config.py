"""Configuration: defaults < YAML file < environment < command line, validated in one pass.

Each section is a frozen dataclass whose fields declare their kind (``config_fields``): the
kind converts a value from the file or from ``FORESTREET_SIDECAR_<SECTION>_<KEY>`` and holds
its constraint. A check that needs two keys is a small function next to its section.
``load`` collects every problem before failing, names each by its ``section.key`` (and the
variable it came from), and keeps where the API key lives (``key``), never the key.
"""

from __future__ import annotations

import grp
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from sidecar import config_fields as kinds
from sidecar.config_fields import ENV_PREFIX, EnvText, InvalidValueError, Kind, Problems, Setting

# An import "X as X" is a re-export: callers know these names as the configuration's.
from sidecar.config_fields import parse_listen as parse_listen  # noqa: PLC0414
from sidecar.config_files import InputError as InputError  # noqa: PLC0414
from sidecar.config_files import (
    ca_bundle_problem,
    output_path_problem,
    read_entries,
    written_item_text,
    written_text,
)
from sidecar.errors import ConfigError
from sidecar.key import KeySource as KeySource  # noqa: PLC0414
from sidecar.key import Secret as Secret  # noqa: PLC0414
from sidecar.key import find_key, proxy_credential_problem
from sidecar.outputs import FORMATS, template_problems
from sidecar.policy import BackoffPolicy, RefreshPolicy

CONFIG_ENV = "FORESTREET_SIDECAR_CONFIG"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")


Check = Callable[["Values"], None]  # adds problems through Values.reject


def at_most(low: str, high: str) -> Check:
    """A check that ``low`` ≤ ``high`` (a minimum and a maximum of the same section)."""

    def check(values: Values) -> None:
        if values[low] > values[high]:
            values.reject(high, f"must be ≥ {values.section}.{low} ({values[low]:g})", also=(low,))

    check.__name__ = f"{low}_at_most_{high}"
    return check


# --- api ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """The ``api`` section: where to ask, and how long to wait."""

    base_url: str = field(default="https://rest.forestreet.com", metadata=kinds.url())
    # Read (with key_env and the credentials directory) by sidecar.key.find_key.
    key_file: Path | None = field(default=None, metadata=kinds.optional_path())
    key_env: str = field(default="FORESTREET_API_KEY", metadata=kinds.variable_name())
    timeout_seconds: float = field(default=10.0, metadata=kinds.seconds(positive=True))
    ca_bundle: Path | None = field(default=None, metadata=kinds.optional_path(ca_bundle_problem))
    allow_insecure_http: bool = field(default=False, metadata=kinds.flag())
    # An explicit HTTP proxy: https:// goes through it with CONNECT (sidecar.api).
    proxy_url: str | None = field(default=None, metadata=kinds.proxy_url())
    # user:password for the proxy, read like the key (sidecar.key.read_proxy_credential).
    proxy_auth_file: Path | None = field(
        default=None, metadata=kinds.optional_path(proxy_credential_problem)
    )

    @property
    def session_url(self) -> str:
        return self.base_url.rstrip("/") + "/v2/auth/session"


def _proxy_sees_no_key(api: Values) -> None:
    """Through a proxy, http:// would hand it the key; a credential needs a proxy to go to."""
    if api["proxy_url"] is None:
        if api["proxy_auth_file"] is not None:
            api.reject("proxy_auth_file", "is set but api.proxy_url is not")
        return
    if urlsplit(api["base_url"]).scheme == "http" and not api["allow_insecure_http"]:
        api.reject(
            "proxy_url",
            "with an http:// api.base_url the proxy would read the API key in clear text; "
            "use https:// (tunnelled with CONNECT: the proxy sees only host and port), "
            "or set api.allow_insecure_http: true if the proxy may see the key",
            also=("base_url",),
        )


def _http_only_to_loopback(api: Values) -> None:
    """The key in clear text crosses no network unless api.allow_insecure_http says so."""
    parts = urlsplit(api["base_url"])
    hostname = parts.hostname or ""
    if (
        parts.scheme == "http"
        and not api["allow_insecure_http"]
        and not kinds.is_loopback(hostname)
    ):
        api.reject(
            "base_url",
            f"http:// would send the API key in clear text to {hostname}; use https://, "
            "or set api.allow_insecure_http: true if the network in between is yours",
        )


# --- token -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenConfig:
    """The ``token`` section: where and how the token is written."""

    path: Path = field(
        default=Path("/var/run/forestreet/token"), metadata=kinds.required_path(output_path_problem)
    )
    mode: int = field(default=0o640, metadata=kinds.octal_mode())
    group: str | None = field(default=None, metadata=kinds.group_name())
    gid: int | None = field(default=None, metadata=kinds.derived())  # of group, by _group_gid
    session_path: Path | None = field(
        default=None, metadata=kinds.optional_path(output_path_problem)
    )
    include_refresh_token: bool = field(default=False, metadata=kinds.flag())


def _session_path_of_its_own(token: Values) -> None:
    """Two outputs in one file would overwrite each other on every refresh."""
    session_path = token["session_path"]
    if session_path is not None and session_path.absolute() == token["path"].absolute():
        token.reject(
            "session_path",
            f"must not be token.path ({token['path']}): each needs a file of its own",
        )


def _group_gid(token: Values) -> None:
    """token.gid from token.group: an unknown group is a problem now, not at the first write."""
    group = token["group"]
    if group is None:
        return
    if kinds.DIGITS.fullmatch(group):
        if int(group) >= 2**32 - 1:  # (gid_t)-1 means "leave unchanged" to chown
            token.reject("group", f"gid {kinds.short(group)} is out of range")
        else:
            token.derive("gid", int(group))
        return
    try:
        token.derive("gid", grp.getgrnam(group).gr_gid)
    except KeyError:
        token.reject("group", f"unknown group {kinds.short(group)}")


# --- outputs: a list in the file, each item a small section of its own -----------------


@dataclass(frozen=True, slots=True)
class OutputConfig:
    """One item of ``outputs``: a further file written after every new token.

    Read from the file only: an environment variable cannot hold a list. ``mode`` and
    ``group`` left out are token.mode and token.group.
    """

    path: Path = field(default=Path(), metadata=kinds.required_path(output_path_problem))
    format: str = field(default="raw", metadata=kinds.choice(*FORMATS))
    mode: int | None = field(default=None, metadata=kinds.octal_mode())
    group: str | None = field(default=None, metadata=kinds.group_name())
    gid: int | None = field(default=None, metadata=kinds.derived())  # of group, by _group_gid
    template: str | None = field(default=None, metadata=kinds.text())


def _template_only_for_templates(output: Values) -> None:
    """A template without format template would be ignored; a template format needs one."""
    if output.refused("format") or output.refused("template"):
        return
    template = output.given.get("template")
    if output["format"] != "template":
        if template is not None:
            output.reject("template", "only for format template", also=("format",))
    elif template is None:
        output.reject("template", "is required with format template (a string.Template text)")


def _required(*names: str) -> Check:
    def check(values: Values) -> None:
        for each in names:
            if each not in values.given and not values.refused(each):
                values.reject(each, "is required")

    check.__name__ = f"requires_{'_'.join(names)}"
    return check


# --- refresh and backoff: policy.py's dataclasses, which know nothing of configuration ---

REFRESH_KINDS: dict[str, Kind] = {
    "at_fraction": kinds.fraction(zero=False),
    "jitter_fraction": kinds.fraction(),
    "first_from_fraction": kinds.fraction(),
    "min_interval_seconds": kinds.seconds(),
    "max_interval_seconds": kinds.seconds(positive=True),
}


def _first_from_within_at(refresh: Values) -> None:
    """The first token's refresh window starts at first_from/at of T: never past T."""
    if refresh["first_from_fraction"] > refresh["at_fraction"]:
        refresh.reject(
            "first_from_fraction",
            f"must be ≤ refresh.at_fraction ({refresh['at_fraction']:g})",
            also=("at_fraction",),
        )


BACKOFF_KINDS: dict[str, Kind] = {
    "initial_seconds": kinds.seconds(positive=True),
    "max_seconds": kinds.seconds(positive=True),
    "multiplier": kinds.number(ge=1),
}


# --- server and log ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The ``server`` section: the probe and metrics address."""

    listen: str = field(default="0.0.0.0:9877", metadata=kinds.listen_address())  # empty disables

    @property
    def address(self) -> tuple[str, int] | None:
        return parse_listen(self.listen) if self.listen else None


@dataclass(frozen=True, slots=True)
class LogConfig:
    """The ``log`` section."""

    level: str = field(default="info", metadata=kinds.choice(*LOG_LEVELS))
    format: str = field(default="json", metadata=kinds.choice(*LOG_FORMATS))


# --- notify: telling the application (sidecar.hooks) -------------------------------------

NOTIFY_MAX_RETRIES = 20  # the 20th retry waits 0.1 * 2^19 s, about 14.6 h


@dataclass(frozen=True, slots=True)
class HttpHook:
    """``notify.http``: a request to the application, by default only to this host."""

    url: str = field(metadata=kinds.url())
    method: str = field(default="POST", metadata=kinds.choice("GET", "POST"))
    allow_remote: bool = field(default=False, metadata=kinds.flag())


def _webhook_stays_local(hook: HttpHook) -> str | None:
    """Pod-local is loopback: the containers of a pod share its network namespace, and the
    pod's own addresses are not knowable in a configuration written before it starts."""
    host = urlsplit(hook.url).hostname or ""
    if hook.allow_remote or kinds.is_loopback(host):
        return None
    return (
        f"url {kinds.short(hook.url)} is not on this host (127.0.0.0/8, ::1, localhost); "
        "set notify.http.allow_remote: true to send it elsewhere"
    )


@dataclass(frozen=True, slots=True)
class SignalHook:
    """``notify.signal``: a signal to the process whose pid ``pid_file`` holds (read afresh)."""

    name: str = field(metadata=kinds.signal_name(refused=("SIGKILL", "SIGSTOP")))
    pid_file: Path = field(metadata=kinds.required_path())


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """The ``notify`` section: how the application hears of a new token. The lists and
    mappings come from the file only; timeout_seconds and retries also from variables."""

    command: tuple[str, ...] = field(default=(), metadata=kinds.argv())
    http: HttpHook | None = field(
        default=None, metadata=kinds.record(HttpHook, _webhook_stays_local)
    )
    signal: SignalHook | None = field(default=None, metadata=kinds.record(SignalHook))
    timeout_seconds: float = field(default=30.0, metadata=kinds.seconds(positive=True))
    retries: int = field(default=10, metadata=kinds.whole_number(le=NOTIFY_MAX_RETRIES))

    @property
    def methods(self) -> tuple[str, ...]:
        """The configured methods, in the order they run."""
        given = (("command", bool(self.command)), ("http", self.http), ("signal", self.signal))
        return tuple(method for method, on in given if on)


# --- the sections together ---------------------------------------------------------------


class Section(NamedTuple):
    """A section's dataclass, the Setting of each of its keys, and its cross-key checks."""

    cls: type[Any]
    settings: Mapping[str, Setting]
    defaults: Mapping[str, object]
    checks: tuple[Check, ...] = ()


def section(
    cls: type[Any], declared: Mapping[str, Kind] | None = None, checks: tuple[Check, ...] = ()
) -> Section:
    """The Section of ``cls`` from its fields' metadata, or from ``declared`` for a class that
    knows nothing of configuration (policy.py's). A field with no kind (and not derived), or
    without a default, is refused here, at import: no key can skip its conversion."""
    settings: dict[str, Setting] = {}
    defaults: dict[str, object] = {}
    for each in fields(cls):
        metadata = (declared or {}).get(each.name, each.metadata)
        if each.default is MISSING:
            raise TypeError(f"{cls.__name__}.{each.name} has no default")
        defaults[each.name] = each.default
        if kinds.SETTING in metadata:
            settings[each.name] = metadata[kinds.SETTING]
        elif not metadata.get(kinds.DERIVED):
            raise TypeError(f"{cls.__name__}.{each.name} declares no kind of value")
    unknown = set(declared or {}) - set(defaults)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(sorted(unknown))}")
    return Section(cls, settings, defaults, checks)


SCHEMA: dict[str, Section] = {
    "api": section(ApiConfig, checks=(_http_only_to_loopback, _proxy_sees_no_key)),
    "token": section(TokenConfig, checks=(_session_path_of_its_own, _group_gid)),
    "refresh": section(
        RefreshPolicy,
        REFRESH_KINDS,
        (at_most("min_interval_seconds", "max_interval_seconds"), _first_from_within_at),
    ),
    "backoff": section(BackoffPolicy, BACKOFF_KINDS, (at_most("initial_seconds", "max_seconds"),)),
    "server": section(ServerConfig),
    "log": section(LogConfig),
    "notify": section(NotifyConfig),
}
SECTIONS: dict[str, type[Any]] = {name: spec.cls for name, spec in SCHEMA.items()}
# Top-level lists in the file: each item is read like a section named ``outputs[i]``.
OUTPUTS = section(OutputConfig, checks=(_required("path", "format"), _template_only_for_templates))
LISTS = ("outputs",)


_ENV_KEY = KeySource("env", "FORESTREET_API_KEY")


@dataclass(frozen=True, slots=True)
class Config:
    """The effective configuration, with where each value came from."""

    api: ApiConfig = field(default_factory=ApiConfig)
    token: TokenConfig = field(default_factory=TokenConfig)
    refresh: RefreshPolicy = field(default_factory=RefreshPolicy)
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    outputs: tuple[OutputConfig, ...] = ()
    key: KeySource = _ENV_KEY
    sources: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def keys() -> list[tuple[str, str]]:
    """Every configurable ``(section, key)``, in documentation order."""
    return [(name, key) for name, spec in SCHEMA.items() for key in spec.settings]


def env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section}_{key}".upper()


_KEYS = set(keys())


class Values:
    """One section's values as ``load`` gathers them, for its checks.

    ``values[key]`` is what the user set, if it passed, or else the default; a check's
    ``reject`` adds a problem and drops the keys involved, so the dataclass gets defaults.
    """

    def __init__(
        self, section: str, spec: Section, sources: dict[str, str], problems: Problems
    ) -> None:
        self.section = section
        self.spec = spec
        self.given: dict[str, object] = {}
        self._sources = sources
        self._problems = problems
        self._offered: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        return self.given.get(key, self.spec.defaults[key])

    def convert(self, key: str, value: object, origin: str) -> None:
        self._offered.add(key)
        try:
            self.given[key] = self.spec.settings[key].convert(value)
        except InvalidValueError as exc:
            self._problems.add(f"{self.section}.{key}", exc.message, origin)
        else:
            self._sources[f"{self.section}.{key}"] = origin

    def refused(self, key: str) -> bool:
        """The user set ``key`` and it did not pass."""
        return key in self._offered and key not in self.given

    def reject(self, key: str, message: str, *, also: tuple[str, ...] = ()) -> None:
        """A problem with ``key`` (from where it, or else one of ``also``, was set)."""
        origin = next(
            (o for k in (key, *also) if (o := self._sources.get(f"{self.section}.{k}"))), ""
        )
        self._problems.add(f"{self.section}.{key}", message, origin)
        for dropped in (key, *also):
            self.given.pop(dropped, None)

    def derive(self, key: str, value: object) -> None:
        self.given[key] = value


def load(
    path: Path | None,
    environ: Mapping[str, str],
    overrides: Mapping[str, object] | None = None,
    *,
    need_key: bool = True,
) -> Config:
    """Build the effective configuration or raise ConfigError with every problem.

    Without ``need_key`` (``status``, which only asks the running sidecar) no API key
    is looked for, and ``key`` is the default source.
    """
    problems = Problems()
    raw: dict[tuple[str, str], tuple[object, str]] = {}
    listed: dict[str, list[object]] = {name: [] for name in LISTS}
    document = ""  # the file's text
    if path is None and environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
    if path is not None:
        entries, document = read_entries(path, _KEYS, problems, listed)
        for (name, item), value in entries.items():
            if SCHEMA[name].settings[item].written and type(value) is int:
                raw[(name, item)] = (
                    kinds.Written(value, written_text(document, name, item)),
                    str(path),
                )
            else:
                raw[(name, item)] = (value, str(path))
    _read_environ(environ, raw, problems)
    for dotted, value in (overrides or {}).items():
        name, _, item = dotted.partition(".")
        raw[(name, item)] = (value, "command line")

    sources: dict[str, str] = {}
    values = {name: Values(name, spec, sources, problems) for name, spec in SCHEMA.items()}
    for (name, item), (value, origin) in raw.items():
        values[name].convert(item, value, origin)
    for name, spec in SCHEMA.items():
        for check in spec.checks:
            check(values[name])
    sections = {name: spec.cls(**values[name].given) for name, spec in SCHEMA.items()}
    configured = _outputs(
        listed["outputs"], (str(path), document), sections["token"], sources, problems
    )

    api: ApiConfig = sections["api"]
    key: KeySource | None = None
    warnings: list[str] = []
    # A key_file or key_env already reported as wrong is not searched past: "no API key
    # found" on top would send the reader after the wrong problem.
    if not need_key:
        key = _ENV_KEY
    elif not (values["api"].refused("key_file") or values["api"].refused("key_env")):
        key, warnings = find_key(api.key_file, api.key_env, environ, sources, problems)
    if problems.lines:
        raise ConfigError(problems.lines)
    assert key is not None  # noqa: S101 - find_key reports a problem otherwise
    return Config(
        **sections, outputs=configured, key=key, sources=sources, warnings=tuple(warnings)
    )


def _outputs(
    items: list[object],
    where: tuple[str, str],  # the file's name and text
    token: TokenConfig,
    sources: dict[str, str],
    problems: Problems,
) -> tuple[OutputConfig, ...]:
    """The ``outputs`` items, each checked like a section, their paths against each other."""
    taken = {token.path.absolute(): "token.path"}
    if token.session_path is not None:
        taken.setdefault(token.session_path.absolute(), "token.session_path")
    result = []
    origin, text = where
    for index, item in enumerate(items):
        name = f"outputs[{index}]"
        if not isinstance(item, dict):
            problems.add(
                name, f"must be a mapping of path, format, ..., got {kinds.kind(item)}", ""
            )
            continue
        values = Values(name, OUTPUTS, sources, problems)
        for key, value in item.items():
            if not isinstance(key, str) or key not in OUTPUTS.settings:
                problems.add(f"{name}.{kinds.name(key)}", "unknown key", origin)
            elif OUTPUTS.settings[key].written and type(value) is int:
                typed = written_item_text(text, "outputs", index, key)
                values.convert(key, kinds.Written(value, typed), origin)
            else:
                values.convert(key, value, origin)
        _check_output(values, token, taken)
        result.append(OutputConfig(**values.given))  # type: ignore[arg-type]
    return tuple(result)


def _check_output(output: Values, token: TokenConfig, taken: dict[Path, str]) -> None:
    """One item's checks; then mode and group default to token.mode and token.group."""
    for check in (*OUTPUTS.checks, _group_gid):
        check(output)
    template = output.given.get("template")
    if isinstance(template, str) and output["format"] == "template":
        for problem in template_problems(
            template, include_refresh_token=token.include_refresh_token
        ):
            output.reject("template", problem)
    path = output.given.get("path")
    if isinstance(path, Path):
        other = taken.setdefault(path.absolute(), f"{output.section}.path")
        if other != f"{output.section}.path":
            output.reject("path", f"must not be {other} ({path}): each needs a file of its own")
    if "group" not in output.given:
        output.derive("group", token.group)
        output.derive("gid", token.gid)
    if output["mode"] is None:
        output.derive("mode", token.mode)


def _read_environ(
    environ: Mapping[str, str],
    raw: dict[tuple[str, str], tuple[object, str]],
    problems: Problems,
) -> None:
    known = {env_name(name, key): (name, key) for name, key in _KEYS}
    for variable, value in environ.items():
        if not variable.startswith(ENV_PREFIX) or variable == CONFIG_ENV:
            continue
        if variable not in known:
            problems.add(variable, "unknown variable (typo?)", variable)
            continue
        raw[known[variable]] = (EnvText(value), variable)


def effective(config: Config) -> dict[str, Any]:
    """The configuration as plain data for ``check-config``: no secret in it."""
    out: dict[str, Any] = {}
    for name, spec in SCHEMA.items():
        values = getattr(config, name)
        out[name] = {key: kind.show(getattr(values, key)) for key, kind in spec.settings.items()}
    if config.outputs:
        out["outputs"] = [_shown_output(each) for each in config.outputs]
    return out


def _shown_output(output: OutputConfig) -> dict[str, object]:
    return {
        key: kind.show(getattr(output, key))
        for key, kind in OUTPUTS.settings.items()
        if getattr(output, key) is not None
    }
