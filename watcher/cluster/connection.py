"""The Redis client every shared part uses (leases, budgets, look-up cache), and its scripts.

One client per process, with no hidden retries and timeouts shorter than a
lease renewal: the membership loop and the budget retry on their own
schedules and must get control back before a lease lapses, so the client's
own retries and back-off (by default several seconds) would only be in the way.
"""

from __future__ import annotations

from importlib import resources

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from watcher.tuning import RENEW_INTERVALS


def connect(url: str, interval: float) -> aioredis.Redis:
    """A client for ``url`` whose every call fails fast instead of retrying."""
    timeout = max(0.1, min(5.0, interval * RENEW_INTERVALS / 2))
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    return client


def lua_script(package: str | None, name: str) -> str:
    """A Lua script shipped beside the module that runs it (read once, at import)."""
    if package is None:
        raise ValueError(f"no package to load {name} from")
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")
