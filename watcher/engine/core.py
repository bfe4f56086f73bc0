"""The watcher's work: discover blocks, look images up, decide, write back.

One ``Watcher`` per process. ``cycle()`` checks every image once and writes
one commit per branch (``watcher once``). ``run()`` is the daemon: one task
per owned shard, each checking its images spread over every interval, and one
writer task per branch batching what arrives into one commit.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field, replace
from types import TracebackType

import aiohttp
import structlog

from watcher.blocks import BlockId, Edit, Update
from watcher.budget.local import Budget
from watcher.budget.shared import budgets_for
from watcher.cluster.connection import RedisClient, connect_to
from watcher.cluster.membership import LocalMembership, Membership, ShardMembership
from watcher.cluster.shards import shard_of
from watcher.config import Config
from watcher.errors import GitError, LookupFailed
from watcher.gitops.discovery import Discovery, FoundBlock, WatchSet
from watcher.gitops.mirror import GitMirror
from watcher.gitops.writer import BranchWriter, WriteOutcome
from watcher.metrics import Metrics
from watcher.references import ImageName
from watcher.registry.cache import SharedCache
from watcher.registry.lookups import Lookups
from watcher.strategies import Change, Skip, decide, to_edit
from watcher.tuning import BATCH_DELAY, CONCURRENCY, STOP_GRACE, TAKEOVER_SPAN

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
        self.mirror = GitMirror(
            config.git.url, config.workdir, config.git.author, timeout=config.git.timeout
        )
        self.discovery = Discovery(config, self.mirror)
        self._writers: dict[str, BranchWriter] = {}
        # Updates a failed push left behind, retried with the next batch.
        self.pending: dict[str, dict[BlockId, Update]] = defaultdict(dict)
        self._stack = AsyncExitStack()
        self._lookups: Lookups | None = None
        self.membership: ShardMembership = LocalMembership(config.shards)
        self._by_shard: dict[int, list[tuple[ImageName, list[FoundBlock]]]] = {}
        self._watch_ready = asyncio.Event()
        self._queues: dict[str, asyncio.Queue[tuple[Update, int, int | None]]] = {}
        self._write_tasks: dict[str, asyncio.Task[None]] = {}
        # The write (commit and push, in a thread) each branch has in flight.
        self._flights: dict[str, asyncio.Future[WriteOutcome]] = {}
        self._group: asyncio.TaskGroup
        self._stop: asyncio.Event | None = None
        self._git_problem: str | None = "the git remote has not been read yet"
        # Values our commits wrote since the last discovery, with the commit each
        # went on top of: block -> (edit, parent commit).
        self._written: dict[BlockId, tuple[Edit, str]] = {}

    async def __aenter__(self) -> Engine:
        session = await self._stack.enter_async_context(
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
            self._stack.push_async_callback(client.aclose)
            membership = Membership(client, self.config.shards, self.config.interval)
            self.membership = membership
            budgets = budgets_for(self.config, client, membership.replica_id, membership.replicas)
        self._lookups = Lookups(
            self.config,
            session,
            self.metrics,
            environ=self._environ,
            budgets=budgets,
            cache=SharedCache(client, self.config.interval),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    @property
    def lookups(self) -> Lookups:
        if self._lookups is None:
            raise RuntimeError("use the Engine as an async context manager")
        return self._lookups

    # --- one cycle -------------------------------------------------------------------

    def readiness(self) -> list[str]:
        """What keeps this process from being ready (empty: ready).

        Ready means: the config is loaded (this object exists), the git remote
        was read by the last discovery, and the shard membership has completed
        its first tick, so the shards this replica owns are known (with Redis,
        after the first lease tick; without Redis, at once). A replica that
        owns no shard because there are more replicas than shards is ready: it
        is a standby. Losing Redis later does not make it unready (DESIGN, "The
        shared budget": readiness stays up).
        """
        problems = [self._git_problem] if self._git_problem else []
        ready = getattr(self.membership, "ready", None)
        if isinstance(ready, asyncio.Event) and not ready.is_set():
            problems.append("shard leases not taken yet (the first membership tick is pending)")
        return problems

    async def discover(self, *, log_problems: bool = True, fetch: bool = True) -> WatchSet:
        try:
            watch = await asyncio.to_thread(self.discovery.run, fetch=fetch)
        except GitError as exc:
            self._git_problem = f"git remote unreachable: {exc}"
            raise
        self._git_problem = None
        for problem in watch.problems if log_problems else ():
            log.warning(
                "block skipped",
                branch=problem.branch,
                file=problem.file,
                line=problem.line,
                reason=problem.message,
            )
        self.metrics.image_blocks.set(watch.block_count)
        return watch

    def _as_written(self, blocks: Sequence[FoundBlock]) -> list[FoundBlock]:
        """The blocks as this process's own commits left them, newer than discovery's view."""
        if not self._written:
            return list(blocks)
        current = []
        for block in blocks:
            written = self._written.get(block.id)
            if written is not None:
                edit = written[0]
                raw = (
                    replace(block.raw, shasum=edit.new)
                    if edit.field == "shasum"
                    else replace(block.raw, override_tag=edit.new)
                )
                block = replace(block, raw=raw)
            current.append(block)
        return current

    async def check_image(
        self, image: ImageName, blocks: Sequence[FoundBlock]
    ) -> tuple[list[Update], list[tuple[BlockId, str]]]:
        """Look one image up and decide every block that follows it."""
        blocks = self._as_written(blocks)
        facts, notes = await self.lookups.facts(image, blocks)
        for note in notes:
            log.info("registry answer left out", image=str(image), reason=note)
        updates: list[Update] = []
        skipped: list[tuple[BlockId, str]] = []
        for block in blocks:
            decision = decide(block.raw, block.policy, facts)
            if isinstance(decision, Change):
                updates.append(
                    Update(
                        block.id, to_edit(block.raw, decision), str(image), block.policy.strategy
                    )
                )
            elif isinstance(decision, Skip):
                skipped.append((block.id, decision.reason))
                log.info(
                    "block skipped",
                    image=str(image),
                    branch=block.id.branch,
                    file=block.id.file,
                    line=block.raw.line,
                    reason=decision.reason,
                )
        return updates, skipped

    async def resolve(self, watch: WatchSet, report: CycleReport) -> None:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(image: ImageName, blocks: list[FoundBlock]) -> None:
            async with gate:
                try:
                    updates, skipped = await self.check_image(image, blocks)
                except LookupFailed as exc:
                    report.failed_images[image] = str(exc)
                    self.metrics.errors.labels("registry").inc()
                    log.warning("image skipped", image=str(image), reason=str(exc))
                    return
            report.updates.extend(updates)
            report.skipped.extend(skipped)

        async with asyncio.TaskGroup() as group:
            for image, blocks in watch.images.items():
                group.create_task(one(image, blocks))

    async def write(self, updates: Sequence[Update]) -> dict[str, WriteOutcome]:
        """One commit per branch for this batch (plus what earlier pushes left pending)."""
        for update in updates:
            self.pending[update.block.branch][update.block] = update
        batches = {branch: list(u.values()) for branch, u in self.pending.items() if u}
        outcomes: dict[str, WriteOutcome] = {}

        async def one(branch: str, batch: list[Update]) -> None:
            try:
                outcome = await asyncio.to_thread(self._branch_writer(branch).write, batch)
            except GitError as exc:
                self.metrics.git_push.labels("error").inc()
                self.metrics.errors.labels("git").inc()
                log.error("write-back failed", branch=branch, reason=str(exc))
                return
            outcomes[branch] = outcome
            self._account(branch, outcome)

        async with asyncio.TaskGroup() as group:
            for branch, batch in sorted(batches.items()):
                group.create_task(one(branch, batch))
        return outcomes

    def _account(self, branch: str, outcome: WriteOutcome) -> None:
        pushes = outcome.attempts
        if outcome.result == "committed":
            self.metrics.git_push.labels("ok").inc()
            pushes -= 1
        elif outcome.result == "error":
            self.metrics.git_push.labels("error").inc()
            self.metrics.errors.labels("git").inc()
            pushes -= 1
        if outcome.result != "unchanged" and pushes > 0:
            self.metrics.git_push.labels("conflict").inc(pushes)
        self.pending[branch] = {u.block: u for u in outcome.pending}
        for update in outcome.applied:
            self.metrics.updates.labels(update.strategy).inc()
            log.info(
                "updated",
                branch=branch,
                image=update.image,
                file=update.block.file,
                field=update.edit.field,
                old=update.edit.old,
                new=update.edit.new,
                commit=outcome.commit,
            )
        for dropped in outcome.dropped:
            log.info(
                "update dropped",
                branch=branch,
                image=dropped.update.image,
                file=dropped.update.block.file,
                reason=dropped.reason,
            )
        if outcome.result in ("error", "conflict"):
            log.warning(
                "write-back pending",
                branch=branch,
                result=outcome.result,
                pending=len(outcome.pending),
                reason=outcome.message,
            )

    async def cycle(self, *, dry_run: bool = False) -> CycleReport:
        started = time.monotonic()
        watch = await self.discover()
        report = CycleReport(watch)
        await self.resolve(watch, report)
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

    # --- the daemon: shards, each sweeping its images over the interval -----------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set: discovery, one task per owned shard, one writer per branch.

        Each shard checks its images once per interval, spread evenly over it
        (not a burst at its start), on a fixed grid: a sweep that overran
        skips the ticks it missed instead of piling up. On stop, look-ups end
        at once; a write in flight gets the grace period to land.
        """
        self._stop = stop
        async with asyncio.TaskGroup() as group:
            self._group = group
            group.create_task(self.membership.run(stop))
            discovery = group.create_task(self._discovery_loop(stop))
            manager = group.create_task(self._shard_manager(stop))
            await stop.wait()
            discovery.cancel()
            manager.cancel()
            writing = [t for t in self._write_tasks.values() if not t.done()]
            # Wait for the writes in flight, not for the writer tasks: those loop
            # forever, so waiting on them always cost the whole grace period.
            flights = [f for f in self._flights.values() if not f.done()]
            if flights:
                log.info("stopping: finishing the write in flight")
                await asyncio.wait(flights, timeout=STOP_GRACE)
            if any(not f.done() for f in flights):
                # The push outlived the grace: kill it. Its thread cannot be
                # cancelled, and asyncio.run waits for it, so a hung remote
                # would otherwise keep the process past Kubernetes' 10 s. A
                # push killed midway either landed or did not; both are safe
                # (the next run decides again from the branch as it is).
                log.warning("stopping: the write in flight did not finish; aborting it")
                self.mirror.abort()
                await asyncio.wait(flights, timeout=1.0)
            # A writer whose write just landed must not start another (its
            # thread would outlive the process's 10 s): new fetches and pushes
            # are refused from here on, and the writers end.
            self.mirror.abort()
            for task in writing:
                task.cancel()

    def _stop_requested(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def _discovery_loop(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        origin, tick = loop.time(), 0
        while not stop.is_set():
            try:
                self._set_watch(await self.discover())
            except Exception as exc:
                # Any failure (git, or a file no check foresaw): the last watch set
                # stays in use; readiness says what is wrong. Never the end of the loop.
                self.metrics.errors.labels("discovery").inc()
                log.error("discovery failed", reason=str(exc))
            tick = max(tick + 1, math.ceil((loop.time() - origin) / self.config.interval))
            await _sleep_until(origin + tick * self.config.interval, stop)

    def _set_watch(self, watch: WatchSet) -> None:
        # What we wrote is in this watch set once its branch is no longer at the
        # commit our write went on top of (ours landed, or more did after it).
        for block, (_, parent) in list(self._written.items()):
            if watch.branches.get(block.branch) != parent:
                del self._written[block]
        by_shard: dict[int, list[tuple[ImageName, list[FoundBlock]]]] = defaultdict(list)
        for image, blocks in watch.images.items():
            by_shard[shard_of(image, self.config.shards)].append((image, blocks))
        self._by_shard = dict(by_shard)
        for shard in range(self.config.shards):
            self.metrics.images.labels(str(shard)).set(len(self._by_shard.get(shard, ())))
        self._watch_ready.set()

    async def _shard_manager(self, stop: asyncio.Event) -> None:
        """Start and stop shard tasks as this process gains and loses shards."""
        tasks: dict[int, asyncio.Task[None]] = {}
        started = False  # shards gained after the first assignment are take-overs
        try:
            while True:
                await self.membership.changed.wait()
                self.membership.changed.clear()
                owned = self.membership.owned()
                for shard in sorted(owned - tasks.keys()):
                    tasks[shard] = self._group.create_task(
                        self._shard(shard, stop, takeover=started)
                    )
                    self.metrics.shard_owned.labels(str(shard)).set(1)
                for shard in sorted(tasks.keys() - owned):
                    tasks.pop(shard).cancel()
                    self.metrics.shard_owned.labels(str(shard)).set(0)
                log.info("shards owned", shards=sorted(owned), replicas=self.membership.replicas())
                started = True
        finally:
            for task in tasks.values():
                task.cancel()

    async def _shard(self, shard: int, stop: asyncio.Event, *, takeover: bool = False) -> None:
        """Check the shard's images once per interval, each in its own slot of the interval.

        A shard taken over from a replica that died has images already
        overdue by up to a lease ttl: its first sweep runs over a quarter of
        the interval, so they are checked again within two intervals.
        """
        await self._watch_ready.wait()
        loop = asyncio.get_running_loop()
        interval = self.config.interval
        span = interval * (TAKEOVER_SPAN if takeover else 1.0)
        # Shards start their slots at different offsets, so S shards do not
        # all ask at the same instant.
        phase = shard / self.config.shards
        origin, tick = loop.time(), 0
        while not stop.is_set():
            started = origin + tick * interval
            images = self._by_shard.get(shard, [])
            slot = span / max(1, len(images))
            # Each image's check starts at its slot without waiting for the one
            # before: under demand above the cap every image then queues for the
            # budget (first come, first served) once per sweep, so the interval
            # stretches evenly per image, whatever the shards' sizes. Awaiting
            # the checks one by one gave small shards as many requests as big
            # ones: their images were checked twice as often.
            async with asyncio.TaskGroup() as sweep:
                for index, (image, blocks) in enumerate(images):
                    await _sleep_until(started + (index + phase) * slot, stop)
                    if stop.is_set():
                        break
                    sweep.create_task(self._check_in_shard(shard, image, blocks))
            seconds = loop.time() - started
            self.metrics.cycle_seconds.labels(str(shard)).observe(seconds)
            self.metrics.last_cycle.labels(str(shard)).set(time.time())
            if images:
                log.info("sweep done", shard=shard, images=len(images), seconds=round(seconds, 3))
            span = interval
            if loop.time() > origin + (tick + 1) * interval:
                # The sweep overran (the budget held it back: demand above the
                # cap). Waiting for the next tick of the grid would leave the
                # budget idle and then check images twice in quick succession;
                # start again at once, on a new grid, so the interval stretches
                # evenly instead.
                origin, tick = loop.time(), 0
                continue
            tick += 1
            await _sleep_until(origin + tick * interval, stop)

    async def _check_in_shard(
        self, shard: int, image: ImageName, blocks: Sequence[FoundBlock]
    ) -> None:
        try:
            updates, _ = await self.check_image(image, blocks)
        except LookupFailed as exc:
            self.metrics.errors.labels("registry").inc()
            log.warning("image skipped", image=str(image), shard=shard, reason=str(exc))
            return
        except Exception as exc:
            # A bug or an answer no check foresaw, for one image: skip that image
            # this sweep. Letting it out would end the sweep's TaskGroup, and with
            # it every shard and the process.
            self.metrics.errors.labels("internal").inc()
            log.error(
                "image check failed",
                image=str(image),
                shard=shard,
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        fence = self.membership.fence(shard)
        for update in updates:
            self._queue(update, shard, fence)

    # --- write-back in the daemon: one writer task per branch --------------------------

    def _queue(self, update: Update, shard: int, fence: int | None) -> None:
        branch = update.block.branch
        queue = self._queues.get(branch)
        if queue is None:
            queue = self._queues[branch] = asyncio.Queue()
            self._write_tasks[branch] = self._group.create_task(self._writer(branch, queue))
        queue.put_nowait((update, shard, fence))

    async def _writer(
        self, branch: str, queue: asyncio.Queue[tuple[Update, int, int | None]]
    ) -> None:
        """Batch what arrives for one branch into one commit; retry what a push left pending."""
        loop = asyncio.get_running_loop()
        fences: dict[BlockId, tuple[int, int | None]] = {}
        batch_delay = min(BATCH_DELAY, self.config.interval / 20)
        while True:
            try:
                # With updates pending from a failed push, try again after an
                # interval even if nothing new arrives.
                timeout = self.config.interval if self.pending.get(branch) else None
                first = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                first = None
            items = [first] if first is not None else []
            deadline = loop.time() + batch_delay
            while first is not None and (left := deadline - loop.time()) > 0:
                try:
                    items.append(await asyncio.wait_for(queue.get(), left))
                except TimeoutError:
                    break
            for update, shard, fence in items:
                self.pending[branch][update.block] = update
                fences[update.block] = (shard, fence)
            # A shard lost since the update was decided: its new owner decides
            # again, with fresher facts; writing ours could undo theirs.
            for block, (shard, fence) in list(fences.items()):
                if self.membership.fence(shard) != fence:
                    self.pending[branch].pop(block, None)
                    del fences[block]
            batch = list(self.pending[branch].values())
            if not batch:
                continue
            if self._stop_requested():
                # Stopping: only the write already in flight may finish.
                return
            flight = self._flights[branch] = asyncio.ensure_future(
                asyncio.to_thread(self._branch_writer(branch).write, batch)
            )
            try:
                outcome = await asyncio.shield(flight)
            except GitError as exc:
                self.metrics.git_push.labels("error").inc()
                self.metrics.errors.labels("git").inc()
                log.error("write-back failed", branch=branch, reason=str(exc))
                continue
            self._account(branch, outcome)
            if outcome.result == "committed" and outcome.parent is not None:
                # Shards must decide from the branch as we just left it, not as of
                # the last discovery: an update decided against the older value
                # would read as a person's edit and be dropped. Remembering what
                # we wrote costs nothing; re-reading every branch after every
                # commit cost most of the write path's time.
                for update in outcome.applied:
                    self._written[update.block] = (update.edit, outcome.parent)
            for block in list(fences):
                if block not in self.pending[branch]:
                    del fences[block]

    def _branch_writer(self, branch: str) -> BranchWriter:
        writer = self._writers.get(branch)
        if writer is None:
            writer = self._writers[branch] = BranchWriter(self.mirror, branch)
        return writer


async def _sleep_until(when: float, stop: asyncio.Event) -> None:
    """Sleep until loop time ``when``, or until ``stop`` is set."""
    delay = when - asyncio.get_running_loop().time()
    if delay > 0 and not stop.is_set():
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
