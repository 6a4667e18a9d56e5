"""Subscriptions: a consumer of a group (at-least-once, acked); the broadcast reader is in ``broadcast.py``.

Both read in batches from their backend's reader (``GroupReader``, ``BroadcastReader``) with a
blocking read that waits at most ``poll_interval_s`` and returns as soon as a message lands.
The policy is here, written once for every backend: filters, decoding (what cannot be decoded
goes to the dead letters), the redelivery backoff of a nack, dead-lettering on the last
attempt, and how acks travel.

Acks are gathered and sent with the next read, so a busy consumer does not pay one round
trip per message; a read not under way within ``ACK_LINGER_S`` of an ack (a slow handler)
does not hold it: the gathered acks then go out on their own. Those that come while a read
is in flight go out together, one round trip for all that came during the previous one
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
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mqctl.core.backend import Backend, Entry, GroupReader, ReaderOptions
from mqctl.core.coalescer import Coalescer
from mqctl.core.errors import ConfigError, InvalidMessage
from mqctl.core.filters import Predicate
from mqctl.core.message import Message, decode_verbatim
from mqctl.core.reader import Reader, Readers, check_positive, cut_short
from mqctl.core.retry import RetryPolicy

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
    _handle: Any = field(default=None, repr=False)
    """The backend's handle for this delivery: what acks, nacks and dead-letters it."""
    _settled: bool = field(default=False, repr=False)
    payload: bytes | None = field(default=None, repr=False)
    """The message's bytes as stored, when laid out as mqctl writes them (see
    ``message.decode_verbatim``); None otherwise. Service B splices its frames from them."""

    @property
    def headers(self) -> Mapping[str, str]:
        """The message's headers."""
        return self.message.headers

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
        return self._subscription._ack(self)

    async def nack(self, delay: float | None = None, *, reason: str = "nacked by the consumer") -> None:
        """Give the message back for redelivery after ``delay`` seconds (default: the backoff
        for this attempt, at most the subscription's ``ack_timeout``). On the last attempt
        it goes to the dead letters with ``reason`` instead."""
        if not self._settled:
            self._settled = True
            await self._subscription._nack(self, delay, reason)

    async def dead_letter(self, reason: str) -> bool:
        """Move the message to the dead letters now, whatever its attempt, with ``reason``.
        False if it was no longer pending (settled elsewhere, or redelivered after its timeout)."""
        if self._settled:
            return False
        self._settled = True
        return await self._subscription._bury(self, reason)


