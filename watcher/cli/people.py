"""The people's commands: ``pin``, ``release``, ``rollback`` (each a commit by the person)
and the read-only ``history`` and ``status``.

None of them asks a registry anything. The changes go through the daemon's own
branch writer (:class:`~watcher.gitops.writer.BranchWriter`): one commit, pushed
without force, re-applied on a head that moved, a block changed meanwhile left to
whoever changed it. ``status`` learns of ``failing`` blocks from git (files and
blocks that cannot be read) and, with ``--daemon URL``, from a running daemon's
``/status.json``: the registry look-ups are the daemon's, and its budget's.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from watcher.blocks import BlockId, Field
from watcher.config import Author, Config
from watcher.errors import UsageError, WatcherError
from watcher.gitops.discovery import Discovery, FoundBlock, WatchSet
from watcher.gitops.history import Version, block_history
from watcher.gitops.mirror import GitMirror
from watcher.gitops.paths import matches_any
from watcher.gitops.steering import Steering
from watcher.gitops.values import Reading
from watcher.gitops.writer import BranchWriter, WriteOutcome
from watcher.steer import actions, selectors
from watcher.steer.actions import Plan
from watcher.steer.status import Row, Status, build, from_json, short, when

COMMANDS = ("pin", "release", "rollback", "history", "status")
_CHANGES = ("pin", "release", "rollback")
# A daemon's /status.json that does not answer within this is reported and left out.
_DAEMON_TIMEOUT = 10.0
_AUTHOR = re.compile(r"\s*(?P<name>[^<>]*?)\s*<(?P<email>[^<>\s]+)>\s*")


def run(args: argparse.Namespace, cfg: Config) -> int:
    # Who, before anything is fetched: a change nobody can sign is refused at once.
    author = resolve_author(args.author) if args.command in _CHANGES else None
    with _Remote(cfg) as remote:
        if args.command == "status":
            return _status(remote, args.branch, as_json=args.json, daemon=args.daemon)
        if args.command == "history":
            return _history(remote, args.branch, args.block, as_json=args.json)
        assert author is not None
        return _change(remote, args, author)


def _change(remote: _Remote, args: argparse.Namespace, author: Author) -> int:
    head, blocks = remote.branch(args.branch)
    block = _pick(args.block, args.branch, blocks)
    if args.command == "pin":
        plan = actions.pin(block, args.tag)
    elif args.command == "release":
        plan = actions.release(block)
    else:
        earlier: list[str | None] = []
        if args.to is None and block.policy.field is not None:
            versions = block_history(
                remote.mirror, head, block.id.file, block.id.path, remote.reading
            )
            earlier = _values(versions, block.policy.field)
        plan = actions.rollback(block, args.to, earlier)
    return _commit(remote, args.branch, plan, author)


# --- who ---------------------------------------------------------------------------------


def resolve_author(text: str | None) -> Author:
    """``--author 'Name <email>'``, else git's ``user.name``/``user.email`` here; else a
    UsageError: every change must say who made it."""
    if text is not None:
        match = _AUTHOR.fullmatch(text)
        if match is None or not match["name"]:
            raise UsageError(f"--author {text!r}: write it as 'Name <email>'")
        return Author(match["name"], match["email"])
    name, email = _git_config("user.name"), _git_config("user.email")
    if not name or not email:
        missing = " and ".join(
            key for key, value in (("user.name", name), ("user.email", email)) if not value
        )
        raise UsageError(
            f"every change must say who made it: pass --author 'Name <email>', or set git's "
            f"{missing} (git config --global {missing.split(' and ')[0]} ...)"
        )
    return Author(name, email)


def _git_config(key: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "config", "--get", key],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = done.stdout.strip()
    return value if done.returncode == 0 and value else None


# --- the remote, as one command reads it --------------------------------------------------


class _Remote:
    """The GitOps remote's clone (the daemon's, when it runs on this host), fetched once."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.mirror = GitMirror.of(cfg)
        self.reading = Reading.of(cfg.git)

    def __enter__(self) -> _Remote:
        self.mirror.fetch()
        return self

    def __exit__(self, *exc: object) -> None:
        # The clone's reader process (`git cat-file`) ends with the command.
        self.mirror.close()

    def environments(self) -> dict[str, str]:
        return self.mirror.branches(self.cfg.git.branches)

    def watch(self, names: Sequence[str]) -> WatchSet:
        """The blocks of the branches ``names`` (environments all), with their states.

        Every environment is discovered (parsing is cheap), so that followers are linked
        to their sources on other branches; only ``names`` and their followers' source
        branches have their history read."""
        every = Discovery(self.cfg, self.mirror).run(fetch=False)
        wanted = set(names)
        keep = set(wanted)
        for blocks in every.images.values():
            for block in blocks:
                origin = block.origin
                if block.id.branch in wanted and origin is not None and origin.block is not None:
                    keep.add(origin.block.branch)
        steered = Steering(self.mirror, self.reading).apply(_only(every, keep))
        return _only(steered, wanted)

    def branch(self, name: str) -> tuple[str, list[FoundBlock]]:
        """One environment's head and blocks; UsageError listing them if it is not one."""
        environments = self.environments()
        if name not in environments:
            known = "\n".join(f"  {branch}" for branch in sorted(environments)) or "  (none)"
            raise UsageError(
                f"{name} is not an environment branch on the remote (git.branches: "
                f"{', '.join(self.cfg.git.branches)}); the environments:\n{known}"
            )
        watch = self.watch([name])
        blocks = [block for found in watch.images.values() for block in found]
        return environments[name], sorted(blocks, key=lambda b: b.id)


