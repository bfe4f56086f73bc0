"""Registry events with several replicas: hand-offs through Redis, a replica killed.

Real daemons (``python -m watcher run``) sharing a redis-server, one Pub/Sub
subscription on Google's emulator (each message goes to one of them), the
Google-registry emulator publishing at every push, and a real git remote.
The interval is short (leases lapse within seconds) and the backstop an hour,
so a value that lands came from an event, not from polling.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.cli_support import stop_all
from tests.conftest import GitRemote, PubSubEmulator, RedisServer, free_port, git, make_remote
from tests.soak import shasums
from watcher_testing.emulator import EmulatorSettings, GoogleRegistryEmulator
from watcher_testing.waiting import wait_until_async

pytestmark = pytest.mark.integration

PROJECT = "acme-dev"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/image-watcher"
BRANCHES = ["environment/a", "environment/b"]
SHARDS = 6
SETTLE = 60.0
# A dead replica's messages come back once their lease lapses (at most 15 s after
# its last extension) and the emulator redelivers them: generous on a loaded machine.
REDELIVERED = 90.0


def values(host: str, path: str, digest: str) -> str:
    return f"image:\n  repository: {host}/{path}\n  tag: master\n  shasum: {digest}\n"


@asynccontextmanager
async def world(
    tmp_path: Path, pubsub: PubSubEmulator, redis: RedisServer, images: int
) -> AsyncIterator[tuple[GoogleRegistryEmulator, GitRemote, Path, list[str]]]:
    """The registry (every block already at its image's digest), the remote, the config."""
    pubsub.create_topic(PROJECT)
    pubsub.create_subscription(PROJECT, "image-watcher")
    settings = EmulatorSettings(auth_required=False, pubsub=pubsub.host)
    async with GoogleRegistryEmulator(settings) as emu:
        names = [f"{PROJECT}/app{i}" for i in range(images)]
        files = {
            f"apps/app{i}/values.yaml": values(emu.host, name, emu.push(name, "master"))
            for i, name in enumerate(names)
        }
        pubsub.drain(SUBSCRIPTION)
        remote = make_remote(tmp_path, {branch: files for branch in BRANCHES})
        config = tmp_path / "shards.yaml"
        config.write_text(
            f"""
shards: {SHARDS}
interval: 2s
redis: {{url: "{redis.url}"}}
registries:
  - {{host: "{emu.host}", api: google, auth: anonymous, insecure: true}}
git:
  url: {remote.url}
  files: ["apps/*/values.yaml"]
events:
  subscriptions: [{SUBSCRIPTION}]
  backstop: 1h
"""
        )
        yield emu, remote, config, names


def spawn(workdir: Path, config: Path, pubsub: PubSubEmulator) -> subprocess.Popen[bytes]:
    workdir.mkdir()
    own = workdir / "shards.yaml"
    own.write_text(config.read_text() + f"server: {{port: {free_port()}}}\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(workdir), "PUBSUB_EMULATOR_HOST": pubsub.host}
    with open(workdir / "log.jsonl", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "--config", str(own)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def logged(workdir: Path, event: str) -> int:
    log = workdir / "log.jsonl"
    text = log.read_text(errors="replace") if log.exists() else ""
    return text.count(f'"event": "{event}"')


async def ready(workdirs: list[Path]) -> None:
    """Until every daemon has its subscription open and its share of the shards."""

    def up() -> bool:
        return all(
            logged(w, "event subscription open") >= 1 and logged(w, "shards owned") >= 1
            for w in workdirs
        )

    await wait_until_async(lambda: asyncio.to_thread(up), SETTLE, interval=0.2, what="daemons")


async def all_landed(
    remote: GitRemote, names: list[str], digests: dict[str, str], within: float = SETTLE
) -> None:
    def landed() -> bool:
        seen = shasums(remote, BRANCHES, names)
        return all(seen[(branch, name)] == digests[name] for branch, name in seen)

    await wait_until_async(
        lambda: asyncio.to_thread(landed), within, interval=0.2, what="every push on every branch"
    )


def writes(remote: GitRemote, branch: str) -> Counter[str]:
    """How many commits on ``branch`` set each (file, value): from the commits' trailers."""
    log = git(remote.path, "log", "--format=%(trailers:key=Image-Watcher-Set,valueonly)", branch)
    return Counter(line.strip() for line in log.splitlines() if line.strip())


async def test_events_with_several_replicas_never_write_one_update_twice(
    tmp_path: Path, pubsub_emulator: PubSubEmulator, redis_server: RedisServer
) -> None:
    async with world(tmp_path, pubsub_emulator, redis_server, images=12) as (
        emu,
        remote,
        config,
        names,
    ):
        workdirs = [tmp_path / f"replica{n}" for n in range(3)]
        procs = [spawn(w, config, pubsub_emulator) for w in workdirs]
        try:
            await ready(workdirs)
            await asyncio.sleep(3)  # the three share the shards by now (leases of 3 s)
            for _ in range(2):
                digests = {name: emu.push(name, "master") for name in names}
                # Every message again, out of order: duplicates change nothing.
                for name in reversed(names):
                    pubsub_emulator.publish(
                        f"projects/{PROJECT}/topics/gcr",
                        f'{{"action": "INSERT", "tag": "{emu.host}/{name}:master"}}'.encode(),
                    )
                await all_landed(remote, names, digests)
            await asyncio.sleep(2)  # anything written twice would have landed by now
        finally:
            codes = await stop_all(procs)
        assert codes == [0, 0, 0]
        for branch in BRANCHES:
            counts = writes(remote, branch)
            assert len(counts) == 2 * len(names), counts
            assert set(counts.values()) == {1}, [k for k, v in counts.items() if v > 1]
        # The hand-off was used: replicas checked images another one heard of.
        handed = sum(logged(w, "event checked for another replica") for w in workdirs)
        assert handed >= 1


@pytest.mark.timeout(180)
async def test_a_replica_killed_with_unacked_messages_loses_no_event(
    tmp_path: Path, pubsub_emulator: PubSubEmulator, redis_server: RedisServer
) -> None:
    async with world(tmp_path, pubsub_emulator, redis_server, images=16) as (
        emu,
        remote,
        config,
        names,
    ):
        first = spawn(tmp_path / "replica0", config, pubsub_emulator)
        procs = [first]
        try:
            await ready([tmp_path / "replica0"])
            digests = {name: emu.push(name, "master") for name in names}
            await asyncio.sleep(0.1)
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait)
            # A git push already under way outlives the kill and may still land.
            await asyncio.sleep(1)
            seen = shasums(remote, BRANCHES, names)
            unlanded = [key for key, digest in seen.items() if digest != digests[key[1]]]
            # The kill caught messages in hand (else this test would prove nothing).
            assert unlanded, "every push landed within 0.1 s: nothing was left unacked"
            began = time.monotonic()
            procs.append(spawn(tmp_path / "replica1", config, pubsub_emulator))
            await ready([tmp_path / "replica1"])
            # The survivor never heard these pushes: only redelivery can bring them,
            # once the dead replica's leases on them lapse (EVENT_LEASE_EXTENSION).
            await all_landed(remote, names, digests, within=REDELIVERED)
            took = time.monotonic() - began
        finally:
            codes = await stop_all(procs)
        assert codes == [0]
        assert took < REDELIVERED
        for branch in BRANCHES:
            assert set(writes(remote, branch).values()) == {1}
