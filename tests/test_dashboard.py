"""The Grafana dashboard: its variables, panels and queries, and that it is what build.py makes.

.ci/check-prometheus evaluates every panel expression against a live sidecar; these tests
check the JSON itself.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "grafana" / "forestreet-sidecar.json"
BUILDER = REPO / "deploy" / "grafana" / "build.py"
CHART_COPY = REPO / "helm" / "forestreet-sidecar" / "files" / "dashboard.json"
OBSERVABILITY = REPO / "docs" / "observability.md"

# The panels issue 14 asks for, by title.
REQUIRED_PANELS = {
    "Seconds until expiry",
    "Fleet minimum: seconds until expiry",
    "Pods without a valid token",
    "Refresh rate by result and reason",
    "Consecutive failures",
    "Next refresh in",
    "Refresh duration p99",
    "Clock skew",
    "Notify failures",
}


def board() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    return [p for p in board()["panels"] if p["type"] != "row"]


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board()["templating"]["list"]}


def test_dashboard_has_a_stable_uid_and_title() -> None:
    assert board()["uid"] == "forestreet-sidecar"
    assert board()["title"] == "Forestreet sidecar"


def test_datasource_variable_and_every_query_uses_it() -> None:
    datasource = variables()["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    ref = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels():
        assert panel["datasource"] == ref, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == ref, panel["title"]


def test_instance_variable_selects_pods_and_every_query_is_filtered_by_it() -> None:
    instance = variables()["instance"]
    assert instance["type"] == "query"
    assert instance["query"] == "label_values(forestreet_sidecar_build_info, instance)"
    assert instance["multi"] is True
    assert instance["includeAll"] is True
    assert instance["allValue"] == ".*"
    for panel in panels():
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], panel["title"]


def test_required_panels_are_there_with_units() -> None:
    titles = {p["title"] for p in panels()}
    assert titles >= REQUIRED_PANELS, REQUIRED_PANELS - titles
    for panel in panels():
        assert panel["targets"], panel["title"]
        assert panel["description"], panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]


def test_panel_ids_are_unique_and_the_grid_is_24_wide() -> None:
    every = board()["panels"]
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) and i > 0 for i in ids)
    for panel in every:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]


def test_every_metric_the_dashboard_reads_is_documented() -> None:
    documented = OBSERVABILITY.read_text()
    for panel in panels():
        for target in panel["targets"]:
            for name in set(re.findall(r"forestreet_sidecar_(\w+)", target["expr"])):
                short = re.sub(r"_(total|bucket|sum|count)$", "", name)
                assert f"`{short}" in documented, f"{panel['title']}: {name}"


def test_the_chart_ships_the_same_dashboard() -> None:
    assert CHART_COPY.read_bytes() == DASHBOARD.read_bytes(), (
        "run deploy/grafana/build.py (it writes both)"
    )


def test_committed_json_is_what_the_builder_makes() -> None:
    """Needs grafana-foundation-sdk (deploy/grafana/requirements.txt); .ci/check-prometheus
    runs `build.py --check` in a venv of its own, so CI always compares."""
    pytest.importorskip("grafana_foundation_sdk")
    spec = importlib.util.spec_from_file_location("dashboard_build", BUILDER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == DASHBOARD.read_text()
