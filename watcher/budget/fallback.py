"""The shared budget's local fallback: this replica's share of the cap, without Redis.

When the shared log is out of reach (or incomplete, while recovering), a
replica grants from a local reservation log of ``cap // replicas`` (at least
one). That log must not start empty: the requests every replica sent in the
last shared window still count. :func:`seed_times` weighs the last histogram
the replica saw at ``1 / replicas`` (each replica may use its share of the
room the old window leaves, never more) and adds the replica's own grants
since; summed over replicas, every window across the switch stays within the cap.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import Iterable

from watcher.budget.local import LocalBudget
from watcher.budget.script import Reply
from watcher.tuning import BUDGET_BUCKETS as BUCKETS


class Fallback(LocalBudget):
    """The local reservation log, seedable with the old shared window.

    LocalBudget appends each grant at the end; seeded entries may lie in the future
    (reservations not yet due), so grants are inserted in order instead, which keeps
    its ``grants[len - cap]`` arithmetic exact.
    """

    def seed(self, times: Iterable[float]) -> None:
        self._grants = deque(sorted([*self._grants, *times]))

    def hold_until(self, until: float) -> None:
        """Carry over a pause already in force (local clock)."""
        self._paused_until = max(self._paused_until, until)

    def _record(self, now: float) -> None:
        bisect.insort(self._grants, now)

    async def acquire_unless(self, switched: asyncio.Event) -> bool:
        """A grant, or False (and none taken) if ``switched`` is set first."""
        grant = asyncio.ensure_future(self.acquire())
        change = asyncio.ensure_future(switched.wait())
        try:
            await asyncio.wait({grant, change}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            change.cancel()
            if not grant.done():
                grant.cancel()
                # Let the cancellation land (releases its lock) before looking at it.
                await asyncio.wait({grant})
        if grant.cancelled():
            return False
        grant.result()
        return True


def seed_times(
    snapshot: Reply | None,
    window: float,
    replicas: int,
    own: Iterable[tuple[float, float]],
    now: float,
) -> list[float]:
    """Grant times to seed a fallback with: our share of ``snapshot``, and our own since.

    ``own``: (local time sent, local time Redis told us of it) of this
    replica's grants; those Redis had not reported by ``snapshot`` are added
    whole, once sent (at or before ``now``).
    """
    times: list[float] = []
    since = float("-inf")
    if snapshot is not None:
        since = snapshot.sent
        width = window / BUCKETS
        points = [
            (snapshot.recv - window + (j + 1) * width, count)
            for j, count in enumerate(snapshot.hist)
        ]
        if snapshot.over:
            points.append((snapshot.recv + snapshot.over_last, snapshot.over))
        # Every suffix (entries still in a window) weighs 1/replicas, rounded up.
        suffix = placed = 0
        for at, count in reversed(points):
            suffix += count
            need = -(-suffix // replicas)
            times.extend([at] * (need - placed))
            placed = need
    times.extend(at for at, seen in own if seen > since and at <= now)
    return times