def _only(watch: WatchSet, branches: set[str]) -> WatchSet:
    """``watch`` with the blocks and problems of ``branches`` only."""
    images = {
        image: kept
        for image, blocks in watch.images.items()
        if (kept := [block for block in blocks if block.id.branch in branches])
    }
    return WatchSet(
        {name: head for name, head in watch.branches.items() if name in branches},
        images,
        [problem for problem in watch.problems if problem.branch in branches],
    )


def _pick(selector: str, branch: str, blocks: Sequence[FoundBlock]) -> FoundBlock:
    candidates = [selectors.Candidate(b.id.ref, b.id.file, str(b.image)) for b in blocks]
    chosen = selectors.resolve(selector, branch, candidates)
    return next(block for block in blocks if block.id.ref == chosen.ref)


# --- pin, release, rollback ------------------------------------------------------------------


def _commit(remote: _Remote, branch: str, plan: Plan, author: Author) -> int:
    if plan.already is not None:
        print(f"{plan.already}: nothing to commit")
        return 0
    writer = BranchWriter(remote.mirror, branch, reading=remote.reading)
    outcome = writer.write(plan.updates, message=plan.message, author=author, record=True)
    if outcome.result == "committed" and outcome.commit is not None:
        print(f"{plan.summary} on {branch}: commit {outcome.commit[:12]} by {_who(author)}")
        for update in outcome.applied:
            print(f"  {update.describe()}")
        return 0
    print(f"watcher {plan.action}: {_failure(outcome)}; nothing was committed", file=sys.stderr)
    return 1


def _failure(outcome: WriteOutcome) -> str:
    if outcome.dropped:
        reasons = "; ".join(dropped.reason for dropped in outcome.dropped)
        return f"the block changed meanwhile ({reasons}): see `watcher status`, then run it again"
    if outcome.result == "conflict":
        return f"the branch kept moving through {outcome.attempts} attempts ({outcome.message})"
    return f"the push failed: {outcome.message}"


def _who(author: Author) -> str:
    return f"{author.name} <{author.email}>"


# --- history -------------------------------------------------------------------------------


def _values(versions: Sequence[Version], field: Field) -> list[str | None]:
    """The field's values through ``versions``, newest first."""
    return [version.raw.value(field) for version in reversed(versions) if version.raw is not None]


