"""Editing a values file: splice the new scalar into the original text, then re-read it.

Pure. The composed nodes only locate things; every byte but the changed scalar
stays as the person wrote it (a dump would re-wrap, re-indent and re-quote).
Each edited text is read again and compared with what was meant before it is
returned: a splice that would read back differently is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from yaml.nodes import MappingNode, ScalarNode

from watcher.blocks import Edit, Field, KeyPath, RawBlock, format_path
from watcher.gitops.values.compose import ComposeError, compose
from watcher.gitops.values.read import (
    DEFAULT_READING,
    DIGEST_PREFIX,
    OVERRIDE,
    REPOSITORY,
    SHASUM,
    TAG,
    Composer,
    Entry,
    Found,
    Reading,
    scan_text,
    syntax_problem,
)
from watcher.gitops.values.scalars import MERGE, render
from watcher.references import is_digest, is_tag

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
class _Splice:
    start: int
    end: int
    text: str
    order: int


def _current(found: Found, field: Field) -> str | None:
    return found.raw.value(field)


def _key(found: Found, field: Field) -> str:
    """The key that holds ``field`` in this block (the one to add when it is absent)."""
    return found.digest_key if field == SHASUM else OVERRIDE


def _written(found: Found, edit: Edit) -> str | None:
    """``edit.new`` as the chart wants it written (a bare hex digest for some charts)."""
    if edit.field == SHASUM and found.hex and edit.new:
        return edit.new.removeprefix(DIGEST_PREFIX)
    return edit.new


def _is_local(entry: Entry, mapping: MappingNode) -> bool:
    # An alias has the marks of its anchor, which lie before the key that uses it.
    start = entry.value.start_mark.index
    return bool(entry.key.end_mark.index <= start <= mapping.end_mark.index)


def _anchored(text: str, node: ScalarNode) -> bool:
    """Whether the node carries an anchor (``&name``), possibly after a tag (``!!str``)."""
    at = node.start_mark.index
    while at < len(text) and text[at] in "&!":
        if text[at] == "&":
            return True
        while at < len(text) and text[at] not in " \t\r\n":
            at += 1
        while at < len(text) and text[at] in " \t\r\n":
            at += 1
    return False


def _eol(text: str, at: int) -> str:
    newline = text.find("\n", at)
    if newline < 0:
        newline = text.find("\n")
    return "\r\n" if newline > 0 and text[newline - 1] == "\r" else "\n"


def _tag_quote(found: Found) -> str | None:
    """The quote the block's `tag` is written in, for a value written where none was."""
    tag = found.entries[TAG].value
    style = tag.style if isinstance(tag, ScalarNode) else None
    return style if style in ("'", '"') else None


def _replace(text: str, found: Found, entry: Entry, edit: Edit, order: int) -> _Splice | str:
    """Where and what to splice to change an existing value, or why it cannot be done."""
    mapping = found.node
    value = entry.value
    if entry.inherited:
        return f"{edit.field} is inherited through `<<`; editing it would change other blocks"
    if not isinstance(value, ScalarNode):
        return f"{edit.field} is not a scalar"
    if _anchored(text, value) or not _is_local(entry, mapping):
        return f"{edit.field} carries an anchor or is an alias; editing it would change others"
    style = value.style or None
    if style in ("|", ">"):
        return f"{edit.field} is a block scalar; refusing to rewrite it"
    flow = bool(mapping.flow_style)
    start, end = value.start_mark.index, value.end_mark.index
    if start == end:
        # An empty value's node sits on the next token; write after the colon instead.
        colon = text.find(":", entry.key.end_mark.index)
        if colon < 0 or text[entry.key.end_mark.index : colon].strip():
            return f"cannot find the colon after {edit.field}"
        rendered = render(_written(found, edit), _tag_quote(found), flow)
        return _Splice(colon + 1, colon + 1, " " + rendered, order)
    # A plain `a:b` already in this flow mapping reads fine wherever this file is read.
    flow_risk = flow and ":" not in str(value.value)
    return _Splice(start, end, render(_written(found, edit), style, flow_risk), order)


def _insert(text: str, found: Found, edit: Edit, order: int) -> _Splice | str:
    """Where and what to splice to add an absent key, or why it cannot be done."""
    mapping = found.node
    tag_entry = found.entries[TAG]
    flow = bool(mapping.flow_style)
    rendered = render(_written(found, edit), _tag_quote(found), flow)
    key = _key(found, edit.field)
    if flow:
        close = mapping.end_mark.index - 1
        if close < 0 or text[close] != "}":
            return "cannot find the closing brace of the flow mapping"
        at = close
        while at > 0 and text[at - 1] in " \t\r\n":
            at -= 1
        previous = text[at - 1]
        sep = "" if previous == "{" else " " if previous == "," else ", "
        return _Splice(at, at, f"{sep}{key}: {rendered}", order)

    # Block mapping: a new line after the line where the `tag` entry ends (or, when the
    # tag is merged in, after the local `repository` or `<<` entry), at that key's indent.
    anchor_entry = tag_entry if not tag_entry.inherited else found.entries[REPOSITORY]
    if anchor_entry.inherited:
        merge_keys = [k for k, _ in mapping.value if isinstance(k, ScalarNode) and k.tag == MERGE]
        if not merge_keys:
            return "cannot find where to insert the new key"
        key_node = merge_keys[-1]
        pos = key_node.end_mark.index
    else:
        key_node = anchor_entry.key
        local = isinstance(anchor_entry.value, ScalarNode) and _is_local(anchor_entry, mapping)
        pos = anchor_entry.value.end_mark.index if local else key_node.end_mark.index
    indent = " " * int(key_node.start_mark.column)
    line = f"{indent}{key}: {rendered}"
    if pos > 0 and text[pos - 1] == "\n":  # a block scalar's node ends on the next line
        return _Splice(pos, pos, line + _eol(text, pos - 1), order)
    newline = text.find("\n", pos)
    if newline < 0:
        return _Splice(len(text), len(text), _eol(text, 0) + line, order)
    return _Splice(newline + 1, newline + 1, line + _eol(text, newline), order)


