"""What is written after every new token: each output is a path, a renderer, a mode, a group.

The token file (``raw``) and the session file (``json``) are the first two entries; a new
format is one renderer here and one entry in the configuration. The writability check,
the stale-temp sweep, the write, restart adoption and shutdown all walk the same tuple.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar import sink

if TYPE_CHECKING:
    from sidecar.config import TokenConfig
    from sidecar.session import Session


@dataclass(frozen=True, slots=True)
class Issued:
    """A session as the outputs see it: the answer and when its request was sent (Unix s)."""

    session: Session
    obtained_at: float

    @property
    def expires_at(self) -> float:
        return self.obtained_at + self.session.expires_in


Renderer = Callable[[Issued], bytes]


def render_raw(issued: Issued) -> bytes:
    """The access token bytes, no newline."""
    return issued.session.access_token.encode()


def session_document(issued: Issued, *, include_refresh_token: bool) -> dict[str, object]:
    """The session file's object (SPEC: token.session_path)."""
    document: dict[str, object] = {
        "accessToken": issued.session.access_token,
        "expiresIn": issued.session.expires_in,
        "obtainedAt": round(issued.obtained_at, 3),
        "expiresAt": round(issued.expires_at, 3),
    }
    if include_refresh_token and issued.session.refresh_token:
        document["refreshToken"] = issued.session.refresh_token
    return document


def json_renderer(*, include_refresh_token: bool) -> Renderer:
    def render(issued: Issued) -> bytes:
        document = session_document(issued, include_refresh_token=include_refresh_token)
        return json.dumps(document, separators=(",", ":")).encode()

    return render


@dataclass(frozen=True, slots=True)
class Output:
    """One file written atomically after every new token."""

    path: Path
    format: str  # "raw", "json"
    render: Renderer
    mode: int
    gid: int | None

    def write(self, issued: Issued) -> None:
        sink.write_atomic(self.path, self.render(issued), mode=self.mode, gid=self.gid)

    def check_writable(self) -> None:
        sink.check_writable(self.path)

    def sweep(self) -> list[Path]:
        """Remove the temporary files a crash left beside this output."""
        return sink.sweep_stale(self.path)


def from_config(token: TokenConfig) -> tuple[Output, ...]:
    """The outputs in write order: the token file last, so that a reader keyed on it finds
    every other file already updated."""
    outputs = []
    if token.session_path is not None:
        render = json_renderer(include_refresh_token=token.include_refresh_token)
        outputs.append(Output(token.session_path, "json", render, token.mode, token.gid))
    outputs.append(Output(token.path, "raw", render_raw, token.mode, token.gid))
    return tuple(outputs)


def session_file(outputs: tuple[Output, ...]) -> Path | None:
    """Where restart adoption finds the expiry of the token on disk."""
    return next((output.path for output in outputs if output.format == "json"), None)
