"""`outputs`: further files in raw, json, env and template formats, written by the real
command, each atomically with its own mode and group, the token file always last."""

from __future__ import annotations

import json
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar import outputs
from sidecar.config import Config, TokenConfig, load
from sidecar.errors import ConfigError
from sidecar.fake_api import FakeApi
from sidecar.session import Session
from tests.conftest import Sidecar, base_env, run_command, write_config

ISSUED = outputs.Issued(
    Session(access_token="a.b", expires_in=60.0, refresh_token="r.t", expires_at=None),
    obtained_at=1_000.5,
)
KEY_ENV = {"FORESTREET_API_KEY": "k-123456789"}


def every_format(out: Path) -> list[dict[str, Any]]:
    return [
        {"path": str(out / "copy"), "format": "raw", "mode": "0600"},
        {"path": str(out / "session-copy.json"), "format": "json"},
        {"path": str(out / "app.env"), "format": "env", "mode": "0600", "group": os.getgid()},
        {
            "path": str(out / "client.ini"),
            "format": "template",
            "template": "[auth]\nbearer = ${access_token}\nuntil = ${expires_at_iso}\n"
            "in = ${expires_in} at = ${expires_at} from = ${obtained_at} "
            "refresh = ${refresh_token} cost = $$5\n",
        },
    ]


def config_with_outputs(tmp_path: Path, url: str, **sections: Any) -> Path:
    out = tmp_path / "out"
    path = write_config(
        tmp_path,
        url,
        token={"session_path": str(out / "session.json"), "include_refresh_token": True},
        **sections,
    )
    text = path.read_text()
    import yaml

    document = yaml.safe_load(text)
    document["outputs"] = every_format(out)
    path.write_text(yaml.safe_dump(document))
    return path


def assert_every_format_written(out: Path, api: FakeApi) -> None:
    token, refresh = api.issued[-1], api.issued_refresh[-1]
    assert (out / "token").read_text() == token
    assert (out / "copy").read_bytes() == token.encode()
    session = json.loads((out / "session.json").read_text())
    assert json.loads((out / "session-copy.json").read_text()) == session
    assert session["refreshToken"] == refresh
    expires_at = int(session["expiresAt"])
    assert (out / "app.env").read_text() == (
        f"FORESTREET_ACCESS_TOKEN={token}\n"
        f"FORESTREET_EXPIRES_AT={expires_at}\n"
        f"FORESTREET_REFRESH_TOKEN={refresh}\n"
    )
    ini = (out / "client.ini").read_text()
    assert f"bearer = {token}\n" in ini
    assert f"at = {expires_at} from = {int(session['obtainedAt'])}" in ini
    assert f"refresh = {refresh} cost = $5\n" in ini
    assert "in = 3600 " in ini
    assert "until = 20" in ini
    assert ini.split("until = ")[1].split("\n")[0].endswith("Z")


def test_once_writes_every_format_with_its_mode_and_group(
    tmp_path: Path, fake_api: FakeApi
) -> None:
    config = config_with_outputs(tmp_path, fake_api.url)
    result = run_command(["--config", str(config), "once"])
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert_every_format_written(out, fake_api)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {
        "token": 0o640,
        "session.json": 0o640,
        "copy": 0o600,
        "session-copy.json": 0o640,  # token.mode by default
        "app.env": 0o600,
        "client.ini": 0o640,
    }
    assert (out / "app.env").stat().st_gid == os.getgid()
    assert len(fake_api.requests) == 1  # one token for every file


def test_the_token_file_is_written_last(tmp_path: Path, fake_api: FakeApi) -> None:
    config = config_with_outputs(tmp_path, fake_api.url)
    written = outputs.from_config(load(config, base_env()))
    assert [o.format for o in written] == ["raw", "json", "env", "template", "json", "raw"]
    assert written[-1].path == tmp_path / "out" / "token"
    assert written[-2].path == tmp_path / "out" / "session.json"
    assert run_command(["--config", str(config), "once"]).returncode == 0
    times = [o.path.stat().st_mtime_ns for o in written]
    assert times == sorted(times)  # in the order of the tuple, the token's the latest


