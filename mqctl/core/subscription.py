"""Subscriptions: a consumer of a group (at-least-once, acked) and a broadcast reader.

A ``Subscription`` reads in batches with a blocking read that waits at most
``poll_interval_s`` and returns as soon as a message lands. Every ``reclaim_every_s``
it also takes over deliveries that some consumer of the group left unacknowledged for
``ack_timeout_s`` (crashed, hung, or nacked), moving those that used up
``max_attempts`` to the dead letters.

Acks are gathered and sent with the next read, so a busy consumer does not pay one round
trip per message; a read not under way within ``ACK_LINGER_S`` of an ack (a slow handler)
does not hold it: the gathered acks then go out on their own. Those that come while a read
is in flight go out together, one XACK for all that came during the previous one
(``Coalescer``), and their ``await`` returns once the broker has them.

Two optional callbacks let an owner observe a reader without parsing its logs (the
services' metrics use them); both must be quick and must not raise:

    reader.on_poll = f                f(seconds) after each read from the broker (a poll cycle)
    subscription.on_dead_letter = f   f(count) when it moves messages to the dead letters
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mqctl.core.backend import Entry
from mqctl.core.coalescer import Coalescer
from mqctl.core.errors import ConfigError, InvalidMessage, SubscriptionClosed
from mqctl.core.filters import Filter, Predicate, as_filter
from mqctl.core.message import Message, decode
from mqctl.core.partitions import advance

if TYPE_CHECKING:
    from mqctl.core.broker import Broker

log = logging.getLogger(__name__)

ACK_LINGER_S = 0.01
"""Longest an ack waits for a read to carry it before it is sent on its own, seconds."""
ACK_RETRY_S = 1.0
"""After a failed send of lingering acks, when to try again if no read carries them first."""


@dataclass(eq=False, slots=True)
class Delivery:
    """One delivery of a message to a consumer of a group."""

    id: str
    message: Message
    attempt: int
    topic: str
    group: str
    _subscription: Subscription = field(repr=False)
    _settled: bool = field(default=False, repr=False)

    def ack(self) -> Awaitable[None]:
        """Acknowledge: the group is done with this message. Await the result.

        The ack rides with the subscription's next read when one comes within
        ``ACK_LINGER_S`` (10 ms), and is sent on its own when none does, so a slow handler
        never holds it. An ack given during a read in flight returns once the broker has it.
        An ack that cannot be sent leaves the message pending: it comes back after the ack
        timeout (a duplicate, never a loss).
        """
        if self._settled:
            return _DONE
        self._settled = True
        return self._subscription._ack(self.id)

    async def nack(self, delay: float | None = None, *, reason: str = "nacked by the consumer") -> None:
        """Give the message back for redelivery after ``delay`` seconds (default: the backoff
        for this attempt, at most the subscription's ``ack_timeout``). On the last attempt
        it goes to the dead letters with ``reason`` instead."""
        if not self._settled:
            self._settled = True
            await self._subscription._nack(self, delay, reason)


class _Done:
    """An awaitable that is already complete (cheaper than a coroutine on a hot path)."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return
        yield


_DONE = _Done()


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}.")


class _Reader:
    """What group and broadcast readers share: a buffer, a filter and a prompt close."""

    def __init__(self, broker: Broker, topic: str, filter: Predicate | None, poll_interval_s: float, batch: int):
        _check_positive("poll_interval", poll_interval_s)
        if not isinstance(batch, int) or batch < 1:
            raise ConfigError(f"batch must be a positive integer, got {batch!r}.")
        self.broker = broker
        self.topic = topic
        self.filter: Filter | None = None if filter is None else as_filter(filter)
        self.poll_interval_s = poll_interval_s
        self.batch = batch
        self._buffer: deque[Entry] = deque()
        self._fetch: asyncio.Task[None] | None = None
        self._opened = False
        self._closed = False
        self._iterated = False
        self.on_poll: Callable[[float], None] | None = None

    async def _open(self) -> None:
        """Prepare the reader (create the group...)."""

    async def _fill(self) -> None:
        """Put entries in the buffer, waiting at most one poll interval."""
        raise NotImplementedError

    async def __aenter__(self) -> _Reader:
        await self._ensure_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _ensure_open(self) -> None:
        if self._closed:
            raise SubscriptionClosed(f"The subscription to {self.topic!r} is closed.")
        if not self._opened:
            await self._open()
            self._opened = True
            self.broker._subscriptions.add(self)  # type: ignore[arg-type]

    async def _next_entry(self) -> Entry:
        if self._buffer and not self._closed:  # the common case, kept short
            return self._buffer.popleft()
        if self._closed and self._iterated:
            raise StopAsyncIteration  # closed from elsewhere mid-loop: the loop ends
        await self._ensure_open()
        self._iterated = True
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            # The read runs as its own task so that aclose() from anywhere can cut it short.
            self._fetch = asyncio.ensure_future(self._fill())
            started = time.monotonic()
            try:
                await self._fetch
                if self.on_poll is not None:
                    self.on_poll(time.monotonic() - started)
            except asyncio.CancelledError:
                if self._closed:
                    raise StopAsyncIteration from None
                raise
            finally:
                self._fetch = None
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # redis-py can swallow a cancellation in a blocking read (redis/redis-py#2028):
                # the read returns normally though our task was cancelled. Do not lose it.
                raise asyncio.CancelledError
        return self._buffer.popleft()

    def _decode(self, entry: Entry) -> Message | None:
        try:
            return decode(entry.payload)
        except InvalidMessage:
            return None

    async def aclose(self) -> None:
        """Stop reading. Returns at once, cutting short a blocking read in progress."""
        if self._closed:
            return
        self._closed = True
        if self._fetch is not None:
            self._fetch.cancel()
            with contextlib.suppress(BaseException):
                await self._fetch
        self.broker._subscriptions.discard(self)


