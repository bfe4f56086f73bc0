"""The GitOps remote's local clone: fetched, read, committed to and pushed from.

Blocking (git plumbing); the engine calls it from threads. Objects are read
through one persistent ``cat-file`` (:mod:`~watcher.gitops.catfile`), commits
are built without a checkout or an index (:mod:`~watcher.gitops.commits`), and
pushes are plain fast-forward pushes, several branches at once when their
writers push together (:mod:`~watcher.gitops.push`), never forced, so git
itself is the compare-and-swap on each branch. The clone on disk, its lock and
its recovery: :mod:`~watcher.gitops.clone`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from watcher.config import Author, Config, Signing
from watcher.errors import GitError
from watcher.gitops import clone, commits, push
from watcher.gitops.catfile import CatFile
from watcher.gitops.clone import CloneLock
from watcher.gitops.paths import matches_any
from watcher.gitops.profile import STAGES
from watcher.gitops.push import PushResult
from watcher.logs import redact
from watcher.tuning import GIT_TIMEOUT, REPACK_PACKS

log = structlog.get_logger()

_REMOTE = clone.REMOTE
_REFSPEC = clone.REFSPEC
_TRACKING = f"refs/remotes/{_REMOTE}/"
# What git says when it meets a lock file that a killed process left behind.
_STALE_MARKERS = ("cannot lock ref", ".lock': File exists", "Unable to create")
# ``timeout`` ends an orphaned network command this long after our own deadline.
_ORPHAN_SLACK = 5.0
_TIMEOUT = shutil.which("timeout")
# Trees kept in memory between reads (a 20-branch, 10,000-file remote has ~10,000).
_TREES_KEPT = 50_000
# ``timeout --signal=KILL`` exits 137 when it had to kill the command.
_KILLED_BY_TIMEOUT = 137


class GitMirror:
    """One bare clone in ``workdir``, fetched (never re-cloned) and shared by every writer,
    and by every process on this host that points at the same directory
    (:mod:`watcher.gitops.clone` says how they share it)."""

    def __init__(
        self,
        url: str,
        workdir: Path,
        author: Author,
        *,
        timeout: float = GIT_TIMEOUT,
        signing: Signing | None = None,
    ) -> None:
        self.url = url
        self.workdir = Path(workdir)
        self.author = author
        self.signing = signing
        self.timeout = timeout
        # git processes talking to the remote, so that stop can end them (abort()).
        self._network_procs: set[subprocess.Popen[bytes]] = set()
        self._procs_lock = threading.Lock()
        self._aborted = False
        # Writes to the clone, across threads and processes. Another process's fetch
        # may hold it for up to its git.timeout; waiting twice that is generous.
        self._lock = CloneLock(self.workdir, timeout=2 * timeout)
        self._opening = threading.Lock()
        self._opened = False
        self._objects = CatFile(self.workdir)
        self._trees: dict[str, bytes] = {}
        self._pushes = push.PushQueue(self._push_grouped)

    @classmethod
    def of(cls, config: Config) -> GitMirror:
        """The clone of the remote ``config`` names, with its author, timeout and signing."""
        git = config.git
        return cls(git.url, config.workdir, git.author, timeout=git.timeout, signing=git.signing)

    # --- the clone ---------------------------------------------------------------------

    def _open(self) -> None:
        if self._opened:
            return
        with self._opening:
            if self._opened:
                return
            try:
                removed = clone.prepare(self.url, self.workdir, self._lock)
            except OSError as exc:
                # An unreadable, unwritable or vanished workdir: a reason, not a traceback.
                reason = exc.strerror or str(exc)
                raise GitError(f"cannot open {self.workdir}: {reason}") from exc
            if removed:
                log.warning("clone recovered", workdir=str(self.workdir), removed=removed)
            self._opened = True

    def close(self) -> None:
        """End the clone's ``cat-file`` process (a new one starts if it is used again)."""
        self._objects.close()

    def _run(self, *args: str, input: bytes | None = None, fds: tuple[int, ...] = ()) -> str:
        self._open()
        return clone.run(self.workdir, *args, input=input, fds=fds).decode("utf-8", "replace")

    def _network(self, *args: str, fds: tuple[int, ...] = ()) -> tuple[int, str]:
        """Run a git command that talks to the remote: (exit status, redacted output).

        Unlike ``_run`` it has a deadline. A remote that accepts the connection and then
        never answers (a hung server, a stalled hook, a black-holed network) would
        otherwise hold the branch writer, and SIGTERM, forever: the thread blocked in it
        cannot be cancelled. Each command runs in its own process group so that the
        timeout, or ``abort()``, also ends the helpers git starts (ssh, remote-https,
        receive-pack and its hooks for a local remote). ``timeout`` bounds it too, so
        that a command orphaned by a SIGKILL of this process (and the clone lock it
        inherited in ``fds``) does not live on forever.
        """
        self._open()
        with self._procs_lock:
            if self._aborted:
                # Stopping: a writer that was waiting for the lock must not start a
                # push that would keep the process alive after the one just killed.
                return -1, f"git {args[0]}: not started, the process is stopping"
        env = {**os.environ, **clone.GIT_ENV, "GIT_DIR": str(self.workdir)}
        proc = subprocess.Popen(
            [*_deadline(self.timeout + _ORPHAN_SLACK), "git", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=self.workdir,
            start_new_session=True,
            pass_fds=fds,
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
        if proc.returncode < 0 or proc.returncode == _KILLED_BY_TIMEOUT:
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
        self._open()
        with self._lock.held() as fd:
            args = ("fetch", "--prune", "--quiet", "--no-tags", _REMOTE, _REFSPEC)
            status, output = self._network(*args, fds=(fd,))
            if status != 0 and any(m in output for m in _STALE_MARKERS):
                # A process killed mid-fetch on this clone left its locks behind; we
                # hold the clone lock, so nothing live is writing: clear them, retry.
                removed = clone.recover(self.workdir)
                if removed:
                    log.warning("clone recovered", workdir=str(self.workdir), removed=removed)
                    status, output = self._network(*args, fds=(fd,))
            if status == 0:
                self._merge_packs(fd)
        if status != 0:
            raise GitError(f"git fetch: {' '.join(output.split()) or f'exit status {status}'}")

    def _merge_packs(self, fd: int) -> None:
        """Merge the small packs the writes left (under the lock, ``fd``), once there are
        ``REPACK_PACKS``: a geometric repack rewrites only packs smaller than the ones
        kept (and packs the loose commits), a fraction of a second where a whole repack
        of the clone takes seconds. After each write, and after a fetch."""
        try:
            packs = sum(
                1 for p in (self.workdir / "objects" / "pack").iterdir() if p.suffix == ".pack"
            )
        except OSError:
            return
        if packs < REPACK_PACKS:
            return
        with contextlib.suppress(GitError):  # a failed repack leaves the packs as they were
            self._run("repack", "--geometric=2", "-d", "-q", fds=(fd,))

    def branches(self, globs: Sequence[str]) -> dict[str, str]:
        """Remote branch name -> commit sha, for branches matching any glob."""
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
        out = self._run("ls-tree", "-r", "-z", "--full-tree", commit)
        found: dict[str, str] = {}
        for record in out.split("\0"):
            meta, _, path = record.partition("\t")
            fields = meta.split(" ")
            if fields[1:2] == ["blob"] and matches_any(globs, path):
                found[path] = fields[2]
        return found

    def read_objects(self, shas: Sequence[str]) -> dict[str, tuple[str, bytes]]:
        """Object id -> (type, content), through the clone's one persistent ``cat-file``;
        ids it does not hold are left out. Trees are kept (objects never change): a
        write reads the trees its files sit in, then builds new ones from them."""
        self._open()
        found = {sha: ("tree", self._trees[sha]) for sha in shas if sha in self._trees}
        if len(found) < len(shas):
            found.update(self._objects.read([sha for sha in shas if sha not in found]))
            if len(self._trees) > _TREES_KEPT:
                self._trees.clear()
            self._trees.update((sha, data) for sha, (kind, data) in found.items() if kind == "tree")
        return found

    def read_object(self, sha: str) -> tuple[str, bytes]:
        """(type, content) of one object."""
        found = self.read_objects([sha]).get(sha)
        if found is None:
            raise GitError(f"cannot read object {sha}: not in the clone")
        return found

    def read_blob(self, blob: str) -> bytes:
        """A blob's bytes by its id."""
        return self.read_object(blob)[1]

    def read(self, commit: str, path: str) -> bytes:
        """A file's bytes at ``commit``; KeyError if the commit has no such file."""
        found = self.read_files(commit, [path])
        if path not in found:
            raise KeyError(f"{path} not in {commit}")
        return found[path]

    def read_files(self, commit: str, paths: Sequence[str]) -> dict[str, bytes]:
        """The files of ``commit`` at ``paths`` that exist there (and are files).

        One ``cat-file`` round trip per directory level, then one for every file.
        """
        root = commits.TreeBuilder(self.read_object).tree_of(commit)
        parents = {path: path.rpartition("/")[0] for path in paths}
        folders: set[str] = set()
        for folder in parents.values():
            while folder:
                folders.add(folder)
                folder = folder.rpartition("/")[0]
        trees: dict[str, commits.Tree] = {}
        level = {"": root}
        while level:
            read = self.read_objects(sorted(set(level.values())))
            for folder, sha in level.items():
                kind, data = read.get(sha, ("missing", b""))
                if kind == "tree":
                    trees[folder] = commits.parse_tree(data)
            level = {}
            for folder in folders - trees.keys():
                parent, _, name = folder.rpartition("/")
                entry = trees[parent].entries.get(name.encode()) if parent in trees else None
                if entry is not None and entry[0] == commits.TREE_MODE:
                    level[folder] = entry[1].hex()
        blobs: dict[str, str] = {}
        for path, folder in parents.items():
            tree = trees.get(folder)
            entry = tree.entries.get(path.rpartition("/")[2].encode()) if tree else None
            if entry is not None and entry[0] not in (commits.TREE_MODE, commits.GITLINK_MODE):
                blobs[path] = entry[1].hex()
        read = self.read_objects(sorted(set(blobs.values())))
        return {
            path: read[sha][1]
            for path, sha in blobs.items()
            if sha in read and read[sha][0] == "blob"
        }

    def head(self, branch: str) -> str | None:
        """The last fetched commit of ``branch``, or None if the remote has no such branch."""
        ref = f"{_TRACKING}{branch}^{{commit}}"
        try:
            out = self._run("rev-parse", "--verify", "--quiet", ref).strip()
        except GitError:
            return None
        return out or None

    def log(self, *args: str) -> str:
        """``git log ARGS``: the history holds and ``watcher history`` are read from."""
        return self._run("log", *args)

    # --- writing -----------------------------------------------------------------------

    def commit_and_push(
        self,
        branch: str,
        parent: str,
        changes: Mapping[str, bytes],
        message: str,
        *,
        alone: bool = False,
        author: Author | None = None,
    ) -> PushResult:
        """Commit ``changes`` on top of ``parent`` (no checkout) and push it to ``branch``;
        by ``author`` (author and committer: a person's command), else the watcher.

        The push goes out with other branches' pushes waiting at the same time, unless
        ``alone`` (a retry after a conflict, which must not wait for anyone).
        """
        try:
            with STAGES.time("commits"):
                sha = self.commit(parent, changes, message, author)
        except GitError as exc:
            return PushResult("error", str(exc))
        with STAGES.time("pushes"):
            if alone:
                return self._push_now({branch: sha})[branch]
            return self._pushes.push(branch, sha)

    def commit(
        self,
        parent: str,
        changes: Mapping[str, bytes],
        message: str,
        author: Author | None = None,
    ) -> str:
        """A commit of ``changes`` (path -> content) on top of ``parent``; its id. By
        ``author`` (a person's command), else the watcher's own identity; signed when
        the mirror has a ``signing`` key."""
        builder = commits.TreeBuilder(self.read_object)
        tree = builder.build(builder.tree_of(parent), changes)
        by = author or self.author
        # A signature vouches for the commit's committer, and the key is the watcher's:
        # a signed commit of a person's command is the person's (author), committed
        # by the watcher. Unsigned, the person is both, as before.
        committer = self.author if self.signing is not None else by
        with self._lock.held() as fd:
            builder.write(self.workdir, fd)
            sha = commits.commit_tree(
                self.workdir, tree, parent, message, by, fd,
                committer=committer, signing=self.signing,
            )  # fmt: skip
            # Merged as they come, a few dozen small packs at a time: a fraction of a
            # second now rather than seconds for hundreds at the next fetch.
            self._merge_packs(fd)
            return sha

    def _push_grouped(self, shas: Mapping[str, str]) -> dict[str, PushResult]:
        """Several branches in one push; a branch it failed for is pushed again alone.

        A remote's pre-receive hook sees every ref of a push at once, and refusing one
        refuses them all: without the second try, a branch the remote always refuses
        would keep every branch pushed with it from landing.
        """
        outcome = self._push_now(shas)
        if len(shas) > 1:
            for branch, result in list(outcome.items()):
                if result.result == "error":
                    outcome[branch] = self._push_now({branch: shas[branch]})[branch]
        return outcome

    def _push_now(self, shas: Mapping[str, str]) -> dict[str, PushResult]:
        """One ``git push`` of every branch in ``shas``; each ref's own result."""
        # To the URL, not the remote's name: git then leaves refs/remotes/ alone
        # (its own update there could race a fetch now that pushes run unlocked);
        # ours is below, under the lock.
        refspecs = [f"{sha}:refs/heads/{branch}" for branch, sha in shas.items()]
        status, output = self._network("push", "--porcelain", self.url, *refspecs)
        outcome = push.results(status, output, shas)
        landed = {b: r.commit for b, r in outcome.items() if r.result == "ok" and r.commit}
        if landed:
            # Our own commits are the new heads: no need to wait for the next fetch to
            # see them. Only over what the ref held before: a newer head fetched
            # meanwhile (here or by another process) must not be undone.
            with contextlib.suppress(GitError), self._lock.held() as fd:
                current = self.branches(list(landed))
                lines = "".join(
                    f"update {_TRACKING}{b} {sha} {self._parent_of(sha)}\n"
                    for b, sha in landed.items()
                    if current.get(b) == self._parent_of(sha)
                )
                if lines:
                    self._run("update-ref", "--stdin", input=lines.encode(), fds=(fd,))
        return outcome

    def _parent_of(self, sha: str) -> str:
        _, data = self.read_object(sha)
        for line in data.split(b"\n"):
            if line.startswith(b"parent "):
                return line[7:47].decode()
        return ""


def _deadline(seconds: float) -> list[str]:
    """``timeout`` before a network command, when coreutils has it."""
    if _TIMEOUT is None:
        return []
    return [_TIMEOUT, "--signal=KILL", f"{seconds:.0f}s"]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
