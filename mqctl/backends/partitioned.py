"""Partitioned topics of the stream stores: one topic stored as N streams, each on its own
Redis Cluster slot. The one module that knows partitions, their names and their ids.

A topic has a fixed number of partitions, set when it is first used (``Broker.create_topic``,
else 1) and kept by the backend. Partition 0 is stored under the topic's own name, so a
1-partition topic is exactly the layout of an unpartitioned one; partition ``p > 0`` is
stored under an internal name ``<topic>#<p>`` (``#`` is not allowed in topic names, so no
user topic can collide with it). Each name is its own hash tag, so the partitions of a
topic spread over a cluster's masters; the names are chosen so that their slots lie
evenly around the slot ring (clusters split the slots into even ranges per master).

Ids of partitioned topics carry their partition: a message id is ``"<p>:<ms>-<seq>"``
(ids of 1-partition topics are plain ``"<ms>-<seq>"``, as before). A broadcast position
is a *cursor* naming every partition's last id: ``"0:<ms>-<seq>,1:<ms>-<seq>,..."``.

``Partitioned`` is a ``StreamStore`` over a ``StreamStore`` where a partitioned topic reads as
one topic with composite ids: ``StreamBackend`` (``streams.py``) always goes through it.
Publishes go to the partition of their key (or idempotency key); those without a key go
together to the next partition in turn, so a coalesced batch stays one round trip. Group
reads wait on every partition at once (one blocking read each, as partitions may live on
different nodes) and return whatever arrives first.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import functools
import logging
import re
import zlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from mqctl.backends.store import StreamStore
from mqctl.core.backend import DeadLetter, Entry, GroupStats, Limits, Outgoing, TopicStats
from mqctl.core.errors import ConfigError, QueueFull

log = logging.getLogger(__name__)

MAX_PARTITIONS = 256
STICKY_BATCH = 100
"""Units without a key that go to one partition before the next partition gets some."""
SEPARATOR = "#"
_SLOTS = 16384  # Redis Cluster hash slots
_WINDOW = 64  # a partition's slot lands within this many slots of its even share of the ring


def check_partitions(value: object) -> int:
    """Return ``value`` if it is a usable partition count, else raise ``ConfigError``."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_PARTITIONS:
        raise ConfigError(f"partitions must be a whole number from 1 to {MAX_PARTITIONS}, got {value!r}.")
    return value


def _slot(name: str) -> int:
    return binascii.crc_hqx(name.encode(), 0) % _SLOTS


