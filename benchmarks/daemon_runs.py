"""One compressed-time run of real daemons against the emulator, a git remote (and Redis).

Shared by the ``reference`` (one daemon, plus the baseline in the same run) and
``replicas`` (three daemons sharing Redis) scenarios.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import infra
from benchmarks.workload import (
    RegistryState,
    Workload,
    files,
    push_build,
    seed_registry,
)
from watcher import config as watcher_config
from watcher_testing.emulator import EmulatorSettings, GoogleRegistryEmulator, LoggedRequest
from watcher_testing.services import RedisServer, free_port

OURS = "127.0.0.1"
BASELINE = "127.0.0.2"
REAL_INTERVAL = 120.0  # 2 min
REAL_WINDOW = 600.0  # 10 min
REAL_TOKEN_TTL = 3600.0  # registry token lifetime assumed: the 1 h of the OAuth token behind it
BASELINE_RATE = 20.0  # argocd-image-updater's default `limit` (requests per second)


@dataclass(frozen=True)
class Compression:
    """Durations divided by ``factor``; request counts kept (or scaled by ``counts``)."""

    factor: float
    quota: int = 10_000  # requests per window

    @property
    def interval(self) -> float:
        return REAL_INTERVAL / self.factor

    @property
    def window(self) -> float:
        return REAL_WINDOW / self.factor

    def describe(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "interval_s": self.interval,
            "window_s": self.window,
            "stands_for": {"interval_s": REAL_INTERVAL, "window_s": REAL_WINDOW},
            "quota_per_window": self.quota,
            "token_ttl_s": REAL_TOKEN_TTL / self.factor,
            "note": (
                "every duration (interval, quota window, token lifetime, baseline rate limit) "
                f"is divided by {self.factor:g}; request counts per window are kept, so requests "
                "per cycle, shares of the cap and latencies in intervals are the real ones"
            ),
        }


@dataclass
class Push:
    mono: float
    wall: float
    image: str
    kind: str  # digest | newest
    value: str  # the digest or tag the blocks must get
    branches: list[str]


@dataclass
class RunOutcome:
    log: list[LoggedRequest]
    pushes: list[Push]
    events: list[dict[str, Any]]  # every daemon's log lines
    daemons: list[infra.Daemon]
    host: str
    started: float  # monotonic: first registry request of ours
    ended: float  # monotonic: daemons told to stop
    killed: float | None = None
    killed_wall: float | None = None
    victim_events: list[dict[str, Any]] = field(default_factory=list)
    baseline: dict[str, Any] | None = None
    exit_codes: list[int | None] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)
    cap: int = 0


def config_text(
    host: str,
    remote: Path,
    comp: Compression,
    *,
    redis_url: str | None = None,
    shards: int = 16,
    quota: int | None = None,
    window: float | None = None,
) -> str:
    interval = f"{comp.interval:g}s"
    redis = f'redis: {{url: "{redis_url}"}}\n' if redis_url else ""
    return (
        f"shards: {shards}\n"
        f"interval: {interval}\n"
        f"{redis}"
        "limits:\n"
        f"  gcr: {{requests: {quota or comp.quota}, per: {window or comp.window:g}s,"
        " headroom: 5%}\n"
        "registries:\n"
        f'  - {{host: "{host}", api: google, auth: basic, username_env: BENCH_REGISTRY_USER,'
        " password_env: BENCH_REGISTRY_PASSWORD, insecure: true, limit: gcr}\n"
        "git:\n"
        f"  url: file://{remote}\n"
        '  files: ["apps/*/values.yaml"]\n'
        f"server: {{port: {free_port()}}}\n"
    )


def expected_branches(load: Workload, image: str, kind: str) -> list[str]:
    return sorted(
        {
            branch
            for branch, _, block in load.blocks()
            if block.image == image and block.strategy == kind
        }
    )


def first_request(log: list[LoggedRequest], client: str) -> float | None:
    for entry in log:
        if entry.client == client and entry.kind not in ("metadata",):
            return entry.monotonic
    return None


async def run(
    workdir: Path,
    load: Workload,
    comp: Compression,
    *,
    replicas: int = 1,
    warmup: float = 1.5,
    push_span: float = 5.0,
    drain: float = 1.5,
    pushes_per_interval: float = 5.0,
    kill_after: float | None = None,
    after_kill: float = 3.0,
    baseline: bool = False,
    seed: int = 1,
) -> RunOutcome:
    """Warm up, push builds at random times for ``push_span`` intervals, drain; all in intervals."""
    rng = random.Random(seed)
    settings = EmulatorSettings(
        auth_required=True,
        quota_requests=comp.quota,
        quota_window=comp.window,
        token_ttl=REAL_TOKEN_TTL / comp.factor,
    )
    redis: RedisServer | None = None
    daemons: list[infra.Daemon] = []
    baseline_proc: subprocess.Popen[bytes] | None = None
    async with GoogleRegistryEmulator(settings) as emu:
        state: RegistryState = seed_registry(emu, load, rng)
        remote = infra.make_remote(workdir, files(emu.host, load, state))
        if replicas > 1:
            redis = RedisServer(workdir / "redis")
            redis.start()
        try:
            configs = []
            for n in range(replicas):
                path = workdir / f"shards-{n}.yaml"
                path.write_text(
                    config_text(emu.host, remote, comp, redis_url=redis.url if redis else None)
                )
                configs.append(path)
            cap = watcher_config.load(str(configs[0])).limits["gcr"].cap
            interval = comp.interval
            total = warmup + push_span + drain if kill_after is None else kill_after + after_kill
            if baseline:
                spec = {
                    "url": emu.url,
                    "service": emu.service,
                    "user": infra.REGISTRY_USER,
                    "password": infra.REGISTRY_PASSWORD,
                    "rate": BASELINE_RATE * comp.factor,
                    "concurrency": 10,
                    "interval": interval,
                    "duration": total * interval + 1.0,
                    "bind": BASELINE,
                    "applications": [
                        {
                            "name": f"{branch}/{app}",
                            "images": [
                                {
                                    "image": b.image,
                                    "tag": b.tag,
                                    "strategy": b.strategy,
                                    "pattern": "fixes_TECH-.*",
                                }
                                for b in blocks
                            ],
                        }
                        for branch, apps in load.branches.items()
                        for app, blocks in apps.items()
                    ],
                }
                (workdir / "baseline.json").write_text(json.dumps(spec))
            for n, path in enumerate(configs):
                daemons.append(infra.spawn_daemon(f"replica{n}", workdir / f"replica{n}", path))
            # The run's clock starts at the daemons' first registry request.
            deadline = time.monotonic() + 60
            while (started := first_request(emu.log, OURS)) is None:
                if time.monotonic() > deadline or any(d.proc.poll() is not None for d in daemons):
                    raise RuntimeError(f"daemon did not start: see {workdir}")
                await asyncio.sleep(0.02)
            if baseline:
                baseline_proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.baseline",
                        str(workdir / "baseline.json"),
                        str(workdir / "baseline-out.json"),
                    ],
                    cwd=infra.ROOT,
                )
            pushes = await _push_loop(
                emu, load, state, rng, started, interval, warmup, push_span, pushes_per_interval
            )
            killed = killed_wall = None
            if kill_after is not None:
                await _sleep_until(started + kill_after * interval)
                victim = daemons[1]
                victim.proc.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                killed_wall = time.time()
            await _sleep_until(started + total * interval)
            ended = time.monotonic()
            cpu = [d.cpu_seconds() or 0.0 for d in daemons]
            rss = [d.rss_peak_kb() or 0 for d in daemons]
            codes = await asyncio.gather(
                *(asyncio.to_thread(infra.stop_daemon, d) for d in daemons)
            )
            baseline_result = None
            if baseline_proc is not None:
                await asyncio.to_thread(baseline_proc.wait, 60)
                baseline_result = json.loads((workdir / "baseline-out.json").read_text())
            log = list(emu.log)
        finally:
            for d in daemons:
                if d.proc.poll() is None:
                    d.proc.kill()
            if baseline_proc is not None and baseline_proc.poll() is None:
                baseline_proc.kill()
            if redis is not None:
                redis.stop()
    events = [e for d in daemons for e in d.events()]
    return RunOutcome(
        log=log,
        pushes=pushes,
        events=events,
        daemons=daemons,
        host=emu.host,
        started=started,
        ended=ended,
        killed=killed,
        killed_wall=killed_wall,
        baseline=baseline_result,
        exit_codes=list(codes),
        cpu_seconds=cpu,
        rss_kb=rss,
        cap=cap,
    )


async def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _push_loop(
    emu: GoogleRegistryEmulator,
    load: Workload,
    state: RegistryState,
    rng: random.Random,
    started: float,
    interval: float,
    warmup: float,
    span: float,
    rate: float,
) -> list[Push]:
    """Pushes at random (uniform) times; an image is pushed again only 3 intervals later."""
    if rate <= 0 or span <= 0:
        return []
    begin = started + warmup * interval
    count = max(1, round(rate * span))
    times = sorted(begin + rng.random() * span * interval for _ in range(count))
    candidates = [(image, "digest") for image, _ in load.digest_targets()]
    candidates += [(image, "newest") for image in load.newest_images()]
    last: dict[str, float] = defaultdict(lambda: -1e9)
    pushes = []
    for when in times:
        await _sleep_until(when)
        now = time.monotonic()
        free = [c for c in candidates if now - last[c[0]] >= 3 * interval]
        if not free:
            continue
        image, kind = rng.choice(free)
        last[image] = now
        _, value = push_build(emu, state, image, kind, rng)
        pushes.append(
            Push(now, time.time(), image, kind, value, expected_branches(load, image, kind))
        )
    return pushes


# --- analysis ------------------------------------------------------------------------


def requests_of(log: list[LoggedRequest], client: str) -> list[LoggedRequest]:
    return [e for e in log if e.client == client and e.kind != "metadata"]


def latencies(out: RunOutcome, interval: float) -> dict[str, Any]:
    """Push-to-commit per (push, branch), and push-to-first-check per push, in intervals."""
    landed: dict[tuple[str, str, str], float] = {}
    for event in out.events:
        if event.get("event") != "updated":
            continue
        key = (str(event.get("branch")), str(event.get("image")), str(event.get("new")))
        when = infra.wall(str(event["time"]))
        landed[key] = min(landed.get(key, when), when)
    listings: dict[str, list[float]] = defaultdict(list)
    for entry in requests_of(out.log, OURS):
        if entry.kind == "tags_list" and entry.repository:
            listings[entry.repository].append(entry.monotonic)
    commit, detect, write, missing = [], [], [], 0
    for push in out.pushes:
        if out.killed is not None and push.mono > out.killed - interval:
            continue
        after = [t for t in listings.get(push.image, []) if t >= push.mono]
        checked = push.wall + (min(after) - push.mono) if after else None
        if after:
            detect.append((min(after) - push.mono) / interval)
        for branch in push.branches:
            found = landed.get((branch, f"{out.host}/{push.image}", push.value))
            if found is None:
                missing += 1
            else:
                commit.append((found - push.wall) / interval)
                if checked is not None:
                    # Seconds from the look-up that saw the build to its commit: git work
                    # and the writer's queue, which do not scale with the interval.
                    write.append(found - checked)
    return {
        "push_to_commit": commit,
        "push_to_check": detect,
        "check_to_commit_s": write,
        "missing": missing,
        "pushes": len(out.pushes),
    }


def commits_per_branch(out: RunOutcome, interval: float) -> dict[str, float]:
    """Commits per branch per cycle while builds were being pushed."""
    if not out.pushes:
        return {"mean": 0.0, "max": 0.0, "updates_per_commit": 0.0}
    start = out.pushes[0].wall
    end = out.pushes[-1].wall + interval
    cycles = max(1e-9, (end - start) / interval)
    by_branch: dict[str, set[str]] = defaultdict(set)
    updates = 0
    for event in out.events:
        if event.get("event") == "updated" and start <= infra.wall(str(event["time"])) <= end:
            by_branch[str(event["branch"])].add(str(event.get("commit")))
            updates += 1
    per = [len(c) / cycles for c in by_branch.values()]
    commit_count = sum(len(c) for c in by_branch.values())
    return {
        "mean": sum(per) / len(per) if per else 0.0,
        "max": max(per) if per else 0.0,
        "updates_per_commit": updates / commit_count if commit_count else 0.0,
    }


def request_figures(
    out: RunOutcome, load: Workload, comp: Compression, until: float | None = None
) -> dict[str, Any]:
    """Requests per cycle in steady state (after the first interval) and window peaks."""
    ours = requests_of(out.log, OURS)
    interval = comp.interval
    begin = out.started + interval
    end = until if until is not None else out.ended
    steady = [e for e in ours if begin <= e.monotonic < end]
    cycles = (end - begin) / interval
    kinds: dict[str, int] = defaultdict(int)
    for e in steady:
        kinds[e.kind] += 1
    per_cycle = len(steady) / cycles
    minimum = len(load.images)
    peak = infra_max_in_window([e.monotonic for e in ours], comp.window)
    cold = [e for e in ours if e.monotonic < begin]
    return {
        "distinct_images": minimum,
        "image_blocks": load.block_count,
        "requests_per_cycle": per_cycle,
        "requests_per_cycle_by_kind": {k: v / cycles for k, v in sorted(kinds.items())},
        "first_cycle_requests": len(cold),
        "minimum_per_cycle": minimum,
        "ratio_to_minimum": per_cycle / minimum,
        "peak_in_window": peak,
        "peak_share_of_quota": peak / comp.quota,
        "peak_share_of_budget": peak / out.cap,
        "throttled_429": sum(1 for e in ours if e.status == 429),
        "measured_cycles": cycles,
    }


def infra_max_in_window(times: list[float], window: float) -> int:
    from watcher_testing.emulator import max_in_window

    return max_in_window(times, window)
