"""Waiting for something to happen, for the tests, the demo and the local services.

A fixed sleep is too short on a loaded machine and too long on an idle one:
these poll a condition until it holds, up to a deadline chosen generously
(it only costs time when something is wrong). A sleep whose passing *is* the
behaviour under test (an interval during which nothing may happen) stays a sleep.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


class WaitTimeout(RuntimeError):
    """The condition did not hold before the deadline."""


Described = str | Callable[[], str]


def wait_until(
    ready: Callable[[], object], within: float, *, interval: float = 0.05, what: Described = "it"
) -> float:
    """Block until ``ready()`` is truthy; the seconds it took (WaitTimeout after ``within``).

    ``what`` names what was awaited in the error; a callable is asked only then (for
    what was seen instead: the last log lines, the blocks still missing).
    """
    started = time.monotonic()
    while not ready():
        if time.monotonic() - started > within:
            raise _timeout(within, what)
        time.sleep(interval)
    return time.monotonic() - started


async def wait_until_async(
    ready: Callable[[], object] | Callable[[], Awaitable[object]],
    within: float,
    *,
    interval: float = 0.05,
    what: Described = "it",
) -> float:
    """:func:`wait_until` for the event loop; ``ready`` may be a coroutine function."""
    started = time.monotonic()
    while True:
        result = ready()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise _timeout(within, what)
        await asyncio.sleep(interval)


def _timeout(within: float, what: Described) -> WaitTimeout:
    described = what() if callable(what) else what
    return WaitTimeout(f"timed out after {within:g}s waiting for {described}")
