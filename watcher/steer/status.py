"""The status of every block, per environment: what ``watcher status``, ``/status.json``
and the status page show.

Pure. :func:`build` turns a watch set (every block with its :class:`~watcher.steer.holds.Steer`),
the problems discovery found and the failures the checks met into a :class:`Status`;
:meth:`Status.to_json` and :func:`from_json` are the ``/status.json`` document.

States: ``following``, ``pinned``, ``held`` and ``off`` come from git
(:mod:`watcher.steer.holds`); ``promoted`` is a ``follow`` block that follows, with
its source (the branch, block and commit its value comes from); ``failing`` is a
block the watcher would follow but cannot this time, with the reason (its image
could not be looked up, its tag is not in the registry, a push keeps failing, a
follower has no source). A values file that cannot be read is
listed among the environment's ``problems``, with its line.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from watcher.blocks import BlockId, format_path
from watcher.config import format_duration
from watcher.gitops.discovery import FoundBlock, Problem
from watcher.steer.holds import STATES, Stamp, Steer

StatusState = Literal["following", "promoted", "pinned", "held", "off", "failing"]
STATUS_STATES: tuple[StatusState, ...] = get_args(StatusState)
assert set(STATES) <= set(STATUS_STATES)


@dataclass(frozen=True)
class Row:
    """One block of one environment, as people read it."""

    block: str  # file#key.path
    file: str
    path: str
    line: int
    image: str
    tag: str | None
    strategy: str
    field: str | None
    value: str | None
    state: StatusState
    reason: str = ""
    holds: str | None = None
    replaced: str | None = None
    changed: Stamp | None = None
    action: str | None = None
    # A follow block's source: ``branch:file#key.path@commit`` (the commit that put the
    # value there, else the branch's head).
    source: str | None = None


@dataclass(frozen=True)
class FileProblem:
    file: str
    line: int
    message: str


@dataclass(frozen=True)
class Environment:
    branch: str
    commit: str
    rows: tuple[Row, ...] = ()
    problems: tuple[FileProblem, ...] = ()


@dataclass(frozen=True)
class BudgetUse:
    """A budget's requests in the current window against its cap."""

    name: str
    used: int
    cap: int
    per: float


@dataclass(frozen=True)
class Status:
    environments: tuple[Environment, ...] = ()
    budgets: tuple[BudgetUse, ...] = ()
    generated: float = field(default_factory=time.time)
    source: str = "git"  # "daemon": with the checks' failures; "git": from git alone
    notes: tuple[str, ...] = ()

    def counts(self) -> dict[StatusState, int]:
        """Blocks by state; ``promoted`` only where some block follows another branch."""
        out: dict[StatusState, int] = dict.fromkeys(STATUS_STATES, 0)
        for env in self.environments:
            for row in env.rows:
                out[row.state] += 1
        if not out["promoted"]:
            del out["promoted"]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "generated": self.generated,
            "source": self.source,
            "notes": list(self.notes),
            "counts": self.counts(),
            "budgets": [asdict(budget) for budget in self.budgets],
            "environments": [
                {
                    "branch": env.branch,
                    "commit": env.commit,
                    "blocks": [_row_json(row) for row in env.rows],
                    "problems": [asdict(problem) for problem in env.problems],
                }
                for env in self.environments
            ],
        }


def _row_json(row: Row) -> dict[str, Any]:
    data = asdict(row)
    data["changed"] = asdict(row.changed) if row.changed is not None else None
    return data


def from_json(data: Mapping[str, Any]) -> Status:
    """A ``/status.json`` document back as a :class:`Status` (KeyError/TypeError if not one)."""
    environments = []
    for env in data["environments"]:
        rows = []
        for block in env["blocks"]:
            changed = block.get("changed")
            rows.append(
                Row(**{**block, "changed": Stamp(**changed) if changed is not None else None})
            )
        problems = tuple(FileProblem(**problem) for problem in env.get("problems", ()))
        environments.append(Environment(env["branch"], env["commit"], tuple(rows), problems))
    return Status(
        environments=tuple(environments),
        budgets=tuple(BudgetUse(**budget) for budget in data.get("budgets", ())),
        generated=float(data.get("generated", 0)),
        source=str(data.get("source", "daemon")),
        notes=tuple(data.get("notes", ())),
    )


