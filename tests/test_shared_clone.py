"""Processes on one host and the clone they share, as a user runs them: real `watcher`
processes on the default workdir (XDG_CACHE_HOME in a temp dir), a real registry,
a real Redis and bare git remotes; processes killed with SIGKILL mid-fetch and mid-push.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import DockerRegistry, GitRemote, RedisServer, free_port, git, make_remote
from tests.soak import is_ancestor, set_hook
from watcher.gitops import clone
from watcher_testing.images import push_image

pytestmark = pytest.mark.integration

IMAGES = 6
BRANCHES = ("environment/a", "environment/b")
BRANCH_A = BRANCHES[0]


def values(host: str, n: int) -> str:
    return f"# app{n}\nimage:\n  repository: {host}/team/app{n}\n  tag: master\n"


async def push_all(registry: DockerRegistry, seed: str) -> dict[str, str]:
    """A new build of every image; image name -> digest."""
    async with aiohttp.ClientSession() as session:
        return {
            f"app{n}": await push_image(
                session, registry.url, f"team/app{n}", "master", kind="oci", seed=f"{seed}{n}"
            )
            for n in range(IMAGES)
        }


def new_remote(tmp_path: Path, registry: DockerRegistry, name: str) -> GitRemote:
    files = {f"apps/app{n}/values.yaml": values(registry.host, n) for n in range(IMAGES)}
    return make_remote(tmp_path, dict.fromkeys(BRANCHES, files), name=name)


def write_config(path: Path, registry: DockerRegistry, remote: GitRemote, redis: str = "") -> Path:
    """No git.workdir: the default clone under XDG_CACHE_HOME."""
    path.write_text(
        f"""
interval: 1s
redis: {{url: "{redis}"}}
registries:
  - {{host: "{registry.host}", insecure: true}}
git:
  url: {remote.url}
  files: ["apps/*/values.yaml"]
  timeout: 20s
server: {{port: {free_port()}}}
"""
    )
    return path


def env(cache: Path) -> dict[str, str]:
    return {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONUNBUFFERED": "1"}


def once(config: Path, cache: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "watcher", "once", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(cache),
    )


def finish(proc: subprocess.Popen[str], timeout: float = 90) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}: {err}"
    assert "Traceback" not in out + err
    return out + err


def written(remote: GitRemote, digests: dict[str, str]) -> bool:
    return all(
        f"shasum: {digest}" in remote.read(branch, f"apps/{image}/values.yaml")
        for branch in BRANCHES
        for image, digest in digests.items()
    )


def clones(cache: Path) -> list[Path]:
    root = cache / "image-tag-watcher"
    return sorted(p for p in root.iterdir() if clone.is_clone(p)) if root.exists() else []


def errors_in(log: Path) -> list[str]:
    bad = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if event.get("severity") in ("ERROR", "CRITICAL"):
            bad.append(line)
    return bad


# --- a clone per remote -------------------------------------------------------------------


async def test_two_remotes_one_after_the_other_and_at_once(
    docker_registry: DockerRegistry, tmp_path: Path
) -> None:
    """Promise: configs for different remotes work on one machine with the default workdir."""
    digests = await push_all(docker_registry, "1")
    cache = tmp_path / "cache"
    first = [new_remote(tmp_path, docker_registry, n) for n in ("staging", "production")]
    configs = [write_config(tmp_path / f"{n}.yaml", docker_registry, r) for n, r in
               zip(("staging", "production"), first, strict=True)]  # fmt: skip
    for config in configs:  # one after the other
        finish(once(config, cache))
    assert all(written(remote, digests) for remote in first)
    assert len(clones(cache)) == 2
    # At the same time: two more remotes, and the two first ones again.
    second = [new_remote(tmp_path, docker_registry, n) for n in ("dev", "qa")]
    configs += [write_config(tmp_path / f"{n}.yaml", docker_registry, r) for n, r in
                zip(("dev", "qa"), second, strict=True)]  # fmt: skip
    digests = await push_all(docker_registry, "2")
    procs = [once(config, cache) for config in configs]
    for proc in procs:
        finish(proc)
    assert all(written(remote, digests) for remote in first + second)
    assert len(clones(cache)) == 4
    for path in clones(cache):
        assert clone.stale_files(path) == []


# --- several processes, one clone -----------------------------------------------------------


def spawn_run(config: Path, cache: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env(cache),
            start_new_session=True,
        )


def with_port(config: Path, name: str) -> Path:
    path = config.with_name(name)
    text = config.read_text().replace("server: {port:", "#", 1)
    path.write_text(text + f"server: {{port: {free_port()}}}\n")
    return path


@pytest.fixture
def stopped() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Daemons to stop at the end (SIGTERM; SIGKILL to the group if they hang)."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def test_three_daemons_and_a_once_share_one_clone(
    docker_registry: DockerRegistry,
    redis_server: RedisServer,
    tmp_path: Path,
    stopped: list[subprocess.Popen[bytes]],
) -> None:
    """Promise: processes on one host sharing the default clone never race: every block is
    written, no error is logged, and `watcher once` and `watcher check` work beside them."""
    cache = tmp_path / "cache"
    remote = new_remote(tmp_path, docker_registry, "remote")
    config = write_config(tmp_path / "shards.yaml", docker_registry, remote, redis_server.url)
    logs = [tmp_path / f"run{n}.jsonl" for n in range(3)]
    digests = await push_all(docker_registry, "1")
    for n, log in enumerate(logs):
        stopped.append(spawn_run(with_port(config, f"run{n}.yaml"), cache, log))
    await wait_until(lambda: written(remote, digests), 60, "the daemons did not write")
    # New builds while `watcher once` and `watcher check` run beside the daemons.
    digests = await push_all(docker_registry, "2")
    side = [once(config, cache) for _ in range(2)]
    check = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "watcher", "check", "--config", str(config)],
        capture_output=True, text=True, env=env(cache), timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    for proc in side:
        out = await asyncio.to_thread(finish, proc)
        assert "error" not in out.lower()
    await wait_until(lambda: written(remote, digests), 60, "the second builds did not land")
    await asyncio.sleep(2)  # a few more cycles of all three on the shared clone
    assert [proc.poll() for proc in stopped] == [None, None, None]
    for proc in stopped:
        proc.send_signal(signal.SIGTERM)
    assert [await asyncio.to_thread(proc.wait, 15) for proc in stopped] == [0, 0, 0]
    for log in logs:
        assert errors_in(log) == []
    (workdir,) = clones(cache)
    assert clone.stale_files(workdir) == []
    git(workdir, "fsck", "--no-dangling")


# --- killed midway --------------------------------------------------------------------------


# Passes upload-pack's output on as it comes, then stalls after 256 KiB while the flag
# file exists: a fetch caught with its pack half received.
SLOW_RELAY = """
import os, sys, time
sent = 0
while data := os.read(0, 65536):
    os.write(1, data)
    sent += len(data)
    if sent > 262144 and os.path.exists(sys.argv[1]):
        time.sleep(20)
