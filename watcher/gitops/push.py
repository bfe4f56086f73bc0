"""Pushes: several branches in one ``git push``, each ref still a compare-and-swap.

Blocking. A push names each branch with a plain refspec (``sha:refs/heads/b``):
never forced, and not atomic, so the remote takes or refuses each ref on its
own (a ref that moved meanwhile is refused as a non-fast-forward; the remote
locks each ref against the value it advertised). ``git push --porcelain``
reports every ref on its own line, and a refused ref is retried alone by its
branch's writer after a fetch.

Writers of different branches call :meth:`PushQueue.push` from their own
threads. The first pushes at once; while its push is in flight the next ones
wait and then go out together in one ``git push``: one connection, one pack,
one run of the remote's hooks, instead of one per branch. A writer alone
waits for nobody.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

PushStatus = Literal["ok", "conflict", "error"]
# A push that lost the race: the branch moved since our parent was read.
_CONFLICT_MARKERS = ("non-fast-forward", "fetch first", "stale info")


@dataclass(frozen=True)
class PushResult:
    """``ok``: the branch now points at ``commit``; ``conflict``: it moved meanwhile;
    ``error``: anything else (hook, network, auth), with a redacted message."""

    result: PushStatus
    message: str = ""
    commit: str | None = None


def summary(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    keep = [
        line
        for line in lines
        if line.startswith(("!", "error:", "fatal:", "remote:", "hint: Updates were rejected"))
    ]
    return " | ".join(keep or lines)[:1000]


def results(status: int, output: str, shas: Mapping[str, str]) -> dict[str, PushResult]:
    """Each branch's result, from ``git push --porcelain``'s exit status and output."""
    lines: dict[str, str] = {}
    for text in output.splitlines():
        parts = text.split("\t")
        if len(parts) >= 3 and ":refs/heads/" in parts[1]:
            lines[parts[1].split(":refs/heads/", 1)[1]] = text
    out: dict[str, PushResult] = {}
    for branch, sha in shas.items():
        line = lines.get(branch)
        if line is not None and line[:1] in (" ", "=", "*"):
            out[branch] = PushResult("ok", "", sha)
        elif (
            line is not None and "[rejected]" in line and any(m in line for m in _CONFLICT_MARKERS)
        ):
            out[branch] = PushResult("conflict", summary(line), sha)
        elif f"cannot lock ref 'refs/heads/{branch}'" in output and "but expected" in output:
            # Another pusher updated the branch between the remote's check and its
            # ref update (two replicas at once): the branch moved, which is a
            # conflict to fetch and re-apply, not a refusal to wait out.
            out[branch] = PushResult("conflict", summary(output), sha)
        elif line is None and status == 0:
            out[branch] = PushResult("ok", "", sha)
        else:
            out[branch] = PushResult("error", summary(output), sha)
    return out


@dataclass
class _Slot:
    sha: str
    result: PushResult | None = None


class PushQueue:
    """Pushes from many threads, batched while a push is in flight (group commit)."""

    def __init__(self, push_now: Callable[[Mapping[str, str]], dict[str, PushResult]]) -> None:
        self._push_now = push_now
        self._changed = threading.Condition()
        self._waiting: dict[str, _Slot] = {}
        self._busy = False

    def push(self, branch: str, sha: str) -> PushResult:
        slot = _Slot(sha)
        with self._changed:
            while branch in self._waiting:  # one commit per branch per push
                self._changed.wait()
            self._waiting[branch] = slot
            while slot.result is None and self._busy:
                self._changed.wait()
            if slot.result is not None:
                return slot.result
            self._busy = True
            batch, self._waiting = self._waiting, {}
            self._changed.notify_all()
        outcome: dict[str, PushResult] = {}
        try:
            outcome = self._push_now({name: s.sha for name, s in batch.items()})
        finally:
            with self._changed:
                for name, waiting in batch.items():
                    waiting.result = outcome.get(name) or PushResult(
                        "error", "the push did not report this branch", waiting.sha
                    )
                self._busy = False
                self._changed.notify_all()
        assert slot.result is not None
        return slot.result
