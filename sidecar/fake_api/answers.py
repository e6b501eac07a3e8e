"""A scripted answer (:class:`Answer`), its JSON form, and the record of a request."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.error_codes import STATUSES


def default_status(error_code: str | None) -> int:
    """The HTTP status the fake sends with ``error_code`` when no status is scripted."""
    if error_code is None:
        return 200
    return STATUSES.get(error_code, 400)


@dataclass(frozen=True, slots=True)
class Answer:
    """One scripted answer; defaults give a normal 200 session.

    ``status`` None means the default for ``error_code`` (:func:`default_status`; 200 without a
    code). An ``error_code`` always produces the error body, whatever the status, because the
    sidecar must classify by ``errorCode`` and not by status.
    """

    status: int | None = None
    error_code: str | None = None
    retry_after: str | None = None
    body: bytes | None = None
    content_type: str | None = None
    delay: float = 0.0
    trickle: float = 0.0
    reset: bool = False
    location: str | None = None
    lifetime: float | None = None
    extra_fields: dict[str, object] | None = None
    omit_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # 1xx would be an interim answer that clients handle in a completely different way.
        if self.status is not None and not 200 <= self.status <= 599:
            raise ValueError(f"status must be within 200..599, not {self.status}")
        for name in ("delay", "trickle"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")

    @property
    def effective_status(self) -> int:
        return self.status if self.status is not None else default_status(self.error_code)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Answer:
        """Build an answer from its JSON form (camelCase keys, ``body`` as text)."""
        unknown = sorted(set(data) - set(_JSON_FIELDS))
        if unknown:
            raise ValueError(f"unknown answer field {unknown[0]!r}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name, convert = _JSON_FIELDS[key]
            try:
                kwargs[name] = convert(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"answer field {key!r}: {exc}") from exc
        return cls(**kwargs)


def _optional(convert: Callable[[object], Any]) -> Callable[[object], Any]:
    return lambda value: None if value is None else convert(value)


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _as_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _as_str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _as_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _as_retry_after(value: object) -> str:
    # A bare JSON number is the natural way to write delay-seconds; the header carries text.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _as_str(value)


def _as_dict(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {value!r}")
    return dict(value)


def _as_names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list of field names, got {value!r}")
    return tuple(_as_str(item) for item in value)


_JSON_FIELDS: dict[str, tuple[str, Callable[[object], Any]]] = {
    "status": ("status", _optional(_as_int)),
    "errorCode": ("error_code", _optional(_as_str)),
    "retryAfter": ("retry_after", _optional(_as_retry_after)),
    "body": ("body", _optional(lambda value: _as_str(value).encode())),
    "contentType": ("content_type", _optional(_as_str)),
    "delay": ("delay", _as_float),
    "trickle": ("trickle", _as_float),
    "reset": ("reset", _as_bool),
    "location": ("location", _optional(_as_str)),
    "lifetime": ("lifetime", _optional(_as_float)),
    "extraFields": ("extra_fields", _optional(_as_dict)),
    "omitFields": ("omit_fields", _as_names),
}


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as the fake received it (any path)."""

    method: str
    path: str
    api_key: str | None
    received_at: float  # time.monotonic()


def parse_script(body: bytes | None) -> list[Answer]:
    if body is None:
        raise ValueError("the script must be sent with a Content-Length")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the script is not valid JSON: {exc}") from exc
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        # ValueError throughout: every problem with a script becomes the same 400.
        raise ValueError("the script must be a JSON list of answer objects")  # noqa: TRY004
    answers = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"answer {index}: not a JSON object")  # noqa: TRY004
        try:
            answers.append(Answer.from_json(item))
        except ValueError as exc:
            raise ValueError(f"answer {index}: {exc}") from exc
    return answers
