"""The clone on disk: created or checked, locked across processes, recovered after a kill.

Processes on one host that point at one clone (replicas under docker-compose or
systemd, ``watcher once`` or ``watcher check`` beside ``watcher run``) share it.
Every change to the clone (fetches, object and ref writes, the recovery below)
happens under :class:`CloneLock`, an exclusive ``fcntl.flock`` on
``watcher.lock`` inside the clone; reads take no lock, because git reads refs and
objects atomically. Pushes take no lock either: a push to the URL writes
nothing here, and holding the lock over network time would make every other
process's fetch wait for the slowest remote.

Why one shared clone under a lock rather than a clone per process: a process
that starts on a warm clone is ready after one incremental fetch, where a clone
of its own costs a full download of every environment branch, on every start
and for every replica, and N clones fetch the same objects N times. The lock is
held only for local work (milliseconds) and for fetches, which are short once
the clone is warm, so its waits stay far below what the extra clones would
cost; ``python -m benchmarks sharing`` measures both.

A git process started under the lock inherits the lock's file descriptor, so a
fetch orphaned by a SIGKILL of its parent keeps the clone locked until it ends
(it is bounded by ``timeout``); only after that may another process, holding the
lock, treat what is left (``*.lock`` files, temporary packs) as stale and remove
it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from watcher.errors import GitError
from watcher.logs import redact

LOCK_FILE = "watcher.lock"
REMOTE = "origin"
REFSPEC = f"+refs/heads/*:refs/remotes/{REMOTE}/*"
# git's own per-process defaults that would let work outlive our lock: an auto gc
# that detaches into the background after a fetch would still be writing when
# the lock is released.
# A daemon has no terminal (a credential prompt would hang it) and parses git's English.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "LANGUAGE": "C", "LC_ALL": "C"}
SETTINGS = {
    "gc.autoDetach": "false",
    "maintenance.autoDetach": "false",
    "fetch.writeCommitGraph": "false",
    # Every write adds a small pack. At 50 of them git's auto gc would repack the
    # whole clone inside a fetch, under the lock, for seconds while every writer
    # waits; GitMirror.fetch merges the small packs instead (a geometric repack).
    "gc.autoPackLimit": "0",
}


class CloneLock:
    """An exclusive inter-process lock on the clone, re-entrant within one process."""

    def __init__(self, workdir: Path, timeout: float) -> None:
        self.path = workdir / LOCK_FILE
        self.timeout = timeout
        self._threads = threading.RLock()
        self._fd: int | None = None
        self._depth = 0

    @contextlib.contextmanager
    def held(self) -> Iterator[int]:
        """Hold the lock; yields its file descriptor, for git processes to inherit."""
        with self._threads:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fd = self._fd
            if self._depth == 0:
                self._acquire(fd)
            self._depth += 1
            try:
                yield fd
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(fd, fcntl.LOCK_UN)

    def _acquire(self, fd: int) -> None:
        # Polled, not blocking: a blocked flock cannot time out, and a clone held for
        # longer than any fetch may take (git.timeout) is reported, not waited on.
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise GitError(
                        f"the clone at {self.path.parent} has been locked by another "
                        f"process for over {self.timeout:g}s"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def close(self) -> None:
        with self._threads:
            if self._fd is not None and self._depth == 0:
                os.close(self._fd)
                self._fd = None


def is_clone(workdir: Path) -> bool:
    return (workdir / "HEAD").is_file() and (workdir / "objects").is_dir()


def _entries(workdir: Path) -> set[str]:
    try:
        return {entry.name for entry in workdir.iterdir()} if workdir.exists() else set()
    except OSError as exc:
        raise GitError(f"cannot open {workdir}: {exc}") from None


def check_empty(workdir: Path) -> None:
    """Refuse, without touching it, a directory that holds anything but a clone of ours.

    Ours: a clone, an empty directory, or one holding our lock file, which we create
    before anything else. Whatever else is beside the lock is a ``git init`` another
    process of ours is running (its temporary probe files and ``config.lock`` have
    unpredictable names), or was running when it was killed: never a person's files.
    """
    if is_clone(workdir):
        return
    entries = _entries(workdir)
    if entries and LOCK_FILE not in entries:
        raise GitError(f"{workdir} is not empty and not a git clone; refusing to use it")


def stale_files(workdir: Path) -> list[Path]:
    """What a git process killed midway leaves behind; call with the lock held.

    Lock files (refs, packed-refs, config, index, shallow, commit-graph), packs
    still being received (``tmp_pack_*``, a pack whose index was never written),
    loose objects not yet renamed into place (``tmp_obj_*``), and the ``.keep``
    a fetch puts on its pack until its refs are written. While we hold the lock
    no live git process writes here, so all of them are stale.
    """
    found: list[Path] = []
    for path in workdir.glob("*.lock"):
        if path.name != LOCK_FILE:
            found.append(path)
    for top in ("refs", "logs", "objects/info"):
        found.extend(p for p in (workdir / top).rglob("*.lock") if p.is_file())
    pack = workdir / "objects" / "pack"
    if pack.is_dir():
        found.extend(path for path in pack.iterdir() if _stale_in_pack(path))
    objects = workdir / "objects"
    for sub in objects.glob("[0-9a-f][0-9a-f]"):
        found.extend(sub.glob("tmp_obj_*"))
    found.extend(objects.glob("tmp_obj_*"))
    return found


def _stale_in_pack(path: Path) -> bool:
    name = path.name
    if name.startswith("tmp_") or name.endswith(".lock"):
        return True
    if name.endswith(".pack"):  # git writes the index last: without it, a pack is unfinished
        return not path.with_suffix(".idx").exists()
    if name.endswith(".keep"):  # a fetch's own keep (a person's would say something else)
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return False
        return text.startswith(("fetch-pack", "receive-pack", "index-pack"))
    return False


def recover(workdir: Path) -> list[str]:
    """Remove what :func:`stale_files` finds; returns the names removed (for the log)."""
    removed = []
    for path in stale_files(workdir):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(str(path.relative_to(workdir)))
    return removed


def run(
    workdir: Path,
    *args: str,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    fds: tuple[int, ...] = (),
    options: tuple[str, ...] = (),
) -> bytes:
    """Run a local git command in the clone; its stdout, or GitError with its stderr.

    ``fds``: the lock's descriptor when the command writes, so that it holds the lock
    for as long as it runs, even if this process is killed meanwhile. ``options``:
    git's own (``-c name=value``), for this command only.
    """
    try:
        proc = subprocess.run(
            ["git", *options, *args],
            input=input,
            capture_output=True,
            env={**os.environ, **GIT_ENV, "GIT_DIR": str(workdir), **(env or {})},
            cwd=workdir,
            pass_fds=fds,
            check=False,
        )
    except FileNotFoundError as exc:
        missing = "git is not installed" if exc.filename == "git" else f"{workdir} is missing"
        raise GitError(f"git {args[0]}: {missing}") from exc
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.decode("utf-8", "replace").split())
        raise GitError(redact(f"git {args[0]}: {detail or f'exit status {proc.returncode}'}"))
    return proc.stdout


def prepare(url: str, workdir: Path, lock: CloneLock) -> list[str]:
    """Make ``workdir`` a usable clone of ``url``; returns the stale files it removed.

    A workdir that holds a clone of another URL is an error rather than wiped: it may
    be a path someone mistyped, and deleting it is not ours to decide.
    """
    check_empty(workdir)
    # Ours to complete: a directory we (or a killed process of ours) started.
    ours = not _entries(workdir) or LOCK_FILE in _entries(workdir)
    with lock.held() as fd:
        if not is_clone(workdir):
            check_empty(workdir)  # again, under the lock: what another process left
        # Before `init` too: a `config.lock` left by an init that was killed stops the next.
        removed = recover(workdir)
        if not is_clone(workdir):
            run(workdir, "init", "--quiet", "--bare", str(workdir), fds=(fd,))
        config = _config(workdir)
        urls = config.get(f"remote.{REMOTE}.url", [])
        if not urls and ours:
            # Created here, or by a process killed between `init` and `remote add`.
            run(workdir, "remote", "add", REMOTE, url, fds=(fd,))
            urls = [url]
        if len(urls) == 1 and urls[0] != url and redact(urls[0]) == redact(url):
            # Same remote, rotated credentials: keep the clone, use the new ones.
            run(workdir, "remote", "set-url", REMOTE, url, fds=(fd,))
            urls = [url]
        if urls != [url]:
            shown = ", ".join(redact(u) for u in urls) or "no origin"
            raise GitError(
                f"{workdir} holds a clone of {shown}, not {redact(url)}; "
                "point git.workdir elsewhere or remove it"
            )
        settings = {**SETTINGS, f"remote.{REMOTE}.fetch": REFSPEC}
        for key, value in settings.items():
            if config.get(key.lower(), []) != [value]:
                run(workdir, "config", key, value, fds=(fd,))
    return removed


def _config(workdir: Path) -> dict[str, list[str]]:
    """The clone's own settings, key (as git prints it) -> values."""
    out = run(workdir, "config", "--local", "--null", "--list").decode("utf-8", "replace")
    config: dict[str, list[str]] = {}
    for record in out.split("\0"):
        key, _, value = record.partition("\n")
        if key:
            config.setdefault(key, []).append(value)
    return config
