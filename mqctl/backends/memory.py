"""The in-process backend (``memory://``): the embedded default and the reference in tests.

A ``StreamStore`` of the Redis Streams family (``store.py``): ids ``"<ms>-<seq>"``, groups
with a last delivered id, pending entries with a delivery count and an idle time; the same
reader and partitions as Redis run over it. Brokers connected to the same ``memory://NAME``
in one process share one store; nothing survives the process.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from mqctl.backends.streams import StreamBackend
from mqctl.core.backend import DeadLetter, Entry, GroupStats, Limits, Outgoing, TopicStats
from mqctl.core.errors import BrokerUnavailable, ConfigError, QueueFull

Id = tuple[int, int]
ZERO: Id = (0, 0)


def parse_id(value: str) -> Id:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def format_id(value: Id) -> str:
    return f"{value[0]}-{value[1]}"


class IdClock:
    """Stream ids like Redis makes them: milliseconds, then a sequence within the millisecond."""

    def __init__(self, now_ms: Callable[[], int]) -> None:
        self._now_ms = now_ms
        self.last: Id = ZERO

    def next(self) -> Id:
        ms = self._now_ms()
        self.last = (ms, 0) if ms > self.last[0] else (self.last[0], self.last[1] + 1)
        return self.last


@dataclass(slots=True)
class _Pending:
    consumer: str
    delivered_at: float
    count: int


@dataclass(slots=True)
class _Group:
    last_delivered: Id
    pending: dict[Id, _Pending] = field(default_factory=dict)
    consumers: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _DeadLetter:
    id: Id
    letter: DeadLetter


class _Topic:
    def __init__(self, ids: IdClock) -> None:
        self.ids = ids
        self.keys: list[Id] = []
        self.payloads: dict[Id, bytes] = {}
        self.groups: dict[str, _Group] = {}
        self.dead: list[_DeadLetter] = []
        self.dead_ids = IdClock(ids._now_ms)
        self.idempotency: dict[str, tuple[str, float]] = {}
        self.arrived = asyncio.Event()
        self.published = False

    def lag(self, group: _Group) -> int:
        return len(self.keys) - bisect.bisect_right(self.keys, group.last_delivered)

    def backlog(self) -> int:
        return max((self.lag(g) + len(g.pending) for g in self.groups.values()), default=0)

    def after(self, after: Id, count: int) -> list[Id]:
        start = bisect.bisect_right(self.keys, after)
        return self.keys[start : start + count]

    def trim(self, retention: int) -> None:
        excess = len(self.keys) - retention
        if excess <= 0:
            return
        cut = self.keys[excess]  # keep this entry and all after it
        for group in self.groups.values():
            floor = min(group.pending) if group.pending else self.next_after(group.last_delivered)
            cut = min(cut, floor)
        drop = bisect.bisect_left(self.keys, cut)
        for key in self.keys[:drop]:
            del self.payloads[key]
        del self.keys[:drop]

    def next_after(self, value: Id) -> Id:
        return (value[0], value[1] + 1)


class _Store:
    def __init__(self) -> None:
        self.topics: dict[str, _Topic] = {}
        self.partitions: dict[str, int] = {}
        self.ids = IdClock(lambda: time.time_ns() // 1_000_000)


_stores: dict[str, _Store] = {}


def _store_named(name: str) -> _Store:
    store = _stores.get(name)
    if store is None:
        store = _stores[name] = _Store()
    return store


class MemoryStore:
    """Topics kept in this process's memory. See ``mqctl.backends.store.StreamStore``."""

    def __init__(self, name: str = "", *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._store = _store_named(name)
        self._monotonic = monotonic
        self._closed = False

    def _topic(self, name: str, *, create: bool = False) -> _Topic | None:
        self._check_open()
        topic = self._store.topics.get(name)
        if topic is None and create:
            topic = self._store.topics[name] = _Topic(self._store.ids)
        return topic

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerUnavailable("This memory:// broker is closed; connect again to use it.")

    async def add(self, topic: str, units: Sequence[Sequence[Outgoing]], limits: Limits) -> list[list[str] | QueueFull]:
        t = self._topic(topic, create=True)
        assert t is not None
        if not t.published:  # the topic's first publish creates its default group
            t.published = True
            if limits.default_group and limits.default_group not in t.groups:
                t.groups[limits.default_group] = _Group(ZERO)
        now = self._monotonic()
        results: list[list[str] | QueueFull] = []
        for unit in units:
            fresh = [m for m in unit if self._known(t, m.idempotency_key, now) is None]
            backlog = t.backlog()
            if fresh and t.groups and limits.max_backlog is not None and backlog + len(fresh) > limits.max_backlog:
                results.append(QueueFull(topic, backlog, limits.max_backlog))
                continue
            ids = []
            for message in unit:
                known = self._known(t, message.idempotency_key, now)
                if known is not None:
                    ids.append(known)
                    continue
                key = t.ids.next()
                t.keys.append(key)
                t.payloads[key] = message.payload
                ids.append(format_id(key))
                if message.idempotency_key is not None:
                    t.idempotency[message.idempotency_key] = (ids[-1], now + limits.idempotency_window_s)
            results.append(ids)
        t.trim(limits.retention)
        t.arrived.set()
        t.arrived = asyncio.Event()
        return results

    @staticmethod
    def _known(t: _Topic, key: str | None, now: float) -> str | None:
        if key is None:
            return None
        known = t.idempotency.get(key)
        if known is None:
            return None
        if known[1] <= now:
            del t.idempotency[key]
            return None
        return known[0]

    async def partitions(self, topic: str, *, create: int | None = None) -> int:
        self._check_open()
        known = self._store.partitions.get(topic)
        if known is not None:
            return known
        if create is None:
            return 1
        t = self._store.topics.get(topic)
        count = self._store.partitions[topic] = 1 if t is not None and (t.keys or t.groups) else create
        return count

    async def create_group(self, topic: str, group: str, *, from_start: bool) -> bool:
        t = self._topic(topic, create=True)
        assert t is not None
        if group in t.groups:
            return False
        t.groups[group] = _Group(ZERO if from_start else (t.keys[-1] if t.keys else ZERO))
        return True

    async def read_group(
        self, topic: str, group: str, consumer: str, *, count: int, block_s: float, ack: Sequence[str] = ()
    ) -> list[Entry]:
        if ack:
            await self.ack(topic, group, ack)
        deadline = self._monotonic() + block_s
        while True:
            t = self._topic(topic, create=True)
            assert t is not None
            g = t.groups.get(group)
            if g is None:  # deleted by hand: start again from now, as Redis's reader does
                g = t.groups[group] = _Group(t.keys[-1] if t.keys else ZERO)
            g.consumers.add(consumer)
            keys = t.after(g.last_delivered, count)
            if keys:
                now = self._monotonic()
                g.last_delivered = keys[-1]
                for key in keys:
                    g.pending[key] = _Pending(consumer, now, 1)
                return [Entry(format_id(k), t.payloads[k], 1) for k in keys]
            if not await self._wait(t, deadline):
                return []

    async def _wait(self, t: _Topic, deadline: float) -> bool:
        remaining = deadline - self._monotonic()
        if remaining <= 0:
            return False
        try:
            async with asyncio.timeout(remaining):
                await t.arrived.wait()
        except TimeoutError:
            return False
        self._check_open()
        return True

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
        t = self._topic(topic)
        g = t.groups.get(group) if t else None
        if t is None or g is None:
            return [], 0
        now = self._monotonic()
        claimed: list[Entry] = []
        dead = 0
        for key, info in list(g.pending.items()):
            if len(claimed) >= count:
                break
            if now - info.delivered_at < min_idle_s:
                continue
            if key not in t.payloads:  # trimmed by hand: nothing left to deliver
                del g.pending[key]
                continue
            if info.count >= max_attempts:
                self._bury(t, g, group, key, reason, info.count)
                dead += 1
                continue
            info.consumer, info.delivered_at, info.count = consumer, now, info.count + 1
            claimed.append(Entry(format_id(key), t.payloads[key], info.count))
        g.consumers.add(consumer)
        return claimed, dead

    def _bury(self, t: _Topic, g: _Group, group: str, key: Id, reason: str, attempts: int) -> None:
        del g.pending[key]
        dead_id = t.dead_ids.next()
        t.dead.append(
            _DeadLetter(
                dead_id,
                DeadLetter(
                    id=format_id(dead_id),
                    original_id=format_id(key),
                    payload=t.payloads[key],
                    group=group,
                    reason=reason,
                    attempts=attempts,
                    dead_at_ms=dead_id[0],
                ),
            )
        )

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> int:
        t = self._topic(topic)
        g = t.groups.get(group) if t else None
        if g is None:
            return 0
        return sum(g.pending.pop(parse_id(i), None) is not None for i in ids)

    async def release(
        self, topic: str, group: str, consumer: str, ids: Sequence[str], *, ready_in_s: float, min_idle_s: float
    ) -> None:
        t = self._topic(topic)
        g = t.groups.get(group) if t else None
        if g is None:
            return
        delivered_at = self._monotonic() - max(min_idle_s - ready_in_s, 0.0)
        for i in ids:
            info = g.pending.get(parse_id(i))
            if info is not None:
                info.delivered_at = delivered_at

    async def dead_letter(self, topic: str, group: str, entry_id: str, *, reason: str, attempts: int) -> bool:
        t = self._topic(topic)
        g = t.groups.get(group) if t else None
        key = parse_id(entry_id)
        if t is None or g is None or key not in g.pending or key not in t.payloads:
            return False
        self._bury(t, g, group, key, reason, attempts)
        return True

    async def read_after(self, topic: str, after_id: str, *, count: int, block_s: float) -> list[Entry]:
        deadline = self._monotonic() + block_s
        t = self._topic(topic, create=True)
        assert t is not None
        after = (t.keys[-1] if t.keys else ZERO) if after_id == "$" else parse_id(after_id)
        while True:
            keys = t.after(after, count)
            if keys:
                return [Entry(format_id(k), t.payloads[k]) for k in keys]
            if not await self._wait(t, deadline):
                return []

    async def last_id(self, topic: str) -> str:
        t = self._topic(topic)
        return format_id(t.keys[-1]) if t and t.keys else "0-0"

    async def stats(self, topic: str) -> TopicStats:
        t = self._topic(topic)
        if t is None:
            return TopicStats(topic=topic, length=0, dead_letters=0)
        now_ms = time.time() * 1000
        groups = tuple(
            GroupStats(
                name=name,
                backlog=t.lag(g) + len(g.pending),
                lag=t.lag(g),
                pending=len(g.pending),
                consumers=len(g.consumers),
                oldest_pending_age_s=max(0.0, now_ms / 1000 - min(g.pending)[0] / 1000) if g.pending else None,
                last_delivered_id=format_id(g.last_delivered),
            )
            for name, g in sorted(t.groups.items())
        )
        return TopicStats(
            topic=topic,
            length=len(t.keys),
            dead_letters=len(t.dead),
            groups=groups,
            last_id=format_id(t.keys[-1]) if t.keys else "0-0",
            first_id=format_id(t.keys[0]) if t.keys else None,
        )

    async def topics(self) -> list[str]:
        self._check_open()
        return [name for name, t in self._store.topics.items() if t.keys or t.groups]

    async def dead_letters(self, topic: str, *, count: int, after: str) -> list[DeadLetter]:
        t = self._topic(topic)
        if t is None:
            return []
        start = ZERO if after in ("-", "0") else parse_id(after)
        return [d.letter for d in t.dead if d.id > start][:count]

    async def remove_dead_letters(self, topic: str, ids: Sequence[str] | None) -> int:
        t = self._topic(topic)
        if t is None:
            return 0
        before = len(t.dead)
        if ids is None:
            t.dead.clear()
        else:
            wanted = set(ids)
            t.dead = [d for d in t.dead if d.letter.id not in wanted]
        return before - len(t.dead)

    async def ping(self, *, write: bool = False) -> None:
        self._check_open()

    async def warnings(self) -> list[str]:
        return []  # it never deletes what it holds

    async def aclose(self) -> None:
        self._closed = True


def from_url(url: str, **options: object) -> StreamBackend:
    """``memory://`` or ``memory://NAME``: brokers with the same NAME share one store."""
    if options:
        raise ConfigError(f"memory:// takes no backend options; got {sorted(options)!r}.")
    parts = urlsplit(url)
    return StreamBackend(MemoryStore(parts.netloc + parts.path.strip("/")))
