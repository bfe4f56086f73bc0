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
from watcher.config.settings import GitConfig, Keys
from watcher.errors import InvalidReference
from watcher.gitops.paths import matches_any
from watcher.gitops.values.compose import (
    MAX_DEPTH,
    TOO_DEEP,
    ComposeError,
    Nodes,
    collector_paused,
    compose,
)
from watcher.gitops.values.scalars import INT, MERGE, NULL, STR, to_python
from watcher.references import split_reference

Composer = Callable[[str], Nodes]

# The roles a block's reading and writing use; which key of the mapping holds each is
# the reading's business (`git.keys`). Only `repository` and `tag` make a mapping a block.
REGISTRY, REPOSITORY, TAG, SHASUM, OVERRIDE, WATCH = (
    "registry",
    "repository",
    "tag",
    "shasum",
    "overrideTag",
    "watch",
)
DIGEST_PREFIX = "sha256:"


@dataclass(frozen=True)
class Reading:
    """How values files are read: the key names of each role (``git.keys``) and the key
    paths whose strings are image references (``git.strings``)."""

    keys: Keys
    strings: tuple[str, ...]

    @classmethod
    def of(cls, git: GitConfig) -> Reading:
        return cls(git.keys, git.strings)


DEFAULT_READING = Reading.of(GitConfig())
"""What a configuration that leaves ``git.keys`` and ``git.strings`` out reads."""


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
    """A block as read, with the nodes an edit needs: its mapping and its entries by role.

    ``digest_key`` is the key the digest goes in (the entry's, or the one to add), and
    ``hex`` whether the chart wants it without ``sha256:``."""

    raw: RawBlock
    node: MappingNode
    entries: dict[str, Entry]
    digest_key: str = SHASUM
    hex: bool = False
    string: bool = False  # a `repo:tag[@digest]` string; its one entry is in every role


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


