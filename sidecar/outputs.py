"""What is written after every new token: each output is a path, a renderer, a mode, a group.

The configured ``outputs`` come first, then the session file (``json``), the token file
(``raw``) last; a new format is one renderer here and one name in ``FORMATS``. The
writability check, the stale-temp sweep, the write, restart adoption and shutdown all walk
the same tuple. Each file is atomic on its own, not together with the others.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar import sink
from sidecar.outcome import iso

if TYPE_CHECKING:
    from sidecar.config import Config
    from sidecar.session import Session

FORMATS = ("raw", "json", "env", "template")
PLACEHOLDERS = (
    "access_token",
    "expires_in",
    "expires_at",
    "expires_at_iso",
    "obtained_at",
    "refresh_token",  # only with token.include_refresh_token
)


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


def _seconds(value: float) -> str:
    """A number of seconds as a shell or a config file reads it: no exponent, no ``.0``."""
    return str(int(value)) if value == int(value) else f"{value:.3f}"


def placeholder_values(issued: Issued, *, include_refresh_token: bool) -> dict[str, str]:
    """What each template placeholder stands for (SPEC: outputs, format template)."""
    values = {
        "access_token": issued.session.access_token,
        "expires_in": _seconds(issued.session.expires_in),
        "expires_at": str(int(issued.expires_at)),
        "expires_at_iso": iso(issued.expires_at),
        "obtained_at": str(int(issued.obtained_at)),
    }
    if include_refresh_token:
        values["refresh_token"] = issued.session.refresh_token or ""
    return values


def env_renderer(*, include_refresh_token: bool) -> Renderer:
    """``NAME=value`` lines for ``source`` and systemd's ``EnvironmentFile=``.

    Tokens match ``[A-Za-z0-9_.-]+``: no value needs quoting in either reader.
    """

    def render(issued: Issued) -> bytes:
        lines = [
            f"FORESTREET_ACCESS_TOKEN={issued.session.access_token}",
            f"FORESTREET_EXPIRES_AT={int(issued.expires_at)}",
        ]
        if include_refresh_token and issued.session.refresh_token:
            lines.append(f"FORESTREET_REFRESH_TOKEN={issued.session.refresh_token}")
        return ("\n".join(lines) + "\n").encode()

    return render


def template_problems(text: str, *, include_refresh_token: bool) -> list[str]:
    """Why ``text`` cannot render, one message each; rendered with dummy values to be sure."""
    template = string.Template(text)
    allowed = set(PLACEHOLDERS) - (set() if include_refresh_token else {"refresh_token"})
    problems = []
    for match in template.pattern.finditer(text):
        if match.group("invalid") is not None:
            where = match.start()
            line = text.count("\n", 0, where) + 1
            column = where - (text.rfind("\n", 0, where) + 1) + 1
            problems.append(
                f"a stray $ at line {line}, column {column} (write $$ for a literal $, "
                "${name} for a placeholder)"
            )
            continue
        name = match.group("named") or match.group("braced")
        if name is not None and name not in allowed:
            known = ", ".join(f"${{{each}}}" for each in PLACEHOLDERS if each in allowed)
            extra = (
                " (${refresh_token} needs token.include_refresh_token: true)"
                if name == "refresh_token"
                else ""
            )
            problems.append(f"unknown placeholder ${{{name}}}{extra}; known: {known}")
    if not problems:
        dummy = dict.fromkeys(allowed, "x")
        try:
            template.substitute(dummy)
        except (KeyError, ValueError) as exc:  # what the scan above missed
            problems.append(f"does not render: {exc}")
    return problems


def template_renderer(text: str, *, include_refresh_token: bool) -> Renderer:
    template = string.Template(text)

    def render(issued: Issued) -> bytes:
        values = placeholder_values(issued, include_refresh_token=include_refresh_token)
        return template.substitute(values).encode()

    return render


@dataclass(frozen=True, slots=True)
class Output:
    """One file written atomically after every new token."""

    path: Path
    format: str  # one of FORMATS
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


def renderer(format_name: str, template: str | None, *, include_refresh_token: bool) -> Renderer:
    """The renderer of a configured output (its template already checked at load)."""
    chosen: Mapping[str, Callable[[], Renderer]] = {
        "raw": lambda: render_raw,
        "json": lambda: json_renderer(include_refresh_token=include_refresh_token),
        "env": lambda: env_renderer(include_refresh_token=include_refresh_token),
        "template": lambda: template_renderer(
            template or "", include_refresh_token=include_refresh_token
        ),
    }
    return chosen[format_name]()


def from_config(config: Config) -> tuple[Output, ...]:
    """The outputs in write order: the configured ones, the session file, and the token file
    last, so that a reader keyed on it finds every other file already updated."""
    token = config.token
    outputs = [
        Output(
            each.path,
            each.format,
            renderer(each.format, each.template, include_refresh_token=token.include_refresh_token),
            token.mode if each.mode is None else each.mode,  # None only when built by hand
            each.gid,
        )
        for each in config.outputs
    ]
    if token.session_path is not None:
        render = json_renderer(include_refresh_token=token.include_refresh_token)
        outputs.append(Output(token.session_path, "json", render, token.mode, token.gid))
    outputs.append(Output(token.path, "raw", render_raw, token.mode, token.gid))
    return tuple(outputs)


def session_file(outputs: tuple[Output, ...]) -> Path | None:
    """Where restart adoption finds the expiry of the token on disk: the session file, or
    else a configured ``json`` output (the same document)."""
    found = [output.path for output in outputs if output.format == "json"]
    return found[-1] if found else None
