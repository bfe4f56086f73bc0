"""Reading holds from real git history: the marks of a branch read once and then only
its new commits, a rewritten branch read again whole, the commit behind a held value,
and a block's versions. A bare remote, a clone, people committing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import GitRemote, git, make_remote
from watcher.config import Author
from watcher.gitops.history import Ledger, block_history, last_change, parse_log
from watcher.gitops.mirror import GitMirror
from watcher.steer import trailers
from watcher.steer.trailers import Mark

pytestmark = pytest.mark.integration

BRANCH = "environment/a"
FILE = "apps/api/values.yaml"
REF = f"{FILE}#image"
D = ["sha256:" + c * 64 for c in "0123456789"]


def values(shasum: str) -> str:
    return f"image:\n  repository: eu.gcr.io/p/api\n  tag: master\n  shasum: {shasum}\n"


def watcher_commit(remote: GitRemote, n: int) -> str:
    message = trailers.message("image-watcher: update", [], [Mark("set", REF, "shasum", D[n])])
    return remote.commit(BRANCH, {FILE: values(D[n])}, message)


@pytest.fixture
def remote(tmp_path: Path) -> GitRemote:
    return make_remote(tmp_path, {BRANCH: {FILE: values(D[0])}})


@pytest.fixture
def mirror(remote: GitRemote, tmp_path: Path) -> GitMirror:
    return GitMirror(remote.url, tmp_path / "clone", Author())


def head(mirror: GitMirror) -> str:
    mirror.fetch()
    found = mirror.head(BRANCH)
    assert found is not None
    return found


def test_the_ledger_reads_new_commits_only_and_a_rewrite_whole(
    remote: GitRemote, mirror: GitMirror
) -> None:
    watcher_commit(remote, 1)
    ledger = Ledger(mirror)
    first = head(mirror)
    assert ledger.book(BRANCH, first)[REF].latest["shasum"].mark.value == D[1]
    watcher_commit(remote, 2)
    remote.commit(BRANCH, {"README": "notes\n"}, "notes")
    second = head(mirror)
    # The incremental read rests on git printing the old head as the new commits'
    # boundary: shown on the real output.
    records = parse_log(
        mirror.log("--first-parent", "--boundary", "--format=%x1e%m%x1f%H%x1f%an%x1f%at%x1f%x1f",
                   second, f"^{first}")
    )  # fmt: skip
    assert [r.logged.stamp.commit for r in records if r.boundary] == [first]
    book = ledger.book(BRANCH, second)
    assert book[REF].latest["shasum"].mark.value == D[2]
    assert book[REF].latest["shasum"].stamp.commit == git(remote.path, "rev-parse", f"{BRANCH}^")
    # The same as reading the whole history afresh.
    fresh = Ledger(mirror).book(BRANCH, second)
    assert fresh[REF].latest == book[REF].latest and fresh[REF].written == book[REF].written
    # Rewritten (force-pushed back to the first commit, then another write): the
    # marks of the commits that are gone are gone too.
    git(remote.path, "update-ref", f"refs/heads/{BRANCH}", first)
    watcher_commit(remote, 3)
    rewritten = ledger.book(BRANCH, head(mirror))
    assert rewritten[REF].latest["shasum"].mark.value == D[3]
    assert rewritten == Ledger(mirror).book(BRANCH, head(mirror))


def test_the_commit_behind_a_held_value_and_the_versions_of_a_block(
    remote: GitRemote, mirror: GitMirror
) -> None:
    wrote = watcher_commit(remote, 1)
    remote.commit(BRANCH, {"README": "notes\n"}, "unrelated")
    edit = remote.commit(BRANCH, {FILE: values(D[5])}, "api: the build that works")
    remote.commit(BRANCH, {FILE: values(D[5]).replace("image:", "# pinned by ops\nimage:")}, "doc")
    now = head(mirror)
    found = last_change(mirror, now, FILE, ("image",), "shasum", since=wrote)
    assert found is not None and found.commit == edit
    assert found.author == "Dev Person <dev@example.com>"
    versions = block_history(mirror, now, FILE, ("image",))
    assert [v.raw.shasum if v.raw else None for v in versions] == [D[0], D[1], D[5]]
    assert [v.marks for v in versions][1] == (Mark("set", REF, "shasum", D[1]),)
