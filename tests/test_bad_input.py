"""Bad local input: the key, the configuration file and its values, files of every wrong type.

Whatever it is given, loading the configuration ends in a Config or in ConfigError's one line
per problem (exit 78 from the command): never a traceback, a hang, a huge read, or the key.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from random import Random
from typing import Any

import pytest

from sidecar.config import Config, KeySource, Secret, load
from sidecar.errors import ConfigError
from sidecar.fake_api import FakeApi
from tests.conftest import REPO, base_env, write_config

# Two halves that must never appear in any output, whichever way the key is mangled.
HEAD = "HeadOfTheSecretKey7Qx"
TAIL = "TailOfTheSecretKey9Zw"
KEY = HEAD + TAIL
ENV_KEY = {"FORESTREET_API_KEY": "k-env-123456789"}
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def secret_forms(secret: str) -> list[str]:
    """The key in every encoding a leak could take: clear, repr, JSON, URL, base64."""
    raw = secret.encode("utf-8", "surrogateescape")
    forms = {
        secret,
        repr(secret),
        repr(secret)[1:-1],
        json.dumps(secret),
        json.dumps(secret)[1:-1],
        urllib.parse.quote(raw),
        urllib.parse.quote_plus(raw),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }
    return sorted(form for form in forms if form)


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in (*secrets, HEAD, TAIL):
        for form in secret_forms(secret):
            assert form not in text, f"{form!r} leaked"


def problems_of(path: Path | None, environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path, environ)
    text = "\n".join(caught.value.problems)
    assert_no_secret(text)
    for line in caught.value.problems:
        assert "\n" not in line
    return caught.value.problems


def key_file_env(path: Path) -> dict[str, str]:
    return {"FORESTREET_SIDECAR_API_KEY_FILE": str(path)}


def one_problem(path: Path | None, environ: dict[str, str]) -> str:
    problems = problems_of(path, environ)
    assert len(problems) == 1, problems
    return problems[0]


def in_thread(function: Callable[[], Any], timeout: float = 5) -> Any:
    """``function()``'s result or exception; the test fails, instead of hanging, on a hang."""
    result: list[Any] = []

    def target() -> None:
        try:
            result.append(function())
        except BaseException as exc:  # noqa: BLE001 - handed back to the test to inspect
            result.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert result, f"still running after {timeout}s (a hang)"
    return result[0]


