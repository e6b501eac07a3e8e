"""The errorCode table is the published enum: its order, its classes, and one lane each."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from sidecar.error_codes import ERROR_CODES, LANES, STATUSES, TABLE, Lane, lane_for
from sidecar.errors import (
    CredentialError,
    EndpointError,
    InvalidResponseError,
    TransientError,
    WriteError,
)
from tests import oracle


def published_enums() -> list[list[str]]:
    """Every ``errorCode`` enum of the OpenAPI document, one per error answer."""
    if not oracle.OPENAPI.is_file():
        pytest.skip(f"{oracle.OPENAPI} is absent (a clone without shared/); CI has it")
    document = yaml.safe_load(oracle.OPENAPI.read_text(encoding="utf-8"))
    enums: list[list[str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            code = node.get("errorCode")
            if isinstance(code, dict) and "enum" in code:  # not an example's plain string
                enums.append(list(code["enum"]))
            children = list(node.values())
        else:
            children = node if isinstance(node, list) else []
        for child in children:
            walk(child)

    walk(document)
    return enums


def test_the_table_is_the_openapi_enum_in_its_order() -> None:
    enums = published_enums()
    assert len(enums) >= 2  # the 400 and the 401 answers
    for enum in enums:
        assert list(ERROR_CODES) == enum


def test_every_code_of_the_table_has_the_lane_spec_md_gives_it() -> None:
    assert len(ERROR_CODES) == len(set(ERROR_CODES)) == len(oracle.ERROR_CODES) == 34
    assert {code: str(lane) for code, lane in LANES.items()} == oracle.LANES


def test_rows_name_a_lane_and_an_error_status() -> None:
    assert len(TABLE) == len(LANES) == len(STATUSES)
    for code, lane, status in TABLE:
        assert isinstance(lane, Lane)
        assert 400 <= status <= 599, code


def test_an_unknown_or_missing_code_has_no_lane() -> None:
    assert lane_for(None) is None
    assert lane_for("SOMETHING_NEW") is None
    assert lane_for("unauthorised") is None
    assert lane_for("UNAUTHORISED") is Lane.CREDENTIAL


def test_errors_carry_their_lane_and_their_code() -> None:
    assert TransientError("LIMIT_EXCEEDED", "m").lane is Lane.RETRYABLE
    assert TransientError("LIMIT_EXCEEDED", "m").error_code == "LIMIT_EXCEEDED"
    assert TransientError("timeout", "m").error_code is None
    assert InvalidResponseError("m").lane is Lane.RETRYABLE
    assert WriteError("m").error_code is None
    assert CredentialError("FORBIDDEN", "m").lane is Lane.CREDENTIAL
    assert CredentialError("http_401", "m").error_code is None
    assert EndpointError("NOT_FOUND", "m").lane is Lane.REQUEST
    assert EndpointError("NOT_FOUND", "m").error_code == "NOT_FOUND"
