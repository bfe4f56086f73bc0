"""Holds: each block's state, from what the watcher wrote and what the branch holds now.

Pure. :func:`fold` reads a branch's commits (newest first, each with its trailers,
:mod:`watcher.steer.trailers`) into a :data:`Book`: per block, the newest mark on
each field and the newest value the watcher itself wrote. :func:`derive` then gives
a block's :class:`Steer` from the book and the block as it reads now:

- ``off``: ``watch.strategy: off``; the watcher never touches it.
- ``pinned``: a digest block with a non-empty ``overrideTag`` (a person's pin,
  however it was written), or a block whose newest mark is ``watcher pin``; it stays
  until ``watcher release``.
- ``held``: the managed value is no longer the one the watcher last wrote, and the
  change was not a release: a ``git revert`` of its commit, a hand edit,
  ``watcher rollback``. With ``until-new-build`` (the default) the watcher follows
  again once the followed tag points at a build that is neither the held value nor
  the one it replaced; with ``until-released``, only after ``watcher release``.
- ``following``: everything else, including every block the watcher never wrote
  (a block seeded by hand is followed, as it always was).

The same history gives the same states on every replica and after any restart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from watcher.blocks import Field, RawBlock
from watcher.config import Holds
from watcher.steer.trailers import Action, Mark
from watcher.strategies import Policy

State = Literal["following", "pinned", "held", "off"]
STATES: tuple[State, ...] = get_args(State)


@dataclass(frozen=True)
class Stamp:
    """A commit as people see it: which, by whom (``Name <email>``), when (Unix seconds)."""

    commit: str
    author: str
    time: int


@dataclass(frozen=True)
class Logged:
    """One commit of a branch's history with the marks its trailers carry."""

    stamp: Stamp
    marks: tuple[Mark, ...] = ()


@dataclass(frozen=True)
class Event:
    """A mark and the commit that carries it."""

    mark: Mark
    stamp: Stamp


@dataclass
class BlockMarks:
    """What a branch's history says of one block."""

    latest: dict[Field, Event] = field(default_factory=dict)  # newest mark per field
    written: dict[Field, Event] = field(default_factory=dict)  # newest `set` per field


Book = dict[str, BlockMarks]
"""Block ref (``file#key.path``) -> its marks, for one branch."""


def fold(commits: Iterable[Logged], book: Book | None = None) -> Book:
    """Add ``commits`` (newest first, all newer than what ``book`` holds) to ``book``."""
    book = {} if book is None else book
    for logged in reversed(list(commits)):
        for mark in logged.marks:
            marks = book.setdefault(mark.ref, BlockMarks())
            event = Event(mark, logged.stamp)
            marks.latest[mark.field] = event
            if mark.action == "set":
                marks.written[mark.field] = event
    return book


@dataclass(frozen=True)
class Steer:
    """A block's state, and what the watcher may do with it.

    ``value``: the value that explains the state (the pin's tag when pinned, else the
    managed field's value). ``replaced``: for a hold, the watcher's value the person's
    change replaced. ``event``: the mark behind the value now, when one is (None for a
    change made without a trailer: an edit or a revert). ``changed``: when the value
    now was set and by whom, once known (from ``event``, or found in the file's history).
    """

    state: State
    field: Field | None
    value: str | None = None
    holds: Holds | None = None
    replaced: str | None = None
    event: Event | None = None
    changed: Stamp | None = None

    @property
    def needs_facts(self) -> bool:
        """Whether deciding this block needs the registry at all: a pin, a block held
        until released and an ``off`` block cost no request."""
        return self.state == "following" or (
            self.state == "held" and self.holds == "until-new-build"
        )

    def lets(self, new: str) -> bool:
        """Whether the watcher may write ``new`` into the managed field."""
        if self.state == "following":
            return True
        if self.state == "held" and self.holds == "until-new-build":
            return new not in (self.value, self.replaced)
        return False

    @property
    def action(self) -> Action | Literal["edit"] | None:
        """What set the value now: a mark's action, ``edit`` (a change without one), or
        None when the block has no history the watcher knows of."""
        if self.event is not None:
            return self.event.mark.action
        return "edit" if self.state in ("held", "pinned") else None


FOLLOWING = Steer("following", None)


def derive(
    raw: RawBlock, policy: Policy, marks: BlockMarks | None, field: Field | None = None
) -> Steer:
    """The block's state from its marks and its values now.

    ``field``: the value a ``follow`` block copies this time (its source's), when
    that is not its policy's own."""
    managed = field or policy.field
    if managed is None:
        return Steer("off", None)
    marks = marks or BlockMarks()
    if managed == "shasum" and raw.override_tag and not _copied(policy, marks, raw.override_tag):
        return _explained(Steer("pinned", "overrideTag", raw.override_tag), marks)
    if managed == "shasum" and raw.override_tag:
        # A follower whose source dropped its overrideTag: the watcher's own copy,
        # not a person's pin, which the follower clears.
        return _explained(Steer("following", "overrideTag", raw.override_tag), marks)
    now = raw.value(managed)
    latest = marks.latest.get(managed)
    if latest is None:
        return Steer("following", managed, now)
    written = marks.written.get(managed)
    replaced = written.mark.value if written is not None else None
    action = latest.mark.action
    if action == "pin":
        steer = Steer("pinned", managed, now)
    elif action == "rollback" or (action in ("set", "release") and now != latest.mark.value):
        # The watcher's last value, else (a rollback before it ever wrote) the value a
        # `set` or `release` mark left, which the change replaced.
        if replaced is None and action != "rollback":
            replaced = latest.mark.value
        steer = Steer("held", managed, now, policy.holds, replaced)
    else:
        steer = Steer("following", managed, now)
    return _explained(steer, marks)


def _copied(policy: Policy, marks: BlockMarks, value: str) -> bool:
    """Whether a follower's ``overrideTag`` is the watcher's copy of its source's."""
    latest = marks.latest.get("overrideTag")
    return (
        policy.strategy == "follow"
        and latest is not None
        and latest.mark.action == "set"
        and latest.mark.value == value
    )


def _explained(steer: Steer, marks: BlockMarks) -> Steer:
    """With the mark behind the value now, when there is one."""
    assert steer.field is not None
    latest = marks.latest.get(steer.field)
    if latest is None or latest.mark.value != steer.value:
        return steer
    return replace(steer, event=latest, changed=latest.stamp)


def with_changed(steer: Steer, changed: Stamp | None) -> Steer:
    """``steer`` with the change behind its value, found in the file's history."""
    if changed is None or steer.changed is not None:
        return steer
    return replace(steer, changed=changed)


def counts(steers: Iterable[Steer]) -> Mapping[State, int]:
    """Blocks by state, every state present (for the ``blocks{state}`` gauge)."""
    out: dict[State, int] = dict.fromkeys(STATES, 0)
    for steer in steers:
        out[steer.state] += 1
    return out