def test_run_rewrites_every_output_atomically_on_each_token(
    tmp_path: Path, fake_api: FakeApi, sidecars: Callable[..., Sidecar]
) -> None:
    """A new token replaces each file by rename (a new inode), leaving no temporary file."""
    config = config_with_outputs(tmp_path, fake_api.url)
    sidecar = sidecars(["--config", str(config), "run"], base_env())
    sidecar.wait_event("token_refreshed")
    out = tmp_path / "out"
    assert_every_format_written(out, fake_api)
    before = {p.name: p.stat().st_ino for p in out.iterdir()}
    sidecar.signal(signal.SIGHUP)
    sidecar.wait_event("token_refreshed")
    assert len(fake_api.issued) == 2
    assert_every_format_written(out, fake_api)
    after = {p.name: p.stat().st_ino for p in out.iterdir()}
    assert set(after) == set(before)  # nothing else: no .tmp- file left
    assert all(after[name] != before[name] for name in before), (before, after)
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait() == 0


def test_a_restart_keeps_no_token_while_a_configured_output_is_missing(
    tmp_path: Path, fake_api: FakeApi, sidecars: Callable[..., Sidecar]
) -> None:
    """A newly configured output is written by a new token at start, not an hour later."""
    config = config_with_outputs(tmp_path, fake_api.url)
    assert run_command(["--config", str(config), "once"]).returncode == 0
    sidecar = sidecars(["--config", str(config), "run"], base_env())
    sidecar.wait_event("token_kept")  # everything there: kept, no request
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait() == 0
    assert len(fake_api.requests) == 1
    (tmp_path / "out" / "app.env").unlink()
    sidecar = sidecars(["--config", str(config), "run"], base_env())
    sidecar.wait_event("token_refreshed")
    assert len(fake_api.requests) == 2
    assert sidecar.count("token_kept") == 0
    assert_every_format_written(tmp_path / "out", fake_api)
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait() == 0


def test_an_output_directory_is_checked_and_swept_at_start(
    tmp_path: Path, fake_api: FakeApi
) -> None:
    """A crash's leftover beside an output is removed; an unwritable one exits 1 naming it."""
    config = config_with_outputs(tmp_path, fake_api.url)
    out = tmp_path / "out"
    out.mkdir()
    leftover = out / ".app.env.tmp-deadbeef"
    leftover.write_text("half")
    result = run_command(["--config", str(config), "once"])
    assert result.returncode == 0, result.stderr
    assert not leftover.exists()
    assert str(leftover) in result.stdout  # stale_temp_removed

    import yaml

    document = yaml.safe_load(config.read_text())
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    document["outputs"] = [{"path": str(blocker / "sub" / "app.env"), "format": "env"}]
    config.write_text(yaml.safe_dump(document))
    requests_before = len(fake_api.requests)
    result = run_command(["--config", str(config), "once"])
    assert result.returncode == 1
    assert str(blocker) in result.stderr
    assert "Not a directory" in result.stderr
    assert len(fake_api.requests) == requests_before  # checked before any request


def problems(tmp_path: Path, items: list[object], **token: object) -> list[str]:
    import yaml

    path = tmp_path / "c.yaml"
    document = {"token": {"path": str(tmp_path / "token"), **token}, "outputs": items}
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError) as raised:
        load(path, KEY_ENV)
    return raised.value.problems


def test_check_config_rejects_bad_templates_with_one_line_each(tmp_path: Path) -> None:
    import yaml

    items = [
        {"path": str(tmp_path / "a"), "format": "template", "template": "x ${nope} y"},
        {"path": str(tmp_path / "b"), "format": "template", "template": "cost $5\nok"},
        {"path": str(tmp_path / "c"), "format": "template", "template": "r=${refresh_token}"},
        {"path": str(tmp_path / "d"), "format": "template"},
        {"path": str(tmp_path / "e"), "format": "env", "template": "x"},
    ]
    config = tmp_path / "check.yaml"
    config.write_text(yaml.safe_dump({"token": {"path": str(tmp_path / "t")}, "outputs": items}))
    result = run_command(["--config", str(config), "check-config"])
    assert result.returncode == 78
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 5, lines
    assert lines[0].startswith("outputs[0].template: unknown placeholder ${nope}; known: ")
    assert lines[1].startswith("outputs[1].template: a stray $ at line 1, column 6")
    assert lines[2].startswith("outputs[2].template: unknown placeholder ${refresh_token}")
    assert "needs token.include_refresh_token: true" in lines[2]
    assert lines[3] == (
        "outputs[3].template: is required with format template (a string.Template text)"
    )
    assert lines[4] == "outputs[4].template: only for format template"


