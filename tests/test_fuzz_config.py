"""Hypothesis against ``config.load``: every value, every key, the raw YAML text and bytes.

Whatever it is given, ``load`` returns a Config or raises ConfigError (one line per
problem) — never anything else — and no problem line holds the key it was handed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.config import CONFIG_ENV, SECTIONS, Config, env_name, keys, load
from sidecar.errors import ConfigError

CANARY = "CanaryKeyPartAlpha"
CANARY_TAIL = "CanaryKeyPartOmega"
KEY = f"{CANARY}-0123456789-{CANARY_TAIL}"
# FUZZ_EXAMPLES=5000 for a longer hunt; the default keeps the suite quick.
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "250")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Any text the environment or a YAML file can hand us: lone surrogates (undecodable
# environment bytes) included, and the characters that broke things before.
texts = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(exclude_categories=[]), max_size=30),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "\udcff",
            "1e12",
            "nan",
            "-inf",
            "\u0668\u0660",
            "\u00b2",
            "0640",
            "127.0.0.1:\u00b2",
            "http://[::1",
            "http://example.com",
            "https://h:0",
            "/dev/zero",
            "/",
            ".",
            "..",
            "~",
            "\u201cx\u201d",
            "true",
            "yes",
            "0x10",
            "9" * 400,
        ]
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
    st.binary(max_size=20),
    st.dates(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
names = st.one_of(st.sampled_from([key for _, key in keys()]), st.text(max_size=12))
section_names = st.one_of(st.sampled_from(list(SECTIONS)), st.text(max_size=12))
documents = st.dictionaries(
    section_names,
    st.one_of(st.dictionaries(names, values, max_size=6), values),
    max_size=7,
)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-config-") as name:
        yield Path(name)


def outcome(path: Path | None, environ: dict[str, str], *secrets: str) -> Config | None:
    """Load; only Config or ConfigError may come out, and no secret in any problem."""
    try:
        return load(path, environ)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError without problems"
        for line in exc.problems:
            assert isinstance(line, str)
            assert "\n" not in line and "\r" not in line, line
            for secret in (KEY, CANARY, CANARY_TAIL, *secrets):
                assert secret not in line, line
        return None


def base() -> dict[str, str]:
    return {"FORESTREET_API_KEY": KEY}


@FUZZ
@given(
    chosen=st.lists(st.sampled_from(keys()), min_size=1, max_size=5, unique=True),
    data=st.data(),
)
def test_any_environment_value_gives_a_config_or_a_config_error(
    chosen: list[tuple[str, str]], data: st.DataObject
) -> None:
    environ = base()
    for section, key in chosen:
        environ[env_name(section, key)] = data.draw(texts)
    outcome(None, environ)


@FUZZ
@given(document=documents)
def test_any_yaml_document_gives_a_config_or_a_config_error(
    workdir: Path, document: dict[Any, Any]
) -> None:
    path = workdir / "doc.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    outcome(path, base())


@FUZZ
@given(section=st.sampled_from(list(SECTIONS)), data=st.data())
def test_any_value_of_a_real_key_in_the_file(
    workdir: Path, section: str, data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from([k for s, k in keys() if s == section]))
    value = data.draw(values)
    path = workdir / "one.yaml"
    path.write_text(yaml.safe_dump({section: {key: value}}), encoding="utf-8")
    config = outcome(path, base())
    if config is not None:
        assert isinstance(config, Config)


yaml_fragments = st.sampled_from(
    [
        "api:",
        "\n",
        "  ",
        "timeout_seconds: ",
        "token: {mode: 0640}",
        "[",
        "]",
        "{",
        "}",
        "&a ",
        "*a",
        "<<: ",
        "!!python/object:os.system ",
        "!!binary ",
        "? ",
        "- ",
        "---\n",
        "'",
        '"',
        "\t",
        "\ufeff",
        "%YAML 1.1\n",
        "1e12",
        ".nan",
        "~",
        "#",
        "\x07",
    ]
)
yaml_texts = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(yaml_fragments, st.text(max_size=5)), max_size=40).map("".join),
)


@FUZZ
@given(text=yaml_texts)
def test_any_yaml_text_gives_a_config_or_a_config_error(workdir: Path, text: str) -> None:
    path = workdir / "text.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    outcome(path, base())


@FUZZ
@given(data=st.binary(max_size=300))
def test_any_bytes_as_the_config_file_give_a_config_or_a_config_error(
    workdir: Path, data: bytes
) -> None:
    path = workdir / "bytes.yaml"
    path.write_bytes(data)
    outcome(path, base())


@FUZZ
@given(middle=st.binary(max_size=64), before=st.binary(max_size=8), after=st.binary(max_size=8))
def test_any_key_file_is_a_key_or_a_problem_that_never_quotes_it(
    workdir: Path, middle: bytes, before: bytes, after: bytes
) -> None:
    content = before + CANARY.encode() + middle + CANARY_TAIL.encode() + after
    path = workdir / "key"
    path.write_bytes(content)
    path.chmod(0o600)
    config = outcome(None, {"FORESTREET_SIDECAR_API_KEY_FILE": str(path)})
    if config is None:
        return
    read = config.key.read({}).value
    spaces = " \t\r\n\v\f"
    expected = content.decode("utf-8", "surrogateescape").strip(spaces)
    assert read == expected.removeprefix("\ufeff").strip(spaces)
    assert CANARY in read
    assert all(0x21 <= ord(c) <= 0x7E for c in read)


@FUZZ
@given(middle=st.text(max_size=64), padding=st.sampled_from(["", " ", "\n", "\ufeff", "\t\r\n"]))
def test_any_key_in_the_environment_is_a_key_or_a_problem_that_never_quotes_it(
    middle: str, padding: str
) -> None:
    value = f"{padding}{CANARY}{middle}{CANARY_TAIL}{padding.strip()}"
    config = outcome(None, {"FORESTREET_API_KEY": value})
    if config is None:
        return
    read = config.key.read({"FORESTREET_API_KEY": value}).value
    assert read == f"{CANARY}{middle}{CANARY_TAIL}"


@FUZZ
@given(text=texts)
def test_any_config_path_gives_a_config_or_a_config_error(text: str) -> None:
    outcome(None, {**base(), CONFIG_ENV: text} if text else base())
