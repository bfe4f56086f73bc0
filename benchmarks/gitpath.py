"""The git path's scenarios: how processes share a clone, and where a cycle spends its time.

``sharing``: one clone shared under the clone lock against a clone per process,
on the scale remote (20 branches x 500 values files).
``coldonce``: one cold ``watcher once`` over 500 images in 10 environments
(5,000 values files, a new build of every image: 5,000 updates), its CPU
counting git's children, and the same cycle in-process with the time of each
phase and stage.
"""

# The Markdown rows are kept one per line, as they read in the table.
# ruff: noqa: E501

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import infra, workload
from benchmarks.scenarios import Options, Result, Target, _fmt, _tmp
from watcher.config import Author
from watcher.gitops.mirror import GitMirror
from watcher_testing.emulator import EmulatorSettings, GoogleRegistryEmulator

PROCESSES = 3


def _remote_files(load: workload.Workload) -> dict[str, dict[str, str]]:
    state = workload.RegistryState()
    for image, tag in load.digest_targets():
        state.digests[(image, tag)] = "sha256:" + "0" * 64
    return workload.files("registry.example", load, state)


def _timed_fetch(url: str, workdir: Path) -> float:
    started = time.perf_counter()
    GitMirror(url, workdir, Author(), timeout=600).fetch()
    return time.perf_counter() - started


def _concurrent_fetches(url: str, workdir: Path, count: int, tmp: Path) -> list[float]:
    """PROCESSES processes fetching ``count`` times each on one clone, at once."""
    outs = [tmp / f"fetches-{n}.json" for n in range(PROCESSES)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.fetch_worker",
                url,
                str(workdir),
                str(count),
                str(out),
            ],
            cwd=infra.ROOT,
        )
        for out in outs
    ]
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError("fetch worker failed")
    return [t for out in outs for t in json.loads(out.read_text())]


def sharing(opts: Options) -> Result:
    started = time.monotonic()
    load = workload.scale(images=60, environments=3, apps=20) if opts.smoke else workload.scale()
    count = 5 if opts.smoke else 20
    tmp = _tmp(opts, "sharing")
    bare = infra.make_remote(tmp, _remote_files(load))
    url = f"file://{bare}"
    shared = tmp / "shared"
    cold = _timed_fetch(url, shared)
    warm = _timed_fetch(url, shared)
    # A person's commit on one branch: what a warm fetch usually brings.
    seed = tmp / "person"
    infra.git(tmp, "clone", "-q", "--branch", next(iter(load.branches)), url, str(seed))
    (seed / "note.txt").write_text("a person's change\n")
    infra.git(seed, "add", "note.txt")
    infra.git(seed, "commit", "-q", "-m", "person")
    infra.git(seed, "push", "-q", "origin", "HEAD")
    incremental = _timed_fetch(url, shared)
    contended = _concurrent_fetches(url, shared, count, tmp)
    own = [_timed_fetch(url, tmp / f"own-{n}") for n in range(PROCESSES)]
    size = sum(p.stat().st_size for p in shared.rglob("*") if p.is_file()) / 2**20
    figures: dict[str, Any] = {
        "files": sum(len(apps) for apps in load.branches.values()),
        "branches": len(load.branches),
        "clone_mb": size,
        "own_clone_first_fetch_s": infra.median(own),
        "shared_clone_cold_fetch_s": cold,
        "shared_clone_warm_fetch_s": warm,
        "shared_clone_incremental_fetch_s": incremental,
        "contended_fetch_p50_s": infra.percentile(contended, 50),
        "contended_fetch_p99_s": infra.percentile(contended, 99),
        "contended_fetch_max_s": max(contended),
        "processes": PROCESSES,
    }
    rows = [
        (
            "remote",
            f"{figures['branches']} branches, {figures['files']:,} values files, clone {size:.0f} MB",
        ),
        (
            "a clone per process: first fetch of each process",
            f"{_fmt(figures['own_clone_first_fetch_s'])} s (and {PROCESSES}x the disk)",
        ),
        ("shared clone: a new process's first fetch (warm, nothing new)", f"{_fmt(warm, 3)} s"),
        ("shared clone: fetch bringing a person's commit", f"{_fmt(incremental, 3)} s"),
        (
            f"shared clone: {PROCESSES} processes fetching at once, per fetch p50 / p99 / max (lock waits included)",
            f"{_fmt(figures['contended_fetch_p50_s'], 3)} / {_fmt(figures['contended_fetch_p99_s'], 3)} / {_fmt(figures['contended_fetch_max_s'], 3)} s",
        ),
    ]
    notes = [
        "A process on the shared clone is ready after one incremental fetch; with a clone of "
        "its own it first downloads every branch, at every start and on every replica. The "
        "lock's cost is the contended fetch's wait, far below that.",
    ]
    return Result(
        "sharing",
        "Processes on one host: one clone under the clone lock, or a clone each",
        {"factor": 1, "note": "real time"},
        figures,
        rows,
        [],
        [figures],
        {},
        notes,
        time.monotonic() - started,
    )


# --- a cold `watcher once` at scale ---------------------------------------------------


