"""Registry events through Google's real Pub/Sub emulator: one daemon, then several.

The Google-registry emulator publishes on the project's ``gcr`` topic at every push,
as Google's registries do; the daemons read the subscription through
``PUBSUB_EMULATOR_HOST`` with google-cloud-pubsub, as they would in production.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.conftest import GitRemote, PubSubEmulator, make_remote
from watcher.cluster.shards import shard_of
from watcher.config import Config, load_text
from watcher.engine import Engine
from watcher_testing.emulator import EmulatorSettings, GoogleRegistryEmulator
from watcher_testing.waiting import wait_until_async

pytestmark = pytest.mark.integration

PROJECT = "acme-dev"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/image-watcher"
# Generous: a loaded machine is slow; the figures are the benchmark's business.
LANDS = 30.0


def values(host: str, path: str, digest: str) -> str:
    return f"image:\n  repository: {host}/{path}\n  tag: master\n  shasum: {digest}\n"


def config_for(emu: GoogleRegistryEmulator, remote: GitRemote, tmp_path: Path) -> Config:
    return load_text(
        f"""
shards: 4
interval: 10m
registries:
  - {{host: "{emu.host}", api: google, auth: anonymous, insecure: true}}
git:
  url: {remote.url}
  files: ["apps/*/values.yaml"]
  workdir: {tmp_path / "clone"}
events:
  subscriptions: [{SUBSCRIPTION}]
  backstop: 10m
""",
        "events.yaml",
        {},
    )


def shasum(remote: GitRemote, branch: str, app: str) -> str:
    for line in remote.read(branch, f"apps/{app}/values.yaml").splitlines():
        if line.strip().startswith("shasum:"):
            return line.split(":", 1)[1].strip()
    return ""


@asynccontextmanager
async def daemon(
    pubsub: PubSubEmulator, tmp_path: Path, apps: int = 2
) -> AsyncIterator[tuple[Engine, GoogleRegistryEmulator, GitRemote]]:
    """One daemon (no Redis) with every block at its image's digest, the topic made."""
    pubsub.create_topic(PROJECT)
    pubsub.create_subscription(PROJECT, "image-watcher")
    settings = EmulatorSettings(auth_required=False, pubsub=pubsub.host)
    async with GoogleRegistryEmulator(settings) as emu:
        files = {}
        for i in range(apps):
            digest = emu.push(f"{PROJECT}/app{i}", "master")
            files[f"apps/app{i}/values.yaml"] = values(emu.host, f"{PROJECT}/app{i}", digest)
        remote = make_remote(tmp_path, {"environment/a": files, "environment/b": files})
        # The seeding pushes' messages are old news: acked before the daemon starts.
        assert pubsub.drain(SUBSCRIPTION) == apps  # one INSERT (digest and tag) per push
        async with Engine(config_for(emu, remote, tmp_path)) as engine:
            stop = asyncio.Event()
            run = asyncio.create_task(engine.run(stop))
            try:
                await wait_until_async(
                    lambda: _connected(engine), LANDS, interval=0.1, what="the subscriber"
                )
                # The first sweep checks the first of shard 0's images at once (every
                # other slot is minutes away): the requests each test counts come after.
                first = {
                    f"{PROJECT}/app{i}"
                    for i in range(apps)
                    if shard_of(f"{emu.host}/{PROJECT}/app{i}", 4) == 0
                }
                await wait_until_async(
                    lambda: not first or first & set(listed(emu)),
                    LANDS,
                    interval=0.1,
                    what="the first sweep",
                )
                emu.clear_log()
                yield engine, emu, remote
            finally:
                stop.set()
                await asyncio.wait_for(run, 15)
        assert engine.fatal is None


async def _connected(engine: Engine) -> bool:
    value = engine.metrics.registry.get_sample_value(
        "image_watcher_events_subscriber_connected", {"subscription": SUBSCRIPTION}
    )
    return value == 1 and engine.scheduler is not None and bool(engine.scheduler.shards())


def events(engine: Engine, result: str) -> float:
    value = engine.metrics.registry.get_sample_value(
        "image_watcher_events_total", {"result": result}
    )
    return value or 0.0


async def landed(remote: GitRemote, app: str, digest: str) -> float:
    """Seconds until both branches carry ``digest`` for ``app``."""
    began = time.monotonic()

    async def both() -> bool:
        return all(shasum(remote, b, app) == digest for b in ("environment/a", "environment/b"))

    await wait_until_async(both, LANDS, interval=0.1, what=f"{app} at {digest[:19]}")
    return time.monotonic() - began


