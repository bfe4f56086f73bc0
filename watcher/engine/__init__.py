"""The engine: discovery, look-ups, decisions and write-back (``watcher once`` and the daemon).

``core`` wires the parts: ``checks`` (one image: look up, decide every block),
``scheduler`` (owned shards sweeping their images on the ``slots`` grid),
``writeback`` (per-branch queues, batches, fences, writes in flight) and
``supervise`` (every task named, its failures logged, counted and handled).
"""

from watcher.engine.core import CycleReport, Engine

__all__ = ["CycleReport", "Engine"]
