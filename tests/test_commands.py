"""`watcher shards` and `watcher budget` reports, from a watch set built by hand (no git)."""

from __future__ import annotations

from typing import Any

import pytest

from watcher import capacity
from watcher.blocks import BlockId, RawBlock
from watcher.cluster.shards import movement, shard_of
from watcher.config import Config, load_text
from watcher.gitops.discovery import FoundBlock, WatchSet
from watcher.references import canonical_name
from watcher.reports import budget_report, shards_report
from watcher.strategies import parse_policy

pytestmark = pytest.mark.unit

CONFIG = load_text(
    """
shards: 4
interval: 2m
limits:
  gcr: {requests: 10000, per: 10m, headroom: 5%}
  hub: {requests: 100, per: 6h, headroom: 0%}
registries:
  - {host: "*.gcr.io", api: google, auth: anonymous, limit: gcr}
  - {host: docker.io, api: v2, auth: anonymous, limit: hub}
git: {url: "file:///nowhere"}
""",
    "shards.yaml",
)

ESTIMA = "eu.gcr.io/ma-dev2/dev-images/estima"


def block(
    repo: str, tag: str | None = "master", watch: Any = None, branch: str = "environment/b2c1"
) -> FoundBlock:
    raw = RawBlock(0, ("image",), 1, repo, tag, None, None, watch)
    return FoundBlock(
        BlockId(branch, "apps/x/values.yaml", ("image",)),
        raw,
        canonical_name(repo),
        parse_policy(watch, CONFIG.defaults),
    )


def watch_set(*blocks: FoundBlock) -> WatchSet:
    ws = WatchSet()
    for b in blocks:
        ws.images.setdefault(b.image, []).append(b)
    ws.images = dict(sorted(ws.images.items()))
    return ws


WATCH = watch_set(
    # eleven environments follow one GCR image: one listing per cycle, not eleven
    *(block(ESTIMA, branch=f"environment/e{i}") for i in range(11)),
    block(ESTIMA, None, {"strategy": "newest", "tags": "fixes_.*"}),
    block("nginx"),
    block("nginx", "1.25", branch="environment/b2b1"),
    block("ghcr.io/acme/api", None, {"strategy": "semver", "semver": "~1.4"}),
    block("ghcr.io/acme/off", watch={"strategy": "off"}),
    block("eu.gcr.io/ma-dev2/dev-images/billing"),
    block("quay.io/acme/db"),
    block("redis"),
)


def line_with(text: str, *words: str) -> str:
    for line in text.splitlines():
        if all(w in line for w in words):
            return line
    raise AssertionError(f"no line with {words} in:\n{text}")


def test_shards_report_load_and_assignment() -> None:
    text = shards_report(CONFIG, WATCH, None)
    print("\n" + text)
    assert text.startswith(
        "4 shards, 7 images, 19 image blocks; interval 2m; 7 registry requests per cycle"
    )
    # Every shard has a row, even an empty one, and a total.
    for shard in range(4):
        assert line_with(text, "load per shard") and any(
            line.split()[:1] == [str(shard)] for line in text.splitlines()
        )
    assert line_with(text, "total").split() == ["total", "7", "19", "7"]
    # The assignment names each image's shard, blocks, cost and budget.
    estima = line_with(text, ESTIMA).split()
    assert estima == [ESTIMA, str(shard_of(ESTIMA, 4)), "12", "1", "gcr"]
    assert line_with(text, "docker.io/library/nginx").split()[1:] == [
        str(shard_of("nginx", 4)),
        "2",
        "2",
        "hub",
    ]
    assert line_with(text, "ghcr.io/acme/off").split()[2:] == ["1", "0", "default"]
    assert "would move" not in text and "at 4 shards" not in text


def test_shards_report_per_shard_sums() -> None:
    text = shards_report(CONFIG, WATCH, None)
    expected = {s: [0, 0, 0] for s in range(4)}
    costs = {ESTIMA: (12, 1), "docker.io/library/nginx": (2, 2), "ghcr.io/acme/api": (1, 1)}
    costs["ghcr.io/acme/off"] = (1, 0)
    costs["eu.gcr.io/ma-dev2/dev-images/billing"] = (1, 1)
    costs["quay.io/acme/db"] = (1, 1)
    costs["docker.io/library/redis"] = (1, 1)
    for name, (blocks, requests) in costs.items():
        row = expected[shard_of(name, 4)]
        row[0] += 1
        row[1] += blocks
        row[2] += requests
    section = text.split("load per shard:\n", 1)[1].split("\ntotal", 1)[0].splitlines()[1:]
    got = {int(line.split()[0]): [int(x) for x in line.split()[1:]] for line in section}
    assert got == expected


