"""The engine: discover blocks, look images up, decide, write back.

One :class:`Engine` per process wires the parts: its resources (HTTP session,
Redis client, shard membership, budgets, look-ups) are one async context;
:meth:`Engine.cycle` checks every image once and writes one commit per branch
(``watcher once``); :meth:`Engine.run` is the daemon, every task of it under
one TaskGroup and one :class:`~watcher.engine.supervise.Supervisor`: the
membership, discovery, the :class:`~watcher.engine.scheduler.Scheduler` of the
owned shards and the :class:`~watcher.engine.writeback.WriteBack` writers.
Both paths check an image with :func:`watcher.engine.checks.check` and write
with :meth:`WriteBack.write`, so errors are handled and counted one way.
See docs/architecture.md, "engine/: scheduling and write-back".
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Container, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType

import aiohttp
import structlog

from watcher.blocks import BlockId, Update
from watcher.budget.local import Budget
from watcher.budget.shared import budgets_for
from watcher.cluster.connection import RedisClient, connect_to
from watcher.cluster.membership import LocalMembership, Membership, ShardMembership
from watcher.cluster.shards import shard_of
from watcher.config import Config
from watcher.engine import checks, slots
from watcher.engine.checks import Checked, Decided
from watcher.engine.scheduler import Scheduler
from watcher.engine.status import StatusBoard
from watcher.engine.supervise import Supervisor, report_error, sleep_until
from watcher.engine.writeback import WriteBack
from watcher.errors import GitError, PromotionError
from watcher.events import coverage
from watcher.events.routing import EventRouter
from watcher.events.subscriber import Subscriber
from watcher.gitops.discovery import Discovery, FoundBlock, WatchSet
from watcher.gitops.mirror import GitMirror
from watcher.gitops.profile import STAGES
from watcher.gitops.steering import Steering
from watcher.gitops.values import Reading
from watcher.gitops.writer import WriteOutcome
from watcher.metrics import Metrics
from watcher.promotion import followers, promote
from watcher.references import ImageName
from watcher.registry.cache import SharedCache
from watcher.registry.lookups import Lookups
from watcher.tuning import CONCURRENCY

log = structlog.get_logger()


@dataclass
class CycleReport:
    watch: WatchSet
    updates: list[Update] = field(default_factory=list)
    skipped: list[tuple[BlockId, str]] = field(default_factory=list)
    failed_images: dict[ImageName, str] = field(default_factory=dict)
    outcomes: dict[str, WriteOutcome] = field(default_factory=dict)
    seconds: float = 0.0


class Engine:
    """Discovery, look-ups and write-back for every image this process watches."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self._environ = os.environ if environ is None else environ
        self.mirror = GitMirror.of(config)
        self.discovery = Discovery(config, self.mirror)
        reading = Reading.of(config.git)
        self.steering = Steering(self.mirror, reading)
        self.membership: ShardMembership = LocalMembership(config.shards)
        # Late-bound: the membership is replaced when Redis is configured.
        self.board = StatusBoard(
            config, self.metrics, lambda: self.membership.owned(), self._budget_used
        )
        self.writeback = WriteBack(
            self.mirror,
            self.metrics,
            config.interval,
            lambda shard: self.membership.fence(shard),
            on_written=self.board.written,
            reading=reading,
        )
        self.scheduler: Scheduler | None = None  # while the daemon runs
        # The task whose failure stopped the daemon on purpose (the CLI exits 1).
        self.fatal: str | None = None
        self._stack: AsyncExitStack | None = None
        self._lookups: Lookups | None = None
        self._redis: RedisClient | None = None
        self.router: EventRouter | None = None  # while the daemon runs with events
        self._git_problem: str | None = "the git remote has not been read yet"
        # The last discovery's fetch, reading and holds, in seconds, and its whole time
        # and the part in its thread (the daemon's "discovery done" line).
        self._timings = (0.0, 0.0, 0.0)
        self._discovered = (0.0, 0.0)
        # Why each follow block cannot follow, as last logged (each new reason once).
        self._promotion_reasons: dict[BlockId, str] = {}

    # --- resources ---------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        async with AsyncExitStack() as stack:
            # Anything failing below (a Redis URL that cannot be used, say)
            # unwinds what was opened before it; on success pop_all() hands
            # the lot to __aexit__, which closes it in reverse order.
            session = await stack.enter_async_context(
                aiohttp.ClientSession(
                    headers={"User-Agent": "image-tag-watcher"},
                    connector=aiohttp.TCPConnector(limit=CONCURRENCY * 2),
                )
            )
            # aiohttp silently resends an idempotent request once when a kept-alive
            # connection drops; that resend would go out without a budget grant.
            session._retry_connection = False
            budgets: dict[str, Budget] | None = None
            client: RedisClient | None = None
            if self.config.redis.url:
                # One client for leases, budgets and the shared cache; short
                # timeouts and no hidden retries, so a dead Redis never stalls a
                # renewal or a grant (each falls back on its own schedule).
                client = connect_to(self.config.redis, self.config.interval)
                stack.push_async_callback(client.aclose)
                membership = Membership(client, self.config.shards, self.config.interval)
                budgets = budgets_for(
                    self.config, client, membership.replica_id, membership.replicas
                )
                self.membership = membership
                self._redis = client
            self._lookups = Lookups(
                self.config,
                session,
                self.metrics,
                environ=self._environ,
                budgets=budgets,
                cache=SharedCache(client, self.config.interval),
            )
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    @property
    def lookups(self) -> Lookups:
        if self._lookups is None:
            raise RuntimeError("use the Engine as an async context manager")
        return self._lookups

    @property
    def pending(self) -> dict[str, dict[BlockId, Update]]:
        """Updates a failed push left behind, per branch, retried with the next batch."""
        return self.writeback.pending

    def readiness(self) -> list[str]:
        """What keeps this process from being ready (empty: ready).

        Ready means: the config is loaded (this object exists), the git remote
        was read by the last discovery, and the shard membership has completed
        its first tick, so the shards this replica owns are known (with Redis,
        after the first lease tick; without Redis, at once). A replica that
        owns no shard because there are more replicas than shards is ready: it
        is a standby. Losing Redis later does not make it unready
        (docs/architecture.md, "budget/: the request budget": it stays ready).
        """
        problems = [self._git_problem] if self._git_problem else []
        ready = getattr(self.membership, "ready", None)
        if isinstance(ready, asyncio.Event) and not ready.is_set():
            problems.append("shard leases not taken yet (the first membership tick is pending)")
        return problems

    # --- discovery and checks: both paths --------------------------------------------

    async def discover(
        self, *, log_problems: bool = True, fetch: bool = True, holds: bool = True
    ) -> WatchSet:
        """Every block of every branch; with ``holds``, each block's state read from its
        branch's history too (the reports that only count blocks skip that)."""
        began = time.monotonic()
        try:
            watch = await asyncio.to_thread(self._discover, fetch, holds)
        except GitError as exc:
            self._git_problem = f"git remote unreachable: {exc}"
            raise
        self._git_problem = None
        self.writeback.seen(watch)
        for problem in watch.problems if log_problems else ():
            log.warning(
                "block skipped",
                branch=problem.branch,
                file=problem.file,
                line=problem.line,
                reason=problem.message,
            )
        self.metrics.image_blocks.set(watch.block_count)
        threaded = time.monotonic() - began
        self.board.discovered(watch)
        self._discovered = (time.monotonic() - began, threaded)
        return watch

    def _discover(self, fetch: bool, holds: bool) -> WatchSet:
        """Discovery with holds applied: every block's state from its branch's history."""
        began = time.monotonic()
        if fetch:
            with STAGES.time("discovery: fetch"):
                self.mirror.fetch()
        fetched = time.monotonic()
        watch = self.discovery.run(fetch=False)
        read = time.monotonic()
        watch = self.steering.apply(watch) if holds else watch
        self._timings = (fetched - began, read - fetched, time.monotonic() - read)
        return watch

    def _budget_used(self, budget: str) -> int:
        # The gauge every grant sets: the page shows what the dashboard shows.
        value = self.metrics.registry.get_sample_value(
            "image_watcher_budget_window_used", {"budget": budget}
        )
        return int(value or 0)

    async def check(
        self,
        image: ImageName,
        blocks: Sequence[FoundBlock],
        fresh_since: float | None = None,
        **context: int,
    ) -> Checked:
        """Look one image up and decide every block that follows it, as our commits left
        them; a failure skips the image (``Checked.failed``) and is counted."""
        blocks = self.writeback.as_written(blocks)
        checked = await checks.check(
            self.lookups, self.metrics, image, blocks, fresh_since, **context
        )
        self.board.checked(checked)
        return checked

    # --- promotion: blocks that follow another branch ----------------------------------

    def promote(
        self, watch: WatchSet, shards: Container[int] | None = None
    ) -> list[tuple[int, Update]]:
        """The copies every follow block of ``watch`` needs now (only those of ``shards``,
        when given), each with its image's shard. No registry is asked: the values come
        from the branches as this watch set read them, and our own writes since."""
        now = time.time()
        out: list[tuple[int, Update]] = []
        reasons: dict[BlockId, str] = {}
        for image, blocks in watch.images.items():
            follow = followers(blocks)
            if not follow:
                continue
            shard = shard_of(image, self.config.shards)
            if shards is not None and shard not in shards:
                continue
            for block in self.writeback.as_written(follow):
                step = promote(block, now)
                if step.update is not None:
                    out.append((shard, step.update))
                if step.failing:
                    reasons[block.id] = step.reason
                    self._promotion_failing(block, step.reason)
        self.board.promoted(watch, reasons)
        self._promotion_reasons = reasons
        return out

    def _promotion_failing(self, block: FoundBlock, reason: str) -> None:
        if self._promotion_reasons.get(block.id) == reason:
            return  # logged (and counted) when it began
        origin = block.origin
        if origin is not None and origin.problem is not None:
            self.metrics.errors.labels(PromotionError.stage).inc()
        log.warning(
            "promotion skipped",
            branch=block.id.branch,
            file=block.id.file,
            line=block.raw.line,
            image=str(block.image),
            source=origin.branch if origin is not None else None,
            reason=reason,
        )

    # --- watcher once ------------------------------------------------------------------

    async def resolve(self, watch: WatchSet, report: CycleReport) -> None:
        """Check every image of ``watch`` (CONCURRENCY at a time) into ``report``."""
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(image: ImageName, blocks: list[FoundBlock]) -> None:
            async with gate:
                checked = await self.check(image, blocks)
            if checked.failed is not None:
                report.failed_images[image] = checked.failed
            report.updates.extend(checked.updates)
            report.skipped.extend(checked.skipped)

        async with asyncio.TaskGroup() as group:
            for image, blocks in watch.images.items():
                group.create_task(one(image, blocks))

    async def write(self, updates: Sequence[Update]) -> dict[str, WriteOutcome]:
        """One commit per branch for this batch (plus what earlier pushes left pending)."""
        return await self.writeback.write_all(updates)

    async def cycle(self, *, dry_run: bool = False) -> CycleReport:
        started = time.monotonic()
        watch = await self.discover()
        report = CycleReport(watch)
        await self.resolve(watch, report)
        report.updates.extend(update for _, update in self.promote(watch))
        report.updates.sort(key=lambda u: u.block)
        if not dry_run:
            report.outcomes = await self.write(report.updates)
        report.seconds = time.monotonic() - started
        log.info(
            "cycle done",
            images=len(watch.images),
            blocks=watch.block_count,
            updates=len(report.updates),
            failed_images=len(report.failed_images),
            seconds=round(report.seconds, 3),
        )
        return report

    # --- the daemon --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set: membership, discovery, the owned shards, the writers.

        On stop, look-ups end at once; a write in flight gets the grace period
        to land. A task that cannot be restarted and failed sets ``stop``
        itself (and ``fatal``).
        """
        async with asyncio.TaskGroup() as group:
            supervisor = Supervisor(group, stop, self.metrics)
            self.writeback.start(supervisor, stop)
            events = self.config.events.subscriptions
            scheduler = self.scheduler = Scheduler(
                self.config.shards,
                self.config.interval,
                self.membership,
                self.metrics,
                self._check_in_shard,
                supervisor,
                stop,
                due=self._due if events else None,
            )
            if events:
                self._start_events(supervisor, stop)
            # Stopped on failure, not restarted: the leases back the fences every
            # write is checked against. A replica whose lease loop died would go
            # on checking shards the others have taken over, its /readyz green;
            # exiting (code 1) lets Kubernetes start it afresh, visibly.
            supervisor.spawn("membership", partial(self.membership.run, stop), on_failure="stop")
            # Restarted: the loop keeps nothing of its own (the last watch set stays).
            discovery = supervisor.spawn(
                "discovery", partial(self._discovery_loop, stop), on_failure="restart"
            )
            # Restarted: ownership lives in the membership; a new manager starts
            # the shards it finds owned.
            shards = supervisor.spawn("shards", scheduler.run, on_failure="restart")
            await stop.wait()
            discovery.cancel()
            shards.cancel()
            await self.writeback.stop()
        self.fatal = supervisor.fatal

    def _due(self, image: ImageName, sweep: int) -> bool:
        """Whether a sweep checks ``image``: always, but at the backstop when events cover it."""
        projects = self.router.projects if self.router is not None else ()
        if not coverage.covered(self.config, image, projects):
            return True
        return coverage.due(image, sweep, coverage.period(self.config))

    def _start_events(self, supervisor: Supervisor, stop: asyncio.Event) -> None:
        """The subscriptions' streams and the routing of their messages to shard owners."""
        membership = self.membership
        router = self.router = EventRouter(
            lambda: self.scheduler,
            self.metrics,
            supervisor,
            stop,
            client=self._redis,
            replica_id=getattr(membership, "replica_id", "local"),
            shards=self.config.shards,
        )
        subscriber = Subscriber(self.config.events.subscriptions, self.metrics, router.deliver)
        # Restarted: a stream keeps nothing of its own; unacked messages come again.
        supervisor.spawn("event subscriber", partial(subscriber.run, stop), on_failure="restart")
        supervisor.spawn("event hand-off", router.run, on_failure="restart")

    async def _discovery_loop(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.interval
        origin, tick = loop.time(), 0
        while not stop.is_set():
            try:
                watch = await self.discover()
            except Exception as exc:
                # Any failure (git, or a file no check foresaw): the last watch set
                # stays in use; readiness says what is wrong. Never the end of the loop.
                report_error(self.metrics, exc, "discovery failed")
            else:
                if self.scheduler is not None:
                    self.scheduler.set_watch(watch)
                (seconds, threaded), (fetch_s, read_s, holds_s) = self._discovered, self._timings
                log.info(
                    "discovery done",
                    blocks=watch.block_count,
                    seconds=round(seconds, 3),
                    fetch_seconds=round(fetch_s, 3),
                    read_seconds=round(read_s, 3),
                    holds_seconds=round(holds_s, 3),
                    thread_seconds=round(threaded, 3),
                )
                # Followers copy what this discovery read on their sources: a value
                # written to a source is promoted at the next discovery after it lands.
                try:
                    for shard, update in self.promote(watch, self.membership.owned()):
                        self.writeback.queue(update, shard, self.membership.fence(shard))
                except Exception as exc:
                    report_error(self.metrics, exc, "promotion failed")
            tick = slots.next_tick(origin, tick, interval, loop.time())
            await sleep_until(origin + tick * interval, stop)

    async def _check_in_shard(
        self,
        shard: int,
        image: ImageName,
        blocks: Sequence[FoundBlock],
        fresh_since: float | None = None,
    ) -> Decided:
        checked = await self.check(image, blocks, fresh_since, shard=shard)
        router = self.router
        if (
            checked.updates
            and fresh_since is None
            and router is not None
            and coverage.covered(self.config, image, router.projects)
        ):
            # Polling found what an event should have announced: the alert's signal
            # for a subscription that stopped delivering.
            self.metrics.events_missed.inc()
        fence = self.membership.fence(shard)
        # An event's check (it names the time its answers must be fresh from) is urgent.
        urgent = fresh_since is not None
        landings = [
            self.writeback.queue(update, shard, fence, urgent=urgent) for update in checked.updates
        ]
        return Decided(checked.failed, checked.missing, landings)
