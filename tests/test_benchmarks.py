"""Smoke runs of every benchmark scenario at tiny sizes, so the harness cannot rot.

Each runs the real parts (daemons, redis-server, the emulator, a git remote) for
a few seconds and checks that the result has its figures and that they are sane.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks import events, gitpath, report
from benchmarks.scenarios import SCENARIOS, Options

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def run(name: str, tmp_path: Path) -> dict[str, Any]:
    result = SCENARIOS[name](Options(smoke=True, repeats=1, workdir=tmp_path))
    paths = report.write(result, tmp_path / "results")
    assert (tmp_path / "results" / f"{name}.md").read_text().startswith("### ")
    data: dict[str, Any] = json.loads(paths[0].read_text())
    assert data["machine"]["cores"] >= 1
    return data


def finite(value: object) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)


def test_reference_and_baseline(tmp_path: Path) -> None:
    data = run("reference", tmp_path)
    figures = data["figures"]
    assert figures["ratio_to_minimum"] >= 0.9
    assert figures["ratio_to_minimum_with_token_renewal"] >= 1.0
    assert figures["baseline_over_ours"] >= 1.0
    assert 0 < figures["peak_share_of_quota"] <= 1.0
    assert figures["throttled_429"] == 0
    assert finite(figures["push_to_commit_p99_intervals"])
    assert figures["push_to_commit_p50_intervals"] <= figures["push_to_commit_p99_intervals"]
    assert figures["updates_not_landed"] == 0
    assert figures["baseline_requests_per_cycle"] >= 5 * figures["distinct_images"]
    assert (tmp_path / "results" / "reference.png").stat().st_size > 0


def test_saturation(tmp_path: Path) -> None:
    figures = run("saturation", tmp_path)["figures"]
    assert figures["demand_over_quota"] >= 1.9
    assert figures["peak_share_of_quota"] <= 1.0
    assert 0.5 <= figures["usable_share_mean"] <= 1.0
    assert figures["images_never_checked"] == 0
    assert figures["throttled_429"] == 0
    assert finite(figures["longest_gap_over_ideal"])


def test_replicas(tmp_path: Path) -> None:
    figures = run("replicas", tmp_path)["figures"]
    assert figures["throttled_429_whole_run"] == 0
    assert figures["peak_share_of_quota_whole_run"] <= 1.0
    assert figures["ratio_to_minimum"] > 0.5
    assert finite(figures["victim_images_rechecked_within_intervals"])
    assert figures["all_images_rechecked_within_intervals"] <= 3.0
    assert figures["survivor_exit_codes"] == [0, 0]


def test_scale(tmp_path: Path) -> None:
    figures = run("scale", tmp_path)["figures"]
    assert figures["images"] == 60
    assert figures["failed_images"] == 0
    assert figures["cpu_s_per_cycle_per_1000_images"] > 0
    assert figures["peak_rss_mb"] > 0
    assert figures["batch_commits"] == figures["branches"]


def run_git(name: str, tmp_path: Path) -> dict[str, Any]:
    result = gitpath.SCENARIOS[name](Options(smoke=True, repeats=1, workdir=tmp_path))
    paths = report.write(result, tmp_path / "results")
    data: dict[str, Any] = json.loads(paths[0].read_text())
    return data


def test_coldonce_profiles_every_stage(tmp_path: Path) -> None:
    figures = run_git("coldonce", tmp_path)["figures"]
    assert figures["once_exit_code"] == 0
    assert figures["updates"] == figures["files"] == 120
    assert figures["commits"] == figures["environments"]
    assert 0 < figures["once_cpu_s_with_git"] < 60
    for stage in ("discovery: read", "discovery: parse", "edits", "commits", "pushes"):
        assert figures["stages"][stage]["count"] >= 1, stage


def test_sharing(tmp_path: Path) -> None:
    figures = run_git("sharing", tmp_path)["figures"]
    assert figures["files"] == 60
    assert 0 < figures["shared_clone_warm_fetch_s"] < figures["own_clone_first_fetch_s"] * 10
    assert finite(figures["contended_fetch_p99_s"])


def test_events(tmp_path: Path) -> None:
    """Registry events in real time (Google's Pub/Sub emulator): a few pushes land."""
    result = events.events(Options(smoke=True, repeats=1, workdir=tmp_path))
    report.write(result, tmp_path / "results")
    figures = result.figures
    assert figures["pushes"] >= 3
    assert figures["not_landed"] == 0
    assert 0 < figures["push_to_commit_p50_s"] <= figures["push_to_commit_p99_s"]
    # Every look-up answered a push (or the backstop): at most one listing per push here.
    assert figures["listings_during"] <= figures["pushes"] + figures["backstop_share"] + 1
    assert figures["throttled_429"] == 0
    assert figures["daemon_exit"] == 0
