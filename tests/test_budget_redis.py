"""The shared budget in Redis, against a real redis-server and real OS processes.

Time is compressed: windows of 1-2 s and caps of 90-180 requests. Every multi-process
test runs three replicas (``tests/budget_worker.py``), each with several asyncio tasks,
sending real requests to the Google registry emulator whose per-client quota is set to
the cap: a single request too many in any window shows up as a 429 there.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis

from tests.conftest import RedisServer
from watcher.budget.shared import RedisBudget, budgets_for
from watcher.config import Config, Limit
from watcher.tuning import SEND_MARGIN
from watcher_testing.emulator import EmulatorSettings, GoogleRegistryEmulator, max_in_window
from watcher_testing.waiting import wait_until_async

ROOT = Path(__file__).resolve().parent.parent
REPLICAS = 3
# From the last worker saying it is ready (imported, connected) to the common start.
START_MARGIN = 0.2
READY_WITHIN = 60.0
SETTLE = 30.0  # seconds: the most a wait for the budget to change mode may take


@dataclass
class Run:
    limit: Limit
    start: float
    results: list[dict[str, Any]]
    emulator: GoogleRegistryEmulator
    stderr: list[str]

    def sends(self, mode: str | None = None, replica: int | None = None) -> list[float]:
        out = [
            s[0]
            for i, r in enumerate(self.results)
            if replica is None or i == replica
            for s in r["sends"]
            if mode is None or s[1] == mode
        ]
        return sorted(out)

    @property
    def throttled(self) -> int:
        return self.emulator.count(status=429)


async def run_replicas(
    redis_server: RedisServer,
    limit: Limit,
    duration: float,
    *,
    tasks: int = 4,
    events: tuple[tuple[float, Callable[[], object]], ...] = (),
    extra: Callable[[int], list[str]] = lambda i: [],
) -> Run:
    settings = EmulatorSettings(
        auth_required=False, quota_requests=limit.cap, quota_window=limit.per
    )
    async with GoogleRegistryEmulator(settings) as emulator:
        procs = []
        for i in range(REPLICAS):
            argv = [
                *("--redis", redis_server.url, "--emulator", emulator.url),
                *("--replica", f"r{i}", "--replicas", str(REPLICAS)),
                *("--requests", str(limit.requests), "--per", str(limit.per)),
                *("--headroom", str(limit.headroom), "--tasks", str(tasks)),
                *("--duration", str(duration)),
                *extra(i),
            ]
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "tests.budget_worker",
                    *argv,
                    cwd=ROOT,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
            )
        # Each worker imports and connects at its own pace (slowly on a loaded machine):
        # the common start is set once every one of them is ready.
        try:
            for proc in procs:
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), READY_WITHIN)
                assert line == b"ready\n", f"a budget worker did not start: {line!r}"
        except BaseException:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
            raise
        start = time.monotonic() + START_MARGIN
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start!r}\n".encode())
            await proc.stdin.drain()
        for at, action in events:
            # The faults are scheduled: their times in the run are the scenario.
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            # In a thread: the emulator in this loop must keep stamping arrivals on time.
            await asyncio.to_thread(action)
        outputs = await asyncio.gather(*(p.communicate() for p in procs))
        for proc, (_, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, err.decode()[-3000:]
        results = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]
        return Run(limit, start, results, emulator, [err.decode() for _, err in outputs])


def usable_share(times: list[float], limit: Limit, begin: float, end: float) -> float:
    """Mean requests in a window of ``per`` seconds over [begin, end), against the cap.

    Averaged over windows starting every 10 ms: a saturated log repeats its pattern
    every ``per + SEND_MARGIN``, so a single window would measure where it falls.
    """
    starts = [begin + i * 0.01 for i in range(int((end - limit.per - begin) / 0.01))]
    counts = [sum(1 for t in times if x <= t < x + limit.per) for x in starts]
    return sum(counts) / len(counts) / limit.cap


@pytest.mark.integration
async def test_saturated_replicas_never_exceed_the_cap_and_use_it(
    redis_server: RedisServer,
) -> None:
    limit = Limit(name="gcr", requests=300, per=3.0, headroom=0.1)  # cap 270
    run = await run_replicas(redis_server, limit, duration=10.0)

    everything = run.sends()
    peak = run.emulator.max_in_window(limit.per)
    assert run.throttled == 0
    assert peak <= limit.cap
    assert max_in_window(everything, limit.per) <= limit.cap
    # Saturated from the first grant; the shared log takes over after the first window
    # (a new log starts with one window of local budgets, see the module docstring).
    shared = run.sends("shared")
    share = usable_share(everything, limit, shared[0], run.start + 10.0)
    overall = usable_share(everything, limit, everything[0], run.start + 10.0)
    stale = sum(r["stale"] for r in run.results)
    print(
        f"\npeak window {peak}/{limit.cap}; usable: shared {share:.1%}, "
        f"overall {overall:.1%}; grants dropped as late {stale}"
    )
    # Most of the cap is used under saturation. The 95 % target itself is a
    # figure the saturation benchmark measures on a quiet machine; this test
    # keeps a margin for a loaded one (it has measured 95-97 % quiet, 89 % loaded).
    assert share >= 0.85
    assert overall >= 0.85
    assert all(r["final_mode"] == "shared" for r in run.results)
    # Every replica got a fair part (FIFO across replicas): none below half an equal share.
    counts = [len(run.sends(replica=i)) for i in range(REPLICAS)]
    assert min(counts) >= 0.5 * len(everything) / REPLICAS, counts


@pytest.mark.integration
async def test_a_429_pause_holds_every_replica(redis_server: RedisServer) -> None:
    limit = Limit(name="gcr", requests=100, per=1.0, headroom=0.1)  # cap 90
    run = await run_replicas(
        redis_server,
        limit,
        duration=3.6,
        tasks=3,
        extra=lambda i: ["--pause-at", "1.8", "--pause-seconds", "1.0"] if i == 0 else [],
    )
    paused_at = run.results[0]["paused_at"]
    assert paused_at is not None
    during = [t for t in run.sends() if paused_at + 0.06 < t < paused_at + 0.94]
    assert during == []
    for i in range(REPLICAS):
        assert any(t > paused_at + 1.0 for t in run.sends(replica=i)), "resumed"
    assert 0.9 <= run.results[0]["paused_seconds"] <= 1.0
    assert run.throttled == 0


@pytest.mark.integration
async def test_redis_stopped_then_restarted_empty(redis_server: RedisServer) -> None:
    limit = Limit(name="gcr", requests=100, per=1.0, headroom=0.1)  # cap 90, 30 each
    run = await run_replicas(
        redis_server,
        limit,
        # Back after the restart takes a probe (1 s) and one recovering window:
        # the rest is slack for a loaded machine.
        duration=9.0,
        events=((2.0, redis_server.stop), (4.0, redis_server.start)),
    )
    local_cap = limit.cap // REPLICAS
    peak = run.emulator.max_in_window(limit.per)
    assert run.throttled == 0
    assert peak <= limit.cap
    for i, result in enumerate(run.results):
        assert "degraded" in result["modes"] and "recovering" in result["modes"]
        assert result["local_cap"] == local_cap
        degraded = run.sends("degraded", replica=i)
        assert degraded, "kept sending without Redis"
        assert max_in_window(degraded, limit.per) <= local_cap
        # Back on the shared log after the restart (and its one recovering window).
        assert any(t > run.start + 4.0 for t in run.sends("shared", replica=i))
        assert "budget degraded: redis unreachable" in run.stderr[i]
    down = usable_share(run.sends(), limit, run.start + 2.0, run.start + 4.0)
    across = max_in_window([t for t in run.sends() if t > run.start + 3.0], limit.per)
    print(
        f"\npeak window {peak}/{limit.cap}; while down {down:.1%} of cap; "
        f"peak across the restart {across}"
    )


@pytest.mark.integration
async def test_slow_redis_does_not_stall_senders(redis_server: RedisServer) -> None:
    # The fixture's redis-server refuses DEBUG (enable-debug-command no); CLIENT PAUSE
    # stalls every command the same way DEBUG SLEEP 2 does.
    def stall() -> None:
        admin = redis.Redis.from_url(redis_server.url)
        admin.execute_command("CLIENT", "PAUSE", "2000", "ALL")
        admin.close()

    limit = Limit(name="gcr", requests=100, per=1.0, headroom=0.1)
    run = await run_replicas(redis_server, limit, duration=6.5, events=((2.0, stall),))
    assert run.throttled == 0
    assert run.emulator.max_in_window(limit.per) <= limit.cap
    longest = 0.0
    for i, result in enumerate(run.results):
        assert "degraded" in result["modes"]
        assert result["final_mode"] == "shared"
        stalled = [t for t in run.sends(replica=i) if run.start + 1.9 < t < run.start + 4.1]
        gaps = [b - a for a, b in itertools.pairwise(stalled)]
        longest = max(longest, *gaps)
    print(f"\nlongest gap between sends of one replica while Redis stalled: {longest:.3f}s")
    # The timeout (0.2 s), a probe and the old window's first bucket leaving: well under
    # the 2 s stall, which a sender waiting on Redis would have sat through.
    assert longest < 1.2


# --- one process -----------------------------------------------------------------------


async def acquire_until(
    budget: RedisBudget, mode: str, within: float, interval: float = 0.05
) -> None:
    """Take grants (``interval`` apart) until the budget is in ``mode``."""

    async def reached() -> bool:
        await budget.acquire()
        return budget.mode == mode

    await wait_until_async(reached, within, interval=interval, what=f"budget mode {mode}")


async def _past_recovery(budget: RedisBudget) -> None:
    """Past a new budget's first window, a recovery (see watcher/budget/shared.py)."""
    await acquire_until(budget, "shared", SETTLE)


