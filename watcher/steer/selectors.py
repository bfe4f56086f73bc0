"""``BLOCK`` as people write it, resolved to one block of one branch.

Pure. A selector is, in this order of preference:

1. ``file#key.path``: one block exactly (``apps/api/values.yaml#worker.image``);
2. a file path: the block of that file, when it holds only one;
3. an image name, or its last path segments (``team/api``, ``api``), when one block
   on the branch follows it.

Anything else raises :class:`~watcher.errors.UsageError` (exit 2) naming the
candidates: those the selector matched when it is ambiguous, every block of the
branch when it matched none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from watcher.errors import InvalidReference, UsageError
from watcher.references import canonical_name

# An unknown selector lists the branch's blocks; past this many, it says how many more.
_LISTED = 50


@dataclass(frozen=True)
class Candidate:
    """A block a selector may name: its ref (``file#key.path``), file and image."""

    ref: str
    file: str
    image: str


def resolve(selector: str, branch: str, blocks: Sequence[Candidate]) -> Candidate:
    """The one block ``selector`` names on ``branch``; UsageError otherwise."""
    wanted = selector.strip()
    exact = [block for block in blocks if block.ref == wanted]
    if exact:
        return exact[0]
    in_file = [block for block in blocks if block.file == wanted]
    if "#" in wanted and not in_file:
        file = wanted.rpartition("#")[0]
        if any(block.file == file for block in blocks):
            listed = [block for block in blocks if block.file == file]
            raise UsageError(_unknown(wanted, branch, listed, f"the blocks in {file}"))
    matches = in_file or _by_image(wanted, blocks)
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(
            f"BLOCK {wanted!r} matches {len(matches)} blocks on {branch}; name one of them:\n"
            + _listing(matches)
        )
    raise UsageError(_unknown(wanted, branch, blocks, "the blocks there"))


def _by_image(wanted: str, blocks: Sequence[Candidate]) -> list[Candidate]:
    try:
        full = str(canonical_name(wanted))
    except InvalidReference:
        full = None
    suffix = "/" + wanted.strip("/")
    return [
        block
        for block in blocks
        if block.image == full or block.image == wanted or block.image.endswith(suffix)
    ]


def _unknown(wanted: str, branch: str, listed: Sequence[Candidate], which: str) -> str:
    if not listed:
        return f"no block on {branch} matches {wanted!r}, and {branch} has no image blocks"
    return f"no block on {branch} matches {wanted!r}; {which}:\n" + _listing(listed)


def _listing(blocks: Sequence[Candidate]) -> str:
    width = max(len(block.ref) for block in blocks[:_LISTED])
    lines = [f"  {block.ref:<{width}}  {block.image}" for block in blocks[:_LISTED]]
    if len(blocks) > _LISTED:
        lines.append(f"  ... and {len(blocks) - _LISTED} more (watcher status --branch ...)")
    return "\n".join(lines)
