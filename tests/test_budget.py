from __future__ import annotations

import asyncio
import time

import pytest

from watcher.budget.local import LocalBudget
from watcher.config import Limit
from watcher.tuning import SEND_MARGIN

pytestmark = pytest.mark.unit


def max_in_window(times: list[float], window: float) -> int:
    best, start = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_local_budget_never_exceeds_cap_in_any_window() -> None:
    limit = Limit(requests=20, per=0.5, headroom=0.1)  # cap 18
    budget = LocalBudget(limit)
    sent: list[float] = []

    async def worker() -> None:
        for _ in range(15):
            await budget.acquire()
            sent.append(time.monotonic())

    await asyncio.gather(*(worker() for _ in range(4)))  # 60 requests, > 3 windows of demand
    sent.sort()
    assert len(sent) == 60
    assert max_in_window(sent, limit.per) <= limit.cap
    # It waits only as long as needed: 60 grants at 18 per 0.55 s take about 3 windows.
    assert sent[-1] - sent[0] < 4 * (limit.per + SEND_MARGIN)


async def test_pause_holds_every_caller() -> None:
    budget = LocalBudget(Limit(requests=100, per=1, headroom=0))
    await budget.acquire()
    await budget.pause(0.3)
    started = time.monotonic()
    waited = await budget.acquire()
    assert time.monotonic() - started >= 0.29
    assert waited >= 0.29
    assert budget.paused_seconds >= 0.29


async def test_grants_in_arrival_order() -> None:
    budget = LocalBudget(Limit(requests=2, per=0.3, headroom=0))
    order: list[int] = []

    async def take(i: int) -> None:
        await budget.acquire()
        order.append(i)

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(take(i)))
        await asyncio.sleep(0)  # each caller queues before the next exists: arrival order
    await asyncio.gather(*tasks)
    assert order == list(range(6))
