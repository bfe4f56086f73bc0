"""Faults with real parts: daemons (``python -m watcher run``), redis-server, the emulator, git.

Already covered elsewhere, not repeated here: Redis killed and restarted under three
daemons, a replica killed and its shards taken over, a 429 with Retry-After pausing
every replica (tests/test_replicas.py); a person's commit racing the writer and a
rejecting remote at the Watcher level (tests/test_end_to_end.py).
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.conftest import GitRemote, RedisServer, make_remote
from tests.soak import CAP, QUOTA, WINDOW, Daemon, config_text, is_ancestor, set_hook, shasums
from watcher_testing.emulator import EmulatorSettings, GoogleRegistryEmulator
from watcher_testing.waiting import wait_until_async

pytestmark = pytest.mark.integration

INTERVAL = 1.0
# The most a wait for the daemons to get going (or to meet a fault) may take: generous,
# since it lasts only as long as it takes. The promises' own deadlines are below.
SETTLE = 60.0


@asynccontextmanager
async def setup(
    tmp_path: Path,
    images: int,
    *,
    redis: RedisServer | None = None,
    replicas: int = 1,
    git_timeout: float = 2.0,
    **settings: object,
) -> AsyncIterator[tuple[GoogleRegistryEmulator, GitRemote, list[Daemon]]]:
    """The emulator with ``images`` images, a remote with two branches, running daemons.

    At the end every daemon still running gets SIGTERM and must exit 0 within 10 s.
    """
    options: dict[str, object] = {"auth_required": False}
    options.update(settings)
    async with GoogleRegistryEmulator(EmulatorSettings(**options)) as emu:  # type: ignore[arg-type]
        names = [f"proj/app{i}" for i in range(images)]
        for name in names:
            emu.push(name, "master")
        files = {
            f"apps/app{i}/values.yaml": f"image:\n  repository: {emu.host}/{name}\n  tag: master\n"
            for i, name in enumerate(names)
        }
        remote = make_remote(tmp_path, {"environment/a": files, "environment/b": files})
        daemons = []
        for n in range(replicas):
            text = config_text(
                emu.host,
                remote.url,
                redis.url if redis else "",
                interval=INTERVAL,
                git_timeout=git_timeout,
            )
            config = tmp_path / f"shards-{n}.yaml"
            config.write_text(text)
            daemons.append(Daemon(tmp_path / f"replica{n}", config))
        for daemon in daemons:
            daemon.start()
        try:
            yield emu, remote, daemons
        finally:
            codes = [await d.terminate() for d in daemons if d.alive()]
            assert all(code == 0 and seconds <= 10 for code, seconds in codes), codes


def current(remote: GitRemote, emu: GoogleRegistryEmulator, images: int) -> dict[str, bool]:
    names = [f"proj/app{i}" for i in range(images)]
    seen = shasums(remote, ["environment/a", "environment/b"], names)
    return {f"{b}:{n}": seen[(b, n)] == emu.resolve(n, "master") for (b, n) in seen}


async def reflected_within(
    remote: GitRemote, emu: GoogleRegistryEmulator, images: int, seconds: float
) -> float:
    """Seconds until every block shows its image's current digest; fails after ``seconds``."""
    state: dict[str, bool] = {}

    async def reflected() -> bool:
        state.update(await asyncio.to_thread(current, remote, emu, images))
        return all(state.values())

    return await wait_until_async(
        reflected,
        seconds,
        interval=0.1,
        what=lambda: f"every block: missing {sorted(k for k, ok in state.items() if not ok)}",
    )


def reasons(daemons: list[Daemon]) -> str:
    """Every reason the daemons logged (skips, failures), in one string."""
    return " ".join(str(e.get("reason")) for d in daemons for e in d.events())


def tracebacks(daemons: list[Daemon]) -> list[str]:
    return [
        str(e.get("event"))
        for d in daemons
        for e in d.events()
        if "Traceback" in str(e) or e.get("event") in ("non-json output", "image check failed")
    ]


