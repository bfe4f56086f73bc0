"""One replica for the Redis budget tests: a real OS process with several asyncio tasks.

Each task takes a grant from one RedisBudget, then sends a real request to the registry
emulator the test runs. At the end it prints one JSON object on stdout: every send (time
on the host-wide monotonic clock, the budget's mode, the HTTP status, the wait) and the
budget's counters. Logs go to stderr.

Start: once set up it prints ``ready`` and reads the start time (host-wide monotonic
clock) from stdin, so every replica starts at the same instant however slowly each
one imported its modules.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import aiohttp
from redis.asyncio import Redis

from watcher import logs
from watcher.budget.shared import RedisBudget
from watcher.config import Limit


async def run(args: argparse.Namespace) -> dict[str, Any]:
    client = Redis.from_url(args.redis, socket_timeout=args.timeout)
    limit = Limit(name="gcr", requests=args.requests, per=args.per, headroom=args.headroom)
    budget = RedisBudget(
        client,
        limit,
        replica=args.replica,
        replicas=lambda: args.replicas,
        timeout=args.timeout,
        probe_interval=args.probe,
    )
    sends: list[tuple[float, str, int, float]] = []
    modes: set[str] = set()
    paused_at: float | None = None
    print("ready", flush=True)
    start_at = float(await asyncio.to_thread(sys.stdin.readline))
    end = start_at + args.duration

    async def task(index: int, session: aiohttp.ClientSession) -> None:
        nonlocal paused_at
        gap = args.gap[index % len(args.gap)] if args.gap else 0.0
        while True:
            if gap:
                await asyncio.sleep(gap)  # the caller's pace: spacing is the demand under test
            try:
                # Cancelled at the end: also exercises giving a reservation back.
                async with asyncio.timeout(end - time.monotonic()):
                    waited = await budget.acquire()
            except TimeoutError:
                return
            now = time.monotonic()
            mode = budget.mode
            modes.add(mode)
            async with session.get(f"{args.emulator}/v2/") as response:
                await response.read()
                sends.append((now, mode, response.status, waited))
            pause_at = start_at + (args.pause_at if args.pause_at is not None else 1e9)
            if paused_at is None and index == 0 and now >= pause_at:
                await budget.pause(args.pause_seconds)
                paused_at = time.monotonic()

    async def watchdog() -> None:
        # A hung replica fails the test with its task stacks rather than a timeout.
        await asyncio.sleep(end + 5 - time.monotonic())
        for each in asyncio.all_tasks():
            coro: Any = each.get_coro()
            chain = []
            while coro is not None and hasattr(coro, "cr_frame"):
                frame = coro.cr_frame
                if frame is not None:
                    chain.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
                coro = coro.cr_await
            print("hung task:", " > ".join(chain), repr(coro), file=sys.stderr)
        sys.stderr.flush()
        os._exit(3)

    guard = asyncio.ensure_future(watchdog())
    # Every replica starts at the same instant: the start is a time, not an event.
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(task(i, session) for i in range(args.tasks)))
    guard.cancel()
    result = {
        "replica": args.replica,
        "sends": sends,
        "modes": sorted(modes),
        "final_mode": budget.mode,
        "paused_at": paused_at,
        "paused_seconds": budget.paused_seconds,
        "local_cap": budget.local_cap,
        "stale": budget.stale_grants,
    }
    await client.aclose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--emulator", required=True)
    parser.add_argument("--replica", required=True)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--per", type=float, required=True)
    parser.add_argument("--headroom", type=float, default=0.0)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--gap", type=float, action="append", default=[])
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--timeout", type=float, default=0.2)
    parser.add_argument("--probe", type=float, default=0.3)
    parser.add_argument("--pause-at", type=float, default=None)
    parser.add_argument("--pause-seconds", type=float, default=1.0)
    args = parser.parse_args()
    logs.configure("info", stream=sys.stderr)
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