async def test_a_push_lands_within_seconds_with_a_ten_minute_interval(
    pubsub_emulator: PubSubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    async with daemon(pubsub_emulator, tmp_path) as (engine, emu, remote):
        pushed = time.monotonic()
        digest = emu.push(f"{PROJECT}/app1", "master")
        await landed(remote, "app1", digest)
        # Within seconds (the interval is ten minutes, so no sweep did it).
        assert time.monotonic() - pushed < LANDS < engine.config.interval
        assert shasum(remote, "environment/a", "app0") != digest  # only the image pushed
        # One listing for the push (the digest and the tag come in one message).
        assert listed(emu) == [f"{PROJECT}/app1"]
        assert events(engine, "acted") >= 1
        latency = engine.metrics.registry.get_sample_value(
            "image_watcher_event_to_commit_seconds_count", {}
        )
        assert latency is not None and latency >= 1


async def test_a_burst_for_one_image_costs_one_look_up_and_unknown_images_none(
    pubsub_emulator: PubSubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    async with daemon(pubsub_emulator, tmp_path) as (engine, emu, remote):
        topic = f"projects/{PROJECT}/topics/gcr"
        # An image no block follows: acked, and not a single request.
        unknown = json.dumps({"action": "INSERT", "tag": f"{emu.host}/{PROJECT}/nobody:master"})
        pubsub_emulator.publish(topic, unknown.encode())
        await wait_until_async(
            lambda: _at_least(engine, "ignored", 1), LANDS, interval=0.1, what="ignored"
        )
        assert emu.log == []
        # A new build, and nine messages about it at once (the push's own, duplicates,
        # a DELETE of an old tag, the untagged digest): one listing answers them all.
        digest = emu.push(f"{PROJECT}/app0", "master", announce=False)
        burst = [
            json.dumps(
                {
                    "action": "INSERT",
                    "digest": f"{emu.host}/{PROJECT}/app0@{digest}",
                    "tag": f"{emu.host}/{PROJECT}/app0:master",
                }
            )
        ] + [
            json.dumps({"action": "INSERT", "digest": f"{emu.host}/{PROJECT}/app0@{digest}"}),
            json.dumps({"action": "DELETE", "tag": f"{emu.host}/{PROJECT}/app0:old-build"}),
        ] * 4
        pubsub_emulator.publish(topic, *(m.encode() for m in burst))
        await landed(remote, "app0", digest)
        await wait_until_async(
            lambda: _settled(engine, 10), LANDS, interval=0.1, what="every message decided"
        )
        listings = [e for e in emu.log if e.kind == "tags_list"]
        assert len(listings) == 1, [e.path for e in listings]
        assert events(engine, "ignored") == 1


async def test_delete_is_a_hint_and_malformed_messages_are_acked_without_harm(
    pubsub_emulator: PubSubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    async with daemon(pubsub_emulator, tmp_path) as (engine, emu, remote):
        topic = f"projects/{PROJECT}/topics/gcr"
        before = remote.head("environment/a")
        # Malformed: not JSON, no action, a bad reference. Each acked and counted.
        pubsub_emulator.publish(
            topic,
            b"\x00garbage",
            b'{"tag": "x"}',
            b'{"action": "INSERT", "tag": "Not A Reference"}',
        )
        await wait_until_async(
            lambda: _at_least(engine, "malformed", 3), LANDS, interval=0.1, what="malformed"
        )
        assert emu.log == []
        # A DELETE of a tag nobody follows: a hint, checked, and nothing to write.
        old = emu.push(f"{PROJECT}/app0", "old-build")
        emu.clear_log()
        emu.delete(f"{PROJECT}/app0", old)
        await wait_until_async(
            lambda: _at_least(engine, "acted", 2), LANDS, interval=0.1, what="the DELETE checked"
        )
        assert set(listed(emu)) == {f"{PROJECT}/app0"}
        assert remote.head("environment/a") == before
        # The followed tag deleted with its image, the repository with it: the check
        # finds nothing and writes nothing (the event is no fact to act on), and the
        # message is acked (asking again would say the same until a push).
        current = emu.resolve(f"{PROJECT}/app1", "master")
        assert current is not None
        emu.delete(f"{PROJECT}/app1", current)
        await wait_until_async(
            lambda: _at_least(engine, "acted", 3), LANDS, interval=0.1, what="the DELETE checked"
        )
        assert shasum(remote, "environment/a", "app1") == current
        # And the daemon goes on: the next push lands.
        digest = emu.push(f"{PROJECT}/app1", "master")
        await landed(remote, "app1", digest)
        assert engine.fatal is None


def listed(emu: GoogleRegistryEmulator) -> list[str]:
    """The images listed, in order, by the registry's request log."""
    return [
        e.path.removeprefix("/v2/").removesuffix("/tags/list")
        for e in emu.log
        if e.kind == "tags_list"
    ]


async def _at_least(engine: Engine, result: str, count: float) -> bool:
    return events(engine, result) >= count


async def _settled(engine: Engine, count: float) -> bool:
    return sum(events(engine, r) for r in ("acted", "ignored", "malformed")) >= count
