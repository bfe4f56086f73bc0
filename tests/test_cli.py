"""The command line as a user runs it: real processes, a real registry and git remote."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import DockerRegistry, GitRemote, free_port, make_remote
from watcher.cluster.shards import shard_of
from watcher.config import load
from watcher_testing.images import push_image
from watcher_testing.waiting import wait_until_async

pytestmark = pytest.mark.integration

VALUES = "image:\n  repository: {host}/team/app\n  tag: master\n"


def write_config(path: Path, registry: DockerRegistry, remote: GitRemote, interval: str) -> Path:
    path.write_text(
        f"""
interval: {interval}
registries:
  - {{host: "{registry.host}", insecure: true}}
git:
  url: {remote.url}
  files: ["apps/*/values.yaml"]
  workdir: {path.parent / "clone"}
server: {{port: {free_port()}}}
"""
    )
    return path


def watcher(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watcher", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture
async def world(
    docker_registry: DockerRegistry, tmp_path: Path
) -> tuple[DockerRegistry, GitRemote, Path]:
    async with aiohttp.ClientSession() as session:
        await push_image(session, docker_registry.url, "team/app", "master", kind="oci", seed="1")
    values = VALUES.format(host=docker_registry.host)
    remote = make_remote(
        tmp_path,
        {
            "environment/one": {"apps/app/values.yaml": values},
            "environment/two": {
                "apps/app/values.yaml": values,
                "apps/bad/values.yaml": "image:\n  repository: x\n  tag: [oops\n",
                "apps/policy/values.yaml": values + "  watch: {strategy: latest}\n",
            },
        },
    )
    return (
        docker_registry,
        remote,
        write_config(tmp_path / "shards.yaml", docker_registry, remote, "1s"),
    )


def test_help_explains_every_command() -> None:
    out = watcher("--help").stdout
    for command in ("run", "once", "check", "demo"):
        assert command in out
    assert "exit codes" in out
    assert "--dry-run" in watcher("once", "--help").stdout


def test_usage_error_exits_2() -> None:
    assert watcher("frobnicate").returncode == 2


async def test_once_dry_run_prints_and_writes_nothing(
    world: tuple[DockerRegistry, GitRemote, Path],
) -> None:
    _, remote, config = world
    heads = {b: remote.head(b) for b in remote.branches()}
    result = watcher("once", "--config", str(config), "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("would update")]
    assert len(lines) == 2
    assert any(
        "environment/one:apps/app/values.yaml:image: shasum (none) -> sha256:" in line
        for line in lines
    )
    assert {b: remote.head(b) for b in remote.branches()} == heads


async def test_once_commits_and_reports(world: tuple[DockerRegistry, GitRemote, Path]) -> None:
    _, remote, config = world
    result = watcher("once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert sum(line.startswith("updated ") for line in result.stdout.splitlines()) == 2
    assert sum(line.startswith("committed ") for line in result.stdout.splitlines()) == 2
    assert "shasum: sha256:" in remote.read("environment/one", "apps/app/values.yaml")
    # A second run finds nothing to do.
    again = watcher("once", "--config", str(config))
    assert "0 update(s)" in again.stdout


async def test_check_reports_file_and_line(world: tuple[DockerRegistry, GitRemote, Path]) -> None:
    _, _, config = world
    result = watcher("check", "--config", str(config))
    assert result.returncode == 2
    assert "environment/two:apps/bad/values.yaml:4: YAML syntax error" in result.stderr
    assert "environment/two:apps/policy/values.yaml:" in result.stderr
    assert "watch.strategy: must be one of" in result.stderr
    # Problems are printed once, as file:line lines, not also as log records.
    assert "{" not in result.stderr
    assert "2 valid block(s), 2 problem(s)" in result.stdout


def test_check_unreachable_git_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "shards.yaml"
    config.write_text(f"git: {{url: {tmp_path / 'missing.git'}, workdir: {tmp_path / 'c'}}}\n")
    result = watcher("check", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr.startswith("git:")


async def sweeps(session: aiohttp.ClientSession, port: int, shard: int) -> int:
    """Sweeps the daemon has finished for ``shard``, from its /metrics."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        scrape = await response.text()
    line = rf'^image_watcher_cycle_seconds_count{{shard="{shard}"}} (\S+)$'
    found = re.search(line, scrape, re.M)
    return int(float(found.group(1))) if found else 0


