"""Promotion: blocks that follow the same block on another environment branch.

Pure: no I/O. A ``follow`` block (``watch: {strategy: follow, from: BRANCH}``, or
any block without a ``watch.strategy`` of its own on a branch a ``promotions:``
rule covers) copies the value its *source* holds: the block with the same file
and key path on ``from``, else the one block there that follows the same image.
It copies ``overrideTag`` when the source has one and ``shasum`` otherwise,
exactly as written there, so the chart renders the same image. No registry is
asked: discovery already read every branch.

- :func:`link` runs on every new watch set: each follow block gets its
  :class:`Origin` (the source block and the value it holds now), and the
  mistakes that no later commit can fix are returned as problems with the
  block: a ``from`` naming the block's own branch, a ``from`` that is no
  environment branch, and cycles. A source that is merely absent for now is
  not a problem, only a reason the block waits.
- :func:`promote` decides one follow block at a given time: the update that
  copies its source's value, or why nothing is written (up to date, waiting for
  ``after``, pinned or held by a person, no source yet).

``after`` counts from the commit that put the value on the source branch
(:attr:`Origin.since`, found in git by :mod:`watcher.gitops.steering`). When no
such commit is known (the value is older than the file history that is read),
the value has stood long enough.

A follower is decided at each discovery, against the branches as that discovery
read them: a value the watcher writes to a source reaches its followers at the
next discovery, so a chain converges within one interval per link.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from watcher.blocks import BlockId, Edit, Field, Update
from watcher.config import format_duration
from watcher.references import is_digest, is_tag
from watcher.steer.holds import Stamp

if TYPE_CHECKING:  # discovery imports this module; only its nouns are needed here
    from watcher.gitops.discovery import FoundBlock


@dataclass(frozen=True)
class Origin:
    """Where a follow block's value comes from, as the last discovery read it.

    ``branch``: the ``from`` branch, at commit ``head``. ``block``: the source block
    (None: none found, ``missing`` says why). ``field``/``value``: what the source
    holds now (``overrideTag`` when it has one, else ``shasum``; None: neither).
    ``since``: the commit that put ``value`` there, once known. ``problem``: a
    mistake in the configuration; the block is skipped until it is fixed.
    """

    branch: str
    after: float = 0.0
    head: str = ""
    block: BlockId | None = None
    field: Field | None = None
    value: str | None = None
    since: Stamp | None = None
    problem: str | None = None
    missing: str | None = None

    @property
    def commit(self) -> str:
        """The source commit a promotion names: the one that set the value, else the head."""
        return self.since.commit if self.since is not None else self.head

    def describe(self) -> str:
        """``environment/staging@<commit>``: the source as commit messages name it."""
        return f"{self.branch}@{self.commit}" if self.commit else self.branch


def rendered(block: FoundBlock) -> tuple[Field, str] | None:
    """The value a chart renders the block's image with: its ``overrideTag`` when it has
    one, else its ``shasum``; None when it has neither (the chart falls back to ``tag``)."""
    if block.raw.override_tag:
        return ("overrideTag", block.raw.override_tag)
    if block.raw.shasum:
        return ("shasum", block.raw.shasum)
    return None


def link(
    blocks: Iterable[FoundBlock], branches: Mapping[str, str]
) -> tuple[list[FoundBlock], list[tuple[FoundBlock, str]]]:
    """Every block, each follow block with its :class:`Origin`; and the problems, each
    with the block it concerns (``branches``: every environment branch -> its head)."""
    every = list(blocks)
    by_place: dict[tuple[str, str, tuple[str | int, ...]], FoundBlock] = {}
    by_image: dict[tuple[str, str], list[FoundBlock]] = defaultdict(list)
    for block in every:
        by_place[(block.id.branch, block.id.file, block.id.path)] = block
        by_image[(block.id.branch, str(block.image))].append(block)
    origins: dict[BlockId, Origin] = {}
    targets: dict[BlockId, BlockId] = {}
    for block in every:
        source = block.policy.source
        if block.policy.strategy != "follow" or source is None:
            continue
        origin = Origin(source, block.policy.after, branches.get(source, ""))
        if source == block.id.branch:
            origin = replace(
                origin,
                problem=f"watch.from: {source} is this block's own branch: "
                "a block cannot follow itself",
            )
        elif source not in branches:
            origin = replace(
                origin,
                problem=f"watch.from: no environment branch {source} "
                "(it must exist and match git.branches)",
            )
        else:
            found, missing = _source_of(block, source, by_place, by_image)
            origin = replace(origin, block=found.id if found else None, missing=missing)
            if found is not None:
                targets[block.id] = found.id
                value = rendered(found)
                if value is not None:
                    origin = replace(origin, field=value[0], value=value[1])
        origins[block.id] = origin
    for start, chain in _cycles(targets).items():
        path = " -> ".join(str(node.branch) for node in chain)
        origins[start] = replace(
            origins[start], problem=f"watch.from: follows a cycle: {path}", field=None, value=None
        )
    for block in every:
        made = origins.get(block.id)
        if made is not None and made.problem is not None and block.policy.rule:
            # The mistake is the rule's, not the values file's: say where to fix it.
            problem = f"{made.problem} (promotions rule at {block.policy.rule})"
            origins[block.id] = replace(made, problem=problem)
    out = [
        replace(block, origin=origins[block.id]) if block.id in origins else block
        for block in every
    ]
    problems = [
        (block, block.origin.problem)
        for block in out
        if block.origin is not None and block.origin.problem is not None
    ]
    return out, problems


def _source_of(
    block: FoundBlock,
    source: str,
    by_place: Mapping[tuple[str, str, tuple[str | int, ...]], FoundBlock],
    by_image: Mapping[tuple[str, str], list[FoundBlock]],
) -> tuple[FoundBlock | None, str | None]:
    """The same file and key path on ``source`` (following the same image); else the
    one block there following the same image (preferring one in the same file)."""
    same = by_place.get((source, block.id.file, block.id.path))
    # Only a block of the same image: another image's digest would name nothing here.
    if same is not None and same.image == block.image:
        return same, None
    image = by_image.get((source, str(block.image)), [])
    if len(image) > 1:
        image = [found for found in image if found.id.file == block.id.file] or image
    if len(image) == 1:
        return image[0], None
    if not image:
        return None, f"no block on {source} at {block.id.ref} or following {block.image}"
    names = ", ".join(found.id.ref for found in image)
    return None, f"{len(image)} blocks on {source} follow {block.image} ({names}): ambiguous"


def _cycles(targets: Mapping[BlockId, BlockId]) -> dict[BlockId, list[BlockId]]:
    """Each block whose chain of sources comes back to it, with that chain."""
    out: dict[BlockId, list[BlockId]] = {}
    for start in targets:
        chain = [start]
        seen = {start}
        node = targets[start]
        while node in targets and node not in seen:
            chain.append(node)
            seen.add(node)
            node = targets[node]
        if node == start:
            out[start] = [*chain, start]
    return out


@dataclass(frozen=True)
class Step:
    """What :func:`promote` decided for one follow block.

    ``update``: the copy to write (None: nothing to write now). ``reason``: why
    nothing is written, empty when the block is up to date or a person's steer
    explains it. ``failing``: the reason is a problem, not a wait. ``ready``: when a
    value waiting for ``after`` may be promoted (epoch seconds).
    """

    update: Update | None = None
    reason: str = ""
    failing: bool = False
    ready: float | None = None


def promote(block: FoundBlock, now: float) -> Step:
    """The copy of its source's value ``block`` needs at ``now`` (epoch seconds)."""
    origin = block.origin
    if origin is None:
        return Step()
    if origin.problem is not None:
        return Step(reason=origin.problem, failing=True)
    if origin.block is None:
        return Step(reason=origin.missing or f"no source on {origin.branch}", failing=True)
    if origin.field is None or origin.value is None:
        # The source is there but not written yet (its first look-up is to come).
        return Step(reason=f"waiting: {origin.block} has no overrideTag or shasum yet")
    steer = block.steer
    if steer.state in ("off", "pinned") or (
        steer.state == "held" and steer.holds != "until-new-build"
    ):
        return Step()
    valid = is_digest(origin.value) if origin.field == "shasum" else is_tag(origin.value)
    if not valid:
        what = "digest" if origin.field == "shasum" else "tag"
        why = f"{origin.block} holds {origin.field} {origin.value!r}: not a valid {what}"
        return Step(reason=why, failing=True)
    edit = _edit(block, origin.field, origin.value)
    if edit is None:
        return Step()
    if edit.new is not None and not steer.lets(edit.new):
        return Step()  # held: the steer says until when
    if edit.new is None and steer.state != "following":
        return Step()
    if origin.after > 0 and origin.since is not None:
        ready = origin.since.time + origin.after
        if now < ready:
            return Step(
                reason=f"waiting: {origin.field} {_short(origin.value)} on {origin.branch} is "
                f"promoted once it has stood there {format_duration(origin.after)}",
                ready=ready,
            )
    update = Update(block.id, edit, str(block.image), "follow", source=origin.describe())
    return Step(update=update)


def _edit(block: FoundBlock, field: Field, value: str) -> Edit | None:
    """The one edit that brings the block closer to rendering ``value``, or None."""
    raw = block.raw
    if field == "overrideTag":
        old, new = raw.value("overrideTag"), value
        if old == new:
            return None
    elif raw.value("shasum") != value:
        field, old, new = "shasum", raw.value("shasum"), value
    elif raw.override_tag:
        # The digest is in place; the overrideTag copied from the source earlier still
        # wins in the chart. Cleared second, so the image rendered never goes back.
        field, old, new = "overrideTag", raw.value("overrideTag"), None
    else:
        return None
    return Edit(
        document=raw.document,
        path=raw.path,
        field=field,
        old=old,
        new=new,
        repository=raw.repository,
        tag=raw.tag,
    )


def followers(blocks: Iterable[FoundBlock]) -> list[FoundBlock]:
    """The follow blocks among ``blocks``."""
    return [block for block in blocks if block.origin is not None]


def _short(value: str) -> str:
    # Imported here: the status module reads discovery's nouns, and discovery this one.
    from watcher.steer.status import short

    return short(value)
