"""The log redactor: every encoding of a known secret goes, everything else stays as it was.

The encodings are computed here from the standard library, not imported from
`sidecar.logs`, so a form the redactor forgets cannot agree with itself.
"""

from __future__ import annotations

import base64
import io
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from sidecar import logs
from sidecar.fake_api import FakeApi
from sidecar.logs import Redactor
from sidecar.session import fingerprint
from tests.conftest import API_KEY, Sidecar, base_env, write_config

# The key rule of SPEC ("Bad input"): visible ASCII. Tokens: the pattern of the 200 body.
KEYS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
TOKENS = st.from_regex(r"\A[A-Za-z0-9_-]{1,20}(\.[A-Za-z0-9_-]{1,20}){1,3}\Z")
# What an unvalidated key can hold before it is refused: a BOM, curly quotes, line breaks.
RAW_KEYS = st.text(min_size=1, max_size=30).filter(lambda s: s.strip() == s and s.strip())


def encoded_forms(secret: str) -> set[str]:
    """The secret as logs and error messages tend to carry it."""
    raw = secret.encode()
    forms = {
        secret,
        repr(secret)[1:-1],
        ascii(secret)[1:-1],
        repr(raw)[2:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret),
        quote(secret, safe=""),
        quote_plus(secret),
    }
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = encode(raw).decode()
        forms |= {text, text.rstrip("=")}
    # An error's repr quoting its own message, which quoted the secret: escaped twice.
    forms |= {repr(form)[1:-1] for form in list(forms)}
    return {form for form in forms if form}


def secrets_of(api: FakeApi) -> list[str]:
    return [*api.issued, *api.issued_refresh, API_KEY]


def assert_clean(sidecar: Sidecar, secrets: list[str]) -> None:
    """No traceback and no secret, in any encoding, in what the command printed."""
    output = "".join(sidecar.raw) + "".join(sidecar.stderr)
    assert "Traceback" not in output
    leaked = [
        (secret, form) for secret in secrets for form in encoded_forms(secret) if form in output
    ]
    assert leaked == []


def redactor_with(*secrets: str) -> Redactor:
    redactor = Redactor()
    for secret in secrets:
        redactor.add(secret)
    return redactor


# -- examples -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "abcd1234\nefgh5678",  # a wrapped paste
        "\ufeffabcdefgh12345678",  # a UTF-8 BOM
        "\u201cabcdefgh12345678\u201d",  # curly quotes
        "key with 'both' \"quotes\" & ü",
        "k\\x00k\\n-not-an-escape",
    ],
)
def test_every_encoding_of_a_key_an_http_library_would_quote_is_replaced(key: str) -> None:
    redactor = redactor_with(key)
    for form in encoded_forms(key):
        for message in (
            f"Invalid header value '{form}'",
            f"InvalidHeader('Invalid return character or leading space in header: x-api-key: {form}')",
            f'{{"x-api-key": "{form}"}}',
            f"GET /?key={form}&x=1",
            f"Authorization: Basic {form}",
        ):
            scrubbed = redactor.scrub(message)
            assert form not in scrubbed, (form, message, scrubbed)
            assert fingerprint(key) in scrubbed


@pytest.mark.parametrize("key", ["demo", "k", "token", "key", "sha"])
@pytest.mark.parametrize(
    "text",
    [
        "handshake failed",
        "demo-mode on",
        "token_refreshed",
        "refresh_failed",
        "key_unavailable",
        "check api.key_file",
        "keyboard shake",
        "https://rest.forestreet.com/v2/auth/session",
        "x_token_y tokens kk k_ -k",
    ],
)
def test_a_short_key_never_garbles_words_that_merely_contain_it(key: str, text: str) -> None:
    assert redactor_with(key).scrub(text) == text


@pytest.mark.parametrize("key", ["demo", "k"])
@pytest.mark.parametrize(
    "template",
    ["{}", "key={}", "'{}'", '"{}"', "x-api-key: {}", "[{}]", "a {} b", "{}.", "\\n{}\\t"],
)
def test_a_short_key_standing_alone_is_still_replaced(key: str, template: str) -> None:
    scrubbed = redactor_with(key).scrub(template.format(key))
    assert scrubbed == template.format(fingerprint(key))


def test_a_long_key_is_replaced_even_glued_to_other_characters() -> None:
    """12 characters and more are no word anyone writes by accident: no boundary needed."""
    key = "Zk93hfQ0x1LmPq7"
    assert redactor_with(key).scrub(f"abc{key}def") == f"abc{fingerprint(key)}def"


def test_event_names_and_field_names_survive_a_key_named_like_them() -> None:
    redactor = redactor_with("token", "refreshed", "event")
    event = redactor(None, "info", {"event": "token_refreshed", "next_refresh_in": 3.0})
    assert event == {"event": "token_refreshed", "next_refresh_in": 3.0}


