"""Shard leases against a real redis-server, with intervals compressed to half a second.

Figures (convergence, takeover, double ownership) are printed; run with -s to see them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.conftest import RedisServer
from watcher.cluster.connection import connect
from watcher.cluster.membership import LocalMembership, Membership
from watcher.keys import SHARDS as DEFAULT_PREFIX
from watcher_testing.waiting import wait_until_async

INTERVAL = 0.5
TTL = INTERVAL * 1.5
SHARDS = 16
SETTLE = 30.0  # seconds: the most any wait here may take (see ``settled``)
ROOT = Path(__file__).resolve().parent.parent


# --- helpers ----------------------------------------------------------------------


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    c = connect(redis_server.url, INTERVAL)
    yield c
    await c.aclose()


async def redis_owners(client: aioredis.Redis, shards: int = SHARDS) -> dict[int, tuple[str, int]]:
    """Shard -> (replica, fence), as Redis has it."""
    keys = [f"{DEFAULT_PREFIX}:lease:{s}" for s in range(shards)]
    values = await client.mget(keys)
    out = {}
    for shard, value in enumerate(values):
        if value is not None:
            owner, fence = value.decode().rsplit(":", 1)
            out[shard] = (owner, int(fence))
    return out


def is_balanced_partition(sets: Sequence[frozenset[int]], shards: int = SHARDS) -> bool:
    union: frozenset[int] = frozenset().union(*sets)
    sizes = [len(s) for s in sets]
    return (
        sum(sizes) == shards == len(union)
        and union == set(range(shards))
        and max(sizes) - min(sizes) <= 1
    )


async def settled(condition: Callable[[], object], what: str = "the partition") -> float:
    """Seconds until ``condition()`` held, polled every 10 ms.

    The deadline is generous (SETTLE): where a test promises a time, it asserts the
    seconds this returns (a broken promise shows its figure), and a wait for a mere
    precondition fails only when something is broken, not when the machine is busy.
    """
    return await wait_until_async(condition, SETTLE, interval=0.01, what=what)


@dataclass
class Replica:
    membership: Membership
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self) -> Replica:
        self.task = asyncio.create_task(self.membership.run(self.stop))
        return self

    async def shutdown(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task

    def kill(self) -> None:
        """As a crash: the task ends, nothing is released."""
        assert self.task is not None
        self.task.cancel()


class Sampler:
    """Samples every replica's owned set; records how long any shard had two owners."""

    def __init__(self, replicas: Sequence[Replica]) -> None:
        self.replicas = list(replicas)
        self.longest_double = 0.0
        self._since: dict[int, float] = {}
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            claims: dict[int, int] = {}
            for r in self.replicas:
                if r.task is not None and not r.task.done():
                    for shard in r.membership.owned():
                        claims[shard] = claims.get(shard, 0) + 1
            for shard in range(SHARDS):
                if claims.get(shard, 0) > 1:
                    start = self._since.setdefault(shard, now)
                    self.longest_double = max(self.longest_double, now - start)
                else:
                    self._since.pop(shard, None)
            await asyncio.sleep(0.005)  # the sampling period

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def replica(url: str, name: str, shards: int = SHARDS) -> Replica:
    return Replica(Membership(connect(url, INTERVAL), shards, INTERVAL, name)).start()


def owned(replicas: Sequence[Replica]) -> list[frozenset[int]]:
    return [r.membership.owned() for r in replicas]


# --- tests ------------------------------------------------------------------------


