"""Request budgets: a hard cap on requests sent in any sliding window.

A budget is the only way a request reaches a registry: callers ``acquire()``
one grant before every send (token requests included) and sleep exactly as
long as the budget says. This module holds the in-process budget, which keeps
the guarantee for one process; the Redis-backed one shares it across replicas.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from watcher.config import Limit
from watcher.tuning import SEND_MARGIN


class Budget(Protocol):
    """What a registry client needs from a budget."""

    @property
    def limit(self) -> Limit: ...

    async def acquire(self) -> float:
        """Wait until one more request may be sent; return the seconds waited."""
        ...

    async def pause(self, seconds: float) -> None:
        """Stop granting for ``seconds`` (a registry answered 429)."""
        ...


class LocalBudget:
    """An in-process reservation log: no window of ``per`` seconds sees more than the cap.

    Grants are handed out in arrival order (one lock, held while waiting), so a
    busy shard cannot starve a quiet one: demand above the cap stretches every
    caller's interval evenly instead.
    """

    def __init__(
        self,
        limit: Limit,
        *,
        cap: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self.cap = cap if cap is not None else limit.cap
        self._clock = clock
        self._grants: deque[float] = deque()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()
        self.granted = 0
        self.paused_seconds = 0.0

    @property
    def limit(self) -> Limit:
        return self._limit

    def used(self) -> int:
        """Grants inside the current window."""
        self._expire(self._clock())
        return len(self._grants)

    def _expire(self, now: float) -> None:
        horizon = now - self._limit.per - SEND_MARGIN
        while self._grants and self._grants[0] <= horizon:
            self._grants.popleft()

    def wait_time(self, now: float) -> float:
        """Seconds until a grant is possible (0 when one is possible now)."""
        self._expire(now)
        wait = max(0.0, self._paused_until - now)
        if len(self._grants) >= self.cap:
            oldest = self._grants[len(self._grants) - self.cap]
            wait = max(wait, oldest + self._limit.per + SEND_MARGIN - now)
        return wait

    async def acquire(self) -> float:
        started = self._clock()
        async with self._lock:
            # Sleep exactly the computed wait; loop only because a 429 pause
            # may have arrived meanwhile and pushed the horizon further.
            while (wait := self.wait_time(self._clock())) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            now = self._clock()
            self._record(now)
            self.granted += 1
            return now - started

    def _record(self, now: float) -> None:
        # Every grant so far lies in the past, so appending keeps the log in order.
        self._grants.append(now)

    async def pause(self, seconds: float) -> None:
        now = self._clock()
        until = now + max(0.0, seconds)
        if until > self._paused_until:
            self.paused_seconds += until - max(now, self._paused_until)
            self._paused_until = until
