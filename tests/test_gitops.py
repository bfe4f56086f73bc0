"""gitops.py against real git: a bare remote, people committing to it, and our clone."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from tests.conftest import GitRemote, git, make_remote
from watcher.blocks import BlockId, Edit, KeyPath, Update
from watcher.config import Author
from watcher.errors import GitError
from watcher.gitops.mirror import GitMirror
from watcher.gitops.paths import match_path
from watcher.gitops.writer import BranchWriter
from watcher.logs import redact

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
AUTHOR = Author(name="image-watcher-test", email="watcher@test.invalid")
BRANCH = "environment/b2c1"


def values_file(web: str = D1, api: str = D1, pin: str = "") -> str:
    return (
        "# web and api\n"
        "web:\n"
        "  image:\n"
        "    repository: eu.gcr.io/p/web\n"
        "    tag: master\n"
        f"    shasum: {web}\n"
        f"    overrideTag: {pin}\n"
        "api:\n"
        "  image:\n"
        "    repository: eu.gcr.io/p/api\n"
        "    tag: master  # follow master\n"
        f"    shasum: {api}\n"
    )


FILES = {
    "values.yaml": values_file(),
    "apps/web/values.yaml": "image:\n  repository: eu.gcr.io/p/web\n  tag: master\n",
    "apps/web/templates/deploy.yaml": "kind: Deployment\n",
    "apps/api/values.yaml": "image: {repository: eu.gcr.io/p/api, tag: master}\n",
}


@pytest.fixture
def remote(tmp_path: Path) -> GitRemote:
    return make_remote(
        tmp_path,
        {
            BRANCH: FILES,
            "environment/b2b1": {"values.yaml": values_file()},
            "environment/team/x": {"values.yaml": values_file()},
            "feature/other": {"values.yaml": values_file()},
        },
    )


@pytest.fixture
def mirror(remote: GitRemote, tmp_path: Path) -> GitMirror:
    mirror = GitMirror(remote.url, tmp_path / "clone", AUTHOR)
    mirror.fetch()
    return mirror


def update(
    path: KeyPath,
    old: str | None,
    new: str,
    *,
    image: str = "eu.gcr.io/p/web",
    file: str = "values.yaml",
    branch: str = BRANCH,
    field: str = "shasum",
) -> Update:
    assert field in ("shasum", "overrideTag")
    return Update(
        block=BlockId(branch, file, path),
        edit=Edit(0, path, field, old, new, image, "master"),  # type: ignore[arg-type]
        image=image,
        strategy="digest" if field == "shasum" else "newest",
    )


def tree(remote: GitRemote, commit: str) -> dict[str, tuple[str, str]]:
    out = git(remote.path, "ls-tree", "-r", "--full-tree", commit)
    entries = {}
    for line in out.splitlines():
        meta, path = line.split("\t")
        mode, _, sha = meta.split(" ")
        entries[path] = (mode, sha)
    return entries


def is_ancestor(remote: GitRemote, ancestor: str, commit: str) -> bool:
    result = subprocess.run(
        ["git", "merge-base", "--is-ancestor", ancestor, commit], cwd=remote.path, check=False
    )
    return result.returncode == 0


# --- globs ---------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("environment/*", "environment/b2c1", True),
        ("environment/*", "environment/team/x", False),
        ("environment/**", "environment/team/x", True),
        ("environment/**", "environment", True),
        ("apps/*/values.yaml", "apps/web/values.yaml", True),
        ("apps/*/values.yaml", "apps/web/sub/values.yaml", False),
        ("apps/**/values.yaml", "apps/web/sub/values.yaml", True),
        ("apps/**/values.yaml", "apps/values.yaml", True),
        ("**/values.yaml", "values.yaml", True),
        ("values.yaml", "apps/web/values.yaml", False),
        ("env-?", "env-1", True),
        ("env-[ab]", "env-c", False),
        ("**", "any/thing/at/all", True),
    ],
)
def test_match_path(pattern: str, path: str, expected: bool) -> None:
    assert match_path(pattern, path) is expected


@pytest.mark.unit
def test_redact() -> None:
    assert redact("fatal: https://bob:s3cret@host/x.git failed") == (
        "fatal: https://***@host/x.git failed"
    )
    assert redact("git@github.com:acme/x.git") == "git@github.com:acme/x.git"


# --- the mirror ---------------------------------------------------------------------------


@pytest.mark.integration
def test_fetch_branches_files_read(mirror: GitMirror, remote: GitRemote) -> None:
    branches = mirror.branches(["environment/*"])
    assert branches == {
        BRANCH: remote.head(BRANCH),
        "environment/b2b1": remote.head("environment/b2b1"),
    }
    assert set(mirror.branches(["environment/**", "feature/*"])) == {
        BRANCH,
        "environment/b2b1",
        "environment/team/x",
        "feature/other",
    }
    commit = branches[BRANCH]
    assert mirror.files(commit, ["apps/*/values.yaml", "values.yaml"]) == [
        "apps/api/values.yaml",
        "apps/web/values.yaml",
        "values.yaml",
    ]
    assert mirror.files(commit, ["**/*.yaml"]) == [
        "apps/api/values.yaml",
        "apps/web/templates/deploy.yaml",
        "apps/web/values.yaml",
        "values.yaml",
    ]
    assert mirror.read(commit, "values.yaml") == values_file().encode()
    with pytest.raises(KeyError):
        mirror.read(commit, "nope.yaml")
    assert mirror.head(BRANCH) == commit
    assert mirror.head("environment/none") is None


@pytest.mark.integration
def test_fetch_sees_new_and_deleted_branches(mirror: GitMirror, remote: GitRemote) -> None:
    git(remote.path, "branch", "-D", "environment/b2b1")
    git(remote.path, "branch", "environment/new", BRANCH)
    sha = remote.commit(BRANCH, {"x.txt": "x\n"}, "person")
    mirror.fetch()
    assert mirror.branches(["environment/*"]) == {
        BRANCH: sha,
        "environment/new": remote.head("environment/new"),
    }


@pytest.mark.integration
def test_the_clone_is_reused_not_recloned(remote: GitRemote, tmp_path: Path) -> None:
    workdir = tmp_path / "clone"
    first = GitMirror(remote.url, workdir, AUTHOR)
    first.fetch()
    marker = workdir / "objects" / "marker"
    marker.write_text("still here")
    inode = (workdir / "objects").stat().st_ino
    sha = remote.commit(BRANCH, {"x.txt": "x\n"}, "person")

    second = GitMirror(remote.url, workdir, AUTHOR)
    second.fetch()
    assert marker.read_text() == "still here"
    assert (workdir / "objects").stat().st_ino == inode
    assert second.branches([BRANCH]) == {BRANCH: sha}


@pytest.mark.integration
def test_a_workdir_holding_another_remote_is_an_error(remote: GitRemote, tmp_path: Path) -> None:
    workdir = tmp_path / "clone"
    GitMirror(remote.url, workdir, AUTHOR).fetch()
    other = GitMirror("https://bob:s3cret@example.invalid/x.git", workdir, AUTHOR)
    with pytest.raises(GitError) as info:
        other.fetch()
    assert "holds a clone of" in str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.mark.integration
def test_unreachable_remote_error_is_redacted(tmp_path: Path) -> None:
    mirror = GitMirror("http://bob:s3cret@127.0.0.1:9/x.git", tmp_path / "clone", AUTHOR)
    with pytest.raises(GitError) as info:
        mirror.fetch()
    assert str(info.value).startswith("git fetch: ")
    assert "127.0.0.1" in str(info.value)
    assert "s3cret" not in str(info.value)


# --- commit_and_push -------------------------------------------------------------------------


@pytest.mark.integration
def test_commit_and_push_changes_only_the_file(mirror: GitMirror, remote: GitRemote) -> None:
    parent = remote.head(BRANCH)
    new = values_file(web=D2).encode()
    result = mirror.commit_and_push(BRANCH, parent, {"values.yaml": new}, "subject\n\nbody\n")
    assert result.result == "ok", result
    head = remote.head(BRANCH)
    assert result.commit == head
    assert git(remote.path, "log", "-1", "--format=%P", head) == parent  # the only parent
    assert git(remote.path, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%B", head) == (
        "image-watcher-test <watcher@test.invalid>|image-watcher-test <watcher@test.invalid>|"
        "subject\n\nbody"
    )
    before, after = tree(remote, parent), tree(remote, head)
    assert set(before) == set(after)
    assert {p for p in before if before[p] != after[p]} == {"values.yaml"}
    assert remote.read_bytes(BRANCH, "values.yaml") == new
    # Our tracking ref knows its own commit without another fetch.
    assert mirror.head(BRANCH) == head


@pytest.mark.integration
def test_commit_and_push_keeps_file_modes_and_adds_files(remote: GitRemote, tmp_path: Path) -> None:
    work = tmp_path / "person"
    git(tmp_path, "clone", "-q", "--branch", BRANCH, remote.url, str(work))
    (work / "run.sh").write_text("#!/bin/sh\n")
    (work / "run.sh").chmod(0o755)
    git(work, "add", "run.sh")
    git(work, "commit", "-q", "-m", "script")
    git(work, "push", "-q", "origin", f"HEAD:refs/heads/{BRANCH}")
    mirror = GitMirror(remote.url, tmp_path / "clone", AUTHOR)
    mirror.fetch()
    parent = remote.head(BRANCH)
    result = mirror.commit_and_push(
        BRANCH, parent, {"run.sh": b"#!/bin/sh\necho hi\n", "new/file.yaml": b"a: 1\n"}, "m"
    )
    assert result.result == "ok", result
    after = tree(remote, remote.head(BRANCH))
    assert after["run.sh"][0] == "100755"
    assert after["new/file.yaml"][0] == "100644"
    assert remote.read_bytes(BRANCH, "run.sh") == b"#!/bin/sh\necho hi\n"


@pytest.mark.integration
def test_stale_parent_is_a_conflict_and_never_forced(mirror: GitMirror, remote: GitRemote) -> None:
    stale = remote.head(BRANCH)
    person = remote.commit(BRANCH, {"values.yaml": values_file(api=D3)}, "person edit")
    result = mirror.commit_and_push(
        BRANCH, stale, {"values.yaml": values_file(web=D2).encode()}, "m"
    )
    assert result.result == "conflict", result
    assert remote.head(BRANCH) == person
    assert remote.read(BRANCH, "values.yaml") == values_file(api=D3)


@pytest.mark.integration
def test_rejected_push_is_an_error_and_the_remote_is_unchanged(
    mirror: GitMirror, remote: GitRemote
) -> None:
    hook = remote.path / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'branch is protected' >&2\nexit 1\n")
    hook.chmod(0o755)
    head = remote.head(BRANCH)
    result = mirror.commit_and_push(BRANCH, head, {"values.yaml": b"x: 1\n"}, "m")
    assert result.result == "error"
    assert "pre-receive hook declined" in result.message or "protected" in result.message
    assert remote.head(BRANCH) == head


# --- BranchWriter --------------------------------------------------------------------------


@pytest.mark.integration
def test_one_commit_per_batch_naming_every_block(mirror: GitMirror, remote: GitRemote) -> None:
    before = remote.count(BRANCH)
    updates = [
        update(("web", "image"), D1, D2),
        update(("api", "image"), D1, D3, image="eu.gcr.io/p/api"),
        update(("image",), None, D2, file="apps/web/values.yaml"),
        update(
            ("image",),
            None,
            "v1.2.3",
            file="apps/api/values.yaml",
            field="overrideTag",
            image="eu.gcr.io/p/api",
        ),
    ]
    outcome = BranchWriter(mirror, BRANCH).write(updates)
    assert outcome.result == "committed", outcome
    assert outcome.applied == tuple(updates)
    assert outcome.dropped == () and outcome.pending == ()
    assert outcome.attempts == 1
    assert remote.count(BRANCH) == before + 1
    assert outcome.commit == remote.head(BRANCH)
    message = git(remote.path, "log", "-1", "--format=%B", BRANCH)
    subject, _, rest = message.partition("\n\n")
    body, _, trailer_lines = rest.partition("\n\n")
    assert subject == f"image-watcher: update 4 image(s) on {BRANCH}"
    assert body.splitlines() == [f"- {u.describe()}" for u in updates]
    # What holds are derived from: one trailer per block, as git itself reads them.
    parsed = git(remote.path, "log", "-1", "--format=%(trailers:only,unfold)", BRANCH)
    assert parsed.splitlines() == trailer_lines.splitlines() == [
        f"Image-Watcher-Set: {u.block.ref} {u.edit.field}={u.edit.new}" for u in updates
    ]
    assert f"{BRANCH}:values.yaml:web.image: shasum {D1} -> {D2}" in body
    assert remote.read(BRANCH, "values.yaml") == values_file(web=D2, api=D3)
    assert remote.read(BRANCH, "apps/web/values.yaml") == (
        f"image:\n  repository: eu.gcr.io/p/web\n  tag: master\n  shasum: {D2}\n"
    )
    assert remote.read(BRANCH, "apps/api/values.yaml") == (
        "image: {repository: eu.gcr.io/p/api, tag: master, overrideTag: v1.2.3}\n"
    )
    # Other branches are untouched.
    assert remote.count("environment/b2b1") == 2


@pytest.mark.integration
def test_no_change_no_commit(mirror: GitMirror, remote: GitRemote) -> None:
    head = remote.head(BRANCH)
    outcome = BranchWriter(mirror, BRANCH).write([update(("web", "image"), D3, D1)])
    assert outcome.result == "unchanged"
    assert outcome.commit is None and outcome.applied == ()
    assert [d.reason for d in outcome.dropped] == [f"already {D1}"]
    assert remote.head(BRANCH) == head


@pytest.mark.integration
def test_a_persons_concurrent_commit_survives_and_the_update_lands(
    mirror: GitMirror, remote: GitRemote
) -> None:
    # The mirror was fetched before the person pushed: the writer's first push is stale.
    person = remote.commit(
        BRANCH, {"values.yaml": values_file(api=D3).replace("# web", "# WEB")}, "person"
    )
    outcome = BranchWriter(mirror, BRANCH, backoff=0.01).write([update(("web", "image"), D1, D2)])
    assert outcome.result == "committed", outcome
    assert outcome.attempts == 2
    assert outcome.parent == person
    assert git(remote.path, "rev-parse", f"{remote.head(BRANCH)}^") == person
    assert is_ancestor(remote, person, remote.head(BRANCH))
    assert remote.read(BRANCH, "values.yaml") == (
        values_file(web=D2, api=D3).replace("# web", "# WEB")
    )


@pytest.mark.integration
def test_a_persons_edit_of_the_same_block_wins(mirror: GitMirror, remote: GitRemote) -> None:
    person = remote.commit(BRANCH, {"values.yaml": values_file(web=D3)}, "person")
    outcome = BranchWriter(mirror, BRANCH, backoff=0.01).write(
        [
            update(("web", "image"), D1, D2),
            update(("api", "image"), D1, D2, image="eu.gcr.io/p/api"),
        ]
    )
    assert outcome.result == "committed", outcome
    assert [u.block.path for u in outcome.applied] == [("api", "image")]
    (dropped,) = outcome.dropped
    assert dropped.update.block.path == ("web", "image")
    assert "changed by a person" in dropped.reason
    assert remote.read(BRANCH, "values.yaml") == values_file(web=D3, api=D2)
    assert is_ancestor(remote, person, remote.head(BRANCH))


@pytest.mark.integration
def test_a_persons_pin_wins(mirror: GitMirror, remote: GitRemote) -> None:
    person = remote.commit(BRANCH, {"values.yaml": values_file(pin="hotfix-7")}, "pin")
    outcome = BranchWriter(mirror, BRANCH, backoff=0.01).write([update(("web", "image"), D1, D2)])
    assert outcome.result == "unchanged"
    assert "pinned by overrideTag hotfix-7" in outcome.dropped[0].reason
    assert remote.head(BRANCH) == person


@pytest.mark.integration
def test_conflict_through_every_attempt_leaves_updates_pending(
    mirror: GitMirror, remote: GitRemote
) -> None:
    person = remote.commit(BRANCH, {"other.txt": "x\n"}, "person")
    updates = [update(("web", "image"), D1, D2)]
    outcome = BranchWriter(mirror, BRANCH, attempts=1).write(updates)
    assert outcome.result == "conflict"
    assert outcome.pending == tuple(updates)
    assert remote.head(BRANCH) == person


@pytest.mark.integration
def test_rejecting_remote_is_an_error_with_updates_pending(
    mirror: GitMirror, remote: GitRemote
) -> None:
    hook = remote.path / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nexit 1\n")
    hook.chmod(0o755)
    head = remote.head(BRANCH)
    updates = [
        update(("web", "image"), D1, D2),
        update(("api", "image"), D1, D2, image="eu.gcr.io/p/api"),
    ]
    outcome = BranchWriter(mirror, BRANCH).write(updates)
    assert outcome.result == "error"
    assert outcome.pending == tuple(updates)
    assert outcome.applied == () and outcome.commit is None
    assert outcome.attempts == 1
    assert remote.head(BRANCH) == head


@pytest.mark.integration
def test_branch_moving_during_the_remote_ref_update_is_a_conflict_retried(
    mirror: GitMirror, remote: GitRemote
) -> None:
    """Promise: never lose a person's commit, even one landing inside our push.

    Two pushers at the same instant: the remote's ref moves between its checks
    and its update, and git answers "cannot lock ref ... but expected". That is
    a moved branch (fetch, re-apply, retry), not a refusal to wait a cycle out.
    """
    hook = remote.path / "hooks" / "update"
    hook.write_text(
        "#!/bin/sh\n"
        "[ -f moved ] && exit 0\n"
        "touch moved\n"
        'c=$(git -c user.name=P -c user.email=p@x commit-tree "$2^{tree}" -p "$2" -m person)\n'
        'git update-ref "$1" "$c" "$2"\n'
    )
    hook.chmod(0o755)
    updates = [update(("web", "image"), D1, D2)]
    outcome = BranchWriter(mirror, BRANCH, backoff=0.01).write(updates)
    assert outcome.result == "committed", outcome
    assert outcome.attempts == 2
    assert "person" in [line.split(" ", 1)[1] for line in remote.log(BRANCH)]
    assert D2 in remote.read(BRANCH, "values.yaml")


@pytest.mark.integration
def test_unreadable_files_drop_their_updates_only(remote: GitRemote, tmp_path: Path) -> None:
    remote.commit(
        BRANCH,
        {"apps/web/values.yaml": b"image: \xff\xfe\n", "apps/api/values.yaml": "image: [\n"},
        "broken files",
    )
    mirror = GitMirror(remote.url, tmp_path / "clone", AUTHOR)
    mirror.fetch()
    outcome = BranchWriter(mirror, BRANCH).write(
        [
            update(("image",), None, D2, file="apps/web/values.yaml"),
            update(("image",), None, D2, file="apps/api/values.yaml", image="eu.gcr.io/p/api"),
            update(("image",), None, D2, file="apps/gone/values.yaml"),
            update(("web", "image"), D1, D2),
        ]
    )
    assert outcome.result == "committed"
    assert [u.block.file for u in outcome.applied] == ["values.yaml"]
    reasons = {d.update.block.file: d.reason for d in outcome.dropped}
    assert reasons["apps/web/values.yaml"] == "apps/web/values.yaml is not UTF-8 text"
    assert reasons["apps/api/values.yaml"].startswith("file does not parse")
    assert reasons["apps/gone/values.yaml"] == "apps/gone/values.yaml no longer exists"


@pytest.mark.integration
async def test_writers_for_two_branches_run_concurrently_in_threads(
    mirror: GitMirror, remote: GitRemote
) -> None:
    a = BranchWriter(mirror, BRANCH)
    b = BranchWriter(mirror, "environment/b2b1")
    outcomes = await asyncio.gather(
        asyncio.to_thread(a.write, [update(("web", "image"), D1, D2)]),
        asyncio.to_thread(b.write, [update(("web", "image"), D1, D3, branch="environment/b2b1")]),
    )
    assert [o.result for o in outcomes] == ["committed", "committed"]
    assert remote.read(BRANCH, "values.yaml") == values_file(web=D2)
    assert remote.read("environment/b2b1", "values.yaml") == values_file(web=D3)
