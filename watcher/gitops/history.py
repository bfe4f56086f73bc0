"""Branch history: the marks holds are derived from, and the values a block had.

Blocking (git). Three readings of ``git log --first-parent`` (the branch's own line
of commits, as the environment saw them; a merge counts as the change it made to
its first parent):

- :class:`Ledger`: every branch's :data:`~watcher.steer.holds.Book`, read once per
  new head and kept: a branch that moved by a few commits costs one ``git log`` of
  those commits; one that was rewritten is read again whole. Never a ``git log``
  per block, never one per cycle for a branch that did not move.
- :func:`last_change`: which commit gave a block its value now, for the few blocks
  whose value no mark explains (a revert, a hand edit, a pin by hand): one bounded
  ``git log`` of the block's file.
- :func:`block_history`: every value one block had, for ``watcher history`` and
  ``watcher rollback``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from watcher.blocks import Field, KeyPath, RawBlock, block_ref
from watcher.gitops import values
from watcher.gitops.mirror import GitMirror
from watcher.steer import trailers
from watcher.steer.holds import Book, Logged, Stamp, fold
from watcher.steer.trailers import Mark
from watcher.tuning import LAST_CHANGE_DEPTH

# One record per commit, starting with \x1e: boundary mark, id, author, date, trailers.
# Raw diff lines (--raw) follow the record's last \x1f.
_FORMAT = "--format=%x1e%m%x1f%H%x1f%an <%ae>%x1f%at%x1f%(trailers:only,unfold)%x1f"


@dataclass(frozen=True)
class _Record:
    logged: Logged
    boundary: bool
    blobs: tuple[str, str] | None  # (before, after) of the one file a --raw log followed


def parse_log(text: str) -> list[_Record]:
    """``git log`` output in :data:`_FORMAT` (with or without ``--raw``), newest first."""
    records = []
    for chunk in text.split("\x1e")[1:]:
        fields = chunk.split("\x1f")
        if len(fields) < 6:
            continue
        mark, sha, author, at, trailer_text, raw = fields[:6]
        stamp = Stamp(sha, author, int(at or 0))
        blobs = None
        for line in raw.splitlines():
            if line.startswith(":"):
                meta = line[1:].split("\t", 1)[0].split()
                if len(meta) >= 4:
                    blobs = (meta[2], meta[3])
        logged = Logged(stamp, tuple(trailers.parse_block(trailer_text)))
        records.append(_Record(logged, mark == "-", blobs))
    return records


@dataclass
class _Walked:
    head: str
    book: Book


class Ledger:
    """Every branch's marks, read incrementally as branches move (one per process)."""

    def __init__(self, mirror: GitMirror) -> None:
        self._mirror = mirror
        self._walked: dict[str, _Walked] = {}

    def book(self, branch: str, head: str) -> Book:
        """The marks of ``branch`` at ``head``."""
        walked = self._walked.get(branch)
        if walked is not None and walked.head == head:
            return walked.book
        if walked is not None:
            # Only the new commits; the old head must show up as their boundary,
            # else the branch was rewritten and is read again whole.
            records = parse_log(
                self._mirror.log("--first-parent", "--boundary", _FORMAT, head, f"^{walked.head}")
            )
            if any(r.boundary and r.logged.stamp.commit == walked.head for r in records):
                book = fold([r.logged for r in records if not r.boundary], walked.book)
                self._walked[branch] = _Walked(head, book)
                return book
        records = parse_log(self._mirror.log("--first-parent", _FORMAT, head))
        book = fold(r.logged for r in records)
        self._walked[branch] = _Walked(head, book)
        return book

    def forget(self, keep: Sequence[str]) -> None:
        """Drop the branches not in ``keep`` (deleted on the remote)."""
        for branch in self._walked.keys() - set(keep):
            del self._walked[branch]


ReadBlob = Callable[[str], bytes]


