"""Outputs as data: the token and session files are entries of one tuple, in write order."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from sidecar import outputs
from sidecar.config import Config, TokenConfig
from sidecar.session import Session

SESSION = Session(access_token="a.b", expires_in=60.0, refresh_token="r.t", expires_at=None)
ISSUED = outputs.Issued(SESSION, obtained_at=1_000.0)


def test_the_token_file_alone_by_default(tmp_path: Path) -> None:
    token = TokenConfig(path=tmp_path / "token")
    (only,) = outputs.from_config(Config(token=token))
    assert (only.path, only.format, only.mode, only.gid) == (tmp_path / "token", "raw", 0o640, None)
    assert outputs.session_file((only,)) is None


def test_the_session_file_comes_first_and_the_token_file_last(tmp_path: Path) -> None:
    token = TokenConfig(path=tmp_path / "token", session_path=tmp_path / "session.json", mode=0o600)
    written = outputs.from_config(Config(token=token))
    assert [o.format for o in written] == ["json", "raw"]
    assert outputs.session_file(written) == tmp_path / "session.json"
    for output in written:
        output.write(ISSUED)
        assert stat.S_IMODE(output.path.stat().st_mode) == 0o600
    assert (tmp_path / "token").read_bytes() == b"a.b"
    assert json.loads((tmp_path / "session.json").read_text()) == {
        "accessToken": "a.b",
        "expiresIn": 60.0,
        "obtainedAt": 1000.0,
        "expiresAt": 1060.0,
    }


def test_the_refresh_token_only_when_asked_for() -> None:
    with_it = json.loads(outputs.json_renderer(include_refresh_token=True)(ISSUED))
    without = json.loads(outputs.json_renderer(include_refresh_token=False)(ISSUED))
    assert with_it["refreshToken"] == "r.t"
    assert "refreshToken" not in without
