"""The git path's scenarios: how processes share a clone, and where a cycle spends its time.

``sharing``: one clone shared under the clone lock against a clone per process,
on the scale remote (20 branches x 500 values files).
"""

# The Markdown rows are kept one per line, as they read in the table.
# ruff: noqa: E501

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import infra, workload
from benchmarks.scenarios import Options, Result, _fmt, _tmp
from watcher.config import Author
from watcher.gitops.mirror import GitMirror

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


SCENARIOS = {"sharing": sharing}
