"""An image's facts on a plain v2 registry: tag HEADs, the listing, manifests, config blobs.

A plain registry answers each question with its own request, in the two steps
of :mod:`watcher.planner`: the listing and the HEADs of followed tags at once,
then (``newest`` only) the candidates' digests and creation times. A creation
time is read from the image config blob, once ever per digest (a digest names
immutable content); a candidate tag that still points at a digest whose time
is known costs a HEAD, not a GET. Whatever one tag or digest fails with (not
found, a bad answer) becomes a note, not a failure of the whole image.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from watcher import planner
from watcher.errors import BadResponse, CredentialsError, NotFound, RegistryError, Throttled
from watcher.metrics import Metrics
from watcher.references import ImageName
from watcher.registry.cache import SharedCache
from watcher.registry.client import RegistryClient
from watcher.registry.coalesce import Coalescer
from watcher.registry.manifests import config_reference, parse_created
from watcher.strategies import ImageFacts


class V2Facts:
    """What this process learnt of v2 images: creation times, and last look-ups' digests."""

    def __init__(self, requests: Coalescer, cache: SharedCache, metrics: Metrics) -> None:
        self.requests = requests
        self.cache = cache
        self.metrics = metrics
        # Creation time by digest: immutable content, so cached forever.
        self.times: dict[str, float] = {}
        # What each v2 newest candidate tag resolved to last time: a tag that still
        # points at a digest whose time is known costs a HEAD, not a GET.
        self.last_digests: dict[ImageName, dict[str, str]] = {}

    async def facts(
        self,
        client: RegistryClient,
        image: ImageName,
        needs: Sequence[planner.Need],
        plan: planner.Plan,
        fresh_since: float | None = None,
    ) -> tuple[ImageFacts, list[str]]:
        """The facts ``plan`` asks for, and the notes on what was left out.

        ``fresh_since``: shared-cache answers written before this Unix time are not used.
        """
        look = _Lookup(self, client, image, fresh_since)
        try:
            facts = await look.run(needs, plan)
        except BaseExceptionGroup as group:
            raise _one_error(group) from None
        return facts, look.notes


class _Lookup:
    """One image's v2 look-up: what it has learnt so far and what it left out."""

    def __init__(
        self,
        owner: V2Facts,
        client: RegistryClient,
        image: ImageName,
        fresh_since: float | None = None,
    ) -> None:
        self._owner = owner
        self._since = fresh_since
        self._requests = owner.requests
        self._client = client
        self._image = image
        self._last = owner.last_digests.get(image, {})
        self.digests: dict[str, str] = {}
        # Manifests fetched this look-up, by digest: a newest candidate is read
        # with one GET (digest and config reference at once) instead of HEAD+GET.
        self.bodies: dict[str, bytes] = {}
        self.listed: list[str] | None = None
        self.notes: list[str] = []

    def _key(self, what: str) -> tuple[str, str, str]:
        return (self._client.host, str(self._image), what)

    async def run(self, needs: Sequence[planner.Need], plan: planner.Plan) -> ImageFacts:
        owner = self._owner
        async with asyncio.TaskGroup() as group:
            if plan.list_tags:
                group.create_task(self._listing())
            for tag in plan.head:
                group.create_task(self._head(tag))
        if plan.after_listing and self.listed is not None:
            await self._follow_up(needs, self.listed)
        if plan.after_listing:
            owner.last_digests[self._image] = dict(self.digests)
        times = {d: owner.times[d] for d in self.digests.values() if d in owner.times}
        listed = frozenset(self.listed) if self.listed is not None else None
        return ImageFacts(tags=self.digests, listed=listed, times=times)

    async def _follow_up(self, needs: Sequence[planner.Need], listed: list[str]) -> None:
        """Step two: the newest candidates' digests and every creation time not known."""
        times = self._owner.times
        # Times another replica already read count as known here too.
        known = set(self.digests.values()) | set(self._last.values())
        times.update(await self._owner.cache.times([d for d in known if d not in times]))
        follow = planner.plan_after_listing("v2", needs, listed, self.digests, times)
        async with asyncio.TaskGroup() as group:
            for tag in follow.head:
                group.create_task(self._fetch(tag))
            for digest in follow.config_blobs:
                group.create_task(self._created(digest))
        async with asyncio.TaskGroup() as group:
            for digest in follow.config_blobs_after(self.digests, times):
                group.create_task(self._created(digest))

    async def _listing(self) -> None:
        client, image = self._client, self._image
        self.listed = await self._requests.shared(
            self._key("tags/list"), lambda: client.tags(image), since=self._since
        )

    async def _head(self, tag: str) -> None:
        client, image = self._client, self._image
        try:
            self.digests[tag] = await self._requests.shared(
                self._key(f"tag:{tag}"), lambda: client.digest(image, tag), since=self._since
            )
        except (NotFound, BadResponse) as exc:
            self.notes.append(f"tag {tag}: {exc}")

    async def _fetch(self, tag: str) -> None:
        """A candidate tag: HEAD if its last digest's time is known, else one GET."""
        if self._last.get(tag) in self._owner.times:
            await self._head(tag)
            return
        client, image = self._client, self._image
        try:
            body, _, digest = await self._requests.once(
                self._key(f"manifest:{tag}"), lambda: client.manifest(image, tag)
            )
        except (NotFound, BadResponse) as exc:
            self.notes.append(f"tag {tag}: {exc}")
            return
        self.digests[tag] = digest
        self.bodies[digest] = body

    async def _created(self, digest: str) -> None:
        try:
            when = await self._config_time(digest)
        except (NotFound, BadResponse) as exc:
            self.notes.append(f"digest {digest}: {exc}")
            return
        if when is None:
            self.notes.append(f"digest {digest}: config has no readable 'created'")
        else:
            self._owner.times[digest] = when
            await self._owner.cache.put_time(digest, when)

    async def _config_time(self, digest: str) -> float | None:
        """Creation time of an image (for an index: its first child's), read once per digest."""
        times = self._owner.times
        if digest in times:
            self._owner.metrics.lookups.labels("cached").inc()
            return times[digest]
        client, image = self._client, self._image
        if digest not in self.bodies:
            self.bodies[digest] = (
                await self._requests.once(
                    self._key(f"manifest:{digest}"), lambda: client.manifest(image, digest)
                )
            )[0]
        found = config_reference(str(image), digest, self.bodies[digest])
        if found is None:
            return None
        kind, reference = found
        if kind == "child":
            return await self._config_time(reference)
        blob = await self._requests.once(
            self._key(f"blob:{reference}"), lambda: client.blob(image, reference)
        )
        return parse_created(blob)


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
