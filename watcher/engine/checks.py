"""Checking one image: look it up once, decide every block that follows it.

:func:`check` is the one path ``watcher once`` and the daemon's shards both
take, so a failed look-up or a bug is handled and counted the same way in
both: the image is skipped this time and the error counted in
``errors_total{stage}`` by its type; a product error is logged with its
message, anything else (a bug, an answer no check foresaw) with its traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from watcher.blocks import BlockId, Update
from watcher.engine.supervise import report_error
from watcher.errors import ImageNotFound
from watcher.gitops.discovery import FoundBlock
from watcher.metrics import Metrics
from watcher.references import ImageName
from watcher.registry.lookups import Lookups
from watcher.strategies import Change, ImageFacts, Skip, decide, to_edit

log = structlog.get_logger()


@dataclass
class Decided:
    """A daemon's check of one image, once its updates are queued: ``failed`` and
    ``missing`` as in :class:`Checked`; ``landings`` settle as the updates land
    (:meth:`WriteBack.queue`)."""

    failed: str | None = None
    missing: bool = False
    landings: list[asyncio.Future[bool]] = field(default_factory=list)


@dataclass
class Checked:
    """What one check of an image gave: updates to write, blocks left alone (skipped,
    with the reason; held, by a person's change), or why the whole image was skipped
    (``failed``). ``looked_up``: the blocks the check asked the registry for."""

    image: ImageName
    updates: list[Update] = field(default_factory=list)
    skipped: list[tuple[BlockId, str]] = field(default_factory=list)
    held: list[BlockId] = field(default_factory=list)
    failed: str | None = None
    looked_up: list[BlockId] = field(default_factory=list)
    missing: bool = False
    """Failed because the registry says the image does not exist (asking again, before
    a new push, would say the same)."""


def decide_blocks(image: ImageName, blocks: Sequence[FoundBlock], facts: ImageFacts) -> Checked:
    """Every block's decision from the image's facts (pure but for the log of skips).

    A held block's change is kept back unless its hold lets it through (a new build,
    for ``until-new-build``): :meth:`watcher.steer.holds.Steer.lets`.
    """
    checked = Checked(image, looked_up=[block.id for block in blocks])
    for block in blocks:
        decision = decide(block.raw, block.policy, facts)
        if isinstance(decision, Change) and not block.steer.lets(decision.new):
            checked.held.append(block.id)
        elif isinstance(decision, Change):
            checked.updates.append(
                Update(block.id, to_edit(block.raw, decision), str(image), block.policy.strategy)
            )
        elif isinstance(decision, Skip):
            checked.skipped.append((block.id, decision.reason))
            log.info(
                "block skipped",
                image=str(image),
                branch=block.id.branch,
                file=block.id.file,
                line=block.raw.line,
                reason=decision.reason,
            )
    return checked


async def check(
    lookups: Lookups,
    metrics: Metrics,
    image: ImageName,
    blocks: Sequence[FoundBlock],
    fresh_since: float | None = None,
    **context: Any,
) -> Checked:
    """Look ``image`` up and decide ``blocks``; never raises but for cancellation.

    ``context`` (``shard=``) goes into the log lines. Blocks that need no facts (off,
    pinned, held until released) are not looked up at all, nor are ``follow`` blocks,
    which copy another branch's value (:mod:`watcher.promotion`): an image whose every
    block is such costs no request. ``fresh_since``: see :meth:`Lookups.facts`.
    """
    blocks = [
        block for block in blocks if block.steer.needs_facts and block.policy.strategy != "follow"
    ]
    if not blocks:
        return Checked(image)
    try:
        facts, notes = await lookups.facts(image, blocks, fresh_since)
        for note in notes:
            log.info("registry answer left out", image=str(image), reason=note)
        return decide_blocks(image, blocks, facts)
    except Exception as exc:
        # A bug or an answer no check foresaw is, like a failed look-up, one
        # image skipped this time: letting it out would end every other check.
        reason = report_error(
            metrics,
            exc,
            "image skipped",
            bug="image check failed",
            level="warning",
            image=str(image),
            **context,
        )
        return Checked(
            image,
            failed=reason,
            looked_up=[block.id for block in blocks],
            missing=isinstance(exc, ImageNotFound),
        )
