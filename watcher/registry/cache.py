"""Look-up results shared across replicas through Redis.

Digests by tag (and whole tag listings) live for a fraction of the interval:
long enough that a replica taking over a shard, or two replicas briefly
sharing one during a hand-over, ask the registry once, short enough that the
owner's next sweep asks afresh. Creation times by digest live forever: a
digest names immutable content.

The cache is an optimisation, never a dependency: every Redis error reads as
a miss, and is logged at most once a minute.
"""

from __future__ import annotations

import json
import time
from typing import Any

import structlog
from redis.exceptions import RedisError

from watcher.cluster.connection import RedisClient
from watcher.keys import CACHE as PREFIX
from watcher.keys import CACHE_TIMES as TIMES
from watcher.logs import Occasionally
from watcher.tuning import FRESH_SHARE

log = structlog.get_logger()


class SharedCache:
    """Redis-backed; ``client`` None makes every call a miss (no Redis configured)."""

    def __init__(self, client: RedisClient | None, interval: float) -> None:
        self._client = client
        self.ttl_ms = max(1, int(interval * FRESH_SHARE * 1000))
        self._error_log = Occasionally()

    def _failed(self, exc: Exception) -> None:
        if self._error_log.due():
            log.warning("shared cache unavailable; asking the registry", reason=str(exc))

    async def get(self, key: str, *, since: float | None = None) -> Any:
        """The cached answer, or None; with ``since`` (Unix time), None as well when it
        was written before then (its age is the ttl it was set with less what is left)."""
        if self._client is None:
            return None
        try:
            if since is None:
                raw = await self._client.get(PREFIX + key)
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.get(PREFIX + key)
                    pipe.pttl(PREFIX + key)
                    raw, left = await pipe.execute()
                written = time.time() - (self.ttl_ms - max(0, int(left))) / 1000
                if raw is not None and written < since:
                    return None
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    async def put(self, key: str, value: Any) -> None:
        if self._client is None:
            return
        try:
            await self._client.set(PREFIX + key, json.dumps(value), px=self.ttl_ms)
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def times(self, digests: list[str]) -> dict[str, float]:
        """Known creation times of these digests."""
        if self._client is None or not digests:
            return {}
        try:
            values = await self._client.hmget(TIMES, digests)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return {}
        found: dict[str, float] = {}
        for digest, value in zip(digests, values, strict=True):
            if value is not None:
                try:
                    found[digest] = float(value)
                except ValueError:
                    continue
        return found

    async def put_time(self, digest: str, when: float) -> None:
        if self._client is None:
            return
        try:
            await self._client.hset(TIMES, digest, repr(when))
        except (RedisError, OSError) as exc:
            self._failed(exc)
