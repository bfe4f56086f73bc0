"""Reading a values file: which mappings are image blocks, and what each block says.

Pure, over composed nodes from either composer (:mod:`~watcher.gitops.values.compose`).
:func:`block_keys` is the one place that decides which mapping is a block and
which key holds what; everything else (discovery, edits, their verification)
goes through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from watcher.blocks import KeyPath, RawBlock, format_path
from watcher.gitops.values.compose import (
    MAX_DEPTH,
    TOO_DEEP,
    ComposeError,
    Nodes,
    collector_paused,
    compose,
)
from watcher.gitops.values.scalars import INT, MERGE, NULL, STR, to_python

Composer = Callable[[str], Nodes]

# The keys a block's reading and writing use, by role. Only `repository` and `tag`
# make a mapping a block; the others are read when present.
REPOSITORY, TAG, SHASUM, OVERRIDE, WATCH = "repository", "tag", "shasum", "overrideTag", "watch"
OPTIONAL = (SHASUM, OVERRIDE, WATCH)


@dataclass(frozen=True)
class BlockProblem:
    """Something wrong in a values file, for ``watcher check`` (``line`` is 1-based)."""

    line: int
    message: str


@dataclass(frozen=True)
class Entry:
    key: ScalarNode
    value: Node
    inherited: bool  # reached through a `<<` merge key, so it lives in another mapping


@dataclass(frozen=True)
class Found:
    """A block as read, with the nodes an edit needs: its mapping and its entries by role."""

    raw: RawBlock
    node: MappingNode
    entries: dict[str, Entry]


@dataclass
class Scan:
    blocks: list[Found]
    problems: list[BlockProblem]
    merge_sources: set[int]  # ids of mappings merged into others with `<<`


def _merge_sources(node: Node) -> list[MappingNode]:
    if isinstance(node, MappingNode):
        return [node]
    if isinstance(node, SequenceNode):
        return [item for item in node.value if isinstance(item, MappingNode)]
    return []


def lookup(node: MappingNode, key: str, depth: int = 0) -> Entry | None:
    """The effective entry for ``key``: local keys win over merged ones, earlier merges win."""
    found: Entry | None = None
    merges: list[MappingNode] = []
    for k, v in node.value:
        if not isinstance(k, ScalarNode):
            continue
        if k.tag == STR and k.value == key:
            found = Entry(k, v, False)  # later duplicates win, as with go-yaml v2
        elif k.tag == MERGE:
            merges.extend(_merge_sources(v))
    if found is not None or depth > 20:
        return found
    for source in merges:
        entry = lookup(source, key, depth + 1)
        if entry is not None:
            return Entry(entry.key, entry.value, True)
    return None


def block_keys(node: MappingNode) -> dict[str, Entry] | None:
    """Whether ``node`` is an image block, and if so which key holds what, by role.

    A block is a mapping whose (possibly merged) ``repository`` is a string and which
    has a ``tag``; ``shasum``, ``overrideTag`` and ``watch`` are read when present.
    Keys resolve as :func:`lookup` says (local keys win; later duplicates win).
    """
    local: dict[str, tuple[ScalarNode, Node]] = {}
    merges: list[MappingNode] = []
    for k, v in node.value:
        if isinstance(k, ScalarNode):
            if k.tag == STR:
                local[k.value] = (k, v)
            elif k.tag == MERGE:
                merges.extend(_merge_sources(v))
    # Cheap filter first, so that huge files cost one pass: only mappings with a local
    # `repository`/`tag` key or a merge key can be image blocks.
    if not merges and REPOSITORY not in local and TAG not in local:
        return None

    def entry(role: str) -> Entry | None:
        if role in local:
            return Entry(*local[role], False)
        for source in merges:
            found = lookup(source, role, 1)
            if found is not None:
                return Entry(found.key, found.value, True)
        return None

    repository = entry(REPOSITORY)
    if repository is None or not _is_str(repository.value):
        return None
    tag = entry(TAG)
    if tag is None:
        return None
    entries = {REPOSITORY: repository, TAG: tag}
    for role in OPTIONAL:
        found = entry(role)
        if found is not None:
            entries[role] = found
    return entries


def _is_str(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == STR


def plain(node: Node, depth: int = 0) -> Any:
    """A node as plain dicts/lists/scalars, for the `watch` policy (small by nature)."""
    if depth > 50:  # a recursive alias would never end; policies are never this deep
        return None
    if isinstance(node, ScalarNode):
        return to_python(node.tag, node.value)
    if isinstance(node, SequenceNode):
        return [plain(item, depth + 1) for item in node.value]
    if isinstance(node, MappingNode):
        out: dict[Any, Any] = {}
        for key, value in node.value:
            if key.tag == MERGE:
                continue
            k = to_python(key.tag, key.value) if isinstance(key, ScalarNode) else None
            try:
                out[k] = plain(value, depth + 1)
            except TypeError:  # an unhashable key cannot come from a scalar; be safe anyway
                continue
        return out
    return None


def _line(entry: Entry) -> int:
    """The line to report a value on: its own, or its key's when it is empty (composers
    place an empty value after the colon or at the next token)."""
    value = entry.value
    node = entry.key if value.start_mark.index == value.end_mark.index else value
    return int(node.start_mark.line) + 1


def _optional_str(entry: Entry | None, name: str, problems: list[BlockProblem]) -> str | None:
    if entry is None:
        return None
    value = entry.value
    line = _line(entry)
    if isinstance(value, ScalarNode):
        if value.tag == NULL:
            return None
        if value.tag == STR:
            return value.value or None
        if value.tag == INT:
            return str(to_python(INT, value.value))
        # Keep the text: a non-empty overrideTag is a pin even when mistyped.
        problems.append(BlockProblem(line, f"{name} must be a string; quote it"))
        return str(value.value) or None
    problems.append(BlockProblem(line, f"{name} must be a string"))
    return None


def _block_line(node: MappingNode) -> int:
    # A block mapping's own mark sits on its anchor, if any; its first key is the line
    # a person looks for.
    if not node.flow_style and node.value:
        return int(node.value[0][0].start_mark.line) + 1
    return int(node.start_mark.line) + 1


def _tag_text(entry: Entry, path: KeyPath, problems: list[BlockProblem]) -> str | None:
    node = entry.value
    if isinstance(node, ScalarNode) and node.tag == STR:
        return str(node.value)
    if isinstance(node, ScalarNode) and node.tag == INT:
        return str(to_python(INT, node.value))
    shown = node.value if isinstance(node, ScalarNode) else "a collection"
    problems.append(
        BlockProblem(
            _line(entry),
            f"{format_path(path)}: tag must be a string; quote it (found {shown!r})",
        )
    )
    return None


def _examine(node: MappingNode, document: int, path: KeyPath, scan: Scan) -> None:
    entries = block_keys(node)
    if entries is None:
        return
    tag = _tag_text(entries[TAG], path, scan.problems)
    if tag is None:
        return
    watch = entries.get(WATCH)
    raw = RawBlock(
        document=document,
        path=path,
        line=_block_line(node),
        repository=str(entries[REPOSITORY].value.value),
        tag=tag,
        shasum=_optional_str(entries.get(SHASUM), SHASUM, scan.problems),
        override_tag=_optional_str(entries.get(OVERRIDE), OVERRIDE, scan.problems),
        watch=plain(watch.value) if watch is not None else None,
    )
    scan.blocks.append(Found(raw, node, entries))


def _collections(root: Node) -> Iterator[tuple[Node, KeyPath]]:
    # Iterative and visiting every collection once: deep nesting cannot overflow the
    # stack, and alias bombs cost their size in the text, not their expanded size.
    seen: set[int] = set()
    stack: list[tuple[Node, KeyPath]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen or isinstance(node, ScalarNode):
            continue
        seen.add(id(node))
        if len(path) > MAX_DEPTH:
            raise ComposeError(node.start_mark.line + 1, TOO_DEEP)
        yield node, path
        if isinstance(node, MappingNode):
            children = [
                (value, (*path, key.value))
                for key, value in node.value
                if isinstance(key, ScalarNode) and key.tag == STR
            ]
            stack.extend(reversed(children))
        elif isinstance(node, SequenceNode):
            stack.extend(reversed([(item, (*path, i)) for i, item in enumerate(node.value)]))


def scan_nodes(documents: Nodes) -> Scan:
    """Every block in composed documents; raises ComposeError when they nest too deeply."""
    scan = Scan([], [], set())
    for document, root in enumerate(documents):
        if root is None:
            continue
        for node, path in _collections(root):
            if not isinstance(node, MappingNode):
                continue
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.tag == MERGE:
                    scan.merge_sources.update(id(source) for source in _merge_sources(value))
            _examine(node, document, path, scan)
    return scan


def scan_text(text: str, composer: Composer = compose) -> Scan:
    """Raises ComposeError on a syntax error."""
    with collector_paused():
        return scan_nodes(composer(text))


def syntax_problem(exc: ComposeError) -> BlockProblem:
    return BlockProblem(exc.line, f"YAML syntax error: {exc.problem}")


def find_blocks(
    text: str, composer: Composer = compose
) -> tuple[list[RawBlock], list[BlockProblem]]:
    """Every image block in a values file, in document order, and the problems found."""
    try:
        scan = scan_text(text, composer)
    except ComposeError as exc:
        return [], [syntax_problem(exc)]
    return [found.raw for found in scan.blocks], scan.problems