@pytest.mark.integration
async def test_three_replicas_converge_to_a_partition(
    redis_server: RedisServer, client: aioredis.Redis
) -> None:
    seen: list[dict[int, int]] = []
    watched = Membership(
        connect(redis_server.url, INTERVAL), SHARDS, INTERVAL, "r0", on_change=seen.append
    )
    replicas = [Replica(watched).start(), *(replica(redis_server.url, f"r{i}") for i in (1, 2))]
    sampler = Sampler(replicas)
    took = await settled(lambda: is_balanced_partition(owned(replicas)))
    print(f"\nconvergence of 3 fresh replicas: {took:.3f}s (interval {INTERVAL}s)")
    assert took <= 3 * INTERVAL
    assert sorted(len(s) for s in owned(replicas)) == [5, 5, 6]
    # Redis agrees with what each replica believes, fences included.
    in_redis = await redis_owners(client)
    for r in replicas:
        assert {s for s, (who, _) in in_redis.items() if who == r.membership.replica_id} == (
            r.membership.owned()
        )
        for shard, fence in r.membership.leases().items():
            assert in_redis[shard][1] == fence
        assert r.membership.replicas() == 3
    # The worker hears of every change, and of nothing else.
    assert watched.changed.is_set() and seen and seen[-1] == watched.leases()
    watched.changed.clear()
    calls = len(seen)
    # Stable: nothing moves over a few renewals (time passing is the behaviour).
    before = owned(replicas)
    await asyncio.sleep(3 * INTERVAL)
    assert owned(replicas) == before
    assert not watched.changed.is_set() and len(seen) == calls
    assert sampler.longest_double == 0.0
    await sampler.close()
    for r in replicas:
        await r.shutdown()
    assert await redis_owners(client) == {}
    assert await client.zcard(f"{DEFAULT_PREFIX}:replicas") == 0


@pytest.mark.integration
@pytest.mark.parametrize(("shards", "count"), [(7, 5), (1, 2), (3, 3)])
async def test_targets_differ_by_at_most_one(
    redis_server: RedisServer, shards: int, count: int
) -> None:
    replicas = [replica(redis_server.url, f"r{i}", shards) for i in range(count)]
    await settled(lambda: is_balanced_partition(owned(replicas), shards))
    for r in replicas:
        await r.shutdown()


@pytest.mark.integration
async def test_killed_replica_is_taken_over_within_two_intervals(
    redis_server: RedisServer, client: aioredis.Redis
) -> None:
    replicas = [replica(redis_server.url, f"r{i}") for i in range(3)]
    await settled(lambda: is_balanced_partition(owned(replicas)))
    victim, survivors = replicas[1], [replicas[0], replicas[2]]
    orphans = victim.membership.leases()
    await asyncio.sleep(0.2)  # not in step with the victim's renewals
    victim.kill()
    killed = time.monotonic()
    took = await settled(lambda: is_balanced_partition(owned(survivors)))
    print(f"\ntakeover after a kill: {took:.3f}s (ttl {TTL}s, two intervals {2 * INTERVAL}s)")
    assert took < 2 * INTERVAL
    # The lease cannot have been taken before it expired.
    assert time.monotonic() - killed >= TTL - INTERVAL / 2 - 0.05
    in_redis = await redis_owners(client)
    for shard, old_fence in orphans.items():
        owner, fence = in_redis[shard]
        assert owner != victim.membership.replica_id
        assert fence > old_fence
    assert all(r.membership.replicas() == 2 for r in survivors)
    for r in survivors:
        await r.shutdown()


@pytest.mark.integration
async def test_new_replica_gets_its_share(redis_server: RedisServer) -> None:
    first = [replica(redis_server.url, f"r{i}") for i in range(2)]
    await settled(lambda: is_balanced_partition(owned(first)))
    fences = {s: f for r in first for s, f in r.membership.leases().items()}
    sampler = Sampler(first)
    newcomer = replica(redis_server.url, "r9")
    sampler.replicas.append(newcomer)
    everyone = [*first, newcomer]
    took = await settled(lambda: is_balanced_partition(owned(everyone)))
    print(f"\nnewcomer has its share after {took:.3f}s; sizes {[len(s) for s in owned(everyone)]}")
    assert took < 2 * INTERVAL
    assert sampler.longest_double == 0.0
    # Handed-over shards get a new fence; the rest keep theirs.
    for shard, fence in newcomer.membership.leases().items():
        assert fence > fences[shard]
    for r in first:
        for shard, fence in r.membership.leases().items():
            assert fence == fences[shard]
    await sampler.close()
    for r in everyone:
        await r.shutdown()


