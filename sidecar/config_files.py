"""Files the configuration reads or names: the YAML file within its limits, small regular
files (the key, the CA bundle) read without hanging, and output paths that can never be files.

PyYAML is imported only when there is a file to read: the environment alone does not need it.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Collection
from functools import cache
from pathlib import Path
from typing import Any

from sidecar.config_fields import Problems, kind, name

CONFIG_READ_LIMIT = 1 << 20
CA_BUNDLE_READ_LIMIT = 16 << 20  # the Mozilla bundle is about 0.2 MiB
# Nodes from the document down: sections (1), keys (2), a value (3), a list's items (4).
# A value that is a list still gets its typed message; anything deeper is refused
# before PyYAML's recursive composer can run out of stack.
_MAX_DEPTH = 4
_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"

Entries = dict[tuple[str, str], object]


class InputError(ValueError):
    """A file or value that cannot be what it should be; ``problem`` never quotes a secret.

    A ValueError, so the refresher's re-read turns it into ``key_unavailable``.
    """

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"it {problem}")


def file_type(mode: int) -> str:
    for test, kind_of_file in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return kind_of_file
    return "not a regular file"


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit >> 10} KiB"


def read_small_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    Never blocks (a FIFO is opened non-blocking and refused by ``fstat``), never opens a
    device (``stat`` first), never reads more than ``limit + 1`` bytes. OSError for the
    OS's refusals, InputError for the wrong kind or size of file, ValueError for a NUL.
    """
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"is {file_type(info.st_mode)}, not a regular file")
    if info.st_size > limit:
        raise InputError(f"is larger than {_size(limit)}")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)  # what was opened, whatever was swapped in since the stat
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"is {file_type(info.st_mode)}, not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise InputError(f"is larger than {_size(limit)}")
    return b"".join(chunks)


# --- paths the configuration names -------------------------------------------------------


def ca_bundle_problem(path: Path) -> str | None:
    """Why ``path`` cannot verify a server: checked once at load, not retried as a TLS failure."""
    try:
        data = read_small_file(path, CA_BUNDLE_READ_LIMIT)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    except InputError as exc:
        return f"{path} {exc.problem}"
    if _PEM_CERTIFICATE not in data:
        return f"{path} holds no PEM certificate (no {_PEM_CERTIFICATE.decode()} line)"
    return None


def output_path_problem(path: Path) -> str | None:
    """Why ``path`` can never be a written file: a mistake to report now, not to retry."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        mode = None  # missing, or not for us to see: check_writable speaks at start
    # A symlink is replaced by the rename, whatever it points at.
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        return f"{path} is {file_type(mode)}, not a regular file"
    parent = path.parent
    try:
        parent_mode = parent.stat().st_mode
    except OSError:
        return None
    if not stat.S_ISDIR(parent_mode):
        return f"{parent} is {file_type(parent_mode)}, not a directory"
    return None


# --- the YAML file -----------------------------------------------------------------------


def read_entries(
    path: Path,
    known: Collection[tuple[str, str]],
    problems: Problems,
    lists: dict[str, list[object]] | None = None,
) -> tuple[Entries, str]:
    """The ``(section, key) → value`` entries of the file and its text.

    A top-level name of ``lists`` (``outputs``) holds a list: its items go into
    ``lists[name]``. Unknown sections and keys, and a file that cannot be read or parsed,
    are problems; the entries that are known are returned all the same.
    """
    origin = str(path)
    entries: Entries = {}
    data = _read_config_text(path, problems)
    if data is None:
        return entries, ""
    text, document = data
    if document is None:
        return entries, text
    if not isinstance(document, dict):
        problems.add("config", f"{path} must be a mapping of sections, got {kind(document)}", "")
        return entries, text
    sections = {section for section, _ in known}
    lists = {} if lists is None else lists
    for section, keys in document.items():
        if isinstance(section, str) and section in lists:
            _list_items(section, keys, lists[section], origin, problems)
        elif section not in sections:
            problems.add(name(section), "unknown section", origin)
        elif keys is None:
            continue
        elif not isinstance(keys, dict):
            problems.add(section, "must be a mapping of keys", origin)
        else:
            for key, value in keys.items():
                if not isinstance(key, str) or (section, key) not in known:
                    problems.add(f"{section}.{name(key)}", "unknown key", origin)
                else:
                    entries[(section, key)] = value
    return entries, text


def _list_items(
    section: str, value: object, items: list[object], origin: str, problems: Problems
) -> None:
    if isinstance(value, list):
        items.extend(value)
    elif value is not None:
        problems.add(section, f"must be a list, got {kind(value)}", origin)


def _read_config_text(path: Path, problems: Problems) -> tuple[str, object] | None:
    """The file's text and its YAML document, or None after adding the one problem."""
    import yaml  # only a file needs it; the environment alone does not

    def problem(message: str) -> None:
        problems.add("config", message, "")

    try:
        data = read_small_file(path, CONFIG_READ_LIMIT)
    except OSError as exc:
        problem(f"cannot read {path}: {exc.strerror or exc}")
        return None
    except InputError as exc:
        problem(f"{path} {exc.problem}")
        return None
    except ValueError:  # a NUL byte in the path
        problem(f"cannot read {path}: the path holds a NUL byte")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        problem(f"{path} is not UTF-8 text (line {line}); save it as UTF-8")
        return None
    try:
        return text, yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except _RefusedError as exc:
        problem(f"{path} {exc}")
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        problem(f"{path} is not valid YAML at line {line}: it holds a control character")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or getattr(exc, "context", None) or "unreadable"
        problem(f"{path} is not valid YAML{where}: {what}")
    except (ValueError, OverflowError, TypeError) as exc:
        # PyYAML's constructors let a few foreign errors through (an integer of 5000
        # digits, a timestamp of month 13): still one line naming the file.
        problem(f"{path} holds a value YAML cannot build: {type(exc).__name__}")
    return None