def _config(path: Path, host: str, bare: Path, clone: Path) -> Path:
    path.write_text(
        "interval: 2m\n"
        "limits:\n  gcr: {requests: 1000000, per: 10m, headroom: 5%}\n"
        "registries:\n"
        f'  - {{host: "{host}", api: google, auth: basic, username_env: BENCH_REGISTRY_USER,'
        " password_env: BENCH_REGISTRY_PASSWORD, insecure: true, limit: gcr}\n"
        f'git:\n  url: file://{bare}\n  files: ["apps/*/values.yaml"]\n  workdir: {clone}\n'
    )
    return path


async def _child(*args: str) -> None:
    env = {
        **os.environ,
        "BENCH_REGISTRY_USER": infra.REGISTRY_USER,
        "BENCH_REGISTRY_PASSWORD": infra.REGISTRY_PASSWORD,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, cwd=infra.ROOT, env=env
    )
    if await proc.wait() != 0:
        raise RuntimeError(f"{args[0]} failed")


async def _cold_run(tmp: Path, images: int, environments: int) -> dict[str, Any]:
    rng = random.Random(12)
    load = workload.flat(images, environments)
    async with GoogleRegistryEmulator(EmulatorSettings(auth_required=True)) as emu:
        state = workload.seed_registry(emu, load, rng)
        bare = infra.make_remote(tmp, workload.files(emu.host, load, state))
        copy = tmp / "profiled.git"
        shutil.copytree(bare, copy)
        for image in load.images:  # a new build of every image: every block moves
            workload.push_build(emu, state, image, "digest", rng)
        cli = _config(tmp / "cli.yaml", emu.host, bare, tmp / "clone-cli")
        await _child("benchmarks.rusage", str(tmp / "cli.json"), "--",
                     sys.executable, "-m", "watcher", "once", "--config", str(cli))  # fmt: skip
        profiled = _config(tmp / "profiled.yaml", emu.host, copy, tmp / "clone-profiled")
        await _child("benchmarks.cycle_worker", str(profiled), str(tmp / "profiled.json"))
    result: dict[str, Any] = json.loads((tmp / "profiled.json").read_text())
    result["cli"] = json.loads((tmp / "cli.json").read_text())
    result["updates_landed"] = sum(
        1
        for branch in load.branches
        for line in infra.git(bare, "log", "--format=%s", branch).splitlines()
        if line.startswith("image-watcher:")
    )
    return result


def coldonce(opts: Options) -> Result:
    started = time.monotonic()
    images, environments = (40, 3) if opts.smoke else (500, 10)
    out = asyncio.run(_cold_run(_tmp(opts, "coldonce"), images, environments))
    cli, cold = out["cli"], out["cold"]
    stages: dict[str, Any] = out.get("stages", {})
    figures: dict[str, Any] = {
        "images": images,
        "environments": environments,
        "files": images * environments,
        "updates": cold["updates"],
        "commits": cold["commits"],
        "once_exit_code": cli["exit_code"],
        "once_cpu_s_with_git": cli["cpu_s"],
        "once_wall_s": cli["wall_s"],
        "once_peak_rss_mb": cli["peak_rss_kb"] / 1024,
        "phases": {p: cold[p] for p in ("discover", "resolve", "write")},
        "stages": stages,
    }
    rows = [
        (
            "watch set",
            f"{images} images x {environments} environments = {images * environments:,} values files; a new build of every image",
        ),
        (
            "`watcher once`, cold: CPU (with git's children) / wall",
            f"{_fmt(cli['cpu_s'])} s / {_fmt(cli['wall_s'])} s (exit {cli['exit_code']})",
        ),
        ("updates, commits", f"{cold['updates']:,}, {cold['commits']}"),
    ]
    names = {"discover": "discovery", "resolve": "look-ups", "write": "write-back"}
    for phase in ("discover", "resolve", "write"):
        p = cold[phase]
        rows.append((f"phase: {names[phase]}", f"{_fmt(p['wall_s'])} s wall, {_fmt(p['cpu_s'])} s CPU + {_fmt(p['git_cpu_s'])} s in git"))  # fmt: skip
    for name, stage in stages.items():
        items = f", {stage['items']:,} items" if stage.get("items") else ""
        rows.append((f"stage: {name}", f"{_fmt(stage['wall_s'])} s wall, {_fmt(stage['cpu_s'])} s CPU, {stage['count']:,} times{items}"))  # fmt: skip
    targets = [
        Target(
            "coldonce: CPU s of one cold `watcher once` (git included)", cli["cpu_s"], 15.0, "<="
        )
    ]
    notes = [
        "CPU is the kernel's count for the `watcher once` process and every process it waited "
        "for (git, and the local remote's receive-pack); the registry emulator runs in the "
        "harness and is not counted.",
        "Phases and stages come from a second, in-process run of the same cycle on a copy of "
        "the remote (benchmarks/cycle_worker.py). Stages are the git path's own timer: wall "
        "time and the calling thread's CPU, summed over calls; write-back runs the branches' "
        "writers in parallel threads, so its stages' wall times add up to more than the phase's.",
    ]
    return Result(
        "coldonce",
        "A cold `watcher once`: 500 images in 10 environments, every block updated",
        {"factor": 1, "note": "real time"},
        figures,
        rows,
        targets,
        [out],
        {},
        notes,
        time.monotonic() - started,
    )


SCENARIOS = {"sharing": sharing, "coldonce": coldonce}
