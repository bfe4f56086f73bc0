"""``python -m benchmarks.cycle_worker CONFIG OUT.json``: one cold cycle, in-process, profiled.

What ``watcher once`` does (``Engine.cycle``: discovery, look-ups, write-back),
each phase timed apart (wall, this process's CPU, its git children's CPU), and
the write phase split further by the git path's own stage timer (reading and
editing the files, building the commits, pushing) where the code has one.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from pathlib import Path
from typing import Any

from benchmarks.scale_worker import phases
from watcher import config as watcher_config
from watcher import logs
from watcher.engine import Engine


async def main_async(config_path: str, out: str) -> None:
    cfg = watcher_config.load(config_path)
    try:
        from watcher.gitops import profile  # the stage timer, where the code has it
    except ImportError:
        profile = None
    async with Engine(cfg) as watcher:
        if profile is not None:
            profile.STAGES.reset()
        result: dict[str, Any] = {"cold": await phases(watcher)}
        if profile is not None:
            result["stages"] = profile.STAGES.snapshot()
    result["peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(out).write_text(json.dumps(result))  # noqa: ASYNC240 - once, at the end


def main() -> int:
    logs.configure("warning", sys.stderr)
    asyncio.run(main_async(sys.argv[1], sys.argv[2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
