"""The git path in batches: trees built in one go, pushes of several branches together,
discovery reading only what changed. Real git, a real bare remote with hooks.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import GitRemote, git, make_remote
from tests.soak import set_hook
from watcher.blocks import BlockId, Edit, Update
from watcher.config import Author, load_text
from watcher.gitops.discovery import Discovery
from watcher.gitops.mirror import GitMirror
from watcher.gitops.profile import STAGES
from watcher.gitops.writer import BranchWriter

pytestmark = pytest.mark.integration

AUTHOR = Author(name="image-watcher-test", email="watcher@test.invalid")
BRANCHES = [f"environment/e{n}" for n in range(6)]
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def values(n: int, digest: str = D1) -> str:
    return (
        f"# app{n}\nimage:\n  repository: eu.gcr.io/p/app{n}\n  tag: master\n  shasum: {digest}\n"
    )


FILES = {f"apps/app{n}/values.yaml": values(n) for n in range(4)}


@pytest.fixture
def remote(tmp_path: Path) -> GitRemote:
    return make_remote(tmp_path, dict.fromkeys(BRANCHES, FILES))


@pytest.fixture
def mirror(remote: GitRemote, tmp_path: Path) -> GitMirror:
    mirror = GitMirror(remote.url, tmp_path / "clone", AUTHOR)
    mirror.fetch()
    return mirror


def update(branch: str, n: int, new: str = D2) -> Update:
    path = ("image",)
    return Update(
        BlockId(branch, f"apps/app{n}/values.yaml", path),
        Edit(0, path, "shasum", D1, new, f"eu.gcr.io/p/app{n}", "master"),
        f"eu.gcr.io/p/app{n}",
        "digest",
    )


def count_pushes(remote: GitRemote, log: Path) -> None:
    """A pre-receive hook that logs each push (one line per ref) and takes a moment."""
    set_hook(remote, f'while read old new ref; do echo "$$ $ref" >> {log}; done; sleep 0.3')


def pushes(log: Path) -> list[set[str]]:
    """The refs of each push, by receiving process."""
    by_pid: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        pid, ref = line.split(" ", 1)
        by_pid.setdefault(pid, set()).add(ref)
    return list(by_pid.values())


# --- trees ---------------------------------------------------------------------------------

paths = st.lists(
    st.sampled_from(
        ["values.yaml", "apps/app0/values.yaml", "apps/app1/values.yaml", "apps/new/values.yaml",
         "a/b/c/d.yaml", "apps/app0/extra.yaml", "z.yaml", "apps-x/v.yaml", "apps.yaml"]
    ),
    min_size=1, max_size=5, unique=True,
)  # fmt: skip


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(changed=paths, content=st.binary(max_size=40))
def test_a_commit_has_the_tree_git_itself_builds(
    mirror: GitMirror, remote: GitRemote, tmp_path: Path, changed: list[str], content: bytes
) -> None:
    """Promise: the trees built here are the ones git's own index would write."""
    parent = remote.head(BRANCHES[0])
    changes = {path: content + path.encode() for path in changed}
    commit = mirror.commit(parent, changes, "m\n")
    index = tmp_path / f"index-{os.getpid()}-{threading.get_ident()}"
    env = {**os.environ, "GIT_INDEX_FILE": str(index), "GIT_DIR": str(mirror.workdir)}

    def run(*args: str, stdin: bytes | None = None) -> str:
        return (
            subprocess.run(["git", *args], env=env, input=stdin, capture_output=True, check=True)
            .stdout.decode()
            .strip()
        )

    run("read-tree", parent)
    for path, data in changes.items():
        blob = run("hash-object", "-w", "--stdin", stdin=data)
        run("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}")
    expected = run("write-tree")
    index.unlink()
    assert run("rev-parse", f"{commit}^{{tree}}") == expected
    assert run("rev-parse", f"{commit}^") == parent
    git(mirror.workdir, "fsck", "--no-dangling", "--connectivity-only")