def _history(remote: _Remote, branch: str, selector: str, *, as_json: bool) -> int:
    head, blocks = remote.branch(branch)
    block = _pick(selector, branch, blocks)
    versions = block_history(remote.mirror, head, block.id.file, block.id.path, remote.reading)
    entries = [_entry(version, i == 0) for i, version in enumerate(versions)]
    if as_json:
        document = {
            "branch": branch,
            "block": block.id.ref,
            "image": str(block.image),
            "strategy": block.policy.strategy,
            "state": block.steer.state,
            "versions": entries,
        }
        print(json.dumps(document, indent=2))
        return 0
    print(
        f"{branch} {block.id.ref}: {block.image}, strategy {block.policy.strategy}, "
        f"now {block.steer.state}"
    )
    for entry in entries:
        values = "  ".join(
            f"{key} {entry[key]}" for key in ("tag", "shasum", "overrideTag") if entry[key]
        )
        print(
            f"{when(entry['time'])}  {entry['commit'][:12]}  {entry['action']:<8}  "
            f"{entry['author']}\n    {values or '(block removed)'}"
        )
    return 0


def _entry(version: Version, first: bool) -> dict[str, Any]:
    raw = version.raw
    action: str
    if version.marks:
        action = version.marks[-1].action
    else:
        action = "created" if first else "removed" if raw is None else "edit"
    return {
        "commit": version.stamp.commit,
        "author": version.stamp.author,
        "time": version.stamp.time,
        "action": action,
        "tag": raw.tag if raw is not None else None,
        "shasum": raw.value("shasum") if raw is not None else None,
        "overrideTag": raw.value("overrideTag") if raw is not None else None,
    }


# --- status -------------------------------------------------------------------------------


def _status(remote: _Remote, glob: str | None, *, as_json: bool, daemon: str | None) -> int:
    names = [b for b in remote.environments() if glob is None or matches_any([glob], b)]
    if glob is not None and not names:
        raise UsageError(f"--branch {glob}: no environment branch matches")
    watch = remote.watch(names) if names else WatchSet()
    blocks = [block for found in watch.images.values() for block in found]
    notes = ["Read from git: failures the registry look-ups meet are the daemon's (--daemon)."]
    failures: dict[BlockId, str] = {}
    if daemon is not None:
        notes, failures = _daemon_failures(daemon, blocks)
    status = build(watch.branches, blocks, watch.problems, failures, notes=notes)
    if as_json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        print(_status_text(status))
    return 0


def _daemon_failures(
    url: str, blocks: Sequence[FoundBlock]
) -> tuple[list[str], dict[BlockId, str]]:
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--daemon {url!r}: give the daemon's http:// or https:// address")
    address = url.rstrip("/") + "/status.json"
    try:
        with urllib.request.urlopen(address, timeout=_DAEMON_TIMEOUT) as answer:
            theirs = from_json(json.load(answer))
    except (OSError, ValueError, KeyError, TypeError, urllib.error.URLError) as exc:
        raise WatcherError(f"cannot read {address}: {exc}") from None
    by_ref = {(block.id.branch, block.id.ref): block.id for block in blocks}
    failures = {
        by_ref[(env.branch, row.block)]: row.reason
        for env in theirs.environments
        for row in env.rows
        if row.state == "failing" and (env.branch, row.block) in by_ref
    }
    return [f"Failures from the daemon at {url}.", *theirs.notes], failures


def _status_text(status: Status) -> str:
    lines: list[str] = [*status.notes]
    for env in status.environments:
        lines.append(f"\n{env.branch} ({env.commit[:12]})")
        header = ("STATE", "BLOCK", "IMAGE", "STRATEGY", "VALUE", "CHANGED")
        table = [header, *(_cells(row) for row in env.rows)]
        widths = [max(len(cells[i]) for cells in table) for i in range(len(header) - 1)]
        for cells, row in zip(table, [None, *env.rows], strict=True):
            text = "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=False))
            lines.append(f"  {text}  {cells[-1]}".rstrip())
            if row is not None and row.reason:
                lines.append(f"      {row.reason}")
        for problem in env.problems:
            lines.append(f"  failing  {problem.file}:{problem.line}: {problem.message}")
    counts = status.counts()
    lines.append("\n" + ", ".join(f"{count} {state}" for state, count in counts.items()))
    return "\n".join(lines).lstrip("\n")


def _cells(row: Row) -> tuple[str, ...]:
    value = f"{row.field} {short(row.value)}" if row.field and row.value else row.value or "-"
    changed = "-"
    if row.changed is not None:
        changed = f"{when(row.changed.time)} by {row.changed.author}"
    tag = f":{row.tag}" if row.tag else ""
    return (row.state, row.block, f"{row.image}{tag}", row.strategy, value, changed)
