"""The Engine's wiring with real parts: its resources as one context, the daemon in-process,
and the scheduler's seam for checking one image at once."""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import DockerRegistry, GitRemote, make_remote, watcher_config
from watcher.config import RedisConfig
from watcher.engine import Engine
from watcher.references import canonical_name
from watcher_testing.images import push_image

pytestmark = pytest.mark.integration


def shasum(remote: GitRemote, branch: str) -> str | None:
    for line in remote.read(branch, "apps/api/values.yaml").splitlines():
        if line.strip().startswith("shasum:"):
            return line.split(":", 1)[1].strip().strip('"')
    return None


async def shown(remote: GitRemote, branch: str, digest: str, seconds: float) -> float:
    began = time.monotonic()
    while shasum(remote, branch) != digest:
        assert time.monotonic() - began < seconds, f"{branch} never showed {digest}"
        await asyncio.sleep(0.05)
    return time.monotonic() - began


async def test_a_redis_url_that_fails_closes_what_was_opened_before_it(tmp_path: Path) -> None:
    """Resources open as one context: when Redis cannot be set up, the HTTP session opened
    before it is closed, not leaked (it used to be)."""
    remote = make_remote(tmp_path, {"environment/a": {"apps/api/values.yaml": "a: 1\n"}})
    config = replace(
        watcher_config("127.0.0.1:1", remote, tmp_path),
        redis=RedisConfig(url="redis://127.0.0.1:notaport/0"),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="Port could not be cast"):
            async with Engine(config):
                pass
        gc.collect()
    leaks = [str(w.message) for w in caught if "Unclosed" in str(w.message)]
    assert leaks == []


async def test_check_now_checks_one_image_at_once_coalesced(
    docker_registry: DockerRegistry, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The seam for registry events: ``check_now(image)`` makes the owner check an image
    at once, not at its next slot; asked twice while in flight, it checks once."""
    host = docker_registry.host
    first = await push_image(
        session, docker_registry.url, "team/api", "master", kind="oci", seed="1"
    )
    block = f"image:\n  repository: {host}/team/api\n  tag: master\n"
    remote = make_remote(tmp_path, {"environment/a": {"apps/api/values.yaml": block}})
    # One shard (its first slot at once) and a long interval: nothing but
    # check_now checks the image again within this test.
    config = replace(watcher_config(host, remote, tmp_path), shards=1, interval=120.0)
    image = canonical_name(f"{host}/team/api")
    async with Engine(config) as engine:
        stop = asyncio.Event()
        daemon = asyncio.create_task(engine.run(stop))
        try:
            await shown(remote, "environment/a", first, 20)
            scheduler = engine.scheduler
            assert scheduler is not None
            assert scheduler.check_now(canonical_name(f"{host}/team/other")) is None

            second = await push_image(
                session, docker_registry.url, "team/api", "master", kind="oci", seed="2"
            )
            sent = engine.metrics.registry.get_sample_value(
                "image_watcher_lookups_total", {"result": "sent"}
            )
            check = scheduler.check_now(image)
            assert check is not None
            assert scheduler.check_now(image) is check  # coalesced with the one in flight
            await check
            after = engine.metrics.registry.get_sample_value(
                "image_watcher_lookups_total", {"result": "sent"}
            )
            assert sent is not None and after == sent + 1  # one look-up, not two
            waited = await shown(remote, "environment/a", second, 20)
            assert waited < 20 < config.interval
            assert scheduler.check_now(image) is not check  # done: a new request checks anew
        finally:
            stop.set()
            await asyncio.wait_for(daemon, 10)
    assert engine.fatal is None