def yaml_file(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- the key: files of every wrong type ---------------------------------------------------


def test_key_file_that_is_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "key"
    os.mkfifo(fifo)
    outcome = in_thread(lambda: load(None, key_file_env(fifo)))
    assert isinstance(outcome, ConfigError), outcome
    assert outcome.problems == [
        f"api.key_file: {fifo} is a FIFO, not a regular file (from FORESTREET_SIDECAR_API_KEY_FILE)"
    ]


def test_key_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    problem = one_problem(None, key_file_env(tmp_path))
    assert problem.startswith(f"api.key_file: {tmp_path} is a directory, not a regular file")


def test_key_file_that_is_a_device_is_refused_without_reading(tmp_path: Path) -> None:
    outcome = in_thread(lambda: load(None, key_file_env(Path("/dev/zero"))))
    assert isinstance(outcome, ConfigError), outcome
    assert "/dev/zero is a character device, not a regular file" in outcome.problems[0]


def test_key_file_symlink_loop_is_a_config_error(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop")
    problem = one_problem(None, key_file_env(loop))
    assert problem.startswith(f"api.key_file: cannot read {loop}: Too many levels of symbolic")


def test_key_file_through_a_symlink_is_read(tmp_path: Path) -> None:
    """Kubernetes Secret volumes are symlinks into ..data: they must keep working."""
    real = tmp_path / "real"
    real.write_text(KEY)
    link = tmp_path / "key"
    link.symlink_to(real)
    config = load(None, key_file_env(link))
    assert config.key.read({}) == Secret(KEY)


def test_a_100_mb_sparse_key_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    big = tmp_path / "key"
    with big.open("wb") as handle:
        handle.truncate(100 * 1024 * 1024)
    started = time.monotonic()
    problem = one_problem(None, key_file_env(big))
    assert time.monotonic() - started < 1
    assert f"{big} is larger than 8 KiB" in problem


def test_a_key_file_just_under_the_read_limit_of_spaces_around_a_key_is_fine(
    tmp_path: Path,
) -> None:
    padded = tmp_path / "key"
    padded.write_text(" " * 4000 + KEY + "\n" * 4000)
    assert load(None, key_file_env(padded)).key.read({}) == Secret(KEY)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (f"{HEAD}\n{TAIL}\n", "holds a line break at position 22"),
        (f"{HEAD}\r\n{TAIL}", "holds a line break at position 22"),
        (f"\u201c{KEY}\u201d", "holds a character an HTTP header cannot carry at position 1"),
        (f"{HEAD} {TAIL}", "holds a character an HTTP header cannot carry at position 22"),
        (f"{HEAD}\t{TAIL}", "holds a character an HTTP header cannot carry at position 22"),
        (f"{HEAD}\x00{TAIL}", "holds a character an HTTP header cannot carry at position 22"),
        (f"{HEAD}\u00e9{TAIL}", "holds a character an HTTP header cannot carry at position 22"),
        (f"{HEAD}\x7f{TAIL}", "holds a character an HTTP header cannot carry at position 22"),
        ("A" * 4097, "is longer than 4096 characters"),
        ("", "is empty"),
        (" \r\n\t ", "is empty"),
        ("\ufeff\n", "is empty"),
    ],
)
def test_key_file_content_problems_are_named_without_the_key(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "key"
    path.write_bytes(content.encode("utf-8"))
    line = one_problem(None, key_file_env(path))
    assert line == f"api.key_file: {path} {problem} (from FORESTREET_SIDECAR_API_KEY_FILE)"


def test_key_file_in_latin_1_is_named_not_decoded(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(HEAD.encode() + b"\xe9" + TAIL.encode())
    line = one_problem(None, key_file_env(path))
    assert "holds a character an HTTP header cannot carry at position 22" in line


@pytest.mark.parametrize(
    "content",
    [
        f"\ufeff{KEY}",
        f"\ufeff{KEY}\r\n",
        f"  {KEY}\n\n",
        f"\n\ufeff {KEY}\t\n",
        "A" * 4096,
        "!~" * 10,
    ],
)
def test_key_file_whitespace_and_a_bom_are_stripped(tmp_path: Path, content: str) -> None:
    path = tmp_path / "key"
    path.write_bytes(content.encode("utf-8"))
    value = load(None, key_file_env(path)).key.read({}).value
    assert value == content.strip().lstrip("\ufeff").strip()
    assert value.isascii()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (f"{HEAD}\n{TAIL}", "holds a line break at position 22"),
        (f"{HEAD}\udcff{TAIL}", "holds a character an HTTP header cannot carry at position 22"),
        (f"\u2018{KEY}\u2019", "holds a character an HTTP header cannot carry at position 1"),
        ("B" * 5000, "is longer than 4096 characters"),
    ],
)
def test_key_from_the_environment_follows_the_same_rules(value: str, problem: str) -> None:
    line = one_problem(None, {"FORESTREET_API_KEY": value})
    assert line == f"api.key_env: environment variable FORESTREET_API_KEY {problem}"


def test_key_from_the_environment_is_stripped_of_a_bom() -> None:
    config = load(None, {"FORESTREET_API_KEY": f"\ufeff{KEY}\n"})
    assert config.key.read({"FORESTREET_API_KEY": f"\ufeff{KEY}\n"}) == Secret(KEY)