class _RefusedError(Exception):
    """A YAML document this configuration will not compose (too deep, aliases, twice a key)."""


def _refuse_duplicates(node: Any) -> None:
    """A key given twice: YAML keeps the last silently, and typos must not pass silently."""
    seen: dict[tuple[str, str], int] = {}
    for key, _value in node.value:
        if not isinstance(key.value, str):
            continue
        line = key.start_mark.line + 1
        first = seen.get((key.tag, key.value))
        if first is not None:
            where = f"line {line}" if first == line else f"lines {first} and {line}"
            raise _RefusedError(f"has the key {name(key.value)} twice ({where}); keep one")
        seen[(key.tag, key.value)] = line


@cache
def _loader() -> type[Any]:
    """A SafeLoader that refuses aliases and nesting deeper than the schema, as it composes.

    Aliases are what YAML bombs are made of (the merge key ``<<`` copies, so a chain of
    them grows exponentially), and a 20-key, two-level configuration never needs one.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()  # type: ignore[no-untyped-call]
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent):
                raise _RefusedError(f"uses a YAML alias (line {line}); write the value out")
            self.depth += 1
            try:
                if self.depth > _MAX_DEPTH:
                    raise _RefusedError(
                        f"is nested deeper than the configuration allows (line {line})"
                    )
                node = super().compose_node(parent, index)
            finally:
                self.depth -= 1
            if isinstance(node, yaml.MappingNode):
                _refuse_duplicates(node)
            return node

    # YAML 1.2's floats: 1e12 and 1.5e3 are numbers (YAML 1.1 wants "1.0e+12"), so a
    # value out of range is reported as such, not as "got the string '1e12'".
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)$"),
        list("-+.0123456789"),
    )
    return Loader


def written_text(text: str, section: str, key: str) -> str:
    """The source text of ``section.key`` in a YAML document, for error messages."""
    import yaml

    node = yaml.compose(text, Loader=_loader())
    if isinstance(node, yaml.MappingNode):
        for section_node, child in node.value:
            if section_node.value == section and isinstance(child, yaml.MappingNode):
                for key_node, leaf in child.value:
                    if key_node.value == key and isinstance(leaf, yaml.ScalarNode):
                        return str(leaf.value)
    return "?"


def written_item_text(text: str, name: str, index: int, key: str) -> str:
    """The source text of ``key`` in item ``index`` of the top-level list ``name``."""
    import yaml

    node = yaml.compose(text, Loader=_loader())
    if isinstance(node, yaml.MappingNode):
        for list_node, items in node.value:
            if list_node.value == name and isinstance(items, yaml.SequenceNode):
                item = items.value[index] if index < len(items.value) else None
                if isinstance(item, yaml.MappingNode):
                    for key_node, leaf in item.value:
                        if key_node.value == key and isinstance(leaf, yaml.ScalarNode):
                            return str(leaf.value)
    return "?"
