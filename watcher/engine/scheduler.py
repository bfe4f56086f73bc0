"""The shard schedule: which shards this process runs, and when each image is checked.

One supervised task per owned shard, started and stopped as the membership
changes. Each sweeps its images once per interval, every image in its own slot
(:mod:`watcher.engine.slots`); a shard taken over from another replica sweeps
its first round faster. :meth:`Scheduler.check_now` checks one image at once,
coalesced with a check of it already in flight; :meth:`Scheduler.check_event`
is the same for a registry event, which a check that began before the event
cannot answer. Images that registry events cover are checked at the backstop
(one sweep in ``backstop / interval``), every other image once per interval. See
docs/architecture.md, "engine/: scheduling and write-back" (and "cluster/:
shards, leases and fences" for the ownership it follows).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

import structlog

from watcher.cluster.membership import ShardMembership
from watcher.cluster.shards import shard_of
from watcher.engine import slots
from watcher.engine.checks import Decided
from watcher.engine.supervise import Supervisor, sleep_until
from watcher.gitops.discovery import FoundBlock, WatchSet
from watcher.metrics import Metrics
from watcher.references import ImageName
from watcher.tuning import EVENT_GATHER

log = structlog.get_logger()

# Checks one image of a shard (reading no shared-cache answer written before the
# Unix time given, if any) and hands on what it decided; never raises but for
# cancellation (watcher.engine.checks.check handles every failure).
CheckShard = Callable[[int, ImageName, Sequence[FoundBlock], float | None], Awaitable[Decided]]

# Whether an image of the watch set is checked in a sweep: (image, sweep number).
Due = Callable[[ImageName, int], bool]


@dataclass
class _Flight:
    """A check of one image: running, or (an event's) waiting to start."""

    shard: int
    task: asyncio.Task[Decided | None] | None = None
    started: bool = False
    # The newest publish time of the events it answers: older cache entries are not used.
    since: float | None = None


class Scheduler:
    """The shards this process owns, each sweeping its images on its slots."""

    def __init__(
        self,
        shards: int,
        interval: float,
        membership: ShardMembership,
        metrics: Metrics,
        check: CheckShard,
        supervisor: Supervisor,
        stop: asyncio.Event,
        due: Due | None = None,
    ) -> None:
        self._shard_count = shards
        self._interval = interval
        self._membership = membership
        self._metrics = metrics
        self._check = check
        self._supervisor = supervisor
        self._stop = stop
        self._images: dict[ImageName, list[FoundBlock]] = {}
        self._by_shard: dict[int, list[tuple[ImageName, list[FoundBlock]]]] = {}
        self._watch_ready = asyncio.Event()
        self._shards: dict[int, asyncio.Task[None]] = {}
        # The check of each image in flight, and an event's check waiting for it to end.
        self._inflight: dict[ImageName, _Flight] = {}
        self._next: dict[ImageName, _Flight] = {}
        # Which images a sweep checks (all, without registry events).
        self._due = due
        # Shards gained after the first assignment are take-overs. Kept here so
        # a manager restarted after a failure still knows.
        self._assigned = False

    def set_watch(self, watch: WatchSet) -> None:
        """Sweeps from now on check the images of ``watch``."""
        by_shard: dict[int, list[tuple[ImageName, list[FoundBlock]]]] = defaultdict(list)
        for image, blocks in watch.images.items():
            by_shard[shard_of(image, self._shard_count)].append((image, blocks))
        self._by_shard = dict(by_shard)
        self._images = watch.images
        for shard in range(self._shard_count):
            self._metrics.images.labels(str(shard)).set(len(self._by_shard.get(shard, ())))
        self._watch_ready.set()

    def check_now(self, image: ImageName) -> asyncio.Task[Decided | None] | None:
        """Check ``image`` at once if this process runs its shard.

        Returns the check's task: the one already in flight for the image if
        there is one (a second request changes nothing), else a new one. None
        when the image is not in the watch set or another replica owns it.
        The image's own slot comes round as usual.
        """
        blocks = self._images.get(image)
        shard = shard_of(image, self._shard_count)
        if blocks is None or shard not in self._shards:
            return None
        return self._start(shard, image, blocks)

    async def watch_ready(self) -> None:
        """Until the first watch set has arrived."""
        await self._watch_ready.wait()

    def shards(self) -> frozenset[int]:
        """The shards this process runs now."""
        return frozenset(self._shards)

    def owns(self, image: ImageName) -> bool:
        """Whether this process runs the shard of ``image`` now."""
        return shard_of(image, self._shard_count) in self._shards

    def follows(self, image: ImageName) -> bool:
        """Whether some block of the current watch set follows ``image``."""
        return image in self._images

    def check_event(
        self, image: ImageName, published: float | None = None
    ) -> asyncio.Task[Decided | None] | None:
        """A check of ``image`` that begins after this call, for a registry event.

        A check that has not begun yet answers the event (hints for one image arriving
        together share one look-up); one already running began before the push may have
        been visible, so a second check follows it, shared by every event arriving
        meanwhile. The check reads no shared-cache answer older than ``published``
        (Unix time). None when the image is not followed or another replica owns it.
        """
        shard = shard_of(image, self._shard_count)
        if image not in self._images or shard not in self._shards:
            return None
        for waiting in (self._next.get(image), self._inflight.get(image)):
            if waiting is not None and not waiting.started and waiting.task is not None:
                waiting.since = _later(waiting.since, published)
                return waiting.task
        running = self._inflight.get(image)
        flight = _Flight(shard, since=published)
        if running is None:
            self._inflight[image] = flight
        else:
            self._next[image] = flight
        flight.task = self._supervisor.spawn(
            f"event check {image}",
            partial(self._event_check, image, flight, running),
            on_failure="end",
        )
        flight.task.add_done_callback(partial(self._done, image, flight))
        return flight.task

    async def _event_check(
        self, image: ImageName, flight: _Flight, before: _Flight | None
    ) -> Decided:
        if before is not None and before.task is not None:
            await asyncio.wait([before.task])
            # The check it waited for is over (_done removed it): this one runs now.
            if self._next.get(image) is flight:
                del self._next[image]
                self._inflight[image] = flight
        await asyncio.sleep(EVENT_GATHER)
        flight.started = True
        blocks = self._images.get(image)
        if blocks is None or flight.shard not in self._shards:
            return Decided(failed="no longer followed here")
        return await self._check(flight.shard, image, blocks, flight.since)

    # --- the shards this process owns ----------------------------------------------------

    async def run(self) -> None:
        """Start and stop shard tasks as this process gains and loses shards."""
        changed = self._membership.changed
        if self._assigned:
            changed.set()  # restarted after a failure: start the shards owned now
        try:
            while True:
                await changed.wait()
                changed.clear()
                self._reconcile()
        finally:
            for shard in list(self._shards):
                self._drop(shard)

    def _reconcile(self) -> None:
        owned = self._membership.owned()
        for shard in sorted(owned - self._shards.keys()):
            # Restarted on failure: a sweep keeps nothing of its own (the watch
            # set and the ownership live elsewhere), and stopping the process
            # would stop every other shard with it.
            self._shards[shard] = self._supervisor.spawn(
                f"shard {shard}",
                partial(self._sweeps, shard, takeover=self._assigned),
                on_failure="restart",
            )
            self._metrics.shard_owned.labels(str(shard)).set(1)
        for shard in sorted(self._shards.keys() - owned):
            self._drop(shard)
            self._metrics.shard_owned.labels(str(shard)).set(0)
        log.info("shards owned", shards=sorted(owned), replicas=self._membership.replicas())
        self._assigned = True

    def _drop(self, shard: int) -> None:
        """End the shard's task; its look-ups in flight end at once."""
        self._shards.pop(shard).cancel()
        for flight in [*self._inflight.values(), *self._next.values()]:
            if flight.shard == shard and flight.task is not None:
                flight.task.cancel()

    # --- one shard: a sweep per interval -----------------------------------------------

    async def _sweeps(self, shard: int, *, takeover: bool) -> None:
        """Check the shard's images once per interval, each in its own slot of the interval."""
        await self._watch_ready.wait()
        loop = asyncio.get_running_loop()
        span = slots.sweep_span(self._interval, takeover=takeover)
        phase = slots.phase(shard, self._shard_count)
        grid = slots.Grid(loop.time(), self._interval)
        while not self._stop.is_set():
            images = self._by_shard.get(shard, [])
            if self._due is not None:
                # Numbered by the wall clock, so every replica agrees which sweep it is.
                sweep = int(time.time() // self._interval)
                images = [entry for entry in images if self._due(entry[0], sweep)]
            await self._sweep(
                shard, images, slots.slot_starts(grid.start, len(images), span, phase)
            )
            seconds = loop.time() - grid.start
            self._metrics.cycle_seconds.labels(str(shard)).observe(seconds)
            self._metrics.last_cycle.labels(str(shard)).set(time.time())
            if images:
                log.info("sweep done", shard=shard, images=len(images), seconds=round(seconds, 3))
            span = self._interval
            grid = grid.after(loop.time())
            await sleep_until(grid.start, self._stop)

    async def _sweep(
        self,
        shard: int,
        images: Sequence[tuple[ImageName, list[FoundBlock]]],
        starts: Sequence[float],
    ) -> None:
        # Each image's check starts at its slot without waiting for the one
        # before: under demand above the cap every image then queues for the
        # budget (first come, first served) once per sweep, so the interval
        # stretches evenly per image, whatever the shards' sizes. Awaiting
        # the checks one by one gave small shards as many requests as big
        # ones: their images were checked twice as often.
        checks: list[asyncio.Task[Decided | None]] = []
        for at, (image, blocks) in zip(starts, images, strict=True):
            await sleep_until(at, self._stop)
            if self._stop.is_set():
                break
            checks.append(self._start(shard, image, blocks))
        if checks:
            await asyncio.wait(checks)

    def _start(
        self, shard: int, image: ImageName, blocks: Sequence[FoundBlock]
    ) -> asyncio.Task[Decided | None]:
        """A check of ``image``: the one in flight (or waiting to be), or a new one."""
        for running in (self._next.get(image), self._inflight.get(image)):
            if running is not None and running.task is not None:
                return running.task
        # The sweep's list is as of its start; a discovery since may have read a
        # person's change (a revert that holds the block): decide on the latest.
        blocks = self._images.get(image, blocks)
        # "end": a check is one-shot (and handles its own failures); should
        # one escape anyway, it is logged and counted, and the next sweep
        # checks the image again.
        flight = _Flight(shard, started=True)
        task = flight.task = self._supervisor.spawn(
            f"check {image}", partial(self._check, shard, image, blocks, None), on_failure="end"
        )
        self._inflight[image] = flight
        task.add_done_callback(partial(self._done, image, flight))
        return task

    def _done(self, image: ImageName, flight: _Flight, task: asyncio.Task[Decided | None]) -> None:
        for flights in (self._inflight, self._next):
            if flights.get(image) is flight:
                del flights[image]


def _later(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return a if b is None else b
    return max(a, b)
