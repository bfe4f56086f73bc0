"""The GitOps remote's local clone: fetched, read, committed to and pushed from.

Blocking (GitPython and git plumbing); the engine calls it through
``asyncio.to_thread``. Commits are built without a checkout: blobs go into the
object database, the tree is the parent's tree with a temporary index, and the
push is a plain fast-forward push, never forced, so git itself is the
compare-and-swap on the branch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import git
from git.exc import GitCommandError

from watcher.config import Author
from watcher.errors import GitError
from watcher.gitops.paths import matches_any
from watcher.logs import redact
from watcher.tuning import GIT_TIMEOUT

_REMOTE = "origin"
_REFSPEC = f"+refs/heads/*:refs/remotes/{_REMOTE}/*"
_TRACKING = f"refs/remotes/{_REMOTE}/"
# A push that lost the race: the branch moved since our parent was read.
_CONFLICT_MARKERS = ("non-fast-forward", "fetch first", "stale info", "[rejected]")


PushStatus = Literal["ok", "conflict", "error"]


@dataclass(frozen=True)
class PushResult:
    """``ok``: the branch now points at ``commit``; ``conflict``: it moved meanwhile;
    ``error``: anything else (hook, network, auth), with a redacted message."""

    result: PushStatus
    message: str = ""
    commit: str | None = None


class GitMirror:
    """One bare clone in ``workdir``, fetched (never re-cloned) and shared by every writer.

    A workdir that holds a clone of another URL is an error rather than wiped: it may be
    a path someone mistyped, and deleting it is not ours to decide.
    """

    def __init__(
        self, url: str, workdir: Path, author: Author, *, timeout: float = GIT_TIMEOUT
    ) -> None:
        self.url = url
        self.workdir = Path(workdir)
        self.author = author
        self.timeout = timeout
        # git processes talking to the remote, so that stop can end them (abort()).
        self._network_procs: set[subprocess.Popen[bytes]] = set()
        self._procs_lock = threading.Lock()
        self._aborted = False
        # Concurrent git processes on one repository fight over ref and index locks.
        self._lock = threading.RLock()
        self._repo: git.Repo | None = None

    # --- the clone ---------------------------------------------------------------------

    def _open(self) -> git.Repo:
        if self._repo is not None:
            return self._repo
        workdir = self.workdir
        try:
            if (workdir / "HEAD").is_file() and (workdir / "objects").is_dir():
                repo = git.Repo(workdir)
                urls = list(repo.remote(_REMOTE).urls) if _REMOTE in repo.remotes else []
                if len(urls) == 1 and urls[0] != self.url and redact(urls[0]) == redact(self.url):
                    # Same remote, rotated credentials: keep the clone, use the new ones.
                    repo.remote(_REMOTE).set_url(self.url)
                    urls = [self.url]
                if urls != [self.url]:
                    shown = ", ".join(redact(u) for u in urls) or "no origin"
                    raise GitError(
                        f"{workdir} holds a clone of {shown}, not {redact(self.url)}; "
                        "point git.workdir elsewhere or remove it"
                    )
            else:
                if workdir.exists() and any(workdir.iterdir()):
                    raise GitError(
                        f"{workdir} is not empty and not a git clone; refusing to use it"
                    )
                workdir.mkdir(parents=True, exist_ok=True)
                repo = git.Repo.init(workdir, bare=True)
                repo.create_remote(_REMOTE, self.url)
                repo.git.config(f"remote.{_REMOTE}.fetch", _REFSPEC)
        except GitCommandError as exc:
            raise GitError(redact(f"cannot open {workdir}: {_describe(exc)}")) from None
        except (git.exc.InvalidGitRepositoryError, git.exc.NoSuchPathError, OSError) as exc:
            raise GitError(redact(f"cannot open {workdir}: {exc}")) from None
        # A daemon has no terminal: a credential prompt would hang the writer forever.
        repo.git.update_environment(GIT_TERMINAL_PROMPT="0")
        self._repo = repo
        return repo

    def _run(self, *args: Any, **kwargs: Any) -> str:
        repo = self._open()
        try:
            return str(repo.git.execute(["git", *args], **kwargs))
        except GitCommandError as exc:
            raise GitError(redact(f"git {args[0]}: {_describe(exc)}")) from None

    def _network(self, *args: str) -> tuple[int, str]:
        """Run a git command that talks to the remote: (exit status, redacted output).

        Unlike ``_run`` it has a deadline. A remote that accepts the connection and then
        never answers (a hung server, a stalled hook, a black-holed network) would
        otherwise hold the branch writer, and SIGTERM, forever: the thread blocked in it
        cannot be cancelled. Each command runs in its own process group so that the
        timeout, or ``abort()``, also ends the helpers git starts (ssh, remote-https,
        receive-pack and its hooks for a local remote).
        """
        self._open()
        with self._procs_lock:
            if self._aborted:
                # Stopping: a writer that was waiting for the lock must not start a
                # push that would keep the process alive after the one just killed.
                return -1, f"git {args[0]}: not started, the process is stopping"
        env = {
            **os.environ,
            "GIT_DIR": str(self.workdir),
            "GIT_TERMINAL_PROMPT": "0",
            "LANGUAGE": "C",
            "LC_ALL": "C",
        }
        proc = subprocess.Popen(
            ["git", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=self.workdir,
            start_new_session=True,
        )
        with self._procs_lock:
            self._network_procs.add(proc)
            aborted = self._aborted
        if aborted:  # abort() came between the check above and the start
            _kill_group(proc)
        try:
            try:
                out, err = proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.communicate()
                return -1, f"git {args[0]}: timed out after {self.timeout:g}s (git.timeout)"
        finally:
            with self._procs_lock:
                self._network_procs.discard(proc)
        text = f"{out.decode('utf-8', 'replace')}\n{err.decode('utf-8', 'replace')}".strip()
        if proc.returncode < 0:
            text = f"git {args[0]}: killed ({text})" if text else f"git {args[0]}: killed"
        return proc.returncode, redact(text)

    def abort(self) -> None:
        """End every fetch and push in flight, and refuse new ones (at shutdown)."""
        with self._procs_lock:
            self._aborted = True
            procs = list(self._network_procs)
        for proc in procs:
            _kill_group(proc)

    def fetch(self) -> None:
        """Bring every remote branch into ``refs/remotes/origin/*``, pruning deleted ones."""
        with self._lock:
            status, output = self._network(
                "fetch", "--prune", "--quiet", "--no-tags", _REMOTE, _REFSPEC
            )
        if status != 0:
            raise GitError(f"git fetch: {' '.join(output.split()) or f'exit status {status}'}")

    def branches(self, globs: Sequence[str]) -> dict[str, str]:
        """Remote branch name -> commit sha, for branches matching any glob."""
        with self._lock:
            out = self._run("for-each-ref", "--format=%(objectname) %(refname)", _TRACKING)
        result: dict[str, str] = {}
        for line in out.splitlines():
            sha, _, ref = line.partition(" ")
            name = ref[len(_TRACKING) :]
            if name != "HEAD" and matches_any(globs, name):
                result[name] = sha
        return result

    def files(self, commit: str, globs: Sequence[str]) -> list[str]:
        """Paths of the files in ``commit`` that match any glob, sorted."""
        return sorted(self.blobs(commit, globs))

    def blobs(self, commit: str, globs: Sequence[str]) -> dict[str, str]:
        """Path -> blob id of the files in ``commit`` that match any glob.

        Blob ids name content: a file unchanged between two commits has the
        same id, so callers can cache what they parsed by it.
        """
        with self._lock:
            out = self._run(
                "ls-tree", "-r", "-z", "--full-tree", commit, strip_newline_in_stdout=False
            )
        found: dict[str, str] = {}
        for record in out.split("\0"):
            meta, _, path = record.partition("\t")
            fields = meta.split(" ")
            if fields[1:2] == ["blob"] and matches_any(globs, path):
                found[path] = fields[2]
        return found

    def read_blob(self, blob: str) -> bytes:
        """A blob's bytes by its id."""
        with self._lock:
            repo = self._open()
            try:
                data: bytes = repo.odb.stream(bytes.fromhex(blob)).read()
            except (ValueError, GitCommandError) as exc:
                raise GitError(f"cannot read blob {blob}: {exc}") from None
            return data

    def read(self, commit: str, path: str) -> bytes:
        """A file's bytes at ``commit``; KeyError if the commit has no such file."""
        with self._lock:
            repo = self._open()
            try:
                blob = repo.commit(commit).tree / path
            except KeyError:
                raise KeyError(f"{path} not in {commit}") from None
            except (ValueError, GitCommandError) as exc:
                raise GitError(redact(f"cannot read {path} at {commit}: {exc}")) from None
            if blob.type != "blob":
                raise KeyError(f"{path} is not a file in {commit}")
            data: bytes = blob.data_stream.read()
            return data

    def head(self, branch: str) -> str | None:
        """The last fetched commit of ``branch``, or None if the remote has no such branch."""
        with self._lock:
            repo = self._open()
            status, out, _ = repo.git.execute(
                ["git", "rev-parse", "--verify", "--quiet", f"{_TRACKING}{branch}^{{commit}}"],
                with_extended_output=True,
                with_exceptions=False,
            )
        return str(out).strip() if status == 0 and out else None

    def log(self, *args: str) -> str:
        """``git log ARGS``: the history holds and ``watcher history`` are read from."""
        with self._lock:
            return self._run("log", *args, strip_newline_in_stdout=False)

    # --- writing -----------------------------------------------------------------------

    def commit_and_push(
        self,
        branch: str,
        parent: str,
        changes: Mapping[str, bytes],
        message: str,
        *,
        author: Author | None = None,
    ) -> PushResult:
        """Commit ``changes`` on top of ``parent`` (no checkout) and push it to ``branch``;
        by ``author`` (author and committer), else the watcher's own identity."""
        with self._lock:
            try:
                sha = self._commit(parent, changes, message, author or self.author)
            except GitError as exc:
                return PushResult("error", str(exc))
        # The push is network time, outside the lock: writers of different
        # branches push in parallel instead of queueing behind each other.
        return self._push(branch, sha)

    def _commit(
        self, parent: str, changes: Mapping[str, bytes], message: str, by: Author
    ) -> str:
        author = {
            "GIT_AUTHOR_NAME": by.name,
            "GIT_AUTHOR_EMAIL": by.email,
            "GIT_COMMITTER_NAME": by.name,
            "GIT_COMMITTER_EMAIL": by.email,
        }
        with tempfile.TemporaryDirectory(prefix="watcher-index-") as tmp:
            # A private index: the commit is built beside, never through, a checkout.
            env = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
            self._run("read-tree", parent, env=env)
            modes = self._modes(parent, list(changes))
            content = os.path.join(tmp, "blob")
            for path, data in changes.items():
                Path(content).write_bytes(data)
                # --no-filters: the bytes are the file as committed, no attributes apply.
                blob = self._run("hash-object", "-w", "--no-filters", "--", content)
                mode = modes.get(path, "100644")
                self._run("update-index", "--add", "--cacheinfo", f"{mode},{blob},{path}", env=env)
            tree = self._run("write-tree", env=env)
        return self._run("commit-tree", tree, "-p", parent, "-m", message, env=author)

    def _modes(self, commit: str, paths: Sequence[str]) -> dict[str, str]:
        if not paths:
            return {}
        out = self._run(
            "ls-tree", "-z", "--full-tree", commit, "--", *paths, strip_newline_in_stdout=False
        )
        modes: dict[str, str] = {}
        for record in out.split("\0"):
            meta, _, path = record.partition("\t")
            if path:
                modes[path] = meta.split(" ")[0]
        return modes

    def _push(self, branch: str, sha: str) -> PushResult:
        # To the URL, not the remote's name: git then leaves refs/remotes/ alone
        # (its own update there could race a fetch now that pushes run unlocked);
        # ours is below, under the lock.
        status, output = self._network(
            "push", "--porcelain", self.url, f"{sha}:refs/heads/{branch}"
        )
        if status == 0:
            # Our own commit is the new head: no need to wait for the next fetch to see it.
            with self._lock:
                self._run("update-ref", f"{_TRACKING}{branch}", sha)
            return PushResult("ok", "", sha)
        summary = _summary(output)
        if "remote rejected" not in output and any(m in output for m in _CONFLICT_MARKERS):
            return PushResult("conflict", summary, sha)
        if "cannot lock ref" in output and "but expected" in output:
            # Another pusher updated the branch between the remote's check and
            # its ref update (two replicas at once): the branch moved, which is
            # a conflict to fetch and re-apply, not a refusal to wait out.
            return PushResult("conflict", summary, sha)
        return PushResult("error", summary, sha)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _describe(exc: GitCommandError) -> str:
    stderr = str(exc.stderr or "").strip()
    stderr = stderr.removeprefix("stderr:").strip().strip("'").strip()
    # One line: these end up in JSON logs and in outcome messages.
    return " ".join(stderr.split()) or f"exit status {exc.status}"


def _summary(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    keep = [
        line
        for line in lines
        if line.startswith(("!", "error:", "fatal:", "remote:", "hint: Updates were rejected"))
    ]
    return " | ".join(keep or lines)[:1000]


