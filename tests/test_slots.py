"""The slot arithmetic of a sweep (watcher.engine.slots): pure, no network, no clock."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.engine.slots import Grid, next_tick, phase, slot_starts, sweep_span
from watcher.tuning import TAKEOVER_SPAN

pytestmark = pytest.mark.unit


def test_images_are_spread_evenly_over_the_interval_not_burst_at_its_start() -> None:
    assert slot_starts(100.0, 4, 60.0, 0.0) == [100.0, 115.0, 130.0, 145.0]


def test_each_shard_starts_its_slots_at_its_own_phase() -> None:
    # Shard 2 of 4 starts half a slot in: four shards of one image each never
    # ask at the same instant.
    assert phase(2, 4) == 0.5
    assert slot_starts(100.0, 4, 60.0, phase(2, 4)) == [107.5, 122.5, 137.5, 152.5]
    firsts = [slot_starts(0.0, 1, 60.0, phase(shard, 4))[0] for shard in range(4)]
    assert firsts == [0.0, 15.0, 30.0, 45.0]


def test_no_images_no_slots_and_one_image_at_its_phase() -> None:
    assert slot_starts(5.0, 0, 60.0, 0.25) == []
    assert slot_starts(5.0, 1, 60.0, 0.25) == [20.0]


@given(
    started=st.floats(0, 1e6),
    count=st.integers(0, 500),
    span=st.floats(0.01, 3600),
    shard=st.integers(0, 63),
    shards=st.integers(1, 64),
)
def test_every_check_starts_inside_the_span_in_order(
    started: float, count: int, span: float, shard: int, shards: int
) -> None:
    shard = shard % shards
    starts = slot_starts(started, count, span, phase(shard, shards))
    assert len(starts) == count
    assert starts == sorted(starts)
    for at in starts:
        assert started <= at < started + span or math.isclose(at, started + span)
    if count > 1:
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert max(gaps) - min(gaps) <= 1e-6 * max(1.0, started + span)


def test_a_taken_over_shard_sweeps_its_first_round_in_a_quarter_interval() -> None:
    assert TAKEOVER_SPAN == 0.25
    assert sweep_span(120.0, takeover=True) == 30.0
    assert sweep_span(120.0, takeover=False) == 120.0
    starts = slot_starts(0.0, 10, sweep_span(120.0, takeover=True), phase(3, 4))
    assert starts[-1] < 30.0


def test_sweeps_on_time_follow_the_grid() -> None:
    grid = Grid(origin=10.0, interval=60.0)
    assert grid.start == 10.0
    grid = grid.after(now=55.0)  # the sweep took 45 s of its 60
    assert (grid.origin, grid.tick, grid.start) == (10.0, 1, 70.0)
    grid = grid.after(now=70.0 + 59.9)
    assert (grid.origin, grid.tick, grid.start) == (10.0, 2, 130.0)


def test_a_sweep_ending_exactly_on_the_next_tick_is_on_time() -> None:
    grid = Grid(origin=0.0, interval=60.0, tick=3)
    assert grid.after(now=240.0) == Grid(0.0, 60.0, 4)


def test_an_overrun_starts_the_next_sweep_at_once_on_a_new_grid() -> None:
    # Demand above the cap held the sweep back past its next tick: start again
    # at once (no idle budget, no double check), on a grid from that moment.
    grid = Grid(origin=0.0, interval=60.0, tick=2)  # started at 120
    late = grid.after(now=180.5)
    assert late == Grid(origin=180.5, interval=60.0, tick=0)
    assert late.start == 180.5
    assert late.after(now=200.0).start == 240.5


def test_checks_of_one_image_are_one_interval_apart_sweep_after_sweep() -> None:
    interval, count, ph = 60.0, 7, phase(1, 3)
    grid = Grid(origin=1000.0, interval=interval)
    seen: list[float] = []
    for _ in range(5):
        starts = slot_starts(grid.start, count, interval, ph)
        seen.append(starts[4])
        grid = grid.after(now=starts[-1] + 1.0)  # each sweep ends just after its last slot
    assert [b - a for a, b in itertools.pairwise(seen)] == pytest.approx([interval] * 4)


def test_discovery_skips_the_ticks_it_missed() -> None:
    assert next_tick(0.0, 0, 60.0, now=5.0) == 1
    # A discovery that took 150 s: ticks 1 and 2 are past, the next is 3 (180 s).
    assert next_tick(0.0, 0, 60.0, now=150.0) == 3
    assert next_tick(0.0, 2, 60.0, now=130.0) == 3
    assert next_tick(0.0, 2, 60.0, now=180.0) == 3
