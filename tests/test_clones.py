"""The clone on disk: one per remote by default, shared by processes under a lock, and
recovered without a person after a process was killed in the middle of a git command.

Real git, real bare remotes, real processes holding the lock.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import GitRemote, git, make_remote
from watcher.config import Author, load_text
from watcher.errors import GitError
from watcher.gitops import clone
from watcher.gitops.mirror import GitMirror
from watcher.gitops.paths import clone_name, without_credentials
from watcher.tuning import REPACK_PACKS

pytestmark = pytest.mark.integration

AUTHOR = Author(name="image-watcher-test", email="watcher@test.invalid")
BRANCH = "environment/a"
VALUES = "image:\n  repository: eu.gcr.io/p/app\n  tag: master\n"


@pytest.fixture
def remote(tmp_path: Path) -> GitRemote:
    return make_remote(tmp_path, {BRANCH: {"values.yaml": VALUES}})


# --- a clone per remote by default ---------------------------------------------------------


def test_default_workdir_is_one_clone_per_remote_without_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def workdir(url: str, explicit: str = "") -> Path:
        extra = f", workdir: {explicit}" if explicit else ""
        return load_text(f"git: {{url: '{url}'{extra}}}\n", "t.yaml", {}).workdir

    a = workdir("https://bob:s3cret@git.example.com/acme/integration.git")
    assert a.parent == tmp_path / "cache" / "image-tag-watcher"
    assert a.name.startswith("git.example.com-acme-integration-")
    assert "s3cret" not in str(a) and "bob" not in str(a)
    # Rotated credentials: the same remote, the same clone.
    assert workdir("https://alice:other@git.example.com/acme/integration.git") == a
    assert workdir("https://git.example.com/acme/integration.git") == a
    # Another remote, another clone, even where the readable parts agree.
    assert workdir("https://git.example.com/acme/integration-staging.git") != a
    assert clone_name("file:///a/b-c.git") != clone_name("file:///a-b/c.git")
    # An explicit workdir keeps its meaning.
    assert workdir("https://git.example.com/x.git", str(tmp_path / "mine")) == tmp_path / "mine"


def test_credentials_are_removed_from_the_identity() -> None:
    assert without_credentials("https://x-token:ghp_abc@github.com/a/b") == "https://github.com/a/b"
    assert without_credentials("https://TOKEN@github.com/a/b") == "https://github.com/a/b"
    assert without_credentials("git@github.com:a/b.git") == "git@github.com:a/b.git"
    assert clone_name("git@github.com:acme/integration.git").startswith(
        "github.com-acme-integration-"
    )


def test_a_directory_of_other_files_is_refused_and_left_alone(
    remote: GitRemote, tmp_path: Path
) -> None:
    workdir = tmp_path / "mine"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("a person's file\n")
    with pytest.raises(GitError, match="not empty and not a git clone"):
        GitMirror(remote.url, workdir, AUTHOR).fetch()
    assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt"]


# --- several processes, one clone ------------------------------------------------------------

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_lock(workdir: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the clone's lock for ``seconds``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(workdir / clone.LOCK_FILE), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_fetch_waits_for_another_process_holding_the_clone(
    remote: GitRemote, tmp_path: Path
) -> None:
    workdir = tmp_path / "clone"
    GitMirror(remote.url, workdir, AUTHOR).fetch()
    sha = remote.commit(BRANCH, {"x.txt": "x\n"}, "person")
    holder = hold_lock(workdir, 1.0)
    started = time.monotonic()
    mirror = GitMirror(remote.url, workdir, AUTHOR)
    mirror.fetch()
    assert time.monotonic() - started >= 0.8  # it waited for the holder ...
    assert holder.wait(5) == 0
    assert mirror.head(BRANCH) == sha  # ... and then fetched


def test_a_clone_held_too_long_is_an_error_not_a_hang(remote: GitRemote, tmp_path: Path) -> None:
    workdir = tmp_path / "clone"
    mirror = GitMirror(remote.url, workdir, AUTHOR, timeout=0.5)
    mirror.fetch()
    holder = hold_lock(workdir, 30.0)
    try:
        started = time.monotonic()
        with pytest.raises(GitError, match="locked by another process"):
            mirror.fetch()
        assert time.monotonic() - started < 5
        # Reading needs no lock: discovery of what was fetched goes on.
        assert mirror.branches(["environment/*"]) == {BRANCH: remote.head(BRANCH)}
    finally:
        holder.kill()
        holder.wait()


def test_processes_creating_one_clone_at_once_all_succeed(
    remote: GitRemote, tmp_path: Path
) -> None:
    """Promise: several processes starting on a clone nobody made yet (replicas started
    together on the default workdir) make one clone, and none refuses it half made."""
    workdir = tmp_path / "cache" / "clone"
    script = (
        "import sys; from pathlib import Path; from watcher.config import Author;"
        "from watcher.gitops.mirror import GitMirror;"
        "GitMirror(sys.argv[1], Path(sys.argv[2]), Author()).fetch()"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, remote.url, str(workdir)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(5)
    ]
    errors = [proc.communicate(timeout=60)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 5, errors
    assert GitMirror(remote.url, workdir, AUTHOR).head(BRANCH) == remote.head(BRANCH)


def test_a_clone_init_under_way_elsewhere_is_ours_but_a_strangers_lock_file_is_not(
    remote: GitRemote, tmp_path: Path
) -> None:
    """Promise: what `git init` writes through lock files (seen while another process
    of ours runs it, or left when it was killed) does not make our own clone refused."""
    workdir = tmp_path / "clone"
    workdir.mkdir()
    (workdir / clone.LOCK_FILE).touch()
    (workdir / "config.lock").write_text("[core]\n")
    clone.check_empty(workdir)  # ours: accepted
    mirror = GitMirror(remote.url, workdir, AUTHOR)
    mirror.fetch()
    assert mirror.head(BRANCH) == remote.head(BRANCH)
    assert not (workdir / "config.lock").exists()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "config.lock").write_text("")
    with pytest.raises(GitError, match="not empty and not a git clone"):
        clone.check_empty(theirs)


def test_a_clone_cut_off_between_init_and_its_remote_is_completed(
    remote: GitRemote, tmp_path: Path
) -> None:
    workdir = tmp_path / "clone"
    workdir.mkdir()
    (workdir / clone.LOCK_FILE).touch()
    git(tmp_path, "init", "-q", "--bare", str(workdir))  # then the process was killed
    mirror = GitMirror(remote.url, workdir, AUTHOR)
    mirror.fetch()
    assert mirror.head(BRANCH) == remote.head(BRANCH)


def test_a_bare_repository_of_a_person_is_not_taken_over(remote: GitRemote, tmp_path: Path) -> None:
    workdir = tmp_path / "theirs.git"
    git(tmp_path, "init", "-q", "--bare", str(workdir))
    with pytest.raises(GitError, match="holds a clone of no origin"):
        GitMirror(remote.url, workdir, AUTHOR).fetch()
    assert "origin" not in git(workdir, "config", "--list")


def test_threads_and_processes_fetching_at_once_all_succeed(
    remote: GitRemote, tmp_path: Path
) -> None:
    workdir = tmp_path / "clone"
    GitMirror(remote.url, workdir, AUTHOR).fetch()
    script = (
        "import sys; from pathlib import Path; from watcher.config import Author;"
        "from watcher.gitops.mirror import GitMirror;"
        "m = GitMirror(sys.argv[1], Path(sys.argv[2]), Author());"
        "[m.fetch() for _ in range(15)]"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, remote.url, str(workdir)]) for _ in range(3)
    ]
    errors: list[Exception] = []
    mirror = GitMirror(remote.url, workdir, AUTHOR)

    def fetches() -> None:
        try:
            for _ in range(10):
                mirror.fetch()
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=fetches) for _ in range(2)]
    for n in range(5):  # the remote keeps moving meanwhile
        remote.commit(BRANCH, {"n.txt": f"{n}\n"}, f"person {n}")
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [proc.wait(60) for proc in procs] == [0, 0, 0]
    assert errors == []
    mirror.fetch()
    assert mirror.head(BRANCH) == remote.head(BRANCH)
    assert clone.stale_files(workdir) == []


# --- recovery -------------------------------------------------------------------------------


def leave_debris(workdir: Path) -> list[Path]:
    """What a git process killed in the middle of a fetch or commit leaves behind."""
    pack = workdir / "objects" / "pack"
    pack.mkdir(parents=True, exist_ok=True)
    tracking = workdir / "refs" / "remotes" / "origin" / "environment"
    tracking.mkdir(parents=True, exist_ok=True)
    loose = workdir / "objects" / "ab"
    loose.mkdir(exist_ok=True)
    debris = [
        tracking / "a.lock",
        workdir / "packed-refs.lock",
        workdir / "config.lock",
        pack / "tmp_pack_Xy12ab",
        pack / "tmp_idx_Xy12ab",
        pack / ("pack-" + "e" * 40 + ".pack"),  # its index never written
        pack / ("pack-" + "f" * 40 + ".keep"),
        loose / "tmp_obj_q1w2e3",
    ]
    for path in debris:
        path.write_bytes(b"fetch-pack 12345 on host\n" if path.suffix == ".keep" else b"PACK\0")
    return debris


def test_a_clone_left_by_a_killed_process_is_recovered(remote: GitRemote, tmp_path: Path) -> None:
    workdir = tmp_path / "clone"
    GitMirror(remote.url, workdir, AUTHOR).fetch()
    sha = remote.commit(BRANCH, {"x.txt": "x\n"}, "person")
    debris = leave_debris(workdir)
    # Without recovery git refuses: the ref is locked.
    blocked = subprocess.run(
        ["git", "--git-dir", str(workdir), "fetch", "origin", clone.REFSPEC],
        capture_output=True,
        text=True,
    )
    assert blocked.returncode != 0 and "lock" in blocked.stderr
    mirror = GitMirror(remote.url, workdir, AUTHOR)
    mirror.fetch()
    assert mirror.head(BRANCH) == sha
    assert not any(path.exists() for path in debris)
    git(workdir, "fsck", "--no-dangling")


def test_locks_left_while_a_process_runs_are_cleared_at_its_next_fetch(
    remote: GitRemote, tmp_path: Path
) -> None:
    """A replica killed beside a running one: the survivor recovers at its next fetch."""
    workdir = tmp_path / "clone"
    survivor = GitMirror(remote.url, workdir, AUTHOR)
    survivor.fetch()
    sha = remote.commit(BRANCH, {"x.txt": "x\n"}, "person")
    debris = leave_debris(workdir)
    survivor.fetch()
    assert survivor.head(BRANCH) == sha
    assert not any(path.exists() for path in debris)


def test_a_lock_held_by_a_live_git_process_is_not_stale(remote: GitRemote, tmp_path: Path) -> None:
    """A fetch orphaned by a SIGKILL of its parent keeps the clone locked until it ends."""
    workdir = tmp_path / "clone"
    mirror = GitMirror(remote.url, workdir, AUTHOR)
    mirror.fetch()
    fd = os.open(workdir / clone.LOCK_FILE, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    # The descriptor, inherited by a child that outlives this holder, keeps the lock.
    child = subprocess.Popen(["sleep", "1"], pass_fds=(fd,))
    os.close(fd)
    started = time.monotonic()
    GitMirror(remote.url, workdir, AUTHOR).fetch()
    assert time.monotonic() - started >= 0.8
    assert child.wait(5) == 0


def _one_pack(workdir: Path, content: str) -> str:
    """A blob written as a pack of its own, as each write of the watcher adds one."""
    env = {**os.environ, "GIT_DIR": str(workdir)}
    sha = subprocess.run(
        ["git", "hash-object", "-w", "--stdin"],
        input=content,
        text=True,
        check=True,
        capture_output=True,
        env=env,
    ).stdout.strip()
    subprocess.run(
        ["git", "pack-objects", "-q", str(workdir / "objects" / "pack" / "pack")],
        input=f"{sha}\n",
        text=True,
        check=True,
        capture_output=True,
        env=env,
    )
    subprocess.run(["git", "prune-packed"], check=True, capture_output=True, env=env)
    return sha


def test_small_packs_are_merged_after_a_fetch_not_repacked_whole(tmp_path: Path) -> None:
    """Every write adds a pack; git's auto gc would repack the whole clone inside a fetch,
    under the lock, at 50. The clone leaves that off, and a fetch merges the small packs
    once there are REPACK_PACKS of them (geometric: the big pack stays as it is)."""
    # The clone's pack holds many more objects than the small ones together (a geometric
    # repack compares object counts).
    files = {f"apps/a{n}/values.yaml": f"a: {n}\n" for n in range(200)}
    remote = make_remote(tmp_path, {"environment/a": files})
    workdir = tmp_path / "clone"
    mirror = GitMirror(remote.url, workdir, AUTHOR)
    mirror.fetch()
    assert git(workdir, "config", "gc.autoPackLimit") == "0"
    pack_dir = workdir / "objects" / "pack"
    git(workdir, "repack", "-a", "-d", "-q")
    (big,) = [p.name for p in pack_dir.glob("*.pack")]

    def packs() -> list[str]:
        return sorted(p.name for p in pack_dir.glob("*.pack"))

    for n in range(REPACK_PACKS - 2):
        _one_pack(workdir, f"blob {n}\n")
    mirror.fetch()
    assert len(packs()) == REPACK_PACKS - 1  # below the threshold: left alone
    sha = _one_pack(workdir, "one more\n")
    mirror.fetch()
    after = packs()
    assert len(after) <= 3, after
    assert big in after  # the clone's own big pack was not rewritten
    assert git(workdir, "cat-file", "-t", sha) == "blob"
