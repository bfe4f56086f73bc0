"""Registry events in real time: push-to-commit in seconds, and what it costs the registry.

``events``: 2,000 images in 11 environments (22,000 values files), one daemon,
events on (Google's Pub/Sub emulator, which the Google-registry emulator
publishes every push to), interval 2 min, backstop 10 min, a 10,000 / 10 min
quota enforced by the registry; new builds of images picked at random, at
``PUSH_RATE`` per second, for ``PUSH_SECONDS``. No compression: every time is
real. ``eventsmoon``: the same with 10,000 images (in 2 environments, so that
the remote fits this machine) and the backstop at 30 min, so that the
backstop's own polling stays under half of the cap.

Push-to-commit is from the moment the harness pushed (the emulator publishes
during the push) to the ``updated`` log line of the last of the image's
branches (logged once the commit is pushed). Registry requests are the
emulator's log during the push phase (token requests included), against the
pushes plus the backstop's share: covered images x push phase / backstop.
"""

# The Markdown rows are kept one per line, as they read in the table.
# ruff: noqa: E501

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import infra, workload
from benchmarks.scenarios import Options, Result, Target, _fmt, _tmp
from watcher_testing.emulator import EmulatorSettings, GoogleRegistryEmulator, max_in_window
from watcher_testing.services import PubSubEmulator

PROJECT = "acme-bench"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/image-watcher"
QUOTA = 10_000
WINDOW = 600.0
INTERVAL = 120.0


@dataclass(frozen=True)
class Size:
    images: int
    environments: int
    backstop: float
    push_seconds: float
    push_rate: float  # pushes per second
    p99_target: float
    p50_target: float | None


SIZES = {
    "events": Size(2000, 11, 600.0, 150.0, 1.0, 5.0, 2.0),
    "eventsmoon": Size(10_000, 2, 1800.0, 150.0, 1.0, 10.0, None),
}
SMOKE = Size(30, 2, 600.0, 8.0, 2.0, 5.0, 2.0)


def _load(images: int, environments: int) -> workload.Workload:
    """One application per image, on every environment, in the events' project."""
    load = workload.Workload(history=0)
    for e in range(environments):
        load.branches[f"environment/e{e}"] = {
            f"app{i}": [workload.Block("image", f"{PROJECT}/flat/app{i}", "master")]
            for i in range(images)
        }
    return load


def _config(path: Path, host: str, bare: Path, clone: Path, size: Size) -> Path:
    return infra.write_config(
        path,
        f"interval: {INTERVAL:g}s\n"
        f"limits:\n  gcr: {{requests: {QUOTA}, per: {WINDOW:g}s, headroom: 5%}}\n"
        "registries:\n"
        f'  - {{host: "{host}", api: google, auth: basic, username_env: BENCH_REGISTRY_USER,'
        " password_env: BENCH_REGISTRY_PASSWORD, insecure: true, limit: gcr}\n"
        f'git:\n  url: file://{bare}\n  files: ["apps/*/values.yaml"]\n  workdir: {clone}\n'
        f"events:\n  subscriptions: [{SUBSCRIPTION}]\n  backstop: {size.backstop:g}s\n",
    )


async def _wait(ready: Any, within: float, what: str) -> None:
    began = time.monotonic()
    while not ready():
        if time.monotonic() - began > within:
            raise RuntimeError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.25)


def _logged(daemon: infra.Daemon, event: str) -> bool:
    return f'"event": "{event}"'.encode() in daemon.log_path.read_bytes()