@pytest.mark.integration
async def test_keys_carry_a_hash_tag_and_an_empty_restart_gets_our_grants_back(
    redis_server: RedisServer,
) -> None:
    client = Redis.from_url(redis_server.url)
    # A window long enough that none of our grants ages out of it while Redis
    # restarts and the budget notices (the check below counts them all).
    limit = Limit(name="gcr", requests=250, per=5.0, headroom=0.0)
    budget = RedisBudget(client, limit, replica="solo", timeout=0.2, probe_interval=0.1)
    await _past_recovery(budget)
    # The recovery's own claims fill the window it lasted: let them age out of it (a
    # window and a bit), or the oldest of those counted below would leave the window
    # while Redis restarts and could not be written back (the count then fell short
    # under load). Time passing is the point here, so this is a sleep.
    await asyncio.sleep(limit.per + SEND_MARGIN + 0.5)
    for _ in range(20):
        await budget.acquire()
    keys = sorted(k.decode() for k in await client.keys("*"))
    assert keys and all("{budget:gcr}" in k for k in keys), keys
    recent = await client.zcard(budget.keys[0])
    assert recent >= 20

    await asyncio.to_thread(redis_server.restart)  # comes back empty
    # The pooled connection died with the server: degraded until the next probe (every
    # 0.1 s). Within the window, which every grant counted above is younger than.
    await acquire_until(budget, "recovering", limit.per - 1.0)
    # Before this replica granted anything more, its grants of the last window went back.
    assert await client.zcard(budget.keys[0]) >= recent
    # Recovering lasts one window from the new epoch: let it pass, then shared again.
    await asyncio.sleep(limit.per + 0.1)
    await acquire_until(budget, "shared", SETTLE, interval=0)
    await client.aclose()