def test_trees_written_by_old_tools_are_rewritten_as_git_writes_them(
    mirror: GitMirror, remote: GitRemote, tmp_path: Path
) -> None:
    """A zero-padded mode from an old tool beside the edited file: the new tree carries
    the canonical mode, as a commit made with git would (index-pack --strict refuses
    the other); trees off the edited paths are kept as they are."""
    branch = BRANCHES[0]
    blob = git(remote.path, "rev-parse", f"{branch}:apps/app0/values.yaml")
    odd = b"100664 notes.txt\0" + bytes.fromhex(blob)
    sub = subprocess.run(
        ["git", "hash-object", "-t", "tree", "-w", "--literally", "--stdin"],
        cwd=remote.path, input=odd, capture_output=True, check=True,
    ).stdout.decode().strip()  # fmt: skip
    root = git(remote.path, "rev-parse", f"{branch}^{{tree}}")
    listing = git(remote.path, "ls-tree", root).replace("\t", " ").splitlines()
    entries = (
        b"".join(
            f"{mode} {name}".encode() + b"\0" + bytes.fromhex(sha)
            for mode, _, sha, name in (line.split(" ", 3) for line in listing)
        )
        + b"040000 old\0"
        + bytes.fromhex(sub)
    )  # zero-padded, and sorts last here
    tree = subprocess.run(
        ["git", "hash-object", "-t", "tree", "-w", "--literally", "--stdin"],
        cwd=remote.path, input=entries, capture_output=True, check=True,
    ).stdout.decode().strip()  # fmt: skip
    parent = git(remote.path, "commit-tree", tree, "-p", remote.head(branch), "-m", "old tool")
    git(remote.path, "update-ref", f"refs/heads/{branch}", parent)
    mirror.fetch()
    commit = mirror.commit(parent, {"apps/app0/values.yaml": values(0, D2).encode()}, "m\n")
    raw = mirror.read_object(git(mirror.workdir, "rev-parse", f"{commit}^{{tree}}"))[1]
    assert b"40000 old\0" in raw and b"040000 old\0" not in raw
    # A tree off the edited paths is kept as it is, not rewritten.
    assert git(mirror.workdir, "rev-parse", f"{commit}:old") == sub


def test_a_file_where_a_directory_is_refused(mirror: GitMirror, remote: GitRemote) -> None:
    parent = remote.head(BRANCHES[0])
    result = mirror.commit_and_push(BRANCHES[0], parent, {"apps": b"x"}, "m")
    assert result.result == "error" and "directory" in result.message
    assert remote.head(BRANCHES[0]) == parent


# --- pushes --------------------------------------------------------------------------------


