"""Generate the watcher's Grafana dashboard with grafana-foundation-sdk.

    .venv/bin/python helm/dashboard/generate.py          # rewrite the JSON
    .venv/bin/python helm/dashboard/generate.py --check  # exit 1 when it is stale

The output, ``helm/dashboards/image-watcher.json``, is committed and shipped
by the chart's dashboard ConfigMap (``dashboard.enabled``). Every panel is
declared once in ``PANELS``; ``panel_queries()`` lists each panel's PromQL
as (title, expr) pairs so tests can check the queries against the metrics
the daemon exports.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableRefresh,
    VariableSort,
)

OUTPUT = Path(__file__).resolve().parent.parent / "dashboards" / "image-watcher.json"
UID = "image-tag-watcher"
TITLE = "Image tag watcher"

# Every query is scoped to the watcher's scrape job(s), chosen by the $job variable.
SEL = 'job=~"$job"'
RATE = "$__rate_interval"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")

Kind = Literal["timeseries", "stat", "statetimeline"]


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: Kind = "timeseries"
    width: int = 12
    stacked: bool = False
    min_zero: bool = True


@dataclass(frozen=True)
class RowSpec:
    title: str
    panels: tuple[PanelSpec, ...]


PANELS: tuple[RowSpec, ...] = (
    RowSpec(
        "Request budget",
        (
            PanelSpec(
                "Budget use against cap",
                "Requests granted in the current sliding window of each budget, against the "
                "budget's cap (requests x (1 - headroom)). The watcher never sends more than "
                "the cap; a line that sits on it means requests wait and the interval stretches.",
                (
                    Query(
                        f"max by (budget) (image_watcher_budget_window_used{{{SEL}}})",
                        "{{budget}} used",
                    ),
                    Query(f"max by (budget) (image_watcher_budget_cap{{{SEL}}})", "{{budget}} cap"),
                ),
                width=16,
            ),
            PanelSpec(
                "Budget used (share of cap)",
                "Window use as a share of the cap; the alert fires above 90% for 10 minutes.",
                (
                    Query(
                        f"max by (budget) (image_watcher_budget_window_used{{{SEL}}})"
                        f" / max by (budget) (image_watcher_budget_cap{{{SEL}}})",
                        "{{budget}}",
                    ),
                ),
                unit="percentunit",
                kind="stat",
                width=8,
            ),
            PanelSpec(
                "Budget wait (p50, p95)",
                "How long a request waited for a grant from its budget.",
                (
                    Query(
                        "histogram_quantile(0.5, sum by (budget, le) "
                        f"(rate(image_watcher_budget_wait_seconds_bucket{{{SEL}}}[{RATE}])))",
                        "{{budget}} p50",
                    ),
                    Query(
                        "histogram_quantile(0.95, sum by (budget, le) "
                        f"(rate(image_watcher_budget_wait_seconds_bucket{{{SEL}}}[{RATE}])))",
                        "{{budget}} p95",
                    ),
                ),
                unit="s",
            ),
            PanelSpec(
                "Grants and pauses",
                "Grants per second by budget, and the share of time each budget was paused "
                "after a 429 (1 = paused all the time).",
                (
                    Query(
                        "sum by (budget) "
                        f"(rate(image_watcher_budget_granted_total{{{SEL}}}[{RATE}]))",
                        "{{budget}} grants/s",
                    ),
                    Query(
                        "sum by (budget) "
                        f"(rate(image_watcher_budget_paused_seconds_total{{{SEL}}}[{RATE}]))",
                        "{{budget}} paused",
                    ),
                ),
            ),
        ),
    ),
    RowSpec(
        "Registries",
        (
            PanelSpec(
                "Requests by registry and code",
                "Requests sent to each registry (token requests included), by HTTP status.",
                (
                    Query(
                        "sum by (registry, code) "
                        f"(rate(image_watcher_registry_requests_total{{{SEL}}}[{RATE}]))",
                        "{{registry}} {{code}}",
                    ),
                ),
                unit="reqps",
                stacked=True,
            ),
            PanelSpec(
                "Throttling (429) by registry",
                "429 answers per registry. Any at all means a budget's cap is above the "
                "registry's real quota, or another client shares the quota.",
                (
                    Query(
                        "sum by (registry) "
                        f"(increase(image_watcher_registry_throttled_total{{{SEL}}}[{RATE}]))",
                        "{{registry}}",
                    ),
                ),
                width=6,
            ),
            PanelSpec(
                "Look-ups by result",
                "Registry look-ups: sent, answered from the cache, or coalesced with one "
                "already in flight.",
                (
                    Query(
                        f"sum by (result) (rate(image_watcher_lookups_total{{{SEL}}}[{RATE}]))",
                        "{{result}}",
                    ),
                ),
                unit="ops",
                width=6,
                stacked=True,
            ),
        ),
    ),
    RowSpec(
        "Shards and cycles",
        (
            PanelSpec(
                "Shard ownership",
                "Replicas owning each shard: 1 is right, 0 means its images are not checked, "
                "2 means a lease is contested.",
                (
                    Query(
                        f"sum by (shard) (image_watcher_shard_owned{{{SEL}}})",
                        "shard {{shard}}",
                    ),
                ),
                kind="statetimeline",
                width=24,
            ),
            PanelSpec(
                "Shards owned per replica",
                "How the shards are spread over the replicas.",
                (
                    Query(
                        f"sum by (instance) (image_watcher_shard_owned{{{SEL}}})",
                        "{{instance}}",
                    ),
                ),
                width=8,
            ),
            PanelSpec(
                "Cycle time (p95) by shard",
                "Time to check every image of a shard once; it should stay well under the "
                "interval.",
                (
                    Query(
                        "histogram_quantile(0.95, sum by (shard, le) "
                        f"(rate(image_watcher_cycle_seconds_bucket{{{SEL}}}[{RATE}])))",
                        "shard {{shard}}",
                    ),
                ),
                unit="s",
                width=8,
            ),
            PanelSpec(
                "Time since last cycle",
                "Seconds since each shard last finished a cycle; the alert fires at three "
                "intervals.",
                (
                    Query(
                        "time() - max by (shard) "
                        f"(image_watcher_last_cycle_timestamp_seconds{{{SEL}}})",
                        "shard {{shard}}",
                    ),
                ),
                unit="s",
                width=8,
            ),
        ),
    ),
    RowSpec(
        "Watch set",
        (
            PanelSpec(
                "Images watched by shard",
                "Distinct images (one registry look-up each per interval) per shard.",
                (Query(f"max by (shard) (image_watcher_images{{{SEL}}})", "shard {{shard}}"),),
                width=8,
                stacked=True,
            ),
            PanelSpec(
                "Image blocks",
                "Image blocks found on every environment branch.",
                (Query(f"max(image_watcher_image_blocks{{{SEL}}})", "blocks"),),
                kind="stat",
                width=8,
            ),
            PanelSpec(
                "Blocks by state",
                "Blocks following, pinned, held (by a person's revert, edit or rollback), "
                "off, and failing (the reason is on the status page). Each replica counts "
                "the blocks of the shards it owns.",
                (
                    Query(
                        f"sum by (state) (image_watcher_blocks{{{SEL}}})",
                        "{{state}}",
                    ),
                ),
                width=8,
                stacked=True,
            ),
        ),
    ),
    RowSpec(
        "Write-back",
        (
            PanelSpec(
                "Updates by strategy",
                "Block updates committed, by the strategy that chose the new value.",
                (
                    Query(
                        "sum by (strategy) "
                        f"(increase(image_watcher_updates_total{{{SEL}}}[{RATE}]))",
                        "{{strategy}}",
                    ),
                ),
                width=8,
                stacked=True,
            ),
            PanelSpec(
                "Git pushes by result",
                "Pushes to the git remote: ok, conflict (the branch moved; the watcher "
                "re-applies and retries) or error.",
                (
                    Query(
                        "sum by (result) "
                        f"(increase(image_watcher_git_push_total{{{SEL}}}[{RATE}]))",
                        "{{result}}",
                    ),
                ),
                width=8,
                stacked=True,
            ),
            PanelSpec(
                "Errors by stage",
                "Errors by where they happened (registry, git, cycle).",
                (
                    Query(
                        f"sum by (stage) (increase(image_watcher_errors_total{{{SEL}}}[{RATE}]))",
                        "{{stage}}",
                    ),
                ),
                width=8,
            ),
        ),
    ),
    RowSpec(
        "Registry events",
        (
            PanelSpec(
                "Events by subscription and result",
                "Messages each Pub/Sub subscription delivered, and what came of them: acted "
                "(the shard's owner checked the image), ignored (no block follows it), "
                "malformed. A subscription whose line drops to zero while pushes go on has "
                "stopped delivering; missed counts pushes the backstop found first.",
                (
                    Query(
                        "sum by (subscription) "
                        f"(increase(image_watcher_events_received_total{{{SEL}}}[{RATE}]))",
                        "received {{subscription}}",
                    ),
                    Query(
                        f"sum by (result) (increase(image_watcher_events_total{{{SEL}}}[{RATE}]))",
                        "{{result}}",
                    ),
                    Query(
                        f"sum(increase(image_watcher_events_missed_total{{{SEL}}}[{RATE}]))",
                        "missed (found by the backstop)",
                    ),
                ),
                width=8,
            ),
            PanelSpec(
                "Event to commit",
                "From a push's event to the commit it led to, pushed: the freshness "
                "registry events buy.",
                (
                    Query(
                        "histogram_quantile(0.5, sum by (le) "
                        f"(rate(image_watcher_event_to_commit_seconds_bucket{{{SEL}}}[{RATE}])))",
                        "p50",
                    ),
                    Query(
                        "histogram_quantile(0.99, sum by (le) "
                        f"(rate(image_watcher_event_to_commit_seconds_bucket{{{SEL}}}[{RATE}])))",
                        "p99",
                    ),
                ),
                unit="s",
                width=8,
            ),
            PanelSpec(
                "Subscribers connected",
                "Replicas with each subscription's streaming pull open. Zero: no events "
                "arrive, and covered images wait for the backstop.",
                (
                    Query(
                        "sum by (subscription) "
                        f"(image_watcher_events_subscriber_connected{{{SEL}}})",
                        "{{subscription}}",
                    ),
                ),
                width=8,
            ),
        ),
    ),
)


def panel_queries() -> list[tuple[str, str]]:
    """Every panel's queries as (panel title, PromQL expression), in dashboard order."""
    return [(p.title, q.expr) for row in PANELS for p in row.panels for q in p.queries]