def test_key_from_a_systemd_credential_follows_the_same_rules(tmp_path: Path) -> None:
    credential = tmp_path / "forestreet-api-key"
    credential.write_text(f"{HEAD}\n{TAIL}\n")
    line = one_problem(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert line == (
        f"CREDENTIALS_DIRECTORY: systemd credential {credential} holds a line break at position 22"
    )
    credential.unlink()
    credential.mkdir()
    line = one_problem(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert "is a directory, not a regular file" in line


def test_a_re_read_that_finds_a_bad_key_raises_what_the_refresher_expects(
    tmp_path: Path,
) -> None:
    """The refresher turns ValueError/OSError into key_unavailable; the text names no key."""
    path = tmp_path / "key"
    path.write_text(KEY)
    source = load(None, key_file_env(path)).key
    path.write_text(f"{HEAD}\n{TAIL}")
    with pytest.raises(ValueError, match="holds a line break at position 22") as caught:
        source.read({})
    assert_no_secret(str(caught.value) + repr(caught.value))
    path.unlink()
    os.mkfifo(path)
    outcome = in_thread(lambda: source.read({}))
    assert isinstance(outcome, ValueError)
    assert str(outcome) == "it is a FIFO, not a regular file"
    env_source = KeySource("env", "K")
    with pytest.raises(ValueError, match="is not set"):
        env_source.read({})
    with pytest.raises(ValueError, match="line break"):
        env_source.read({"K": f"{HEAD}\r{TAIL}"})


def test_a_re_read_through_the_refresher_is_key_unavailable(tmp_path: Path) -> None:
    from sidecar.error_codes import Lane
    from sidecar.refresher import Refresher

    path = tmp_path / "key"
    path.write_text(KEY)
    env = {**key_file_env(path), "FORESTREET_SIDECAR_TOKEN_PATH": str(tmp_path / "t" / "token")}
    config = load(None, env)
    # No client: the attempt must end at the key, before any request.
    no_client: Any = None
    refresher = Refresher(config, no_client, None, None, rng=Random(0), environ=env, observers=[])
    path.write_text(f"\u201c{KEY}\u201d")
    outcome = refresher.attempt()
    assert not outcome.ok
    assert outcome.lane is Lane.CREDENTIAL
    assert outcome.error is not None
    assert outcome.error.reason == "key_unavailable"
    assert str(outcome.error) == (
        f"cannot read the API key from file {path}: "
        "it holds a character an HTTP header cannot carry at position 1"
    )


# --- $CREDENTIALS_DIRECTORY ---------------------------------------------------------------


def test_credentials_directory_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "creds"
    not_a_dir.write_text("x")
    line = one_problem(None, {"CREDENTIALS_DIRECTORY": str(not_a_dir)})
    assert line == f"CREDENTIALS_DIRECTORY: {not_a_dir} is not a directory"


def test_credentials_directory_that_is_missing_is_a_config_error(tmp_path: Path) -> None:
    line = one_problem(None, {"CREDENTIALS_DIRECTORY": str(tmp_path / "gone")})
    assert line == (
        f"CREDENTIALS_DIRECTORY: cannot read {tmp_path / 'gone'}: No such file or directory"
    )


def test_credentials_directory_is_not_consulted_when_the_key_is_elsewhere(tmp_path: Path) -> None:
    assert isinstance(load(None, {**ENV_KEY, "CREDENTIALS_DIRECTORY": str(tmp_path / "x")}), Config)


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory nobody can reach (pytest's own are 0700), removed afterwards."""
    top = Path(tempfile.mkdtemp(prefix="sidecar-bad-input-", dir="/tmp"))
    top.chmod(0o755)
    yield top
    for path in top.iterdir():
        path.chmod(0o700)
    shutil.rmtree(top)


def check_config_as_nobody(env: dict[str, str]) -> tuple[int, str]:
    """``check-config``'s exit code and stderr, run by the user nobody.

    The interpreter lives where nobody cannot read it, so a forked child drops to
    nobody and runs the command's ``main`` with what is already imported.
    """
    if os.getuid() != 0:
        pytest.skip("needs root to drop to another user")
    import yaml  # noqa: F401 - imported before the fork, where nobody could not

    from sidecar import cli, session  # noqa: F401 - the same

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 70
        try:
            os.close(read_end)
            os.dup2(write_end, 2)
            sys.stderr = os.fdopen(2, "w", closefd=False)
            os.setgid(65534)
            os.setuid(65534)
            code = cli.main(["check-config"], env)
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        stderr = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert "Traceback" not in stderr
    return os.waitstatus_to_exitcode(status), stderr


def test_unreadable_credentials_directory_exits_78_as_a_normal_user(world_dir: Path) -> None:
    """Mode 000 as a non-root user: 78 naming it, not a traceback and exit 1."""
    creds = world_dir / "creds"
    creds.mkdir()
    creds.chmod(0o000)
    env = base_env(CREDENTIALS_DIRECTORY=str(creds))
    del env["FORESTREET_API_KEY"]
    code, stderr = check_config_as_nobody(env)
    assert code == 78, stderr
    assert stderr.splitlines() == [
        f"CREDENTIALS_DIRECTORY: cannot read {creds / 'forestreet-api-key'}: Permission denied"
    ]


def test_unreadable_key_file_and_ca_bundle_exit_78_as_a_normal_user(world_dir: Path) -> None:
    key = world_dir / "key"
    key.write_text(KEY)
    key.chmod(0o000)
    bundle = world_dir / "ca.pem"
    bundle.write_text(PEM)
    bundle.chmod(0o000)
    env = base_env(
        FORESTREET_SIDECAR_API_KEY_FILE=str(key),
        FORESTREET_SIDECAR_API_CA_BUNDLE=str(bundle),
        FORESTREET_SIDECAR_TOKEN_PATH=str(world_dir / "token"),
    )
    code, stderr = check_config_as_nobody(env)
    assert code == 78, stderr
    assert stderr.splitlines() == [
        f"api.ca_bundle: cannot read {bundle}: Permission denied"
        " (from FORESTREET_SIDECAR_API_CA_BUNDLE)",
        f"api.key_file: cannot read {key}: Permission denied (from FORESTREET_SIDECAR_API_KEY_FILE)",
    ]


# --- the configuration file ---------------------------------------------------------------


def test_a_50_mb_config_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    with path.open("w", encoding="utf-8") as handle:
        handle.write("api:\n  base_url: '")
        chunk = "x" * (1 << 20)
        for _ in range(50):
            handle.write(chunk)
        handle.write("'\n")
    started = time.monotonic()
    line = one_problem(path, ENV_KEY)
    assert time.monotonic() - started < 2
    assert line == f"config: {path} is larger than 1 MiB"


def test_a_config_of_exactly_1_mib_is_read(tmp_path: Path) -> None:
    head = "log: {level: debug}\n"
    path = yaml_file(tmp_path, head + "#" * ((1 << 20) - len(head) - 1) + "\n")
    assert path.stat().st_size == 1 << 20
    assert load(path, ENV_KEY).log.level == "debug"


def test_a_latin_1_config_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes("# r\u00e9glages\nlog: {level: info}\n".encode("latin-1"))
    assert one_problem(path, ENV_KEY) == (
        f"config: {path} is not UTF-8 text (line 1); save it as UTF-8"
    )


@pytest.mark.parametrize(
    "text",
    [
        "[" * 10000 + "]" * 10000,
        "a: " + "{b: " * 5000 + "1" + "}" * 5000,
        "api:\n  timeout_seconds: [[[1]]]\n",
        "".join(f"{'  ' * i}k{i}:\n" for i in range(200)),
    ],
    ids=["flow-seq", "flow-map", "deep-value", "block-map"],
)
def test_deeply_nested_yaml_is_a_config_error_not_a_recursion_error(
    tmp_path: Path, text: str
) -> None:
    path = yaml_file(tmp_path, text)
    line = one_problem(path, ENV_KEY)
    assert line.startswith(f"config: {path} is nested deeper than the configuration allows")


def test_yaml_alias_bombs_are_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    merges = ["m0: &m0 {k: v}"] + [
        f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: v}}" for i in range(1, 60)
    ]
    for text in ("\n".join(lines), "\n".join(merges)):
        path = yaml_file(tmp_path, text + "\n")
        started = time.monotonic()
        line = one_problem(path, ENV_KEY)
        assert time.monotonic() - started < 2
        assert line.startswith(f"config: {path} uses a YAML alias (line 2)")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("api: {timeout_seconds: 2\nlog: x\n", "is not valid YAML at line 2: "),
        ("api:\n  timeout_seconds: 1\n bad: 2\n", "is not valid YAML at line 3: "),
        ("a: '\n", "is not valid YAML at line 2: "),
        ("--- 1\n--- 2\n", "is not valid YAML at line 2: "),
        ("api: !!python/object:os.system {}\n", "is not valid YAML at line 1: "),
        ("x: \t1\n\x07\n", "is not valid YAML at line 2: "),
    ],
)
def test_yaml_syntax_errors_are_one_line_with_file_and_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = yaml_file(tmp_path, text)
    line = one_problem(path, ENV_KEY)
    assert line.startswith(f"config: {path} {expected}"), line


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("just a string\n", "the string 'just a string'"),
        ("- api\n- token\n", "a list"),
        ("42\n", "the number 42"),
        ("!!binary aGVsbG8=\n", "a bytes"),
    ],
)
def test_a_document_that_is_not_a_mapping_says_what_it_is(
    tmp_path: Path, text: str, kind: str
) -> None:
    path = yaml_file(tmp_path, text)
    assert one_problem(path, ENV_KEY) == f"config: {path} must be a mapping of sections, got {kind}"


