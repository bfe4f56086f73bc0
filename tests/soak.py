"""Soak: three daemons, compressed time, random pushes, retags, human commits and faults.

Real parts only: ``python -m watcher run`` processes, a real ``redis-server``, the
Google-registry emulator enforcing a quota, and a bare git remote on which a
"person" commits. Invariants are checked while it runs and at the end:

- windows over the cap: request windows (of the quota's length) that saw more than
  the cap, counted on the emulator's own log (must be 0);
- human commits lost: human commits that are no longer on their branch (must be 0);
- moved tags not reflected: after the last fault clears, every image is pushed once
  more; blocks still not showing that digest two intervals later (must be 0);
- errors by kind (warning/error log events of every replica) and memory growth
  (RSS of the replica that lives through the whole run).

Short run in CI: ``tests/test_soak.py``. Long run by hand::

    .venv/bin/python -m tests.soak --intervals 200 --replicas 3 --interval 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import GitRemote, RedisServer, free_port, git, make_remote
from watcher.tuning import THROTTLE_FIRST
from watcher_testing.emulator import EmulatorSettings, GoogleRegistryEmulator
from watcher_testing.waiting import wait_until_async

WINDOW = 10.0
QUOTA = 300
WARM_WITHIN = 60.0  # seconds the daemons may take to write every block once
CAP = 285  # 5% headroom

FAULTS = (
    "registry_5xx",
    "registry_timeout",
    "registry_reset",
    "registry_truncated",
    "registry_garbage",
    "registry_extension",
    "throttle_retry_after",
    "throttle_storm",
    "redis_restart",
    "redis_slow",
    "git_reject",
    "git_timeout",
    "replica_sigkill",
    "replica_sigterm",
)


def values_file(host: str, image: str, extra: int = 0) -> str:
    return (
        f"# {image}\nimage:\n  repository: {host}/{image}\n  tag: master\nreplicaCount: {extra}\n"
    )


class Daemon:
    """One ``watcher run`` process; restartable on the same clone (its workdir)."""

    def __init__(self, workdir: Path, config: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.config = config
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def log_path(self) -> Path:
        return self.workdir / "log.jsonl"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "watcher", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "XDG_CACHE_HOME": str(self.workdir), **self.env},
                # Its own process group, so that ``kill`` can end it and all it started.
                start_new_session=True,
            )
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL as a container kill: the daemon and every process it started.

        Killing its process group is not enough: the daemon runs each git command
        that talks to the remote in a session of its own (so its timeout can end
        git's helpers), and a push that outlived the daemon could still land
        after the "crash". The tree is frozen first, so nothing starts between
        looking for it and killing it.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGSTOP)
        frozen: set[int] = set()
        while found := set(_descendants(self.proc.pid)) - frozen:
            _signal(found, signal.SIGSTOP)
            frozen |= found
        os.killpg(self.proc.pid, signal.SIGKILL)
        _signal(frozen, signal.SIGKILL)
        self.proc.wait(5)

    async def terminate(self, timeout: float = 10.0) -> tuple[int | None, float]:  # noqa: ASYNC109
        """SIGTERM; (exit code or None if it had to be killed, seconds it took)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return (proc.returncode if proc else None), 0.0
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        return code, time.monotonic() - started

    def rss_kib(self) -> int | None:
        if not self.alive():
            return None
        assert self.proc is not None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def events(self) -> list[dict[str, object]]:
        out = []
        if not self.log_path.exists():
            return out
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                out.append({"event": "non-json output", "severity": "ERROR", "line": line[:200]})
                continue
            if isinstance(event, dict):
                out.append(event)
        return out


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, from /proc (children, theirs, and so on)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # "pid (comm) state ppid ..."
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def config_text(
    emu_host: str,
    git_url: str,
    redis_url: str,
    *,
    interval: float,
    shards: int = 6,
    git_timeout: float = 2.0,
    registry_timeout: float = 1.0,
) -> str:
    return f"""
shards: {shards}
interval: {interval:g}s
redis: {{url: "{redis_url}"}}
limits:
  gcr: {{requests: {QUOTA}, per: {WINDOW:g}s, headroom: 5%}}
registries:
  - {{host: "{emu_host}", api: google, auth: anonymous, insecure: true, limit: gcr,
      timeout: {registry_timeout:g}s}}
git:
  url: {git_url}
  files: ["apps/*/values.yaml"]
  timeout: {git_timeout:g}s
server: {{port: {free_port()}}}
"""


def windows_over_cap(times: list[float], window: float, cap: int) -> int:
    """How many requests opened a window ``[t, t + window)`` holding more than ``cap``."""
    times = sorted(times)
    over, end = 0, 0
    for start, t in enumerate(times):
        end = max(end, start)
        while end < len(times) and times[end] - t < window:
            end += 1
        if end - start > cap:
            over += 1
    return over


