"""The shared request budget in Redis: one cap for every shard of every replica.

Guarantee (docs/architecture.md, "budget/: the request budget"): no window of ``per`` seconds
sees more than ``limit.cap`` requests *sent* across all replicas drawing from one budget.

Keys (one hash tag, so the script runs on Redis Cluster / Memorystore; named in
:mod:`watcher.keys`)::

    iw:{budget:<name>}:log      sorted set: grant id -> grant time (ms on Redis TIME)
    iw:{budget:<name>}:pause    paused-until (ms), set by a 429 anywhere
    iw:{budget:<name>}:epoch    id of this log's life; a Redis that lost it lost the log
    iw:{budget:<name>}:recover  shared grants resume at this time (ms)

One Lua script (``shared.lua``, Redis ``TIME`` as the only clock, called through
:mod:`watcher.budget.script`) does everything, one operation per call:

- ``reserve``: a reservation log. The new grant's slot is the earliest time ``t`` at or after
  now and the pause end such that fewer than ``cap`` entries (reservations still ahead
  included) lie after ``t - W``, ``W = per + SEND_MARGIN``: every window holding ``t`` then
  holds at most ``cap``. Slots only grow as reservations are added, so waiting callers on
  every replica are served in arrival order (FIFO), and the room of a slot given back is
  reused. It is written at once and its distance returned: the caller sleeps that long
  (counted from when it sent the call, so it never wakes late), then ``confirm``s and sends.
  ``confirm`` answers ``wait`` with the rest when the caller woke early, and refuses a slot
  the caller woke too late for (``late``), one a pause has overtaken (``paused``) or one no
  longer in the log (``missing``): the caller then reserves afresh. A grant whose answer took
  longer than ``SEND_MARGIN / 2`` to come back is given back as well (``stale_grants``), but
  is no reason to leave the shared log. Saturation uses every slot: ``cap`` per ``W``,
  99.99 % of the cap at 10,000 / 10 min.
- ``pause``: paused-until becomes the later of the old and the new end, and reservations not
  yet due move back together (order and spacing kept, which keeps every window within the
  cap), so every replica stops granting. A pause Redis did not hear of rides on the next call.
- ``claim`` and ``sync``: recovery, below.
- Every call carries this replica's grants Redis does not have yet (``seeds``, ZADD NX by
  unique id, so repeating them is harmless) and reservations it gave up (``releases``), and
  returns a histogram of the log (``2 * BUCKETS`` buckets over ``(now - W, now + W]``, then
  the count and the latest time of entries beyond) that the fallback below needs.

Redis unreachable (connection error, or no answer within ``timeout``; a ``DEBUG SLEEP``
is the same as a dead Redis): the replica switches to a local reservation log of
``cap // replicas()`` (at least 1; the replica count it last saw) and keeps sending
(:mod:`watcher.budget.fallback`). The local log is seeded with the last histogram it saw,
each entry weighing ``1 / replicas`` (every replica may use its share of the room the old
shared window leaves, never more), and with its own grants since. Summed over replicas that
keeps every window, including the ones across the switch, within the cap. While degraded,
the next acquire after each ``probe_interval`` probes Redis (``sync``), and the outage is
logged at most once a minute; ``degraded`` / ``mode`` expose the state for a metric.

Back to Redis: the log there may lack what other replicas sent meanwhile, so a returning
replica sets ``recover`` one window ahead, and a Redis that comes back empty (no epoch
key) starts its new epoch the same way. While recovering, every replica keeps its local
log and records each grant in Redis (``claim``) before sending; the script refuses claims
after ``recover`` and reservations before it, so once shared grants resume the log holds
everything sent in the last window. A replica that sees a new epoch first writes its own
grants of the last window back (re-seeding), so nothing it sent is forgotten. The first
window of a brand-new budget is a recovery too: an empty Redis cannot tell "new" from
"restarted". Claims are refused beyond the cap (``full``, with the wait until the entry
holding the cap's place leaves): replicas starting together each see too few others at
first, and their local shares alone could add up to more than the cap.

Known limits: a replica cut off from Redis while the others still reach it keeps its local
share while they use the rest of the log, so the cap can be exceeded by up to its share
until it returns (the headroom is there for that); grants made by other replicas in the
instant between this replica's last answer and the outage are not in its histogram.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Literal

import structlog

from watcher import keys
from watcher.budget.fallback import Fallback, seed_times
from watcher.budget.local import Budget
from watcher.budget.script import Reply, SharedLog, raise_if_cancelled
from watcher.cluster.connection import RedisClient
from watcher.config import Config, Limit
from watcher.errors import BudgetUnavailable
from watcher.logs import Occasionally

log = structlog.get_logger(__name__)

Mode = Literal["shared", "degraded", "recovering"]


class RedisBudget:
    """A :class:`~watcher.budget.local.Budget` shared through Redis by every replica.

    The mode machine: ``shared`` (reserve in Redis), ``degraded`` (Redis out of
    reach: the local fallback, probing) and ``recovering`` (the local fallback,
    each grant claimed in Redis before it is sent).
    """

    def __init__(
        self,
        client: RedisClient,
        limit: Limit,
        *,
        replica: str,
        replicas: Callable[[], int] = lambda: 1,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 0.25,
        probe_interval: float = 1.0,
        prefix: str = keys.ROOT,
    ) -> None:
        self._limit = limit
        self._replicas = replicas
        self._clock = clock
        self._probe_interval = probe_interval
        self._log = SharedLog(
            client, limit, replica=replica, clock=clock, timeout=timeout, prefix=prefix
        )
        self.keys = self._log.keys
        self._mode: Mode = "shared"
        self._local: Fallback | None = None
        self._switched = asyncio.Event()
        self._probe_at = 0.0
        self._probing = False
        self._degraded_log = Occasionally(clock=clock)
        self.granted = 0
        self.stale_grants = 0  # grants dropped: the answer came back too late to use
        self.paused_seconds = 0.0
        self.local_cap = limit.cap
        self.degraded_since: float | None = None
        self._degraded_reason = ""

    # --- state, for metrics and readiness -----------------------------------------------

    @property
    def limit(self) -> Limit:
        return self._limit

    @property
    def mode(self) -> Mode:
        """``shared``, or on the local fallback: ``degraded`` (no Redis), ``recovering``."""
        return self._mode

    @property
    def degraded(self) -> bool:
        """True while grants come from the local fallback (cap / replicas)."""
        return self._mode != "shared"

    @property
    def rtt_max(self) -> float:
        """The longest a script call took to answer, in seconds."""
        return self._log.rtt_max

    def used(self) -> int:
        """Grants in the current window: the shared log's, or the local log's."""
        if self._local is not None:
            return self._local.used()
        return self._log.used

    def pause_remaining(self) -> float:
        return max(0.0, self._log.paused_until - self._clock())

    # --- the Budget protocol ---------------------------------------------------------------

    async def acquire(self) -> float:
        started = self._clock()
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        while not await (
            self._acquire_shared() if self._mode == "shared" else self._acquire_local()
        ):
            # A cancellation swallowed on the way must still end this call.
            raise_if_cancelled(task, cancelling)
        self.granted += 1
        return self._clock() - started

    async def pause(self, seconds: float) -> None:
        if seconds <= 0:
            return
        until = self._clock() + seconds
        self._log.paused_until = max(self._log.paused_until, until)
        if self._local is not None:
            await self._local.pause(seconds)
        self._log.pending_pause = max(self._log.pending_pause, until)
        # Not delivered (no Redis, or a new epoch): the pause stays pending for the next call.
        reply = await self._ask("pause")
        self.paused_seconds += seconds if reply is None else reply.wait

    # --- shared ----------------------------------------------------------------------------

    async def _acquire_shared(self) -> bool:
        member = self._log.member()
        reply = await self._ask("reserve", member)
        if reply is None:
            return False
        if reply.status == "recovering":
            self._enter_local("recovering", reply)
            return False
        self._log.own[member] = (reply.recv + reply.wait, reply.recv)
        try:
            last = await self._wait_for_slot(member, reply)
        except asyncio.CancelledError:
            self._log.abandon(member)
            raise
        if last is None:
            return False
        if self._mode != "shared":
            # Another caller switched to the fallback meanwhile: its log does not
            # count this grant, so it must not be used.
            self._log.abandon(member)
            return False
        if last.recv - last.sent > self._log.late:
            self._log.abandon(member)
            self._slow_reply()
            return False
        self._log.own[member] = (self._clock(), last.recv)
        return True

    async def _wait_for_slot(self, member: str, reply: Reply) -> Reply | None:
        """Sleep until the reserved slot, confirming it; None when it must be reserved again."""
        last = reply
        # The slot is ``wait`` after the script ran, somewhere between sending and the
        # answer: wake at the earliest; confirm says if it is still ahead.
        pending, sleep = reply.wait > 0, reply.wait - (reply.recv - reply.sent)
        while pending:
            if sleep > 0:
                await asyncio.sleep(sleep)
            try:
                last = await self._log.call("confirm", member)
            except BudgetUnavailable as exc:
                self._log.abandon(member)
                self._enter_degraded(exc)
                return None
            if last.status == "epoch":
                self._log.own.pop(member, None)
                self._on_epoch(last)
                return None
            if last.status in ("paused", "late", "missing"):
                # The script already dropped it: reserve afresh (after the pause).
                self._log.own.pop(member, None)
                return None
            pending, sleep = last.status == "wait", last.wait
        return last

    # --- local fallback ---------------------------------------------------------------------

    async def _acquire_local(self) -> bool:
        if self._mode == "degraded":
            self._log_degraded()
            if not self._probing and self._clock() >= self._probe_at:
                await self._probe()
                return False
        if not await self._local_grant():
            return False
        member = self._log.member()
        if self._mode == "degraded":
            now = self._clock()
            self._log.own[member] = (now, now)
            self._log.unsynced.add(member)
            return True
        return await self._claim(member)

    async def _claim(self, member: str) -> bool:
        """Recovering: Redis must hold the grant before it is sent."""
        reply = await self._ask("claim", member)
        if reply is None:
            return False
        if reply.status == "shared":
            self._enter_shared()
            return False
        if reply.status == "paused":
            if self._local is not None:
                await self._local.pause(reply.paused)
            return False
        if reply.status == "full":
            # The shared log is at the cap: wait until its oldest grant leaves.
            await asyncio.sleep(reply.wait)
            return False
        if reply.recv - reply.sent > self._log.late:
            self._log.releases.add(member)
            self._slow_reply()
            return False
        self._log.own[member] = (self._clock(), reply.recv)
        return True

    async def _local_grant(self) -> bool:
        """A grant from the local log, or False when the mode changes while waiting."""
        local = self._local
        if local is None or not await local.acquire_unless(self._switched):
            return False
        # Granted as the mode changed: that log is gone, so the grant is not used.
        return local is self._local

    async def _probe(self) -> None:
        self._probing = True
        try:
            reply = await self._ask("sync", returning=True)
        finally:
            self._probing = False
        if reply is None:
            self._probe_at = self._clock() + self._probe_interval
        elif reply.recover > 0:
            self._enter_local("recovering", reply)
        else:
            self._enter_shared()

    # --- mode changes -----------------------------------------------------------------------

    async def _ask(self, op: str, member: str = "", *, returning: bool = False) -> Reply | None:
        """A script call; None when Redis is out of reach or has a new epoch (mode changed)."""
        try:
            reply = await self._log.call(op, member, returning=returning)
        except BudgetUnavailable as exc:
            self._enter_degraded(exc)
            return None
        if reply.status == "epoch":
            self._on_epoch(reply)
            return None
        return reply

    def _enter_degraded(self, exc: BaseException | str) -> None:
        if self._mode == "shared":
            self._build_local()
        elif self._mode == "recovering":
            self._reshare()
        if self._mode != "degraded":
            self._mode = "degraded"
            self.degraded_since = self._clock()
            self._probe_at = self._clock() + self._probe_interval
            self._degraded_log.reset()
            self._degraded_reason = str(exc) or type(exc).__name__
            self._log_degraded()

    def _enter_local(self, mode: Mode, reply: Reply | None) -> None:
        if self._mode == "shared":
            self._build_local()
        if self._mode != mode:
            log.info(
                "budget recovering: local budget until the shared log is complete",
                budget=self._limit.name,
                local_cap=self.local_cap,
                seconds=round(reply.recover, 3) if reply else None,
            )
        self._mode = mode

    def _enter_shared(self) -> None:
        if self._mode != "shared":
            log.info("budget back on the shared redis budget", budget=self._limit.name)
        self._mode = "shared"
        self._local = None
        self.degraded_since = None
        self._switched.set()
        self._switched = asyncio.Event()

    def _on_epoch(self, reply: Reply) -> None:
        """Redis lost the log: write back our own grants of the last window, recover."""
        if reply.epoch == self._log.epoch:
            return  # another caller already took this one in
        log.warning(
            "budget: redis lost the shared log; re-seeding and recovering",
            budget=self._limit.name,
            epoch=reply.epoch,
        )
        self._log.epoch = reply.epoch
        self._log.resend_own()
        self._enter_local("recovering", None)

    def _build_local(self) -> None:
        """Local log: our share of what the last shared window left, plus our own since."""
        replicas = max(1, self._replicas())
        self.local_cap = max(1, self._limit.cap // replicas)
        local = Fallback(self._limit, cap=self.local_cap, clock=self._clock)
        shared = self._log
        local.seed(
            seed_times(shared.snapshot, shared.window, replicas, shared.own.values(), self._clock())
        )
        local.hold_until(shared.paused_until)
        self._local = local

    def _reshare(self) -> None:
        """The local share as the replica count stands now, not when the log was built.

        While recovering, the script refuses claims beyond the cap, whatever each
        local share says; replicas starting together each saw too few others when
        they built theirs. Once Redis is gone nothing refuses them, so each must
        hold to cap / replicas from here on.
        """
        self.local_cap = max(1, self._limit.cap // max(1, self._replicas()))
        if self._local is not None:
            self._local.cap = self.local_cap

    def _slow_reply(self) -> None:
        # Not a reason to leave the shared log: a replica granting locally while the
        # others still reserve in Redis is exactly the split that can break the cap.
        self.stale_grants += 1

    def _log_degraded(self) -> None:
        if not self._degraded_log.due():
            return
        now = self._clock()
        log.warning(
            "budget degraded: redis unreachable, using a local budget",
            budget=self._limit.name,
            local_cap=self.local_cap,
            seconds=round(now - (self.degraded_since or now), 1),
            error=self._degraded_reason,
        )


def budgets_for(
    config: Config,
    client: RedisClient,
    replica: str,
    replicas: Callable[[], int] = lambda: 1,
    **options: Any,
) -> dict[str, Budget]:
    """One shared budget per ``limits:`` entry, all on one Redis client."""
    return {
        name: RedisBudget(client, limit, replica=replica, replicas=replicas, **options)
        for name, limit in config.limits.items()
    }
