"""Redis as people deploy it: a password, an ACL user, TLS with a private CA.

Real redis-servers started for each test (``requirepass``, ``--user`` ACL rules,
``--tls-port`` with a CA and server certificate made on the spot), real
``python -m watcher`` processes against the Google-registry emulator and a git
remote. What must hold: the watcher's budget, leases and cache live in that
Redis, and the password is never printed: not in logs, metrics or errors.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.cli_support import SECRET, World, assert_clean, open_world, watcher
from tests.conftest import RedisServer, free_port
from tests.test_replicas import spawn
from watcher import keys
from watcher.budget.shared import RedisBudget
from watcher.cluster.connection import connect, verify
from watcher.cluster.membership import Membership
from watcher.config import Limit, RedisConfig
from watcher.errors import RedisUnusable
from watcher.registry.cache import SharedCache
from watcher_testing.services import make_tls

pytestmark = pytest.mark.integration

BUDGET_LOG = keys.budget("default")[0]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with open_world(tmp_path) as opened:
        yield opened


def redis_block(url: str, *, ca_file: Path | None = None) -> str:
    ca = f', ca_file: "{ca_file}"' if ca_file else ""
    return f'redis: {{url: "{url}"{ca}}}'


async def stored(client: aioredis.Redis, pattern: str) -> list[str]:
    return sorted([k.decode() async for k in client.scan_iter(match=pattern)])


async def assert_once_works_through(
    world: World, admin: aioredis.Redis, url: str, ca_file: Path | None = None
) -> None:
    """``watcher once`` with ``url`` commits, and its budget grants are in that Redis."""
    config = world.write(world.config(redis_block(url, ca_file=ca_file)))
    out = await watcher(["once", "--config", str(config)])
    assert_clean(out, 0)
    assert "committed" in out.stdout, out.describe()
    assert "redis unreachable" not in out.stderr, out.describe()
    assert await admin.zcard(BUDGET_LOG) >= 1


async def test_requirepass(world: World) -> None:
    server = RedisServer(world.dir / "redis", password=SECRET)
    server.start()
    admin = aioredis.Redis(port=server.port, password=SECRET)
    try:
        await assert_once_works_through(world, admin, server.url)
    finally:
        await admin.aclose()
        server.stop()


async def test_unix_socket(world: World) -> None:
    socket_path = world.dir / "redis.sock"
    server = RedisServer(world.dir / "redis", args=("--unixsocket", str(socket_path)))
    server.start()
    admin = aioredis.Redis(unix_socket_path=str(socket_path))
    try:
        await assert_once_works_through(world, admin, f"unix://{socket_path}")
    finally:
        await admin.aclose()
        server.stop()


async def test_acl_user_runs_the_daemon_and_is_never_printed(world: World) -> None:
    """An ACL user limited to the watcher's keys and without admin commands, the
    default user off; Redis stopped for a while mid-run so errors get logged too."""
    user_secret = SECRET + "-acl"
    server = RedisServer(
        world.dir / "redis",
        users=(
            "default off",
            f"watcher on >{user_secret} ~iw:* +@all -@dangerous",
            f"admin on >{SECRET}-admin ~* &* +@all",
        ),
    )
    server.start()
    admin = aioredis.Redis(port=server.port, username="admin", password=f"{SECRET}-admin")
    port = free_port()
    url = f"redis://watcher:{user_secret}@127.0.0.1:{server.port}/0"
    config = world.write(world.config(redis_block(url), port=port))
    proc = spawn(world.dir / "daemon", config)
    try:
        await asyncio.sleep(4)
        leases = await stored(admin, f"{keys.SHARDS}:lease:*")
        assert len(leases) == 4, leases  # shards: 4, one replica holds them all
        assert await admin.zcard(BUDGET_LOG) >= 1
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            metrics = await response.text()
        server.stop()
        await asyncio.sleep(3)
        server.start()
        await asyncio.sleep(2)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 15)
        await admin.aclose()
        server.stop()
    text = (world.dir / "daemon" / "log.jsonl").read_text()
    assert code == 0, text[-3000:]
    assert "image_watcher_" in metrics
    assert "redis unreachable" in text  # the outage was logged...
    for secret in (user_secret, SECRET):
        assert secret not in text, "password in the log"  # ...without the password
        assert secret not in metrics, "password in the metrics"
    assert "Traceback" not in text


async def test_acl_user_without_the_watchers_keys(world: World) -> None:
    server = RedisServer(
        world.dir / "redis", users=("default off", f"other on >{SECRET} ~app:* +@all")
    )
    server.start()
    try:
        url = f"redis://other:{SECRET}@127.0.0.1:{server.port}/0"
        out = await watcher(["once", "--config", str(world.write(world.config(redis_block(url))))])
        assert_clean(out, 1)
        assert "lacks a permission the watcher needs" in out.reasons[0], out.describe()
    finally:
        server.stop()


async def test_tls_with_a_private_ca(world: World) -> None:
    tls = make_tls(world.dir / "tls")
    server = RedisServer(world.dir / "redis", password=SECRET, tls=tls)
    server.start()
    try:
        assert server.url.startswith("rediss://")
        client = connect(server.url, 1.0, ca_file=str(tls.ca))
        try:
            assert isinstance(client, aioredis.Redis)
            await assert_once_works_through(world, client, server.url, tls.ca)
            # Leases, the budget and the cache, each over this TLS connection.
            membership = Membership(client, 4, 1.0, "r1", ttl=3.0)
            await membership.step()
            assert membership.connected
            budget = RedisBudget(client, Limit(name="tls", requests=10, per=5), replica="r1")
            await budget.acquire()
            assert budget.granted == 1
            cache = SharedCache(client, 1.0)
            await cache.put("k", {"v": 1})
            assert await cache.get("k") == {"v": 1}
        finally:
            await client.aclose()
    finally:
        server.stop()


async def test_tls_verification_errors_are_one_line(world: World) -> None:
    """The start-up check tells a Redis that is down from one that is misconfigured."""
    tls = make_tls(world.dir / "tls")
    server = RedisServer(world.dir / "redis", tls=tls)
    server.start()
    try:
        good = RedisConfig(url=server.url, ca_file=str(tls.ca))
        assert await verify(good, 1.0) is None
        wrong = RedisConfig(url=server.url, ca_file=str(make_tls(world.dir / "other").ca))
        try:
            await verify(wrong, 1.0)
        except RedisUnusable as exc:
            message = str(exc)
        else:
            raise AssertionError("a certificate from another CA was accepted")
        assert message.startswith(f"redis at 127.0.0.1:{server.port}: its TLS certificate")
        assert "redis.ca_file" in message and "\n" not in message
        # The system's CAs (no ca_file) do not know the test CA either.
        try:
            await verify(RedisConfig(url=server.url), 1.0)
        except RedisUnusable as exc:
            assert "certificate is not trusted" in str(exc)
        else:
            raise AssertionError("an unknown CA was accepted")
    finally:
        server.stop()
    # A certificate from the right CA, for another name.
    elsewhere = make_tls(world.dir / "named", hosts=("redis.internal.example",))
    server = RedisServer(world.dir / "redis-named", tls=elsewhere)
    server.start()
    try:
        with pytest.raises(RedisUnusable, match="its TLS certificate is for another name"):
            await verify(RedisConfig(url=server.url, ca_file=str(elsewhere.ca)), 1.0)
    finally:
        server.stop()
    # Down: not an error, a reason to carry on.
    reason = await verify(RedisConfig(url=f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"), 1.0)
    assert reason is not None and SECRET not in reason