async def _run(tmp: Path, size: Size) -> dict[str, Any]:
    rng = random.Random(13)
    load = _load(size.images, size.environments)
    pubsub = PubSubEmulator(tmp / "pubsub")
    pubsub.start()
    try:
        pubsub.create_topic(PROJECT)
        pubsub.create_subscription(PROJECT, "image-watcher")
        settings = EmulatorSettings(
            auth_required=True, quota_requests=QUOTA, quota_window=WINDOW, pubsub=None
        )
        async with GoogleRegistryEmulator(settings) as emu:
            began = time.monotonic()
            state = workload.seed_registry(emu, load, rng)
            bare = infra.make_remote(tmp, workload.files(emu.host, load, state))
            setup_s = time.monotonic() - began
            # From here on every push is announced on the project's gcr topic.
            emu.settings.pubsub = pubsub.host
            config = _config(tmp / "events.yaml", emu.host, bare, tmp / "clone", size)
            daemon = infra.spawn_daemon(
                "events",
                tmp / "daemon",
                config,
                env={"PUBSUB_EMULATOR_HOST": pubsub.host},
            )
            try:
                await _wait(
                    lambda: (
                        _logged(daemon, "event subscription open")
                        and _logged(daemon, "shards owned")
                    ),
                    300,
                    "the daemon to start",
                )
                # The first discovery over every file is done when the first sweep's
                # first check ran; give it the first slot of every shard.
                await _wait(lambda: emu.count(kind="tags_list") > 0, 300, "the first sweep")
                await asyncio.sleep(5)
                started_mono, started_wall = time.monotonic(), time.time()
                pushes: list[tuple[str, str, float]] = []  # image, digest, wall
                clock = started_mono
                while clock - started_mono < size.push_seconds:
                    clock += rng.expovariate(size.push_rate)
                    await asyncio.sleep(max(0.0, clock - time.monotonic()))
                    image = rng.choice(load.images)
                    _, digest = workload.push_build(emu, state, image, "digest", rng)
                    pushes.append((image, digest, time.time()))
                ended_mono = time.monotonic()
                # Every push lands (or the figure says how many did not).
                final = {f"{emu.host}/{image}": digest for image, digest, _ in pushes}

                def landed_all() -> bool:
                    lands = _landings(daemon, size.environments)
                    return all(lands.get(key) is not None for key in final.items())

                # Whatever has not landed by then is counted as not landed.
                with contextlib.suppress(RuntimeError):
                    await _wait(landed_all, 60, "every push to land")
                cpu = daemon.cpu_seconds()
                rss = daemon.rss_peak_kb()
            finally:
                code = await asyncio.to_thread(infra.stop_daemon, daemon)
            log = list(emu.log)
            published = emu.published
    finally:
        pubsub.stop()
    lands = _landings(daemon, size.environments)
    latencies = []
    detail: list[tuple[str, float, float]] = []
    superseded = 0
    for image, digest, pushed in pushes:
        landed = lands.get((f"{emu.host}/{image}", digest))
        if landed is None:
            # A later push of the same image before this one landed: only the newest is
            # written (as it should be); not a latency.
            if final[f"{emu.host}/{image}"] != digest:
                superseded += 1
                continue
            latencies.append(float("inf"))
            continue
        latencies.append(max(0.0, landed - pushed))
        detail.append((image, pushed, landed))
    during = [e for e in log if started_mono <= e.monotonic <= ended_mono]
    covered_share = size.images * (ended_mono - started_mono) / size.backstop
    whole = [e.monotonic for e in log if e.monotonic >= started_mono - 5]
    return {
        "setup_s": setup_s,
        "pushes": len(pushes),
        "published": published,
        "superseded": superseded,
        "latencies": latencies,
        "pushes_detail": detail,
        "push_phase_s": ended_mono - started_mono,
        "requests_during": len(during),
        "requests_by_kind": _by_kind(during),
        "listings_during": sum(1 for e in during if e.kind == "tags_list"),
        "backstop_share": covered_share,
        "throttled_429": sum(1 for e in log if e.status == 429),
        "peak_window": max_in_window(whole, WINDOW),
        "requests_whole_run": len(log),
        "started_wall": started_wall,
        "daemon_exit": code,
        "daemon_cpu_s": cpu,
        "daemon_peak_rss_mb": (rss or 0) / 1024,
    }


