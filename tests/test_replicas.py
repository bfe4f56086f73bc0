"""Several daemons, one shared Redis budget, one registry quota: the promises of sharing.

Real processes (`python -m watcher run`), a real redis-server, the Google
registry emulator enforcing its quota, and a real git remote, in compressed
time (interval 1 s, a 10 s quota window).
"""

from __future__ import annotations

import asyncio
import json
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

from tests.cli_support import stop_all
from tests.conftest import GitRemote, RedisServer, free_port, make_remote
from tests.soak import shasums
from watcher.config import load
from watcher_testing.emulator import EmulatorSettings, GoogleRegistryEmulator, LoggedRequest
from watcher_testing.services import RedisClusterNodes
from watcher_testing.waiting import wait_until_async

pytestmark = pytest.mark.integration

INTERVAL = 1.0
WINDOW = 10.0
QUOTA = 200
CAP = 190  # 200 with 5% headroom
SHARDS = 6
# The most a wait for the daemons to get going may take: generous, since a loaded
# machine starts three daemons slowly and a wait lasts only as long as it takes.
SETTLE = 60.0


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
    tmp_path: Path,
    emu: GoogleRegistryEmulator,
    redis: RedisServer | RedisClusterNodes,
    images: int,
    shards: int,
) -> tuple[Path, GitRemote]:
    files = {f"apps/app{i}/values.yaml": values(emu.host, f"proj/app{i}") for i in range(images)}
    remote = make_remote(tmp_path, {"environment/a": files, "environment/b": files})
    config = tmp_path / "shards.yaml"
    config.write_text(
        f"""
shards: {shards}
interval: 1s
redis: {{url: "{redis.url}", cluster: {str(isinstance(redis, RedisClusterNodes)).lower()}}}
limits:
  gcr: {{requests: {QUOTA}, per: 10s, headroom: 5%}}
registries:
  - {{host: "{emu.host}", api: google, auth: anonymous, insecure: true, limit: gcr}}
git:
  url: {remote.url}
  files: ["apps/*/values.yaml"]
"""
    )
    return config, remote


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
        codes = await stop_all(procs)
    assert codes == [0] * len(codes), f"replicas did not stop cleanly: {codes}"


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


def shards_owned(workdir: Path) -> int:
    """How many shards the daemon logging in ``workdir`` owns, by its last ownership event.

    Read from its log, not asked over HTTP: a test waiting on it costs the daemon nothing.
    """
    owned = 0
    log = workdir / "log.jsonl"
    for line in log.read_text(errors="replace").splitlines() if log.exists() else ():
        if '"shard ownership changed"' in line:
            owned = len(json.loads(line)["owned"])
    return owned