def test_shards_report_what_moves() -> None:
    text = shards_report(CONFIG, WATCH, 6)
    moved = movement(WATCH.images, 4, 6)
    head = line_with(text, "at 6 shards")
    assert moved.moves, "the example should move something"
    assert f"{len(moved.moves)} of 7 images move" in head
    assert "the least any scheme can move is 33.3%" in head
    for move in moved.moves:
        rows = [line.split() for line in text.split(head, 1)[1].splitlines() if line.strip()]
        assert [str(move.image), str(move.old), str(move.new)] in rows
    assert "nothing moves" in shards_report(CONFIG, WATCH, 4)
    with pytest.raises(ValueError, match="--count"):
        shards_report(CONFIG, WATCH, 0)


def test_shards_report_without_images() -> None:
    text = shards_report(CONFIG, WatchSet(), 8)
    assert "0 images" in text and "no images found" in text
    assert "at 8 shards: 0 of 0 images move" in text


def test_budget_report_figures() -> None:
    text = budget_report(CONFIG, WATCH)
    print("\n" + text)
    header = line_with(text, "budget", "requests/cycle", "per window", "cap", "use")
    assert "shortest safe interval" in header
    # gcr: one listing per image per cycle; 2 x 600 s / 120 s = 10 per 10m window against 9500.
    assert line_with(text, "gcr ").split() == ["gcr", "2", "2", "10", "10m", "9500", "0.1%", "1s"]
    # hub: three HEADs per cycle; 3 x 21600 / 120 = 540 per 6h against 100: over, 5.4x.
    hub = ["hub", "2", "3", "540", "6h", "100", "540.0%", "648s"]
    assert line_with(text, "hub ").split() == hub
    # default: ghcr semver listing (1) + quay digest HEAD (1) + an `off` image (0).
    assert line_with(text, "default ").split()[:4] == ["default", "3", "2", "10"]
    assert "budget hub is over its cap" in text
    assert "budget gcr is over" not in text
    assert "  hub: docker.io" in text and "  gcr: eu.gcr.io" in text
    assert "  default: ghcr.io, quay.io" in text


def test_budget_report_shortest_interval_is_safe() -> None:
    # 3 requests per cycle against a cap of 100 per 6h: 3 x 21600 / 100 = 648 s.
    text = budget_report(CONFIG, WATCH)
    shortest = line_with(text, "hub ").split()[-1]
    assert shortest == "648s"
    # At that interval the hub budget is exactly at its cap, and not over.
    at = Config(
        shards=CONFIG.shards,
        interval=648.0,
        limits=CONFIG.limits,
        registries=CONFIG.registries,
    )
    assert "100.0%" in line_with(budget_report(at, WATCH), "hub ")
    assert "over its cap" not in budget_report(at, WATCH)


def test_budget_report_lists_unused_budgets() -> None:
    text = budget_report(CONFIG, WatchSet())
    for name in ("default", "gcr", "hub"):
        row = line_with(text, f"{name} ").split()
        assert row[1:3] == ["0", "0"] and row[-1] == "-"


def test_budget_counts_images_covered_by_events_at_the_backstop() -> None:
    """Images registry events cover are polled at events.backstop: the report counts them
    at that rate, and the images no event covers at the interval."""
    events = load_text(
        """
shards: 4
interval: 2m
limits:
  gcr: {requests: 10000, per: 10m, headroom: 5%}
registries:
  - {host: "*.gcr.io", api: google, auth: anonymous, limit: gcr}
git: {url: "file:///nowhere"}
events: {subscriptions: [projects/ma-dev2/subscriptions/image-watcher], backstop: 10m}
""",
        "shards.yaml",
    )
    images = [f"eu.gcr.io/ma-dev2/app{i}" for i in range(100)]
    images += [f"eu.gcr.io/other-project/app{i}" for i in range(20)]
    watch = watch_set(*(block(name) for name in images))
    (need,) = [n for n in capacity.budget_needs(events, watch) if n.name == "gcr"]
    assert need.images == 120 and need.covered == 100 and need.per_cycle == 120
    # 20 polled: 20 x 600/120 = 100; 100 covered at the backstop: 100 x 600/600 = 100.
    assert need.per_window == pytest.approx(200.0)
    # The cap less the backstop's 100 leaves 9400 for 20 listings per cycle: 20 x 600/9400.
    assert need.shortest_interval == pytest.approx(20 * 600 / 9400)
    text = budget_report(events, watch)
    assert line_with(text, "gcr ").split()[:4] == ["gcr", "120", "120", "200"]
    assert "registry events cover 100 images, polled every 10m" in text
    # Without the events key, the same watch set is all polled at the interval.
    (plain,) = [n for n in capacity.budget_needs(CONFIG, watch) if n.name == "gcr"]
    assert plain.per_window == pytest.approx(600.0) and plain.covered == 0
