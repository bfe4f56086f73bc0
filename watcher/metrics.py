"""Prometheus metrics (prefix ``image_watcher_``), one registry per process.

Labels are bounded sets only (registry hosts, budget names, request kinds,
status codes, shard numbers): never tags, digests or file paths.

Declared by area, in the order of the dashboard's rows (docs/operations.md,
"Reading the dashboard"): the request budget, registries, shards and cycles,
the watch set, write-back; then errors, which every area counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

P = "image_watcher_"


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self._budget()
        self._registries()
        self._shards()
        self._watch_set()
        self._write_back()
        self._events()
        self.errors = self._counter("errors_total", "Errors by stage.", ["stage"])

    def _budget(self) -> None:
        budget = ["budget"]
        self.budget_granted = self._counter(
            "budget_granted_total", "Requests granted by the budget.", budget
        )
        self.budget_cap = self._gauge(
            "budget_cap", "Requests allowed in any window of the budget.", budget
        )
        self.budget_window_used = self._gauge(
            "budget_window_used", "Requests granted in the current window.", budget
        )
        self.budget_wait = self._histogram(
            "budget_wait_seconds",
            "Time a request waited for the budget.",
            budget,
            (0, 0.01, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600),
        )
        self.budget_degraded = self._gauge(
            "budget_degraded",
            "1 while the shared budget's Redis is unreachable and a local share is used.",
            budget,
        )
        self.budget_paused = self._counter(
            "budget_paused_seconds_total", "Seconds the budget was paused after a 429.", budget
        )

    def _registries(self) -> None:
        self.registry_requests = self._counter(
            "registry_requests_total",
            "Requests sent to registries (token requests included).",
            ["registry", "budget", "kind", "code"],
        )
        self.registry_throttled = self._counter(
            "registry_throttled_total", "429 answers from a registry.", ["registry"]
        )
        self.lookups = self._counter(
            "lookups_total", "Registry look-ups by how they were answered.", ["result"]
        )

    def _shards(self) -> None:
        shard = ["shard"]
        self.shard_owned = self._gauge("shard_owned", "1 when this process owns the shard.", shard)
        self.cycle_seconds = self._histogram(
            "cycle_seconds",
            "Time to check every image of a shard once.",
            shard,
            (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
        )
        self.last_cycle = self._gauge(
            "last_cycle_timestamp_seconds",
            "When the shard last finished a cycle (Unix time).",
            shard,
        )

    def _watch_set(self) -> None:
        self.images = self._gauge("images", "Images watched, per shard.", ["shard"])
        self.image_blocks = self._gauge(
            "image_blocks", "Image blocks found on every environment branch.", []
        )
        self.blocks = self._gauge(
            "blocks",
            "Image blocks of the shards this replica owns, by state (following, pinned, "
            "held, off, failing); summed over replicas, every block once.",
            ["state"],
        )

    def _write_back(self) -> None:
        self.updates = self._counter("updates_total", "Block updates committed.", ["strategy"])
        self.git_push = self._counter(
            "git_push_total", "Pushes to the git remote by result.", ["result"]
        )

    def _events(self) -> None:
        self.events_received = self._counter(
            "events_received_total",
            "Registry event messages delivered by a Pub/Sub subscription.",
            ["subscription"],
        )
        self.events = self._counter(
            "events_total",
            "Registry events by what came of them: acted (the owner checked the image), "
            "ignored (no block follows the image), malformed (logged once, acked).",
            ["result"],
        )
        self.event_to_commit = self._histogram(
            "event_to_commit_seconds",
            "From an event's publish time to the push of the commit it led to.",
            [],
            (0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600),
        )
        self.events_missed = self._counter(
            "events_missed_total",
            "Images covered by registry events whose change the backstop's polling found "
            "first: a push no event announced (or announced late).",
            [],
        )
        self.events_connected = self._gauge(
            "events_subscriber_connected",
            "1 while the streaming pull of the subscription is open.",
            ["subscription"],
        )

    # --- one way to declare each kind -----------------------------------------------

    def _counter(self, name: str, doc: str, labels: Sequence[str]) -> Counter:
        return Counter(P + name, doc, labels, registry=self.registry)

    def _gauge(self, name: str, doc: str, labels: Sequence[str]) -> Gauge:
        return Gauge(P + name, doc, labels, registry=self.registry)

    def _histogram(
        self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> Histogram:
        return Histogram(P + name, doc, labels, buckets=buckets, registry=self.registry)
