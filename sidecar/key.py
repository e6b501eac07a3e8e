"""The API key: where it lives (file, variable, systemd credential), read by one set of rules.

Load finds it and reads it once; the refresher re-reads it before every request through the
same ``KeySource.read``. No message here ever holds the key or a part of it.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.config_fields import WHITESPACE, Problems
from sidecar.config_files import InputError, read_small_file

CREDENTIAL_NAME = "forestreet-api-key"
KEY_READ_LIMIT = 8 * 1024  # bytes read of a key file at most
KEY_MAX_LENGTH = 4096
_BOM = "\ufeff"
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
_UNSAFE = re.compile(r"[^\x21-\x7e]")
_ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class Secret:
    """A value that must never be printed; its repr says so."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "<SECRET>"

    __str__ = __repr__


def clean_key(text: str) -> str:
    """The key without surrounding whitespace and a leading BOM, if it can be a header value."""
    text = text.strip(WHITESPACE)
    if text.startswith(_BOM):
        text = text[1:].strip(WHITESPACE)
    if not text:
        raise InputError("is empty")
    if len(text) > KEY_MAX_LENGTH:
        raise InputError(f"is longer than {KEY_MAX_LENGTH} characters")
    if not _HEADER_SAFE.fullmatch(text):
        bad = _UNSAFE.search(text)
        assert bad is not None  # noqa: S101 - the fullmatch failed on a non-empty text
        where = f"at position {bad.start() + 1}"
        if bad.group() in "\r\n\x85\u2028\u2029":
            raise InputError(f"holds a line break {where}")
        raise InputError(f"holds a character an HTTP header cannot carry {where}")
    return text


PROXY_CREDENTIAL_SHAPE = "one line user:password"


def read_proxy_credential(path: Path) -> Secret:
    """``user:password`` from api.proxy_auth_file, by the key file's rules (a regular file of
    at most 8 KiB, whitespace and a BOM stripped, 1-4096 visible ASCII characters) and with a
    user before the first colon. OSError and InputError as ``KeySource.read``; never the text.
    """
    data = read_small_file(path, KEY_READ_LIMIT)
    text = clean_key(data.decode("utf-8", "surrogateescape"))
    user, colon, _password = text.partition(":")
    if not colon:
        raise InputError(f"holds no colon: it must be {PROXY_CREDENTIAL_SHAPE}")
    if not user:
        raise InputError(f"has no user before the colon: it must be {PROXY_CREDENTIAL_SHAPE}")
    return Secret(text)


def proxy_credential_problem(path: Path) -> str | None:
    """Why api.proxy_auth_file cannot be used now, naming the file, never its content."""
    try:
        read_proxy_credential(path)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or type(exc).__name__}"
    except InputError as exc:
        return f"{path} {exc.problem}"
    except ValueError:
        return "the path holds a NUL byte"
    return None


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where the API key is read from, fresh before every request."""

    kind: str  # "file" | "env" | "credential"
    location: str  # a path or a variable name: never the key

    def read(self, environ: Mapping[str, str]) -> Secret:
        """The current key; OSError and ValueError (InputError) are the caller's to translate.

        Neither error's text ever holds the key or a part of it.
        """
        if self.kind == "env":
            value = environ.get(self.location)
            if value is None:
                raise InputError("is not set")
            return Secret(clean_key(value))
        data = read_small_file(Path(self.location), KEY_READ_LIMIT)
        # Bytes that are not UTF-8 stay as one bad character each, at their position.
        return Secret(clean_key(data.decode("utf-8", "surrogateescape")))

    def describe(self) -> str:
        if self.kind == "env":
            return f"environment variable {self.location}"
        if self.kind == "credential":
            return f"systemd credential {self.location}"
        return f"file {self.location}"


def find_key(  # noqa: PLR0911 - one return per place the key can be
    key_file: Path | None,
    key_env: str,
    environ: Mapping[str, str],
    sources: Mapping[str, str],
    problems: Problems,
) -> tuple[KeySource | None, list[str]]:
    """Where the key is (api.key_file, then api.key_env, then the systemd credential),
    after reading it once by the same rules every re-read follows; and any warnings."""
    warnings: list[str] = []
    if key_file is not None:
        origin = sources.get("api.key_file", "")
        source = KeySource("file", str(key_file))
        try:
            source.read(environ)
            readable_by_all = key_file.stat().st_mode & stat.S_IROTH
        except OSError as exc:
            problems.add("api.key_file", f"cannot read {key_file}: {exc.strerror}", origin)
            return None, warnings
        except InputError as exc:
            problems.add("api.key_file", f"{key_file} {exc.problem}", origin)
            return None, warnings
        if readable_by_all:
            warnings.append(
                f"api.key_file: {key_file} is readable by every user; chmod 0600 or 0640 it"
            )
        return source, warnings
    if environ.get(key_env, "").strip(WHITESPACE + _BOM):
        source = KeySource("env", key_env)
        try:
            source.read(environ)
        except InputError as exc:
            problems.add(
                "api.key_env",
                f"environment variable {key_env} {exc.problem}",
                sources.get("api.key_env", ""),
            )
            return None, warnings
        return source, warnings
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        return _find_credential(Path(credentials), key_env, environ, sources, problems), warnings
    _no_key(key_env, sources, problems)
    return None, warnings


def _find_credential(  # noqa: PLR0911 - one return per way a directory fails
    directory: Path,
    key_env: str,
    environ: Mapping[str, str],
    sources: Mapping[str, str],
    problems: Problems,
) -> KeySource | None:
    """The systemd credential, if there is one; an unusable directory is a problem to name."""

    def problem(message: str) -> None:
        problems.add("CREDENTIALS_DIRECTORY", message, "")

    candidate = directory / CREDENTIAL_NAME
    try:
        if not stat.S_ISDIR(directory.stat().st_mode):
            problem(f"{directory} is not a directory")
            return None
        candidate.stat()
    except FileNotFoundError as exc:
        if exc.filename == str(candidate):
            _no_key(key_env, sources, problems)
        else:
            problem(f"cannot read {directory}: {exc.strerror}")
        return None
    except OSError as exc:  # EACCES on a mode-000 directory, ELOOP, ...
        problem(f"cannot read {exc.filename or directory}: {exc.strerror}")
        return None
    except ValueError:
        problem("the directory's name holds a NUL byte")
        return None
    source = KeySource("credential", str(candidate))
    try:
        source.read(environ)
    except OSError as exc:
        problem(f"cannot read {candidate}: {exc.strerror}")
        return None
    except InputError as exc:
        problem(f"systemd credential {candidate} {exc.problem}")
        return None
    return source


def _no_key(key_env: str, sources: Mapping[str, str], problems: Problems) -> None:
    # An api.key_env holding the key itself (a careless paste) must not be echoed here:
    # only a conventional variable name is.
    variable = (
        f"the environment variable {key_env}"
        if _ENV_NAME.fullmatch(key_env)
        else "the environment variable api.key_env names"
    )
    problems.add(
        "api.key_file",
        f"no API key found: set api.key_file, {variable}, "
        f"or a systemd credential named {CREDENTIAL_NAME}",
        sources.get("api.key_file", ""),
    )
