"""Checking one image: look it up once, decide every block that follows it.

:func:`check` is the one path ``watcher once`` and the daemon's shards both
take, so a failed look-up or a bug is handled and counted the same way in
both: the image is skipped this time and the error counted in
``errors_total{stage}`` by its type; a product error is logged with its
message, anything else (a bug, an answer no check foresaw) with its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from watcher.blocks import BlockId, Update
from watcher.engine.supervise import report_error
from watcher.gitops.discovery import FoundBlock
from watcher.metrics import Metrics
from watcher.references import ImageName
from watcher.registry.lookups import Lookups
from watcher.strategies import Change, ImageFacts, Skip, decide, to_edit

log = structlog.get_logger()


@dataclass
class Checked:
    """What one check of an image gave: updates to write and blocks left alone, or why
    the whole image was skipped (``failed``)."""

    image: ImageName
    updates: list[Update] = field(default_factory=list)
    skipped: list[tuple[BlockId, str]] = field(default_factory=list)
    failed: str | None = None


def decide_blocks(image: ImageName, blocks: Sequence[FoundBlock], facts: ImageFacts) -> Checked:
    """Every block's decision from the image's facts (pure but for the log of skips)."""
    checked = Checked(image)
    for block in blocks:
        decision = decide(block.raw, block.policy, facts)
        if isinstance(decision, Change):
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
    **context: Any,
) -> Checked:
    """Look ``image`` up and decide ``blocks``; never raises but for cancellation.

    ``context`` (``shard=``) goes into the log lines.
    """
    try:
        facts, notes = await lookups.facts(image, blocks)
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
        return Checked(image, failed=reason)
