"""``python -m benchmarks.fetch_worker URL WORKDIR COUNT OUT.json``: one process's fetches.

The ``sharing`` scenario starts several of these on one clone at once: each
fetches ``COUNT`` times through ``GitMirror.fetch`` (the clone lock included)
and writes the seconds each fetch took, waiting for the lock included.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from watcher.config import Author
from watcher.gitops.mirror import GitMirror


def main() -> int:
    url, workdir, count, out = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    mirror = GitMirror(url, workdir, Author(), timeout=120)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        mirror.fetch()
        times.append(time.perf_counter() - started)
        time.sleep(0.02)
    Path(out).write_text(json.dumps(times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
