"""The watcher's cycle: discover blocks, look images up, decide, write back.

One ``Watcher`` per process. ``cycle()`` checks every image once; ``run()``
repeats it every ``interval``, compensating for drift, until the stop event
is set, and lets an in-flight write finish before it returns.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from types import TracebackType

import aiohttp
import structlog

from watcher.blocks import BlockId, Update
from watcher.config import Config
from watcher.discovery import Discovery, FoundBlock, WatchSet
from watcher.gitops import BranchWriter, GitError, GitMirror, WriteOutcome
from watcher.lookups import LookupFailed, Lookups
from watcher.metrics import Metrics
from watcher.references import ImageName
from watcher.strategies import Change, Skip, decide, to_edit

log = structlog.get_logger()

# Look-ups in flight at once per process: enough to hide latency, few enough
# that the budget, not the socket count, decides the pace.
CONCURRENCY = 16
# SIGTERM must end the process within 10 s; a push in flight gets this long.
STOP_GRACE = 8.0


@dataclass
class CycleReport:
    watch: WatchSet
    updates: list[Update] = field(default_factory=list)
    skipped: list[tuple[BlockId, str]] = field(default_factory=list)
    failed_images: dict[ImageName, str] = field(default_factory=dict)
    outcomes: dict[str, WriteOutcome] = field(default_factory=dict)
    seconds: float = 0.0


class Watcher:
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
        self.mirror = GitMirror(config.git.url, config.workdir, config.git.author)
        self.discovery = Discovery(config, self.mirror)
        self._writers: dict[str, BranchWriter] = {}
        # Updates a failed push left behind, retried with the next batch.
        self.pending: dict[str, dict[BlockId, Update]] = defaultdict(dict)
        self._stack = AsyncExitStack()
        self._lookups: Lookups | None = None
        self._write_task: asyncio.Task[dict[str, WriteOutcome]] | None = None
        self._git_problem: str | None = "the git remote has not been read yet"

    async def __aenter__(self) -> Watcher:
        session = await self._stack.enter_async_context(
            aiohttp.ClientSession(
                headers={"User-Agent": "image-tag-watcher"},
                connector=aiohttp.TCPConnector(limit=CONCURRENCY * 2),
            )
        )
        # aiohttp silently resends an idempotent request once when a kept-alive
        # connection drops; that resend would go out without a budget grant.
        session._retry_connection = False
        self._lookups = Lookups(self.config, session, self.metrics, environ=self._environ)
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
            raise RuntimeError("use the Watcher as an async context manager")
        return self._lookups

    # --- one cycle -------------------------------------------------------------------

    def readiness(self) -> list[str]:
        """What keeps this process from being ready (empty: ready)."""
        return [self._git_problem] if self._git_problem else []

    async def discover(self, *, log_problems: bool = True) -> WatchSet:
        try:
            watch = await asyncio.to_thread(self.discovery.run)
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

    async def check_image(
        self, image: ImageName, blocks: Sequence[FoundBlock]
    ) -> tuple[list[Update], list[tuple[BlockId, str]]]:
        """Look one image up and decide every block that follows it."""
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
            writer = self._writers.get(branch)
            if writer is None:
                writer = self._writers[branch] = BranchWriter(self.mirror, branch)
            try:
                outcome = await asyncio.to_thread(writer.write, batch)
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
            # Shielded: cancelling the cycle on stop leaves a push in flight to land.
            self._write_task = asyncio.ensure_future(self.write(report.updates))
            report.outcomes = await asyncio.shield(self._write_task)
        report.seconds = time.monotonic() - started
        self.metrics.cycle_seconds.labels("all").observe(report.seconds)
        self.metrics.last_cycle.labels("all").set(time.time())
        self.metrics.images.labels("all").set(len(watch.images))
        log.info(
            "cycle done",
            images=len(watch.images),
            blocks=watch.block_count,
            updates=len(report.updates),
            failed_images=len(report.failed_images),
            seconds=round(report.seconds, 3),
        )
        return report

    # --- the daemon loop ---------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Cycle every ``interval`` until ``stop`` is set.

        Cycles start on a fixed grid (start + k * interval), so a slow cycle
        does not push every later one back; a cycle longer than the interval
        skips the ticks it overran instead of running back to back.
        """
        loop = asyncio.get_running_loop()
        interval = self.config.interval
        origin = loop.time()
        tick = 0
        while not stop.is_set():
            current = asyncio.create_task(self._guarded_cycle())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({current, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not current.done():
                # Stop during a cycle: look-ups are abandoned at once; a write
                # in flight (shielded inside cycle()) gets the grace period.
                current.cancel()
                stopping.cancel()
                await asyncio.wait({current})
                if self._write_task is not None and not self._write_task.done():
                    log.info("stopping: finishing the write in flight")
                    await asyncio.wait({self._write_task}, timeout=STOP_GRACE)
                break
            stopping.cancel()
            tick = max(tick + 1, math.ceil((loop.time() - origin) / interval))
            delay = origin + tick * interval - loop.time()
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, delay))

    async def _guarded_cycle(self) -> None:
        try:
            await self.cycle()
        except (GitError, OSError) as exc:
            # A cycle that fails (git remote down, disk full) is retried on the
            # next tick; the daemon stays up and says so.
            self.metrics.errors.labels("cycle").inc()
            log.error("cycle failed", reason=str(exc))
