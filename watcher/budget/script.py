"""One replica's side of the shared budget log: calls to ``shared.lua`` and their replies.

The protocol is described in :mod:`watcher.budget.shared`. Here: what every
call carries (this replica's grants Redis has not heard of, the reservations
it gave up, a pause it has not delivered yet), the layout of the reply, and
the bookkeeping of this replica's own grants that makes re-seeding possible.
Any Redis error, or no answer within ``timeout``, is :class:`BudgetUnavailable`.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from watcher import keys
from watcher.cluster.connection import RedisClient, lua_script
from watcher.config import Limit
from watcher.errors import BudgetUnavailable
from watcher.tuning import BUDGET_BUCKETS as BUCKETS
from watcher.tuning import SEND_MARGIN

_SCRIPT = lua_script(__package__, "shared.lua")


@dataclass(frozen=True)
class Reply:
    """The script's answer, times in seconds on the local clock's scale."""

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


def parse_reply(raw: Sequence[Any], sent: float, recv: float) -> Reply:
    """The script's reply list (status, wait, epoch, recover, paused, hist..., over, last)."""
    status = _text(raw[0])
    if status == "epoch":
        return Reply(status, 0.0, _text(raw[2]), 0.0, 0.0, (), 0, 0.0, sent, recv)
    return Reply(
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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SharedLog:
    """The calls of one replica to one budget's log, and what it must tell Redis next."""

    def __init__(
        self,
        client: RedisClient,
        limit: Limit,
        *,
        replica: str,
        clock: Callable[[], float],
        timeout: float,
        prefix: str = keys.ROOT,
    ) -> None:
        self._limit = limit
        self._clock = clock
        self._timeout = timeout
        self.window = limit.per + SEND_MARGIN
        # Half the margin for waking late, half for the answer's way back and the send.
        self.late = SEND_MARGIN / 2
        self.keys = keys.budget(limit.name, prefix)
        self._script = client.register_script(_SCRIPT)
        self._ids = itertools.count()
        self._token = f"{replica}:{secrets.token_hex(3)}"
        self.epoch = ""
        # member -> (local time it was or will be sent, local time we learnt of it)
        self.own: dict[str, tuple[float, float]] = {}
        self.unsynced: set[str] = set()
        self.releases: set[str] = set()
        self.pending_pause = 0.0  # local clock; a pause Redis has not heard of yet
        self.paused_until = 0.0  # local clock, as last heard
        self.snapshot: Reply | None = None  # the latest reply, for seeding a fallback
        self.used = 0  # grants in the shared window, as last heard
        self.rtt_max = 0.0
        self._pruned_at = -math.inf

    def member(self) -> str:
        """A new grant's id, unique across replicas and restarts."""
        return f"{self._token}:{next(self._ids):x}"

    def abandon(self, member: str) -> None:
        """Give a reservation back: it is released from the log with the next call."""
        self.own.pop(member, None)
        self.releases.add(member)

    def resend_own(self) -> None:
        """A new epoch: every grant of ours already sent goes back into the log."""
        now = self._clock()
        self.unsynced.update(m for m, (at, _) in self.own.items() if at <= now)

    async def call(self, op: str, member: str = "", *, returning: bool = False) -> Reply:
        sent = self._clock()
        self._prune(sent)
        pushed, seeds = self._seeds(sent)
        releases = list(self.releases)
        pending = self.pending_pause
        pause_ms = max(0.0, pending - sent) * 1000
        args: list[str | int] = [
            op,
            self._limit.cap,
            f"{self.window * 1000:.3f}",
            f"{self.late * 1000:.3f}",
            self.epoch,
            member,
            f"{pause_ms:.3f}",
            1 if returning else 0,
            BUCKETS,
            len(pushed),
            *seeds,
            len(releases),
            *releases,
        ]
        raw = await self._run(args)
        reply = parse_reply(raw, sent, self._clock())
        self.rtt_max = max(self.rtt_max, reply.recv - sent)
        if reply.status == "epoch":
            return reply
        if not self.epoch:
            self.epoch = reply.epoch
        self.unsynced.difference_update(pushed)
        self.releases.difference_update(releases)
        if pause_ms > 0 and self.pending_pause == pending:
            self.pending_pause = 0.0
        self.paused_until = max(self.paused_until, reply.recv + reply.paused)
        if self.snapshot is None or reply.recv >= self.snapshot.recv:
            self.snapshot = reply
        self.used = sum(reply.hist[:BUCKETS])
        return reply

    def _seeds(self, now: float) -> tuple[list[str], list[str]]:
        """Our grants Redis has yet to hear of: (members, flat member/age-in-ms pairs)."""
        pushed: list[str] = []
        seeds: list[str] = []
        for m in list(self.unsynced):
            entry = self.own.get(m)
            if entry is None or now - entry[0] >= self.window:
                self.unsynced.discard(m)
            elif entry[0] <= now:
                seeds += (m, f"{(now - entry[0]) * 1000:.3f}")
                pushed.append(m)
        return pushed, seeds

    async def _run(self, args: list[str | int]) -> Any:
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._script(keys=self.keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise_if_cancelled(task, cancelling)
            raise BudgetUnavailable(str(exc) or type(exc).__name__) from exc
        # The Redis client can turn our caller's cancellation into an error or an answer.
        raise_if_cancelled(task, cancelling)
        return raw

    def _prune(self, now: float) -> None:
        if now - self._pruned_at < 1.0:
            return
        self._pruned_at = now
        horizon = now - self.window - 1.0
        for member in [m for m, (at, _) in self.own.items() if at < horizon]:
            del self.own[member]


def raise_if_cancelled(task: asyncio.Task[Any] | None, before: int) -> None:
    """Raise CancelledError if ``task`` was cancelled since it counted ``before``.

    A timeout racing a cancellation (in the Redis client, or asyncio.timeout on
    3.11) can swallow it; the caller must still end.
    """
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
