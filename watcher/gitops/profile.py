"""Where the git path spends its time: wall and CPU seconds per stage, since the last reset.

Always on (two clock reads per stage), read by the benchmarks to report where a
cycle goes. CPU is the calling thread's own (``time.thread_time``); what git's
processes spend shows in the wall time of the stages that wait for them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class _Stage:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    count: int = 0
    items: int = 0


@dataclass
class Stages:
    _stages: dict[str, _Stage] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @contextlib.contextmanager
    def time(self, name: str, items: int = 0) -> Iterator[None]:
        """Time a stage; ``items``: how many things it handled (files, objects)."""
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            with self._lock:
                stage = self._stages.setdefault(name, _Stage())
                stage.wall_s += wall
                stage.cpu_s += cpu
                stage.count += 1
                stage.items += items

    def reset(self) -> None:
        with self._lock:
            self._stages.clear()

    def snapshot(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {name: dict(vars(stage)) for name, stage in self._stages.items()}


STAGES = Stages()