def test_a_config_with_a_bom_and_crlf_is_read(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xef\xbb\xbflog:\r\n  level: debug\r\n")
    assert load(path, ENV_KEY).log.level == "debug"


def test_curly_quotes_in_the_config_are_part_of_the_value(tmp_path: Path) -> None:
    """A value pasted from a word processor: the quotes are text, and the value is named."""
    path = yaml_file(tmp_path, "token:\n  mode: \u201c0640\u201d\n")
    assert one_problem(path, ENV_KEY).startswith(
        "token.mode: must be a quoted octal string like \"0640\", got '\u201c0640\u201d'"
    )


@pytest.mark.parametrize("kind", ["fifo", "dir", "device"])
def test_a_config_path_of_the_wrong_type_is_refused_without_hanging(
    tmp_path: Path, kind: str
) -> None:
    path = {"dir": tmp_path, "device": Path("/dev/zero"), "fifo": tmp_path / "c.yaml"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    outcome = in_thread(lambda: load(path, ENV_KEY))
    assert isinstance(outcome, ConfigError), outcome
    assert outcome.problems[0].startswith(f"config: {path} is a ")
    assert outcome.problems[0].endswith(", not a regular file")


def test_huge_numbers_and_odd_tags_are_values_with_a_message(tmp_path: Path) -> None:
    path = yaml_file(
        tmp_path,
        f"api:\n  timeout_seconds: {'9' * 400}\nrefresh:\n  at_fraction: 2001-02-03\n"
        "backoff:\n  multiplier: !!set {a, b}\n",
    )
    problems = problems_of(path, ENV_KEY)
    assert len(problems) == 3
    assert problems[0].startswith("api.timeout_seconds: must be ≤ 10000000")
    assert problems[1] == "refresh.at_fraction: must be a number, got a date"
    assert problems[2] == "backoff.multiplier: must be a number, got a set"


def test_odd_keys_and_long_values_stay_on_one_short_line(tmp_path: Path) -> None:
    path = yaml_file(tmp_path, '"bad\\nsection": 1\nlog: {level: "' + "x" * 10000 + '"}\n')
    problems = problems_of(path, {**ENV_KEY, "FORESTREET_SIDECAR_X\nY": "1"})
    assert problems[0] == "'bad\\nsection': unknown section"
    assert all(len(line) < 300 for line in problems), problems


# --- values -------------------------------------------------------------------------------

SECONDS = [
    ("api", "timeout_seconds"),
    ("refresh", "min_interval_seconds"),
    ("refresh", "max_interval_seconds"),
    ("backoff", "initial_seconds"),
    ("backoff", "max_seconds"),
]


@pytest.mark.parametrize(("section", "key"), SECONDS)
def test_every_seconds_value_is_at_most_10_to_the_7(section: str, key: str) -> None:
    name = f"FORESTREET_SIDECAR_{section}_{key}".upper()
    highs = {
        "FORESTREET_SIDECAR_BACKOFF_MAX_SECONDS": "1e7",
        "FORESTREET_SIDECAR_REFRESH_MAX_INTERVAL_SECONDS": "1e7",
    }
    problems = problems_of(None, {**ENV_KEY, **highs, name: "1e12"})
    assert problems == [
        f"{section}.{key}: must be ≤ 10000000 (10^7 s, about 116 days) (from {name})"
    ]
    assert isinstance(load(None, {**ENV_KEY, **highs, name: "1e7"}), Config)


@pytest.mark.parametrize("text", ["1e12", "1.0e12", "1.5E+8", "-1e3"])
def test_exponents_in_the_file_are_numbers(tmp_path: Path, text: str) -> None:
    path = yaml_file(tmp_path, f"backoff: {{max_seconds: {text}}}\n")
    assert one_problem(path, ENV_KEY).startswith("backoff.max_seconds: must be ")
    path = yaml_file(tmp_path, "backoff: {max_seconds: 1e2}\n")
    assert load(path, ENV_KEY).backoff.max_seconds == 100


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e400", "Infinity"])
def test_non_finite_numbers_are_refused(text: str) -> None:
    line = one_problem(None, {**ENV_KEY, "FORESTREET_SIDECAR_API_TIMEOUT_SECONDS": text})
    assert line.startswith("api.timeout_seconds: must be a finite number")


@pytest.mark.parametrize("text", ["\u0663", "1_0", "\uff11", "0x10", "", " "])
def test_numbers_from_the_environment_are_ascii_decimal(text: str) -> None:
    line = one_problem(None, {**ENV_KEY, "FORESTREET_SIDECAR_API_TIMEOUT_SECONDS": text})
    assert line.startswith("api.timeout_seconds: must be a number, got ")


@pytest.mark.parametrize(
    "port", ["\u0668\u0660\u0668\u0660", "\u00b2", "65536", "99999999999999", "-1", "+80", " 80"]
)
def test_a_listen_port_must_be_ascii_digits_in_range(port: str) -> None:
    line = one_problem(None, {**ENV_KEY, "FORESTREET_SIDECAR_SERVER_LISTEN": f"127.0.0.1:{port}"})
    assert line.startswith("server.listen: "), line


@pytest.mark.parametrize(
    "url",
    [
        "https://host:\u0668\u0660/",
        "https://host:\u00b2/",
        "https://host:0/",
        "https://host:65536/",
        "https://host:port/",
        "http://[::1",
        "https://ho st/",
        "https://host/\x00",
        "https://host/\n",
    ],
)
def test_a_bad_base_url_port_or_character_is_a_config_error(url: str) -> None:
    line = one_problem(None, {**ENV_KEY, "FORESTREET_SIDECAR_API_BASE_URL": url})
    assert line.startswith("api.base_url: "), line


def test_a_numeric_group_must_be_ascii_digits() -> None:
    for group in ("\u00b2", "\u0668"):
        line = one_problem(None, {**ENV_KEY, "FORESTREET_SIDECAR_TOKEN_GROUP": group})
        assert line.startswith("token.group: unknown group"), line


@pytest.mark.parametrize(
    "url",
    ["http://api.example.com", "http://10.0.0.1:8080", "http://[::2]/", "http://127.example/"],
)
def test_http_to_a_remote_host_needs_allow_insecure_http(url: str) -> None:
    env = {**ENV_KEY, "FORESTREET_SIDECAR_API_BASE_URL": url}
    line = one_problem(None, env)
    assert line.startswith("api.base_url: http:// would send the API key in clear text to ")
    assert line.endswith("(from FORESTREET_SIDECAR_API_BASE_URL)")
    allowed = load(None, {**env, "FORESTREET_SIDECAR_API_ALLOW_INSECURE_HTTP": "true"})
    assert allowed.api.allow_insecure_http is True
    assert allowed.api.base_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://127.9.8.7/",
        "http://localhost:1/x",
        "http://LOCALHOST",
        "http://[::1]:80",
        "https://api.example.com",
    ],
)
def test_http_to_loopback_and_https_anywhere_are_fine(url: str) -> None:
    assert load(None, {**ENV_KEY, "FORESTREET_SIDECAR_API_BASE_URL": url}).api.base_url == url