def set_hook(remote: GitRemote, script: str | None) -> None:
    hook = remote.path / "hooks" / "pre-receive"
    if script is None:
        hook.unlink(missing_ok=True)
        return
    hook.write_text("#!/bin/sh\n" + script + "\n")
    hook.chmod(0o755)


def is_ancestor(remote: GitRemote, sha: str, branch: str) -> bool:
    result = subprocess.run(
        ["git", "merge-base", "--is-ancestor", sha, f"refs/heads/{branch}"],
        cwd=remote.path,
        capture_output=True,
    )
    return result.returncode == 0


def shasums(
    remote: GitRemote, branches: list[str], images: list[str]
) -> dict[tuple[str, str], str]:
    """(branch, image) -> the shasum written there ("" when none); one git process per branch."""
    out: dict[tuple[str, str], str] = {}
    for branch in branches:
        names = [f"refs/heads/{branch}:apps/{image.split('/')[-1]}/values.yaml" for image in images]
        data = subprocess.run(
            ["git", "cat-file", "--batch"],
            cwd=remote.path,
            input=("\n".join(names) + "\n").encode(),
            capture_output=True,
        ).stdout
        pos = 0
        for image in images:
            end = data.index(b"\n", pos)
            header = data[pos:end].split()
            pos = end + 1
            found = ""
            if len(header) == 3 and header[1] == b"blob":
                size = int(header[2])
                text = data[pos : pos + size].decode("utf-8", "replace")
                pos += size + 1
                for line in text.splitlines():
                    if line.strip().startswith("shasum:"):
                        found = line.split(":", 1)[1].strip().strip('"')
            out[(branch, image)] = found
    return out


@dataclass
class SoakReport:
    intervals: int
    replicas: int
    interval: float
    seconds: float = 0.0
    requests: int = 0
    max_in_window: int = 0
    windows_over_cap: int = 0
    throttled: int = 0
    human_commits: int = 0
    human_commits_lost: int = 0
    pushes: int = 0
    watcher_commits: int = 0
    moved_tags_checked: int = 0
    moved_tags_not_reflected: int = 0
    reflect_seconds_max: float = 0.0
    faults: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    exits: list[tuple[str, int | None, float]] = field(default_factory=list)
    rss_kib: tuple[int, int] = (0, 0)  # the long-lived replica, after warm-up and at the end
    crashes: int = 0

    @property
    def memory_growth_kib(self) -> int:
        return self.rss_kib[1] - self.rss_kib[0]

    def summary(self) -> str:
        lines = [
            f"soak: {self.intervals} intervals of {self.interval:g}s, {self.replicas} replicas, "
            f"{self.seconds:.0f}s",
            f"  registry requests: {self.requests}, most in any {WINDOW:g}s window: "
            f"{self.max_in_window} (cap {CAP}), 429s answered: {self.throttled}",
            f"  windows over the cap: {self.windows_over_cap}",
            f"  human commits: {self.human_commits}, lost: {self.human_commits_lost}",
            f"  image pushes/retags: {self.pushes}, watcher commits: {self.watcher_commits}",
            f"  moved tags after the last fault: {self.moved_tags_checked}, not reflected within "
            f"two intervals: {self.moved_tags_not_reflected} "
            f"(slowest {self.reflect_seconds_max:.2f}s)",
            f"  faults injected: {dict(sorted(self.faults.items()))}",
            f"  errors by kind: {dict(self.errors.most_common())}",
            f"  replica exits (SIGTERM): {self.exits}",
            f"  unexpected replica deaths: {self.crashes}",
            f"  memory (RSS, long-lived replica): {self.rss_kib[0]} KiB -> {self.rss_kib[1]} KiB "
            f"({self.memory_growth_kib:+d} KiB)",
        ]
        return "\n".join(lines)


