"""Several daemons, one shared Redis budget, one registry quota: the promises of sharing.

Real processes (`python -m watcher run`), a real redis-server, the Google
registry emulator enforcing its quota, and a real git remote, in compressed
time (interval 1 s, a 10 s quota window).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import RedisServer, free_port, make_remote
from watcher.config import load
from watcher_testing.emulator import EmulatorSettings, GoogleRegistryEmulator, LoggedRequest

pytestmark = pytest.mark.integration

INTERVAL = 1.0
WINDOW = 10.0
QUOTA = 200
CAP = 190  # 200 with 5% headroom


def values(host: str, image: str) -> str:
    return f"image:\n  repository: {host}/{image}\n  tag: master\n"


@asynccontextmanager
async def emulator(images: int, **settings: object) -> AsyncIterator[GoogleRegistryEmulator]:
    options = {"auth_required": False, "quota_requests": QUOTA, "quota_window": WINDOW}
    options.update(settings)
    async with GoogleRegistryEmulator(EmulatorSettings(**options)) as emu:  # type: ignore[arg-type]
        for i in range(images):
            emu.push(f"proj/app{i}", "master")
        yield emu


def write_config(
    tmp_path: Path, emu: GoogleRegistryEmulator, redis: RedisServer, images: int, shards: int
) -> Path:
    files = {f"apps/app{i}/values.yaml": values(emu.host, f"proj/app{i}") for i in range(images)}
    remote = make_remote(tmp_path, {"environment/a": files, "environment/b": files})
    config = tmp_path / "shards.yaml"
    config.write_text(
        f"""
shards: {shards}
interval: 1s
redis: {{url: "{redis.url}"}}
limits:
  gcr: {{requests: {QUOTA}, per: 10s, headroom: 5%}}
registries:
  - {{host: "{emu.host}", api: google, auth: anonymous, insecure: true, limit: gcr}}
git:
  url: {remote.url}
  files: ["apps/*/values.yaml"]
"""
    )
    return config


def with_port(config: Path) -> Path:
    text = config.read_text()
    path = config.with_name(f"shards-{free_port()}.yaml")
    path.write_text(text + f"server: {{port: {free_port()}}}\n")
    return path


def spawn(workdir: Path, config: Path) -> subprocess.Popen[bytes]:
    """One daemon, its JSON log in workdir, its own clone (XDG_CACHE_HOME)."""
    workdir.mkdir()
    with open(workdir / "log.jsonl", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "XDG_CACHE_HOME": str(workdir)},
        )


@asynccontextmanager
async def replicas(
    tmp_path: Path, config: Path, count: int
) -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    """Daemons that are stopped with SIGTERM at the end; each must exit 0 within 10 s.

    Waiting for them happens off the event loop, which keeps serving the
    emulator meanwhile.
    """
    procs = []
    try:
        for n in range(count):
            procs.append(spawn(tmp_path / f"replica{n}", with_port(config)))
        yield procs
    finally:
        running = [proc for proc in procs if proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in running:
            try:
                codes.append(await asyncio.to_thread(proc.wait, 10))
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
                codes.append(None)
    assert codes == [0] * len(running), f"replicas did not stop cleanly: {codes}"


async def scrape_metrics(proc: subprocess.Popen[bytes]) -> str:
    """The /metrics text of a daemon started by ``spawn``."""
    config = load(str(proc.args[-1]), environ={})  # type: ignore[index]
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{config.server.port}/metrics") as response,
    ):
        return await response.text()


def listings(log: list[LoggedRequest]) -> list[LoggedRequest]:
    return [e for e in log if e.kind == "tags_list"]


async def test_three_replicas_saturating_one_budget_stay_under_the_cap(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Promise: never over the quota, and every image still checked when demand exceeds it.

    40 images at a 1 s interval want 400 listings per 10 s window; the cap is 190.
    """
    async with emulator(40) as emu:
        config = write_config(tmp_path, emu, redis_server, 40, shards=6)
        async with replicas(tmp_path, config, 3):
            await asyncio.sleep(16)
        log = list(emu.log)
    sent = [e.monotonic for e in log]
    assert emu.max_in_window(WINDOW) <= CAP
    assert sum(e.status == 429 for e in log) == 0
    # Saturated: a window past the start is used nearly to the cap.
    start = sent[0]
    middle = [t for t in sent if start + 5 <= t < start + 15]
    assert len(middle) >= 0.9 * CAP, len(middle)
    # Fair: every image was checked, none starved.
    per_image = {f"proj/app{i}": 0 for i in range(40)}
    for entry in listings(log):
        per_image[str(entry.repository)] += 1
    assert min(per_image.values()) >= 0.5 * max(per_image.values()), per_image


async def test_killed_replica_images_checked_again_within_two_intervals(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Promise: a dead replica's images are checked again within two intervals."""
    async with emulator(12, quota_requests=None) as emu:
        config = write_config(tmp_path, emu, redis_server, 12, shards=6)
        async with replicas(tmp_path, config, 3) as procs:
            await asyncio.sleep(5)  # converged: each replica holds about 2 shards
            victim = procs[1]
            victim.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await asyncio.sleep(3)
        log = listings(list(emu.log))
    # For every image (the victim's among them), its first check after the kill.
    delays = []
    for i in range(12):
        times = [e.monotonic for e in log if e.repository == f"proj/app{i}"]
        delays.append(min(t for t in times if t >= killed) - killed)
    assert max(delays) <= 2 * INTERVAL, sorted(delays)


async def test_redis_down_keeps_the_cap_and_the_work(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Promise: never over the quota, even while Redis is down or comes back empty."""
    async with emulator(40) as emu:
        config = write_config(tmp_path, emu, redis_server, 40, shards=6)
        async with replicas(tmp_path, config, 3) as procs:
            await asyncio.sleep(5)
            redis_server.stop()
            down = time.monotonic()
            await asyncio.sleep(3)
            # The daemons say so: a metric per budget (and keep working, below).
            for proc in procs:
                scrape = await scrape_metrics(proc)
                assert 'image_watcher_budget_degraded{budget="gcr"} 1.0' in scrape
            await asyncio.sleep(2)
            redis_server.start()  # empty: no persistence
            up = time.monotonic()
            await asyncio.sleep(5)
        log = list(emu.log)
    assert emu.max_in_window(WINDOW) <= CAP
    assert sum(e.status == 429 for e in log) == 0
    during = [e for e in log if down + 1 <= e.monotonic < up]
    assert len(during) > 0, "work stopped while Redis was down"
    after = [e for e in log if e.monotonic >= up + 2]
    assert len(after) > 0, "work did not resume after Redis came back"


async def test_a_429_pauses_every_replica(tmp_path: Path, redis_server: RedisServer) -> None:
    """Promise: a registry's 429 stops every replica for its Retry-After."""
    async with emulator(12, quota_requests=None, retry_after=3.0) as emu:
        config = write_config(tmp_path, emu, redis_server, 12, shards=6)
        async with replicas(tmp_path, config, 3):
            await asyncio.sleep(4)
            emu.fail_next(1, status=429)
            await asyncio.sleep(4.5)
        log = list(emu.log)
    throttled = [e for e in log if e.status == 429]
    assert len(throttled) == 1
    at = throttled[0].monotonic
    # Requests granted before the pause reached Redis may still arrive just after.
    paused = [e for e in log if at + 0.3 <= e.monotonic < at + 3.0 - 0.2]
    assert paused == [], [(round(e.monotonic - at, 2), e.path) for e in paused]
    assert any(e.monotonic >= at + 3.0 for e in log), "work did not resume"
