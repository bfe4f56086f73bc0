"""Redis Cluster (``redis.cluster: true``): the budget, leases and shared cache on three masters.

A real cluster the tests start: three ``redis-server --cluster-enabled yes`` on
ports below 55536, joined with ``redis-cli --cluster create``. Keys carry hash
tags, so each Lua script's keys share one slot, and the client sends each script
to the node owning its first key's slot. The proof is the daemon's own: real
``python -m watcher run`` replicas against the Google-registry emulator keep its
quota and take over a killed replica's shards, with no CROSSSLOT or MOVED error
(or any Redis error) in any log.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.cli_support import assert_clean, open_world, watcher
from tests.conftest import RedisServer
from tests.test_replicas import (
    CAP,
    INTERVAL,
    WINDOW,
    emulator,
    kill_one_of_three,
    replicas,
    write_config,
)
from watcher import keys
from watcher.budget.shared import RedisBudget
from watcher.cluster.connection import RedisClient, connect, verify
from watcher.cluster.membership import Membership
from watcher.config import Limit, RedisConfig
from watcher.registry.cache import SharedCache
from watcher_testing.services import CLUSTER_PORT_LIMIT, RedisClusterNodes

pytestmark = pytest.mark.integration

# What must never reach a log: the cluster's redirections and slot errors, a
# cluster the client could not reach, a traceback.
FORBIDDEN = (
    "CROSSSLOT",
    "MOVED",
    "ASK ",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "Cluster",
    "slot",
    "Traceback",
)
# The replicas' Redis-trouble events. On a loaded machine a call may outlast
# the client's short timeout (a quarter interval, by design); anything else
# (a refused connection, an error reply) would be the cluster's fault.
TROUBLE = (
    "redis unreachable; still checking the shards held",
    "budget degraded: redis unreachable, using a local budget",
    "shared cache unavailable; asking the registry",
)


@pytest.fixture(scope="module")
def cluster_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """One cluster for the module: creating it takes seconds."""
    cluster = RedisClusterNodes(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
    except RuntimeError as exc:
        cluster.stop()
        pytest.fail(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster(cluster_nodes: RedisClusterNodes) -> RedisClusterNodes:
    """The module's cluster, emptied: each test starts from a Redis that never saw a replica."""
    for port in cluster_nodes.ports:
        assert cluster_nodes.cli(port, "flushall").strip() == "OK"
    return cluster_nodes


@pytest.fixture
async def client(redis_cluster: RedisClusterNodes) -> AsyncIterator[RedisClient]:
    c = connect(redis_cluster.url, INTERVAL, cluster=True)
    yield c
    await c.aclose()


def nodes_holding(cluster: RedisClusterNodes, pattern: str) -> set[int]:
    """The ports of the nodes that store keys matching ``pattern``."""
    return {p for p in cluster.ports if cluster.cli(p, "--scan", "--pattern", pattern).strip()}


def test_the_cluster_is_three_masters_below_55536(redis_cluster: RedisClusterNodes) -> None:
    assert len(redis_cluster.ports) == 3
    assert all(port < CLUSTER_PORT_LIMIT == 55536 for port in redis_cluster.ports)
    nodes = redis_cluster.cli(redis_cluster.ports[0], "cluster", "nodes").splitlines()
    assert sum("master" in line for line in nodes) == 3


async def test_leases_budget_and_cache_on_a_cluster(
    redis_cluster: RedisClusterNodes, client: RedisClient
) -> None:
    # Three replicas' membership converges to a partition of the shards.
    members = [Membership(client, 6, INTERVAL, f"r{i}", ttl=3 * INTERVAL) for i in range(3)]
    deadline = time.monotonic() + 10
    while True:
        for member in members:
            await member.step()
        owned = [member.owned() for member in members]
        if sorted(len(o) for o in owned) == [2, 2, 2] and frozenset().union(*owned) == set(
            range(6)
        ):
            break
        assert time.monotonic() < deadline, owned
        await asyncio.sleep(0.1)
    # Budgets whose hash tags land on different nodes than the leases' tag.
    budgets = [
        RedisBudget(client, Limit(name=name, requests=50, per=5), replica="r0")
        for name in ("gcr", "hub", "quay", "ghcr")
    ]
    for budget in budgets:
        for _ in range(3):
            await budget.acquire()
        assert budget.granted == 3
    await budgets[0].pause(0.2)
    cache = SharedCache(client, INTERVAL)
    for n in range(20):
        await cache.put(f"digest:{n}", {"n": n})
    assert [await cache.get(f"digest:{n}") for n in range(20)] == [{"n": n} for n in range(20)]
    await cache.put_time("sha256:" + "a" * 64, 1.5)
    assert await cache.times(["sha256:" + "a" * 64]) == {"sha256:" + "a" * 64: 1.5}
    for member in members:
        await member.release()
    # The scripts ran where their keys live, and those keys are on more than one node.
    holding = nodes_holding(redis_cluster, f"{keys.ROOT}:*")
    assert len(holding) >= 2, holding
    budget_nodes = set().union(
        *(nodes_holding(redis_cluster, f"{keys.ROOT}:{{budget:{b.limit.name}}}:*") for b in budgets)
    )
    assert len(budget_nodes) >= 2, budget_nodes
    scripts_ran = [
        p
        for p in redis_cluster.ports
        if "cmdstat_evalsha" in redis_cluster.cli(p, "info", "commandstats")
    ]
    assert len(scripts_ran) >= 2, scripts_ran


