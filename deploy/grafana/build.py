"""Build deploy/grafana/forestreet-sidecar.json with grafana-foundation-sdk.

    python3 -m venv /tmp/gsdk && /tmp/gsdk/bin/pip install -r deploy/grafana/requirements.txt
    /tmp/gsdk/bin/python deploy/grafana/build.py          # rewrite the JSON and the chart's copy
    /tmp/gsdk/bin/python deploy/grafana/build.py --check  # exit 1 if either differs

The dashboard is code so that its PromQL is reviewed like the alert rules and every panel's
expression can be evaluated against a live sidecar (.ci/check-prometheus does). The SDK's
types are generated from Grafana's own schema, so a misspelt option fails here, not in Grafana.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

HERE = Path(__file__).resolve().parent
OUTPUTS = (
    HERE / "forestreet-sidecar.json",
    HERE.parent.parent / "helm" / "forestreet-sidecar" / "files" / "dashboard.json",
)
UID = "forestreet-sidecar"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'instance=~"$instance"'  # every query is limited to the chosen pods/instances
RUNBOOKS = "https://github.com/forestreet/forestreet-sidecar/blob/main/docs/runbooks.md"


def query(expr: str, legend: str = "__auto", ref: str = "A") -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref)
        .range()
        .datasource(DATASOURCE)
    )


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in steps])
    )


def graph(
    title: str, description: str, unit: str, *targets: prometheus.Dataquery
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .line_width(1)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .legend(
            cb.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "min", "max"])
        )
        .tooltip(
            cb.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.ASCENDING)
        )
    )
    for target in targets:
        panel = panel.with_target(target)
    return panel


def single(
    title: str,
    description: str,
    unit: str,
    target: prometheus.Dataquery,
    steps: db.ThresholdsConfig,
) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .with_target(target)
        .thresholds(steps)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.AREA)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
    )


def build() -> db.Dashboard:
    expiry = f"forestreet_sidecar_token_expiry_timestamp_seconds{{{SEL}}}"
    legend = "{{instance}} {{pod}}"
    ids = itertools.count(1)
    return (
        db.Dashboard("Forestreet sidecar")
        .uid(UID)
        .description(
            "forestreet-sidecar: the session token on disk per pod, its refreshes and what the "
            "alerts in deploy/prometheus/alerts.yaml look at."
        )
        .tags(["forestreet", "forestreet-sidecar"])
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .link(
            db.DashboardLink("Runbooks")
            .type(model.DashboardLinkType.LINK)
            .url(RUNBOOKS)
            .icon("doc")
            .target_blank(True)
        )
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            db.QueryVariable("instance")
            .label("Pod / instance")
            .description("Scrape targets that export forestreet_sidecar_build_info.")
            .datasource(DATASOURCE)
            .query("label_values(forestreet_sidecar_build_info, instance)")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(model.VariableOption(selected=True, text="All", value="$__all"))
        )
        .with_row(db.Row("Token").id(next(ids)))
        .with_panel(
            single(
                "Fleet minimum: seconds until expiry",
                "The soonest expiry of any selected sidecar's token. A healthy sidecar replaces "
                "its token with 20-30% of the lifetime left.",
                "s",
                query(f"min({expiry} - time())", "fleet minimum"),
                thresholds((None, "red"), (60, "orange"), (300, "green")),
            )
            .id(next(ids))
            .height(6)
            .span(6)
        )
        .with_panel(
            single(
                "Pods without a valid token",
                "Sidecars whose token has expired or that have none yet "
                "(ForestreetSidecarTokenExpired).",
                "none",
                query(f"count({expiry} <= time()) or vector(0)", "without a valid token"),
                thresholds((None, "green"), (1, "red")),
            )
            .id(next(ids))
            .height(6)
            .span(6)
        )
        .with_panel(
            single(
                "Token lifetime",
                "expiresIn of the tokens on disk; the relative alert thresholds follow it.",
                "s",
                query(
                    f"min(forestreet_sidecar_token_lifetime_seconds{{{SEL}}})", "shortest lifetime"
                ),
                thresholds((None, "blue")),
            )
            .id(next(ids))
            .height(6)
            .span(6)
        )
        .with_panel(
            single(
                "Sidecars scraped",
                "Selected sidecars answering scrapes now, out of those seen in the time range "
                "(ForestreetSidecarDown).",
                "none",
                query(
                    f"count(up{{{SEL}}} == 1 and on(job, instance) "
                    "forestreet_sidecar_build_info) or vector(0)",
                    "up",
                ),
                thresholds((None, "red"), (1, "green")),
            )
            .id(next(ids))
            .height(6)
            .span(6)
        )
        .with_panel(
            graph(
                "Seconds until expiry",
                "Per sidecar: the token on disk expires in this many seconds. The saw-tooth "
                "resets at each refresh; under 20% of the lifetime means refreshes are failing.",
                "s",
                query(f"{expiry} - time()", legend),
            )
            .id(next(ids))
            .height(8)
            .span(12)
        )
        .with_panel(
            graph(
                "Next refresh in",
                "Seconds until the next scheduled attempt; below zero the attempt is overdue "
                "(ForestreetSidecarRefreshOverdue).",
                "s",
                query(
                    f"forestreet_sidecar_next_refresh_timestamp_seconds{{{SEL}}} - time()", legend
                ),
            )
            .id(next(ids))
            .height(8)
            .span(12)
        )
        .with_row(db.Row("Refreshes").id(next(ids)))
        .with_panel(
            graph(
                "Refresh rate by result and reason",
                "Attempts per second; reason is ok, an upstream errorCode or a local cause.",
                "reqps",
                query(
                    "sum by (result, reason) (rate(forestreet_sidecar_refreshes_total"
                    f"{{{SEL}}}[$__rate_interval])) > 0",
                    "{{result}} {{reason}}",
                ),
            )
            .id(next(ids))
            .height(8)
            .span(12)
        )
        .with_panel(
            graph(
                "Consecutive failures",
                "Failed attempts since the last success (ForestreetSidecarConsecutiveFailures "
                "at 5).",
                "none",
                query(f"forestreet_sidecar_consecutive_failures{{{SEL}}}", legend),
            )
            .id(next(ids))
            .height(8)
            .span(12)
        )
        .with_panel(
            graph(
                "Refresh duration p99",
                "99th percentile of request + write time of an attempt, over the selected "
                "sidecars.",
                "s",
                query(
                    "histogram_quantile(0.99, sum by (le) (rate("
                    f"forestreet_sidecar_refresh_duration_seconds_bucket{{{SEL}}}"
                    "[$__rate_interval])))",
                    "p99",
                ),
            )
            .id(next(ids))
            .height(8)
            .span(8)
        )
        .with_panel(
            graph(
                "Clock skew",
                "expiresAt minus (local time + expiresIn) at the last success; it includes the "
                "answer's latency (ForestreetSidecarClockSkew).",
                "s",
                query(f"forestreet_sidecar_clock_skew_seconds{{{SEL}}}", legend),
            )
            .id(next(ids))
            .height(8)
            .span(8)
        )
        .with_panel(
            graph(
                "Notify failures",
                "Failed notifications of the application per method (command, http, signal), "
                "per interval.",
                "none",
                query(
                    "sum by (instance, method) (increase(forestreet_sidecar_notify_total"
                    f'{{result="failure",{SEL}}}[$__rate_interval]))',
                    "{{instance}} {{method}}",
                ),
            )
            .id(next(ids))
            .height(8)
            .span(8)
        )
    )


def render() -> str:
    built = build().build()
    return json.dumps(built, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    text = render()
    stale = [path for path in OUTPUTS if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            sys.stderr.write(f"{path} differs from the build: run deploy/grafana/build.py\n")
        return 1 if stale else 0
    for path in stale:
        if path.parent.is_dir():
            path.write_text(text)
            sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
