"""The readers of Service B: one per (topic, group) and one per broadcast topic.

A ``GroupPump`` owns one library ``Subscription`` and hands each delivery to one of the
group's connections (round robin among those whose filter matches and whose outbox has
room; acked at once if no connection's filter matches). It pulls from the broker only
while some connection has room. A ``BroadcastPump`` owns one ``Broadcast`` reader and
copies every message to every broadcast connection of the topic; a connection that
cannot take it is closed (4001) rather than slowing the others down.

Each pump retries with backoff while the broker is unreachable; its clients stay
connected and the pump resumes by itself. ``hub.Hub`` starts and closes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mqctl.config import Settings
from mqctl.core.broadcast import Broadcast
from mqctl.core.broker import Broker
from mqctl.core.errors import BrokerUnavailable, InvalidMessage, SubscriptionClosed
from mqctl.core.message import Message, decode
from mqctl.core.retry import RetryPolicy, retry_call
from mqctl.core.subscription import Delivery
from mqctl.services.delivery.connection import Connection
from mqctl.services.delivery.frames import TOO_SLOW, TOO_SLOW_REASON, dumps, frame_of, message_frame
from mqctl.services.delivery.metrics import DeliveryMetrics
from mqctl.services.delivery.settling import settle

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY = RetryPolicy(base_s=0.2, cap_s=5.0)
"""Backoff of a pump (or a catch-up) while the broker is unreachable."""
TICK_S = 1.0
"""How often a group pump looks for stalled connections."""
HISTORY_PAGE = 500


def consumer_name() -> str:
    """``<host>-<pid>-<short uuid>``: this pump's consumer name within its group."""
    host = re.sub(r"[^A-Za-z0-9._:@-]", "-", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


async def wait_for(event: asyncio.Event, timeout_s: float) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
    return event.is_set()


def _retrying(what: str) -> Callable[[Exception, float], None]:
    """An ``on_retry`` that logs why ``what`` failed and when it tries again."""

    def log_it(exc: Exception, delay: float) -> None:
        if isinstance(exc, BrokerUnavailable):
            log.warning("%s: the broker is unavailable (%s); retrying in %.1f s", what, exc, delay)
        else:
            log.exception("%s failed; retrying in %.1f s", what, delay, exc_info=exc)

    return log_it


class _Pump:
    """What both pumps share: their connections, their task and their retry loop."""

    def __init__(self, broker: Broker, settings: Settings, topic: str, metrics: DeliveryMetrics | None = None) -> None:
        self.broker = broker
        self.settings = settings
        self.topic = topic
        self.metrics = metrics
        self.users: set[Connection] = set()
        """Connections joined or joining; the pump closes when the last one leaves."""
        self.connections: list[Connection] = []
        """Connections that take messages."""
        self.opened = asyncio.Event()
        self.sleep: Callable[[float], Awaitable[object]] = asyncio.sleep
        """How the pump waits before it tries again (tests replace it)."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mqctl-pump-{self}")

    def attach(self, connection: Connection) -> None:
        self.connections.append(connection)

    def detach(self, connection: Connection) -> None:
        self.users.discard(connection)
        with contextlib.suppress(ValueError):
            self.connections.remove(connection)

    async def _run(self) -> None:
        with contextlib.suppress(SubscriptionClosed):  # closed between two reads: the pump is closing
            await retry_call(
                self._pump,
                policy=RETRY,
                deadline_s=None,
                should_retry=lambda exc: not isinstance(exc, SubscriptionClosed),
                on_retry=_retrying(f"The reader of {self}"),
                sleep=self.sleep,
            )

    async def _pump(self) -> None:
        raise NotImplementedError

    async def _close_reader(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Stop reading and hand back what was read and not delivered."""
        await self._close_reader()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])


