"""Real parts for the tests: a docker-registry on a free port, bare git remotes."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

# The tier rules: the collection check and the unit tier's purity guard.
from tests.tiers import (  # noqa: F401
    _unit_tests_stay_pure,
    pytest_collection_modifyitems,
    pytest_configure,
)

# The local services are the product's own runners (the demo and the
# benchmarks use them too); tests import them from here as well.
from watcher.config import Config, load_text
from watcher_testing.services import DockerRegistry, PubSubEmulator, RedisServer, free_port

__all__ = ["DockerRegistry", "PubSubEmulator", "RedisServer", "free_port"]


def watcher_config(
    host: str, remote: GitRemote, tmp_path: Path, *, api: str = "v2", auth: str = "anonymous"
) -> Config:
    """The configuration the end-to-end tests run with: one local registry, plain http."""
    return load_text(
        f"""
interval: 1s
limits:
  local: {{requests: 1000, per: 1m, headroom: 0%}}
registries:
  - {{host: "{host}", api: {api}, auth: {auth}, insecure: true, limit: local}}
git:
  url: {remote.url}
  branches: ["environment/*"]
  files: ["apps/*/values.yaml"]
  author: {{name: image-watcher, email: watcher@example.com}}
  workdir: {tmp_path / "clone"}
""",
        "test.yaml",
        {},
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def docker_registry(tmp_path: Path) -> Iterator[DockerRegistry]:
    """Debian's docker-registry (distribution 2.8) on a free loopback port."""
    registry = DockerRegistry(tmp_path / "registry")
    try:
        registry.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield registry
    finally:
        registry.stop()


GIT_ENV = {
    "GIT_AUTHOR_NAME": "Dev Person",
    "GIT_AUTHOR_EMAIL": "dev@example.com",
    "GIT_COMMITTER_NAME": "Dev Person",
    "GIT_COMMITTER_EMAIL": "dev@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


@dataclass
class GitRemote:
    """A bare repository standing in for the GitOps remote, with helpers to act as a person."""

    path: Path
    scratch: Path

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def branches(self) -> list[str]:
        out = git(self.path, "for-each-ref", "--format=%(refname:short)", "refs/heads")
        return sorted(out.splitlines())

    def read(self, branch: str, file: str) -> str:
        return git(self.path, "show", f"{branch}:{file}") + "\n"

    def read_bytes(self, branch: str, file: str) -> bytes:
        return subprocess.run(
            ["git", "show", f"{branch}:{file}"], cwd=self.path, check=True, capture_output=True
        ).stdout

    def head(self, branch: str) -> str:
        return git(self.path, "rev-parse", f"refs/heads/{branch}")

    def log(self, branch: str) -> list[str]:
        return git(self.path, "log", "--format=%H %s", branch).splitlines()

    def count(self, branch: str) -> int:
        return int(git(self.path, "rev-list", "--count", branch))

    def commit(self, branch: str, files: Mapping[str, str | bytes], message: str) -> str:
        """Commit as a person would: clone, edit, commit, push (no force)."""
        work = self.scratch / f"person-{time.monotonic_ns()}"
        git(self.scratch, "clone", "-q", "--branch", branch, self.url, str(work))
        for name, content in files.items():
            target = work / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
            git(work, "add", name)
        git(work, "commit", "-q", "-m", message)
        git(work, "push", "-q", "origin", f"HEAD:refs/heads/{branch}")
        sha = git(work, "rev-parse", "HEAD")
        shutil.rmtree(work)
        return sha


def make_remote(
    tmp_path: Path, branches: Mapping[str, Mapping[str, str | bytes]], name: str = "remote"
) -> GitRemote:
    """A bare remote whose branches each hold the given files (one commit per branch)."""
    bare = tmp_path / f"{name}.git"
    scratch = tmp_path / f"{name}-scratch"
    scratch.mkdir()
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    remote = GitRemote(bare, scratch)
    seed = scratch / "seed"
    git(scratch, "init", "-q", "-b", "main", str(seed))
    (seed / "README").write_text("environments\n")
    git(seed, "add", "README")
    git(seed, "commit", "-q", "-m", "init")
    git(seed, "push", "-q", remote.url, "main")
    for branch, files in branches.items():
        git(seed, "checkout", "-q", "-B", branch, "main")
        for file, content in files.items():
            target = seed / file
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
            git(seed, "add", file)
        git(seed, "commit", "-q", "-m", f"seed {branch}")
        git(seed, "push", "-q", remote.url, f"{branch}:refs/heads/{branch}")
    shutil.rmtree(seed)
    return remote


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pubsub_emulator(tmp_path: Path) -> Iterator[PubSubEmulator]:
    """Google's Pub/Sub emulator on a free loopback port (PUBSUB_EMULATOR_HOST: ``.host``)."""
    emulator = PubSubEmulator(tmp_path / "pubsub")
    try:
        emulator.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield emulator
    finally:
        emulator.stop()
