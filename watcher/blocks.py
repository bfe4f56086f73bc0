"""The watcher's nouns: image blocks found in values files, and updates to them.

Pure data, shared by discovery, strategies, the engine and the git writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

KeyPath = tuple[str | int, ...]
Field = Literal["shasum", "overrideTag"]


@dataclass(frozen=True, order=True)
class BlockId:
    """Where a block lives: its identity is (branch, file, key path)."""

    branch: str
    file: str
    path: KeyPath

    def __str__(self) -> str:
        return f"{self.branch}:{self.file}:{format_path(self.path)}"


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


@dataclass(frozen=True)
class RawBlock:
    """An image block as read from one values file, before any interpretation.

    ``document`` is the index of the YAML document in a multi-document file;
    ``line`` is 1-based, where the block's mapping starts.
    """

    document: int
    path: KeyPath
    line: int
    repository: str
    tag: str | None
    shasum: str | None
    override_tag: str | None
    watch: Any = None  # the `watch` mapping as plain Python data, or None


@dataclass(frozen=True)
class Edit:
    """Set ``field`` of the block at (document, path) from ``old`` to ``new``.

    It carries the *meaning* of an update, so it can be re-applied on a head
    that moved: it applies only while the block still has ``repository`` and
    ``tag`` as they were when the update was decided and ``field`` still holds
    ``old`` (``None`` meaning absent or empty). Anything else means a person
    changed the block meanwhile, and the person wins.
    """

    document: int
    path: KeyPath
    field: Field
    old: str | None
    new: str
    repository: str
    tag: str | None


@dataclass(frozen=True)
class Update:
    """A decided change to one block, on its way to the branch writer."""

    block: BlockId
    edit: Edit
    image: str  # canonical image name
    strategy: str

    def describe(self) -> str:
        return f"{self.block}: {self.edit.field} {self.edit.old or '(none)'} -> {self.edit.new}"