async def converged(tmp_path: Path, count: int) -> None:
    """Until every daemon of ``replicas(tmp_path, ...)`` owns its equal part of the shards."""

    def balanced() -> bool:
        owned = [shards_owned(tmp_path / f"replica{n}") for n in range(count)]
        return owned == [SHARDS // count] * count

    # Off the event loop, which stamps the emulator's arrivals (the cap is judged on them).
    await wait_until_async(
        lambda: asyncio.to_thread(balanced), SETTLE, interval=0.2, what="each replica's shards"
    )


async def working(
    tmp_path: Path,
    count: int,
    emu: GoogleRegistryEmulator,
    remote: GitRemote,
    images: int,
) -> None:
    """Until the daemons are past their start: each owns its part of the shards, and
    every block holds its image's digest (the first writes landed)."""
    await converged(tmp_path, count)
    names = [f"proj/app{i}" for i in range(images)]

    def written() -> bool:
        seen = shasums(remote, ["environment/a", "environment/b"], names)
        return all(digest == emu.resolve(name, "master") for (_, name), digest in seen.items())

    await wait_until_async(
        lambda: asyncio.to_thread(written), SETTLE, interval=0.2, what="the first writes"
    )


async def test_three_replicas_saturating_one_budget_stay_under_the_cap(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Promise: never over the quota, and every image still checked when demand exceeds it.

    40 images at a 1 s interval want 400 listings per 10 s window; the cap is 190.
    """
    async with emulator(40) as emu:
        config, _ = write_config(tmp_path, emu, redis_server, 40, shards=SHARDS)
        async with replicas(tmp_path, config, 3):
            # The window measured below starts 5 s after the first request, or once the
            # replicas hold their shards if that takes longer (a loaded machine): shards
            # still moving between replicas are not the steady state.
            await converged(tmp_path, 3)
            await wait_until_async(lambda: emu.log, SETTLE, what="the first request")
            begin = max(emu.log[0].monotonic + 5, time.monotonic())
            # Saturation over a whole window (and a second more) is the behaviour.
            await asyncio.sleep(begin + WINDOW + 1 - time.monotonic())
        log = list(emu.log)
    sent = [e.monotonic for e in log]
    assert emu.max_in_window(WINDOW) <= CAP
    assert sum(e.status == 429 for e in log) == 0
    # Saturated: a window past the start is used nearly to the cap.
    middle = [t for t in sent if begin <= t < begin + WINDOW]
    assert len(middle) >= 0.9 * CAP, len(middle)
    # Fair: every image was checked, none starved.
    per_image = {f"proj/app{i}": 0 for i in range(40)}
    for entry in listings(log):
        per_image[str(entry.repository)] += 1
    assert min(per_image.values()) >= 0.5 * max(per_image.values()), per_image


async def kill_one_of_three(tmp_path: Path, redis: RedisServer | RedisClusterNodes) -> list[float]:
    """Three replicas over 12 images; the second is SIGKILLed once they are at work.

    Returns, for every image (the victim's among them), how long after the kill
    it was first checked again.
    """
    async with emulator(12, quota_requests=None) as emu:
        config, remote = write_config(tmp_path, emu, redis, 12, shards=SHARDS)
        async with replicas(tmp_path, config, 3) as procs:
            await working(tmp_path, 3, emu, remote, 12)  # each replica holds 2 shards
            victim = procs[1]
            victim.send_signal(signal.SIGKILL)
            killed = time.monotonic()

            def checked_since_the_kill() -> bool:
                checked = {e.repository for e in listings(emu.log) if e.monotonic >= killed}
                return len(checked) == 12

            await wait_until_async(checked_since_the_kill, SETTLE, what="every image checked")
        log = listings(list(emu.log))
    delays = []
    for i in range(12):
        times = [e.monotonic for e in log if e.repository == f"proj/app{i}"]
        delays.append(min(t for t in times if t >= killed) - killed)
    return delays


async def test_killed_replica_images_checked_again_within_two_intervals(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Promise: a dead replica's images are checked again within two intervals."""
    delays = await kill_one_of_three(tmp_path, redis_server)
    assert max(delays) <= 2 * INTERVAL, sorted(delays)


async def test_redis_down_keeps_the_cap_and_the_work(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Promise: never over the quota, even while Redis is down or comes back empty."""
    async with emulator(40) as emu:
        config, remote = write_config(tmp_path, emu, redis_server, 40, shards=SHARDS)
        async with replicas(tmp_path, config, 3) as procs:
            await working(tmp_path, 3, emu, remote, 40)
            # From here the scenario's phases are timed: each lasts as long as it does.
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
            await asyncio.sleep(5)  # the cap across the empty restart is the behaviour
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
        config, remote = write_config(tmp_path, emu, redis_server, 12, shards=SHARDS)
        async with replicas(tmp_path, config, 3):
            await working(tmp_path, 3, emu, remote, 12)
            emu.fail_next(1, status=429)
            await asyncio.sleep(4.5)  # the pause and the work after it are the behaviour
        log = list(emu.log)
    throttled = [e for e in log if e.status == 429]
    assert len(throttled) == 1
    at = throttled[0].monotonic
    # Requests granted before the pause reached Redis may still arrive just after.
    paused = [e for e in log if at + 0.3 <= e.monotonic < at + 3.0 - 0.2]
    assert paused == [], [(round(e.monotonic - at, 2), e.path) for e in paused]
    assert any(e.monotonic >= at + 3.0 for e in log), "work did not resume"
