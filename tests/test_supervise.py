"""Supervision of the daemon's tasks (watcher.engine.supervise).

The helper itself, as asyncio units with tasks that raise: a failure is logged
with its traceback and counted by its type's stage, then the task is restarted
with back-off or the process is stopped on purpose; never silently dead.

And a real daemon whose writer meets a values file no code foresaw: the
writer fails, is restarted, the other branch keeps being written, and this
branch is written once the file can be read again.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from tests.conftest import GitRemote, make_remote
from tests.soak import Daemon, config_text, is_ancestor, shasums
from watcher import logs
from watcher.engine.supervise import Supervisor, sleep_until
from watcher.errors import GitError
from watcher.metrics import Metrics
from watcher_testing.emulator import EmulatorSettings, GoogleRegistryEmulator


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


@pytest.mark.unit
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


@pytest.mark.unit
async def test_the_stage_comes_from_the_error_type() -> None:
    metrics, stop = Metrics(), asyncio.Event()
    async with asyncio.TaskGroup() as group:
        supervisor = Supervisor(group, stop, metrics, first=0.01, most=0.05)
        supervisor.spawn("a", Flaky(1, GitError("git push: refused")), on_failure="restart")
        supervisor.spawn("b", Flaky(1, ValueError("bug")), on_failure="restart")
    assert errors(metrics, "git") == 1
    assert errors(metrics, "internal") == 1


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
async def test_sleep_until_wakes_on_stop() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    began = loop.time()
    await sleep_until(began + 30, stop)
    assert loop.time() - began < 5
    await sleep_until(began - 1, stop)  # a time already past: no wait


# --- a real daemon, a writer that meets what nobody foresaw ----------------------------------

INTERVAL = 1.0
BRANCHES = ("environment/a", "environment/b")
# A YAML 1.3 directive after a byte order mark. YAML 1.2 says a processor should
# read a later 1.x version with a warning; libyaml refuses it as a syntax error,
# which the reader reports, but a file with a byte order mark is read by the
# reference reader (ruamel.yaml), which fails an assertion instead: an
# AssertionError that neither discovery nor the branch writer expects. If the
# reader learns to handle it, this test fails loudly at "never failed" below:
# provoke the writer with another input it does not foresee.
UNFORESEEN = "\ufeff%YAML 1.3\n---\n"


@asynccontextmanager
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[GoogleRegistryEmulator, GitRemote, Daemon]]:
    async with GoogleRegistryEmulator(EmulatorSettings(auth_required=False)) as emu:
        emu.push("proj/app0", "master")
        files = {
            "apps/app0/values.yaml": f"image:\n  repository: {emu.host}/proj/app0\n  tag: master\n"
        }
        remote = make_remote(tmp_path, dict.fromkeys(BRANCHES, files))
        config = tmp_path / "shards.yaml"
        config.write_text(config_text(emu.host, remote.url, "", interval=INTERVAL))
        proc = Daemon(tmp_path / "replica", config)
        proc.start()
        try:
            yield emu, remote, proc
        finally:
            code, seconds = await proc.terminate()
            assert code == 0 and seconds <= 10, (code, seconds)


async def shown(remote: GitRemote, branch: str, digest: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        seen = await asyncio.to_thread(shasums, remote, [branch], ["proj/app0"])
        if seen[(branch, "proj/app0")] == digest:
            return
        assert time.monotonic() < deadline, f"{branch} never showed {digest}: {seen}"
        await asyncio.sleep(0.1)


async def until(proc: Daemon, what: str, match: Any, seconds: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + seconds
    while True:
        found = [e for e in proc.events() if match(e)]
        if found:
            return found
        assert proc.alive(), f"the daemon died waiting for {what}"
        assert time.monotonic() < deadline, f"{what}: never happened"
        await asyncio.sleep(0.1)


async def internal_errors(proc: Daemon) -> float:
    [serving] = [e for e in proc.events() if e.get("event") == "serving"]
    url = f"http://127.0.0.1:{serving['port']}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith('image_watcher_errors_total{stage="internal"}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.integration
async def test_a_writer_that_fails_unexpectedly_is_restarted_and_the_others_keep_writing(
    tmp_path: Path,
) -> None:
    async with daemon(tmp_path) as (emu, remote, proc):
        first = emu.resolve("proj/app0", "master")
        for branch in BRANCHES:
            await shown(remote, branch, first, 15)
        await asyncio.sleep(2 * INTERVAL)  # a discovery has read both commits

        # A person gives branch a's file a directive the writer cannot read;
        # then a new build is pushed.
        text = remote.read("environment/a", "apps/app0/values.yaml")
        person = remote.commit(
            "environment/a", {"apps/app0/values.yaml": UNFORESEEN + text}, "yaml 1.3"
        )
        second = emu.push("proj/app0", "master")

        # Branch b is written all the same; branch a's writer fails and is restarted.
        await shown(remote, "environment/b", second, 10)

        def writer_a_failed(e: dict[str, Any]) -> bool:
            return e.get("event") == "task failed" and e.get("task") == "writer environment/a"

        failed = await until(proc, "writer environment/a never failed", writer_a_failed, 10)
        assert failed[0]["stage"] == "internal"
        assert "AssertionError" in failed[0]["error"]
        assert "Traceback (most recent call last)" in failed[0]["exception"]
        await until(
            proc,
            "the writer was not restarted",
            lambda e: (
                e.get("event") == "task restarting" and e.get("task") == "writer environment/a"
            ),
            10,
        )
        assert await internal_errors(proc) >= 1
        assert proc.alive()

        # The person fixes the file: the restarted writer writes branch a.
        remote.commit("environment/a", {"apps/app0/values.yaml": text}, "back to yaml 1.1")
        await shown(remote, "environment/a", second, 20)
        assert is_ancestor(remote, person, "environment/a")
        assert proc.alive()