"""


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a process and everything it started, at once: a container being killed."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.communicate()


async def test_killed_mid_fetch_then_a_new_process_recovers_the_clone(
    docker_registry: DockerRegistry, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    remote = new_remote(tmp_path, docker_registry, "remote")
    config = write_config(tmp_path / "shards.yaml", docker_registry, remote)
    finish(once(config, cache))
    (workdir,) = clones(cache)
    # A big pack to fetch, served slowly: the first 256 KiB, then a pause.
    remote.commit(BRANCH_A, {"big.bin": os.urandom(4 << 20)}, "a large file")
    flag = tmp_path / "slow"
    flag.touch()
    relay = tmp_path / "relay.py"
    relay.write_text(SLOW_RELAY)
    slow = f"sh -c 'git-upload-pack \"$0\" | {sys.executable} {relay} {flag}'"
    git(workdir, "config", "remote.origin.uploadpack", slow)
    # Kept as a pack (as any fetch of over 100 objects is), not unpacked into loose objects.
    git(workdir, "config", "fetch.unpackLimit", "1")
    digests = await push_all(docker_registry, "2")
    proc = once(config, cache)
    pack = workdir / "objects" / "pack"
    await wait_until(lambda: any(p.name.startswith("tmp_") for p in pack.iterdir()), 30,
                     "the fetch never started a pack")  # fmt: skip
    await asyncio.sleep(0.3)
    kill_tree(proc)
    assert clone.stale_files(workdir), "the kill left nothing to recover"
    flag.unlink()
    out = finish(once(config, cache))
    assert "clone recovered" in out
    assert written(remote, digests)
    assert clone.stale_files(workdir) == []
    git(workdir, "fsck", "--no-dangling")


@pytest.mark.parametrize("whole_tree", [True, False], ids=["container", "process"])
async def test_killed_mid_push_then_a_new_process_writes(
    docker_registry: DockerRegistry, tmp_path: Path, whole_tree: bool
) -> None:
    """Killed while the remote's pre-receive hook runs: the push landed or it did not;
    either way the next process finishes the job from the clone as it was left."""
    cache = tmp_path / "cache"
    remote = new_remote(tmp_path, docker_registry, "remote")
    config = write_config(tmp_path / "shards.yaml", docker_registry, remote)
    finish(once(config, cache))
    (workdir,) = clones(cache)
    person = remote.commit(BRANCH_A, {"notes.txt": "a person's commit\n"}, "person")
    started = tmp_path / "hook-started"
    set_hook(remote, f"touch {started}; if [ ! -e {tmp_path / 'fast'} ]; then sleep 5; fi")
    digests = await push_all(docker_registry, "2")
    proc = once(config, cache)
    await wait_until(started.exists, 60, "the push never reached the remote")
    if whole_tree:
        kill_tree(proc)
    else:
        proc.kill()
        proc.communicate()
    (tmp_path / "fast").touch()
    finish(once(config, cache))
    await wait_until(lambda: written(remote, digests), 30, "the updates did not land")
    assert is_ancestor(remote, person, BRANCH_A)
    assert clone.stale_files(workdir) == []
    git(workdir, "fsck", "--no-dangling")
