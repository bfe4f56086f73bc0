"""Registry look-ups: plan the fewest requests for an image, send them, build its facts.

Every request goes through a budget grant; identical look-ups in flight at
once share one request; digests' creation times are cached forever (a
digest's content never changes).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

import aiohttp
import structlog

from watcher import planner
from watcher.budget.local import Budget, LocalBudget
from watcher.config import Config, Limit, RegistryConfig
from watcher.errors import (
    BadResponse,
    CredentialsError,
    ExtensionError,
    LookupFailed,
    NotFound,
    RegistryError,
    Throttled,
)
from watcher.gitops.discovery import FoundBlock
from watcher.metrics import Metrics
from watcher.references import ImageName, is_digest
from watcher.registry.auth import AnyCredentials, TokenCache, credentials_for
from watcher.registry.cache import SharedCache
from watcher.registry.client import RegistryClient, RequestRecord
from watcher.registry.google import GoogleTokenSource, facts_from_pages
from watcher.strategies import ImageFacts
from watcher.tuning import THROTTLE_FIRST, THROTTLE_MAX

log = structlog.get_logger()
T = TypeVar("T")

_FRACTION = re.compile(r"(\.\d{6})\d+")


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _one_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to act on when several requests of one image failed together.

    A TaskGroup wraps its tasks' errors in a group, which no ``except
    RegistryError`` catches: left as it is, one image's 404 would end the
    whole cycle. A 429 comes first, so the budget is paused.
    """
    leaves = _leaves(group)
    for leaf in leaves:
        if isinstance(leaf, Throttled):
            return leaf
    for leaf in leaves:
        if isinstance(leaf, RegistryError | CredentialsError):
            return leaf
    return group


