"""The scale scenario's measured process: ``Engine`` cycles in-process, the real code path.

``python -m benchmarks.scale_worker CONFIG OUT.json WARM`` runs: a cold cycle
(clone, parse every file, first look-ups), ``WARM`` warm cycles (nothing moved),
then prints ``pushed?`` and waits for a line on stdin (the harness pushes new
builds meanwhile), then one cycle whose write phase puts one batch on every
branch. Discovery, look-ups and write-back are timed apart (wall and CPU of this
process, plus the CPU of its git children). Peak RSS is this process's
``ru_maxrss``.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from watcher import config as watcher_config
from watcher import logs
from watcher.engine import CycleReport, Engine


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


class Meter:
    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.own, self.kids = _cpu()

    def read(self) -> dict[str, float]:
        own, kids = _cpu()
        return {
            "wall_s": time.perf_counter() - self.wall,
            "cpu_s": own - self.own,
            "git_cpu_s": kids - self.kids,
        }


async def phases(watcher: Engine) -> dict[str, Any]:
    """One cycle as ``Engine.cycle()`` runs it, with each phase measured."""
    total = Meter()
    meter = Meter()
    watch = await watcher.discover()
    discover = meter.read()
    report = CycleReport(watch)
    meter = Meter()
    await watcher.resolve(watch, report)
    resolve = meter.read()
    report.updates.sort(key=lambda u: u.block)
    meter = Meter()
    outcomes = await watcher.write(report.updates)
    write = meter.read()
    return {
        "total": total.read(),
        "discover": discover,
        "resolve": resolve,
        "write": write,
        "images": len(watch.images),
        "blocks": watch.block_count,
        "branches": len(watch.branches),
        "updates": len(report.updates),
        "failed_images": len(report.failed_images),
        "commits": sum(1 for o in outcomes.values() if o.result == "committed"),
    }


async def main_async(config_path: str, out: str, warm: int) -> None:
    cfg = watcher_config.load(config_path)
    result: dict[str, Any] = {}
    async with Engine(cfg) as watcher:
        result["cold"] = await phases(watcher)
        result["warm"] = [await phases(watcher) for _ in range(warm)]
        print("pushed?", flush=True)
        sys.stdin.readline()
        result["batch"] = await phases(watcher)
    result["peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(out).write_text(json.dumps(result))  # noqa: ASYNC240 - once, at the end


def main() -> int:
    logs.configure("warning", sys.stderr)
    asyncio.run(main_async(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