def _reference(text: str, found: Found, edit: Edit, order: int) -> _Splice | str:
    """A ``repo:tag[@digest]`` string rewritten whole: ``repo:tag@<digest>`` for a digest,
    ``repo:<tag>`` for a tag (the old digest named another build)."""
    entry = found.entries[REPOSITORY]
    value = entry.value
    assert isinstance(value, ScalarNode)
    if _anchored(text, value) or not _is_local(entry, found.node):
        return "the string carries an anchor or is an alias; editing it would change others"
    if value.style in ("|", ">"):
        return "the string is a block scalar; refusing to rewrite it"
    if edit.new is None:
        return "a string's tag cannot be emptied"
    raw = found.raw
    if edit.field == SHASUM:
        new = f"{raw.repository}:{raw.tag}@{edit.new}"
    else:
        new = f"{raw.repository}:{edit.new}"
    # The string already had a `:` in it, so a flow mapping read it fine plain.
    rendered = render(new, value.style or None, False, reference=True)
    return _Splice(value.start_mark.index, value.end_mark.index, rendered, order)


def _plan(
    text: str, found: Found, edit: Edit, merge_sources: set[int], order: int
) -> _Splice | str:
    """Where and what to splice for ``edit``, or why it cannot be done."""
    if id(found.node) in merge_sources:
        return "the block is merged into other mappings with `<<`; editing it would change them"
    if found.string:
        return _reference(text, found, edit, order)
    entry = found.entries.get(edit.field)
    if entry is not None:
        return _replace(text, found, entry, edit, order)
    return _insert(text, found, edit, order)


def _valid(edit: Edit) -> bool:
    if edit.new is None:  # emptying: only a pin is ever cleared
        return edit.field != SHASUM
    return is_digest(edit.new) if edit.field == SHASUM else is_tag(edit.new)


def _verify(
    before: list[Found],
    after_text: str,
    applied: Sequence[Edit],
    composer: Composer,
    reading: Reading,
) -> str | None:
    """Why ``after_text`` is not exactly the intended result, or None if it is."""
    try:
        after = scan_text(after_text, composer, reading)
    except ComposeError as exc:
        return f"the edited file does not parse: {syntax_problem(exc).message}"
    new = {(f.raw.document, f.raw.path): f.raw for f in after.blocks}
    expected = {(f.raw.document, f.raw.path): f.raw for f in before}
    for edit in applied:
        where = (edit.document, edit.path)
        expected[where] = expected[where].with_value(edit.field, edit.new)
    if set(new) != set(expected):
        return "the edited file has a different set of image blocks"
    for where, want in expected.items():
        got: RawBlock = new[where]
        if (got.repository, got.tag, got.watch) != (want.repository, want.tag, want.watch):
            return f"{format_path(want.path)} would change beyond the edited value"
        if (got.shasum, got.override_tag) != (want.shasum, want.override_tag):
            return f"{format_path(want.path)} would not read back as intended"
    return None


def apply_edits(
    text: str,
    edits: Sequence[Edit],
    composer: Composer = compose,
    reading: Reading = DEFAULT_READING,
) -> tuple[str, list[EditResult]]:
    """Apply the edits that still mean what they meant; the person wins everywhere else.

    Returns the new text (the original text when nothing applied) and one result per edit,
    in order. The edited text is read again (``composer``, like the first reading) and
    refused unless it reads back as intended. ``reading`` says which keys hold what.
    """
    try:
        scan = scan_text(text, composer, reading)
    except ComposeError as exc:
        problem = syntax_problem(exc)
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
    failure = _verify(scan.blocks, out, applied, composer, reading)
    if failure is not None:
        reason = f"refused: {failure}"
        return text, [EditResult(r.edit, "skipped", reason) if r.applied else r for r in results]
    return out, results


def _decide(
    text: str,
    edit: Edit,
    index: dict[tuple[int, KeyPath], Found],
    merge_sources: set[int],
    claimed: dict[tuple[int, KeyPath, str], str | None],
    order: int,
) -> _Splice | EditResult:
    where = format_path(edit.path)
    if not _valid(edit):
        kind = "digest" if edit.field == SHASUM else "tag"
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
    if edit.field == SHASUM and raw.override_tag:
        return EditResult(edit, "skipped", f"pinned by overrideTag {raw.override_tag}")
    plan = _plan(text, found, edit, merge_sources, order)
    if isinstance(plan, str):
        return EditResult(edit, "skipped", plan)
    return plan
