"""Real parts for the benchmarks: redis-server, a bare git remote, daemons, their logs."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Dev Person",
    "GIT_AUTHOR_EMAIL": "dev@example.com",
    "GIT_COMMITTER_NAME": "Dev Person",
    "GIT_COMMITTER_EMAIL": "dev@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}
# The registry's token exchange takes Basic oauth2accesstoken:<OAuth access token>,
# exactly what `auth: google` sends; `auth: basic` with these spares the benchmark
# a metadata server. The emulator's default accepted access token.
REGISTRY_USER = "oauth2accesstoken"
REGISTRY_PASSWORD = "emulator-access-token"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def git(cwd: Path, *args: str, input: bytes | None = None) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        check=True,
        capture_output=True,
        input=input,
    )
    return result.stdout.decode().strip()


def make_remote(root: Path, branches: Mapping[str, Mapping[str, str]]) -> Path:
    """A bare remote, one commit per branch holding exactly the given files; one push."""
    bare = root / "gitops.git"
    seed = root / "seed"
    git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    git(root, "init", "-q", "-b", "main", str(seed))
    # No automatic gc: a big seed starts one in the background, which races the
    # removal of the seed below.
    git(seed, "config", "gc.auto", "0")
    (seed / "README").write_text("environments\n")
    git(seed, "add", "README")
    git(seed, "commit", "-q", "-m", "init")
    for branch, files in branches.items():
        git(seed, "checkout", "-q", "-B", branch, "main")
        for file, content in files.items():
            target = seed / file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        git(seed, "add", "-A")
        git(seed, "commit", "-q", "-m", f"seed {branch}")
    git(seed, "push", "-q", str(bare), "--all")
    shutil.rmtree(seed)
    return bare


def commits(bare: Path, branch: str, since_rev: str | None = None) -> list[str]:
    spec = f"{since_rev}..{branch}" if since_rev else branch
    return git(bare, "rev-list", spec).split()


@dataclass
class Daemon:
    """One ``python -m watcher run`` process with its own clone and JSON log."""

    name: str
    workdir: Path
    proc: subprocess.Popen[bytes]
    started_wall: float

    @property
    def log_path(self) -> Path:
        return self.workdir / "log.jsonl"

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                out.append(event)
        return out

    def cpu_seconds(self) -> float | None:
        """User+system CPU of the process so far (from /proc; None once reaped)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def rss_peak_kb(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def spawn_daemon(
    name: str, workdir: Path, config: Path, env: Mapping[str, str] | None = None
) -> Daemon:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **(env or {}),
        "XDG_CACHE_HOME": str(workdir / "cache"),
        "BENCH_REGISTRY_USER": REGISTRY_USER,
        "BENCH_REGISTRY_PASSWORD": REGISTRY_PASSWORD,
        "PYTHONHASHSEED": "0",
    }
    with open(workdir / "log.jsonl", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    return Daemon(name, workdir, proc, time.time())


def stop_daemon(daemon: Daemon, timeout: float = 12.0) -> int | None:
    if daemon.proc.poll() is not None:
        return daemon.proc.returncode
    daemon.proc.send_signal(signal.SIGTERM)
    try:
        return daemon.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        daemon.proc.kill()
        daemon.proc.wait()
        return None


def wall(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank on the sorted values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return math.nan
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def in_window_series(times: Sequence[float], window: float, step: float) -> list[tuple[float, int]]:
    """(t, requests in (t - window, t]) sampled every ``step`` over the run."""
    ordered = sorted(times)
    if not ordered:
        return []
    out = []
    start, end = ordered[0], ordered[-1]
    lo = hi = 0
    t = start
    while t <= end + step:
        while hi < len(ordered) and ordered[hi] <= t:
            hi += 1
        while lo < hi and ordered[lo] <= t - window:
            lo += 1
        out.append((t - start, hi - lo))
        t += step
    return out