async def sweeps_past(session: aiohttp.ClientSession, port: int, shard: int, count: int) -> bool:
    return await sweeps(session, port, shard) >= count


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_run_follows_pushes_and_stops_cleanly(
    world: tuple[DockerRegistry, GitRemote, Path], sig: signal.Signals
) -> None:
    registry, remote, config = world
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watcher",
        "run",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_until_async(
            lambda: "shasum" in remote.read("environment/one", "apps/app/values.yaml"),
            60,
            interval=0.1,
            what="the first update",
        )
        port = load(config).server.port
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
            async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                assert response.status == 200, await response.text()
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                scrape = await response.text()
            assert 'image_watcher_registry_requests_total{budget="default",code="200"' in scrape
            assert "image_watcher_image_blocks 2.0" in scrape
            new = await push_image(
                session, registry.url, "team/app", "master", kind="oci", seed="2"
            )
        pushed = time.monotonic()
        await wait_until_async(
            lambda: new in remote.read("environment/two", "apps/app/values.yaml"),
            30,
            what="the new build",
        )
        # Within about one interval (1 s) plus a cycle.
        assert time.monotonic() - pushed < 3
        # A few more sweeps for the drift check below.
        shard = shard_of(f"{registry.host}/team/app", load(config).shards)
        async with aiohttp.ClientSession() as session:
            done = await sweeps(session, port, shard)
            await wait_until_async(
                lambda: sweeps_past(session, port, shard, done + 2), 30, what="two more sweeps"
            )
        stopped = time.monotonic()
        proc.send_signal(sig)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=10)
        assert time.monotonic() - stopped < 10
        assert proc.returncode == 0, err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    events = [json.loads(line) for line in out.decode().splitlines()]
    assert all({"severity", "event", "time"} <= set(e) for e in events)
    assert events[-1]["event"] == "stopped"
    updated = [e for e in events if e["event"] == "updated"]
    assert {e["branch"] for e in updated} == {"environment/one", "environment/two"}
    assert all(e["severity"] == "INFO" and e["image"].endswith("/team/app") for e in updated)

    # Sweeps of a shard start on a fixed grid (drift-compensated): start k
    # lands near origin + k * interval however long the sweeps took.
    starts = [
        datetime.fromisoformat(e["time"]).timestamp() - e["seconds"]
        for e in events
        if e["event"] == "sweep done"
    ]
    assert len(starts) >= 3
    for k, start in enumerate(starts):
        assert abs(start - (starts[0] + k * 1.0)) < 0.25, (k, [s - starts[0] for s in starts])


async def test_shards_and_budget_reports(world: tuple[DockerRegistry, GitRemote, Path]) -> None:
    registry, _, config = world
    shards = watcher("shards", "--config", str(config), "--count", "17")
    assert shards.returncode == 0, shards.stderr
    assert f"{registry.host}/team/app" in shards.stdout
    from watcher.cluster.shards import shard_of

    owner = shard_of(f"{registry.host}/team/app", 16)
    moved = shard_of(f"{registry.host}/team/app", 17)
    assert str(owner) in shards.stdout
    if owner != moved:
        assert "17" in shards.stdout
    budget = watcher("budget", "--config", str(config))
    assert budget.returncode == 0, budget.stderr
    assert "default" in budget.stdout
    assert "shortest safe interval" in budget.stdout.lower()
    assert watcher("shards", "--config", str(config), "--count", "0").returncode == 2
