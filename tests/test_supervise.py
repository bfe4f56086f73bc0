"""Supervision of the daemon's tasks (watcher.engine.supervise).

The helper itself, as asyncio units with tasks that raise: a failure is logged
with its traceback and counted by its type's stage, then the task is restarted
with back-off or the process is stopped on purpose; never silently dead.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from watcher import logs
from watcher.engine.supervise import Supervisor, sleep_until
from watcher.errors import GitError
from watcher.metrics import Metrics


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure("debug", stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()


def events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def errors(metrics: Metrics, stage: str) -> float:
    value = metrics.registry.get_sample_value("image_watcher_errors_total", {"stage": stage})
    return value or 0.0


class Flaky:
    """A task body that fails ``failures`` times (at once, or after ``runs`` seconds), then
    returns; it notes when each attempt started."""

    def __init__(self, failures: int, error: Exception, runs: float = 0.0) -> None:
        self.failures = failures
        self.error = error
        self.runs = runs
        self.starts: list[float] = []

    async def __call__(self) -> None:
        self.starts.append(time.monotonic())
        if len(self.starts) <= self.failures:
            await asyncio.sleep(self.runs)
            raise self.error


async def test_a_failing_task_is_logged_with_its_traceback_counted_and_restarted(
    captured: io.StringIO,
) -> None:
    metrics, stop = Metrics(), asyncio.Event()
    body = Flaky(2, KeyError("a key nobody expected"))
    async with asyncio.TaskGroup() as group:
        supervisor = Supervisor(group, stop, metrics, first=0.01, most=0.05)
        task = supervisor.spawn("writer environment/a", body, on_failure="restart")
    assert task.get_name() == "writer environment/a"
    assert len(body.starts) == 3  # two failures, then a run that ended normally
    assert errors(metrics, "internal") == 2
    failed = [e for e in events(captured) if e["event"] == "task failed"]
    assert len(failed) == 2
    for event in failed:
        assert event["task"] == "writer environment/a"
        assert event["severity"] == "ERROR"
        assert event["stage"] == "internal"
        assert event["error"] == "KeyError: 'a key nobody expected'"
        assert event["exception"].startswith("Traceback (most recent call last)")
        assert "KeyError" in event["exception"]
    restarting = [e for e in events(captured) if e["event"] == "task restarting"]
    assert [e["seconds"] for e in restarting] == [0.01, 0.02]
    assert not stop.is_set() and supervisor.fatal is None


async def test_the_stage_comes_from_the_error_type() -> None:
    metrics, stop = Metrics(), asyncio.Event()
    async with asyncio.TaskGroup() as group:
        supervisor = Supervisor(group, stop, metrics, first=0.01, most=0.05)
        supervisor.spawn("a", Flaky(1, GitError("git push: refused")), on_failure="restart")
        supervisor.spawn("b", Flaky(1, ValueError("bug")), on_failure="restart")
    assert errors(metrics, "git") == 1
    assert errors(metrics, "internal") == 1


async def test_back_off_doubles_per_failure_in_a_row_up_to_the_maximum() -> None:
    metrics, stop = Metrics(), asyncio.Event()
    body = Flaky(5, RuntimeError("fails at once"))
    async with asyncio.TaskGroup() as group:
        Supervisor(group, stop, metrics, first=0.05, most=0.2).spawn(
            "t", body, on_failure="restart"
        )
    gaps = [b - a for a, b in itertools.pairwise(body.starts)]
    # Each restart waited at least its back-off: 0.05, 0.1, 0.2, then capped at 0.2.
    for gap, least in zip(gaps, [0.05, 0.1, 0.2, 0.2, 0.2], strict=True):
        assert gap >= least * 0.95, gaps


async def test_a_failure_after_a_long_run_is_not_a_failure_in_a_row(
    captured: io.StringIO,
) -> None:
    metrics, stop = Metrics(), asyncio.Event()
    quick = Flaky(2, RuntimeError("at once"))
    slow = Flaky(1, RuntimeError("after a while"), runs=0.12)
    calls = 0

    async def body() -> None:
        nonlocal calls
        calls += 1
        # Two quick failures (back-off 0.02, then 0.04), one after running
        # longer than the maximum back-off (reset: 0.02), then success.
        await (quick() if calls <= 2 else slow())

    async with asyncio.TaskGroup() as group:
        Supervisor(group, stop, metrics, first=0.02, most=0.1).spawn(
            "t", body, on_failure="restart"
        )
    restarting = [e["seconds"] for e in events(captured) if e["event"] == "task restarting"]
    assert restarting == [0.02, 0.04, 0.02]


async def test_a_task_the_process_cannot_run_without_stops_it_on_purpose(
    captured: io.StringIO,
) -> None:
    metrics, stop = Metrics(), asyncio.Event()
    body = Flaky(1, OSError("lease loop broke"))
    async with asyncio.TaskGroup() as group:
        supervisor = Supervisor(group, stop, metrics, first=0.01, most=0.05)
        supervisor.spawn("membership", body, on_failure="stop")
        sibling = supervisor.spawn("discovery", stop.wait, on_failure="restart")
    assert stop.is_set() and supervisor.fatal == "membership"
    assert len(body.starts) == 1  # not restarted
    assert sibling.done() and not sibling.cancelled()  # ended through the stop event
    assert errors(metrics, "internal") == 1
    names = [e["event"] for e in events(captured)]
    assert "task failed" in names
    stopping = [e for e in events(captured) if e["event"].startswith("stopping the process")]
    assert stopping and stopping[0]["task"] == "membership"


async def test_a_one_shot_task_that_fails_ends_and_its_siblings_go_on() -> None:
    metrics, stop = Metrics(), asyncio.Event()
    body = Flaky(1, ZeroDivisionError("division by zero"))
    ran = asyncio.Event()

    async def sibling() -> None:
        await asyncio.sleep(0.05)
        ran.set()

    async with asyncio.TaskGroup() as group:
        supervisor = Supervisor(group, stop, metrics, first=0.01, most=0.05)
        supervisor.spawn("check eu.gcr.io/p/x", body, on_failure="end")
        supervisor.spawn("other", sibling, on_failure="restart")
    assert len(body.starts) == 1 and ran.is_set()
    assert errors(metrics, "internal") == 1 and not stop.is_set()


async def test_cancellation_is_not_a_failure() -> None:
    metrics, stop = Metrics(), asyncio.Event()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async with asyncio.TaskGroup() as group:
        task = Supervisor(group, stop, metrics).spawn("t", forever, on_failure="restart")
        await started.wait()
        task.cancel()
    assert task.cancelled()
    assert errors(metrics, "internal") == 0


async def test_stop_during_the_back_off_ends_the_task_at_once() -> None:
    metrics, stop = Metrics(), asyncio.Event()
    body = Flaky(10, RuntimeError("again"))
    async with asyncio.TaskGroup() as group:
        task = Supervisor(group, stop, metrics, first=30.0, most=60.0).spawn(
            "t", body, on_failure="restart"
        )
        while not body.starts:  # noqa: ASYNC110 - the first attempt, then its 30 s back-off
            await asyncio.sleep(0.01)
        stop.set()
        began = time.monotonic()
    assert time.monotonic() - began < 5
    assert len(body.starts) == 1 and task.done() and not task.cancelled()


async def test_sleep_until_wakes_on_stop() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    began = loop.time()
    await sleep_until(began + 30, stop)
    assert loop.time() - began < 5
    await sleep_until(began - 1, stop)  # a time already past: no wait
