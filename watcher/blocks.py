"""The watcher's nouns: image blocks found in values files, and updates to them.

Pure data, shared by discovery, strategies, the engine and the git writer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

KeyPath = tuple[str | int, ...]
Field = Literal["shasum", "overrideTag"]
"""A value the watcher writes, by its role: ``shasum`` is the digest the block's
``tag`` points at, ``overrideTag`` the tag that wins over everything. Which key
of the chart holds each role is the values reader's business; everything else
speaks of roles."""


@dataclass(frozen=True, order=True)
class BlockId:
    """Where a block lives: its identity is (branch, file, key path)."""

    branch: str
    file: str
    path: KeyPath

    def __str__(self) -> str:
        return f"{self.branch}:{self.file}:{format_path(self.path)}"

    @property
    def ref(self) -> str:
        """The block within its branch, as people name it: ``file#key.path``."""
        return block_ref(self.file, self.path)


def block_ref(file: str, path: KeyPath) -> str:
    """``apps/api/values.yaml#worker.image``: the form of ``BLOCK`` selectors and trailers."""
    return f"{file}#{format_path(path)}"


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


@dataclass(frozen=True)
class RawBlock:
    """An image block as read from one values file, before any interpretation.

    ``document`` is the index of the YAML document in a multi-document file;
    ``line`` is 1-based, where the block's mapping starts. ``repository`` is the image
    as the chart pulls it (``registry/repository`` when the block names a registry),
    ``shasum`` the digest as ``sha256:<hex>`` whichever key holds it and however the
    chart writes it.
    """

    document: int
    path: KeyPath
    line: int
    repository: str
    tag: str | None
    shasum: str | None
    override_tag: str | None
    watch: Any = None  # the `watch` mapping as plain Python data, or None
    string: bool = False
    """A ``repo:tag[@digest]`` string (``git.strings``): its tag is what tag strategies
    move, so it is also its ``overrideTag``."""

    def value(self, field: Field) -> str | None:
        """What ``field`` holds now (None: absent or empty)."""
        if field == "shasum":
            return self.shasum or None
        return (self.tag if self.string else self.override_tag) or None

    def with_value(self, field: Field, value: str | None) -> RawBlock:
        """This block with ``field`` set to ``value``, as a write would leave it."""
        if field == "shasum":
            return replace(self, shasum=value)
        if self.string:
            return replace(self, tag=value, shasum=None)
        return replace(self, override_tag=value)


@dataclass(frozen=True)
class Edit:
    """Set ``field`` of the block at (document, path) from ``old`` to ``new``.

    It carries the *meaning* of an update, so it can be re-applied on a head
    that moved: it applies only while the block still has ``repository`` and
    ``tag`` as they were when the update was decided and ``field`` still holds
    ``old`` (``None`` meaning absent or empty). Anything else means a person
    changed the block meanwhile, and the person wins. ``new`` None empties the
    field (``watcher release`` clearing a pin); the watcher itself always writes
    a value.
    """

    document: int
    path: KeyPath
    field: Field
    old: str | None
    new: str | None
    repository: str
    tag: str | None


@dataclass(frozen=True)
class Update:
    """A decided change to one block, on its way to the branch writer."""

    block: BlockId
    edit: Edit
    image: str  # canonical image name
    strategy: str
    # A promotion: the branch and commit the value was copied from (``branch@commit``).
    source: str | None = None

    def describe(self) -> str:
        edit = self.edit
        if edit.old == edit.new:  # a person's record (a release of a hold): no byte changes
            return f"{self.block}: {edit.field} stays {edit.new or '(none)'}"
        change = f"{self.block}: {edit.field} {edit.old or '(none)'} -> {edit.new or '(none)'}"
        return f"{change} (from {self.source})" if self.source else change
