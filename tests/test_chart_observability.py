"""The chart's alert rules (per-alert overrides, extra labels, runbook URLs) and its dashboard.

Rendered by the real Helm engine like tests/test_helm_chart.py, whose helpers are reused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_helm_chart import CHART, of_kind, one, render, render_fails, render_values

pytestmark = pytest.mark.chart

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "forestreet-sidecar.json"
RUNBOOKS = "https://github.com/forestreet/forestreet-sidecar/blob/main/docs/runbooks.md"
KEY = {"apiKey": {"value": "ci-placeholder-api-key"}}

Doc = dict[str, Any]


def file_rules() -> dict[str, Doc]:
    document = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r for g in document["groups"] for r in g["rules"]}


def rendered_rules(docs: tuple[Doc, ...]) -> dict[str, Doc]:
    rule = one(docs, "PrometheusRule")
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


def test_without_overrides_the_rules_are_the_file_with_its_runbook_urls() -> None:
    rules = rendered_rules(render("monitoring"))
    assert rules == file_rules()
    for name, rule in rules.items():
        assert rule["annotations"]["runbook_url"] == f"{RUNBOOKS}#{name.lower()}"


def test_per_alert_overrides_extra_labels_and_runbook_base() -> None:
    rules = rendered_rules(render("observability"))
    original = file_rules()
    assert "ForestreetSidecarClockSkew" not in rules  # enabled: false
    assert set(rules) == set(original) - {"ForestreetSidecarClockSkew"}
    assert rules["ForestreetSidecarTokenExpiringSoon"]["for"] == "0s"
    failures = rules["ForestreetSidecarConsecutiveFailures"]["labels"]
    assert failures == {"severity": "critical", "page": "true", "team": "payments"}
    for name, rule in rules.items():
        assert rule["labels"]["team"] == "payments", name
        assert rule["expr"] == original[name]["expr"], name
        url = f"https://runbooks.example.com/forestreet-sidecar#{name.lower()}"
        assert rule["annotations"] == {**original[name]["annotations"], "runbook_url": url}
        if name not in (
            "ForestreetSidecarTokenExpiringSoon",
            "ForestreetSidecarConsecutiveFailures",
        ):
            assert rule.get("for") == original[name].get("for"), name
            assert rule["labels"]["severity"] == original[name]["labels"]["severity"], name


def test_a_rules_own_severity_wins_over_additional_rule_labels(tmp_path: Path) -> None:
    values = {**KEY, "prometheusRule": {"enabled": True, "additionalRuleLabels": {"severity": "x"}}}
    rules = rendered_rules(render_values(tmp_path, values))
    assert {r["labels"]["severity"] for r in rules.values()} == {"critical", "warning"}


def test_unknown_alert_names_and_bad_durations_are_refused(tmp_path: Path) -> None:
    err = render_fails(
        tmp_path,
        {**KEY, "prometheusRule": {"enabled": True, "alerts": {"ForestreetSidecarTypo": {}}}},
    )
    assert "ForestreetSidecarTypo" in err
    err = render_fails(
        tmp_path,
        {
            **KEY,
            "prometheusRule": {
                "enabled": True,
                "alerts": {"ForestreetSidecarDown": {"for": "five minutes"}},
            },
        },
    )
    assert "for" in err


def test_disabling_every_alert_is_refused(tmp_path: Path) -> None:
    every = {name: {"enabled": False} for name in file_rules()}
    err = render_fails(tmp_path, {**KEY, "prometheusRule": {"enabled": True, "alerts": every}})
    assert "disables every alert" in err


def test_dashboard_configmap_is_off_by_default() -> None:
    docs = render("default")
    assert not [
        d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")
    ]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["grafanaDashboard"] == {
        "enabled": False,
        "namespace": "",
        "labels": {"grafana_dashboard": "1"},
        "annotations": {},
    }


def dashboard_configmap(docs: tuple[Doc, ...]) -> Doc:
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    return cm


def test_dashboard_configmap_carries_the_dashboard_with_its_label_and_namespace() -> None:
    cm = dashboard_configmap(render("observability"))
    meta = cm["metadata"]
    assert meta["namespace"] == "monitoring"
    assert meta["labels"]["grafana_dashboard"] == "1"
    assert meta["labels"]["team"] == "payments"
    assert meta["annotations"] == {"grafana_folder": "Forestreet"}
    assert list(cm["data"]) == ["forestreet-sidecar.json"]
    assert cm["data"]["forestreet-sidecar.json"] == DASHBOARD.read_text()
    assert json.loads(cm["data"]["forestreet-sidecar.json"])["uid"] == "forestreet-sidecar"


def test_dashboard_defaults_to_the_release_namespace_and_the_sidecar_label(tmp_path: Path) -> None:
    cm = dashboard_configmap(
        render_values(tmp_path, {**KEY, "grafanaDashboard": {"enabled": True}})
    )
    assert cm["metadata"]["namespace"] == "default"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "annotations" not in cm["metadata"]


def test_dashboard_label_can_be_replaced(tmp_path: Path) -> None:
    """Helm merges maps, so the default label goes with null."""
    labels = {"grafana_dashboard": None, "my_dashboards": "yes"}
    values = {**KEY, "grafanaDashboard": {"enabled": True, "labels": labels}}
    cm = dashboard_configmap(render_values(tmp_path, values))
    assert cm["metadata"]["labels"]["my_dashboards"] == "yes"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]


def test_dashboard_values_are_closed(tmp_path: Path) -> None:
    err = render_fails(tmp_path, {**KEY, "grafanaDashboard": {"enabled": True, "folder": "x"}})
    assert "folder" in err
