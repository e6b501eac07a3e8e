"""Configuration: precedence, every kind of bad input, and secrets kept out of output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.config import (
    Config,
    KeySource,
    Secret,
    effective,
    env_name,
    keys,
    load,
    parse_listen,
)
from sidecar.errors import ConfigError
from tests.conftest import API_KEY, REPO, base_env, run_command

KEY_ENV = {"FORESTREET_API_KEY": "k-123456789"}


def problems_of(path: Path | None, environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path, environ)
    return caught.value.problems


def yaml_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_match_the_spec() -> None:
    config = load(None, KEY_ENV)
    assert config.api.base_url == "https://rest.forestreet.com"
    assert config.api.session_url == "https://rest.forestreet.com/v2/auth/session"
    assert config.api.timeout_seconds == 10
    assert config.token.path == Path("/var/run/forestreet/token")
    assert config.token.mode == 0o640
    assert config.refresh.at_fraction == 0.8
    assert config.refresh.jitter_fraction == 0.1
    assert config.refresh.min_interval_seconds == 5
    assert config.refresh.max_interval_seconds == 3600
    assert config.backoff.initial_seconds == 1
    assert config.backoff.max_seconds == 300
    assert config.backoff.multiplier == 2
    assert config.server.listen == "0.0.0.0:9877"
    assert (config.log.level, config.log.format) == ("info", "json")
    assert config.key == KeySource("env", "FORESTREET_API_KEY")


def test_precedence_is_command_line_then_environment_then_file(tmp_path: Path) -> None:
    path = yaml_file(
        tmp_path,
        "log: {level: warning, format: console}\nrefresh: {at_fraction: 0.5}\n"
        "api: {base_url: 'http://file.example/', allow_insecure_http: true}\n",
    )
    environ = {
        **KEY_ENV,
        "FORESTREET_SIDECAR_LOG_LEVEL": "error",
        "FORESTREET_SIDECAR_REFRESH_AT_FRACTION": "0.6",
    }
    config = load(path, environ, {"log.level": "debug"})
    assert config.log.level == "debug"
    assert config.log.format == "console"
    assert config.refresh.at_fraction == 0.6
    assert config.api.session_url == "http://file.example/v2/auth/session"
    assert config.sources["log.level"] == "command line"
    assert config.sources["refresh.at_fraction"] == "FORESTREET_SIDECAR_REFRESH_AT_FRACTION"
    assert config.sources["log.format"] == str(path)


def test_config_path_from_the_environment(tmp_path: Path) -> None:
    path = yaml_file(tmp_path, "token: {path: /tmp/x/token}\n")
    config = load(None, {**KEY_ENV, "FORESTREET_SIDECAR_CONFIG": str(path)})
    assert config.token.path == Path("/tmp/x/token")


def test_every_key_has_an_environment_variable() -> None:
    environ = {
        **KEY_ENV,
        env_name("api", "timeout_seconds"): "2.5",
        env_name("token", "include_refresh_token"): "true",
        env_name("token", "mode"): "0600",
        env_name("token", "group"): str(os.getgid()),
        env_name("server", "listen"): "",
        env_name("backoff", "multiplier"): "3",
    }
    config = load(None, environ)
    assert config.api.timeout_seconds == 2.5
    assert config.token.include_refresh_token is True
    assert config.token.mode == 0o600
    assert config.token.gid == os.getgid()
    assert config.server.address is None
    assert config.backoff.multiplier == 3
    assert len({env_name(s, k) for s, k in keys()}) == len(keys())  # one each, no clash


def test_unquoted_mode_is_explained(tmp_path: Path) -> None:
    path = yaml_file(tmp_path, "token:\n  mode: 0640\n")
    assert problems_of(path, KEY_ENV) == [
        'token.mode: must be a quoted octal string like "0640" (YAML read 0640 as the number 416)'
    ]


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = yaml_file(
        tmp_path,
        "api:\n  timout_seconds: 3\n  base_url: ftp://x\n"
        "refresh:\n  at_fraction: 2\n  min_interval_seconds: '5'\n"
        "backoff:\n  initial_seconds: 0\n  multiplier: 0.5\n"
        "token:\n  mode: '0644'\n  group: no-such-group-here\n"
        "server: {listen: 'nonsense'}\nlog: {level: loud}\nextra: {}\n",
    )
    environ = {
        **KEY_ENV,
        "FORESTREET_SIDECAR_TOKEN_PAHT": "/x",
        "FORESTREET_SIDECAR_API_TIMEOUT_SECONDS": "soon",
    }
    problems = problems_of(path, environ)
    expected = [
        "api.timout_seconds: unknown key",
        "api.base_url: must start with https://",
        "refresh.at_fraction: must be in (0, 1]",
        "refresh.min_interval_seconds: must be a number, got the string '5'",
        "backoff.initial_seconds: must be > 0",
        "backoff.multiplier: must be ≥ 1",
        "token.mode: 0644 lets every user read the token",
        "token.group: unknown group 'no-such-group-here'",
        "server.listen: must be host:port",
        "log.level: must be one of debug, info, warning, error",
        "extra: unknown section",
        "FORESTREET_SIDECAR_TOKEN_PAHT: unknown variable (typo?) (from FORESTREET_SIDECAR_TOKEN_PAHT)",
        "api.timeout_seconds: must be a number, got 'soon' (from FORESTREET_SIDECAR_API_TIMEOUT_SECONDS)",
    ]
    for line in expected:
        assert any(p.startswith(line) for p in problems), (line, problems)
    assert len(problems) == len(expected)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- a\n- b\n", "config: "),
        ("api: [1]\n", "api: must be a mapping"),
        (
            "api: {timeout_seconds: true}\n",
            "api.timeout_seconds: must be a number, got the boolean",
        ),
        ("api: {timeout_seconds: .nan}\n", "api.timeout_seconds: must be a finite number"),
        ("api: {key_env: 'not a name'}\n", "api.key_env: must be an environment variable name"),
        ("api: {base_url: 'https://user:pw@host'}\n", "api.base_url: must not carry credentials"),
        ("token: {include_refresh_token: 'yes'}\n", "token.include_refresh_token: must be true"),
        ("token: {mode: 640}\n", "token.mode: must be a quoted octal string"),
        ("token: {mode: '999'}\n", "token.mode: must be a quoted octal string"),
        ("refresh: {min_interval_seconds: 10, max_interval_seconds: 5}\n", "refresh.max_interval"),
        ("backoff: {initial_seconds: 10, max_seconds: 5}\n", "backoff.max_seconds: must be ≥"),
        ("server: {listen: '::1:80'}\n", "server.listen: an IPv6 address needs brackets"),
        ("log: {format: xml}\n", "log.format: must be one of json, console"),
        ("api: {timeout_seconds: [\n", "config: "),
    ],
)
def test_bad_values_are_named(tmp_path: Path, text: str, problem: str) -> None:
    problems = problems_of(yaml_file(tmp_path, text), KEY_ENV)
    assert any(p.startswith(problem) for p in problems), problems


def test_missing_key_is_a_config_error() -> None:
    (problem,) = problems_of(None, {})
    assert problem.startswith("api.key_file: no API key found")


def test_key_sources_in_order(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("  file-key \n")
    key_file.chmod(0o600)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "forestreet-api-key").write_text("cred-key")
    environ = {"FORESTREET_API_KEY": "env-key", "CREDENTIALS_DIRECTORY": str(creds)}

    by_file = load(None, {**environ, "FORESTREET_SIDECAR_API_KEY_FILE": str(key_file)})
    assert by_file.key.read(environ) == Secret("file-key")
    assert load(None, environ).key.read(environ) == Secret("env-key")
    only_creds = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert load(None, only_creds).key.read(only_creds) == Secret("cred-key")


def test_key_file_problems(tmp_path: Path) -> None:
    missing = {"FORESTREET_SIDECAR_API_KEY_FILE": str(tmp_path / "nope")}
    assert problems_of(None, missing)[0].startswith(f"api.key_file: cannot read {tmp_path}/nope")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "is empty" in problems_of(None, {"FORESTREET_SIDECAR_API_KEY_FILE": str(empty)})[0]


def test_world_readable_key_file_gets_a_warning(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("k")
    key_file.chmod(0o644)
    config = load(None, {"FORESTREET_SIDECAR_API_KEY_FILE": str(key_file)})
    assert config.warnings and "readable by every user" in config.warnings[0]


def test_secret_repr_hides_the_value() -> None:
    assert repr(Secret("hunter2")) == "<SECRET>"
    assert "hunter2" not in str(Secret("hunter2"))


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("0.0.0.0:9877", ("0.0.0.0", 9877)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        (":9877", ("0.0.0.0", 9877)),
        ("[::1]:9877", ("::1", 9877)),
    ],
)
def test_listen_addresses(listen: str, address: tuple[str, int]) -> None:
    assert parse_listen(listen) == address


def test_effective_config_holds_no_secret() -> None:
    config = load(None, KEY_ENV)
    assert "k-123456789" not in repr(effective(config))
    assert "k-123456789" not in repr(config)
    assert isinstance(config, Config)


def test_example_config_documents_every_key_with_its_default() -> None:
    """config.example.yaml parses and, with its values, equals the defaults."""
    import yaml

    from sidecar.config import LISTS, OUTPUTS

    text = (REPO / "config.example.yaml").read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    # A top-level list (outputs) is empty by default; its item keys are in the comments.
    for name in LISTS:
        assert document.pop(name) == []
    for key in OUTPUTS.settings:
        assert f"#   {key} " in text, key
    documented = {(s, k) for s, entries in document.items() for k in entries}
    assert documented == set(keys())
    defaults = effective(load(None, KEY_ENV))
    for section, entries in document.items():
        for key, value in entries.items():
            assert defaults[section][key] == value or (
                value is None and not defaults[section][key]
            ), (section, key)


def test_check_config_exits_78_with_one_line_per_problem_and_no_traceback(tmp_path: Path) -> None:
    path = yaml_file(tmp_path, "token:\n  mode: 0640\nrefresh: {at_fraction: 7}\n")
    result = run_command(["--config", str(path), "check-config"], base_env())
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        'token.mode: must be a quoted octal string like "0640" (YAML read 0640 as the number 416)',
        "refresh.at_fraction: must be in (0, 1]",
    ]
    assert result.stdout == ""


def test_environment_problems_name_the_variable() -> None:
    result = run_command(["check-config"], base_env(FORESTREET_SIDECAR_BACKOFF_MULTIPLIER="x"))
    assert result.returncode == 78
    assert "(from FORESTREET_SIDECAR_BACKOFF_MULTIPLIER)" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_prints_the_effective_config_with_the_key_redacted(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY)
    key_file.chmod(0o600)
    env = base_env(FORESTREET_SIDECAR_API_KEY_FILE=str(key_file))
    result = run_command(["check-config"], env)
    assert result.returncode == 0, result.stderr
    assert API_KEY not in result.stdout + result.stderr
    assert "timeout_seconds: 10.0" in result.stdout
    assert f"# API key: from file {key_file} (sha256:" in result.stdout
    assert "# api.key_file: from FORESTREET_SIDECAR_API_KEY_FILE" in result.stdout


def test_usage_errors_exit_2() -> None:
    assert run_command(["frobnicate"]).returncode == 2
    assert run_command(["once", "--timeout", "soon"]).returncode == 2
    version = run_command(["--version"])
    assert version.returncode == 0
    assert version.stdout.startswith("forestreet-sidecar ")


def test_first_from_fraction_has_its_variable_and_stays_at_most_at_fraction() -> None:
    variable = "FORESTREET_SIDECAR_REFRESH_FIRST_FROM_FRACTION"
    config = load(None, {**KEY_ENV, variable: "0.3"})
    assert config.refresh.first_from_fraction == 0.3
    assert load(None, KEY_ENV).refresh.first_from_fraction == 0.1
    with pytest.raises(ConfigError) as raised:
        load(None, {**KEY_ENV, variable: "1.5"})
    assert raised.value.problems == [
        f"refresh.first_from_fraction: must be in [0, 1] (from {variable})"
    ]
    with pytest.raises(ConfigError) as raised:
        load(None, {**KEY_ENV, variable: "0.9"})
    assert raised.value.problems == [
        f"refresh.first_from_fraction: must be ≤ refresh.at_fraction (0.8) (from {variable})"
    ]


def test_every_field_of_every_section_declares_its_kind() -> None:
    """No key can skip conversion: each field has a Setting (or is derived, and no key)."""
    import dataclasses

    from sidecar.config import SCHEMA, SECTIONS
    from sidecar.config_fields import DERIVED, Setting

    assert list(SCHEMA) == list(SECTIONS)
    for name, spec in SCHEMA.items():
        for each in dataclasses.fields(spec.cls):
            if each.metadata.get(DERIVED):
                assert each.name not in spec.settings, (name, each.name)
                assert (name, each.name) not in keys()
            else:
                assert isinstance(spec.settings[each.name], Setting), (name, each.name)
                assert (name, each.name) in keys()
    assert [(name, key) for name, spec in SCHEMA.items() for key in spec.settings] == keys()


def test_a_field_without_a_kind_is_refused_at_import() -> None:
    import dataclasses

    from sidecar.config import section
    from sidecar.config_fields import flag

    @dataclasses.dataclass(frozen=True)
    class Declared:
        on: bool = dataclasses.field(default=False, metadata=flag())

    @dataclasses.dataclass(frozen=True)
    class Undeclared:
        on: bool = dataclasses.field(default=False, metadata=flag())
        forgotten: int = 3

    assert list(section(Declared).settings) == ["on"]
    with pytest.raises(TypeError, match=r"Undeclared\.forgotten declares no kind"):
        section(Undeclared)
    with pytest.raises(TypeError, match="has no field typo"):
        section(Declared, {"typo": flag()})


def test_every_default_reads_back_as_itself_from_file_and_environment(tmp_path: Path) -> None:
    """What check-config shows for a default is a value the same key accepts, both ways."""
    import yaml

    from sidecar.config import SCHEMA

    defaults = effective(load(None, KEY_ENV))
    document = {
        s: {k: v for k, v in entries.items() if v is not None} for s, entries in defaults.items()
    }
    path = yaml_file(tmp_path, yaml.safe_dump(document))
    assert effective(load(path, KEY_ENV)) == defaults
    environ = {
        env_name(s, k): str(v).lower() if isinstance(v, bool) else str(v)
        for s, entries in document.items()
        for k, v in entries.items()
    }
    assert effective(load(None, {**KEY_ENV, **environ})) == defaults
    assert set(SCHEMA) == set(defaults)
