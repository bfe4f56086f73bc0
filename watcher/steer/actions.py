"""What each of the people's commands changes: pin, release, rollback, as a plan.

Pure. A :class:`Plan` is the edits to make (each carrying its meaning, so the
branch writer re-applies it on a head that moved, or finds the block changed and
refuses), the trailers that record it (:mod:`watcher.steer.trailers`) and the
commit message. A plan is always committed, even when no byte of the file
changes (a release of a hold, a rollback to the value the block has): the
commit is the record holds are derived from. Its edits are then preconditions,
"the field still holds this": a block a person changed meanwhile stops the
command instead of being overwritten.

- ``pin TAG``: ``overrideTag: TAG``, and the block is pinned until released (for
  every strategy: on a tag strategy, the mark keeps the watcher off it).
- ``release``: a digest block's pin is cleared (``overrideTag`` emptied); a
  hold, or a tag strategy's pin, ends with the release mark alone. The watcher
  follows again at its next check.
- ``rollback [--to VALUE]``: the managed field goes back to the value before the
  current one (or VALUE), held (``watch.holds`` says until when).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from watcher.blocks import Edit, Field, Update
from watcher.errors import UsageError
from watcher.gitops.discovery import FoundBlock
from watcher.references import is_digest, is_tag
from watcher.steer import trailers
from watcher.steer.status import short
from watcher.steer.trailers import Action, Mark


@dataclass(frozen=True)
class Plan:
    """What to commit (``updates`` and ``marks``), or ``already``: nothing to do, and why."""

    action: Action
    updates: tuple[Update, ...] = ()
    marks: tuple[Mark, ...] = ()
    summary: str = ""
    already: str | None = None

    def message(self, applied: Sequence[Update]) -> str:
        """The commit message: what changed (as the watcher's own commits say it), and
        the trailers that record it."""
        return trailers.message(
            f"watcher {self.summary}", [f"- {update.describe()}" for update in applied], self.marks
        )


def _update(block: FoundBlock, field: Field, new: str | None) -> Update:
    raw = block.raw
    edit = Edit(raw.document, raw.path, field, raw.value(field), new, raw.repository, raw.tag)
    return Update(block.id, edit, str(block.image), block.policy.strategy)


def pin(block: FoundBlock, tag: str) -> Plan:
    if not is_tag(tag):
        raise UsageError(
            f"TAG {tag!r} is not a valid tag ([A-Za-z0-9_][A-Za-z0-9._-], at most 128)"
        )
    steer, ref = block.steer, block.id.ref
    if block.raw.string and block.policy.field == "shasum":
        raise UsageError(
            f"{ref} is a repo:tag string following its tag's digest: it has no overrideTag "
            "to pin; change its tag by hand, or `watcher rollback` its digest"
        )
    if steer.state == "pinned" and block.raw.override_tag == tag:
        return Plan("pin", already=f"{ref} is already pinned to {tag}")
    return Plan(
        "pin",
        (_update(block, "overrideTag", tag),),
        (Mark("pin", ref, "overrideTag", tag),),
        f"pin {ref} to {tag}",
    )


def release(block: FoundBlock) -> Plan:
    steer, ref, raw = block.steer, block.id.ref, block.raw
    if steer.state in ("following", "off"):
        return Plan("release", already=f"{ref} has no pin and no hold: it is {steer.state}")
    managed = _managed(block)
    assert managed is not None  # pinned and held blocks have a strategy that writes
    if managed == "shasum" and raw.override_tag:
        # A digest block's pin is its overrideTag: cleared, the block follows its tag.
        return Plan(
            "release",
            (_update(block, "overrideTag", None),),
            (Mark("release", ref, "shasum", raw.value("shasum")),),
            f"release {ref} (pinned to {raw.override_tag})",
        )
    value = raw.value(managed)
    return Plan(
        "release",
        (_update(block, managed, value),),
        (Mark("release", ref, managed, value),),
        f"release {ref} ({steer.state} at {managed} {short(value)})",
    )


def rollback(block: FoundBlock, to: str | None, earlier: Sequence[str | None]) -> Plan:
    """``earlier``: the values the managed field had before, newest first (from history)."""
    steer, ref, raw = block.steer, block.id.ref, block.raw
    managed = _managed(block)
    if managed is None:
        raise UsageError(
            f"{ref} has watch.strategy off: the watcher does not manage it, so there is "
            "nothing to hold; edit it by hand"
        )
    if managed == "shasum" and raw.override_tag:
        raise UsageError(
            f"{ref} is pinned by overrideTag {raw.override_tag}, which wins over shasum: "
            "`watcher pin` another tag, or `watcher release` it first"
        )
    current = raw.value(managed)
    if to is not None:
        valid = is_digest(to) if managed == "shasum" else is_tag(to)
        if not valid:
            kind = "a digest (sha256:<64 hex>)" if managed == "shasum" else "a valid tag"
            raise UsageError(f"--to {to!r}: {ref}'s {managed} takes {kind}")
        target: str | None = to
    else:
        target = next((value for value in earlier if value != current and value), None)
        if target is None:
            raise UsageError(
                f"{ref}: its history holds no earlier {managed} than {current or '(none)'}; "
                "name one with --to"
            )
    rolled_back = steer.event is not None and steer.event.mark.action == "rollback"
    if steer.state == "held" and current == target and rolled_back:
        return Plan("rollback", already=f"{ref} is already held at {target}")
    return Plan(
        "rollback",
        (_update(block, managed, target),),
        (Mark("rollback", ref, managed, target),),
        f"rollback {ref} to {short(target)} (from {short(current)}), held",
    )


def _managed(block: FoundBlock) -> Field | None:
    """The field the watcher manages on the block: a follower's is its source's."""
    origin = block.origin
    if origin is not None and origin.field is not None:
        return origin.field
    return block.policy.field
