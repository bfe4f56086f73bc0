"""The watcher's commit trailers: which block each commit set, to what, and why.

Every commit the watcher makes, and every commit of a person's command (``watcher
pin``, ``release``, ``rollback``), ends with one trailer per block it concerns, in
git's trailer convention (``Key: value`` lines in the message's last paragraph, read
back by ``git log --format=%(trailers)``)::

    Image-Watcher-Set: apps/api/values.yaml#image shasum=sha256:4f1c...
    Image-Watcher-Pin: apps/api/values.yaml#worker.image overrideTag=v1.4.2
    Image-Watcher-Release: apps/api/values.yaml#image shasum=sha256:4f1c...
    Image-Watcher-Rollback: apps/web/values.yaml#image overrideTag=main-41

A promotion (a ``follow`` block copying its source's value) adds where the value
came from, the source branch and the commit that put the value there::

    Image-Watcher-From: apps/api/values.yaml#image environment/staging@9f86d08...

The value names the block as ``BLOCK`` selectors do (``file#key.path``), the field
by its role (:data:`watcher.blocks.Field`) and the value that field holds once the
commit is on the branch (nothing after ``=``: the field is empty). Holds are
derived from these lines and the branch's content alone, so every replica, and
every restart, reads the same state from git.

A commit without such lines (a person's edit, a ``git revert`` of the watcher's
commit, which does not copy the message's body) is what makes a block *held*:
its value is no longer the one the last line wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from watcher.blocks import Field

Action = Literal["set", "pin", "release", "rollback"]
ACTIONS: tuple[Action, ...] = get_args(Action)
FIELDS: tuple[Field, ...] = get_args(Field)

_PREFIX = "Image-Watcher-"
KEYS: dict[Action, str] = {action: _PREFIX + action.capitalize() for action in ACTIONS}
_BY_KEY: dict[str, Action] = {key.lower(): action for action, key in KEYS.items()}


@dataclass(frozen=True)
class Mark:
    """One trailer: ``action`` left ``field`` of block ``ref`` holding ``value``."""

    action: Action
    ref: str
    field: Field
    value: str | None  # None: the field is empty

    def line(self) -> str:
        return f"{KEYS[self.action]}: {self.ref} {self.field}={self.value or ''}"


FROM_KEY = _PREFIX + "From"
"""The trailer naming a promoted value's source (not a mark: holds do not read it)."""


def source_line(ref: str, source: str) -> str:
    """The ``Image-Watcher-From`` trailer: block ``ref`` took its value from ``source``
    (``branch@commit``)."""
    return f"{FROM_KEY}: {ref} {source}"


def parse(key: str, value: str) -> Mark | None:
    """A trailer as :class:`Mark`, or None when it is not one of ours (or is malformed)."""
    action = _BY_KEY.get(key.strip().lower())
    if action is None:
        return None
    # Values never hold spaces (the OCI grammar); a key path might: split from the right.
    ref, _, assignment = value.strip().rpartition(" ")
    field, equals, written = assignment.partition("=")
    if not ref or not equals:
        return None
    for known in FIELDS:
        if field == known:
            return Mark(action, ref, known, written or None)
    return None


def parse_block(text: str) -> list[Mark]:
    """Our marks among trailer lines (``Key: value``, one a line, as git prints them)."""
    marks = []
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            mark = parse(key, value)
            if mark is not None:
                marks.append(mark)
    return marks


def message(
    subject: str, body: Sequence[str], marks: Iterable[Mark], extra: Iterable[str] = ()
) -> str:
    """A commit message: subject, body lines, then the trailers as the last paragraph.

    Nothing may follow the trailers: git reads trailers from the last paragraph only.
    Refs holding a line break cannot be a trailer and are left out (no block path has
    one in practice; a hold on such a block is then not tracked, never misread).
    """
    lines = [mark.line() for mark in marks if "\n" not in mark.ref and "\r" not in mark.ref]
    lines.extend(line for line in extra if "\n" not in line and "\r" not in line)
    parts = [subject.strip()]
    if body:
        parts.append("\n".join(body))
    if lines:
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"
