"""Holds, pins, releases, rollbacks, history and status on charts' own digest keys.

A kube-prometheus-stack style block (``registry`` apart, the digest as bare hex in
``sha``) and a Bitnami style one (``digest``), followed, rolled back, held by a
person's hand edit, pinned, released, with the real CLI against the Google-registry
emulator and a bare git remote. The watcher speaks of the digest as ``shasum``
(trailers, history, status) whatever key the chart reads.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GitRemote, git, make_remote
from watcher_testing.emulator import EmulatorSettings, GoogleRegistryEmulator

pytestmark = pytest.mark.integration

BRANCH = "environment/a"
FILE = "apps/monitoring/values.yaml"
PROM = f"{FILE}#prometheus.image"
EXPORTER = f"{FILE}#exporter.image"
ADA = "Ada Lovelace <ada@example.com>"

VALUES = """\
# monitoring, as the charts write it
prometheus:
  image:
    registry: {host}
    repository: prom/prometheus
    tag: main
    sha: ""
    pullPolicy: IfNotPresent
exporter:
  image:
    registry: {host}
    repository: bitnami/exporter
    tag: main
    digest: ""
"""


@dataclass
class World:
    emu: GoogleRegistryEmulator
    remote: GitRemote
    config: Path

    async def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "watcher", args[0], "--config", str(self.config), *args[1:]],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert "Traceback" not in done.stdout + done.stderr, done.stderr
        return done

    def text(self) -> str:
        return self.remote.read(BRANCH, FILE)

    def trailers(self) -> list[str]:
        out = git(self.remote.path, "log", "-1", "--format=%(trailers:only,unfold)", BRANCH)
        return out.splitlines()

    async def status(self) -> dict[str, dict[str, Any]]:
        done = await self.run("status", "--json")
        assert done.returncode == 0, done.stderr
        (env,) = json.loads(done.stdout)["environments"]
        return {row["block"]: row for row in env["blocks"]}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with GoogleRegistryEmulator(EmulatorSettings(auth_required=False)) as emu:
        remote = make_remote(tmp_path, {BRANCH: {FILE: VALUES.format(host=emu.host)}})
        config = tmp_path / "shards.yaml"
        config.write_text(
            f"""
interval: 1s
registries:
  - {{host: "{emu.host}", api: google, auth: anonymous, insecure: true}}
git:
  url: {remote.url}
  files: ["apps/*/values.yaml"]
  workdir: {tmp_path / "clone"}
"""
        )
        yield World(emu, remote, config)


def _values(world: World, host: str, sha: str, digest: str) -> str:
    return (
        VALUES.format(host=host)
        .replace('sha: ""', f'sha: "{sha}"')
        .replace('digest: ""', f'digest: "{digest}"')
    )


async def test_holds_pins_and_history_on_sha_and_digest_keys(world: World) -> None:
    host = world.emu.host
    p1 = world.emu.push("prom/prometheus", "main")
    e1 = world.emu.push("bitnami/exporter", "main")
    assert (await world.run("once")).returncode == 0
    # The chart's keys, in the chart's forms: bare hex in sha, a digest in digest.
    assert world.text() == _values(world, host, p1.removeprefix("sha256:"), e1)
    assert sorted(world.trailers()) == [
        f"Image-Watcher-Set: {EXPORTER} shasum={e1}",
        f"Image-Watcher-Set: {PROM} shasum={p1}",
    ]
    p2 = world.emu.push("prom/prometheus", "main")
    e2 = world.emu.push("bitnami/exporter", "main")
    assert (await world.run("once")).returncode == 0
    assert world.text() == _values(world, host, p2.removeprefix("sha256:"), e2)

    # history reads the sha key's values as digests.
    done = await world.run("history", BRANCH, PROM, "--json")
    assert done.returncode == 0, done.stderr
    versions = json.loads(done.stdout)["versions"]
    assert [(v["action"], v["shasum"]) for v in versions] == [
        ("created", None),
        ("set", p1),
        ("set", p2),
    ]

    # rollback writes the earlier hex back and holds the block.
    done = await world.run("rollback", BRANCH, PROM, "--author", ADA)
    assert done.returncode == 0, done.stderr
    assert world.text() == _values(world, host, p1.removeprefix("sha256:"), e2)
    assert world.trailers() == [f"Image-Watcher-Rollback: {PROM} shasum={p1}"]

    # A person's hand edit of `digest` holds that block too.
    by_hand = _values(world, host, p1.removeprefix("sha256:"), e1)
    world.remote.commit(BRANCH, {FILE: by_hand}, "exporter: back to the first build")
    head = world.remote.head(BRANCH)
    done = await world.run("once")
    assert f"held {BRANCH}:{FILE}:prometheus.image: shasum {p1}" in done.stdout
    assert f"held {BRANCH}:{FILE}:exporter.image: shasum {e1}" in done.stdout
    assert world.remote.head(BRANCH) == head
    rows = await world.status()
    assert {ref: (rows[ref]["state"], rows[ref]["value"]) for ref in (PROM, EXPORTER)} == {
        PROM: ("held", p1),
        EXPORTER: ("held", e1),
    }
    assert rows[PROM]["image"] == f"{host}/prom/prometheus"

    # pin the exporter (overrideTag beside the chart's digest key), release prometheus.
    done = await world.run("pin", BRANCH, EXPORTER, "main", "--author", ADA)
    assert done.returncode == 0, done.stderr
    assert f'    tag: main\n    overrideTag: main\n    digest: "{e1}"\n' in world.text()
    done = await world.run("release", BRANCH, PROM, "--author", ADA)
    assert done.returncode == 0, done.stderr
    assert (await world.run("once")).returncode == 0
    text = world.text()
    assert f'sha: "{p2.removeprefix("sha256:")}"' in text  # following again
    assert f'digest: "{e1}"' in text  # pinned: left alone
    rows = await world.status()
    assert (rows[PROM]["state"], rows[EXPORTER]["state"]) == ("following", "pinned")