async def soak(
    base: Path,
    *,
    intervals: int = 20,
    replicas: int = 3,
    interval: float = 2.0,
    images: int = 8,
    seed: int = 1,
    faults: tuple[str, ...] = FAULTS,
    log: Callable[[str], None] = lambda _: None,
) -> SoakReport:
    """Run the soak under ``base`` (a scratch directory) and report its figures."""
    rng = random.Random(seed)
    report = SoakReport(intervals=intervals, replicas=replicas, interval=interval)
    redis = RedisServer(base / "redis")
    redis.dir.mkdir(parents=True, exist_ok=True)
    redis.start()
    settings = EmulatorSettings(auth_required=False, quota_requests=QUOTA, quota_window=WINDOW)
    names = [f"proj/app{i}" for i in range(images)]
    branches = ["environment/a", "environment/b", "environment/c"]
    daemons: list[Daemon] = []
    human: list[tuple[str, str]] = []
    started = time.monotonic()
    try:
        async with GoogleRegistryEmulator(settings) as emu:
            for name in names:
                emu.push(name, "master")
            files = {
                f"apps/{n.split('/')[-1]}/values.yaml": values_file(emu.host, n) for n in names
            }
            remote = make_remote(base, {b: files for b in branches})
            config = base / "shards.yaml"
            daemons = []
            for n in range(replicas):
                path = base / f"shards-{n}.yaml"
                path.write_text(config_text(emu.host, remote.url, redis.url, interval=interval))
                daemons.append(Daemon(base / f"replica{n}", path))
            config.write_text(daemons[0].config.read_text())
            for daemon in daemons:
                daemon.start()
            spawned = time.monotonic()

            def warm() -> bool:
                seen = shasums(remote, branches, names)
                return all(digest == emu.resolve(n, "master") for (_, n), digest in seen.items())

            # Warm: every block written once (on a loaded machine that takes a while),
            # and the schedule starts no sooner than two intervals in, as it always did.
            await wait_until_async(
                lambda: asyncio.to_thread(warm), WARM_WITHIN, interval=0.2, what="the first writes"
            )
            await asyncio.sleep(max(0.0, spawned + 2 * interval - time.monotonic()))
            warm_rss = daemons[0].rss_kib() or 0

            def person(branch: str) -> None:
                image = rng.choice(names)
                path = f"apps/{image.split('/')[-1]}/values.yaml"
                for _ in range(5):
                    text = remote.read(branch, path)
                    lines = [
                        f"replicaCount: {rng.randint(1, 99)}"
                        if line.startswith("replicaCount:")
                        else line
                        for line in text.splitlines()
                    ]
                    try:
                        sha = remote.commit(branch, {path: "\n".join(lines) + "\n"}, "a person")
                    except subprocess.CalledProcessError:
                        continue  # the watcher pushed meanwhile: a person pulls and retries
                    human.append((branch, sha))
                    return

            # Every fault kind at least once, in a random order, then random ones.
            plan = list(faults)
            rng.shuffle(plan)
            while len(plan) < intervals:
                plan.append(rng.choice(faults))
            for tick in range(intervals):
                began = time.monotonic()
                # Random pushes and retags.
                for _ in range(rng.randint(0, 3)):
                    image = rng.choice(names)
                    if rng.random() < 0.3 and len(emu.tags(image)) > 0:
                        old = rng.choice(list(emu._repos[image].manifests))
                        emu.retag(image, "master", old)
                    else:
                        emu.push(image, "master")
                    report.pushes += 1
                # Random human commits.
                for _ in range(rng.randint(0, 2)):
                    await asyncio.to_thread(person, rng.choice(branches))
                fault = plan[tick]
                report.faults[fault] += 1
                log(f"interval {tick + 1}/{intervals}: {fault}")
                await inject(fault, emu, redis, remote, daemons, rng, interval, report)
                for d in daemons:
                    if not d.alive():
                        report.crashes += 1
                        d.start()
                rest = interval - (time.monotonic() - began)
                if rest > 0:
                    await asyncio.sleep(rest)  # one fault per interval: the soak's pace
            emu.clear_faults()
            set_hook(remote, None)
            # A fault has cleared once the pause it asked for is over: a 429 without
            # Retry-After holds the budget for THROTTLE_FIRST seconds by design. That
            # pause passing is the behaviour, so this is a sleep.
            await asyncio.sleep(max(THROTTLE_FIRST, interval))
            for d in daemons:
                if not d.alive():
                    report.crashes += 1
                    d.start()
            # Move every tag once more and time its arrival on every branch.
            moved = {n: emu.push(n, "master") for n in names}
            moved_at = time.monotonic()
            arrived: dict[tuple[str, str], float] = {}
            keys = [(b, n) for b in branches for n in names]
            report.moved_tags_checked = len(keys)
            while len(arrived) < len(keys) and time.monotonic() < moved_at + 4 * interval:
                seen = await asyncio.to_thread(shasums, remote, branches, names)
                now = time.monotonic()
                for key in keys:
                    if key not in arrived and seen[key] == moved[key[1]]:
                        arrived[key] = now - moved_at
                await asyncio.sleep(0.1)  # sampling: each arrival is timed, late ones too
            report.moved_tags_not_reflected = sum(
                1 for key in keys if arrived.get(key, float("inf")) > 2 * interval
            )
            report.reflect_seconds_max = max(arrived.values(), default=float("inf"))
            if len(arrived) < len(keys):
                report.reflect_seconds_max = float("inf")
            report.rss_kib = (warm_rss, daemons[0].rss_kib() or 0)
            for n, daemon in enumerate(daemons):
                code, seconds = await daemon.terminate()
                report.exits.append((f"replica{n}", code, round(seconds, 2)))
            entries = list(emu.log)
            times = [e.monotonic for e in entries if e.kind != "metadata"]
            report.requests = len(times)
            report.max_in_window = emu.max_in_window(WINDOW)
            report.windows_over_cap = windows_over_cap(times, WINDOW, CAP)
            report.throttled = sum(1 for e in entries if e.status == 429)
            report.human_commits = len(human)
            report.human_commits_lost = sum(
                1 for branch, sha in human if not is_ancestor(remote, sha, branch)
            )
            for branch in branches:
                out = git(remote.path, "log", "--format=%an", f"refs/heads/{branch}")
                report.watcher_commits += out.splitlines().count("image-watcher")
            for daemon in daemons:
                for event in daemon.events():
                    severity = str(event.get("severity", ""))
                    if severity in ("WARNING", "ERROR", "CRITICAL"):
                        report.errors[f"{severity.lower()}: {event.get('event')}"] += 1
    finally:
        for daemon in daemons:
            daemon.kill()
        redis.stop()
    report.seconds = time.monotonic() - started
    return report