async def test_the_cluster_setting_must_match_the_server(
    tmp_path: Path, redis_cluster: RedisClusterNodes, redis_server: RedisServer
) -> None:
    """Either mismatch is caught at start: one line, exit 1, before any MOVED reaches a log."""
    assert await verify(RedisConfig(url=redis_cluster.url, cluster=True), INTERVAL) is None
    async with open_world(tmp_path) as world:
        for url, cluster, says in (
            (redis_cluster.url, "false", "is a Redis Cluster node: set redis.cluster: true"),
            (redis_server.url, "true", "is not a Redis Cluster node: set redis.cluster: false"),
        ):
            config = world.write(world.config(f'redis: {{url: "{url}", cluster: {cluster}}}'))
            for command in ("once", "run"):
                out = await watcher([command, "--config", str(config)], daemon_seconds=20)
                assert_clean(out, 1)
                assert out.reasons[0].endswith(says), out.describe()


def assert_quiet_logs(tmp_path: Path, count: int) -> None:
    for n in range(count):
        text = (tmp_path / f"replica{n}" / "log.jsonl").read_text()
        for word in FORBIDDEN:
            assert word not in text, f"replica{n}: {word}\n{text[-3000:]}"
        entries = [json.loads(line) for line in text.splitlines()]
        errors = [e for e in entries if e["severity"] == "ERROR"]
        assert errors == [], errors
        trouble = [e for e in entries if e["event"] in TROUBLE]
        not_slow = [e for e in trouble if "Timeout" not in e.get("error", e.get("reason", ""))]
        assert not_slow == [], not_slow


async def test_replicas_on_a_cluster_hold_the_cap(
    tmp_path: Path, redis_cluster: RedisClusterNodes
) -> None:
    """40 images at a 1 s interval want 400 listings per 10 s window; the cap is 190."""
    async with emulator(40) as emu:
        config, _ = write_config(tmp_path, emu, redis_cluster, 40, shards=6)
        async with replicas(tmp_path, config, 3):
            await asyncio.sleep(18)
        log = list(emu.log)
    assert emu.max_in_window(WINDOW) <= CAP
    assert sum(e.status == 429 for e in log) == 0
    # The cap was at stake: demand (twice the cap) used most of it in one window
    # (not all on a loaded machine, where three daemons share two cores)...
    assert emu.max_in_window(WINDOW) >= 0.8 * CAP, emu.max_in_window(WINDOW)
    # ...and grants went on once the first window's requests left it, shared
    # through the cluster (a replica granting on its own would have logged it).
    start = log[0].monotonic
    assert [e for e in log if e.monotonic >= start + WINDOW], "no grant after the first window"
    assert_quiet_logs(tmp_path, 3)


async def test_replicas_on_a_cluster_take_over_a_killed_one(
    tmp_path: Path, redis_cluster: RedisClusterNodes
) -> None:
    delays = await kill_one_of_three(tmp_path, redis_cluster)
    assert max(delays) <= 2 * INTERVAL, sorted(delays)
    # The victim held shards before it died: there was something to take over.
    victim_log = (tmp_path / "replica1" / "log.jsonl").read_text()
    gained = [
        e["gained"]
        for e in map(json.loads, victim_log.splitlines())
        if e["event"] == "shard ownership changed"
    ]
    assert any(gained), victim_log[-3000:]
    assert_quiet_logs(tmp_path, 3)