@functools.lru_cache(maxsize=4096)
def stream_name(topic: str, partition: int, partitions: int) -> str:
    """The name partition ``partition`` of ``topic`` (of ``partitions``) is stored under.

    Deterministic, so every process finds the same streams. For ``p > 0`` it is
    ``<topic>#<p>``, with a short suffix when needed to put its slot near
    ``slot(topic) + p * 16384 / partitions``.
    """
    if partition == 0:
        return topic
    target = (_slot(topic) + partition * _SLOTS // partitions) % _SLOTS
    base = f"{topic}{SEPARATOR}{partition}"
    for attempt in range(100_000):
        name = base if attempt == 0 else f"{base}.{attempt}"
        if (_slot(name) - target) % _SLOTS < _WINDOW:
            return name
    return base  # not reached in practice: about 256 tries are expected


def pick(key: str, partitions: int) -> int:
    """The partition of a message ``key``: the same key always picks the same partition."""
    return zlib.crc32(key.encode()) % partitions


def join_id(partition: int, entry_id: str) -> str:
    return f"{partition}:{entry_id}"


def split_id(entry_id: str) -> tuple[int, str]:
    """``"p:<ms>-<seq>"`` as ``(p, "<ms>-<seq>")``; a plain id is partition 0's."""
    partition, colon, raw = entry_id.partition(":")
    if not colon:
        return 0, entry_id
    if not partition.isdigit():
        raise ConfigError(f"Invalid message id {entry_id!r}; expected '<partition>:<ms>-<seq>'.")
    return int(partition), raw


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def parse_cursor(value: str, partitions: int) -> list[str]:
    """A broadcast position as one id per partition.

    ``"0:<id>,1:<id>,..."`` names each partition's last id. A partition it does not name
    resumes from the oldest time it does name (ids are times: at worst a few messages come
    twice, none is skipped). A plain id, ``"0-0"`` or ``"$"`` applies to every partition.
    """
    if value in ("$", "0", "0-0") or ":" not in value:
        return [value] * partitions
    named: dict[int, str] = {}
    for part in value.split(","):
        partition, raw = split_id(part.strip())
        if partition >= partitions:
            raise ConfigError(f"Invalid position {value!r}: the topic has only {partitions} partitions.")
        _id_key(raw)  # raises ValueError on garbage
        named[partition] = raw
    oldest_ms = min(_id_key(raw)[0] for raw in named.values())
    fallback = f"{max(oldest_ms - 1, 0)}-18446744073709551615"
    return [named.get(p, fallback) for p in range(partitions)]


def _gap(after: str, first_id: str | None, last_id: str) -> str | None:
    """Why one stream's history after ``after`` is incomplete, or None."""
    if first_id is not None and _id_key(after) < _id_key(first_id):
        return f"the oldest message still retained is {first_id!r}. Resuming from there."
    if _id_key(after) > _id_key(last_id):
        # Trimming always keeps the newest message: a position past it means the topic was
        # deleted (or emptied) by hand since, and what followed that position went with it.
        return (
            f"the topic holds nothing that recent (its newest message is {last_id!r}): it was deleted or "
            "emptied since. Resuming with its next message."
        )
    return None


def format_cursor(ids: Sequence[str]) -> str:
    return ",".join(join_id(p, raw) for p, raw in enumerate(ids))


_POSITION = re.compile(r"\$|(\d{1,3}:)?\d{1,20}(-\d{1,20})?(,\d{1,3}:\d{1,20}(-\d{1,20})?){0,255}")


def check_position(position: str) -> str:
    """A message id (``"<ms>-<seq>"``, ``"<p>:<ms>-<seq>"``) or a cursor of them, else ``ConfigError``."""
    if not _POSITION.fullmatch(position):
        raise ConfigError(
            f"Invalid position {position!r}; expected a message id like '1700000000000-0' (or the 'position' "
            "of a broadcast frame)."
        )
    return position


def covers(position: str, entry_id: str) -> bool:
    """True if a broadcast at ``position`` has read ``entry_id`` already (a cursor, per partition)."""
    if position in ("$", ""):
        return False
    if ":" not in entry_id:
        return ":" not in position and _id_key(entry_id) <= _id_key(position)
    partition, raw = split_id(entry_id)
    for part in position.split(","):
        p, seen = split_id(part)
        if p == partition:
            return _id_key(raw) <= _id_key(seen)
    return False


def advance(cursor: str, entry_id: str) -> str:
    """The broadcast position after ``entry_id`` was read from position ``cursor``."""
    if ":" not in entry_id:
        return entry_id
    partition, raw = split_id(entry_id)
    parts = cursor.split(",")
    parts[partition] = join_id(partition, raw)
    return ",".join(parts)


class Partitioned:
    """A ``StreamStore`` over ``backend`` (a store), with each partitioned topic read as one topic."""

    def __init__(self, backend: StreamStore) -> None:
        self.backend = backend
        self._counts: dict[str, int] = {}
        self._next: dict[str, int] = {}
        self._group_reads: dict[tuple[str, str, str], dict[int, asyncio.Task[list[Entry]]]] = {}
        self._reads_after: dict[tuple[str, int, str, int], asyncio.Task[list[Entry]]] = {}

    # -- partition counts ------------------------------------------------------------

    def known(self, topic: str) -> int | None:
        """The partition count of ``topic`` if this process has fixed it already."""
        return self._counts.get(topic)

    async def count(self, topic: str, *, create: int = 1) -> int:
        """The partition count of ``topic``, fixing it at ``create`` if the topic is new."""
        n = self._counts.get(topic)
        if n is None:
            n = self._counts[topic] = await self.backend.partitions(topic, create=create)
        return n

    async def peek(self, topic: str) -> int:
        """The partition count without creating anything (1 for an unknown topic)."""
        n = self._counts.get(topic)
        if n is None:
            n = await self.backend.partitions(topic, create=None)
            if n > 1:
                self._counts[topic] = n
        return n

    def streams(self, topic: str, n: int) -> list[str]:
        return [stream_name(topic, p, n) for p in range(n)]

    def next_partition(self, topic: str, n: int) -> int:
        """Round robin: where the next message without a key goes."""
        p = self._next.get(topic, 0)
        self._next[topic] = p + 1
        return p % n

    # -- the Backend protocol ----------------------------------------------------------

    async def partitions(self, topic: str, *, create: int | None = None) -> int:
        return await self.backend.partitions(topic, create=create)

    async def add(self, topic: str, units: Sequence[Sequence[Outgoing]], limits: Limits) -> list[list[str] | QueueFull]:
        n = await self.count(topic)
        if n == 1:
            return await self.backend.add(topic, units, limits)
        by_partition: dict[int, list[int]] = {}
        unkeyed = 0
        for index, unit in enumerate(units):
            key = unit[0].key if unit[0].key is not None else unit[0].idempotency_key
            if key is None:
                # As Kafka's "sticky" partitioner: units without a key fill one partition's batch
                # (up to STICKY_BATCH) before the next partition gets one, so a burst spreads over
                # the partitions and still costs about as many round trips as on one stream.
                if unkeyed % STICKY_BATCH == 0:
                    p = self.next_partition(topic, n)
                unkeyed += 1
            else:  # a retried publish must find its idempotency key where it stored it: that key picks too
                p = pick(key, n)
            by_partition.setdefault(p, []).append(index)
        results: list[list[str] | QueueFull] = [[] for _ in units]

        async def add_to(p: int, indexes: list[int]) -> None:
            replies = await self.backend.add(stream_name(topic, p, n), [units[i] for i in indexes], limits)
            for i, reply in zip(indexes, replies, strict=True):
                results[i] = (
                    QueueFull(topic, reply.backlog, reply.max_backlog)
                    if isinstance(reply, QueueFull)
                    else [join_id(p, r) for r in reply]
                )

        await asyncio.gather(*(add_to(p, indexes) for p, indexes in by_partition.items()))
        return results

    async def create_group(self, topic: str, group: str, *, from_start: bool) -> bool:
        n = await self.count(topic)
        if n == 1:
            return await self.backend.create_group(topic, group, from_start=from_start)
        created = await asyncio.gather(
            *(self.backend.create_group(s, group, from_start=from_start) for s in self.streams(topic, n))
        )
        return any(created)

    async def read_group(
        self, topic: str, group: str, consumer: str, *, count: int, block_s: float, ack: Sequence[str] = ()
    ) -> list[Entry]:
        n = await self.count(topic)
        if n == 1:
            if ack:
                return await self.backend.read_group(topic, group, consumer, count=count, block_s=block_s, ack=ack)
            return await self.backend.read_group(topic, group, consumer, count=count, block_s=block_s)
        if ack:
            await self.ack(topic, group, ack)
        reads = self._group_reads.setdefault((topic, group, consumer), {})
        for p, stream in enumerate(self.streams(topic, n)):
            if p not in reads:
                reads[p] = asyncio.ensure_future(
                    self.backend.read_group(stream, group, consumer, count=count, block_s=block_s)
                )
        try:
            await asyncio.wait(reads.values(), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await self.forget(topic, group, consumer)
            raise
        return self._collect(reads)

    @staticmethod
    def _collect(reads: dict[int, asyncio.Task[list[Entry]]]) -> list[Entry]:
        entries: list[Entry] = []
        error: BaseException | None = None
        for p, task in list(reads.items()):
            if not task.done():
                continue
            del reads[p]
            if task.cancelled():
                continue
            exc = task.exception()
            if exc is not None:
                error = error or exc
                continue
            entries.extend(Entry(join_id(p, e.id), e.payload, e.attempt) for e in task.result())
        if error is not None and not entries:
            raise error
        return entries

    async def forget(self, topic: str, group: str, consumer: str) -> None:
        """Stop the reads in flight of a closing consumer and hand back what they had read."""
        reads = self._group_reads.pop((topic, group, consumer), None)
        if not reads:
            return
        for task in reads.values():
            task.cancel()
        await asyncio.wait(reads.values())
        with contextlib.suppress(Exception):
            read = self._collect(reads)
            if read:
                await self.release(topic, group, consumer, [e.id for e in read], ready_in_s=0.0, min_idle_s=0.0)

    async def reclaim(
        self,
        topic: str,
        group: str,
        consumer: str,
        *,
        min_idle_s: float,
        count: int,
        max_attempts: int,
        reason: str,
    ) -> tuple[list[Entry], int]:
        n = await self.count(topic)
        options: dict[str, Any] = {
            "min_idle_s": min_idle_s,
            "count": count,
            "max_attempts": max_attempts,
            "reason": reason,
        }
        if n == 1:
            return await self.backend.reclaim(topic, group, consumer, **options)
        replies = await asyncio.gather(
            *(self.backend.reclaim(s, group, consumer, **options) for s in self.streams(topic, n))
        )
        entries = [Entry(join_id(p, e.id), e.payload, e.attempt) for p, (got, _) in enumerate(replies) for e in got]
        return entries, sum(dead for _, dead in replies)

    def _by_partition(self, ids: Sequence[str]) -> dict[int, list[str]]:
        grouped: dict[int, list[str]] = {}
        for entry_id in ids:
            p, raw = split_id(entry_id)
            grouped.setdefault(p, []).append(raw)
        return grouped

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> int:
        n = await self.count(topic)
        if n == 1:
            return await self.backend.ack(topic, group, ids)
        done = await asyncio.gather(
            *(
                self.backend.ack(stream_name(topic, p, n), group, raws)
                for p, raws in self._by_partition(ids).items()
                if p < n
            )
        )
        return sum(done)

    async def release(
        self, topic: str, group: str, consumer: str, ids: Sequence[str], *, ready_in_s: float, min_idle_s: float
    ) -> None:
        n = await self.count(topic)
        if n == 1:
            return await self.backend.release(topic, group, consumer, ids, ready_in_s=ready_in_s, min_idle_s=min_idle_s)
        for p, raws in self._by_partition(ids).items():
            if p < n:
                await self.backend.release(
                    stream_name(topic, p, n), group, consumer, raws, ready_in_s=ready_in_s, min_idle_s=min_idle_s
                )
        return None

    async def dead_letter(self, topic: str, group: str, entry_id: str, *, reason: str, attempts: int) -> bool:
        n = await self.count(topic)
        if n == 1:
            return await self.backend.dead_letter(topic, group, entry_id, reason=reason, attempts=attempts)
        p, raw = split_id(entry_id)
        if p >= n:
            return False
        return await self.backend.dead_letter(stream_name(topic, p, n), group, raw, reason=reason, attempts=attempts)

    async def read_after(self, topic: str, after_id: str, *, count: int, block_s: float) -> list[Entry]:
        n = await self.count(topic)
        if n == 1:
            return await self.backend.read_after(topic, after_id, count=count, block_s=block_s)
        cursor = parse_cursor(after_id, n)
        tasks: dict[int, asyncio.Task[list[Entry]]] = {}
        for p, (stream, after) in enumerate(zip(self.streams(topic, n), cursor, strict=True)):
            # A read with no side effect, shared by whoever asks for the same thing next: a
            # partition with nothing new keeps its one blocking read across calls.
            key = (topic, p, after, count)
            task = self._reads_after.get(key)
            if task is None:
                task = self._reads_after[key] = asyncio.ensure_future(
                    self.backend.read_after(stream, after, count=count, block_s=block_s)
                )
                task.add_done_callback(lambda _, key=key: self._reads_after.pop(key, None))  # type: ignore[misc]
            tasks[p] = task
        await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
        return self._collect(tasks)

    async def last_id(self, topic: str) -> str:
        n = await self.count(topic)
        if n == 1:
            return await self.backend.last_id(topic)
        return format_cursor(await asyncio.gather(*(self.backend.last_id(s) for s in self.streams(topic, n))))

    async def history_gap(self, topic: str, after_id: str) -> tuple[str, str | None] | None:
        """Why a broadcast resuming after ``after_id`` may miss messages, with the oldest position still
        retained, or None when nothing it follows is gone. ``"0"``/``"0-0"`` asks for all that is kept."""
        if after_id in ("0", "0-0"):
            return None
        n = await self.count(topic)
        if n == 1:
            stats = await self.backend.stats(topic)
            gap = _gap(after_id, stats.first_id, stats.last_id)
            return None if gap is None else (f"Messages after {after_id!r} may be lost: {gap}", stats.first_id)
        cursor = parse_cursor(after_id, n)
        parts = await asyncio.gather(*(self.backend.stats(s) for s in self.streams(topic, n)))
        gaps = [
            f"partition {p}: {gap}"
            for p, (after, part) in enumerate(zip(cursor, parts, strict=True))
            if (gap := _gap(after, part.first_id, part.last_id)) is not None
        ]
        if not gaps:
            return None
        first = format_cursor([part.first_id or "0-0" for part in parts])
        return f"Messages after {after_id!r} may be lost, in {'; in '.join(gaps)}", first

    def after(self, position: str, entry_id: str) -> str:
        """The broadcast position after ``entry_id`` was read from ``position``."""
        return advance(position, entry_id)

    def covers(self, position: str, entry_id: str) -> bool:
        return covers(position, entry_id)

    async def position(self, topic: str, last_id: str | None) -> str:
        """A broadcast's starting position: now (``last_id`` None), or ``last_id`` as a full cursor."""
        if last_id is None:
            return await self.last_id(topic)
        n = await self.count(topic)
        return last_id if n == 1 else format_cursor(parse_cursor(last_id, n))

    async def stats(self, topic: str) -> TopicStats:
        n = await self.peek(topic)
        if n == 1:
            return await self.backend.stats(topic)
        parts = await asyncio.gather(*(self.backend.stats(s) for s in self.streams(topic, n)))
        groups: dict[str, list[tuple[int, GroupStats]]] = {}
        for p, part in enumerate(parts):
            for g in part.groups:
                groups.setdefault(g.name, []).append((p, g))
        merged = []
        for name, per in sorted(groups.items()):
            ages = [g.oldest_pending_age_s for _, g in per if g.oldest_pending_age_s is not None]
            merged.append(
                GroupStats(
                    name=name,
                    backlog=sum(g.backlog for _, g in per),
                    lag=sum(g.lag for _, g in per),
                    pending=sum(g.pending for _, g in per),
                    consumers=max(g.consumers for _, g in per),
                    oldest_pending_age_s=max(ages) if ages else None,
                    last_delivered_id=",".join(join_id(p, g.last_delivered_id) for p, g in per),
                )
            )
        firsts = [part.first_id for part in parts]
        return TopicStats(
            topic=topic,
            length=sum(part.length for part in parts),
            dead_letters=sum(part.dead_letters for part in parts),
            groups=tuple(merged),
            last_id=format_cursor([part.last_id for part in parts]),
            first_id=None if all(f is None for f in firsts) else format_cursor([f or "0-0" for f in firsts]),
            partitions=n,
        )

    async def topics(self) -> list[str]:
        return [t for t in await self.backend.topics() if SEPARATOR not in t]

    async def dead_letters(self, topic: str, *, count: int, after: str) -> list[DeadLetter]:
        n = await self.peek(topic)
        if n == 1:
            return await self.backend.dead_letters(topic, count=count, after=after)
        # Partition by partition, each oldest first: a dead letter's own id ("<p>:<ms>-<seq>") is
        # where the next page starts, so paging never repeats a letter nor skips one.
        start, raw = (0, "-") if after in ("", "-", "0", "0-0") else split_id(after)
        letters: list[DeadLetter] = []
        for p in range(start, n):
            page = await self.backend.dead_letters(
                stream_name(topic, p, n), count=count - len(letters), after=raw if p == start else "-"
            )
            letters += [replace(d, id=join_id(p, d.id), original_id=join_id(p, d.original_id)) for d in page]
            if len(letters) >= count:
                break
        return letters

    async def remove_dead_letters(self, topic: str, ids: Sequence[str] | None) -> int:
        n = await self.peek(topic)
        if n == 1:
            return await self.backend.remove_dead_letters(topic, ids)
        if ids is None:
            removed = await asyncio.gather(*(self.backend.remove_dead_letters(s, None) for s in self.streams(topic, n)))
        else:
            removed = await asyncio.gather(
                *(
                    self.backend.remove_dead_letters(stream_name(topic, p, n), raws)
                    for p, raws in self._by_partition(ids).items()
                    if p < n
                )
            )
        return sum(removed)

    async def ping(self, *, write: bool = False) -> None:
        await self.backend.ping(write=write)

    async def warnings(self) -> list[str]:
        return await self.backend.warnings()

    async def aclose(self) -> None:
        pending = [t for reads in self._group_reads.values() for t in reads.values()]
        pending += list(self._reads_after.values())
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        self._group_reads.clear()
        await self.backend.aclose()
