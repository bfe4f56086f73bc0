"""Registry look-ups: plan the fewest requests for an image, send them, build its facts.

:class:`Lookups` is one process's registry access: a client per registry
host, a budget per ``limits:`` entry (every request goes through a grant),
and a 429 turned into a pause of the whole budget. Identical look-ups in
flight share one request (:mod:`watcher.registry.coalesce`); the facts come
from Google's listing (:mod:`watcher.registry.google`) or, on a plain v2
registry, from HEADs, manifests and config blobs (:mod:`watcher.registry.v2`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import structlog

from watcher import planner
from watcher.budget.local import Budget, LocalBudget
from watcher.config import Config, Limit, RegistryConfig
from watcher.errors import (
    CredentialsError,
    ExtensionError,
    ImageNotFound,
    LookupFailed,
    NotFound,
    RegistryError,
    Throttled,
)
from watcher.gitops.discovery import FoundBlock
from watcher.metrics import Metrics
from watcher.references import ImageName
from watcher.registry.auth import AnyCredentials, TokenCache, credentials_for
from watcher.registry.cache import SharedCache
from watcher.registry.client import RegistryClient
from watcher.registry.coalesce import Coalescer
from watcher.registry.google import GoogleTokenSource, facts_from_pages
from watcher.registry.transport import RequestRecord
from watcher.registry.v2 import V2Facts
from watcher.strategies import ImageFacts
from watcher.tuning import THROTTLE_FIRST, THROTTLE_MAX

log = structlog.get_logger()


class Lookups:
    """One process's registry access: clients, budgets, coalescing and caches."""

    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        budgets: Mapping[str, Budget] | None = None,
        environ: Mapping[str, str] | None = None,
        cache: SharedCache | None = None,
    ) -> None:
        self._config = config
        self.cache = cache or SharedCache(None, config.interval)
        self._session = session
        self._metrics = metrics
        self._environ = environ
        self.budgets: dict[str, Budget] = dict(budgets or {})
        self._clients: dict[str, RegistryClient] = {}
        self._tokens = TokenCache()
        # One ADC token source per process (no I/O until a google registry asks).
        self.google_tokens = GoogleTokenSource()
        self._requests = Coalescer(self.cache, metrics)
        self._v2 = V2Facts(self._requests, self.cache, metrics)
        self._throttle: dict[str, float] = {}
        # Per budget: when the back-off this process asked for last ends (monotonic).
        self._throttled_until: dict[str, float] = {}
        for limit in config.limits.values():
            metrics.budget_cap.labels(limit.name).set(limit.cap)

    @property
    def times(self) -> dict[str, float]:
        """Creation times by digest this process knows (v2 registries; kept forever)."""
        return self._v2.times

    # --- budgets and clients -----------------------------------------------------

    def budget(self, limit: Limit) -> Budget:
        budget = self.budgets.get(limit.name)
        if budget is None:
            budget = self.budgets[limit.name] = LocalBudget(limit)
        return budget

    def client(self, image: ImageName) -> tuple[RegistryClient, RegistryConfig]:
        registry = self._config.registry_for(image.host)
        client = self._clients.get(image.api_host)
        if client is None:
            client = self._clients[image.api_host] = self._make_client(registry, image.api_host)
        return client, registry

    def _make_client(self, registry: RegistryConfig, host: str) -> RegistryClient:
        limit = self._config.limit_for(registry)
        budget = self.budget(limit)
        metrics = self._metrics

        async def acquire() -> None:
            waited = await budget.acquire()
            metrics.budget_granted.labels(limit.name).inc()
            metrics.budget_wait.labels(limit.name).observe(waited)
            used = getattr(budget, "used", None)
            if callable(used):
                metrics.budget_window_used.labels(limit.name).set(used())
            metrics.budget_degraded.labels(limit.name).set(
                1 if getattr(budget, "degraded", False) else 0
            )

        def on_request(record: RequestRecord) -> None:
            metrics.registry_requests.labels(
                record.registry, limit.name, record.kind, str(record.code)
            ).inc()
            if record.code == 429:
                metrics.registry_throttled.labels(record.registry).inc()

        credentials: AnyCredentials
        if registry.auth == "google":
            credentials = credentials_for(
                registry, host, self._environ, token_source=self.google_tokens
            )
        else:
            credentials = credentials_for(registry, host, self._environ)
        return RegistryClient(
            self._session, registry, host, credentials, acquire, on_request, tokens=self._tokens
        )

    async def _throttled(self, registry: RegistryConfig, exc: Throttled) -> None:
        """A 429 pauses the whole budget: Retry-After if given, else doubling back-off."""
        limit = self._config.limit_for(registry)
        now = time.monotonic()
        if exc.retry_after is not None:
            pause = exc.retry_after
        elif now < self._throttled_until.get(limit.name, 0.0):
            # A look-up sent before the current pause began, answered 429 now: the same
            # throttling, not a new one. Doubling here made one 429 burst over 16
            # look-ups in flight pause every replica for THROTTLE_MAX (300 s).
            return
        else:
            pause = min(THROTTLE_MAX, self._throttle.get(limit.name, THROTTLE_FIRST / 2) * 2)
            self._throttle[limit.name] = pause
        self._throttled_until[limit.name] = max(
            self._throttled_until.get(limit.name, 0.0), now + pause
        )
        await self.budget(limit).pause(pause)
        self._metrics.budget_paused.labels(limit.name).inc(pause)
        log.warning("registry throttled", registry=registry.host, budget=limit.name, pause=pause)

    # --- the look-up ---------------------------------------------------------------

    async def facts(
        self, image: ImageName, blocks: Sequence[FoundBlock], fresh_since: float | None = None
    ) -> tuple[ImageFacts, list[str]]:
        """Everything the blocks following ``image`` need to decide, in the fewest requests.

        Returns the facts and the reasons for anything left out (a tag not
        found, an entry that is not an image). Raises LookupFailed when the
        image as a whole cannot be looked up this cycle. ``fresh_since`` (Unix time): no
        shared-cache answer written before then is used (a registry event's check).
        """
        try:
            client, registry = self.client(image)
        except CredentialsError as exc:
            raise LookupFailed(f"credentials: {exc}") from None
        needs = [planner.need(block.raw, block.policy) for block in blocks]
        plan = planner.plan(registry.api, needs, {})
        notes: list[str] = []
        if not plan.list_tags and not plan.head:
            return ImageFacts(), notes
        try:
            result = await self._requests.introduce(
                client.host, lambda: self._send(image, needs, plan, fresh_since)
            )
        except Throttled as exc:
            await self._throttled(registry, exc)
            raise LookupFailed("throttled by the registry (429); budget paused") from None
        except NotFound as exc:
            raise ImageNotFound(f"not found: {exc}") from None
        except RegistryError as exc:
            raise LookupFailed(str(exc)) from None
        except CredentialsError as exc:
            raise LookupFailed(f"credentials: {exc}") from None
        self._throttle.pop(self._config.limit_for(registry).name, None)
        if registry.api == "google":
            try:
                return facts_from_pages(result)
            except ExtensionError as exc:
                raise LookupFailed(f"unreadable Google tags/list: {exc}") from None
        facts, notes = result
        return facts, notes

    async def _send(
        self,
        image: ImageName,
        needs: list[planner.Need],
        plan: planner.Plan,
        fresh_since: float | None = None,
    ) -> Any:
        """The requests of a plan: Google's pages, or (v2) the facts and notes."""
        client, registry = self.client(image)
        if registry.api == "google":
            return await self._requests.shared(
                (client.host, str(image), "tags/list"),
                lambda: client.tag_pages(image),
                since=fresh_since,
            )
        return await self._v2.facts(client, image, needs, plan, fresh_since)
