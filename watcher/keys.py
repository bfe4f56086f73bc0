"""Every Redis key the watcher uses, in one place.

Keys that one Lua script touches together share a hash tag (``{shards}``,
``{budget:<name>}``), so the scripts also run on Redis Cluster and
Memorystore's cluster mode, where every key of a script must live in one
slot. Single-key commands (the shared look-up cache) need no tag.
"""

from __future__ import annotations

ROOT = "iw"

# Shard leases (watcher.cluster.membership): replicas, epoch, lease:<n>, fence:<n>.
SHARDS = f"{ROOT}:{{shards}}"


def budget(name: str, root: str = ROOT) -> tuple[str, str, str, str]:
    """The shared budget's keys (watcher.budget.shared): log, pause, epoch, recover."""
    base = f"{root}:{{budget:{name}}}"
    return (f"{base}:log", f"{base}:pause", f"{base}:epoch", f"{base}:recover")


# The replicas' shared look-up cache (watcher.registry.cache).
CACHE = f"{ROOT}:cache:"
CACHE_TIMES = CACHE + "times"