async def test_registry_faults_do_not_crash_and_moves_land_within_two_intervals(
    tmp_path: Path,
) -> None:
    """Promises: no crash on bad input; every moved tag reflected within two intervals once
    faults clear.

    A daemon meets, in turn, a 5xx burst, requests hanging past its timeout, connections
    reset without an answer, truncated and garbage bodies and a Google extension that
    does not parse. Through each it stays up; a tag moved during the faults lands on
    every branch within two intervals of the faults clearing.
    """
    images = 4
    async with setup(tmp_path, images) as (emu, remote, daemons):
        await reflected_within(remote, emu, images, SETTLE)
        for inject in (
            lambda: emu.fail_next(12, status=503),
            lambda: emu.hang_next(3, seconds=2.5),  # client timeout 1 s
            lambda: emu.drop_next(6),
            lambda: emu.malform_next(2, "extension"),
            lambda: emu.malform_next(2, "truncated"),
            lambda: emu.malform_next(2, "garbage"),
        ):
            inject()
            emu.push("proj/app1", "master")
            # Each fault is met in full before the next: a fault still queued when
            # the faults are cleared would leave its kind untested.
            await wait_until_async(lambda: not emu._pending, SETTLE, what="the fault to be met")
            assert all(d.alive() for d in daemons)
        emu.clear_faults()
        emu.push("proj/app2", "master")
        await reflected_within(remote, emu, images, 2 * INTERVAL)
        events = [e for d in daemons for e in d.events()]
        served = emu.count(status=503)
        dropped = sum(1 for e in emu.log if e.status is None)
    assert not tracebacks(daemons)
    failures = " ".join(str(e.get("reason")) for e in events if e.get("event") == "image skipped")
    assert served >= 12  # the burst was served (and retried through)
    # Resets were met (and retried through: whether one image's four attempts all
    # met one depends on how the look-ups interleave, so that is not asserted).
    assert dropped >= 6
    # Every fault was met (asserted as each was injected); the bad bodies were
    # refused, each as a reason for skipping that image, never written.
    assert "not JSON" in failures or "unreadable Google tags/list" in failures
    # Nothing unparsed or wrongly shaped was written: every block is a valid digest.
    for text in (remote.read(b, "apps/app1/values.yaml") for b in ("environment/a",)):
        assert "shasum: sha256:" in text


