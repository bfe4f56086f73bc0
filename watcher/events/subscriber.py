"""Streaming pull from each Pub/Sub subscription, handed to the event loop.

Google's client (``google-cloud-pubsub``) keeps one streaming pull per
subscription open, holds at most ``EVENT_FLOW_MESSAGES`` messages at once
(flow control), and extends their leases until each is acked or nacked, so a
slow check never lets a message be redelivered behind its back. It
authenticates with Application Default Credentials, or talks to the emulator
named by ``PUBSUB_EMULATOR_HOST``, exactly as Google's libraries do.

Its callbacks run in the client's own threads; each message crosses to the
event loop as a :class:`Delivery` whose ``ack``/``nack`` may be called from
there (the client's are thread-safe). A stream that fails (a subscription
deleted, credentials refused, the network down) is opened again with
back-off; ``events_subscriber_connected{subscription}`` says which are open.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from watcher.engine.supervise import sleep_until
from watcher.logs import Occasionally
from watcher.metrics import Metrics
from watcher.tuning import (
    EVENT_FLOW_MESSAGES,
    EVENT_LEASE_EXTENSION,
    EVENT_RECONNECT_FIRST,
    EVENT_RECONNECT_MAX,
)

log = structlog.get_logger()


@dataclass(frozen=True)
class Delivery:
    """One message as delivered: its data, when it was published (Unix time), and how
    to settle it (``ack``: done with; ``nack``: deliver it again, maybe elsewhere)."""

    subscription: str
    message_id: str
    data: bytes
    published: float
    ack: Callable[[], None]
    nack: Callable[[], None]


class Subscriber:
    """Every subscription's stream, delivering each message to ``deliver`` on the loop."""

    def __init__(
        self,
        subscriptions: tuple[str, ...],
        metrics: Metrics,
        deliver: Callable[[Delivery], None],
    ) -> None:
        self._subscriptions = subscriptions
        self._metrics = metrics
        self._deliver = deliver
        self._problems = {name: Occasionally() for name in subscriptions}

    async def run(self, stop: asyncio.Event) -> None:
        """Keep every subscription's stream open until ``stop``."""
        # Imported here: the client pulls in gRPC, which a daemon without events
        # (and every one-shot command) need not load.
        from google.cloud import pubsub_v1

        client = await asyncio.to_thread(pubsub_v1.SubscriberClient)
        try:
            async with asyncio.TaskGroup() as group:
                for subscription in self._subscriptions:
                    group.create_task(self._stream(client, subscription, stop))
        finally:
            await asyncio.to_thread(client.close)

    async def _stream(self, client: Any, subscription: str, stop: asyncio.Event) -> None:
        from google.cloud import pubsub_v1

        loop = asyncio.get_running_loop()
        connected = self._metrics.events_connected.labels(subscription)
        delay = EVENT_RECONNECT_FIRST

        def callback(message: Any) -> None:
            # In the client's thread: hand over, never block it.
            delivery = Delivery(
                subscription=subscription,
                message_id=str(message.message_id),
                data=bytes(message.data),
                published=message.publish_time.timestamp(),
                ack=message.ack,
                nack=message.nack,
            )
            loop.call_soon_threadsafe(self._deliver, delivery)

        while not stop.is_set():
            future = client.subscribe(
                subscription,
                callback,
                flow_control=pubsub_v1.types.FlowControl(
                    max_messages=EVENT_FLOW_MESSAGES,
                    max_duration_per_lease_extension=EVENT_LEASE_EXTENSION,
                ),
            )
            connected.set(1)
            log.info("event subscription open", subscription=subscription)
            began = loop.time()
            ended = asyncio.ensure_future(asyncio.wrap_future(future))
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait([ended, stopping], return_when=asyncio.FIRST_COMPLETED)
            finally:
                connected.set(0)
                stopping.cancel()
                if not future.done():
                    # Closing the stream joins the client's threads: not on the loop.
                    await asyncio.to_thread(_cancel, future)
            if stop.is_set():
                return
            problem = ended.exception() if ended.done() and not ended.cancelled() else None
            if self._problems[subscription].due():
                log.warning(
                    "event subscription failed; reconnecting",
                    subscription=subscription,
                    reason=str(problem) or type(problem).__name__,
                    seconds=delay,
                )
            if loop.time() - began > EVENT_RECONNECT_MAX:
                delay = EVENT_RECONNECT_FIRST  # it ran a good while: not a failure in a row
            await sleep_until(loop.time() + delay, stop)
            delay = min(delay * 2, EVENT_RECONNECT_MAX)


def _cancel(future: concurrent.futures.Future[Any]) -> None:
    future.cancel()
    # Cancelled, failed or slow to close: closed (or closing) either way.
    with contextlib.suppress(BaseException):
        future.result(timeout=5)