class _Done:
    """An awaitable that is already complete (cheaper than a coroutine on a hot path)."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return
        yield


_DONE = _Done()


def ack_many(deliveries: Sequence[Delivery]) -> Awaitable[None]:
    """Acknowledge ``deliveries``, of one subscription or several, with one awaitable for all:
    ``Subscription.ack_many`` for each subscription's share. Already complete (not a coroutine
    nor a future) when every ack was taken to ride with a coming read."""
    if not deliveries:
        return _DONE
    first = deliveries[0]._subscription
    if all(delivery._subscription is first for delivery in deliveries):
        return first.ack_many(deliveries)
    shares: dict[Subscription, list[Delivery]] = {}
    for delivery in deliveries:
        shares.setdefault(delivery._subscription, []).append(delivery)
    pending = [done for owner, share in shares.items() if not isinstance(done := owner.ack_many(share), _Done)]
    return _together(pending) if pending else _DONE


async def _together(pending: list[Awaitable[None]]) -> None:
    await asyncio.gather(*pending)


class Subscription(Reader):
    """One consumer of a group on a topic. Iterate it for ``Delivery`` objects."""

    def __init__(
        self,
        backend: Backend,
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
        redelivery: RetryPolicy,
        live: Readers,
    ) -> None:
        super().__init__(backend, topic, filter, poll_interval_s, batch, live)
        check_positive("ack_timeout", ack_timeout_s)
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigError(f"max_attempts must be a positive integer, got {max_attempts!r}.")
        self.group = group
        self.consumer = consumer
        self.ack_timeout_s = ack_timeout_s
        self.max_attempts = max_attempts
        self.from_start = from_start
        self.redelivery = redelivery
        # Reclaim often enough that an expired delivery waits at most a quarter of its timeout.
        options = ReaderOptions(
            ack_timeout_s=ack_timeout_s,
            max_attempts=max_attempts,
            from_start=from_start,
            reclaim_every_s=min(poll_interval_s, ack_timeout_s / 4),
        )
        self._reader: GroupReader = backend.group_reader(
            topic,
            group,
            consumer,
            options,
            dead_reason=f"not acknowledged after {max_attempts} deliveries (ack_timeout {ack_timeout_s:g} s)",
            on_dead_letter=self._dead_lettered,
        )
        self._acks: list[Any] = []
        self._linger: asyncio.TimerHandle | None = None  # sends self._acks if no read takes them
        self._lingering: set[asyncio.Task[None]] = set()  # sends of acks the linger let out
        # Acks taken during a read, sent together: each item is the handles of one ack() or ack_many().
        self._late_acks: Coalescer[list[Any], None] = Coalescer(self._send_late_acks)
        self._outstanding: dict[str, Any] = {}  # id -> handle of deliveries given out, not settled
        self.on_dead_letter: Callable[[int], None] | None = None

    def _dead_lettered(self, count: int) -> None:
        if count:
            log.warning("%d message(s) of %r moved to the dead letters for group %r", count, self.topic, self.group)
            if self.on_dead_letter is not None:
                self.on_dead_letter(count)

    async def _open(self) -> None:
        await self._reader.open()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Delivery:
        while True:
            if self._buffer and not self._closed:  # the common case, kept short
                entry = self._buffer.popleft()
            else:
                entry = await self._next_entry()
            try:
                delivery = self._deliver(entry)
            except InvalidMessage:
                handle = entry.id if entry.handle is None else entry.handle
                reason = "not a mqctl message (cannot decode)"
                self._dead_lettered(int(await self._reader.dead_letter(handle, reason=reason, attempts=entry.attempt)))
                continue
            if delivery is not None:
                return delivery

    def ready(self) -> Delivery | None:
        """The next delivery if it was read already, at once (no await, no read); None when the
        next one needs a read from the broker, or ``anext()`` for another reason.

        For a consumer that takes what a read brought in a loop of its own: ``await anext(sub)``
        for the first, then ``sub.ready()`` until it returns None."""
        buffer = self._buffer
        while buffer and not self._closed:
            entry = buffer.popleft()
            try:
                delivery = self._deliver(entry)
            except InvalidMessage:
                buffer.appendleft(entry)  # anext() moves it to the dead letters
                return None
            if delivery is not None:
                return delivery
        return None

    def _deliver(self, entry: Entry) -> Delivery | None:
        """The delivery of ``entry``; None if it is filtered out (and acked). Raises InvalidMessage."""
        entry_id, payload, attempt, handle = entry
        if handle is None:
            handle = entry_id
        message, verbatim = decode_verbatim(payload)
        if self.filter is not None and not self.filter(message):
            self._queue_ack(handle)  # filtered out: done for this group only
            return None
        self._outstanding[entry_id] = handle
        # Positional: this runs once per message, and keywords cost a dataclass __init__ more.
        return Delivery(
            entry_id, message, attempt, self.topic, self.group, self, handle, False, payload if verbatim else None
        )

    async def _fill(self) -> None:
        acks = self._take_acks()
        try:
            entries = await self._reader.read(count=self.batch, block_s=self.poll_interval_s, ack=acks)
        except BaseException:
            self._keep_acks(acks, ACK_LINGER_S)  # not sent (or not known to be): try again
            raise
        self._buffer.extend(entries)

    # -- acks --------------------------------------------------------------------------

    def _take_acks(self) -> list[Any]:
        """The gathered acks, for a round trip that carries them (the linger is off)."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        handles, self._acks = self._acks, []
        return handles

    def _keep_acks(self, handles: list[Any], within_s: float) -> None:
        """Put acks back to be sent with the next read, or on their own within ``within_s``."""
        if not handles:
            return
        self._acks[:0] = handles
        if self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(within_s, self._linger_ran_out)

    def _queue_ack(self, handle: Any) -> None:
        self._acks.append(handle)
        if self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(ACK_LINGER_S, self._linger_ran_out)

    def _linger_ran_out(self) -> None:
        """No read took the gathered acks in time: send them on their own."""
        self._linger = None
        handles = self._take_acks()
        if handles:
            task = asyncio.ensure_future(self._send_lingering(handles))
            self._lingering.add(task)
            task.add_done_callback(self._lingering.discard)

    async def _send_lingering(self, handles: list[Any]) -> None:
        try:
            await self._late_acks.submit(handles)
        except Exception as exc:  # the ack timeout hands them back if they never get through
            log.warning("Could not send %d ack(s) of %r: %s; trying again", len(handles), self.topic, exc)
            if not self._closed:
                self._keep_acks(handles, ACK_RETRY_S)

    async def _flush_acks(self) -> None:
        handles = self._take_acks()
        if handles:
            try:
                await self._reader.ack(handles)
            except BaseException:
                if not self._closed:
                    self._keep_acks(handles, ACK_RETRY_S)
                raise

    def ack_many(self, deliveries: Sequence[Delivery]) -> Awaitable[None]:
        """Acknowledge every one of ``deliveries`` (given out by this subscription) at once. Await
        the result: one awaitable for them all, which raises if the broker did not take them.

        The same as ``ack()`` on each, at the cost of one: the acks share a round trip (or ride
        with the next read) and a single result. Those already settled are left out."""
        for delivery in deliveries:
            if delivery._subscription is not self:
                raise ValueError(f"Delivery {delivery.id} was not given out by this subscription.")
        handles = []
        outstanding = self._outstanding
        for delivery in deliveries:
            if delivery._settled:
                continue
            delivery._settled = True
            outstanding.pop(delivery.id, None)
            handles.append(delivery._handle)
        if not handles:
            return _DONE
        return self._queue_acks(handles)

    def _ack(self, delivery: Delivery) -> Awaitable[None]:
        self._outstanding.pop(delivery.id, None)
        return self._queue_acks([delivery._handle])

    def _queue_acks(self, handles: list[Any]) -> Awaitable[None]:
        # Not a coroutine: the common case (queue the acks for the next read) costs no frame.
        if self._closed or self._fetch is not None:
            # No read is coming soon to carry the acks: send them now, with any others that come
            # before the round trip in flight returns.
            return self._late_acks.submit_nowait(handles)
        self._acks += handles
        if self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(ACK_LINGER_S, self._linger_ran_out)
        elif len(self._acks) >= 10 * self.batch:  # a full load for one round trip: send it now
            return self._flush_acks()
        return _DONE

    async def _send_late_acks(self, batches: Sequence[list[Any]]) -> list[None]:
        await self._reader.ack(batches[0] if len(batches) == 1 else [h for handles in batches for h in handles])
        return [None] * len(batches)

    # -- nacks and dead letters ----------------------------------------------------------

    async def _nack(self, delivery: Delivery, delay_s: float | None, reason: str) -> None:
        if delivery.attempt >= self.max_attempts:
            await self._bury(delivery, f"{reason} (attempt {delivery.attempt} of {self.max_attempts})")
            return
        self._outstanding.pop(delivery.id, None)
        if delay_s is None:
            delay_s = self.redelivery.delay_s(delivery.attempt)
        await self._reader.nack(delivery._handle, delay_s=min(max(delay_s, 0.0), self.ack_timeout_s))

    async def _bury(self, delivery: Delivery, reason: str) -> bool:
        self._outstanding.pop(delivery.id, None)
        moved = await self._reader.dead_letter(delivery._handle, reason=reason, attempts=delivery.attempt)
        self._dead_lettered(int(moved))
        return moved

    async def hand_back(self) -> None:
        """Stop reading and hand back what was read but not given out, so another consumer of
        the group gets it at once. Deliveries given out can still be settled until ``aclose()``
        (a worker draining before it stops); iteration ends."""
        if self._stopped or self._closed:
            return
        self._stopped = True
        if self._fetch is not None:
            await cut_short(self._fetch)
        unstarted = [e.id if e.handle is None else e.handle for e in self._buffer]
        self._buffer.clear()
        if unstarted:
            try:
                await self._reader.release(unstarted)
            except Exception as exc:  # the ack timeout hands them back
                log.warning("Could not hand back %d deliveries of %r: %s", len(unstarted), self.topic, exc)

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
        unsettled = [e.id if e.handle is None else e.handle for e in self._buffer]
        unsettled += list(self._outstanding.values())
        self._buffer.clear()
        self._outstanding.clear()
        try:
            await self._flush_acks()
            await self._reader.aclose()
            await self._reader.release(unsettled)
        except Exception as exc:  # the broker is gone: the ack timeout will hand them back
            log.warning("Could not settle %d deliveries of %r on close: %s", len(unsettled), self.topic, exc)