def build(
    branches: Mapping[str, str],
    blocks: Iterable[FoundBlock],
    problems: Iterable[Problem] = (),
    failures: Mapping[BlockId, str] | None = None,
    *,
    budgets: Sequence[BudgetUse] = (),
    source: str = "git",
    notes: Sequence[str] = (),
) -> Status:
    """The status of ``blocks`` on ``branches`` (branch -> commit), sorted by branch and
    block; ``failures``: why a block the watcher follows could not be decided or written."""
    failures = failures or {}
    rows: dict[str, list[Row]] = {branch: [] for branch in branches}
    for block in blocks:
        rows.setdefault(block.id.branch, []).append(row(block, failures.get(block.id)))
    found: dict[str, list[FileProblem]] = {}
    for problem in problems:
        found.setdefault(problem.branch, []).append(
            FileProblem(problem.file, problem.line, problem.message)
        )
    environments = tuple(
        Environment(
            branch,
            branches.get(branch, ""),
            tuple(sorted(rows[branch], key=lambda r: (r.file, r.line, r.path))),
            tuple(sorted(found.get(branch, []), key=lambda p: (p.file, p.line))),
        )
        for branch in sorted(rows.keys() | found.keys())
    )
    return Status(environments, tuple(budgets), source=source, notes=tuple(notes))


def state_of(block: FoundBlock, failing: bool = False) -> StatusState:
    """A block's state as status shows it: its steer's, ``promoted`` for a follow block
    that follows, ``failing`` for a following block whose last check or write failed."""
    if block.steer.state != "following":
        return block.steer.state
    if failing:
        return "failing"
    return "promoted" if block.origin is not None else "following"


def row(block: FoundBlock, failure: str | None = None) -> Row:
    """One block's row: its steer's state, or ``failing`` when it follows and failed."""
    steer = block.steer
    origin = block.origin
    if failure is None and origin is not None and steer.state == "following":
        # A follower that cannot follow says so from git alone (no daemon needed).
        failure = origin.problem or (origin.missing if origin.block is None else None)
    state: StatusState = state_of(block, failure is not None)
    reason = explain(block, steer)
    source = None
    if origin is not None and origin.block is not None:
        source = f"{origin.block}@{origin.commit}" if origin.commit else str(origin.block)
    if state == "promoted" and origin is not None:
        reason = _promoted(block)
    if state == "failing" and failure is not None:
        reason = failure
    elif failure is not None and steer.needs_facts:
        reason = f"{reason}; look-ups failing: {failure}"
    return Row(
        block=block.id.ref,
        file=block.id.file,
        path=format_path(block.id.path),
        line=block.raw.line,
        image=str(block.image),
        tag=block.raw.tag,
        strategy=block.policy.strategy,
        field=steer.field,
        value=steer.value,
        state=state,
        reason=reason,
        holds=steer.holds,
        replaced=steer.replaced,
        changed=steer.changed,
        action=steer.action,
        source=source,
    )


def _promoted(block: FoundBlock) -> str:
    """Where a promoted block's value comes from, and whether it is there yet."""
    origin = block.origin
    assert origin is not None
    since = f" (commit {origin.commit[:12]}{_who(origin.since)})" if origin.commit else ""
    where = f"from {origin.branch}{since}"
    if origin.field is None or origin.value is None:
        return f"promoted {where}: the source holds no value yet"
    if block.raw.value(origin.field) == origin.value and (
        origin.field == "overrideTag" or not block.raw.override_tag
    ):
        return f"promoted {where}"
    wait = ""
    if origin.after > 0:
        wait = f", once it has stood there {format_duration(origin.after)}"
    return f"promoting {origin.field} {short(origin.value)} {where}{wait}"


def explain(block: FoundBlock, steer: Steer) -> str:
    """Why a block is not following, in a sentence (empty when it follows). Digests are
    shortened as people quote them; the values themselves are whole in the row."""
    who = _who(steer.changed)
    if steer.state == "off":
        return "watch.strategy: off: the watcher never touches this block"
    if steer.state == "pinned":
        return (
            f"pinned to {steer.field} {short(steer.value)}{who}; "
            "`watcher release` lets the watcher follow again"
        )
    if steer.state != "held":
        return ""
    what = f"held at {steer.field} {short(steer.value)}{who}"
    if steer.replaced:
        what += f", replacing the watcher's {short(steer.replaced)}"
    if steer.holds == "until-released":
        return f"{what}; until `watcher release`"
    if block.policy.strategy == "digest":
        return f"{what}; until tag {block.raw.tag} points at a new build (or `watcher release`)"
    if block.policy.strategy == "follow" and block.policy.source:
        return f"{what}; until {block.policy.source} holds a new value (or `watcher release`)"
    return (
        f"{what}; until the {block.policy.strategy} policy picks a new tag (or `watcher release`)"
    )


def short(value: str | None) -> str:
    """A value as a sentence quotes it: ``sha256:`` and 12 hex digits for a digest."""
    if not value:
        return "(empty)"
    return value[:19] if value.startswith("sha256:") and len(value) > 19 else value


def _who(stamp: Stamp | None) -> str:
    if stamp is None:
        return ""
    return f" by {stamp.author} on {when(stamp.time)}"


def when(seconds: float) -> str:
    """A time as people read it in a status line: ``2026-05-01 10:04 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))