@pytest.mark.integration
async def test_clean_stop_hands_over_at_once(redis_server: RedisServer) -> None:
    replicas = [replica(redis_server.url, f"r{i}") for i in range(2)]
    await settled(lambda: is_balanced_partition(owned(replicas)))
    await replicas[0].shutdown()
    assert replicas[0].membership.owned() == frozenset()
    took = await settled(lambda: is_balanced_partition(owned(replicas[1:])))
    print(f"\ntakeover after a clean stop: {took:.3f}s")
    assert took <= INTERVAL
    await replicas[1].shutdown()


@pytest.mark.integration
async def test_never_takes_a_live_lease(redis_server: RedisServer, client: aioredis.Redis) -> None:
    # Another replica's lease on shard 0, with no heartbeat: it still is not ours to take.
    await client.set(f"{DEFAULT_PREFIX}:lease:0", "other:41", px=10_000)
    await client.set(f"{DEFAULT_PREFIX}:fence:0", 41)
    await client.set(f"{DEFAULT_PREFIX}:epoch", 0)  # an established Redis: no grace
    r = replica(redis_server.url, "me", shards=2)
    await settled(lambda: r.membership.owned() == {1}, "shard 1")
    await asyncio.sleep(2 * INTERVAL)  # time passing without a take is the behaviour
    assert r.membership.owned() == {1}
    assert (await redis_owners(client, 2))[0] == ("other", 41)
    # Once released, it is taken, with the next fence.
    await client.delete(f"{DEFAULT_PREFIX}:lease:0")
    took = await settled(lambda: r.membership.owned() == {0, 1}, "shard 0 too")
    assert took <= INTERVAL
    assert r.membership.fence(0) == 42
    await r.shutdown()


@pytest.mark.integration
async def test_redis_restart_keeps_owners_and_fences(
    redis_server: RedisServer, client: aioredis.Redis
) -> None:
    replicas = [replica(redis_server.url, f"r{i}") for i in range(3)]
    await settled(lambda: is_balanced_partition(owned(replicas)))
    before = [r.membership.leases() for r in replicas]
    sampler = Sampler(replicas)
    redis_server.restart()  # comes back empty
    restarted = time.monotonic()

    async def back() -> bool:
        in_redis = await redis_owners(client)
        return len(in_redis) == SHARDS and is_balanced_partition(owned(replicas))

    await wait_until_async(back, SETTLE, interval=0.02, what="the leases back in Redis")
    took = time.monotonic() - restarted
    assert took < 4 * INTERVAL
    await asyncio.sleep(INTERVAL)  # an interval more for a double owner to show (none may)
    print(
        f"\nafter an empty Redis restart: leases back in Redis after {took:.3f}s; "
        f"longest double ownership {sampler.longest_double:.3f}s"
    )
    assert sampler.longest_double <= TTL
    # Every holder reclaimed its own shards: nothing moved, fences never went back.
    after = [r.membership.leases() for r in replicas]
    assert [set(a) for a in after] == [set(b) for b in before]
    for a, b in zip(after, before, strict=True):
        assert all(a[s] >= b[s] for s in a)
    # A shard taken after the restart gets a fence above every fence before it.
    top = max(f for b in before for f in b.values())
    await replicas[2].shutdown()
    took = await settled(lambda: is_balanced_partition(owned(replicas[:2])))
    assert took <= INTERVAL
    for shard in before[2]:
        holder = next(r for r in replicas[:2] if shard in r.membership.owned())
        fence = holder.membership.fence(shard)
        assert fence is not None and fence > top
    await sampler.close()
    for r in replicas[:2]:
        await r.shutdown()


