"""Which replica owns which shard: heartbeats and fenced per-shard leases in Redis.

Replicas heartbeat and hold per-shard leases (fenced, renewed every
interval/2, ttl about 1.5 intervals), each taking about shards/replicas; a
dead replica's shards are taken over within two intervals (docs/architecture.md,
"cluster/: shards, leases and fences"). Without Redis one process owns every shard
(:class:`LocalMembership`).

Keys (all under one hash tag, so the scripts also run on Redis Cluster /
Memorystore, where every key a script touches must live in one slot)::

    iw:{shards}:replicas     sorted set: replica id -> heartbeat expiry (ms, Redis TIME)
    iw:{shards}:epoch        Redis TIME (ms) when this Redis first saw a replica
    iw:{shards}:lease:<n>    "<replica>:<fence>", PX ttl
    iw:{shards}:fence:<n>    the last fence handed out for shard n

Every change of ownership happens in one Lua script per tick (:data:`TICK`),
atomically, on Redis's clock: heartbeat, count the live replicas, renew what
this replica holds, release its excess, take free shards up to its target.
A script never touches a lease whose owner is someone else: a live lease is
never stolen, only taken once it has expired or been released.

Targets: the live replicas sorted by id; the one at rank r gets
``shards // n + (1 if r < shards % n else 0)``. The targets add up to exactly
``shards``, so a stable set of replicas ends as a partition whose sizes differ
by at most one. Excess is released highest-numbered first.

Fences: taking a shard INCRs its fence counter; the writer can refuse work
whose fence is no longer the lease's. A counter that does not exist (first
use, or a Redis that lost its data) starts at Redis TIME in milliseconds, or
the highest fence the caller has seen if that is higher, so fences keep
increasing across a Redis restart.

Redis restarting empty: every lease is gone at once. A replica that still
holds a shard (its own lease has not lapsed by its own clock) re-creates it
with its old fence ("reclaim") as long as nobody took the shard since
(the counter is missing or still holds that fence). To let every holder
reclaim before anyone grabs, a Redis without an epoch key takes no free shard
for a grace of one renew period (interval/2) after the first tick creates it.
So a restart of Redis moves no shard and creates no second owner; the price
is that a brand-new installation waits interval/2 before its first ownership.

Redis unreachable: a replica keeps checking the shards it holds for as long
as Redis stays out of reach, and keeps retrying. When every replica has lost
Redis (the usual outage) nobody can take a shard, so nothing is owned twice
and no image goes unchecked. When only this replica is cut off, the others
take its shards once the leases lapse, and both check them until it reaches
Redis again and learns it lost them: duplicate look-ups, never more requests
than the quota (each cut-off replica's budget falls back to cap / replicas)
and never a lost commit (writes are compare-and-swap). Dropping the shards
instead would stop all work for the whole outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog
from redis.exceptions import RedisError

from watcher import keys
from watcher.cluster.connection import RedisClient, lua_script
from watcher.logs import Occasionally
from watcher.tuning import EXPIRY_SLACK, RENEW_INTERVALS, TTL_INTERVALS

log = structlog.get_logger()


TICK = lua_script(__package__, "tick.lua")
RELEASE = lua_script(__package__, "release.lua")


def default_replica_id() -> str:
    """Host name, pid and a random suffix: unique even when a pod restarts with the same pid."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class ShardMembership(Protocol):
    """What a worker needs to know about the shards this process runs."""

    changed: asyncio.Event

    def owned(self) -> frozenset[int]: ...

    def fence(self, shard: int) -> int | None: ...

    def replicas(self) -> int: ...

    async def run(self, stop: asyncio.Event) -> None: ...


OnChange = Callable[[Mapping[int, int]], None]


class LocalMembership:
    """No Redis: this process is the only replica and owns every shard, fence 0."""

    def __init__(self, shards: int, on_change: OnChange | None = None) -> None:
        if shards < 1:
            raise ValueError(f"shards must be at least 1, not {shards}")
        self.shards = shards
        self.changed = asyncio.Event()
        self.changed.set()
        # Owns every shard from the start: nothing to wait for (cf. Membership.ready).
        self.ready = asyncio.Event()
        self.ready.set()
        self._on_change = on_change
        self._all = frozenset(range(shards))

    def owned(self) -> frozenset[int]:
        return self._all

    def leases(self) -> dict[int, int]:
        return dict.fromkeys(self._all, 0)

    def fence(self, shard: int) -> int | None:
        return 0 if shard in self._all else None

    def replicas(self) -> int:
        return 1

    async def run(self, stop: asyncio.Event) -> None:
        if self._on_change is not None:
            self._on_change(self.leases())
        await stop.wait()