def _targets(spec: PanelSpec) -> list[prometheus.Dataquery]:
    return [
        prometheus.Dataquery()
        .expr(q.expr)
        .legend_format(q.legend)
        .ref_id(chr(ord("A") + i))
        .datasource(DATASOURCE)
        for i, q in enumerate(spec.queries)
    ]


def _panel(spec: PanelSpec) -> dash.Panel | timeseries.Panel | stat.Panel | statetimeline.Panel:
    targets = _targets(spec)
    if spec.kind == "stat":
        panel: timeseries.Panel | stat.Panel | statetimeline.Panel = (
            stat.Panel()
            .graph_mode(common.BigValueGraphMode.AREA)
            .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        )
    elif spec.kind == "statetimeline":
        panel = statetimeline.Panel().show_value(common.VisibilityMode.NEVER).height(6)
    else:
        ts = timeseries.Panel().line_width(1).fill_opacity(10)
        if spec.stacked:
            ts = ts.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
        if spec.min_zero:
            ts = ts.min(0)
        panel = ts
    panel = panel.title(spec.title).description(spec.description).unit(spec.unit)
    panel = panel.span(spec.width).datasource(DATASOURCE)
    for target in targets:
        panel = panel.with_target(target)
    return panel


def build() -> dash.Dashboard:
    board = (
        dash.Dashboard(TITLE)
        .uid(UID)
        .description(
            "image-tag-watcher: request budgets against their caps, registry traffic and "
            "throttling, shard ownership and cycles, and write-back to the environment branches."
        )
        .tags(["image-tag-watcher", "gitops"])
        .refresh("1m")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dash.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(
            dash.QueryVariable("job")
            .label("Job")
            .datasource(DATASOURCE)
            .query("label_values(image_watcher_image_blocks, job)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
        )
    )
    next_id = 1
    for row in PANELS:
        board = board.with_row(dash.Row(row.title).id(next_id))
        next_id += 1
        for spec in row.panels:
            board = board.with_panel(_panel(spec).id(next_id))
            next_id += 1
    return board


def render() -> str:
    """The dashboard JSON exactly as committed (sorted keys, two-space indent, newline)."""
    encoded = JSONEncoder(sort_keys=True, indent=2).encode(build().build())
    # Re-encode through json so the file's layout does not depend on the SDK's encoder.
    return json.dumps(json.loads(encoded), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run helm/dashboard/generate.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