@pytest.mark.integration
async def test_redis_down_keeps_the_shards_held(redis_server: RedisServer) -> None:
    """Promise: Redis down keeps the work going (nobody can take a shard meanwhile)."""
    r = replica(redis_server.url, "solo", shards=4)
    await settled(lambda: r.membership.owned() == set(range(4)), "every shard")
    fences = r.membership.leases()
    redis_server.stop()
    # Well past a ttl: still owned, so every image is still checked (time passing is
    # the behaviour).
    await asyncio.sleep(TTL * 3)
    assert r.membership.owned() == set(range(4))
    assert not r.membership.connected
    assert r.membership.replicas() == 1
    redis_server.start()  # empty: no persistence
    back = await settled(lambda: r.membership.connected, "reconnected")
    print(f"redis back: reconnected after {back:.3f}s")
    assert back <= 3 * INTERVAL
    # The leases are reclaimed with their old fences: no shard moved.
    took = await settled(lambda: r.membership.leases() == fences, "the old fences")
    assert took <= 3 * INTERVAL
    await r.shutdown()


@pytest.mark.unit
async def test_local_membership_owns_everything() -> None:
    seen: list[dict[int, int]] = []
    local = LocalMembership(4, on_change=seen.append)
    stop = asyncio.Event()
    task = asyncio.create_task(local.run(stop))
    await wait_until_async(lambda: seen, 5, what="the run to report its shards")
    assert local.owned() == {0, 1, 2, 3}
    assert local.fence(3) == 0 and local.fence(4) is None
    assert local.replicas() == 1
    assert local.changed.is_set()
    assert seen == [{0: 0, 1: 0, 2: 0, 3: 0}]
    stop.set()
    await task


@pytest.mark.unit
def test_bad_arguments() -> None:
    client = aioredis.Redis()
    with pytest.raises(ValueError):
        Membership(client, 0, 1.0)
    with pytest.raises(ValueError):
        Membership(client, 4, 1.0, ttl=0.5)
    with pytest.raises(ValueError):
        LocalMembership(0)


# --- separate processes ---------------------------------------------------------------

CHILD = """
import asyncio, signal, sys
from watcher.cluster.membership import Membership
from watcher.cluster.connection import connect

async def main():
    url, name, shards, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await Membership(connect(url, interval), shards, interval, name).run(stop)

asyncio.run(main())
"""


@pytest.mark.integration
async def test_separate_processes_and_sigkill(
    redis_server: RedisServer, client: aioredis.Redis
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = {
        name: await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            redis_server.url,
            name,
            str(SHARDS),
            str(INTERVAL),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name in ("p0", "p1", "p2")
    }
    try:

        async def partition(names: Sequence[str]) -> bool:
            in_redis = await redis_owners(client)
            sets = [frozenset(s for s, (o, _) in in_redis.items() if o == n) for n in names]
            return is_balanced_partition(sets)

        start = time.monotonic()
        await wait_until_async(
            lambda: partition(list(procs)), SETTLE, interval=0.02, what="the processes' partition"
        )
        print(f"\n3 processes converged {time.monotonic() - start:.3f}s after spawning")
        victim_leases = {s: f for s, (o, f) in (await redis_owners(client)).items() if o == "p1"}
        await asyncio.sleep(0.3)  # not in step with the victim's renewals
        procs["p1"].send_signal(signal.SIGKILL)
        await procs["p1"].wait()
        killed = time.monotonic()
        await wait_until_async(
            lambda: partition(["p0", "p2"]), SETTLE, interval=0.01, what="the takeover"
        )
        took = time.monotonic() - killed
        print(f"takeover after SIGKILL of a process: {took:.3f}s")
        assert took < 2 * INTERVAL
        in_redis = await redis_owners(client)
        assert all(in_redis[s][1] > f for s, f in victim_leases.items())
        # SIGTERM is a clean stop: the leases go back at once.
        procs["p0"].send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(procs["p0"].wait(), 5) == 0
        in_redis = await redis_owners(client)
        assert all(owner != "p0" for owner, _ in in_redis.values())
    finally:
        for proc in procs.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
