"""The shared request budget in Redis: one cap for every shard of every replica.

Guarantee (DESIGN "The shared budget"): no window of ``per`` seconds sees more than
``limit.cap`` requests *sent* across all replicas drawing from one budget.

Keys (one hash tag, so the script runs on Redis Cluster / Memorystore)::

    iw:{budget:<name>}:log      sorted set: grant id -> grant time (ms on Redis TIME)
    iw:{budget:<name>}:pause    paused-until (ms), set by a 429 anywhere
    iw:{budget:<name>}:epoch    id of this log's life; a Redis that lost it lost the log
    iw:{budget:<name>}:recover  shared grants resume at this time (ms)

One Lua script (``register_script``, Redis ``TIME`` as the only clock) does everything:

- ``reserve``: a reservation log. The new grant's slot is the earliest time ``t`` at or after
  now and the pause end such that fewer than ``cap`` entries (reservations still ahead
  included) lie after ``t - W``, ``W = per + SEND_MARGIN``: every window holding ``t`` then
  holds at most ``cap``. Slots only grow as reservations are added, so waiting callers on
  every replica are served in arrival order (FIFO), and a slot given back is reused. It is
  written at once and its distance returned: the caller sleeps exactly that, then
  ``confirm``s (which refuses a slot the caller woke too late for, or one a pause has
  overtaken) and sends. Saturation uses every slot: ``cap`` per ``W``, 99.99 % of the
  cap at 10,000 / 10 min.
- ``pause``: paused-until becomes the later of the old and the new end, and reservations not
  yet due move back together (order and spacing kept, which keeps every window within the
  cap), so every replica stops granting.
- Every call carries this replica's grants Redis does not have yet (``seeds``, ZADD NX by
  unique id, so repeating them is harmless) and reservations it gave up (``releases``), and
  returns a histogram of the log (``2 * BUCKETS`` buckets over ``(now - W, now + W]``) that
  the fallback below needs.

Redis unreachable (connection error, or no answer within ``timeout``; a ``DEBUG SLEEP``
is the same as a dead Redis): the replica switches to a local reservation log of
``floor(cap / replicas())`` (the replica count it last saw) and keeps sending. The local
log is seeded with the last histogram it saw, each entry weighing ``1 / replicas`` (every
replica may use its share of the room the old shared window leaves, never more), and with
its own grants since. Summed over replicas that keeps every window, including the ones
across the switch, within the cap. It probes Redis every ``probe_interval`` and logs once
a minute while degraded; ``degraded`` / ``mode`` expose the state for a metric.

Back to Redis: the log there may lack what other replicas sent meanwhile, so a returning
replica sets ``recover`` one window ahead, and a Redis that comes back empty (no epoch
key) starts its new epoch the same way. While recovering, every replica keeps its local
log and records each grant in Redis (``claim``) before sending; the script refuses claims
after ``recover`` and reservations before it, so once shared grants resume the log holds
everything sent in the last window. A replica that sees a new epoch first writes its own
grants of the last window back (re-seeding), so nothing it sent is forgotten. The first
window of a brand-new budget is a recovery too: an empty Redis cannot tell "new" from
"restarted". Claims are refused beyond the cap (``full``, with the wait until the oldest
entry leaves): replicas starting together each see too few others at first, and their
local shares alone could add up to more than the cap.

Known limits: a replica cut off from Redis while the others still reach it keeps its local
share while they use the rest of the log, so the cap can be exceeded by up to its share
until it returns (the headroom is there for that); grants made by other replicas in the
instant between this replica's last answer and the outage are not in its histogram.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from redis.exceptions import RedisError

from watcher import keys
from watcher.budget.local import Budget, LocalBudget
from watcher.cluster.connection import RedisClient, lua_script
from watcher.config import Config, Limit
from watcher.errors import BudgetUnavailable
from watcher.tuning import BUDGET_BUCKETS as BUCKETS
from watcher.tuning import PROBLEM_LOG_EVERY, SEND_MARGIN

log = structlog.get_logger(__name__)

Mode = Literal["shared", "degraded", "recovering"]


_SCRIPT = lua_script(__package__, "shared.lua")


@dataclass(frozen=True)
class _Reply:
    status: str
    wait: float  # seconds
    epoch: str
    recover: float  # seconds until shared grants resume
    paused: float  # seconds of pause left
    hist: tuple[int, ...]  # counts over (now - W, now + W], 2 * BUCKETS buckets
    over: int  # entries beyond now + W
    over_last: float  # seconds from now to the latest of those
    sent: float  # local clock when the call left
    recv: float  # local clock when the answer arrived


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Fallback(LocalBudget):
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

    async def acquire(self) -> float:
        started = self._clock()
        async with self._lock:
            while (wait := self.wait_time(self._clock())) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            now = self._clock()
            bisect.insort(self._grants, now)
            self.granted += 1
            return now - started


class RedisBudget:
    """A :class:`~watcher.budget.Budget` shared through Redis by every replica."""

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
        self._replica = replica
        self._replicas = replicas
        self._clock = clock
        self._timeout = timeout
        self._probe_interval = probe_interval
        self._window = limit.per + SEND_MARGIN
        # Half the margin for waking late, half for the answer's way back and the send.
        self._late = SEND_MARGIN / 2
        self.keys = keys.budget(limit.name, prefix)
        self._script = client.register_script(_SCRIPT)
        self._ids = itertools.count()
        self._token = f"{replica}:{secrets.token_hex(3)}"
        self._epoch = ""
        self._mode: Mode = "shared"
        self._local: _Fallback | None = None
        self._switched = asyncio.Event()
        self._snapshot: _Reply | None = None
        # member -> (local time it was or will be sent, local time we learnt of it)
        self._own: dict[str, tuple[float, float]] = {}
        self._unsynced: set[str] = set()
        self._releases: set[str] = set()
        self._pending_pause = 0.0  # local clock; a pause Redis has not heard of yet
        self._paused_until = 0.0  # local clock, as last heard
        self._probe_at = 0.0
        self._probing = False
        self._logged_at = -math.inf
        self._pruned_at = -math.inf
        self._used = 0
        self.granted = 0
        self.stale_grants = 0  # grants dropped: the answer came back too late to use
        self.rtt_max = 0.0
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

    def used(self) -> int:
        """Grants in the current window: the shared log's, or the local log's."""
        if self._local is not None:
            return self._local.used()
        return self._used

    def pause_remaining(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    # --- the Budget protocol ---------------------------------------------------------------

    async def acquire(self) -> float:
        started = self._clock()
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        while not await (
            self._acquire_shared() if self._mode == "shared" else self._acquire_local()
        ):
            if task is not None and task.cancelling() > cancelling:
                # A cancellation swallowed on the way (a timeout racing it, in the Redis
                # client or asyncio.timeout on 3.11) must still end this call.
                raise asyncio.CancelledError
        self.granted += 1
        return self._clock() - started

    async def pause(self, seconds: float) -> None:
        if seconds <= 0:
            return
        until = self._clock() + seconds
        self._paused_until = max(self._paused_until, until)
        if self._local is not None:
            await self._local.pause(seconds)
        self._pending_pause = max(self._pending_pause, until)
        try:
            reply = await self._call("pause")
        except BudgetUnavailable as exc:
            self.paused_seconds += seconds
            self._enter_degraded(exc)
            return
        if reply.status == "epoch":
            self.paused_seconds += seconds
            self._on_epoch(reply)  # the pause stays pending for the next call
            return
        self.paused_seconds += reply.wait

    # --- shared ----------------------------------------------------------------------------

    async def _acquire_shared(self) -> bool:
        member = self._member()
        try:
            reply = await self._call("reserve", member)
        except BudgetUnavailable as exc:
            self._enter_degraded(exc)
            return False
        if reply.status == "epoch":
            self._on_epoch(reply)
            return False
        if reply.status == "recovering":
            self._enter_local("recovering", reply)
            return False
        self._own[member] = (reply.recv + reply.wait, reply.recv)
        last = reply
        # The slot is ``wait`` after the script ran, somewhere between sending and the
        # answer: wake at the earliest; confirm says if it is still ahead.
        pending, sleep = reply.wait > 0, reply.wait - (reply.recv - reply.sent)
        try:
            while pending:
                if sleep > 0:
                    await asyncio.sleep(sleep)
                try:
                    last = await self._call("confirm", member)
                except BudgetUnavailable as exc:
                    self._abandon(member)
                    self._enter_degraded(exc)
                    return False
                if last.status == "epoch":
                    self._own.pop(member, None)
                    self._on_epoch(last)
                    return False
                if last.status in ("paused", "late", "missing"):
                    # The script already dropped it: reserve afresh (after the pause).
                    self._own.pop(member, None)
                    return False
                pending, sleep = last.status == "wait", last.wait
        except asyncio.CancelledError:
            self._abandon(member)
            raise
        if self._mode != "shared":
            # Another caller switched to the fallback meanwhile: its log does not
            # count this grant, so it must not be used.
            self._abandon(member)
            return False
        if last.recv - last.sent > self._late:
            self._abandon(member)
            self._slow_reply()
            return False
        self._own[member] = (self._clock(), last.recv)
        return True

    # --- local fallback ---------------------------------------------------------------------

    async def _acquire_local(self) -> bool:
        if self._mode == "degraded":
            self._log_degraded()
            if not self._probing and self._clock() >= self._probe_at:
                await self._probe()
                return False
        if not await self._local_grant():
            return False
        member = self._member()
        if self._mode == "degraded":
            now = self._clock()
            self._own[member] = (now, now)
            self._unsynced.add(member)
            return True
        # Recovering: Redis must hold the grant before it is sent.
        try:
            reply = await self._call("claim", member)
        except BudgetUnavailable as exc:
            self._enter_degraded(exc)
            return False
        if reply.status == "epoch":
            self._on_epoch(reply)
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
        if reply.recv - reply.sent > self._late:
            self._releases.add(member)
            self._slow_reply()
            return False
        self._own[member] = (self._clock(), reply.recv)
        return True

    async def _local_grant(self) -> bool:
        """A grant from the local log, or False when the mode changes while waiting."""
        local, switched = self._local, self._switched
        if local is None:
            return False
        grant = asyncio.ensure_future(local.acquire())
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
        # Granted as the mode changed: that log is gone, so the grant is not used.
        return local is self._local

    async def _probe(self) -> None:
        self._probing = True
        try:
            reply = await self._call("sync", returning=True)
        except BudgetUnavailable as exc:
            self._probe_at = self._clock() + self._probe_interval
            self._enter_degraded(exc)
            return
        finally:
            self._probing = False
        if reply.status == "epoch":
            self._on_epoch(reply)
        elif reply.recover > 0:
            self._enter_local("recovering", reply)
        else:
            self._enter_shared()

    # --- mode changes -----------------------------------------------------------------------

    def _enter_degraded(self, exc: BaseException | str) -> None:
        if self._mode == "shared":
            self._build_local()
        if self._mode != "degraded":
            self._mode = "degraded"
            self.degraded_since = self._clock()
            self._probe_at = self._clock() + self._probe_interval
            self._logged_at = -math.inf
            self._degraded_reason = str(exc) or type(exc).__name__
            self._log_degraded()

    def _enter_local(self, mode: Mode, reply: _Reply | None) -> None:
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

    def _on_epoch(self, reply: _Reply) -> None:
        """Redis lost the log: write back our own grants of the last window, recover."""
        if reply.epoch == self._epoch:
            return  # another caller already took this one in
        log.warning(
            "budget: redis lost the shared log; re-seeding and recovering",
            budget=self._limit.name,
            epoch=reply.epoch,
        )
        self._epoch = reply.epoch
        now = self._clock()
        self._unsynced.update(m for m, (at, _) in self._own.items() if at <= now)
        self._enter_local("recovering", None)

    def _build_local(self) -> None:
        """Local log: our share of what the last shared window left, plus our own since."""
        replicas = max(1, self._replicas())
        self.local_cap = max(1, self._limit.cap // replicas)
        local = _Fallback(self._limit, cap=self.local_cap, clock=self._clock)
        now = self._clock()
        snap = self._snapshot
        times: list[float] = []
        since = -math.inf
        if snap is not None:
            since = snap.sent
            width = self._window / BUCKETS
            points = [
                (snap.recv - self._window + (j + 1) * width, count)
                for j, count in enumerate(snap.hist)
            ]
            if snap.over:
                points.append((snap.recv + snap.over_last, snap.over))
            # Every suffix (entries still in a window) weighs 1/replicas, rounded up.
            suffix = placed = 0
            for at, count in reversed(points):
                suffix += count
                need = -(-suffix // replicas)
                times.extend([at] * (need - placed))
                placed = need
        times.extend(at for at, seen in self._own.values() if seen > since and at <= now)
        local.seed(times)
        local.hold_until(self._paused_until)
        self._local = local

    def _slow_reply(self) -> None:
        # Not a reason to leave the shared log: a replica granting locally while the
        # others still reserve in Redis is exactly the split that can break the cap.
        self.stale_grants += 1

    def _log_degraded(self) -> None:
        now = self._clock()
        if now - self._logged_at < PROBLEM_LOG_EVERY:
            return
        self._logged_at = now
        log.warning(
            "budget degraded: redis unreachable, using a local budget",
            budget=self._limit.name,
            local_cap=self.local_cap,
            seconds=round(now - (self.degraded_since or now), 1),
            error=self._degraded_reason,
        )

    # --- the script --------------------------------------------------------------------------

    def _member(self) -> str:
        return f"{self._token}:{next(self._ids):x}"

    def _abandon(self, member: str) -> None:
        self._own.pop(member, None)
        self._releases.add(member)

    async def _call(self, op: str, member: str = "", *, returning: bool = False) -> _Reply:
        sent = self._clock()
        self._prune(sent)
        seeds: list[str] = []
        pushed: list[str] = []
        for m in list(self._unsynced):
            entry = self._own.get(m)
            if entry is None or sent - entry[0] >= self._window:
                self._unsynced.discard(m)
            elif entry[0] <= sent:
                seeds += (m, f"{(sent - entry[0]) * 1000:.3f}")
                pushed.append(m)
        releases = list(self._releases)
        pending = self._pending_pause
        pause_ms = max(0.0, pending - sent) * 1000
        args: list[str | int] = [
            op,
            self._limit.cap,
            f"{self._window * 1000:.3f}",
            f"{self._late * 1000:.3f}",
            self._epoch,
            member,
            f"{pause_ms:.3f}",
            1 if returning else 0,
            BUCKETS,
            len(pushed),
            *seeds,
            len(releases),
            *releases,
        ]
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._script(keys=self.keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            _cancelled(task, cancelling)
            raise BudgetUnavailable(str(exc) or type(exc).__name__) from exc
        # The Redis client can turn our caller's cancellation into an error or an answer.
        _cancelled(task, cancelling)
        reply = self._parse(raw, sent, self._clock())
        self.rtt_max = max(self.rtt_max, reply.recv - sent)
        if reply.status == "epoch":
            return reply
        if not self._epoch:
            self._epoch = reply.epoch
        self._unsynced.difference_update(pushed)
        self._releases.difference_update(releases)
        if pause_ms > 0 and self._pending_pause == pending:
            self._pending_pause = 0.0
        self._paused_until = max(self._paused_until, reply.recv + reply.paused)
        if self._snapshot is None or reply.recv >= self._snapshot.recv:
            self._snapshot = reply
        self._used = sum(reply.hist[:BUCKETS])
        return reply

    def _parse(self, raw: Sequence[Any], sent: float, recv: float) -> _Reply:
        status = _text(raw[0])
        if status == "epoch":
            return _Reply(status, 0.0, _text(raw[2]), 0.0, 0.0, (), 0, 0.0, sent, recv)
        return _Reply(
            status=status,
            wait=float(_text(raw[1])) / 1000,
            epoch=_text(raw[2]),
            recover=float(_text(raw[3])) / 1000,
            paused=float(_text(raw[4])) / 1000,
            hist=tuple(int(x) for x in raw[5 : 5 + 2 * BUCKETS]),
            over=int(raw[5 + 2 * BUCKETS]),
            over_last=float(_text(raw[6 + 2 * BUCKETS])) / 1000,
            sent=sent,
            recv=recv,
        )

    def _prune(self, now: float) -> None:
        if now - self._pruned_at < 1.0:
            return
        self._pruned_at = now
        horizon = now - self._window - 1.0
        for member in [m for m, (at, _) in self._own.items() if at < horizon]:
            del self._own[member]


def _cancelled(task: asyncio.Task[Any] | None, before: int) -> None:
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError


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
