"""Prometheus metrics (prefix ``image_watcher_``), one registry per process.

Labels are bounded sets only (registry hosts, budget names, request kinds,
status codes, shard numbers): never tags, digests or file paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

P = "image_watcher_"


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.registry_requests = Counter(
            P + "registry_requests_total",
            "Requests sent to registries (token requests included).",
            ["registry", "budget", "kind", "code"],
            registry=r,
        )
        self.budget_granted = Counter(
            P + "budget_granted_total", "Requests granted by the budget.", ["budget"], registry=r
        )
        self.budget_cap = Gauge(
            P + "budget_cap",
            "Requests allowed in any window of the budget.",
            ["budget"],
            registry=r,
        )
        self.budget_window_used = Gauge(
            P + "budget_window_used",
            "Requests granted in the current window.",
            ["budget"],
            registry=r,
        )
        self.budget_wait = Histogram(
            P + "budget_wait_seconds",
            "Time a request waited for the budget.",
            ["budget"],
            buckets=(0, 0.01, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.budget_degraded = Gauge(
            P + "budget_degraded",
            "1 while the shared budget's Redis is unreachable and a local share is used.",
            ["budget"],
            registry=r,
        )
        self.budget_paused = Counter(
            P + "budget_paused_seconds_total",
            "Seconds the budget was paused after a 429.",
            ["budget"],
            registry=r,
        )
        self.registry_throttled = Counter(
            P + "registry_throttled_total",
            "429 answers from a registry.",
            ["registry"],
            registry=r,
        )
        self.lookups = Counter(
            P + "lookups_total",
            "Registry look-ups by how they were answered.",
            ["result"],
            registry=r,
        )
        self.images = Gauge(P + "images", "Images watched, per shard.", ["shard"], registry=r)
        self.image_blocks = Gauge(
            P + "image_blocks", "Image blocks found on every environment branch.", registry=r
        )
        self.shard_owned = Gauge(
            P + "shard_owned", "1 when this process owns the shard.", ["shard"], registry=r
        )
        self.cycle_seconds = Histogram(
            P + "cycle_seconds",
            "Time to check every image of a shard once.",
            ["shard"],
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.last_cycle = Gauge(
            P + "last_cycle_timestamp_seconds",
            "When the shard last finished a cycle (Unix time).",
            ["shard"],
            registry=r,
        )
        self.updates = Counter(
            P + "updates_total", "Block updates committed.", ["strategy"], registry=r
        )
        self.git_push = Counter(
            P + "git_push_total", "Pushes to the git remote by result.", ["result"], registry=r
        )
        self.errors = Counter(P + "errors_total", "Errors by stage.", ["stage"], registry=r)
