"""Real parts for the tests: a docker-registry on a free port, bare git remotes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout}s: {exc}") from exc
            time.sleep(0.05)


@dataclass
class DockerRegistry:
    """A running Debian docker-registry (distribution 2.8) on 127.0.0.1."""

    host: str  # "127.0.0.1:PORT", the registry part of image names
    root: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"


@pytest.fixture
def docker_registry(tmp_path: Path) -> Iterator[DockerRegistry]:
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("docker-registry is not installed: run .ci/install")
    port = free_port()
    root = tmp_path / "registry"
    root.mkdir()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {root}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    log = open(tmp_path / "registry.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/")
        yield DockerRegistry(host=f"127.0.0.1:{port}", root=root)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


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


@dataclass
class RedisServer:
    """A real redis-server on a free port that a test may stop and start again."""

    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run .ci/install")
        # No persistence: a restart comes back empty, the worst case.
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--loglevel",
                "warning",
                "--enable-debug-command",
                "local",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(free_port(), directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