def test_output_paths_get_the_checks_of_token_path(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    found = problems(
        tmp_path,
        [
            {"path": str(tmp_path), "format": "raw"},
            {"path": str(a_file / "under"), "format": "raw"},
            {"path": str(tmp_path / "token"), "format": "env"},
            {"path": str(tmp_path / "s.json"), "format": "json"},
            {"path": str(tmp_path / "x"), "format": "raw"},
            {"path": str(tmp_path / "x"), "format": "env"},
        ],
        session_path=str(tmp_path / "s.json"),
    )
    assert found == [
        f"outputs[0].path: {tmp_path} is a directory, not a regular file",
        f"outputs[1].path: {a_file} is a regular file, not a directory",
        f"outputs[2].path: must not be token.path ({tmp_path / 'token'}): "
        "each needs a file of its own",
        f"outputs[3].path: must not be token.session_path ({tmp_path / 's.json'}): "
        "each needs a file of its own",
        f"outputs[5].path: must not be outputs[4].path ({tmp_path / 'x'}): "
        "each needs a file of its own",
    ]


def test_output_items_are_checked_like_sections(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        [
            "just a path",
            {"format": "yaml", "colour": "red"},
            {"path": str(tmp_path / "m"), "format": "raw", "mode": "0644", "group": "no-such-grp"},
        ],
    )
    assert found == [
        "outputs[0]: must be a mapping of path, format, ..., got the string 'just a path'",
        "outputs[1].colour: unknown key",
        "outputs[1].format: must be one of raw, json, env, template",
        "outputs[1].path: is required",
        "outputs[2].mode: 0644 lets every user read the token; use 0640 or 0600",
        "outputs[2].group: unknown group 'no-such-grp'",
    ]


def test_an_unquoted_mode_of_an_output_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"token: {{path: {tmp_path / 'token'}}}\n"
        f"outputs:\n  - {{path: {tmp_path / 'e'}, format: env}}\n"
        f"  - path: {tmp_path / 'f'}\n    format: env\n    mode: 0600\n"
    )
    with pytest.raises(ConfigError) as raised:
        load(path, KEY_ENV)
    assert raised.value.problems == [
        'outputs[1].mode: must be a quoted octal string like "0640" '
        "(YAML read 0600 as the number 384)"
    ]


def test_outputs_come_from_the_file_only() -> None:
    """An environment variable cannot hold a list: FORESTREET_SIDECAR_OUTPUTS_* is unknown."""
    variable = "FORESTREET_SIDECAR_OUTPUTS_0_PATH"
    with pytest.raises(ConfigError) as raised:
        load(None, {**KEY_ENV, variable: "/tmp/x"})
    assert raised.value.problems == [f"{variable}: unknown variable (typo?) (from {variable})"]


def test_mode_and_group_default_to_the_token_s(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "c.yaml"
    gid = os.getgid()
    document = {
        "token": {"path": str(tmp_path / "token"), "mode": "0600", "group": str(gid)},
        "outputs": [{"path": str(tmp_path / "e"), "format": "env"}],
    }
    path.write_text(yaml.safe_dump(document))
    config = load(path, KEY_ENV)
    (only,) = config.outputs
    assert (only.mode, only.group, only.gid) == (0o600, str(gid), gid)


def test_check_config_shows_the_outputs(tmp_path: Path, fake_api: FakeApi) -> None:
    import yaml

    config = config_with_outputs(tmp_path, fake_api.url)
    result = run_command(["--config", str(config), "check-config"])
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load("".join(x + "\n" for x in result.stdout.splitlines() if x[:1] != "#"))
    assert [o["format"] for o in shown["outputs"]] == ["raw", "json", "env", "template"]
    assert shown["outputs"][1]["mode"] == "0640"
    assert shown["outputs"][3]["template"] == every_format(tmp_path / "out")[3]["template"]
    assert "  template: |\n    [auth]\n" in result.stdout  # its lines as they are written
    assert f"# outputs[2].path: from {config}" in result.stdout


def test_renderers_of_env_and_template() -> None:
    env = outputs.env_renderer(include_refresh_token=False)(ISSUED)
    assert env == b"FORESTREET_ACCESS_TOKEN=a.b\nFORESTREET_EXPIRES_AT=1060\n"
    text = "${access_token} ${expires_in} ${expires_at} ${expires_at_iso} ${obtained_at} $$"
    assert outputs.template_problems(text, include_refresh_token=False) == []
    rendered = outputs.template_renderer(text, include_refresh_token=False)(ISSUED)
    assert rendered == b"a.b 60 1060 1970-01-01T00:17:40Z 1000 $"
    with_refresh = outputs.template_renderer("${refresh_token}", include_refresh_token=True)
    assert with_refresh(ISSUED) == b"r.t"


def test_outputs_built_by_hand_follow_the_token_file(tmp_path: Path) -> None:
    token = TokenConfig(path=tmp_path / "token")
    extra = load(None, KEY_ENV).outputs
    assert extra == ()
    assert [o.format for o in outputs.from_config(Config(token=token))] == ["raw"]