def parse_created(config_blob: bytes) -> float | None:
    """An image config's ``created`` as epoch seconds (None when absent or unreadable)."""
    try:
        created = json.loads(config_blob).get("created")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    if not isinstance(created, str):
        return None
    # Go writes nanoseconds; Python reads at most microseconds.
    text = _FRACTION.sub(r"\1", created.strip()).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


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
        self._inflight: dict[tuple[str, str, str], asyncio.Future[Any]] = {}
        self._throttle: dict[str, float] = {}
        # Per budget: when the back-off this process asked for last ends (monotonic).
        self._throttled_until: dict[str, float] = {}
        # Creation time by digest: immutable content, so cached forever.
        self.times: dict[str, float] = {}
        # What each v2 newest candidate tag resolved to last time: a tag that still
        # points at a digest whose time is known costs a HEAD, not a GET.
        self.last_digests: dict[ImageName, dict[str, str]] = {}
        # Per registry host, set once the first look-up there has been answered.
        self._introduced: dict[str, asyncio.Future[None]] = {}
        for limit in config.limits.values():
            metrics.budget_cap.labels(limit.name).set(limit.cap)

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

    # --- coalescing ----------------------------------------------------------------

    async def _once(self, key: tuple[str, str, str], fetch: Callable[[], Awaitable[T]]) -> T:
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

    # --- the look-up ---------------------------------------------------------------

    async def facts(
        self, image: ImageName, blocks: Sequence[FoundBlock]
    ) -> tuple[ImageFacts, list[str]]:
        """Everything the blocks following ``image`` need to decide, in the fewest requests.

        Returns the facts and the reasons for anything left out (a tag not
        found, an entry that is not an image). Raises LookupFailed when the
        image as a whole cannot be looked up this cycle.
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
            result = await self._introduce(client.host, lambda: self._send(image, needs, plan))
        except Throttled as exc:
            await self._throttled(registry, exc)
            raise LookupFailed("throttled by the registry (429); budget paused") from None
        except NotFound as exc:
            raise LookupFailed(f"not found: {exc}") from None
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

    async def _shared(self, key: tuple[str, str, str], fetch: Callable[[], Awaitable[T]]) -> T:
        """A look-up answered from the replicas' shared cache when fresh there, else sent once."""
        name = "/".join(key)
        cached = await self.cache.get(name)
        if cached is not None:
            self._metrics.lookups.labels("cached").inc()
            return cast(T, cached)
        value = await self._once(key, fetch)
        await self.cache.put(name, value)
        return value

    async def _introduce(self, host: str, lookup: Callable[[], Awaitable[T]]) -> T:
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

    async def _send(self, image: ImageName, needs: list[planner.Need], plan: planner.Plan) -> Any:
        """The requests of a plan: Google's pages, or (v2) the facts and notes."""
        client, registry = self.client(image)
        if registry.api == "google":
            return await self._shared(
                (client.host, str(image), "tags/list"), lambda: client.tag_pages(image)
            )
        notes: list[str] = []
        try:
            facts = await self._facts_v2(client, image, needs, plan, notes)
        except BaseExceptionGroup as group:
            raise _one_error(group) from None
        return facts, notes

    async def _facts_v2(
        self,
        client: RegistryClient,
        image: ImageName,
        needs: list[planner.Need],
        plan: planner.Plan,
        notes: list[str],
    ) -> ImageFacts:
        digests: dict[str, str] = {}
        # Manifests fetched this look-up, by digest: a newest candidate is read
        # with one GET (digest and config reference at once) instead of HEAD+GET.
        bodies: dict[str, bytes] = {}

        last = self.last_digests.get(image, {})

        async def fetch(tag: str) -> None:
            if last.get(tag) in self.times:
                # Seen before with a known time: a HEAD tells whether it moved.
                await head(tag)
                return
            try:
                body, _, digest = await self._once(
                    (client.host, str(image), f"manifest:{tag}"),
                    lambda: client.manifest(image, tag),
                )
            except (NotFound, BadResponse) as exc:
                notes.append(f"tag {tag}: {exc}")
                return
            digests[tag] = digest
            bodies[digest] = body

        async def head(tag: str) -> None:
            try:
                digests[tag] = await self._shared(
                    (client.host, str(image), f"tag:{tag}"), lambda: client.digest(image, tag)
                )
            except (NotFound, BadResponse) as exc:
                notes.append(f"tag {tag}: {exc}")

        async def created(digest: str) -> None:
            try:
                when = await self._config_time(client, image, digest, bodies)
            except (NotFound, BadResponse) as exc:
                notes.append(f"digest {digest}: {exc}")
                return
            if when is None:
                notes.append(f"digest {digest}: config has no readable 'created'")
            else:
                self.times[digest] = when
                await self.cache.put_time(digest, when)

        listed: list[str] | None = None

        async def listing() -> None:
            nonlocal listed
            listed = await self._shared(
                (client.host, str(image), "tags/list"), lambda: client.tags(image)
            )

        async with asyncio.TaskGroup() as group:
            if plan.list_tags:
                group.create_task(listing())
            for tag in plan.head:
                group.create_task(head(tag))
        if plan.after_listing and listed is not None:
            # Times another replica already read count as known here too.
            unknown = [d for d in set(digests.values()) | set(last.values()) if d not in self.times]
            self.times.update(await self.cache.times(unknown))
            follow = planner.plan_after_listing("v2", needs, listed, digests, self.times)
            async with asyncio.TaskGroup() as group:
                for tag in follow.head:
                    group.create_task(fetch(tag))
                for digest in follow.config_blobs:
                    group.create_task(created(digest))
            async with asyncio.TaskGroup() as group:
                for digest in follow.config_blobs_after(digests, self.times):
                    group.create_task(created(digest))
        if plan.after_listing:
            self.last_digests[image] = dict(digests)
        times = {d: self.times[d] for d in digests.values() if d in self.times}
        return ImageFacts(
            tags=digests, listed=frozenset(listed) if listed is not None else None, times=times
        )

    async def _config_time(
        self, client: RegistryClient, image: ImageName, digest: str, bodies: dict[str, bytes]
    ) -> float | None:
        """Creation time of an image (for an index: its first child's), read once per digest."""
        if digest in self.times:
            self._metrics.lookups.labels("cached").inc()
            return self.times[digest]
        if digest not in bodies:
            bodies[digest] = (
                await self._once(
                    (client.host, str(image), f"manifest:{digest}"),
                    lambda: client.manifest(image, digest),
                )
            )[0]
        # The manifest is the registry's word: a child or config entry of the wrong
        # shape, or without a valid digest, is a bad answer for this digest (noted and
        # skipped), never an AttributeError or a ReferenceError that ends the shard.
        document = json.loads(bodies[digest])
        if not isinstance(document, dict):
            raise BadResponse(f"{image}@{digest}: manifest is not a JSON object")
        if "manifests" in document:
            # An index has no config; take its first child's (all are one build).
            children = document.get("manifests") or []
            if not isinstance(children, list) or not children:
                return None
            child = children[0].get("digest") if isinstance(children[0], dict) else None
            if not isinstance(child, str) or not is_digest(child) or child == digest:
                raise BadResponse(f"{image}@{digest}: index child without a valid digest")
            return await self._config_time(client, image, child, bodies)
        config = document.get("config")
        config_digest = config.get("digest") if isinstance(config, dict) else None
        if not isinstance(config_digest, str) or not is_digest(config_digest):
            raise BadResponse(f"{image}@{digest}: manifest without a valid config digest")
        blob = await self._once(
            (client.host, str(image), f"blob:{config_digest}"),
            lambda: client.blob(image, config_digest),
        )
        return parse_created(blob)
