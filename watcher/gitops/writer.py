"""The branch writer: one commit per batch of updates on one environment branch.

Blocking; the engine runs :meth:`BranchWriter.write` in a thread. Each
update carries its *meaning* (an :class:`~watcher.blocks.Edit`), so on a
push that lost the race the writer fetches, re-applies every update on the
new head (a person's change made meanwhile wins), and pushes again without
force, with jittered back-off, alone. A first push goes out together with the
pushes other branches' writers make at the same time (:mod:`watcher.gitops.push`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from watcher.blocks import Update
from watcher.config import Author
from watcher.errors import GitError
from watcher.gitops import values
from watcher.gitops.mirror import GitMirror
from watcher.gitops.profile import STAGES
from watcher.steer import trailers
from watcher.steer.trailers import Mark

Result = Literal["committed", "unchanged", "conflict", "error"]


@dataclass(frozen=True)
class Dropped:
    """An update that will not be written, and why (usually: a person changed the block)."""

    update: Update
    reason: str


@dataclass(frozen=True)
class WriteOutcome:
    """What one ``BranchWriter.write`` did.

    ``committed``: ``commit`` is on the branch with every ``applied`` update;
    ``unchanged``: nothing to commit; ``conflict``: the branch kept moving through every
    attempt; ``error``: the push failed otherwise. ``pending`` updates were not written
    and may be retried next cycle; ``dropped`` ones must not be.
    """

    result: Result
    commit: str | None = None
    applied: tuple[Update, ...] = ()
    dropped: tuple[Dropped, ...] = ()
    pending: tuple[Update, ...] = ()
    attempts: int = 0
    message: str = ""
    parent: str | None = field(default=None, compare=False)


class BranchWriter:
    """Writes batches of updates to one environment branch, one commit per batch."""

    def __init__(
        self,
        mirror: GitMirror,
        branch: str,
        *,
        attempts: int = 5,
        backoff: float = 0.2,
        reading: values.Reading = values.DEFAULT_READING,
    ) -> None:
        self.mirror = mirror
        self.reading = reading
        self.branch = branch
        self.attempts = max(1, attempts)
        self.backoff = backoff

    def write(
        self,
        updates: Sequence[Update],
        *,
        message: Callable[[Sequence[Update]], str] | None = None,
        author: Author | None = None,
        record: bool = False,
    ) -> WriteOutcome:
        """Apply the meaning of ``updates`` on the branch head and push; retry on conflict.

        The watcher's own batches take the defaults. A person's command passes its
        ``message`` (made from the updates that apply), its ``author``, and ``record``:
        commit even when no byte changes (the commit is the record, its trailers what
        holds are read from), provided every update still means what it meant (applies,
        or is in place already); a block changed meanwhile drops it, and then nothing is
        committed.
        """
        todo = [u for u in updates if u.block.branch == self.branch]
        dropped = [
            Dropped(u, f"belongs to branch {u.block.branch}, not {self.branch}")
            for u in updates
            if u.block.branch != self.branch
        ]
        if not todo:
            return WriteOutcome("unchanged", dropped=tuple(dropped))
        last = ""
        for attempt in range(1, self.attempts + 1):
            try:
                if attempt > 1:
                    self.mirror.fetch()
                head = self.mirror.head(self.branch)
            except GitError as exc:
                return self._outcome("error", todo, dropped, attempt, str(exc))
            if head is None:
                return self._outcome(
                    "error", todo, dropped, attempt, f"branch {self.branch} is not on the remote"
                )
            try:
                with STAGES.time("edits"):
                    changes, todo, newly_dropped = self._apply(head, todo, record)
            except GitError as exc:
                return self._outcome("error", todo, dropped, attempt, str(exc))
            dropped.extend(newly_dropped)
            if not changes and not (record and todo and not newly_dropped):
                return WriteOutcome(
                    "unchanged", dropped=tuple(dropped), attempts=attempt, parent=head
                )
            text = (message or self._message)(todo)
            # A retry goes alone: it must not wait for other branches' pushes.
            pushed = self.mirror.commit_and_push(
                self.branch, head, changes, text, alone=attempt > 1, author=author
            )
            if pushed.result == "ok":
                return WriteOutcome(
                    "committed",
                    commit=pushed.commit,
                    applied=tuple(todo),
                    dropped=tuple(dropped),
                    attempts=attempt,
                    parent=head,
                )
            if pushed.result == "error":
                return self._outcome("error", todo, dropped, attempt, pushed.message)
            last = pushed.message
            if attempt < self.attempts:
                # Jittered so that writers racing for one branch do not retry in lockstep.
                time.sleep(self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
        return self._outcome("conflict", todo, dropped, self.attempts, last)

    @staticmethod
    def _outcome(
        result: Result, pending: list[Update], dropped: list[Dropped], attempts: int, message: str
    ) -> WriteOutcome:
        return WriteOutcome(
            result,
            pending=tuple(pending),
            dropped=tuple(dropped),
            attempts=attempts,
            message=message,
        )

    def _apply(
        self, head: str, updates: list[Update], keep_already: bool = False
    ) -> tuple[dict[str, bytes], list[Update], list[Dropped]]:
        """The new file contents at ``head``, the updates they carry, and those dropped
        (``keep_already``: an update already in place counts as carried)."""
        by_file: dict[str, list[Update]] = {}
        for update in updates:
            by_file.setdefault(update.block.file, []).append(update)
        changes: dict[str, bytes] = {}
        applied: list[Update] = []
        dropped: list[Dropped] = []
        files = self.mirror.read_files(head, list(by_file))
        for path, group in by_file.items():
            data = files.get(path)
            if data is None:
                dropped.extend(Dropped(u, f"{path} no longer exists") for u in group)
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                dropped.extend(Dropped(u, f"{path} is not UTF-8 text") for u in group)
                continue
            new_text, results = values.apply_edits(
                text, [u.edit for u in group], reading=self.reading
            )
            for update, result in zip(group, results, strict=True):
                if result.applied or (keep_already and result.status == "already"):
                    applied.append(update)
                elif result.status == "already":
                    dropped.append(Dropped(update, f"already {update.edit.new}"))
                else:
                    dropped.append(Dropped(update, result.reason))
            if new_text != text:
                changes[path] = new_text.encode("utf-8")
        return changes, applied, dropped

    def _message(self, applied: Sequence[Update]) -> str:
        # The trailers are what holds are derived from (watcher.steer.trailers): what
        # the watcher itself last wrote into each block.
        return trailers.message(
            f"image-watcher: update {len(applied)} image(s) on {self.branch}",
            [f"- {update.describe()}" for update in applied],
            [
                Mark("set", update.block.ref, update.edit.field, update.edit.new)
                for update in applied
            ],
            # Promotions name the source branch and commit of every value they copied.
            [
                trailers.source_line(update.block.ref, update.source)
                for update in applied
                if update.source
            ],
        )
