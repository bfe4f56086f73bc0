"""The tests' one way of waiting for something to happen (watcher_testing/waiting.py)."""

from __future__ import annotations

import itertools

import pytest

from watcher_testing.waiting import WaitTimeout, wait_until, wait_until_async

pytestmark = pytest.mark.unit


def test_returns_once_the_condition_holds() -> None:
    calls = itertools.count(1)
    took = wait_until(lambda: next(calls) >= 3, 5, interval=0.01)
    assert next(calls) == 4  # asked three times, no more
    assert 0.015 <= took < 5


def test_a_condition_that_never_holds_times_out_naming_what_was_awaited() -> None:
    with pytest.raises(WaitTimeout, match=r"timed out after 0.05s waiting for the thing"):
        wait_until(lambda: False, 0.05, interval=0.01, what="the thing")


def test_what_is_described_only_on_timeout() -> None:
    asked: list[int] = []

    def describe() -> str:
        asked.append(1)
        return "3 blocks missing"

    wait_until(lambda: True, 1, what=describe)
    assert asked == []
    with pytest.raises(WaitTimeout, match="waiting for 3 blocks missing"):
        wait_until(lambda: False, 0.02, interval=0.01, what=describe)
    assert asked == [1]


async def test_async_takes_plain_and_coroutine_conditions() -> None:
    calls = itertools.count(1)

    async def ready() -> bool:
        return next(calls) >= 2

    assert await wait_until_async(ready, 5, interval=0.01) < 5
    assert await wait_until_async(lambda: True, 5) < 0.05
    with pytest.raises(WaitTimeout, match="waiting for it"):
        await wait_until_async(lambda: 0, 0.02, interval=0.01)


def test_timeout_is_a_runtime_error_for_the_service_runners() -> None:
    # The redis-server and docker-registry fixtures turn a RuntimeError at start into
    # a clear test failure; a service that never answers raises this.
    assert issubclass(WaitTimeout, RuntimeError)