def test_allow_insecure_http_from_the_file(tmp_path: Path) -> None:
    path = yaml_file(tmp_path, "api: {base_url: 'http://h.example', allow_insecure_http: true}\n")
    assert load(path, ENV_KEY).api.allow_insecure_http is True
    path = yaml_file(tmp_path, "api: {allow_insecure_http: 'yes'}\n")
    assert one_problem(path, ENV_KEY).startswith("api.allow_insecure_http: must be true or false")


@pytest.mark.parametrize("kind", ["missing", "dir", "fifo", "device", "empty", "not-pem", "big"])
def test_a_bad_ca_bundle_is_a_config_error(tmp_path: Path, kind: str) -> None:
    bundle = tmp_path / "ca.pem"
    if kind == "dir":
        bundle.mkdir()
    elif kind == "fifo":
        os.mkfifo(bundle)
    elif kind == "device":
        bundle = Path("/dev/zero")
    elif kind == "empty":
        bundle.write_text("")
    elif kind == "not-pem":
        bundle.write_text("-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n")
    elif kind == "big":
        with bundle.open("wb") as handle:
            handle.truncate(64 << 20)
    env = {**ENV_KEY, "FORESTREET_SIDECAR_API_CA_BUNDLE": str(bundle)}
    outcome = in_thread(lambda: load(None, env))
    assert isinstance(outcome, ConfigError), outcome
    (line,) = outcome.problems
    assert line.startswith(
        (f"api.ca_bundle: {bundle} ", f"api.ca_bundle: cannot read {bundle}: ")
    ), line
    expected = {
        "missing": "No such file or directory",
        "dir": "is a directory, not a regular file",
        "fifo": "is a FIFO, not a regular file",
        "device": "is a character device, not a regular file",
        "empty": "holds no PEM certificate",
        "not-pem": "holds no PEM certificate",
        "big": "is larger than 16 MiB",
    }[kind]
    assert expected in line