def _by_kind(entries: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for entry in entries:
        out[entry.kind] = out.get(entry.kind, 0) + 1
    return dict(sorted(out.items()))


def _landings(daemon: infra.Daemon, environments: int) -> dict[tuple[str, str], float]:
    """(image, digest) -> when its last branch's commit was pushed (the ``updated`` lines)."""
    seen: dict[tuple[str, str], list[float]] = {}
    for event in daemon.events():
        if event.get("event") == "updated":
            key = (str(event["image"]), str(event["new"]))
            seen.setdefault(key, []).append(infra.wall(str(event["time"])))
    return {key: max(times) for key, times in seen.items() if len(times) >= environments}


def _scenario(name: str, opts: Options) -> Result:
    started = time.monotonic()
    size = SMOKE if opts.smoke else SIZES[name]
    tmp = _tmp(opts, name)
    try:
        out = asyncio.run(_run(tmp, size))
    finally:
        if opts.workdir is None:
            # The run's files (a remote of up to 20,000 values files, the clone) are
            # not worth keeping: the figures are in the results.
            shutil.rmtree(tmp.parent, ignore_errors=True)
    lat = out.pop("latencies")
    pushes_detail = out.pop("pushes_detail")
    finite = [v for v in lat if v != float("inf")]
    p50 = infra.percentile(lat, 50) if lat else float("nan")
    p99 = infra.percentile(lat, 99) if lat else float("nan")
    allowed = 1.05 * out["pushes"] + out["backstop_share"]
    figures: dict[str, Any] = {
        "images": size.images,
        "environments": size.environments,
        "backstop_s": size.backstop,
        "interval_s": INTERVAL,
        **out,
        "push_to_commit_p50_s": p50,
        "push_to_commit_p99_s": p99,
        "push_to_commit_max_s": max(finite) if finite else float("nan"),
        "not_landed": len(lat) - len(finite),
        "requests_allowed": allowed,
        "requests_over_allowed": out["requests_during"] / allowed if allowed else float("nan"),
        # Look-ups alone (one listing each on Google's registries), tokens left out.
        "listings_over_allowed": out["listings_during"] / allowed if allowed else float("nan"),
        "run_share_of_cap": out["peak_window"] / QUOTA,
    }
    rows = [
        (
            "watch set",
            f"{size.images:,} images x {size.environments} environments ({size.images * size.environments:,} values files), interval {INTERVAL:g} s, backstop {size.backstop:g} s",
        ),
        (
            "pushes (at random, Poisson)",
            f"{out['pushes']} in {_fmt(out['push_phase_s'], 0)} s ({out['superseded']} superseded by a newer push of the same image before landing)",
        ),
        (
            "push-to-commit p50 / p99 / max",
            f"{_fmt(p50)} s / {_fmt(p99)} s / {_fmt(figures['push_to_commit_max_s'])} s",
        ),
        ("pushes not landed", str(figures["not_landed"])),
        (
            "registry requests during the pushes",
            f"{out['requests_during']:,} ({', '.join(f'{k} {v}' for k, v in out['requests_by_kind'].items())})",
        ),
        (
            "allowed: 1.05 x pushes + backstop share",
            f"{_fmt(allowed, 0)} (backstop share {_fmt(out['backstop_share'], 0)})",
        ),
        ("requests / allowed", _fmt(figures["requests_over_allowed"], 3)),
        ("listings (look-ups) / allowed", _fmt(figures["listings_over_allowed"], 3)),
        (
            "peak requests in any 10-min window of the run / 10,000",
            _fmt(figures["run_share_of_cap"], 3),
        ),
        ("429s", str(out["throttled_429"])),
        (
            "daemon CPU, peak RSS",
            f"{_fmt(out['daemon_cpu_s'] or float('nan'))} s, {_fmt(out['daemon_peak_rss_mb'], 0)} MB",
        ),
    ]
    label = "events" if name == "events" else "moonshot"
    targets = [Target(f"{label}: p99 push-to-commit", p99, size.p99_target, "<=", " s")]
    if size.p50_target is not None:
        targets.append(Target(f"{label}: p50 push-to-commit", p50, size.p50_target, "<=", " s"))
    if name == "events":
        targets.append(
            Target(
                "events: requests / (1.05 x pushes + backstop share)",
                figures["requests_over_allowed"],
                1.0,
                "<=",
            )
        )
    else:
        targets.append(
            Target(
                "moonshot: peak window of the run / the 10,000 cap",
                figures["run_share_of_cap"],
                0.5,
                "<=",
            )
        )
    targets.append(Target(f"{label}: 429s", float(out["throttled_429"]), 0.0, "<="))
    notes = [
        "Real time, no compression. One daemon, no Redis; Google's Pub/Sub emulator (Java) and "
        "the Google-registry emulator (token auth, quota enforced) run on the same 2 cores.",
        "Push-to-commit: from the harness's push (the emulator publishes the gcr message as "
        "part of it) to the `updated` log line of the image's last branch, written once that "
        "commit is pushed.",
    ]
    return Result(
        name,
        "Registry events: push-to-commit in real time"
        + (" (moonshot: 10,000 images)" if name == "eventsmoon" else ""),
        {"factor": 1, "note": "real time"},
        figures,
        rows,
        targets,
        [{"pushes": [{"image": i, "pushed": p, "landed": t} for i, p, t in pushes_detail]}],
        {},
        notes,
        time.monotonic() - started,
    )


def events(opts: Options) -> Result:
    return _scenario("events", opts)


def eventsmoon(opts: Options) -> Result:
    return _scenario("eventsmoon", opts)


SCENARIOS = {"events": events, "eventsmoon": eventsmoon}
