"""Bodies of ``watcher shards`` and ``watcher budget``: plain-text reports for an SRE.

Both take a loaded config and a discovered watch set and return the text to
print; the CLI does the loading, the discovery and the exit codes. Numbers
come from :mod:`watcher.capacity`, which asks the planner what each image
costs, so these reports and the daemon agree.
"""

from __future__ import annotations

from collections.abc import Sequence

from watcher.capacity import budget_needs, budget_of, image_loads, round_up_interval, shard_loads
from watcher.cluster.shards import movement
from watcher.config import Config, format_duration
from watcher.gitops.discovery import WatchSet

COST_NOTE = (
    "requests/cycle: what the planner sends with nothing cached (Google listings as one page);\n"
    "token requests, extra listing pages and v2 `newest` follow-ups come on top."
)
_BUDGET_HEADERS = (
    "budget",
    "images",
    "requests/cycle",
    "per window",
    "window",
    "cap",
    "use",
    "shortest safe interval",
)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: set[int]) -> str:
    """Columns padded to their widest cell; ``right``: indexes of numeric columns."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _percent(share: float) -> str:
    return f"{share * 100:.1f}%"


def _seconds(seconds: float) -> str:
    return format_duration(seconds) if seconds > 0 else "-"


def shards_report(config: Config, watch: WatchSet, count: int | None = None) -> str:
    """Load per shard, the image -> shard assignment, and (``count``) what would move.

    Raises ValueError for a ``count`` below 1 (the CLI exits 2).
    """
    if count is not None and count < 1:
        raise ValueError(f"--count must be at least 1, not {count}")
    shards = config.shards
    images = image_loads(config, watch)
    loads = shard_loads(images, shards)
    total_requests = sum(item.requests for item in images)
    out = [
        f"{shards} shards, {len(images)} images, {watch.block_count} image blocks; "
        f"interval {format_duration(config.interval)}; "
        f"{total_requests} registry requests per cycle",
        "",
        "load per shard:",
        table(
            ["shard", "images", "blocks", "requests/cycle"],
            [(s.shard, s.images, s.blocks, s.requests) for s in loads]
            + [("total", len(images), watch.block_count, total_requests)],
            right={0, 1, 2, 3},
        ),
    ]
    if images:
        busiest = max(loads, key=lambda s: (s.requests, -s.shard))
        mean = total_requests / shards
        spread = f"{busiest.requests / mean:.2f}x the mean" if mean else "no requests"
        out.append(f"busiest shard: {busiest.shard} ({busiest.requests} requests/cycle, {spread})")
    out += ["", COST_NOTE, "", "assignment:"]
    if images:
        out.append(
            table(
                ["image", "shard", "blocks", "requests/cycle", "budget"],
                [(i.image, i.shard, i.blocks, i.requests, i.budget) for i in images],
                right={1, 2, 3},
            )
        )
    else:
        out.append("(no images found on the environment branches)")
    if count is not None:
        out += ["", _movement_section(watch, shards, count)]
    return "\n".join(out) + "\n"


def _movement_section(watch: WatchSet, shards: int, count: int) -> str:
    if count == shards:
        return f"at {count} shards: nothing moves (that is the configured count)"
    moved = movement(watch.images, shards, count)
    head = (
        f"at {count} shards: {len(moved.moves)} of {moved.images} images move "
        f"({_percent(moved.share)}; the least any scheme can move is "
        f"{_percent(moved.minimum_share)})"
    )
    if not moved.moves:
        return head
    rows = [(m.image, m.old, m.new) for m in moved.moves]
    return head + "\n" + table(["image", "from", "to"], rows, right={1, 2})


def budget_report(config: Config, watch: WatchSet) -> str:
    """Per budget: requests per cycle and per window against the cap; the shortest safe interval."""
    rows, over = _budget_rows(config, watch)
    out = [
        f"interval {format_duration(config.interval)}; {len(watch.images)} images, "
        f"{watch.block_count} image blocks",
        "",
        table(_BUDGET_HEADERS, rows, right={1, 2, 3, 5, 6}),
        "",
        "cap: requests x (1 - headroom), across every replica. per window: requests/cycle x "
        "window / interval.",
        "shortest safe interval: requests/cycle x window / cap, rounded up to whole seconds.",
        COST_NOTE,
    ]
    covered = [need for need in budget_needs(config, watch) if need.covered]
    if covered:
        out += [
            "",
            f"registry events cover {sum(n.covered for n in covered)} images, polled every "
            f"{format_duration(config.events.backstop)} (events.backstop) and counted at that "
            "rate; each push then costs one look-up on top.",
        ]
    hosts: dict[str, set[str]] = {}
    for image in watch.images:
        hosts.setdefault(budget_of(config, image), set()).add(image.host)
    if hosts:
        out += ["", "registries by budget:"]
        out += [f"  {name}: {', '.join(sorted(hosts[name]))}" for name in sorted(hosts)]
    if over:
        out += ["", *over]
    return "\n".join(out) + "\n"


def _budget_rows(config: Config, watch: WatchSet) -> tuple[list[tuple[object, ...]], list[str]]:
    """One table row per budget, and a warning for each budget over its cap."""
    rows: list[tuple[object, ...]] = []
    over = []
    for need in budget_needs(config, watch):
        limit = need.limit
        shortest = _seconds(round_up_interval(need.shortest_interval))
        window = format_duration(limit.per)
        rows.append(
            (
                need.name,
                need.images,
                need.per_cycle,
                f"{need.per_window:.0f}",
                window,
                limit.cap,
                _percent(need.use),
                shortest,
            )
        )
        if need.use > 1:
            over.append(
                f"budget {need.name} is over its cap: at {format_duration(config.interval)} the "
                f"watch set needs {need.per_window:.0f} requests per {window} "
                f"against {limit.cap}.\n  Every image is still checked, but the interval "
                f"stretches to about {shortest}; set interval: {shortest} or more."
            )
    return rows, over