async def test_429_storm_without_retry_after_backs_off_for_every_replica(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Promise: never over the quota — a 429 storm (no Retry-After, as Google sends) is met
    with a shared, growing back-off, not a stream of retries; work resumes after it."""
    images = 6
    async with setup(tmp_path, images, redis=redis_server, replicas=3) as (emu, remote, _):
        await reflected_within(remote, emu, images, SETTLE)  # the daemons are at work
        emu.fail_next(None, status=429)
        storm = time.monotonic()
        await asyncio.sleep(4)  # the storm's length is the scenario
        emu.clear_faults()
        cleared = time.monotonic()
        emu.push("proj/app3", "master")
        # The first 429 pauses the budget 5 s (THROTTLE_FIRST) from the storm's start.
        await reflected_within(remote, emu, images, 5 + 2 * INTERVAL)
        log = list(emu.log)
    during = [e for e in log if storm <= e.monotonic < cleared]
    throttled = [e for e in during if e.status == 429]
    assert throttled, "the storm was not met"
    # Three replicas, each with at most a few look-ups granted before the pause reached
    # it: a handful of 429s, not one per look-up per interval (18 images x 4 s).
    assert len(throttled) <= 12, len(throttled)
    first = min(e.monotonic for e in throttled)
    late = [e for e in during if e.monotonic > first + 0.5]
    assert late == [], [(round(e.monotonic - first, 2), e.path) for e in late]
    assert emu.max_in_window(WINDOW) <= CAP


async def test_429_with_retry_after_under_a_storm_honours_each(tmp_path: Path) -> None:
    """Promise: never over the quota — with Retry-After, each 429 pauses exactly that long."""
    images = 4
    async with setup(tmp_path, images, retry_after=2.0) as (emu, remote, _):
        await reflected_within(remote, emu, images, SETTLE)  # the daemon is at work
        emu.fail_next(None, status=429)
        await asyncio.sleep(5)  # the storm's length is the scenario
        emu.clear_faults()
        emu.push("proj/app0", "master")
        await reflected_within(remote, emu, images, 2 + 2 * INTERVAL)
        throttled = sorted(e.monotonic for e in emu.log if e.status == 429)
    # One burst of 429s per Retry-After (the look-ups granted before the pause reached
    # the budget), never a stream: at most 3 bursts in the 5 s storm, 2 s apart.
    assert 2 <= len(throttled) <= 12, throttled
    bursts = [b - a for a, b in itertools.pairwise(throttled) if b - a > 0.5]
    assert len(bursts) <= 3 and all(gap >= 1.9 for gap in bursts), bursts


async def test_redis_debug_sleep_keeps_the_cap_and_the_work(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Promise: never over the quota while Redis is slow (a DEBUG SLEEP blocks every client):
    replicas fall back to cap / replicas, keep checking, and go back to the shared log."""
    images = 24
    async with setup(
        tmp_path, images, redis=redis_server, replicas=3, quota_requests=QUOTA, quota_window=WINDOW
    ) as (emu, remote, daemons):
        await reflected_within(remote, emu, images, SETTLE)  # the daemons are at work
        slept = time.monotonic()
        await asyncio.to_thread(
            subprocess.run,
            ["redis-cli", "-p", str(redis_server.port), "DEBUG", "SLEEP", "2.5"],
            check=True,
            capture_output=True,
        )
        emu.push("proj/app5", "master")
        await reflected_within(remote, emu, images, 4 * INTERVAL)
        await asyncio.sleep(2)  # two more intervals under the cap, back on the shared log
        log = list(emu.log)
        events = [e for d in daemons for e in d.events()]
    assert emu.max_in_window(WINDOW) <= CAP
    assert sum(e.status == 429 for e in log) == 0
    assert [e for e in log if slept + 0.5 <= e.monotonic < slept + 2.5], "work stopped"
    assert any("budget degraded" in str(e.get("event")) for e in events)
    assert not tracebacks(daemons)


async def test_git_remote_that_hangs_is_timed_out_and_the_update_lands_later(
    tmp_path: Path,
) -> None:
    """Promises: every moved tag reflected once faults clear; never lose a person's commit.

    The remote accepts the push and then hangs (a pre-receive hook that sleeps): the push
    is killed at git.timeout, the update stays pending, a person commits to the same file
    meanwhile, and once the remote answers again the update lands on top of the person's.
    """
    images = 2
    async with setup(tmp_path, images, git_timeout=1.5) as (emu, remote, daemons):
        await reflected_within(remote, emu, images, SETTLE)
        # The remote hangs the watcher's pushes, not the person's: the person's commit
        # lands while the watcher's retries keep timing out, never racing one that
        # the remote let through.
        set_hook(
            remote,
            'while read old new ref; do\n'
            '  [ "$(git log -1 --format=%an "$new")" = image-watcher ] && sleep 30\n'
            "done\nexit 0",
        )
        emu.push("proj/app0", "master")
        await wait_until_async(
            lambda: "timed out after 1.5s" in reasons(daemons),
            SETTLE,
            what="the push to start and be killed",
        )
        text = remote.read("environment/a", "apps/app0/values.yaml")
        person = remote.commit(
            "environment/a", {"apps/app0/values.yaml": text + "replicaCount: 3\n"}, "scale up"
        )
        set_hook(remote, None)
        waited = await reflected_within(remote, emu, images, 2 * INTERVAL + 1.5)
        events = [e for d in daemons for e in d.events()]
    assert waited <= 2 * INTERVAL + 1.5
    assert is_ancestor(remote, person, "environment/a")
    assert "replicaCount: 3" in remote.read("environment/a", "apps/app0/values.yaml")
    assert "timed out after 1.5s" in " ".join(str(e.get("reason")) for e in events)


async def test_sigterm_during_a_slow_write_lets_it_finish(tmp_path: Path) -> None:
    """Promise: SIGTERM during a write — the write finishes and the process exits 0 in 10 s."""
    images = 1
    async with setup(tmp_path, images, git_timeout=20) as (emu, remote, daemons):
        await reflected_within(remote, emu, images, SETTLE)
        marker = tmp_path / "pushing"
        set_hook(remote, f"touch {marker}\nsleep 3")
        digest = emu.push("proj/app0", "master")
        await wait_until_async(marker.exists, SETTLE, what="the push to reach the hook")
        code, seconds = await daemons[0].terminate()
    assert code == 0 and seconds < 10, (code, seconds)
    # The push in flight landed before the exit (on one branch at least: the other's
    # writer may not have started when the signal came).
    landed = [
        b
        for b in ("environment/a", "environment/b")
        if digest in remote.read(b, "apps/app0/values.yaml")
    ]
    assert landed


async def test_sigterm_during_a_hung_write_exits_within_ten_seconds(tmp_path: Path) -> None:
    """Promise: SIGTERM during a write that never ends — exit 0 within 10 s, the write safely
    abandoned (nothing half-written; the branch is the person's as it was) and redone by the
    next run."""
    images = 1
    async with setup(tmp_path, images, git_timeout=60) as (emu, remote, daemons):
        await reflected_within(remote, emu, images, SETTLE)
        heads = {b: remote.head(b) for b in ("environment/a", "environment/b")}
        marker = tmp_path / "pushing"
        set_hook(remote, f"touch {marker}\nsleep 60")
        emu.push("proj/app0", "master")
        await wait_until_async(marker.exists, SETTLE, what="the push to reach the hook")
        code, seconds = await daemons[0].terminate()
        assert code == 0 and seconds < 10, (code, seconds)
        assert {b: remote.head(b) for b in heads} == heads
        set_hook(remote, None)
        daemons[0].start()  # the same clone
        await reflected_within(remote, emu, images, SETTLE)


async def test_sigkill_mid_push_loses_nothing(tmp_path: Path) -> None:
    """Promises: never lose a person's commit; moved tags reflected after a crash.

    The whole daemon (process group, git children included, as a container kill) is
    SIGKILLed while its push sits in the remote's hook. A person then commits to the
    same file. The daemon restarts on the same clone: the update lands on top of the
    person's commit, nothing is lost or duplicated.
    """
    images = 1
    async with setup(tmp_path, images, git_timeout=30) as (emu, remote, daemons):
        await reflected_within(remote, emu, images, SETTLE)
        marker = tmp_path / "pushing"
        set_hook(remote, f"touch {marker}\nsleep 30")
        emu.push("proj/app0", "master")
        await wait_until_async(marker.exists, SETTLE, what="the push to reach the hook")
        daemons[0].kill()
        set_hook(remote, None)
        text = remote.read("environment/a", "apps/app0/values.yaml")
        person = remote.commit(
            "environment/a", {"apps/app0/values.yaml": text + "replicaCount: 2\n"}, "scale"
        )
        daemons[0].start()
        await reflected_within(remote, emu, images, SETTLE)
    assert is_ancestor(remote, person, "environment/a")
    log = remote.log("environment/a")
    assert sum("image-watcher" in line for line in log) == 2, log  # first write + this one
    assert "replicaCount: 2" in remote.read("environment/a", "apps/app0/values.yaml")
