"""The alert rules: runbooks, labels, the metrics they read, and the scaling the e2e relies on.

promtool itself (check rules, the unit tests with 60-s and one-hour tokens) runs in
.ci/check-alerts, and a real Prometheus in .ci/check-prometheus; these tests need neither.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import signal
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.fake_api import FakeApi
from sidecar.metrics import Metrics
from tests.conftest import Sidecar, get, write_config

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
TESTS = (REPO / "deploy" / "prometheus" / "alerts_test.yaml",
         REPO / "deploy" / "prometheus" / "alerts_short_test.yaml")  # fmt: skip
RUNBOOKS = REPO / "docs" / "runbooks.md"
OBSERVABILITY = REPO / "docs" / "observability.md"
RUNBOOK_URL = "https://github.com/forestreet/forestreet-sidecar/blob/main/docs/runbooks.md"
E2E = REPO / ".ci" / "check-prometheus"


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors() -> list[str]:
    headings = re.findall(r"(?m)^#{1,6} (.+)$", RUNBOOKS.read_text())
    return [github_anchor(h) for h in headings]


def load_e2e() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("check_prometheus", str(E2E))
    spec = importlib.util.spec_from_loader("check_prometheus", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_every_rule_is_an_alert_with_a_severity_and_summary() -> None:
    for rule in rules():
        assert "alert" in rule, rule
        assert rule["alert"].startswith("ForestreetSidecar")
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_every_rule_has_a_runbook_url_whose_anchor_exists() -> None:
    anchors = runbook_anchors()
    for rule in rules():
        url = rule["annotations"].get("runbook_url", "")
        base, _, anchor = url.partition("#")
        assert base == RUNBOOK_URL, f"{rule['alert']}: runbook_url {url!r}"
        assert anchor == rule["alert"].lower(), f"{rule['alert']}: anchor {anchor!r}"
        assert anchor in anchors, f"{rule['alert']}: no heading #{anchor} in docs/runbooks.md"


def test_runbooks_have_one_section_per_alert_and_no_other() -> None:
    sections = re.findall(r"(?m)^## (ForestreetSidecar\w+)$", RUNBOOKS.read_text())
    assert sections == [rule["alert"] for rule in rules()]


def test_runbook_links_between_sections_resolve() -> None:
    anchors = set(runbook_anchors())
    links = re.findall(r"\]\(#([\w-]+)\)", RUNBOOKS.read_text())
    assert links
    assert set(links) <= anchors


def test_every_metric_the_rules_read_is_exported_and_documented() -> None:
    registry = CollectorRegistry()
    Metrics(registry, "0.0.0")
    exported = generate_latest(registry).decode()
    documented = OBSERVABILITY.read_text()
    for rule in rules():
        for name in set(re.findall(r"forestreet_sidecar_\w+", rule["expr"])):
            assert re.search(rf"(?m)^(# TYPE )?{name}[ {{]", exported), f"{rule['alert']}: {name}"
            short = name.removeprefix("forestreet_sidecar_").removesuffix("_total")
            assert f"`{short}" in documented, f"{name} is not in docs/observability.md"


def test_relative_thresholds_read_the_lifetime() -> None:
    by_name = {rule["alert"]: rule["expr"] for rule in rules()}
    for name in ("TokenExpiringSoon", "NoRecentSuccess", "ClockSkew"):
        assert "forestreet_sidecar_token_lifetime_seconds" in by_name[f"ForestreetSidecar{name}"]
    assert (
        "0.2 * forestreet_sidecar_token_lifetime_seconds"
        in by_name["ForestreetSidecarTokenExpiringSoon"]
    )


def test_seconds_constants_are_written_as_minutes_so_they_scale() -> None:
    """Bare numbers left in an expression must be dimensionless (fractions, counts)."""
    for rule in rules():
        expr = re.sub(r'"[^"]*"', '""', rule["expr"])  # label values and regexes
        expr = re.sub(r"\[[^\]]*\]", "[]", expr)  # range selectors
        expr = re.sub(r"\d+(?:\.\d+)? \* 60\b", "S", expr)  # the seconds convention
        numbers = [float(n) for n in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", expr)]
        assert all(n < 10 for n in numbers), f"{rule['alert']}: bare numbers {numbers}"


def test_both_token_lengths_are_unit_tested() -> None:
    lifetimes: set[str] = set()
    for path in TESTS:
        document = yaml.safe_load(path.read_text())
        assert document["rule_files"] == ["alerts.yaml"]
        for test in document["tests"]:
            for series in test["input_series"]:
                if series["series"].startswith("forestreet_sidecar_token_lifetime_seconds"):
                    lifetimes.add(series["values"].split("x")[0])
    assert {"60", "3600"} <= lifetimes


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [("1m", 60), ("90s", 90), ("1h30m", 5400), ("500ms", 0.5), ("1d", 86400)],
)
def test_e2e_parses_prometheus_durations(duration: str, seconds: float) -> None:
    assert load_e2e().parse_duration(duration) == seconds


def test_e2e_scales_every_time_constant_by_one_factor() -> None:
    e2e = load_e2e()
    document = yaml.safe_load(ALERTS.read_text())
    scaled = e2e.scale_rules(document, 1 / 120)
    by_name = {r["alert"]: r for g in scaled["groups"] for r in g["rules"]}
    for rule in rules():
        new = by_name[rule["alert"]]
        if "for" in rule:
            assert e2e.parse_duration(new["for"]) == pytest.approx(
                e2e.parse_duration(rule["for"]) / 120, abs=0.001
            )
        assert " * 60" not in new["expr"]
        assert not re.search(r"\[\d+[smhdwy]\]", new["expr"]), new["expr"]
    assert "> 2.5" in by_name["ForestreetSidecarRefreshOverdue"]["expr"]
    assert "[7500ms]" in by_name["ForestreetSidecarCredentialErrors"]["expr"]
    assert "[720000ms]" in by_name["ForestreetSidecarDown"]["expr"]
    assert by_name["ForestreetSidecarTokenExpired"]["for"] == "500ms"
    # Annotations are left alone.
    assert scaled["groups"][0]["rules"][0]["annotations"] == rules()[0]["annotations"]


def test_e2e_substitutes_grafana_variables() -> None:
    e2e = load_e2e()
    values = {"instance": "a", "__rate_interval": "5s"}
    assert e2e.substitute('x{i=~"$instance"}[$__rate_interval]', values) == 'x{i=~"a"}[5s]'
    assert e2e.substitute('x{i=~"${instance}"} [[instance]]', values) == 'x{i=~"a"} a'
    with pytest.raises(KeyError):
        e2e.substitute("x{j=$job}", values)


def lifetime_gauge(url: str) -> float:
    for family in text_string_to_metric_families(get(url + "/metrics").text):
        if family.name == "forestreet_sidecar_token_lifetime_seconds":
            return float(family.samples[0].value)
    raise AssertionError("no forestreet_sidecar_token_lifetime_seconds")


def test_token_lifetime_gauge_is_the_expires_in_of_a_new_and_of_a_kept_token(
    tmp_path: Path, sidecars: Callable[..., Sidecar]
) -> None:
    with FakeApi(lifetime=1234.5) as api:
        config = write_config(tmp_path, api.url, server={"listen": "127.0.0.1:0"})
        first = sidecars(["--config", str(config), "run"])
        url = "http://" + first.wait_event("started")["listen"]
        assert lifetime_gauge(url) == 1234.5
        first.signal(signal.SIGTERM)
        assert first.wait() == 0
        second = sidecars(["--config", str(config), "run"])
        second.wait_event("token_kept")
        url = "http://" + second.wait_event("started")["listen"]
        assert lifetime_gauge(url) == 1234.5
        assert len(api.issued) == 1  # the second process fetched nothing
