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

# Registry events handed to the owner of an image's shard (watcher.events.routing):
# one list per shard, one reply list per replica. One hash tag, so the script that
# reads a replica's shards and replies at once also runs on Redis Cluster.
EVENTS = f"{ROOT}:{{events}}"


def event_hints(shard: int) -> str:
    """Hints waiting for whichever replica owns ``shard``."""
    return f"{EVENTS}:shard:{shard}"


def event_replies(replica: str) -> str:
    """Answers for the hints ``replica`` handed on: the message may be acked."""
    return f"{EVENTS}:replies:{replica}"