def test_nested_values_lists_and_objects_are_scrubbed() -> None:
    key = "nested-secret-value-123"
    token = "aaa.bbb.ccc"
    redactor = redactor_with(key, token)

    class Opaque:
        def __str__(self) -> str:
            return f"Opaque({key!r})"

    event = redactor(
        None,
        "info",
        {
            "event": "x",
            "detail": {"headers": {"x-api-key": key}, "list": [token, {"deep": f"'{key}'"}]},
            "pair": (1, token),
            "object": Opaque(),
            "raw": key.encode(),
            "count": 3,
            "flag": True,
        },
    )
    rendered = json.dumps(event)
    assert key not in rendered
    assert token not in rendered
    assert event["count"] == 3
    assert event["flag"] is True
    assert event["detail"]["list"][0] == fingerprint(token)


def test_the_whole_chain_scrubs_exception_text_in_both_formats() -> None:
    key = "exc-secret-\n-value-12345"
    stream = io.StringIO()
    try:
        for fmt in ("json", "console"):
            logs.configure("debug", fmt, stream)
            logs.REDACTOR.add(key)
            try:
                _fail_with(key)
            except ValueError:
                logs.get().error("boom", exc_info=True, message=repr(ValueError(repr(key))))
    finally:
        logs.configure()
    output = stream.getvalue()
    assert "boom" in output
    assert [form for form in encoded_forms(key) if form in output] == []


def _fail_with(key: str) -> None:
    raise ValueError(f"Invalid header value {key.encode()!r} / {key!r}")


# -- console format ---------------------------------------------------------------------------


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure("debug", "console", stream)
    yield stream
    logs.configure()


def test_console_puts_level_event_message_and_hint_first_and_drops_none(
    console: io.StringIO,
) -> None:
    logs.get().error(
        "refresh_failed",
        reason="INVALID_CREDENTIALS",
        retry_in=None,
        hint="check the key",
        status=401,
        message="the API refused the key",
    )
    line = console.getvalue().strip()
    assert line.startswith("error refresh_failed ")
    assert line.index("message=") < line.index("hint=") < line.index("reason=")
    assert "None" not in line
    assert "retry_in" not in line
    assert "status=401" in line
    assert 'message="the API refused the key"' in line


def test_json_leaves_out_fields_that_do_not_apply() -> None:
    stream = io.StringIO()
    logs.configure("info", "json", stream)
    try:
        logs.get().info("started", listen=None, version="1")
    finally:
        logs.configure()
    event = json.loads(stream.getvalue())
    assert "listen" not in event
    assert event["event"] == "started"
    assert event["timestamp"].endswith("Z")


# -- properties -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(secret=st.one_of(KEYS, TOKENS, RAW_KEYS), text=st.text(max_size=80))
@example(secret="demo", text="handshake demo-mode token_refreshed")
@example(secret="k", text="keyboard k_k -k- kk")
def test_text_without_the_secret_is_left_unchanged(secret: str, text: str) -> None:
    assume(not any(form in text for form in encoded_forms(secret)))
    assert redactor_with(secret).scrub(text) == text


@settings(max_examples=300, deadline=None)
@given(
    secret=st.one_of(KEYS, TOKENS, RAW_KEYS),
    before=st.text(max_size=30),
    after=st.text(max_size=30),
    data=st.data(),
)
def test_no_encoded_form_of_a_secret_survives(
    secret: str, before: str, after: str, data: Any
) -> None:
    forms = sorted(encoded_forms(secret))
    form = data.draw(st.sampled_from(forms))
    assume(fingerprint(secret).find(secret) < 0 and secret not in "sha256:")
    scrubbed = redactor_with(secret).scrub(f"{before} {form} {after}")
    assert f" {form} " not in scrubbed
    if len(secret) >= 12:
        survivors = [f for f in forms if f in scrubbed and f not in before and f not in after]
        assert survivors == []


def test_debug_level_shows_each_request_and_each_plan_without_a_secret(
    tmp_path: Path, fake_api: FakeApi, sidecars: Callable[..., Sidecar]
) -> None:
    config = write_config(tmp_path, fake_api.url)
    sidecar = sidecars(["--config", str(config), "--log-level", "debug", "run"], base_env())
    request = sidecar.wait_event("http_request")
    assert request["url"] == fake_api.url + "/v2/auth/session"
    assert (request["method"], request["status"]) == ("GET", 200)
    plan = sidecar.wait_event("attempt_planned")
    assert plan["ok"] is True
    assert plan["delay"] > 0
    assert {"consecutive_failures", "token_valid_for", "at_fraction"} <= set(plan)
    scheduled = sidecar.wait_event("refresh_scheduled")
    assert scheduled["delay"] == pytest.approx(plan["delay"], abs=1)
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(5) == 0
    assert_clean(sidecar, secrets_of(fake_api))
