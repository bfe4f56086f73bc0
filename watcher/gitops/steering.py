"""Each block's state from its branch's history: the watch set with holds applied.

Blocking (git); the engine runs it with discovery, in a thread. :class:`Steering`
keeps one :class:`~watcher.gitops.history.Ledger` (every branch's marks, read once
per new head) and gives every discovered block its
:class:`~watcher.steer.holds.Steer`. For the few held and pinned blocks whose value
no trailer explains (a revert, a hand edit), it looks up the commit that set it,
once per value.

A follow block's state is derived for the field its source holds (its ``overrideTag``
or its ``shasum``), and its :class:`~watcher.promotion.Origin` gets the commit that
put the value on the source branch (``since``), from the source's own marks or, for
a value no trailer explains, one bounded ``git log`` once per value.
"""

from __future__ import annotations

from dataclasses import replace

from watcher.blocks import BlockId
from watcher.gitops.discovery import FoundBlock, WatchSet
from watcher.gitops.history import Ledger, last_change
from watcher.gitops.mirror import GitMirror
from watcher.gitops.values import DEFAULT_READING, Reading
from watcher.references import ImageName
from watcher.steer.holds import Book, Stamp, Steer, derive, with_changed

# (block, field, value, the newest mark's commit or None) -> the commit that set the value.
_ChangeKey = tuple[BlockId, str, str | None, str | None]


class Steering:
    """Applies holds to watch sets (one per process, kept between discoveries)."""

    def __init__(self, mirror: GitMirror, reading: Reading = DEFAULT_READING) -> None:
        self._mirror = mirror
        self._reading = reading
        self.ledger = Ledger(mirror)
        self._changed: dict[_ChangeKey, Stamp | None] = {}
        self._last: tuple[dict[str, str], WatchSet] | None = None

    def apply(self, watch: WatchSet) -> WatchSet:
        """``watch`` with every block's steer derived from its branch at its head."""
        if self._last is not None and self._last[0] == watch.branches:
            # No branch moved: the same states (discovery's blocks are the same too).
            done = self._last[1]
            return WatchSet(dict(watch.branches), dict(done.images), list(watch.problems))
        books = {branch: self.ledger.book(branch, head) for branch, head in watch.branches.items()}
        self.ledger.forget(list(watch.branches))
        seen: set[_ChangeKey] = set()
        images = {
            image: [self.steer(block, books, watch.branches, seen) for block in blocks]
            for image, blocks in watch.images.items()
        }
        images = self._with_since(images, watch.branches, seen)
        for key in self._changed.keys() - seen:
            del self._changed[key]
        done = WatchSet(dict(watch.branches), images, list(watch.problems))
        self._last = (dict(watch.branches), done)
        return WatchSet(dict(watch.branches), dict(images), list(watch.problems))

    def steer(
        self,
        block: FoundBlock,
        books: dict[str, Book],
        heads: dict[str, str],
        seen: set[_ChangeKey] | None = None,
    ) -> FoundBlock:
        """One block with its steer (``books``/``heads``: its branch's marks and head)."""
        book = books.get(block.id.branch, {})
        copies = block.origin.field if block.origin is not None else None
        steer = derive(block.raw, block.policy, book.get(block.id.ref), copies)
        if steer.changed is None and steer.state in ("held", "pinned"):
            steer = self._with_change(block, steer, heads[block.id.branch], book, seen)
        return replace(block, steer=steer)

    def _with_since(
        self,
        images: dict[ImageName, list[FoundBlock]],
        heads: dict[str, str],
        seen: set[_ChangeKey],
    ) -> dict[ImageName, list[FoundBlock]]:
        """Each follow block with the commit that put its source's value there."""
        by_id = {block.id: block for blocks in images.values() for block in blocks}
        out: dict[ImageName, list[FoundBlock]] = {}
        for image, blocks in images.items():
            out[image] = [self._since(block, by_id, heads, seen) for block in blocks]
        return out

    def _since(
        self,
        block: FoundBlock,
        by_id: dict[BlockId, FoundBlock],
        heads: dict[str, str],
        seen: set[_ChangeKey],
    ) -> FoundBlock:
        origin = block.origin
        if origin is None or origin.block is None or origin.field is None:
            return block
        source = by_id.get(origin.block)
        if source is None:
            return block
        steer = source.steer
        if steer.field == origin.field and steer.value == origin.value and steer.changed:
            since: Stamp | None = steer.changed
        else:
            key: _ChangeKey = (source.id, origin.field, origin.value, None)
            seen.add(key)
            if key not in self._changed:
                self._changed[key] = last_change(
                    self._mirror,
                    heads[source.id.branch],
                    source.id.file,
                    source.id.path,
                    origin.field,
                )
            since = self._changed[key]
        return replace(block, origin=replace(origin, since=since))

    def _with_change(
        self,
        block: FoundBlock,
        steer: Steer,
        head: str,
        book: Book,
        seen: set[_ChangeKey] | None,
    ) -> Steer:
        assert steer.field is not None
        marks = book.get(block.id.ref)
        latest = marks.latest.get(steer.field) if marks is not None else None
        since = latest.stamp.commit if latest is not None else None
        key: _ChangeKey = (block.id, steer.field, steer.value, since)
        if seen is not None:
            seen.add(key)
        if key not in self._changed:
            self._changed[key] = last_change(
                self._mirror,
                head,
                block.id.file,
                block.id.path,
                steer.field,
                since=since,
                reading=self._reading,
            )
        return with_changed(steer, self._changed[key])