def block_keys(
    node: MappingNode, keys: Keys = DEFAULT_READING.keys
) -> tuple[dict[str, Entry], str] | None:
    """Whether ``node`` is an image block, and if so which key holds what, by role, and
    the key the digest goes in.

    A block is a mapping whose (possibly merged) ``repository`` is a non-empty string
    and whose ``tag`` is neither null nor empty: null, ``~``, ``""`` or an absent key
    mean the chart's default (its appVersion, a global image), which is nobody's block.
    ``registry``, the digest, ``overrideTag`` and ``watch`` are read when present. Each
    role takes the first of its names (``keys``) the mapping has, with a non-empty value
    for ``registry``, ``repository`` and ``tag``. Keys resolve as :func:`lookup` says
    (local keys win; later duplicates win).
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
    # repository or tag key, or a merge key, can be image blocks.
    if not merges and not any(name in local for name in (*keys.repository, *keys.tag)):
        return None

    def entry(name: str) -> Entry | None:
        if name in local:
            return Entry(*local[name], False)
        for source in merges:
            found = lookup(source, name, 1)
            if found is not None:
                return Entry(found.key, found.value, True)
        return None

    def first(names: tuple[str, ...], filled: bool) -> tuple[str, Entry] | None:
        for name in names:
            found = entry(name)
            if found is not None and (not filled or not _is_empty(found.value)):
                return name, found
        return None

    repository = first(keys.repository, True)
    if repository is None or not _is_str(repository[1].value):
        return None
    tag = first(keys.tag, True)
    if tag is None:
        return None
    entries = {REPOSITORY: repository[1], TAG: tag[1]}
    registry = first(keys.registry, True)
    if registry is not None and _is_str(registry[1].value):
        entries[REGISTRY] = registry[1]
    digest = first(keys.digest, False)
    if digest is not None:
        entries[SHASUM] = digest[1]
    for role in (OVERRIDE, WATCH):
        found = entry(role)
        if found is not None:
            entries[role] = found
    return entries, digest[0] if digest is not None else keys.digest[-1]


def _is_empty(node: Node) -> bool:
    """Null, ``~`` or an empty string: "the chart's default"."""
    if not isinstance(node, ScalarNode):
        return False
    return node.tag == NULL or (node.tag == STR and not node.value)


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


@dataclass(frozen=True)
class Globals:
    """A document's registries for all its blocks (``git.keys.registry_override`` and
    ``registry_fallback``), as read from its root."""

    override: str | None = None
    fallback: str | None = None


def _at(root: Node, dotted: str) -> str | None:
    """The non-empty string at a dotted key path from ``root``, if there is one."""
    node: Node | None = root
    for part in dotted.split("."):
        if not isinstance(node, MappingNode):
            return None
        entry = lookup(node, part)
        node = entry.value if entry is not None else None
    if node is None or not _is_str(node) or not node.value:
        return None
    return str(node.value)


def _globals(root: Node, keys: Keys) -> Globals:
    def first(paths: tuple[str, ...]) -> str | None:
        for dotted in paths:
            value = _at(root, dotted)
            if value is not None:
                return value
        return None

    return Globals(first(keys.registry_override), first(keys.registry_fallback))


def _examine(
    node: MappingNode, document: int, path: KeyPath, scan: Scan, keys: Keys, world: Globals
) -> None:
    found = block_keys(node, keys)
    if found is None:
        return
    entries, digest_key = found
    tag = _tag_text(entries[TAG], path, scan.problems)
    if tag is None:
        return
    repository = str(entries[REPOSITORY].value.value)
    own = entries.get(REGISTRY)
    registry = world.override or (str(own.value.value) if own is not None else world.fallback)
    if registry:
        # What the chart pulls: its templates join the two with a slash.
        repository = f"{registry}/{repository}"
    hex_digest = digest_key in keys.hex
    shasum = _optional_str(entries.get(SHASUM), digest_key, scan.problems)
    if hex_digest and shasum is not None:
        if shasum.startswith(DIGEST_PREFIX):
            entry = entries[SHASUM]
            scan.problems.append(
                BlockProblem(
                    _line(entry),
                    f"{format_path(path)}: {digest_key} is written without {DIGEST_PREFIX} "
                    "(the chart adds it): the 64 hex digits alone",
                )
            )
        else:
            shasum = DIGEST_PREFIX + shasum
    watch = entries.get(WATCH)
    raw = RawBlock(
        document=document,
        path=path,
        line=_block_line(node),
        repository=repository,
        tag=tag,
        shasum=shasum,
        override_tag=_optional_str(entries.get(OVERRIDE), OVERRIDE, scan.problems),
        watch=plain(watch.value) if watch is not None else None,
    )
    scan.blocks.append(Found(raw, node, entries, digest_key, hex_digest))


def _strings(
    node: MappingNode, document: int, path: KeyPath, scan: Scan, globs: tuple[str, ...]
) -> None:
    """The ``repo:tag[@digest]`` strings of ``node`` whose key paths ``git.strings`` names."""
    for key, value in node.value:
        if not (isinstance(key, ScalarNode) and key.tag == STR and _is_str(value)):
            continue
        where = (*path, key.value)
        if not value.value or not matches_any(globs, "/".join(map(str, where))):
            continue
        entry = Entry(key, value, False)
        try:
            name, tag, digest = split_reference(str(value.value))
        except InvalidReference as exc:
            scan.problems.append(BlockProblem(_line(entry), f"{format_path(where)}: {exc}"))
            continue
        if tag is None:  # nothing to follow: `repo` alone, or pinned as `repo@sha256:...`
            continue
        raw = RawBlock(
            document=document,
            path=where,
            line=_line(entry),
            repository=name,
            tag=tag,
            shasum=digest,
            override_tag=None,
            string=True,
        )
        entries = {REPOSITORY: entry, TAG: entry, SHASUM: entry, OVERRIDE: entry}
        scan.blocks.append(Found(raw, node, entries, string=True))


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


def scan_nodes(documents: Nodes, reading: Reading = DEFAULT_READING) -> Scan:
    """Every block in composed documents; raises ComposeError when they nest too deeply."""
    scan = Scan([], [], set())
    for document, root in enumerate(documents):
        if root is None:
            continue
        world = _globals(root, reading.keys)
        for node, path in _collections(root):
            if not isinstance(node, MappingNode):
                continue
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.tag == MERGE:
                    scan.merge_sources.update(id(source) for source in _merge_sources(value))
            _examine(node, document, path, scan, reading.keys, world)
            if reading.strings:
                _strings(node, document, path, scan, reading.strings)
    return scan


def scan_text(
    text: str, composer: Composer = compose, reading: Reading = DEFAULT_READING
) -> Scan:
    """Raises ComposeError on a syntax error."""
    with collector_paused():
        return scan_nodes(composer(text), reading)


def syntax_problem(exc: ComposeError) -> BlockProblem:
    return BlockProblem(exc.line, f"YAML syntax error: {exc.problem}")


def find_blocks(
    text: str, composer: Composer = compose, reading: Reading = DEFAULT_READING
) -> tuple[list[RawBlock], list[BlockProblem]]:
    """Every image block in a values file, in document order, and the problems found."""
    try:
        scan = scan_text(text, composer, reading)
    except ComposeError as exc:
        return [], [syntax_problem(exc)]
    return [found.raw for found in scan.blocks], scan.problems