@dataclass(frozen=True)
class Version:
    """What one block held after one commit of its file's history."""

    stamp: Stamp
    raw: RawBlock | None  # None: no such block in the file at this commit
    marks: tuple[Mark, ...]  # this block's marks on the commit


def _file_log(
    mirror: GitMirror, head: str, file: str, *, since: str | None, limit: int | None
) -> list[_Record]:
    args = ["--first-parent", "-m", "--raw", "--no-abbrev", "--no-renames", _FORMAT]
    if limit is not None:
        args.append(f"--max-count={limit}")
    args.append(head)
    if since is not None:
        args.append(f"^{since}")
    return parse_log(mirror.log(*args, "--", file))


def _block_at(
    blob: str,
    path: KeyPath,
    read: ReadBlob,
    cache: dict[str, RawBlock | None],
    reading: values.Reading,
) -> RawBlock | None:
    if blob in cache:
        return cache[blob]
    found = None
    if blob.strip("0"):  # all zeros: the file does not exist on that side
        try:
            raws, _ = values.find_blocks(read(blob).decode("utf-8"), reading=reading)
        except UnicodeDecodeError:
            raws = []
        found = next((raw for raw in raws if raw.path == path), None)
    cache[blob] = found
    return found


def last_change(
    mirror: GitMirror,
    head: str,
    file: str,
    path: KeyPath,
    field: Field,
    *,
    since: str | None = None,
    reading: values.Reading = values.DEFAULT_READING,
) -> Stamp | None:
    """The newest commit (after ``since``) that set ``field`` of the block to the value it
    holds at ``head``; None when the last :data:`LAST_CHANGE_DEPTH` changes of the file
    do not show it."""
    records = _file_log(mirror, head, file, since=since, limit=LAST_CHANGE_DEPTH)
    cache: dict[str, RawBlock | None] = {}
    read = mirror.read_blob
    for record in records:
        if record.blobs is None:
            continue
        before, after = record.blobs
        now = _block_at(after, path, read, cache, reading)
        then = _block_at(before, path, read, cache, reading)
        if now is None:
            return None  # the block was not in this version: the walk went past its start
        if then is None or then.value(field) != now.value(field):
            return record.logged.stamp
    return None


def block_history(
    mirror: GitMirror,
    head: str,
    file: str,
    path: KeyPath,
    reading: values.Reading = values.DEFAULT_READING,
) -> list[Version]:
    """Every version of the block through its file's history, oldest first: one entry per
    commit that changed its ``shasum``, ``overrideTag`` or ``tag``, or marked it."""
    ref = block_ref(file, path)
    records = _file_log(mirror, head, file, since=None, limit=None)
    # Commits that mark the block without changing its file (a release of a hold) are
    # not in the file's log: read them too, and put both in the branch's order.
    changed = {record.logged.stamp.commit for record in records}
    marked = [
        record
        for record in parse_log(mirror.log("--first-parent", "-F", f"--grep={ref}", _FORMAT, head))
        if record.logged.stamp.commit not in changed
        and any(mark.ref == ref for mark in record.logged.marks)
    ]
    if marked:
        order = {
            sha: i
            for i, sha in enumerate(mirror.log("--first-parent", "--format=%H", head).split())
        }
        records = sorted([*records, *marked], key=lambda r: order.get(r.logged.stamp.commit, -1))
    cache: dict[str, RawBlock | None] = {}
    out: list[Version] = []
    previous: RawBlock | None = None
    for record in reversed(records):
        after = (
            _block_at(record.blobs[1], path, mirror.read_blob, cache, reading)
            if record.blobs
            else previous
        )
        marks = tuple(mark for mark in record.logged.marks if mark.ref == ref)
        if _shown(after) != _shown(previous) or marks:
            out.append(Version(record.logged.stamp, after, marks))
        previous = after
    return out


def _shown(raw: RawBlock | None) -> tuple[str | None, ...] | None:
    if raw is None:
        return None
    return (raw.tag, raw.value("shasum"), raw.value("overrideTag"))