def test_writers_pushing_at_once_share_one_push(
    mirror: GitMirror, remote: GitRemote, tmp_path: Path
) -> None:
    """Promise: branches written at the same time go out in fewer pushes than branches,
    every one landing as a fast-forward of its branch."""
    log = tmp_path / "pushes.log"
    count_pushes(remote, log)
    before = {b: remote.head(b) for b in BRANCHES}
    outcomes = {}

    def write(branch: str) -> None:
        outcomes[branch] = BranchWriter(mirror, branch).write(
            [update(branch, 0), update(branch, 1)]
        )

    threads = [threading.Thread(target=write, args=(b,)) for b in BRANCHES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {b: o.result for b, o in outcomes.items()} == dict.fromkeys(BRANCHES, "committed")
    for branch in BRANCHES:
        assert remote.head(branch) == outcomes[branch].commit
        assert git(remote.path, "rev-parse", f"{outcomes[branch].commit}^") == before[branch]
        assert f"shasum: {D2}" in remote.read(branch, "apps/app0/values.yaml")
    batches = pushes(log)
    assert sum(len(refs) for refs in batches) == len(BRANCHES)
    assert len(batches) < len(BRANCHES)
    assert max(len(refs) for refs in batches) > 1


def test_a_refused_ref_is_retried_alone_and_the_others_land(
    mirror: GitMirror, remote: GitRemote, tmp_path: Path
) -> None:
    """Promise: one push of several branches is a compare-and-swap per branch: a branch a
    person moved meanwhile is refused alone, the others land, and its retry keeps the
    person's commit."""
    moved = BRANCHES[1]
    parents = {b: remote.head(b) for b in BRANCHES[:3]}
    person = remote.commit(moved, {"notes.txt": "a person's commit\n"}, "person")
    shas = {
        b: mirror.commit(parents[b], {"apps/app0/values.yaml": values(0, D2).encode()}, "m\n")
        for b in parents
    }
    results = mirror._push_now(shas)
    assert results[moved].result == "conflict"
    assert remote.head(moved) == person
    for branch in set(parents) - {moved}:
        assert results[branch].result == "ok" and remote.head(branch) == shas[branch]
        assert mirror.head(branch) == shas[branch]  # the tracking ref follows what landed
    log = tmp_path / "pushes.log"
    count_pushes(remote, log)
    outcome = BranchWriter(mirror, moved, backoff=0.01).write([update(moved, 0)])
    assert outcome.result == "committed" and outcome.attempts == 2
    assert git(remote.path, "rev-parse", f"{remote.head(moved)}^") == person
    assert pushes(log) == [{f"refs/heads/{moved}"}]  # the retry went alone


def test_a_remote_refusing_one_branch_does_not_hold_back_the_others(
    mirror: GitMirror, remote: GitRemote
) -> None:
    refused = BRANCHES[2]
    set_hook(remote, f'while read old new ref; do [ "$ref" = refs/heads/{refused} ] && '
                     'echo "no: frozen" && exit 1; done; exit 0')  # fmt: skip
    shas = {
        b: mirror.commit(remote.head(b), {"apps/app0/values.yaml": values(0, D2).encode()}, "m\n")
        for b in BRANCHES[:3]
    }
    before = remote.head(refused)
    # A pre-receive hook sees every ref at once: refusing one refuses the push ...
    results = mirror._push_now(shas)
    assert {r.result for r in results.values()} == {"error"}
    # ... so a grouped push tries each failed branch again alone.
    results = mirror._push_grouped(shas)
    assert results[refused].result == "error" and "frozen" in results[refused].message
    assert remote.head(refused) == before
    for branch in set(shas) - {refused}:
        assert results[branch].result == "ok" and remote.head(branch) == shas[branch]


# --- discovery -----------------------------------------------------------------------------


def test_discovery_reads_only_what_changed(mirror: GitMirror, remote: GitRemote) -> None:
    config = load_text(
        f"git: {{url: '{remote.url}', files: ['apps/*/values.yaml']}}\n", "t.yaml", {}
    )
    discovery = Discovery(config, mirror)
    STAGES.reset()
    cold = discovery.run()
    assert cold.block_count == len(BRANCHES) * len(FILES)
    stages = STAGES.snapshot()
    assert stages["discovery: list files"]["items"] == len(BRANCHES)
    # Every branch holds the same four files: four blobs read, in one round trip.
    assert (stages["discovery: read"]["count"], stages["discovery: read"]["items"]) == (1, 4)
    STAGES.reset()
    warm = discovery.run()
    assert "discovery: list files" not in STAGES.snapshot()  # nothing moved, nothing read
    assert warm.images == cold.images and warm.branches == cold.branches
    remote.commit(BRANCHES[3], {"apps/app2/values.yaml": values(2, D2)}, "person")
    STAGES.reset()
    moved = discovery.run()
    stages = STAGES.snapshot()
    assert stages["discovery: list files"]["items"] == 1  # one branch listed again ...
    assert stages["discovery: read"]["items"] == 1  # ... and one blob read: the new one
    changed = [b for blocks in moved.images.values() for b in blocks if b.raw.shasum == D2]
    assert [b.id for b in changed] == [BlockId(BRANCHES[3], "apps/app2/values.yaml", ("image",))]
