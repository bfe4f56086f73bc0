"""When each check of a sweep starts: the slot arithmetic of the schedule, as pure functions.

A shard checks its images once per interval, spread evenly over it rather
than in a burst at its start: with ``n`` images each gets a slot of
``span / n``, and the shard's phase (``shard / shards`` of a slot) keeps S
shards from all asking at the same instant. Sweeps start on a fixed grid
(``origin + tick * interval``); a sweep that overran starts the next one at
once on a new grid instead of catching up. Times are the event loop's clock
(seconds); nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from watcher.tuning import TAKEOVER_SPAN


def phase(shard: int, shards: int) -> float:
    """Where in its slot a shard's checks start, as a share of the slot (0 <= phase < 1)."""
    return shard / shards


def sweep_span(interval: float, *, takeover: bool) -> float:
    """How long a sweep spreads its checks over.

    A shard taken over from a replica that died has images already overdue by
    up to a lease ttl: its first sweep runs over a quarter of the interval, so
    they are checked again within two intervals. Every other sweep spans the
    whole interval.
    """
    return interval * (TAKEOVER_SPAN if takeover else 1.0)


def slot_starts(started: float, count: int, span: float, phase: float) -> list[float]:
    """When each of ``count`` checks starts in a sweep that started at ``started``.

    Check ``i`` starts at ``started + (i + phase) * span / count``: evenly
    spaced, each at the same point of its own slot, all within the span.
    """
    slot = span / max(1, count)
    return [started + (index + phase) * slot for index in range(count)]


@dataclass(frozen=True)
class Grid:
    """The ticks sweeps start on: ``origin + tick * interval``."""

    origin: float
    interval: float
    tick: int = 0

    @property
    def start(self) -> float:
        """When the sweep of this tick starts."""
        return self.origin + self.tick * self.interval

    def after(self, now: float) -> Grid:
        """The tick of the next sweep, for a sweep of this tick that ended at ``now``.

        On time: the next tick of the same grid. Overran (``now`` past the next
        tick: the budget held the checks back, demand above the cap): at once,
        on a new grid from ``now``. Waiting for the following tick would leave
        the budget idle and then check images twice in quick succession;
        starting at once stretches the interval evenly instead.
        """
        if now > self.origin + (self.tick + 1) * self.interval:
            return Grid(now, self.interval)
        return Grid(self.origin, self.interval, self.tick + 1)


def next_tick(origin: float, tick: int, interval: float, now: float) -> int:
    """The tick of a loop that skips the ticks it missed (discovery): the next one not past."""
    return max(tick + 1, math.ceil((now - origin) / interval))