async def inject(
    fault: str,
    emu: GoogleRegistryEmulator,
    redis: RedisServer,
    remote: GitRemote,
    daemons: list[Daemon],
    rng: random.Random,
    interval: float,
    report: SoakReport,
) -> None:
    """Inject one fault; return once it has cleared (faults do not overlap).

    The sleeps here are each fault's length: how long it lasts is the scenario.
    """
    if fault == "registry_5xx":
        emu.fail_next(rng.randint(3, 12), status=rng.choice([500, 502, 503]))
    elif fault == "registry_timeout":
        emu.hang_next(rng.randint(1, 3), seconds=2.0)  # past the 1 s client timeout
    elif fault == "registry_reset":
        emu.drop_next(rng.randint(2, 6))
    elif fault == "registry_truncated":
        emu.malform_next(rng.randint(1, 4), "truncated")
    elif fault == "registry_garbage":
        emu.malform_next(rng.randint(1, 4), "garbage")
    elif fault == "registry_extension":
        emu.malform_next(rng.randint(1, 4), "extension")
    elif fault == "throttle_retry_after":
        emu.settings.retry_after = 1.0
        emu.fail_next(1, status=429)
        await asyncio.sleep(interval)
        emu.settings.retry_after = None
    elif fault == "throttle_storm":
        emu.settings.retry_after = None
        emu.fail_next(None, status=429)  # every request, until cleared
        await asyncio.sleep(interval)
        emu.clear_faults()
    elif fault == "redis_restart":
        redis.stop()
        await asyncio.sleep(interval / 2)
        await asyncio.to_thread(redis.start)
    elif fault == "redis_slow":
        await asyncio.to_thread(_redis_debug_sleep, redis.port, 1.0)
    elif fault == "git_reject":
        set_hook(remote, "echo 'branch protected' >&2\nexit 1")
        await asyncio.sleep(interval)
        set_hook(remote, None)
    elif fault == "git_timeout":
        set_hook(remote, "sleep 30")  # past git.timeout (2 s): the push is killed
        await asyncio.sleep(interval)
        set_hook(remote, None)
    elif fault == "replica_sigkill":
        daemon = rng.choice(daemons[1:] or daemons)
        daemon.kill()
        await asyncio.sleep(interval / 4)
        daemon.start()
    elif fault == "replica_sigterm":
        index = rng.randrange(1, len(daemons)) if len(daemons) > 1 else 0
        code, seconds = await daemons[index].terminate()
        report.exits.append((f"replica{index} (mid-run)", code, round(seconds, 2)))
        daemons[index].start()
    else:
        raise ValueError(f"unknown fault {fault!r}")


def _redis_debug_sleep(port: int, seconds: float) -> None:
    subprocess.run(
        ["redis-cli", "-p", str(port), "DEBUG", "SLEEP", str(seconds)],
        check=True,
        capture_output=True,
        timeout=seconds + 10,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--intervals", type=int, default=30)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds (compressed time)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="watcher-soak-"))
    try:
        report = asyncio.run(
            soak(
                base,
                intervals=args.intervals,
                replicas=args.replicas,
                interval=args.interval,
                images=args.images,
                seed=args.seed,
                log=lambda line: print(line, flush=True),
            )
        )
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")
    print(report.summary())
    ok = (
        report.windows_over_cap == 0
        and report.human_commits_lost == 0
        and report.moved_tags_not_reflected == 0
        and report.crashes == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
