"""``python -m benchmarks.rusage OUT.json -- COMMAND...``: run a command, record its cost.

Wall time and CPU seconds of the command and every descendant it waited for
(git's children included), from the kernel's accounting of this wrapper's
only child.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    out, command = sys.argv[1], sys.argv[3:]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, check=False)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    Path(out).write_text(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "user_s": usage.ru_utime,
                "system_s": usage.ru_stime,
                "peak_rss_kb": usage.ru_maxrss,
                "exit_code": proc.returncode,
                "stdout_tail": proc.stdout.decode("utf-8", "replace")[-2000:],
                "stderr_tail": proc.stderr.decode("utf-8", "replace")[-2000:],
            }
        )
    )
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