class Membership:
    """This replica's share of the shards, kept in Redis.

    ``run(stop)`` ticks until ``stop`` is set, then releases every lease and
    leaves the live set, so the others take over at once. Cancelling the task
    instead releases nothing (as a crash would): the leases run out after
    their ttl and are taken over then.

    ``changed`` is set whenever the owned shards or their fences change (the
    worker clears it, then reads :meth:`owned`/:meth:`leases`); ``on_change``
    is called with the new shard -> fence map at the same moments.
    """

    def __init__(
        self,
        client: RedisClient,
        shards: int,
        interval: float,
        replica_id: str | None = None,
        *,
        prefix: str = keys.SHARDS,
        ttl: float | None = None,
        on_change: OnChange | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if shards < 1:
            raise ValueError(f"shards must be at least 1, not {shards}")
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval}")
        self.client = client
        self.shards = shards
        self.interval = interval
        self.replica_id = replica_id or default_replica_id()
        self.prefix = prefix
        self.ttl = ttl if ttl is not None else interval * TTL_INTERVALS
        self.renew_every = interval * RENEW_INTERVALS
        if self.ttl <= self.renew_every:
            raise ValueError("ttl must be longer than the renewal period (interval/2)")
        # Every holder reclaims within one renewal period after Redis comes back.
        self.grace = self.renew_every
        # Retry faster than renewals, so a holder reclaims within the grace.
        self.retry_every = min(self.renew_every / 2, 2.0)
        self.changed = asyncio.Event()
        self.ready = asyncio.Event()  # set after the first successful tick
        self.connected = False
        self.target = 0
        self._on_change = on_change
        self._clock = clock
        self._leases: dict[int, int] = {}
        self._deadline = 0.0  # by our clock, when the leases we hold lapse
        self._replicas = 1
        self._floor = 0  # the highest fence seen: seeds counters Redis has lost
        self._error_log = Occasionally(clock=clock)
        self._tick = client.register_script(TICK)
        self._release = client.register_script(RELEASE)

    # --- what the worker reads ----------------------------------------------------

    def owned(self) -> frozenset[int]:
        return frozenset(self._leases)

    def leases(self) -> dict[int, int]:
        """Shard -> fence of every shard held."""
        return dict(self._leases)

    def fence(self, shard: int) -> int | None:
        return self._leases.get(shard)

    def replicas(self) -> int:
        """Live replicas at the last successful tick (at least 1)."""
        return self._replicas

    @property
    def key_replicas(self) -> str:
        return f"{self.prefix}:replicas"

    @property
    def key_epoch(self) -> str:
        return f"{self.prefix}:epoch"

    # --- the loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            wake = await self.step()
            delay = max(0.0, wake - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
        await self.release()

    async def step(self) -> float:
        """One tick; returns when (by ``clock``) the next one is due."""
        sent = self._clock()
        try:
            async with asyncio.timeout(self._call_timeout(sent)):
                reply = await self._tick(
                    keys=[self.key_replicas, self.key_epoch], args=self._tick_args()
                )
        except (RedisError, OSError, TimeoutError) as exc:
            self._unreachable(exc)
            return sent + self.retry_every
        return self._apply(sent, reply)

    async def release(self) -> None:
        """Give back every lease and leave the live set (a clean shutdown)."""
        self._set({})
        try:
            async with asyncio.timeout(self.renew_every):
                await self._release(
                    keys=[self.key_replicas],
                    # Every shard, not just those we know of: a tick whose reply
                    # we never got may have taken some.
                    args=[self.replica_id, self.prefix, self.shards],
                )
        except (RedisError, OSError, TimeoutError) as exc:
            # The leases lapse on their own within a ttl.
            log.warning("could not release shard leases", error=str(exc) or type(exc).__name__)

    # --- internals ------------------------------------------------------------------------

    def _tick_args(self) -> list[Any]:
        args: list[Any] = [
            self.replica_id,
            max(1, round(self.ttl * 1000)),
            self.shards,
            round(self.grace * 1000),
            self.prefix,
            self._floor,
        ]
        for shard, fence in sorted(self._leases.items()):
            args += [shard, fence]
        return args

    def _call_timeout(self, now: float) -> float:
        # Never wait past the moment our leases lapse: we must drop them then.
        if self._leases and self._deadline > now:
            return max(0.05, min(self.renew_every, self._deadline - now))
        return self.renew_every

    def _apply(self, sent: float, reply: Any) -> float:
        live, target, settle_ms, next_expiry_ms, flat = reply
        leases = {int(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
        if not self.connected and self._error_log.said:
            log.info("redis reachable again", replica=self.replica_id)
        self.connected = True
        self._replicas = max(1, int(live))
        self.target = int(target)
        # The lease was (re)set after we sent the call, so it lapses no earlier.
        self._deadline = sent + self.ttl
        if leases:
            self._floor = max(self._floor, *leases.values())
        self._set(leases)
        self.ready.set()
        now = self._clock()
        wake = sent + self.renew_every
        if int(next_expiry_ms) >= 0:
            # A lease that runs out before our next renewal belongs to a
            # replica that stopped renewing: look again just after it expires.
            wake = min(wake, now + int(next_expiry_ms) / 1000 + EXPIRY_SLACK)
        if int(settle_ms) > 0:
            wake = min(wake, now + int(settle_ms) / 1000 + EXPIRY_SLACK)
        return wake

    def _unreachable(self, exc: BaseException) -> None:
        self.connected = False
        if self._error_log.due():
            log.warning(
                "redis unreachable; still checking the shards held",
                replica=self.replica_id,
                error=str(exc) or type(exc).__name__,
                shards=sorted(self._leases),
            )

    def _set(self, leases: dict[int, int]) -> None:
        if leases == self._leases:
            return
        gained = sorted(set(leases) - set(self._leases))
        lost = sorted(set(self._leases) - set(leases))
        refenced = sorted(s for s in leases if s in self._leases and leases[s] != self._leases[s])
        self._leases = leases
        log.info(
            "shard ownership changed",
            replica=self.replica_id,
            owned=sorted(leases),
            gained=gained,
            lost=lost,
            refenced=refenced,
        )
        self.changed.set()
        if self._on_change is not None:
            self._on_change(dict(leases))
