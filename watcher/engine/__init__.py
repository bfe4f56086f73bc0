"""The engine: discovery, look-ups, decisions and write-back (``watcher once`` and the daemon)."""

from watcher.engine.core import CycleReport, Engine

__all__ = ["CycleReport", "Engine"]
