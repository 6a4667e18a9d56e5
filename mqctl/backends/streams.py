"""The Redis Streams family of backends: ``memory://``, ``redis://`` and ``redis+cluster://``.

They share one model, the one Redis Streams has: a topic is a log of entries with ids that
sort by time (``"<ms>-<seq>"``); a group has a last-delivered id and a list of pending entries,
each with its consumer, its delivery count (the attempt) and the time it was last delivered.
A store keeps that state (``StreamStore`` in ``store.py``: ``memory.py``, ``redis.py``); this
module turns a store into a ``Backend``:

- ``StreamBackend`` is the ``Backend`` over ``Partitioned(store)``, so that a topic may be split
  into partitions (``partitioned.py``) on any store of the family;
- ``ReclaimingReader`` is a ``GroupReader`` that redelivers on the client: every
  ``reclaim_every_s`` it takes over deliveries left unacknowledged for ``ack_timeout_s``
  (moving those past ``max_attempts`` to the dead letters), since the store does not;
- ``StreamBroadcast`` reads after a position, in the store's own id order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from mqctl.backends.partitioned import Partitioned, check_partitions, check_position
from mqctl.backends.store import StreamStore
from mqctl.core.backend import (
    Capabilities,
    DeadLetter,
    Entry,
    Limits,
    Outgoing,
    ReaderOptions,
    TopicStats,
)
from mqctl.core.errors import QueueFull


class ReclaimingReader:
    """One consumer of a group on a stream store, redelivering on the client. See ``GroupReader``.

    Reads wait at most until the next reclaim is due, so a delivery past its ack timeout waits
    at most ``reclaim_every_s`` more; a nack brings the next reclaim forward to when it is due.
    """

    def __init__(
        self,
        store: Partitioned,
        topic: str,
        group: str,
        consumer: str,
        options: ReaderOptions,
        *,
        dead_reason: str,
        on_dead_letter: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.topic = topic
        self.group = group
        self.consumer = consumer
        self.options = options
        self.dead_reason = dead_reason
        self.on_dead_letter = on_dead_letter
        self._clock = clock
        self._next_reclaim = 0.0

    async def open(self) -> None:
        await self.store.create_group(self.topic, self.group, from_start=self.options.from_start)

    async def read(self, *, count: int, block_s: float, ack: Sequence[Any] = ()) -> list[Entry]:
        now = self._clock()
        if now >= self._next_reclaim:
            if ack:
                await self.store.ack(self.topic, self.group, ack)
                ack = ()
            self._next_reclaim = now + self.options.reclaim_every_s
            claimed, dead = await self.store.reclaim(
                self.topic,
                self.group,
                self.consumer,
                min_idle_s=self.options.ack_timeout_s,
                count=count,
                max_attempts=self.options.max_attempts,
                reason=self.dead_reason,
            )
            if dead and self.on_dead_letter is not None:
                self.on_dead_letter(dead)
            if claimed:
                return claimed
        block_s = max(0.001, min(block_s, self._next_reclaim - now))
        return await self.store.read_group(self.topic, self.group, self.consumer, count=count, block_s=block_s, ack=ack)

    async def ack(self, handles: Sequence[Any]) -> None:
        await self.store.ack(self.topic, self.group, handles)

    async def nack(self, handle: Any, *, delay_s: float) -> None:
        ready_in_s = min(max(delay_s, 0.0), self.options.ack_timeout_s)
        await self.store.release(
            self.topic,
            self.group,
            self.consumer,
            [handle],
            ready_in_s=ready_in_s,
            min_idle_s=self.options.ack_timeout_s,
        )
        self._next_reclaim = min(self._next_reclaim, self._clock() + ready_in_s)

    async def dead_letter(self, handle: Any, *, reason: str, attempts: int) -> bool:
        return await self.store.dead_letter(self.topic, self.group, handle, reason=reason, attempts=attempts)

    async def release(self, handles: Sequence[Any]) -> None:
        if handles:
            await self.store.release(
                self.topic,
                self.group,
                self.consumer,
                list(handles),
                ready_in_s=0.0,
                min_idle_s=self.options.ack_timeout_s,
            )

    async def aclose(self) -> None:
        await self.store.forget(self.topic, self.group, self.consumer)


class StreamBroadcast:
    """Every entry of a topic after a position, in id order. See ``BroadcastReader``."""

    def __init__(self, store: Partitioned, topic: str, position: str) -> None:
        self.store = store
        self.topic = topic
        self.position = position

    async def read(self, *, count: int, block_s: float) -> list[Entry]:
        entries = await self.store.read_after(self.topic, self.position, count=count, block_s=block_s)
        for entry in entries:
            self.position = self.store.after(self.position, entry.id)
        return entries

    def after(self, position: str, entry: Entry) -> str:
        return self.store.after(position, entry.id)

    async def aclose(self) -> None:
        return None


class StreamBackend:
    """A ``Backend`` over a stream store (``memory.py``, ``redis.py``), partitions included."""

    capabilities = Capabilities(partitions=True, retained_history=True, consumer_names=True)

    def __init__(self, store: StreamStore) -> None:
        self.store = Partitioned(store)

    async def add(self, topic: str, units: Sequence[Sequence[Outgoing]], limits: Limits) -> list[list[str] | QueueFull]:
        return await self.store.add(topic, units, limits)

    async def create_topic(self, topic: str, *, partitions: int) -> int:
        check_partitions(partitions)
        n = await self.store.count(topic, create=partitions)
        return n

    async def create_group(self, topic: str, group: str, *, from_start: bool) -> bool:
        return await self.store.create_group(topic, group, from_start=from_start)

    def group_reader(
        self,
        topic: str,
        group: str,
        consumer: str,
        options: ReaderOptions,
        *,
        dead_reason: str,
        on_dead_letter: Callable[[int], None] | None = None,
    ) -> ReclaimingReader:
        return ReclaimingReader(
            self.store, topic, group, consumer, options, dead_reason=dead_reason, on_dead_letter=on_dead_letter
        )

    async def broadcast_reader(self, topic: str, after: str | None) -> StreamBroadcast:
        return StreamBroadcast(self.store, topic, await self.store.position(topic, after))

    def covers(self, position: str, entry_id: str) -> bool:
        return self.store.covers(position, entry_id)

    def check_position(self, position: str) -> str:
        return check_position(position)

    async def history_gap(self, topic: str, after: str) -> tuple[str, str | None] | None:
        return await self.store.history_gap(topic, after)

    async def stats(self, topic: str) -> TopicStats:
        return await self.store.stats(topic)

    async def topics(self) -> list[str]:
        return await self.store.topics()

    async def dead_letters(self, topic: str, *, count: int, after: str) -> list[DeadLetter]:
        return await self.store.dead_letters(topic, count=count, after=after or "-")

    async def remove_dead_letters(self, topic: str, ids: Sequence[str] | None) -> int:
        return await self.store.remove_dead_letters(topic, ids)

    async def ping(self, *, write: bool = False) -> None:
        await self.store.ping(write=write)

    async def warnings(self) -> list[str]:
        return await self.store.warnings()

    async def aclose(self) -> None:
        await self.store.aclose()