class GroupPump(_Pump):
    """The one library subscription of a (topic, group) in this service instance."""

    def __init__(
        self, broker: Broker, settings: Settings, topic: str, group: str, metrics: DeliveryMetrics | None = None
    ) -> None:
        super().__init__(broker, settings, topic, metrics)
        self.group = group
        self._changed = asyncio.Event()
        self._next = 0  # round robin position
        self._watchdog: asyncio.Task[None] | None = None
        self._subscription = broker.subscribe(
            topic,
            group=group,
            consumer=consumer_name(),
            poll_interval=settings.poll_interval_s,
            ack_timeout=settings.ack_timeout_s,
            max_attempts=settings.max_attempts,
            batch=100,
        )
        if metrics is not None:
            self._subscription.on_poll = metrics.poll_observer("group")
            self._subscription.on_dead_letter = metrics.dead_letter_counter(topic, group)

    def __str__(self) -> str:
        return f"group {self.group!r} of {self.topic!r}"

    def start(self) -> None:
        super().start()
        self._watchdog = asyncio.create_task(self._watch(), name=f"mqctl-watchdog-{self}")

    async def _watch(self) -> None:
        # Stalls matter even while the pump has other connections to serve.
        while True:
            await asyncio.sleep(TICK_S)
            self._close_stalled()

    def attach(self, connection: Connection) -> None:
        connection.wake = self._changed.set
        super().attach(connection)
        self._changed.set()

    def detach(self, connection: Connection) -> None:
        super().detach(connection)
        self._changed.set()

    async def _pump(self) -> None:
        if not self.opened.is_set():
            # Created now rather than on the first read, so nothing published after the
            # client is told "subscribed" is missed by a new group.
            await self.broker.create_group(self.topic, self.group, from_start=False)
            self.opened.set()
        subscription = self._subscription
        while True:
            await self._until_room()
            try:
                delivery: Delivery | None = await anext(subscription)
            except StopAsyncIteration:
                return
            # What that read brought is handed out without an await while connections have room.
            while delivery is not None:
                taker = self._place(delivery)
                if taker is None:
                    await self._dispatch(delivery)
                    break
                if not taker.has_room():
                    break
                delivery = subscription.ready()

    async def _until_room(self) -> None:
        while True:
            self._changed.clear()
            if any(c.has_room() for c in self.connections):
                return
            await wait_for(self._changed, TICK_S)

    def _place(self, delivery: Delivery) -> Connection | None:
        """Push ``delivery`` to the next connection (round robin) whose filter takes it and whose
        outbox has room, and return that connection; None if none could take it now."""
        connections = self.connections
        count = len(connections)
        for step in range(count):
            position = (self._next + step) % count
            connection = connections[position]
            if connection.closing or not connection.accepts(delivery.message) or not connection.has_room():
                continue
            self._next = position + 1
            if delivery.attempt > 1:  # a redelivery supersedes the copy another client sat on
                for other in connections:
                    if other is not connection:
                        other.unacked.pop(delivery.id, None)
            connection.push(frame_of(delivery), delivery)
            return connection
        return None

    async def _dispatch(self, delivery: Delivery) -> None:
        """Hand out a delivery no connection could take at once: wait for room, ack it if no
        connection's filter takes it, or leave it (the pump is closing: it is handed back)."""
        while True:
            self._changed.clear()
            if self._place(delivery) is not None:
                return
            live = [c for c in self.connections if not c.closing]
            if not live:
                return  # the pump is closing: the subscription hands the delivery back
            if not any(c.accepts(delivery.message) for c in live):
                await settle(delivery.ack, "acknowledge (filtered out)", delivery)
                return
            await wait_for(self._changed, TICK_S)

    def _close_stalled(self) -> None:
        now = time.monotonic()
        for connection in self.connections:
            if connection.stalled(now):
                log.info("Closing a slow client of %s: its send buffer stayed full", self)
                connection.close(TOO_SLOW, TOO_SLOW_REASON)

    async def _close_reader(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self._subscription.aclose()


class BroadcastPump(_Pump):
    """The one broadcast reader of a topic in this service instance."""

    def __init__(self, broker: Broker, settings: Settings, topic: str, metrics: DeliveryMetrics | None = None) -> None:
        super().__init__(broker, settings, topic, metrics)
        self._reader: Broadcast | None = None

    def __str__(self) -> str:
        return f"broadcast of {self.topic!r}"

    async def _pump(self) -> None:
        if self._reader is None:
            reader = self.broker.broadcast(self.topic, poll_interval=self.settings.poll_interval_s)
            await reader.__aenter__()  # fixes "now": a client told "subscribed" misses nothing after it
            if self.metrics is not None:
                reader.on_poll = self.metrics.poll_observer("broadcast")
            self._reader = reader
            self.opened.set()
        async for entry_id, message in self._reader:
            self._fan_out(entry_id, message, self._reader.last_id)

    def _fan_out(self, entry_id: str, message: Message, position: str | None) -> None:
        text: str | None = None
        for connection in self.connections:
            if connection.closing or not connection.accepts(message):
                continue
            if text is None:
                text = message_frame(entry_id, message, attempt=1, topic=self.topic, position=position)
            if connection.held is not None:
                connection.held.append((entry_id, text))
                if len(connection.held) <= connection.capacity:
                    continue
            elif connection.push(text, message=True):
                continue
            log.info("Closing a slow broadcast client of %r: its send buffer is full", self.topic)
            connection.close(TOO_SLOW, TOO_SLOW_REASON)

    async def resume(self, connection: Connection, last_id: str) -> None:
        """Send ``connection`` what it missed after ``last_id``, then the live messages.

        It joins the live fan-out first (frames held back), reads the retained history,
        then releases the held frames the history did not cover: no gap, no duplicate.
        """
        connection.held = []
        self.attach(connection)
        gap = await self._patiently(lambda: self.broker.history_gap(self.topic, last_id), connection)
        if gap is not None:
            detail, first_id = gap
            connection.push(dumps({"event": "history_lost", "detail": detail, "first_id": first_id}), force=True)
        history = await self._patiently(lambda: self.broker.backend.broadcast_reader(self.topic, last_id), connection)
        position = history.position
        try:
            while True:
                read = functools.partial(history.read, count=HISTORY_PAGE, block_s=0.001)
                entries = await self._patiently(read, connection)
                for entry in entries:
                    position = history.after(position, entry)
                    try:
                        message = decode(entry.payload)
                    except InvalidMessage:
                        continue
                    if connection.accepts(message):
                        text = message_frame(entry.id, message, attempt=1, topic=self.topic, position=position)
                        if not await connection.push_wait(text, message=True):
                            return
                if len(entries) < HISTORY_PAGE:
                    break
        finally:
            await history.aclose()
        # Release what was held back, in rounds: frames that arrive meanwhile are held in turn.
        # The switch to live happens with no await between the check and it.
        while connection.held:
            held, connection.held = connection.held, []
            for entry_id, text in held:
                if not self.broker.covers(position, entry_id) and not await connection.push_wait(text, message=True):
                    return
        connection.held = None

    async def _patiently(self, call: Callable[[], Awaitable[T]], connection: Connection) -> T:
        return await retry_call(
            call,
            policy=RETRY,
            deadline_s=None,
            should_retry=lambda exc: isinstance(exc, BrokerUnavailable) and not connection.closing,
            on_retry=_retrying(f"A catch-up of {self}"),
            sleep=self.sleep,
        )

    async def _close_reader(self) -> None:
        if self._reader is not None:
            await self._reader.aclose()
