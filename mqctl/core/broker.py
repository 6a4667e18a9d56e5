"""The broker: mqctl's one front for publishing, subscribing and operating on topics.

It holds the policy (validation, size limit, publish coalescing and retry, filters,
redelivery backoff, dead-letter decisions) and delegates storage to a ``Backend``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mqctl.core import schedule, tracing
from mqctl.core.backend import Backend, DeadLetter, Limits, Outgoing, TopicStats
from mqctl.core.broadcast import Broadcast
from mqctl.core.coalescer import Coalescer
from mqctl.core.errors import (
    BrokerOutOfMemory,
    BrokerRefused,
    BrokerUnavailable,
    ConfigError,
    MessageTooLarge,
    PublishTimeout,
    QueueFull,
)
from mqctl.core.filters import Predicate
from mqctl.core.message import Message, as_message, encode_any
from mqctl.core.names import check_name
from mqctl.core.retry import RetryPolicy, retry_call
from mqctl.core.subscription import Subscription

DEFAULT_GROUP = "default"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    """Limits and policies of a broker; every field is a keyword of ``mqctl.connect``."""

    max_backlog: int | None = None
    """Refuse a publish that would leave more unacknowledged messages than this (None: no cap)."""
    max_message_bytes: int = 1024 * 1024
    retention: int = 10_000
    """Acknowledged messages kept per topic for broadcast resume and inspection."""
    publish_timeout_s: float = 5.0
    publish_retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(base_s=0.05, cap_s=1.0))
    redelivery: RetryPolicy = field(default_factory=lambda: RetryPolicy(base_s=1.0, cap_s=30.0))
    default_group: str | None = None
    """A group created with each new topic, reading from its start, so messages wait for a
    consumer that comes later. None (the default): the library creates no group of its own
    accord; a group keeps the messages published after it was created (``create_group``,
    or ``subscribe(..., from_start=True)`` for what is still retained). The services set it."""
    idempotency_window_s: float = 3600.0
    max_batch: int = 1000

    def __post_init__(self) -> None:
        if self.max_backlog is not None and self.max_backlog < 1:
            raise ConfigError(f"max_backlog must be a positive number or None, got {self.max_backlog!r}.")
        if self.max_message_bytes < 64:
            raise ConfigError(f"max_message_bytes must be at least 64, got {self.max_message_bytes!r}.")
        if self.retention < 0:
            raise ConfigError(f"retention must be >= 0, got {self.retention!r}.")
        if self.publish_timeout_s <= 0:
            raise ConfigError(f"publish_timeout_s must be > 0, got {self.publish_timeout_s!r}.")
        if self.default_group is not None:
            check_name("group", self.default_group)


def _default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _should_retry(exc: BaseException) -> bool:
    """Retry what passes by itself (a restart, a failover), not what an operator must fix."""
    return isinstance(exc, BrokerUnavailable) and not isinstance(exc, BrokerOutOfMemory | BrokerRefused)


class Broker:
    """Publish to and subscribe from topics on one backend. Get one from ``mqctl.connect``."""

    def __init__(self, backend: Backend, options: BrokerOptions | None = None, *, url: str = "") -> None:
        self.backend = backend
        self.options = options or BrokerOptions()
        self.url = url
        self._limits = Limits(
            max_backlog=self.options.max_backlog,
            retention=self.options.retention,
            idempotency_window_s=self.options.idempotency_window_s,
            default_group=self.options.default_group,
        )
        self._coalescers: dict[str, Coalescer[list[Outgoing], list[str]]] = {}
        self._failing: dict[str, Exception] = {}  # a stream's last error while its publish is retried
        self._readers = _OpenReaders(self)
        self._promoters = schedule.Promoters(self.subscribe, self.publish, self.options.publish_retry)
        self._closing = False

    # -- publishing ---------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        message: Message | Mapping[str, Any],
        *,
        key: str | None = None,
        idempotency_key: str | None = None,
        delay_s: float | None = None,
    ) -> str:
        """Store ``message`` on ``topic`` and return its id once the backend has it.

        With ``delay_s``, it is stored at once and becomes visible to the topic's groups after
        that many seconds, not before (``mqctl.core.schedule``); the id returned is then its id on
        the schedule, and it gets a new one on the topic when it is due.

        On a partitioned topic, ``key`` picks the partition (same key, same partition, so
        messages of one key keep their order); without one, partitions are filled in turn.
        Concurrent calls share round trips. Raises ``InvalidMessage``, ``MessageTooLarge``,
        ``QueueFull`` (nothing stored), ``PublishTimeout`` or ``BrokerUnavailable``.
        """
        if idempotency_key is not None and (not isinstance(idempotency_key, str) or not idempotency_key):
            raise ConfigError(f"idempotency_key must be a non-empty string, got {idempotency_key!r}.")
        if delay_s is not None and schedule.check_delay(delay_s) > 0:
            check_name("topic", topic)
            message = schedule.scheduled(as_message(message), delay_s, key)
            topic, key = schedule.schedule_topic(topic), None
        return (await self._submitted(topic, [self._outgoing(message, idempotency_key, key)]))[0]

    async def publish_many(
        self,
        topic: str,
        messages: Iterable[Message | Mapping[str, Any]],
        *,
        key: str | None = None,
        delay_s: float | None = None,
    ) -> list[str]:
        """Store every message in one round trip, all or none, and return their ids in order.

        On a partitioned topic they all go to one partition (``key``'s, or the next in turn).
        ``delay_s`` delays them all, as in ``publish``.
        """
        if delay_s is not None and schedule.check_delay(delay_s) > 0:
            check_name("topic", topic)
            now_s = time.time()
            messages = [schedule.scheduled(as_message(m), delay_s, key, now_s=now_s) for m in messages]
            topic, key = schedule.schedule_topic(topic), None
        unit = [self._outgoing(m, None, key) for m in messages]
        if not unit:
            return []
        return await self._submitted(topic, unit)

    async def _submitted(self, topic: str, unit: list[Outgoing]) -> list[str]:
        """``unit`` stored on ``topic`` through its coalescer, within ``publish_timeout_s`` in all:
        the wait for an earlier batch in flight counts too, or a publish could take twice its
        deadline when the broker hangs."""
        try:
            # The coalescer keeps the deadline: one timer for all waiting publishes, not one each.
            return await self._coalescer(topic).submit(unit)
        except TimeoutError as exc:
            if isinstance(exc, PublishTimeout):
                raise
            deadline_s = self.options.publish_timeout_s
            failing = self._failing.get(topic)
            said = f" Its last answer: {failing}" if failing is not None else " It may be overloaded or unreachable."
            raise PublishTimeout(
                f"The broker did not take the message within {deadline_s:g} s.{said} "
                "The message may or may not be stored (use an idempotency key to retry safely)."
            ) from exc

    async def create_topic(self, topic: str, *, partitions: int = 1) -> int:
        """Create ``topic`` with ``partitions`` partitions, so a hot topic spreads over a cluster.

        Idempotent. A topic keeps the count it was created with: one that exists with another
        count (a topic first used without ``create_topic`` has 1) raises ``ConfigError``, as does
        a count above 1 on a backend without partitions. Returns the count.
        """
        check_name("topic", topic)
        if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
            raise ConfigError(f"partitions must be a whole number of at least 1, got {partitions!r}.")
        if partitions != 1 and not self.backend.capabilities.partitions:
            raise ConfigError(
                f"{self.url.split('://')[0]}:// has no partitions: create {topic!r} with partitions=1 "
                "(the broker spreads load on its own terms)."
            )
        n = await retry_call(
            lambda: self.backend.create_topic(topic, partitions=partitions),
            policy=self.options.publish_retry,
            deadline_s=self.options.publish_timeout_s,
            should_retry=_should_retry,
        )
        if n != partitions:
            raise ConfigError(
                f"Topic {topic!r} already exists with {n} partition(s), not {partitions}; the count is fixed "
                "when a topic is first used. Use another topic name, or keep the count it has."
            )
        if n > 1 and self.options.default_group is not None:
            await self.backend.create_group(topic, self.options.default_group, from_start=True)
        return n

    def _outgoing(self, message: Message | Mapping[str, Any], idempotency_key: str | None, key: str | None) -> Outgoing:
        if key is not None and (not isinstance(key, str) or not key):
            raise ConfigError(f"A message key must be a non-empty string, got {key!r}.")
        payload = encode_any(tracing.stamped(message))
        if len(payload) > self.options.max_message_bytes:
            raise MessageTooLarge(len(payload), self.options.max_message_bytes)
        return Outgoing(payload, idempotency_key, key)

    def _coalescer(self, topic: str) -> Coalescer[list[Outgoing], list[str]]:
        coalescer = self._coalescers.get(topic)
        if coalescer is None:
            check_name("topic", topic)

            async def send(units: Sequence[list[Outgoing]]) -> list[list[str] | QueueFull]:
                return await self._add(topic, units)

            coalescer = self._coalescers[topic] = Coalescer(
                send, max_batch=self.options.max_batch, timeout_s=self.options.publish_timeout_s
            )
        return coalescer

    async def _add(self, stream: str, units: Sequence[Sequence[Outgoing]]) -> list[list[str] | QueueFull]:
        def should_retry(exc: Exception) -> bool:
            if not _should_retry(exc):
                return False
            self._failing[stream] = exc  # what a publish that times out meanwhile is told
            return True

        try:
            return await retry_call(
                lambda: self.backend.add(stream, units, self._limits),
                policy=self.options.publish_retry,
                deadline_s=self.options.publish_timeout_s,
                should_retry=should_retry,
            )
        finally:
            self._failing.pop(stream, None)

    # -- consuming ----------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        *,
        group: str = DEFAULT_GROUP,
        consumer: str | None = None,
        filter: Predicate | None = None,
        poll_interval: float = 2.0,
        batch: int = 100,
        ack_timeout: float = 30.0,
        max_attempts: int = 5,
        from_start: bool = False,
    ) -> Subscription:
        """A subscription to ``topic`` as one consumer of ``group``.

        Use it as ``async with broker.subscribe(...) as sub: async for delivery in sub``.
        A new group reads from now on (``from_start=True``: from the oldest retained message).
        Deliveries not acknowledged within ``ack_timeout`` seconds, or nacked, come back with
        ``attempt + 1`` after a backoff; after ``max_attempts`` they go to the dead letters.
        """
        return Subscription(
            self.backend,
            topic=check_name("topic", topic),
            group=check_name("group", group),
            consumer=check_name("consumer", consumer or _default_consumer_name()),
            filter=filter,
            poll_interval_s=poll_interval,
            batch=batch,
            ack_timeout_s=ack_timeout,
            max_attempts=max_attempts,
            from_start=from_start,
            redelivery=self.options.redelivery,
            live=self._readers,
        )

    def broadcast(
        self,
        topic: str,
        *,
        last_id: str | None = None,
        filter: Predicate | None = None,
        poll_interval: float = 2.0,
        batch: int = 100,
    ) -> Broadcast:
        """Every message of ``topic`` as it arrives, with no group and no acks.

        With ``last_id`` (a message id, or the ``last_id`` of an earlier broadcast), first
        everything still retained after it (a resume); ``"0"`` reads all that is retained.
        """
        return Broadcast(
            self.backend,
            topic=check_name("topic", topic),
            last_id=last_id,
            filter=filter,
            poll_interval_s=poll_interval,
            batch=batch,
            live=self._readers,
        )

    def _reader_opened(self, topic: str) -> None:
        if not self._closing:
            self._promoters.start(topic)

    async def _reader_closed(self, topic: str) -> None:
        """A reader of ``topic`` closed: the last one takes the topic's promoter with it."""
        if not any(r.topic == topic for r in self._readers.readers):
            await self._promoters.stop(topic)

    async def create_group(self, topic: str, group: str, *, from_start: bool = True) -> bool:
        """Create ``group`` on ``topic`` so it keeps every message from now (or from the start)."""
        return await self.backend.create_group(
            check_name("topic", topic), check_name("group", group), from_start=from_start
        )

    async def history_gap(self, topic: str, last_id: str) -> tuple[str, str | None] | None:
        """Why a broadcast resuming after ``last_id`` may miss messages, and the oldest position
        still retained; None when nothing it follows is gone."""
        return await self.backend.history_gap(check_name("topic", topic), last_id)

    def check_position(self, position: str) -> str:
        """``position`` if it can be a message id or broadcast position of this broker, else
        ``ConfigError`` saying what one looks like."""
        return self.backend.check_position(position)

    def covers(self, position: str, message_id: str) -> bool:
        """True if a broadcast at ``position`` (its ``last_id``) has read ``message_id`` already."""
        return self.backend.covers(position, message_id)

    # -- operating ----------------------------------------------------------------

    async def stats(self, topic: str) -> TopicStats:
        """Length, backlog, pending per group, dead-letter count and partitions of ``topic``."""
        stats = await self.backend.stats(check_name("topic", topic))
        if schedule.is_schedule(topic):
            return stats
        # The schedule keeps acknowledged entries too: what its group still holds is what waits
        # (all of it while no promoter has created the group yet).
        plan = await self.backend.stats(schedule.schedule_topic(topic))
        group = plan.group(schedule.GROUP)
        return dataclasses.replace(stats, scheduled=plan.length if group is None else group.backlog)

    async def topics(self) -> list[str]:
        """Every topic that has had a message (a delayed one too) or a group; not the internal schedules."""
        return sorted({schedule.topic_of(t) for t in await self.backend.topics()})

    async def dead_letters(self, topic: str, *, count: int = 100, after: str = "") -> list[DeadLetter]:
        """Dead letters of ``topic``, oldest first, after dead letter ``after`` ("": from the oldest)."""
        return await self.backend.dead_letters(check_name("topic", topic), count=count, after=after)

    async def replay(self, topic: str, ids: Sequence[str] | None = None) -> list[str]:
        """Publish dead letters back onto ``topic`` (all, or those in ``ids``) and remove them.

        Returns the new message ids. A crash between the two steps leaves a copy in the
        dead letters (a duplicate), never a loss.
        """
        check_name("topic", topic)
        wanted = None if ids is None else set(ids)
        replayed: list[str] = []
        after = ""
        while True:
            page = await self.backend.dead_letters(topic, count=500, after=after)
            if not page:
                break
            after = page[-1].id
            chosen = [d for d in page if wanted is None or d.id in wanted]
            if not chosen:
                continue
            results = await self._add(topic, [[Outgoing(d.payload)] for d in chosen])
            stored = []
            for letter, result in zip(chosen, results, strict=True):
                if isinstance(result, QueueFull):
                    raise result
                replayed.extend(result)
                stored.append(letter.id)
            await self.backend.remove_dead_letters(topic, stored)
        return replayed

    async def purge_dead_letters(self, topic: str) -> int:
        """Delete every dead letter of ``topic``; returns how many there were."""
        return await self.backend.remove_dead_letters(check_name("topic", topic), None)

    async def ping(self, *, write: bool = False) -> None:
        """Return when the broker answers (``write=True``: and would take a publish now); raise
        ``BrokerUnavailable``, or ``BrokerRefused`` saying why the broker refuses us, otherwise."""
        await self.backend.ping(write=write)

    async def warnings(self) -> list[str]:
        """What about the broker's configuration can lose messages, in sentences (e.g. a Redis set
        to evict keys when it is full); [] when nothing, or when the broker will not say."""
        return await self.backend.warnings()

    async def aclose(self) -> None:
        """Finish publishes in flight, close subscriptions and release connections."""
        self._closing = True
        await self._promoters.aclose()
        await asyncio.gather(*(r.aclose() for r in list(self._readers.readers)), return_exceptions=True)
        for coalescer in list(self._coalescers.values()):
            await coalescer.aclose()
        await self.backend.aclose()

    async def __aenter__(self) -> Broker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _OpenReaders:
    """A broker's open subscriptions and broadcasts (``subscription.Readers``)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.readers: set[Subscription | Broadcast] = set()

    def add(self, reader: Subscription | Broadcast) -> None:
        self.readers.add(reader)
        self.broker._reader_opened(reader.topic)

    async def remove(self, reader: Subscription | Broadcast) -> None:
        self.readers.discard(reader)
        await self.broker._reader_closed(reader.topic)
