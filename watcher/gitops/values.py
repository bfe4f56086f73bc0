"""Helm values files: find image blocks, and edit them in place.

Pure functions over text, no I/O. ruamel.yaml composes the node graph only to
locate things; edits are spliced into the original text at the positions the
nodes report, so every byte but the changed scalar stays as the person wrote
it (a ruamel dump would re-wrap, re-indent and re-quote).

Scalars resolve with YAML 1.1 rules, as Helm's go-yaml reads them: an unquoted
``off`` is ``False`` and ``1.10`` is a float there, so that is what we report.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.resolver import VersionedResolver

from watcher.blocks import Edit, Field, KeyPath, RawBlock, format_path
from watcher.references import is_digest, is_tag

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"

# Plain scalars that some YAML reader (1.1, 1.2 or go-yaml) takes for a non-string.
_RISKY_WORDS = frozenset(
    {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "inf", "infinity", "nan"}
)
_NUMBERISH = re.compile(
    r"[-+]?(?:0[xXoObB][0-9a-fA-F_]+|[0-9_]+(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?)"
    r"|[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}.*"
)
_RESOLVERS = (VersionedResolver(version=(1, 1)), VersionedResolver(version=(1, 2)))
_TRUE_WORDS = frozenset({"y", "yes", "true", "on"})


@dataclass(frozen=True)
class BlockProblem:
    """Something wrong in a values file, for ``watcher check`` (``line`` is 1-based)."""

    line: int
    message: str


Status = Literal["applied", "already", "skipped"]


@dataclass(frozen=True)
class EditResult:
    """What became of one edit: applied, already in place, or skipped (``reason`` says why)."""

    edit: Edit
    status: Status
    reason: str = ""

    @property
    def applied(self) -> bool:
        return self.status == "applied"


@dataclass
class _Entry:
    key: ScalarNode
    value: Node
    inherited: bool  # reached through a `<<` merge key, so it lives in another mapping


@dataclass
class _Found:
    raw: RawBlock
    node: MappingNode
    entries: dict[str, _Entry]


@dataclass
class _Scan:
    blocks: list[_Found]
    problems: list[BlockProblem]
    merge_sources: set[int]  # ids of mappings merged into others with `<<`


# --- reading -------------------------------------------------------------------------------


def _tag(node: Node) -> str:
    tag = node.tag
    return str(getattr(tag, "value", tag))


def _compose(text: str) -> list[Any]:
    yaml = YAML(typ="rt")
    yaml.version = (1, 1)
    try:
        return list(yaml.compose_all(text))
    except RecursionError:
        # ruamel's parser and composer recurse once per nesting level: a file nested a
        # few hundred levels deep (`[[[[...`) would otherwise end discovery, and the
        # daemon with it, on a RecursionError. It is bad input like any syntax error.
        raise YAMLError("the YAML nests too deeply to be read") from None


def _error_problem(exc: YAMLError) -> BlockProblem:
    mark = None
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return BlockProblem(line, f"YAML syntax error: {problem}")


def _int(text: str) -> int:
    s = text.replace("_", "")
    sign = -1 if s.startswith("-") else 1
    s = s.lstrip("+-")
    if ":" in s:  # YAML 1.1 sexagesimal
        value = 0
        for part in s.split(":"):
            value = value * 60 + int(part)
        return sign * value
    if s[:2] in ("0x", "0X"):
        return sign * int(s[2:], 16)
    if s[:2] in ("0b", "0B"):
        return sign * int(s[2:], 2)
    if s[:2] in ("0o", "0O"):
        return sign * int(s[2:], 8)
    if len(s) > 1 and s.startswith("0"):  # YAML 1.1 octal
        return sign * int(s, 8)
    return sign * int(s)


def _float(text: str) -> float:
    s = text.replace("_", "").lower()
    if s.endswith(".inf"):
        return float("-inf") if s.startswith("-") else float("inf")
    if s == ".nan":
        return float("nan")
    if ":" in s:
        sign = -1.0 if s.startswith("-") else 1.0
        value = 0.0
        for part in s.lstrip("+-").split(":"):
            value = value * 60 + float(part)
        return sign * value
    return float(s)


def _scalar(node: ScalarNode) -> Any:
    """A scalar as plain Python data; odd tags fall back to the text as written."""
    tag = _tag(node)
    text: str = node.value
    try:
        if tag == _NULL:
            return None
        if tag == _BOOL:
            return text.lower() in _TRUE_WORDS
        if tag == _INT:
            return _int(text)
        if tag == _FLOAT:
            return _float(text)
    except ValueError:
        return text
    return text


def _plain(node: Node, depth: int = 0) -> Any:
    """A node as plain dicts/lists/scalars, for the `watch` policy (small by nature)."""
    if depth > 50:  # a recursive alias would never end; policies are never this deep
        return None
    if isinstance(node, ScalarNode):
        return _scalar(node)
    if isinstance(node, SequenceNode):
        return [_plain(item, depth + 1) for item in node.value]
    if isinstance(node, MappingNode):
        out: dict[Any, Any] = {}
        for key, value in node.value:
            if _tag(key) == _MERGE:
                continue
            k = _scalar(key) if isinstance(key, ScalarNode) else None
            try:
                out[k] = _plain(value, depth + 1)
            except TypeError:  # an unhashable key cannot come from a scalar; be safe anyway
                continue
        return out
    return None


def _merge_sources(node: Node) -> list[MappingNode]:
    if isinstance(node, MappingNode):
        return [node]
    if isinstance(node, SequenceNode):
        return [item for item in node.value if isinstance(item, MappingNode)]
    return []


def _lookup(node: MappingNode, key: str, depth: int = 0) -> _Entry | None:
    """The effective entry for ``key``: local keys win over merged ones, earlier merges win."""
    found: _Entry | None = None
    merges: list[MappingNode] = []
    for k, v in node.value:
        if not isinstance(k, ScalarNode):
            continue
        tag = _tag(k)
        if tag == _STR and k.value == key:
            found = _Entry(k, v, False)  # later duplicates win, as with go-yaml v2
        elif tag == _MERGE:
            merges.extend(_merge_sources(v))
    if found is not None or depth > 20:
        return found
    for source in merges:
        entry = _lookup(source, key, depth + 1)
        if entry is not None:
            return _Entry(entry.key, entry.value, True)
    return None


def _may_be_block(node: MappingNode) -> bool:
    # Cheap filter so that huge files cost one pass: only mappings with a local
    # `repository`/`tag` key or a merge key can be image blocks.
    for k, _ in node.value:
        if isinstance(k, ScalarNode) and (k.value in ("repository", "tag") or _tag(k) == _MERGE):
            return True
    return False


def _optional_str(entry: _Entry | None, name: str, problems: list[BlockProblem]) -> str | None:
    if entry is None:
        return None
    value = entry.value
    if isinstance(value, ScalarNode):
        tag = _tag(value)
        if tag == _NULL:
            return None
        if tag == _STR:
            return value.value or None
        if tag == _INT:
            return str(_scalar(value))
        # Keep the text: a non-empty overrideTag is a pin even when mistyped.
        problems.append(
            BlockProblem(value.start_mark.line + 1, f"{name} must be a string; quote it")
        )
        return str(value.value) or None
    problems.append(BlockProblem(value.start_mark.line + 1, f"{name} must be a string"))
    return None


def _block_line(node: MappingNode) -> int:
    # A block mapping's own mark sits on its anchor, if any; its first key is the line
    # a person looks for.
    if not node.flow_style and node.value:
        return int(node.value[0][0].start_mark.line) + 1
    return int(node.start_mark.line) + 1


def _examine(node: MappingNode, document: int, path: KeyPath, scan: _Scan) -> None:
    repository = _lookup(node, "repository")
    if repository is None:
        return
    rep = repository.value
    if not isinstance(rep, ScalarNode) or _tag(rep) != _STR:
        return
    tag_entry = _lookup(node, "tag")
    if tag_entry is None:
        return
    tag_node = tag_entry.value
    tag: str
    if isinstance(tag_node, ScalarNode) and _tag(tag_node) == _STR:
        tag = tag_node.value
    elif isinstance(tag_node, ScalarNode) and _tag(tag_node) == _INT:
        tag = str(_scalar(tag_node))
    else:
        shown = tag_node.value if isinstance(tag_node, ScalarNode) else "a collection"
        scan.problems.append(
            BlockProblem(
                tag_node.start_mark.line + 1,
                f"{format_path(path)}: tag must be a string; quote it (found {shown!r})",
            )
        )
        return
    entries: dict[str, _Entry] = {"repository": repository, "tag": tag_entry}
    shasum = _lookup(node, "shasum")
    override = _lookup(node, "overrideTag")
    watch = _lookup(node, "watch")
    for name, entry in (("shasum", shasum), ("overrideTag", override), ("watch", watch)):
        if entry is not None:
            entries[name] = entry
    raw = RawBlock(
        document=document,
        path=path,
        line=_block_line(node),
        repository=rep.value,
        tag=tag,
        shasum=_optional_str(shasum, "shasum", scan.problems),
        override_tag=_optional_str(override, "overrideTag", scan.problems),
        watch=_plain(watch.value) if watch is not None else None,
    )
    scan.blocks.append(_Found(raw, node, entries))


def _walk(root: Node, document: int, scan: _Scan) -> None:
    # Iterative and visiting every collection once: deep nesting cannot overflow the
    # stack, and alias bombs cost their size in the text, not their expanded size.
    seen: set[int] = set()
    stack: list[tuple[Node, KeyPath]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        if isinstance(node, MappingNode):
            seen.add(id(node))
            children: list[tuple[Node, KeyPath]] = []
            for key, value in node.value:
                if not isinstance(key, ScalarNode):
                    continue
                tag = _tag(key)
                if tag == _MERGE:
                    for source in _merge_sources(value):
                        scan.merge_sources.add(id(source))
                elif tag == _STR:
                    children.append((value, (*path, key.value)))
            if _may_be_block(node):
                _examine(node, document, path, scan)
            stack.extend(reversed(children))
        elif isinstance(node, SequenceNode):
            seen.add(id(node))
            stack.extend(reversed([(item, (*path, i)) for i, item in enumerate(node.value)]))


def _scan(text: str) -> _Scan:
    """Raises YAMLError on a syntax error."""
    scan = _Scan([], [], set())
    for document, root in enumerate(_compose(text)):
        if root is not None:
            _walk(root, document, scan)
    return scan


def find_blocks(text: str) -> tuple[list[RawBlock], list[BlockProblem]]:
    """Every image block in a values file, in document order, and the problems found."""
    try:
        scan = _scan(text)
    except YAMLError as exc:
        return [], [_error_problem(exc)]
    return [found.raw for found in scan.blocks], scan.problems


# --- writing -------------------------------------------------------------------------------


def plain_is_safe(value: str, flow: bool = False) -> bool:
    """Whether ``value`` written unquoted reads back as that exact string in any reader."""
    if not value or value.lower() in _RISKY_WORDS or _NUMBERISH.fullmatch(value):
        return False
    if flow and ":" in value:  # old libyaml ports reject `a:b` inside `{...}`
        return False
    for resolver in _RESOLVERS:
        tag = resolver.resolve(ScalarNode, value, (True, False))
        if str(getattr(tag, "value", tag)) != _STR:
            return False
    return bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._:-]*", value))


def _render(value: str | None, style: str | None, flow: bool) -> str:
    # Values come from the OCI grammar (letters, digits, `._-:`), so no escaping is needed.
    if not value:
        return "''" if style == "'" else '""'
    if style == "'":
        return f"'{value}'"
    if style == '"' or not plain_is_safe(value, flow):
        return f'"{value}"'
    return value


def _current(found: _Found, field: Field) -> str | None:
    return found.raw.shasum if field == "shasum" else found.raw.override_tag


def _is_local(entry: _Entry, mapping: MappingNode) -> bool:
    # An alias has the marks of its anchor, which lie before the key that uses it.
    start = entry.value.start_mark.index
    return bool(entry.key.end_mark.index <= start <= mapping.end_mark.index)


def _eol(text: str, at: int) -> str:
    newline = text.find("\n", at)
    if newline < 0:
        newline = text.find("\n")
    return "\r\n" if newline > 0 and text[newline - 1] == "\r" else "\n"


@dataclass
class _Splice:
    start: int
    end: int
    text: str
    order: int


def _plan(
    text: str, found: _Found, edit: Edit, merge_sources: set[int], order: int
) -> _Splice | str:
    """Where and what to splice for ``edit``, or why it cannot be done."""
    mapping = found.node
    if id(mapping) in merge_sources:
        return "the block is merged into other mappings with `<<`; editing it would change them"
    flow = bool(mapping.flow_style)
    entry = found.entries.get(edit.field)
    tag_entry = found.entries["tag"]
    tag_style = tag_entry.value.style if isinstance(tag_entry.value, ScalarNode) else None
    if entry is not None:
        value = entry.value
        if entry.inherited:
            return f"{edit.field} is inherited through `<<`; editing it would change other blocks"
        if value.anchor is not None or not _is_local(entry, mapping):
            return f"{edit.field} carries an anchor or is an alias; editing it would change others"
        if not isinstance(value, ScalarNode):
            return f"{edit.field} is not a scalar"
        style = value.style
        if style in ("|", ">"):
            return f"{edit.field} is a block scalar; refusing to rewrite it"
        start, end = value.start_mark.index, value.end_mark.index
        if start == end:
            # An empty value's node sits on the next token; write after the colon instead.
            colon = text.find(":", entry.key.end_mark.index)
            if colon < 0 or text[entry.key.end_mark.index : colon].strip():
                return f"cannot find the colon after {edit.field}"
            rendered = _render(edit.new, tag_style if tag_style in ("'", '"') else None, flow)
            return _Splice(colon + 1, colon + 1, " " + rendered, order)
        # A plain `a:b` already in this flow mapping reads fine wherever this file is read.
        flow_risk = flow and ":" not in str(value.value)
        return _Splice(start, end, _render(edit.new, style, flow_risk), order)

    rendered = _render(edit.new, tag_style if tag_style in ("'", '"') else None, flow)
    if flow:
        close = mapping.end_mark.index - 1
        if close < 0 or text[close] != "}":
            return "cannot find the closing brace of the flow mapping"
        at = close
        while at > 0 and text[at - 1] in " \t\r\n":
            at -= 1
        previous = text[at - 1]
        sep = "" if previous == "{" else " " if previous == "," else ", "
        return _Splice(at, at, f"{sep}{edit.field}: {rendered}", order)

    # Block mapping: a new line after the line where the `tag` entry ends (or, when the
    # tag is merged in, after the local `repository` or `<<` entry), at that key's indent.
    anchor_entry = tag_entry if not tag_entry.inherited else found.entries["repository"]
    if anchor_entry.inherited:
        merge_keys = [
            k for k, _ in mapping.value if isinstance(k, ScalarNode) and _tag(k) == _MERGE
        ]
        if not merge_keys:
            return "cannot find where to insert the new key"
        key_node = merge_keys[-1]
        pos = key_node.end_mark.index
    else:
        key_node = anchor_entry.key
        local = isinstance(anchor_entry.value, ScalarNode) and _is_local(anchor_entry, mapping)
        pos = anchor_entry.value.end_mark.index if local else key_node.end_mark.index
    indent = " " * int(key_node.start_mark.column)
    line = f"{indent}{edit.field}: {rendered}"
    if pos > 0 and text[pos - 1] == "\n":  # a block scalar's node ends on the next line
        return _Splice(pos, pos, line + _eol(text, pos - 1), order)
    newline = text.find("\n", pos)
    if newline < 0:
        return _Splice(len(text), len(text), _eol(text, 0) + line, order)
    return _Splice(newline + 1, newline + 1, line + _eol(text, newline), order)


def _valid(edit: Edit) -> bool:
    if edit.new is None:  # emptying: only a pin is ever cleared
        return edit.field == "overrideTag"
    return is_digest(edit.new) if edit.field == "shasum" else is_tag(edit.new)


def _key(raw: RawBlock) -> tuple[Any, ...]:
    return (raw.repository, raw.tag, raw.shasum, raw.override_tag, raw.watch)


def _verify(before: list[_Found], after_text: str, applied: Sequence[Edit]) -> str | None:
    """Why ``after_text`` is not exactly the intended result, or None if it is."""
    try:
        after = _scan(after_text)
    except YAMLError as exc:
        return f"the edited file does not parse: {_error_problem(exc).message}"
    new = {(f.raw.document, f.raw.path): f.raw for f in after.blocks}
    expected: dict[tuple[int, KeyPath], dict[str, Any]] = {}
    for f in before:
        expected[(f.raw.document, f.raw.path)] = {
            "shasum": f.raw.shasum,
            "overrideTag": f.raw.override_tag,
        }
    for edit in applied:
        expected[(edit.document, edit.path)][edit.field] = edit.new
    if set(new) != set(expected):
        return "the edited file has a different set of image blocks"
    for f in before:
        where = (f.raw.document, f.raw.path)
        got = new[where]
        want = expected[where]
        if (got.repository, got.tag, got.watch) != (f.raw.repository, f.raw.tag, f.raw.watch):
            return f"{format_path(f.raw.path)} would change beyond the edited value"
        if (got.shasum, got.override_tag) != (want["shasum"], want["overrideTag"]):
            return f"{format_path(f.raw.path)} would not read back as intended"
    return None


def apply_edits(text: str, edits: Sequence[Edit]) -> tuple[str, list[EditResult]]:
    """Apply the edits that still mean what they meant; the person wins everywhere else.

    Returns the new text (the original text when nothing applied) and one result per edit,
    in order.
    """
    try:
        scan = _scan(text)
    except YAMLError as exc:
        problem = _error_problem(exc)
        reason = f"file does not parse: line {problem.line}: {problem.message}"
        return text, [EditResult(edit, "skipped", reason) for edit in edits]
    index = {(f.raw.document, f.raw.path): f for f in scan.blocks}
    results: list[EditResult] = []
    splices: list[_Splice] = []
    applied: list[Edit] = []
    claimed: dict[tuple[int, KeyPath, str], str | None] = {}
    for order, edit in enumerate(edits):
        result = _decide(text, edit, index, scan.merge_sources, claimed, order)
        if isinstance(result, _Splice):
            splices.append(result)
            applied.append(edit)
            claimed[(edit.document, edit.path, edit.field)] = edit.new
            results.append(EditResult(edit, "applied"))
        else:
            results.append(result)
    if not splices:
        return text, results

    # One pass over the original offsets (each splice's marks refer to the original
    # text); at one position the earlier edit goes first.
    pieces: list[str] = []
    cursor = 0
    for splice in sorted(splices, key=lambda s: (s.start, s.order)):
        pieces.append(text[cursor : splice.start])
        pieces.append(splice.text)
        cursor = max(cursor, splice.end)
    pieces.append(text[cursor:])
    out = "".join(pieces)
    failure = _verify(scan.blocks, out, applied)
    if failure is not None:
        reason = f"refused: {failure}"
        return text, [EditResult(r.edit, "skipped", reason) if r.applied else r for r in results]
    return out, results


def _decide(
    text: str,
    edit: Edit,
    index: dict[tuple[int, KeyPath], _Found],
    merge_sources: set[int],
    claimed: dict[tuple[int, KeyPath, str], str | None],
    order: int,
) -> _Splice | EditResult:
    where = format_path(edit.path)
    if not _valid(edit):
        kind = "digest" if edit.field == "shasum" else "tag"
        return EditResult(edit, "skipped", f"refusing to write {edit.new!r}: not a valid {kind}")
    found = index.get((edit.document, edit.path))
    if found is None:
        return EditResult(edit, "skipped", f"no image block at {where} any more")
    raw = found.raw
    if raw.repository != edit.repository:
        return EditResult(
            edit, "skipped", f"repository changed from {edit.repository} to {raw.repository}"
        )
    if raw.tag != edit.tag:
        return EditResult(edit, "skipped", f"tag changed from {edit.tag} to {raw.tag}")
    where_field = (edit.document, edit.path, edit.field)
    if where_field in claimed:
        if claimed[where_field] == edit.new:
            return EditResult(edit, "already", "the same edit is earlier in this batch")
        return EditResult(edit, "skipped", "another edit in this batch sets the same field")
    current = _current(found, edit.field)
    if current == edit.new:
        return EditResult(edit, "already")
    if current != edit.old:
        return EditResult(
            edit,
            "skipped",
            f"{edit.field} is now {current or '(none)'}, not {edit.old or '(none)'}: "
            "changed by a person",
        )
    if edit.field == "shasum" and raw.override_tag:
        return EditResult(edit, "skipped", f"pinned by overrideTag {raw.override_tag}")
    plan = _plan(text, found, edit, merge_sources, order)
    if isinstance(plan, str):
        return EditResult(edit, "skipped", plan)
    return plan
