"""What the watch set costs: requests per image, load per shard, budget needs.

Pure: no I/O. Feeds ``watcher shards`` and ``watcher budget``: the requests
each image costs per cycle come from the planner (as the look-up does, with an
empty cache: the worst steady case), so the reports and the daemon cannot
disagree about what an image costs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from watcher import planner
from watcher.cluster.shards import shard_of
from watcher.config import DEFAULT_LIMIT, Config, Limit
from watcher.events import coverage
from watcher.gitops.discovery import FoundBlock, WatchSet
from watcher.references import ImageName

# --- cost of an image ----------------------------------------------------------


def image_requests(config: Config, image: ImageName, blocks: Sequence[FoundBlock]) -> int:
    """Requests one image costs per cycle: the planner's first step with nothing cached.

    A Google listing is counted as one page. Left out, because they cannot be
    known without asking the registry: extra listing pages, token requests,
    and the follow-up of ``newest`` on a plain v2 registry (HEADs of new
    candidates, config blobs read once per digest ever).
    """
    registry = config.registry_for(image.host)
    needs = [planner.need(block.raw, block.policy) for block in blocks]
    return planner.count(planner.plan(registry.api, needs, {}), pages=1)


def budget_of(config: Config, image: ImageName) -> str:
    """The name (key under ``limits:``) of the budget an image's requests draw from.

    Mirrors :meth:`Config.limit_for`, but returns the key: a hand-built
    ``Limit`` need not repeat its own name.
    """
    wanted = config.registry_for(image.host).limit
    return wanted if wanted in config.limits else DEFAULT_LIMIT


def _limit(config: Config, name: str) -> Limit:
    return config.limits.get(name) or Limit(name=name)


# --- the `watcher shards` report -------------------------------------------------


@dataclass(frozen=True)
class ImageLoad:
    image: ImageName
    shard: int
    blocks: int
    requests: int  # per cycle
    budget: str


@dataclass(frozen=True)
class ShardLoad:
    shard: int
    images: int
    blocks: int
    requests: int  # per cycle


def image_loads(config: Config, watch: WatchSet, shards: int | None = None) -> list[ImageLoad]:
    """Every image of the watch set with its shard and cost, in image-name order."""
    count = config.shards if shards is None else shards
    out = []
    for image in sorted(watch.images):
        blocks = watch.images[image]
        out.append(
            ImageLoad(
                image=image,
                shard=shard_of(image, count),
                blocks=len(blocks),
                requests=image_requests(config, image, blocks),
                budget=budget_of(config, image),
            )
        )
    return out


def shard_loads(images: Iterable[ImageLoad], shards: int) -> list[ShardLoad]:
    """Load per shard, every shard listed (an empty shard is worth seeing too)."""
    counts = [[0, 0, 0] for _ in range(shards)]
    for item in images:
        row = counts[item.shard]
        row[0] += 1
        row[1] += item.blocks
        row[2] += item.requests
    return [ShardLoad(shard, *row) for shard, row in enumerate(counts)]


# --- the `watcher budget` report -------------------------------------------------


def per_cycle(config: Config, watch: WatchSet) -> dict[str, int]:
    """Requests per cycle drawn from each budget; every configured budget is listed."""
    out = {name: 0 for name in sorted(config.limits)}
    for image, blocks in watch.images.items():
        name = budget_of(config, image)
        out[name] = out.get(name, 0) + image_requests(config, image, blocks)
    return out


def per_window(requests_per_cycle: int, limit: Limit, interval: float) -> float:
    """Requests a window of ``limit.per`` seconds sees at one cycle every ``interval``."""
    return requests_per_cycle * limit.per / interval


def shortest_safe_interval(requests_per_cycle: int, limit: Limit) -> float:
    """The shortest interval at which a cycle's requests stay within the cap (0: any)."""
    return requests_per_cycle * limit.per / limit.cap


def needs(config: Config, watch: WatchSet) -> dict[str, float]:
    """Budget name -> requests per window the watch set needs at the configured interval."""
    return {row.name: row.per_window for row in budget_needs(config, watch)}


@dataclass(frozen=True)
class BudgetNeed:
    name: str
    limit: Limit
    images: int
    per_cycle: int
    per_window: float
    shortest_interval: float
    covered: int = 0
    """Images registry events cover, checked at ``events.backstop`` rather than the
    interval (``per_cycle`` counts them, ``per_window`` at the backstop's rate)."""
    covered_per_cycle: int = 0

    @property
    def use(self) -> float:
        """Share of the cap (headroom already taken off) used at the configured interval."""
        return self.per_window / self.limit.cap


def budget_needs(config: Config, watch: WatchSet) -> list[BudgetNeed]:
    """One row per configured budget, in name order.

    Images registry events cover (:func:`watcher.events.coverage.covered`) are polled at
    the backstop, so they count at its rate; their event checks (one look-up per push
    at most) are not known in advance and come on top.
    """
    images: dict[str, int] = {}
    covered: dict[str, int] = {}
    covered_requests: dict[str, int] = {}
    for image, blocks in watch.images.items():
        name = budget_of(config, image)
        images[name] = images.get(name, 0) + 1
        if coverage.covered(config, image):
            covered[name] = covered.get(name, 0) + 1
            requests = image_requests(config, image, blocks)
            covered_requests[name] = covered_requests.get(name, 0) + requests
    out = []
    backstop = max(config.events.backstop, config.interval)
    for name, requests in per_cycle(config, watch).items():
        limit = _limit(config, name)
        at_backstop = covered_requests.get(name, 0)
        polled = requests - at_backstop
        window = per_window(polled, limit, config.interval)
        window += per_window(at_backstop, limit, backstop)
        # The interval at which the polled images and the backstop's share fill the cap.
        room = limit.cap - per_window(at_backstop, limit, backstop)
        # A backstop alone over the cap: as if every image were polled at the interval.
        shortest = polled * limit.per / room if room > 0 else requests * limit.per / limit.cap
        out.append(
            BudgetNeed(
                name=name,
                limit=limit,
                images=images.get(name, 0),
                per_cycle=requests,
                per_window=window,
                shortest_interval=shortest,
                covered=covered.get(name, 0),
                covered_per_cycle=at_backstop,
            )
        )
    return out


def round_up_interval(seconds: float) -> float:
    """A safe interval someone can write in ``shards.yaml``: whole seconds, rounded up."""
    # A tiny epsilon keeps 7.000000001 (float noise) from becoming 8.
    return float(max(1, math.ceil(seconds - 1e-9))) if seconds > 0 else 0.0