def test_a_pem_ca_bundle_is_accepted(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text(PEM)
    config = load(None, {**ENV_KEY, "FORESTREET_SIDECAR_API_CA_BUNDLE": str(bundle)})
    assert config.api.ca_bundle == bundle


@pytest.mark.parametrize("key", ["path", "session_path"])
def test_a_token_path_that_is_a_directory_is_a_config_error(tmp_path: Path, key: str) -> None:
    name = f"FORESTREET_SIDECAR_TOKEN_{key.upper()}"
    line = one_problem(None, {**ENV_KEY, name: str(tmp_path)})
    assert line == f"token.{key}: {tmp_path} is a directory, not a regular file (from {name})"


@pytest.mark.parametrize("key", ["path", "session_path"])
def test_a_token_path_whose_parent_is_a_file_is_a_config_error(tmp_path: Path, key: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    name = f"FORESTREET_SIDECAR_TOKEN_{key.upper()}"
    line = one_problem(None, {**ENV_KEY, name: str(blocker / "token")})
    assert line == f"token.{key}: {blocker} is a regular file, not a directory (from {name})"


def test_token_paths_that_are_files_or_symlinks_are_fine(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("old")
    (tmp_path / "session").symlink_to(tmp_path / "nowhere")
    config = load(
        None,
        {
            **ENV_KEY,
            "FORESTREET_SIDECAR_TOKEN_PATH": str(tmp_path / "token"),
            "FORESTREET_SIDECAR_TOKEN_SESSION_PATH": str(tmp_path / "session"),
        },
    )
    assert config.token.session_path == tmp_path / "session"


def test_the_token_and_session_paths_must_differ(tmp_path: Path) -> None:
    same = str(tmp_path / "token")
    env = {**ENV_KEY, "FORESTREET_SIDECAR_TOKEN_PATH": same}
    line = one_problem(None, {**env, "FORESTREET_SIDECAR_TOKEN_SESSION_PATH": same})
    assert line.startswith("token.session_path: must not be token.path")


def test_an_empty_token_path_is_a_config_error() -> None:
    line = one_problem(None, {**ENV_KEY, "FORESTREET_SIDECAR_TOKEN_PATH": ""})
    assert line == "token.path: must not be empty (from FORESTREET_SIDECAR_TOKEN_PATH)"


@pytest.mark.parametrize(
    "name",
    [
        "FORESTREET_SIDECAR_TOKEN_PATH",
        "FORESTREET_SIDECAR_TOKEN_SESSION_PATH",
        "FORESTREET_SIDECAR_API_KEY_FILE",
        "FORESTREET_SIDECAR_API_CA_BUNDLE",
        "FORESTREET_SIDECAR_API_BASE_URL",
        "FORESTREET_SIDECAR_SERVER_LISTEN",
        "FORESTREET_SIDECAR_TOKEN_GROUP",
        "FORESTREET_SIDECAR_TOKEN_MODE",
        "FORESTREET_SIDECAR_LOG_LEVEL",
        "FORESTREET_SIDECAR_API_KEY_ENV",
    ],
)
@pytest.mark.parametrize("bad", ["a\x00b", "a\udcffb"], ids=["nul", "surrogate"])
def test_nul_bytes_and_undecodable_text_are_clean_errors(name: str, bad: str) -> None:
    line = one_problem(None, {**ENV_KEY, name: f"/tmp/{bad}"})
    assert line.endswith(f"(from {name})"), line
    assert "\x00" not in line
    assert "\udcff" not in line


def test_a_config_path_with_a_nul_byte_is_a_clean_error() -> None:
    line = one_problem(None, {**ENV_KEY, "FORESTREET_SIDECAR_CONFIG": "/tmp/a\x00b"})
    assert line.startswith("config: ")


# --- through the real command ---------------------------------------------------------------


def command(
    args: list[str],
    env: dict[str, str],
    timeout: float = 30,
    limit_memory: bool = True,
) -> subprocess.CompletedProcess[str]:
    """The real command; with 1 GiB of address space at most, so a runaway read fails fast."""

    def limit() -> None:
        if limit_memory:
            resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    result = subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
        check=False,
        preexec_fn=limit,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert_no_secret(result.stdout + result.stderr, KEY)
    return result


def key_env(tmp_path: Path, content: bytes | None = None, **extra: str) -> dict[str, str]:
    env = base_env(**extra)
    del env["FORESTREET_API_KEY"]
    if content is not None:
        path = tmp_path / "key"
        path.write_bytes(content)
        path.chmod(0o600)
        env["FORESTREET_SIDECAR_API_KEY_FILE"] = str(path)
    return env


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (f"{HEAD}\n{TAIL}\n".encode(), "holds a line break at position 22"),
        (
            f"\u201c{KEY}\u201d".encode(),
            "holds a character an HTTP header cannot carry at position 1",
        ),
        (b"\xef\xbb\xbf" + HEAD.encode() + b"\xa0" + TAIL.encode(), "at position 22"),
    ],
)
@pytest.mark.parametrize("verb", ["check-config", "once"])
def test_the_command_exits_78_on_a_bad_key_without_showing_it(
    tmp_path: Path, fake_api: FakeApi, content: bytes, problem: str, verb: str
) -> None:
    config = write_config(tmp_path, fake_api.url)
    result = command(["--config", str(config), verb], key_env(tmp_path, content))
    assert result.returncode == 78, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"api.key_file: {tmp_path / 'key'} ")
    assert problem in line
    assert fake_api.requests == []


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "sparse-100mb", "dir", "loop"])
def test_the_command_exits_78_on_a_key_file_of_the_wrong_type(
    tmp_path: Path, fake_api: FakeApi, kind: str
) -> None:
    path = tmp_path / "key"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path = Path("/dev/zero")
    elif kind == "sparse-100mb":
        with path.open("wb") as handle:
            handle.truncate(100 << 20)
    elif kind == "dir":
        path.mkdir()
    else:
        path.symlink_to(path)
    config = write_config(tmp_path, fake_api.url)
    env = key_env(tmp_path, FORESTREET_SIDECAR_API_KEY_FILE=str(path))
    for verb in ("check-config", "once"):
        result = command(["--config", str(config), verb], env, timeout=15)
        assert result.returncode == 78, (verb, result.stderr)
        (line,) = result.stderr.splitlines()
        assert line.startswith("api.key_file: ")
        assert str(path) in line
    assert fake_api.requests == []


