"""``watcher demo``: the daemon against a real local registry and git remote.

It starts Debian's ``docker-registry`` on 127.0.0.1, pushes images to it over
the registry API, creates a bare git remote with environment branches of
values files, runs ``watcher run`` against them, pushes new builds, and shows
the commits landing. No Redis: one process owns every shard.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from watcher_testing.images import ImageKind, push_image
from watcher_testing.services import DockerRegistry
from watcher_testing.waiting import wait_until

INTERVAL = 3  # seconds: the demo's polling interval
ENVIRONMENTS = ("environment/b2c1", "environment/b2b1")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Dana Developer",
    "GIT_AUTHOR_EMAIL": "dana@example.com",
    "GIT_COMMITTER_NAME": "Dana Developer",
    "GIT_COMMITTER_EMAIL": "dana@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def say(text: str = "") -> None:
    print(text, flush=True)


def _git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip()


@contextmanager
def _registry(workdir: Path) -> Iterator[str]:
    registry = DockerRegistry(workdir / "registry")
    registry.start()
    try:
        yield registry.host
    finally:
        registry.stop()


async def _push(
    host: str, path: str, tag: str, kind: ImageKind, seed: str, created: datetime
) -> str:
    async with aiohttp.ClientSession() as session:
        return await push_image(
            session,
            f"http://{host}",
            path,
            tag,
            kind=kind,
            seed=seed,
            created=created,
        )


def _values(host: str, app: str, extra: str = "") -> str:
    return (
        f"# {app}: deployed by Argo CD from this branch\n"
        "replicaCount: 1\n"
        "image:\n"
        f"  repository: {host}/team/{app}\n"
        "  tag: master        # follows the master build\n"
        f"{extra}"
        "resources:\n"
        "  limits: {cpu: 500m, memory: 256Mi}\n"
    )


def _remote(workdir: Path, host: str) -> Path:
    bare = workdir / "gitops.git"
    _git(workdir, "init", "-q", "--bare", "-b", "main", str(bare))
    seed = workdir / "seed"
    _git(workdir, "init", "-q", "-b", "main", str(seed))
    (seed / "README.md").write_text("GitOps environments, one branch each.\n")
    _git(seed, "add", ".")
    _git(seed, "commit", "-q", "-m", "environments")
    files = {
        "environment/b2c1": {
            "apps/api/values.yaml": _values(host, "api"),
            "apps/web/values.yaml": _values(host, "web"),
            "apps/worker/values.yaml": _values(
                host,
                "worker",
                "  watch:\n    strategy: newest\n    tags: 'fixes_.*'   # follow branch builds\n",
            ),
        },
        "environment/b2b1": {
            "apps/api/values.yaml": _values(host, "api"),
            "apps/web/values.yaml": _values(
                host, "web", "  overrideTag: release-7   # pinned by a person\n"
            ),
        },
    }
    for branch, content in files.items():
        _git(seed, "checkout", "-q", "-B", branch, "main")
        for name, text in content.items():
            (seed / name).parent.mkdir(parents=True, exist_ok=True)
            (seed / name).write_text(text)
        _git(seed, "add", ".")
        _git(seed, "commit", "-q", "-m", f"values for {branch}")
        _git(seed, "push", "-q", str(bare), f"{branch}:refs/heads/{branch}")
    _git(seed, "push", "-q", str(bare), "main")
    shutil.rmtree(seed)
    return bare


def _config(workdir: Path, host: str, bare: Path) -> Path:
    path = workdir / "shards.yaml"
    path.write_text(
        f"""# the demo's configuration (see shards.yaml in the repository for every key)
shards: 4
interval: {INTERVAL}s
limits:
  local: {{requests: 600, per: 1m, headroom: 5%}}
registries:
  - host: "{host}"
    api: v2
    auth: anonymous
    insecure: true
    limit: local
git:
  url: file://{bare}
  branches: ["environment/*"]
  files: ["apps/*/values.yaml"]
  workdir: {workdir / "clone"}
server:
  port: 0
