"""The chart's alerts, run by promtool (Debian's `prometheus` package).

The rules come from the rendered PrometheusRule (the chart reads them from
helm/rules/image-watcher.rules.yaml), and tests/alerts/image-watcher.tests.yaml
fires and does not fire each alert.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm_support import CHART, objects, one, require_binary

TESTS = Path(__file__).resolve().parent / "alerts" / "image-watcher.tests.yaml"
ALERTS = {
    "ImageWatcherBudgetNearlyUsed",
    "ImageWatcherRegistryThrottled",
    "ImageWatcherShardUnowned",
    "ImageWatcherWriteBackFailing",
    "ImageWatcherNoRecentCycle",
    "ImageWatcherEventsNotDelivered",
}


def rendered_groups(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    merged: dict[str, Any] = {"prometheusRule": {"enabled": True}, **(values or {})}
    rule = one(objects(merged), "PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def write_rules(path: Path, groups: list[dict[str, Any]]) -> None:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool", "prometheus")
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )


@pytest.mark.integration
def test_rendered_rules_pass_promtool_check(tmp_path: Path) -> None:
    groups = rendered_groups()
    assert {r["alert"] for g in groups for r in g["rules"]} == ALERTS
    write_rules(tmp_path / "rules.yaml", groups)
    result = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


@pytest.mark.integration
def test_every_alert_fires_and_stays_quiet(tmp_path: Path) -> None:
    groups = rendered_groups()
    for group in groups:
        for rule in group["rules"]:
            # Prose; its template syntax is covered by `promtool check rules`.
            rule["annotations"].pop("description")
    write_rules(tmp_path / "rules.yaml", groups)
    shutil.copy(TESTS, tmp_path / "tests.yaml")
    result = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert is exercised, each both firing and quiet.
    spec = yaml.safe_load(TESTS.read_text(encoding="utf-8"))
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in spec["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == ALERTS and quiet == ALERTS


@pytest.mark.integration
def test_the_tests_would_catch_a_broken_rule(tmp_path: Path) -> None:
    """Loosen one threshold: promtool must then fail (the tests have teeth)."""
    groups = rendered_groups()
    for group in groups:
        for rule in group["rules"]:
            rule["annotations"].pop("description")
            if rule["alert"] == "ImageWatcherNoRecentCycle":
                rule["expr"] = rule["expr"].replace("> 360", "> 60")
    write_rules(tmp_path / "rules.yaml", groups)
    shutil.copy(TESTS, tmp_path / "tests.yaml")
    result = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "ImageWatcherNoRecentCycle" in result.stdout + result.stderr


@pytest.mark.integration
def test_limits_follow_the_interval_and_shard_count() -> None:
    groups = rendered_groups({"shards": {"interval": "90s", "shards": 8}})
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    assert rules["ImageWatcherShardUnowned"]["for"] == "180s"
    assert "< 8)" in rules["ImageWatcherShardUnowned"]["expr"]
    assert rules["ImageWatcherNoRecentCycle"]["expr"].rstrip().endswith("> 270")
    assert "[270s]" in rules["ImageWatcherWriteBackFailing"]["expr"]
    assert rules["ImageWatcherBudgetNearlyUsed"]["for"] == "10m"


@pytest.mark.unit
def test_rules_file_is_the_single_source() -> None:
    source = (CHART / "rules" / "image-watcher.rules.yaml").read_text(encoding="utf-8")
    for alert in ALERTS:
        assert f"alert: {alert}" in source
    template = (CHART / "templates" / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert '.Files.Get "rules/image-watcher.rules.yaml"' in template