def test_the_command_exits_78_on_a_50_mb_config_at_once(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    with path.open("w", encoding="utf-8") as handle:
        handle.write("api:\n  base_url: '" + "x" * (50 << 20) + "'\n")
    started = time.monotonic()
    result = command(["--config", str(path), "check-config"], base_env(), limit_memory=False)
    assert time.monotonic() - started < 10
    assert result.returncode == 78
    assert result.stderr.splitlines() == [f"config: {path} is larger than 1 MiB"]


@pytest.mark.parametrize(
    ("text", "start"),
    [
        ("[" * 100000 + "]" * 100000, "is nested deeper"),
        ("# \xe9t\xe9\n", "is not UTF-8 text (line 1)"),
        ("api: {timeout_seconds: 1.0e12}\n", None),
        ("server: {listen: '127.0.0.1:\u0668\u0660'}\n", None),
    ],
)
def test_the_command_exits_78_on_a_bad_config_file(
    tmp_path: Path, text: str, start: str | None
) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(text.encode("latin-1" if "\xe9" in text else "utf-8"))
    result = command(["--config", str(path), "check-config"], base_env())
    assert result.returncode == 78, result.stderr
    (line,) = result.stderr.splitlines()
    if start:
        assert line.startswith(f"config: {path} {start}"), line


def test_once_with_a_directory_at_token_path_exits_78_without_a_request(
    tmp_path: Path, fake_api: FakeApi
) -> None:
    directory = tmp_path / "out" / "token"
    directory.mkdir(parents=True)
    config = write_config(tmp_path, fake_api.url)
    for verb in ("check-config", "once"):
        result = command(["--config", str(config), verb], base_env())
        assert result.returncode == 78, result.stderr
        assert result.stderr.splitlines() == [
            f"token.path: {directory} is a directory, not a regular file"
        ]
    assert fake_api.requests == []


def test_once_with_a_missing_ca_bundle_exits_78_without_a_request(
    tmp_path: Path, fake_api: FakeApi
) -> None:
    config = write_config(tmp_path, fake_api.url, api={"ca_bundle": str(tmp_path / "ca.pem")})
    result = command(["--config", str(config), "once", "--timeout", "5"], base_env())
    assert result.returncode == 78, result.stderr
    assert result.stderr.splitlines() == [
        f"api.ca_bundle: cannot read {tmp_path / 'ca.pem'}: No such file or directory"
    ]
    assert fake_api.requests == []


def test_the_command_exits_78_on_an_unreadable_credentials_directory(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "creds"
    not_a_dir.write_text("x")
    for verb in ("check-config", "once"):
        result = command([verb], key_env(tmp_path, CREDENTIALS_DIRECTORY=str(not_a_dir)))
        assert result.returncode == 78, result.stderr
        assert result.stderr.splitlines() == [
            f"CREDENTIALS_DIRECTORY: {not_a_dir} is not a directory"
        ]


def test_once_last_line_carries_the_last_attempts_reason(tmp_path: Path) -> None:
    with FakeApi(fail_rate=1.0, fail_code="SERVICE_UNAVAILABLE") as api:
        config = write_config(tmp_path, api.url)
        result = command(["--config", str(config), "once", "--timeout", "1"], base_env())
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("forestreet-sidecar: once gave up after ")
    assert "no token within 1s" in last
    assert "last attempt: SERVICE_UNAVAILABLE" in last


def test_once_last_line_names_connection_refused(tmp_path: Path) -> None:
    with FakeApi() as api:
        url = api.url
    config = write_config(tmp_path, url)
    result = command(["--config", str(config), "once", "--timeout", "1"], base_env())
    assert result.returncode == 1
    assert "last attempt: connection_error" in result.stderr.splitlines()[-1]


def test_no_arguments_and_nothing_configured_shows_usage(tmp_path: Path) -> None:
    env = key_env(tmp_path)
    result = command([], env)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith("usage: forestreet-sidecar")
    assert "nothing is configured" in lines[-1]
    assert result.stdout == ""


def test_no_arguments_with_a_configuration_still_runs(tmp_path: Path) -> None:
    """Something configured (here only the config file variable): `run` is the default."""
    path = yaml_file(tmp_path, "api: {timeout_seconds: 1.0e12}\n")
    result = command([], key_env(tmp_path, FORESTREET_SIDECAR_CONFIG=str(path)))
    assert result.returncode == 78
    assert result.stderr.startswith("api.timeout_seconds: must be ≤ 10000000")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("api:\n  timeout_seconds: 1\n  timeout_seconds: 2\n", "(lines 2 and 3)"),
        ("api: {timeout_seconds: 1, timeout_seconds: 2}\n", "(line 1)"),
        ("api: {}\nlog: {}\napi: {}\n", "(lines 1 and 3)"),
    ],
)
def test_a_key_given_twice_is_named_not_silently_overwritten(
    tmp_path: Path, text: str, where: str
) -> None:
    path = yaml_file(tmp_path, text)
    line = one_problem(path, ENV_KEY)
    assert line.startswith(f"config: {path} has the key ")
    assert f"twice {where}; keep one" in line


def test_a_key_pasted_into_key_env_is_not_echoed() -> None:
    """`key_env: <the key>` is a careless paste: the message must not repeat it."""
    line = one_problem(None, {"FORESTREET_SIDECAR_API_KEY_ENV": "Sk_live_" + HEAD})
    assert line.startswith("api.key_file: no API key found")
    assert "the environment variable api.key_env names" in line
    assert "FORESTREET_API_KEY" in one_problem(None, {})
