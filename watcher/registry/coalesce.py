"""Asking a question once: identical look-ups share a request, fresh answers come cached.

Three ways the process avoids sending a request it does not need, each
counted in ``lookups_total{result}`` (``sent``, ``coalesced``, ``cached``):

- one request per (host, image, reference) in flight; later callers share
  its answer (:meth:`Coalescer.once`);
- an answer another replica (or this one) got within a fraction of the
  interval comes from the replicas' shared cache (:meth:`Coalescer.shared`);
- the first look-up on a registry host goes alone, so only it meets the
  registry's 401 challenge (:meth:`Coalescer.introduce`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from watcher.metrics import Metrics
from watcher.registry.cache import SharedCache

T = TypeVar("T")

Key = tuple[str, str, str]
"""(registry host, image, what is asked: ``tags/list``, ``tag:<t>``, ``manifest:<ref>``...)."""


class Coalescer:
    """The requests in flight and the hosts introduced, for one process."""

    def __init__(self, cache: SharedCache, metrics: Metrics) -> None:
        self._cache = cache
        self._metrics = metrics
        self._inflight: dict[Key, asyncio.Future[Any]] = {}
        # Per registry host, set once the first look-up there has been answered.
        self._introduced: dict[str, asyncio.Future[None]] = {}

    async def once(self, key: Key, fetch: Callable[[], Awaitable[T]]) -> T:
        """One request per (host, image, reference) in flight; later callers share its answer."""
        pending = self._inflight.get(key)
        if pending is not None:
            self._metrics.lookups.labels("coalesced").inc()
            result: T = await asyncio.shield(pending)
            return result
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await fetch()
        except BaseException as exc:
            future.set_exception(exc)
            # Nobody may be waiting: mark the exception retrieved.
            future.exception()
            raise
        else:
            future.set_result(value)
            self._metrics.lookups.labels("sent").inc()
            return value
        finally:
            del self._inflight[key]

    async def shared(
        self, key: Key, fetch: Callable[[], Awaitable[T]], *, since: float | None = None
    ) -> T:
        """A look-up answered from the replicas' shared cache when fresh there, else sent once.

        ``since`` (Unix time): a cached answer written before then is not used (a registry
        event published then says the image changed after it).
        """
        name = "/".join(key)
        cached = await self._cache.get(name, since=since)
        if cached is not None:
            self._metrics.lookups.labels("cached").inc()
            return cast(T, cached)
        value = await self.once(key, fetch)
        await self._cache.put(name, value)
        return value

    async def introduce(self, host: str, lookup: Callable[[], Awaitable[T]]) -> T:
        """Let the first look-up on a registry host go alone; the rest wait for its answer.

        Until a registry has answered once, nobody knows whether it challenges:
        look-ups sent in parallel would each collect a 401 (and a retry) where
        one suffices. Once the first is answered, its challenge is remembered
        and the others send their token up front. Costs no request of its own.
        """
        gate = self._introduced.get(host)
        if gate is not None:
            if not gate.done():
                await asyncio.shield(gate)
            return await lookup()
        gate = self._introduced[host] = asyncio.get_running_loop().create_future()
        try:
            return await lookup()
        finally:
            gate.set_result(None)
