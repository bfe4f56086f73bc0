"""The status board: what the status page, ``/status.json`` and ``blocks{state}`` show.

The daemon's view of every block: its state from git (the last watch set, holds
applied by :mod:`watcher.gitops.steering`) and what this process's checks and
writes met (``failing``, with the reason). Holds are logged here, once each: when
a block becomes held (``block held``) and when it follows again (``hold ended``).

Each replica checks only the shards it owns, so it knows the failures of those
shards only, and counts only their blocks in ``image_watcher_blocks{state}``:
summed over replicas, the gauge is every block once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import structlog

from watcher.blocks import BlockId, format_path
from watcher.cluster.shards import shard_of
from watcher.config import Config
from watcher.engine.checks import Checked
from watcher.gitops.discovery import FoundBlock, WatchSet
from watcher.gitops.writer import WriteOutcome
from watcher.metrics import Metrics
from watcher.steer.status import STATUS_STATES, BudgetUse, Status, build, state_of

log = structlog.get_logger()

Owned = Callable[[], frozenset[int]]
Used = Callable[[str], int]


class StatusBoard:
    def __init__(self, config: Config, metrics: Metrics, owned: Owned, used: Used) -> None:
        self._config = config
        self._metrics = metrics
        self._owned = owned
        self._used = used
        self.watch = WatchSet()
        self.failures: dict[BlockId, str] = {}
        self._held: set[BlockId] = set()

    # --- what happened -------------------------------------------------------------

    def discovered(self, watch: WatchSet) -> None:
        """A new watch set: log the holds that began or ended, recount the gauge."""
        self.watch = watch
        mine = list(self._mine(watch))
        present = {block.id for block in mine}
        for block_id in list(self.failures):
            if block_id not in present:
                del self.failures[block_id]
        held: set[BlockId] = set()
        for block in mine:
            if block.steer.state == "held":
                held.add(block.id)
                if block.id not in self._held:
                    self._log_hold(block)
            elif block.id in self._held:
                log.info(
                    "hold ended",
                    branch=block.id.branch,
                    file=block.id.file,
                    block=format_path(block.id.path),
                    image=str(block.image),
                    state=block.steer.state,
                )
        self._held = held
        self._count(mine)

    def checked(self, checked: Checked) -> None:
        """What one check met: the blocks it looked up fail or stop failing."""
        for block_id in checked.looked_up:
            self.failures.pop(block_id, None)
        if checked.failed is not None:
            for block_id in checked.looked_up:
                self.failures[block_id] = f"image look-up failed: {checked.failed}"
        for block_id, reason in checked.skipped:
            self.failures[block_id] = reason

    def promoted(self, watch: WatchSet, reasons: dict[BlockId, str]) -> None:
        """What deciding the follow blocks met: ``reasons``, why each failing one cannot
        follow (no source, a mistake in its configuration)."""
        changed = bool(reasons)
        for blocks in watch.images.values():
            for block in blocks:
                if block.origin is not None and self.failures.pop(block.id, None) is not None:
                    changed = True
        self.failures.update(reasons)
        if changed:  # without followers failing, the count discovery made stands
            self._count(list(self._mine(self.watch)))

    def written(self, outcome: WriteOutcome) -> None:
        """What one write met: updates left pending by a failed push are failing."""
        for update in (*outcome.applied, *(d.update for d in outcome.dropped)):
            self.failures.pop(update.block, None)
        if outcome.result in ("error", "conflict"):
            for update in outcome.pending:
                self.failures[update.block] = (
                    f"not written yet ({outcome.result}): {outcome.message}"
                )

    # --- what it shows -------------------------------------------------------------

    def status(self) -> Status:
        watch = self.watch
        blocks = [block for blocks in watch.images.values() for block in blocks]
        owned = self._owned()
        notes = []
        if not watch.branches:
            notes.append("No environment branch read yet: the first discovery is under way.")
        if len(owned) < self._config.shards:
            notes.append(
                f"Failures are those of the {len(owned)} of {self._config.shards} shards "
                "this replica owns; held, pinned and off come from git and are complete."
            )
        return build(
            watch.branches,
            blocks,
            watch.problems,
            self.failures,
            budgets=self.budgets(),
            source="daemon",
            notes=notes,
        )

    def budgets(self) -> list[BudgetUse]:
        return [
            BudgetUse(limit.name, self._used(limit.name), limit.cap, limit.per)
            for limit in self._config.limits.values()
        ]

    # --- the parts -------------------------------------------------------------------

    def _mine(self, watch: WatchSet) -> Iterable[FoundBlock]:
        owned = self._owned()
        for image, blocks in watch.images.items():
            if shard_of(image, self._config.shards) in owned:
                yield from blocks

    def _count(self, mine: list[FoundBlock]) -> None:
        counts = dict.fromkeys(STATUS_STATES, 0)
        for block in mine:
            counts[state_of(block, block.id in self.failures)] += 1
        for state, count in counts.items():
            self._metrics.blocks.labels(state).set(count)

    def _log_hold(self, block: FoundBlock) -> None:
        steer = block.steer
        log.info(
            "block held",
            branch=block.id.branch,
            file=block.id.file,
            block=format_path(block.id.path),
            image=str(block.image),
            field=steer.field,
            value=steer.value,
            replaced=steer.replaced,
            holds=steer.holds,
            by=steer.changed.author if steer.changed is not None else None,
            commit=steer.changed.commit if steer.changed is not None else None,
        )