class Subscription(_Reader):
    """One consumer of a group on a topic. Iterate it for ``Delivery`` objects."""

    def __init__(
        self,
        broker: Broker,
        *,
        topic: str,
        group: str,
        consumer: str,
        filter: Predicate | None,
        poll_interval_s: float,
        batch: int,
        ack_timeout_s: float,
        max_attempts: int,
        from_start: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(broker, topic, filter, poll_interval_s, batch)
        _check_positive("ack_timeout", ack_timeout_s)
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigError(f"max_attempts must be a positive integer, got {max_attempts!r}.")
        self.group = group
        self.consumer = consumer
        self.ack_timeout_s = ack_timeout_s
        self.max_attempts = max_attempts
        self.from_start = from_start
        # Reclaim often enough that an expired delivery waits at most a quarter of its timeout.
        self.reclaim_every_s = min(poll_interval_s, ack_timeout_s / 4)
        self._clock = clock
        self._next_reclaim = 0.0
        self._acks: list[str] = []
        self._linger: asyncio.TimerHandle | None = None  # sends self._acks if no read takes them
        self._lingering: set[asyncio.Task[None]] = set()  # sends of acks the linger let out
        self._late_acks: Coalescer[str, None] = Coalescer(self._send_late_acks)  # taken during a read
        self._outstanding: set[str] = set()
        self.on_dead_letter: Callable[[int], None] | None = None

    def _dead_lettered(self, count: int) -> None:
        if count and self.on_dead_letter is not None:
            self.on_dead_letter(count)

    async def _open(self) -> None:
        await self.broker.partitioned.create_group(self.topic, self.group, from_start=self.from_start)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Delivery:
        backend = self.broker.partitioned
        while True:
            entry = await self._next_entry()
            message = self._decode(entry)
            if message is None:
                moved = await backend.dead_letter(
                    self.topic,
                    self.group,
                    entry.id,
                    reason="not a mqctl message (cannot decode)",
                    attempts=entry.attempt,
                )
                self._dead_lettered(int(moved))
                continue
            if self.filter is not None and not self.filter(message):
                self._acks.append(entry.id)  # filtered out: done for this group only
                continue
            self._outstanding.add(entry.id)
            return Delivery(entry.id, message, entry.attempt, self.topic, self.group, self)

    async def _fill(self) -> None:
        backend = self.broker.partitioned
        now = self._clock()
        if now >= self._next_reclaim:
            await self._flush_acks()
            self._next_reclaim = now + self.reclaim_every_s
            claimed, dead = await backend.reclaim(
                self.topic,
                self.group,
                self.consumer,
                min_idle_s=self.ack_timeout_s,
                count=self.batch,
                max_attempts=self.max_attempts,
                reason=f"not acknowledged after {self.max_attempts} deliveries (ack_timeout {self.ack_timeout_s:g} s)",
            )
            if dead:
                self._dead_lettered(dead)
                log.warning("%d message(s) of %r moved to the dead letters for group %r", dead, self.topic, self.group)
            if claimed:
                self._buffer.extend(claimed)
                return
        block_s = max(0.001, min(self.poll_interval_s, self._next_reclaim - now))
        acks = self._take_acks()
        try:
            entries = await backend.read_group(
                self.topic, self.group, self.consumer, count=self.batch, block_s=block_s, ack=acks
            )
        except BaseException:
            self._keep_acks(acks, ACK_LINGER_S)  # not sent (or not known to be): try again
            raise
        self._buffer.extend(entries)

    def _take_acks(self) -> list[str]:
        """The gathered acks, for a round trip that carries them (the linger is off)."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        ids, self._acks = self._acks, []
        return ids

    def _keep_acks(self, ids: list[str], within_s: float) -> None:
        """Put acks back to be sent with the next read, or on their own within ``within_s``."""
        if not ids:
            return
        self._acks[:0] = ids
        if self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(within_s, self._linger_ran_out)

    def _linger_ran_out(self) -> None:
        """No read took the gathered acks in time: send them on their own."""
        self._linger = None
        ids = self._take_acks()
        if ids:
            task = asyncio.ensure_future(self._send_lingering(ids))
            self._lingering.add(task)
            task.add_done_callback(self._lingering.discard)

    async def _send_lingering(self, ids: list[str]) -> None:
        try:
            await self._late_acks.submit_many(ids)
        except Exception as exc:  # the ack timeout hands them back if they never get through
            log.warning("Could not send %d ack(s) of %r: %s; trying again", len(ids), self.topic, exc)
            if not self._closed:
                self._keep_acks(ids, ACK_RETRY_S)

    async def _flush_acks(self) -> None:
        ids = self._take_acks()
        if ids:
            try:
                await self.broker.partitioned.ack(self.topic, self.group, ids)
            except BaseException:
                if not self._closed:
                    self._keep_acks(ids, ACK_RETRY_S)
                raise

    def _ack(self, entry_id: str) -> Awaitable[None]:
        # Not a coroutine: the common case (queue the ack for the next read) costs no frame.
        self._outstanding.discard(entry_id)
        if self._closed or self._fetch is not None:
            # No read is coming soon to carry the ack: send it now, with any others that come
            # before the XACK in flight returns.
            return self._late_acks.submit_nowait(entry_id)
        self._acks.append(entry_id)
        if self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(ACK_LINGER_S, self._linger_ran_out)
        elif len(self._acks) >= 10 * self.batch:  # a full load for one round trip: send it now
            return self._flush_acks()
        return _DONE

    async def _send_late_acks(self, ids: Sequence[str]) -> list[None]:
        await self.broker.partitioned.ack(self.topic, self.group, ids)
        return [None] * len(ids)

    async def _nack(self, delivery: Delivery, delay_s: float | None, reason: str) -> None:
        self._outstanding.discard(delivery.id)
        backend = self.broker.partitioned
        if delivery.attempt >= self.max_attempts:
            moved = await backend.dead_letter(
                self.topic,
                self.group,
                delivery.id,
                reason=f"{reason} (attempt {delivery.attempt} of {self.max_attempts})",
                attempts=delivery.attempt,
            )
            self._dead_lettered(int(moved))
            return
        if delay_s is None:
            delay_s = self.broker.options.redelivery.delay_s(delivery.attempt)
        ready_in_s = min(max(delay_s, 0.0), self.ack_timeout_s)
        await backend.release(
            self.topic,
            self.group,
            self.consumer,
            [delivery.id],
            ready_in_s=ready_in_s,
            min_idle_s=self.ack_timeout_s,
        )
        self._next_reclaim = min(self._next_reclaim, self._clock() + ready_in_s)

    async def aclose(self) -> None:
        """Stop consuming: send gathered acks and hand back what was read but not acknowledged,
        so another consumer of the group gets it at once. Returns promptly."""
        if self._closed:
            return
        await super().aclose()
        if self._lingering:
            await asyncio.gather(*self._lingering, return_exceptions=True)
        with contextlib.suppress(Exception):  # the acks' awaiters saw any failure
            await self._late_acks.aclose()
        backend = self.broker.partitioned
        unsettled = [e.id for e in self._buffer] + sorted(self._outstanding)
        self._buffer.clear()
        self._outstanding.clear()
        try:
            await self._flush_acks()
            await backend.forget(self.topic, self.group, self.consumer)
            if unsettled:
                await backend.release(
                    self.topic,
                    self.group,
                    self.consumer,
                    unsettled,
                    ready_in_s=0.0,
                    min_idle_s=self.ack_timeout_s,
                )
        except Exception as exc:  # the broker is gone: the ack timeout will hand them back
            log.warning("Could not settle %d deliveries of %r on close: %s", len(unsettled), self.topic, exc)


class Broadcast(_Reader):
    """Every message of a topic, live, for one reader; no group, no acks.

    Iterate it for ``(id, message)`` pairs. ``last_id`` resumes after a message seen before.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        topic: str,
        last_id: str | None,
        filter: Predicate | None,
        poll_interval_s: float,
        batch: int,
    ) -> None:
        super().__init__(broker, topic, filter, poll_interval_s, batch)
        self.last_id = last_id

    async def _open(self) -> None:
        self.last_id = await self.broker.partitioned.position(self.topic, self.last_id)

    def __aiter__(self) -> Broadcast:
        return self

    async def __anext__(self) -> tuple[str, Message]:
        while True:
            entry = await self._next_entry()
            self.last_id = entry.id if ":" not in entry.id else advance(self.last_id or "", entry.id)
            message = self._decode(entry)
            if message is not None and (self.filter is None or self.filter(message)):
                return entry.id, message

    async def _fill(self) -> None:
        assert self.last_id is not None  # set by _open
        self._buffer.extend(
            await self.broker.partitioned.read_after(
                self.topic, self.last_id, count=self.batch, block_s=self.poll_interval_s
            )
        )
