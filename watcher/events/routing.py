"""A registry event, from the replica that received it to the check by the image's owner.

Every message goes through :meth:`EventRouter.deliver`:

- malformed: logged (at most once a minute), counted, acked: it can never be read;
- an image no block follows: counted as ignored and acked at once, costing no request;
- an image whose shard this replica runs: :meth:`Scheduler.check_event` checks it now,
  through the normal budgeted look-up, hints for one image sharing one check;
- otherwise (several replicas, with Redis) it is handed to the shard's owner on the
  shard's list in Redis; the owner takes its shards' lists every ``EVENT_POLL``,
  checks, and answers on the receiver's reply list.

The message is acked only once its check was decided and every update it led to
was pushed (or dropped, or found not needed): a replica dying with messages in hand
leaves them unacked, and Pub/Sub redelivers them, maybe to another replica, which
routes them to the shard's owner of that moment. A hint no owner answers within
``EVENT_HANDOFF_TIMEOUT`` (the owner died holding it, Redis lost it) is nacked for
redelivery; a check that failed (a 429, the registry down) is nacked after
``EVENT_RETRY_DELAY``. Duplicates and reordering cost at most a look-up: a check
asks the registry what is true now, and writes only what differs.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Literal

import structlog
from redis.exceptions import RedisError

from watcher import keys
from watcher.cluster.connection import RedisClient, lua_script
from watcher.cluster.shards import shard_of
from watcher.engine.scheduler import Scheduler
from watcher.engine.supervise import Supervisor, sleep_until
from watcher.errors import InvalidReference
from watcher.events import coverage, messages
from watcher.events.subscriber import Delivery
from watcher.logs import Occasionally
from watcher.metrics import Metrics
from watcher.references import ImageName, canonical_name
from watcher.tuning import (
    EVENT_HANDOFF_TIMEOUT,
    EVENT_KEY_TTL,
    EVENT_POLL,
    EVENT_RETRY_DELAY,
)

log = structlog.get_logger()

_HANDOFF = lua_script(__package__, "handoff.lua")

# done: decided and landed (ack); failed: the check failed (retry later);
# elsewhere: this replica does not run the image's shard (any more).
Outcome = Literal["done", "failed", "elsewhere"]


class EventRouter:
    """One replica's share of the registry events: what it receives, and what it owns."""

    def __init__(
        self,
        scheduler: Callable[[], Scheduler | None],
        metrics: Metrics,
        supervisor: Supervisor,
        stop: asyncio.Event,
        *,
        client: RedisClient | None = None,
        replica_id: str = "local",
        shards: int = 1,
    ) -> None:
        self._scheduler = scheduler
        self._metrics = metrics
        self._supervisor = supervisor
        self._stop = stop
        self._client = client
        self._replica = replica_id
        self._shard_count = shards
        # Projects whose events arrived: their images are covered too.
        self.projects: set[str] = set()
        self._malformed_log = Occasionally()
        self._redis_log = Occasionally()
        # Hints handed to another replica, by id: resolved by its answer.
        self._handed: dict[str, asyncio.Future[Outcome]] = {}
        self._handoff = client.register_script(_HANDOFF) if client is not None else None

    # --- what this replica receives ----------------------------------------------------

    def deliver(self, delivery: Delivery) -> None:
        """A message from a subscription (on the event loop): handle it in a task of its own."""
        self._metrics.events_received.labels(delivery.subscription).inc()
        self._supervisor.spawn(
            f"event {delivery.message_id}", partial(self._handle, delivery), on_failure="end"
        )

    async def _handle(self, delivery: Delivery) -> None:
        hint = messages.parse(delivery.data)
        if isinstance(hint, messages.Malformed):
            self._metrics.events.labels("malformed").inc()
            if self._malformed_log.due():
                log.warning(
                    "event malformed; acked",
                    subscription=delivery.subscription,
                    message=delivery.message_id,
                    reason=hint.reason,
                )
            delivery.ack()
            return
        scheduler = await self._ready()
        if not scheduler.follows(hint.image):
            self._metrics.events.labels("ignored").inc()
            delivery.ack()
            return
        self.projects.add(coverage.project(hint.image))
        outcome: Outcome = "elsewhere"
        if scheduler.owns(hint.image) or self._client is None:
            outcome = await self.apply(hint.image, delivery.published)
        if outcome == "elsewhere":
            outcome = await self._hand_off(hint.image, delivery.published)
        if outcome == "done":
            delivery.ack()
            return
        # Not decided: Pub/Sub delivers it again (after a pause, so that a registry
        # in trouble is not asked in a loop), to whichever replica it chooses.
        await sleep_until(asyncio.get_running_loop().time() + EVENT_RETRY_DELAY, self._stop)
        delivery.nack()

    async def _ready(self) -> Scheduler:
        """The scheduler, once it has a watch set (before, every image reads as unknown)."""
        while True:
            scheduler = self._scheduler()
            if scheduler is not None:
                await scheduler.watch_ready()
                return scheduler
            await asyncio.sleep(EVENT_POLL)

    # --- the owner's check ---------------------------------------------------------------

    async def apply(self, image: ImageName, published: float | None) -> Outcome:
        """Check ``image`` now on this replica and wait until what it decided has landed."""
        scheduler = await self._ready()
        task = scheduler.check_event(image, published)
        if task is None:
            if self._client is not None and not scheduler.owns(image):
                return "elsewhere"
            return "done"  # no longer followed: nothing to check
        # Shielded: the check is shared by every hint for the image.
        decided = await asyncio.shield(task)
        if decided is not None and decided.missing:
            # Decided: nothing there to follow until a push, which sends its own event.
            self._metrics.events.labels("acted").inc()
            return "done"
        if decided is None or decided.failed is not None:
            return "failed"
        self._metrics.events.labels("acted").inc()
        results = await asyncio.gather(*decided.landings, return_exceptions=True)
        if any(not isinstance(result, bool) for result in results):
            return "failed"  # stopping before it landed: the message comes again
        if any(results) and published is not None:
            self._metrics.event_to_commit.observe(max(0.0, time.time() - published))
        return "done"

    # --- handing a hint to the owner through Redis ----------------------------------------

    async def _hand_off(self, image: ImageName, published: float | None) -> Outcome:
        if self._client is None:
            return "failed"
        hint_id = uuid.uuid4().hex
        hint = json.dumps(
            {"id": hint_id, "image": str(image), "published": published, "reply": self._replica}
        )
        answer = self._handed[hint_id] = asyncio.get_running_loop().create_future()
        try:
            await self._push(keys.event_hints(shard_of(image, self._shard_count)), hint)
            return await asyncio.wait_for(asyncio.shield(answer), EVENT_HANDOFF_TIMEOUT)
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)
            return "failed"
        except TimeoutError:
            log.warning("event not answered by the shard's owner; redelivering", image=str(image))
            return "failed"
        finally:
            self._handed.pop(hint_id, None)

    async def _push(self, key: str, entry: str) -> None:
        assert self._client is not None
        await self._client.rpush(key, entry)
        await self._client.expire(key, int(EVENT_KEY_TTL))

    def _redis_failed(self, exc: BaseException) -> None:
        if self._redis_log.due():
            log.warning("event hand-off: redis unavailable", reason=str(exc))

    async def run(self) -> None:
        """With Redis: take the hints for the shards this replica runs, and the answers
        to the hints it handed on, every ``EVENT_POLL``."""
        if self._handoff is None:
            return
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            scheduler = self._scheduler()
            owned = sorted(scheduler.shards()) if scheduler is not None else []
            names = [keys.event_replies(self._replica)]
            names += [keys.event_hints(shard) for shard in owned]
            try:
                taken = await self._handoff(keys=names, args=[])
            except (RedisError, OSError) as exc:
                self._redis_failed(exc)
                taken = []
            for index, raw in zip(taken[::2], taken[1::2], strict=True):
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                if int(index) == 1:
                    self._answered(text)
                else:
                    self._supervisor.spawn(
                        "event hint", partial(self._owner_check, text), on_failure="end"
                    )
            await sleep_until(loop.time() + EVENT_POLL, self._stop)

    def _answered(self, text: str) -> None:
        try:
            answer = json.loads(text)
            waiting = self._handed.get(str(answer["id"]))
            outcome: Outcome = "done" if answer["outcome"] == "done" else "failed"
        except (ValueError, KeyError, TypeError):
            return
        if waiting is not None and not waiting.done():
            waiting.set_result(outcome)

    async def _owner_check(self, text: str) -> None:
        """A hint another replica handed to a shard of ours: check, then answer."""
        try:
            hint = json.loads(text)
            image = canonical_name(str(hint["image"]))
            published = hint.get("published")
            reply = str(hint["reply"])
            hint_id = str(hint["id"])
        except (ValueError, KeyError, TypeError, InvalidReference):
            return  # not ours to read: the receiver times out and redelivers
        self.projects.add(coverage.project(image))
        outcome = await self.apply(image, float(published) if published is not None else None)
        log.info("event checked for another replica", image=str(image), outcome=outcome)
        try:
            if outcome == "elsewhere":
                # The shard changed hands since: its new owner takes it from the list.
                await self._push(keys.event_hints(shard_of(image, self._shard_count)), text)
                return
            await self._push(
                keys.event_replies(reply), json.dumps({"id": hint_id, "outcome": outcome})
            )
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)