"""
    )
    return path


def _heads(bare: Path) -> dict[str, str]:
    out = _git(bare, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads")
    return dict(line.split() for line in out.splitlines())


def _show_new_commits(bare: Path, before: dict[str, str]) -> None:
    for branch in ENVIRONMENTS:
        head = _heads(bare)[branch]
        if head == before.get(branch):
            say(f"  {branch}: no new commit")
            continue
        say(f"  {branch}:")
        log = _git(bare, "log", "--format=%h %s (%an)", f"{before[branch]}..{branch}")
        for line in log.splitlines():
            say(f"    {line}")
        diff = _git(bare, "diff", "--unified=0", before[branch], branch)
        for line in diff.splitlines():
            if line.startswith(("+++", "-", "+")) and not line.startswith("---"):
                say(f"      {line}")


def demo(workdir_arg: str | None, *, keep: bool = False) -> int:
    workdir = Path(workdir_arg or tempfile.mkdtemp(prefix="watcher-demo-")).resolve()
    daemon: subprocess.Popen[bytes] | None = None
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with _registry(workdir) as host:
            say(f"registry: docker-registry on http://{host}")
            now = datetime.now(UTC)
            kinds: tuple[tuple[str, ImageKind], ...] = (
                ("api", "index"),
                ("web", "docker"),
                ("worker", "oci"),
            )
            for app, kind in kinds:
                digest = asyncio.run(_push(host, f"team/{app}", "master", kind, f"{app}-1", now))
                say(f"  pushed team/{app}:master ({kind}) = {digest}")
            build = asyncio.run(
                _push(
                    host,
                    "team/worker",
                    "fixes_TECH-2783_bump_sentry-9d239fd",
                    "oci",
                    "worker-fix-1",
                    now - timedelta(minutes=5),
                )
            )
            say(f"  pushed team/worker:fixes_TECH-2783_bump_sentry-9d239fd = {build}")
            bare = _remote(workdir, host)
            config = _config(workdir, host, bare)
            say(f"git remote: {bare} with branches {', '.join(ENVIRONMENTS)}")
            say(f"config: {config}")
            before = _heads(bare)

            say(f"\n$ watcher run --config {config}   (interval {INTERVAL}s, no Redis)")
            log = open(workdir / "watcher.log", "wb")  # noqa: SIM115 - closed below
            daemon = subprocess.Popen(
                [sys.executable, "-m", "watcher", "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            # The first sweep: every block of both branches followed (the worker
            # block picks the branch build already pushed).
            took = wait_until(
                lambda: (
                    all(_heads(bare)[b] != before[b] for b in ENVIRONMENTS)
                    and "fixes_TECH-2783"
                    in _git(bare, "show", "environment/b2c1:apps/worker/values.yaml")
                    and "shasum" in _git(bare, "show", "environment/b2c1:apps/web/values.yaml")
                ),
                60,
                interval=0.1,
                what="the first sweep's commits",
            )
            say(f"\nfirst sweep: every block followed within {took:.1f}s")
            _show_new_commits(bare, before)

            before = _heads(bare)
            say("\na developer pushes new builds:")
            web = asyncio.run(
                _push(host, "team/web", "master", "docker", "web-2", datetime.now(UTC))
            )
            say(f"  pushed team/web:master = {web}")
            fix = "fixes_TECH-2790_retry_payments-4be1a02"
            asyncio.run(_push(host, "team/worker", fix, "oci", "worker-fix-2", datetime.now(UTC)))
            say(f"  pushed team/worker:{fix}")
            pushed = time.monotonic()
            wait_until(
                lambda: (
                    web in _git(bare, "show", "environment/b2c1:apps/web/values.yaml")
                    and fix in _git(bare, "show", "environment/b2c1:apps/worker/values.yaml")
                ),
                60,
                interval=0.1,
                what="the new build to land",
            )
            say(f"\npush to commit: {time.monotonic() - pushed:.1f}s (interval {INTERVAL}s)")
            _show_new_commits(bare, before)
            say("  (environment/b2b1 pins web with overrideTag, so it is left alone)")

            say("\nstopping the daemon with SIGTERM")
            stopped = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(15)
            daemon = None
            log.close()
            say(f"  exited with code {code} after {time.monotonic() - stopped:.1f}s")
            say(f"  its JSON log: {workdir / 'watcher.log'}")
            return 0 if code == 0 else 1
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if daemon is not None:
            daemon.kill()
            daemon.wait()
        if keep or workdir_arg:
            say(f"files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