@pytest.mark.integration
async def test_a_replica_that_saw_itself_alone_takes_its_share_when_redis_goes(
    redis_server: RedisServer,
) -> None:
    """Replicas starting together each see too few others when their fallback is built.

    While recovering, Redis refuses claims beyond the cap; once Redis is gone nothing
    does, so the share must follow the replica count as it stands then.
    """
    client = Redis.from_url(redis_server.url)
    limit = Limit(name="gcr", requests=90, per=5.0, headroom=0.0)
    seen = [1]
    budget = RedisBudget(
        client, limit, replica="first", replicas=lambda: seen[0], timeout=0.2, probe_interval=60
    )
    await budget.acquire()  # a brand-new budget: recovering, on a fallback built alone
    assert budget.mode == "recovering" and budget.local_cap == limit.cap
    seen[0] = 3  # the others have joined
    await asyncio.to_thread(redis_server.stop)
    granted = 1
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):  # well within one window
            while True:
                await budget.acquire()
                granted += 1
    assert budget.mode == "degraded"
    assert budget.local_cap == limit.cap // 3
    assert granted <= limit.cap // 3, granted
    await client.aclose()


@pytest.mark.integration
async def test_fair_under_unequal_demand(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    limit = Limit(name="gcr", requests=60, per=1.0, headroom=0.0)
    budgets = [RedisBudget(client, limit, replica=f"r{i}", replicas=lambda: 3) for i in range(3)]
    await asyncio.gather(*(_past_recovery(b) for b in budgets))
    served: dict[str, int] = {}
    quiet_waits: list[float] = []
    end = time.monotonic() + 3.0

    async def busy(name: str, budget: RedisBudget) -> None:
        while time.monotonic() < end:
            await budget.acquire()
            served[name] = served.get(name, 0) + 1

    async def quiet() -> None:
        while time.monotonic() < end:
            await asyncio.sleep(0.4)  # the quiet caller's pace: its low demand is the point
            quiet_waits.append(await budgets[2].acquire())

    await asyncio.gather(
        *(busy(f"a{i}", budgets[0]) for i in range(12)),
        *(busy(f"b{i}", budgets[1]) for i in range(3)),
        quiet(),
    )
    assert len(quiet_waits) >= 5
    # FIFO: the quiet caller waits behind the 15 queued ones, far less than a window.
    assert max(quiet_waits) < limit.per
    # No starvation: every caller, on either replica, gets at least half the best one's.
    assert min(served.values()) >= 0.5 * max(served.values()), served
    print(
        f"\nserved per caller {min(served.values())}..{max(served.values())}; "
        f"quiet caller's longest wait {max(quiet_waits):.3f}s"
    )
    await client.aclose()


@pytest.mark.unit
def test_budgets_for_builds_one_budget_per_limit() -> None:
    config = Config(limits={"gcr": Limit(name="gcr"), "hub": Limit(name="hub", requests=100)})
    client = Redis()
    budgets = budgets_for(config, client, "replica-a", lambda: 2)
    assert set(budgets) == {"gcr", "hub"}
    assert budgets["hub"].limit.requests == 100
    assert isinstance(budgets["gcr"], RedisBudget)
    assert budgets["gcr"].keys[0] == "iw:{budget:gcr}:log"
