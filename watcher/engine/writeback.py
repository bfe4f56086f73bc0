"""Write-back: decided updates -> one commit per branch per batch, pushed without force.

:meth:`WriteBack.write` is the one path every write takes, ``watcher once``
(:meth:`WriteBack.write_all`) and the daemon alike: the commit and push run in
a thread (:class:`~watcher.gitops.writer.BranchWriter`), the outcome is
counted and logged, what a failed push left behind stays pending for the next
batch, and what our commits wrote is remembered until discovery sees it.

In the daemon each branch has a queue and a supervised writer task that
batches what arrives within ``BATCH_DELAY`` (at most interval/20) into one
commit, drops updates whose shard changed hands since they were decided
(fences), and retries pending updates every interval. On stop, no new write
starts; the one in flight gets ``STOP_GRACE`` to land and is then aborted.
See docs/architecture.md, "engine/: scheduling and write-back".
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial

import structlog

from watcher.blocks import BlockId, Edit, Update
from watcher.engine.supervise import Supervisor, record_crash, report_error
from watcher.errors import GitError
from watcher.gitops.discovery import FoundBlock, WatchSet
from watcher.gitops.mirror import GitMirror
from watcher.gitops.values import DEFAULT_READING, Reading
from watcher.gitops.writer import BranchWriter, WriteOutcome
from watcher.metrics import Metrics
from watcher.tuning import (
    ABORT_REAP,
    BATCH_DELAY,
    EVENT_BATCH_DELAY,
    STOP_GRACE,
    WRITER_THREADS,
)

log = structlog.get_logger()

# An update on its way to a writer: the update, its shard, the shard's fence
# when the update was decided (None: the shard was not held then), and how long
# its batch may wait for more after it arrives.
Queued = tuple[Update, int, int | None, float]


class WriteBack:
    """Pending updates, per-branch writers and the writes in flight of one process."""

    def __init__(
        self,
        mirror: GitMirror,
        metrics: Metrics,
        interval: float,
        fence_of: Callable[[int], int | None],
        *,
        on_written: Callable[[WriteOutcome], None] | None = None,
        reading: Reading = DEFAULT_READING,
    ) -> None:
        self.mirror = mirror
        self._reading = reading
        # Told every outcome (the status board: updates a push left pending are failing).
        self._on_written = on_written
        self.metrics = metrics
        self._interval = interval
        self._batch_delay = min(BATCH_DELAY, interval / 20)
        # The shard's current fence (the membership may be replaced after start).
        self._fence_of = fence_of
        self._writers: dict[str, BranchWriter] = {}
        # Updates a failed push left behind, retried with the next batch.
        self.pending: dict[str, dict[BlockId, Update]] = defaultdict(dict)
        # Shard and fence of each pending update the daemon decided. Kept here,
        # not in the writer task, so a writer restarted after a failure has them.
        self._fences: dict[str, dict[BlockId, tuple[int, int | None]]] = defaultdict(dict)
        self._queues: dict[str, asyncio.Queue[Queued]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # The write (commit and push, in a thread) each branch has in flight.
        self._flights: dict[str, asyncio.Future[WriteOutcome]] = {}
        # Who waits for each queued block's update to land (registry events, to ack
        # their message): True once a commit with it is pushed, False when it was
        # dropped or no longer needed; still pending after a failed push.
        # Kept in queue order with their update: a write settles the futures up to its
        # own update for the block, never one queued after it (a newer value).
        self._landings: dict[BlockId, list[tuple[Update, asyncio.Future[bool]]]] = defaultdict(list)
        # Values our commits wrote since the last discovery, with the commit each
        # went on top of: block -> (edit, parent commit).
        self._written: dict[BlockId, tuple[Edit, str]] = {}
        self._supervisor: Supervisor | None = None
        self._stop: asyncio.Event | None = None
        # Every branch's write in a thread of its own, not in the default executor's
        # few threads, so that no branch's write waits for another's to end.
        self._threads = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="writer")

    # --- what our own commits wrote ------------------------------------------------------

    def as_written(self, blocks: Sequence[FoundBlock]) -> list[FoundBlock]:
        """The blocks as this process's own commits left them, newer than discovery's view.

        Checks must decide from the branch as we just left it, not as of the
        last discovery: an update decided against the older value would read
        as a person's edit and be dropped. Remembering what we wrote costs
        nothing; re-reading every branch after every commit cost most of the
        write path's time.
        """
        if not self._written:
            return list(blocks)
        current = []
        for block in blocks:
            written = self._written.get(block.id)
            if written is not None:
                edit = written[0]
                block = replace(block, raw=block.raw.with_value(edit.field, edit.new))
            current.append(block)
        return current

    def seen(self, watch: WatchSet) -> None:
        """Forget what we wrote that discovery now reads itself."""
        # What we wrote is in this watch set once its branch is no longer at the
        # commit our write went on top of (ours landed, or more did after it).
        for block, (_, parent) in list(self._written.items()):
            if watch.branches.get(block.branch) != parent:
                del self._written[block]

    # --- one batch for one branch: the path every write takes ----------------------------

    async def write(self, branch: str, batch: Sequence[Update]) -> WriteOutcome | None:
        """Commit and push ``batch`` on ``branch``; None when git failed (the batch stays
        pending). Anything but a GitError is a bug and is left to the caller's policy."""
        loop = asyncio.get_running_loop()
        flight = self._flights[branch] = asyncio.ensure_future(
            loop.run_in_executor(self._threads, self._branch_writer(branch).write, batch)
        )
        try:
            # Shielded: a writer cancelled at stop leaves the push to land or be aborted.
            outcome = await asyncio.shield(flight)
        except GitError as exc:
            self.metrics.git_push.labels("error").inc()
            report_error(self.metrics, exc, "write-back failed", branch=branch)
            return None
        self._account(branch, outcome)
        self._settle(branch, batch, outcome)
        if self._on_written is not None:
            self._on_written(outcome)
        if outcome.result == "committed" and outcome.parent is not None:
            for update in outcome.applied:
                self._written[update.block] = (update.edit, outcome.parent)
        return outcome

    def _account(self, branch: str, outcome: WriteOutcome) -> None:
        pushes = outcome.attempts
        if outcome.result == "committed":
            self.metrics.git_push.labels("ok").inc()
            pushes -= 1
        elif outcome.result == "error":
            self.metrics.git_push.labels("error").inc()
            # A push that failed is a git error, whether or not git raised one.
            self.metrics.errors.labels(GitError.stage).inc()
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

    def _settle(self, branch: str, batch: Sequence[Update], outcome: WriteOutcome) -> None:
        """Tell whoever waits on the batch's blocks: pushed, or not needed (dropped)."""
        if not self._landings:
            return
        applied = {update.block for update in outcome.applied}
        for update in batch:
            if update.block not in self.pending[branch]:
                self._land(update, update.block in applied)

    def _land(self, update: Update, landed: bool) -> None:
        waiting = self._landings.get(update.block)
        if not waiting:
            return
        last = max((i for i, (queued, _) in enumerate(waiting) if queued == update), default=-1)
        for _, future in waiting[: last + 1]:
            if not future.done():
                future.set_result(landed)
        del waiting[: last + 1]
        if not waiting:
            del self._landings[update.block]

    def _branch_writer(self, branch: str) -> BranchWriter:
        writer = self._writers.get(branch)
        if writer is None:
            writer = self._writers[branch] = BranchWriter(
                self.mirror, branch, reading=self._reading
            )
        return writer

    # --- watcher once: every branch at once ------------------------------------------------

    async def write_all(self, updates: Sequence[Update]) -> dict[str, WriteOutcome]:
        """One commit per branch for ``updates`` plus what earlier pushes left pending."""
        for update in updates:
            self.pending[update.block.branch][update.block] = update
        batches = {branch: list(u.values()) for branch, u in self.pending.items() if u}
        outcomes: dict[str, WriteOutcome] = {}

        async def one(branch: str, batch: list[Update]) -> None:
            try:
                outcome = await self.write(branch, batch)
            except Exception as exc:
                # Nothing to restart in a one-shot run: the failure is logged and
                # counted as a supervised task's would be, the other branches go
                # on, and this branch's updates stay pending.
                record_crash(self.metrics, f"writer {branch}", exc)
                return
            if outcome is not None:
                outcomes[branch] = outcome

        async with asyncio.TaskGroup() as group:
            for branch, batch in sorted(batches.items()):
                group.create_task(one(branch, batch))
        return outcomes

    # --- the daemon: one queue and one writer task per branch ------------------------------

    def start(self, supervisor: Supervisor, stop: asyncio.Event) -> None:
        """Writers start with the first update for their branch, under ``supervisor``."""
        self._supervisor = supervisor
        self._stop = stop

    def queue(
        self, update: Update, shard: int, fence: int | None, *, urgent: bool = False
    ) -> asyncio.Future[bool]:
        """Queue ``update`` for its branch's writer; the future says when it is settled:
        True once a commit carrying it is pushed, False when it was dropped (a person's
        edit won, its shard changed hands) or found already written. Cancelled when the
        process stops before then. ``urgent`` (a registry event's update): its batch
        waits at most ``EVENT_BATCH_DELAY`` for more, not the interval's batch delay."""
        landing: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._stopping():
            # No new write starts once stopping (and no new writer, which
            # nothing would end); the next run decides again.
            landing.cancel()
            return landing
        self._landings[update.block].append((update, landing))
        branch = update.block.branch
        queue = self._queues.get(branch)
        if queue is None:
            if self._supervisor is None:
                raise RuntimeError("WriteBack.start() was not called")
            queue = self._queues[branch] = asyncio.Queue()
            # Restarted on failure: one branch's bug (a values file no code
            # foresaw) must not stop the others' writes, and what the writer
            # needs (pending updates, fences, the queue) outlives the task.
            self._tasks[branch] = self._supervisor.spawn(
                f"writer {branch}", partial(self._writer, branch), on_failure="restart"
            )
        delay = min(self._batch_delay, EVENT_BATCH_DELAY) if urgent else self._batch_delay
        queue.put_nowait((update, shard, fence, delay))
        return landing

    async def _writer(self, branch: str) -> None:
        """Batch what arrives for one branch into one commit; retry what a push left pending."""
        queue = self._queues[branch]
        while not self._stopping():
            # With updates pending from a failed push, try again after an
            # interval even if nothing new arrives.
            timeout = self._interval if self.pending.get(branch) else None
            batch = self._admit(branch, await self._collect(queue, timeout))
            if not batch:
                continue
            if self._stopping():
                # Stopping: only the write already in flight may finish.
                return
            await self.write(branch, batch)
            fences = self._fences[branch]
            for block in list(fences):
                if block not in self.pending[branch]:
                    del fences[block]

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def _collect(self, queue: asyncio.Queue[Queued], wait: float | None) -> list[Queued]:
        """The first item (waiting up to ``wait``) and what follows it within the batch delay."""
        try:
            first = await asyncio.wait_for(queue.get(), wait)
        except TimeoutError:
            return []
        loop = asyncio.get_running_loop()
        items = [first]
        began = loop.time()
        # The most urgent item decides how long the batch waits for more.
        deadline = began + first[3]
        while (left := deadline - loop.time()) > 0:
            try:
                item = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                break
            items.append(item)
            deadline = min(deadline, began + item[3])
        return items

    def _admit(self, branch: str, items: list[Queued]) -> list[Update]:
        """Add ``items`` to the branch's pending updates; the batch to write now."""
        pending, fences = self.pending[branch], self._fences[branch]
        for update, shard, fence, _ in items:
            pending[update.block] = update
            fences[update.block] = (shard, fence)
        # A shard lost since the update was decided: its new owner decides
        # again, with fresher facts; writing ours could undo theirs.
        for block, (shard, fence) in list(fences.items()):
            if self._fence_of(shard) != fence:
                dropped = pending.pop(block, None)
                del fences[block]
                if dropped is not None:
                    self._land(dropped, False)
        return list(pending.values())

    async def stop(self) -> None:
        """Once stop is set: the write in flight gets the grace period, then is aborted;
        the writers end and no new write starts."""
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
            await asyncio.wait(flights, timeout=ABORT_REAP)
        # A writer whose write just landed must not start another (its
        # thread would outlive the process's 10 s): new fetches and pushes
        # are refused from here on, and the writers end.
        self.mirror.abort()
        for task in self._tasks.values():
            task.cancel()
        for waiting in self._landings.values():
            for _, future in waiting:
                future.cancel()
        self._landings.clear()
        self._threads.shutdown(wait=False)
