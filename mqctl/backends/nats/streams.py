"""A topic's stream and its groups' durable consumers, set up and trimmed."""

from __future__ import annotations

import asyncio

import nats.js.errors as jerr
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from mqctl.backends.nats.connection import Connection, escape
from mqctl.core.backend import Limits, ReaderOptions


class Streams:
    """The streams of one backend's topics: created on first use, kept in line with the limits."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.known: dict[str, Limits | None] = {}  # topic -> the limits its stream was set up with
        self._trimming: dict[str, asyncio.Lock] = {}

    async def ensure(self, topic: str, limits: Limits | None) -> None:
        """Create the topic's stream (and the default group with it), or bring ``max_msgs`` in line."""
        if topic in self.known and (limits is None or self.known[topic] == limits):
            return
        js = await self.connection.js()
        # The stream refuses at max_backlog messages: then a publish drops acknowledged history to make
        # room and counts the backlog itself (_make_room), refusing only over max_backlog.
        max_msgs = -1 if limits is None or limits.max_backlog is None else limits.max_backlog
        config = StreamConfig(
            name=self.connection.stream(topic),
            subjects=[self.connection.subject(topic)],
            retention=RetentionPolicy.LIMITS,
            max_msgs=max_msgs,
            discard=DiscardPolicy.NEW,
            storage=StorageType.FILE,
            num_replicas=self.connection.replicas,
            duplicate_window=max(limits.idempotency_window_s, 0.001) if limits is not None else 120.0,
            allow_atomic=True,
        )
        async with self.connection.errors():
            try:
                info = await js.stream_info(config.name or "")
            except jerr.NotFoundError:
                await js.add_stream(config)
                if limits is not None and limits.default_group:
                    await self.create_consumer(topic, limits.default_group, from_start=True)
            else:
                if limits is not None and (
                    info.config.max_msgs != max_msgs or info.config.duplicate_window != config.duplicate_window
                ):
                    await js.update_stream(config)
                if limits is not None and limits.default_group and not info.state.last_seq:
                    # the topic's first publish (a subscriber made the stream): its default group now
                    await self.create_consumer(topic, limits.default_group, from_start=True)
        self.known[topic] = limits if limits is not None else self.known.get(topic)

    async def create_consumer(
        self,
        topic: str,
        group: str,
        *,
        from_start: bool,
        options: ReaderOptions | None = None,
        start_seq: int | None = None,
    ) -> bool:
        """Create (or bring in line) the group's durable consumer; False if it existed.

        "From now" is the stream's next sequence, read here, not ``DeliverPolicy.NEW``: on a
        cluster a new consumer fixes "new" when its leader starts, which can be after publishes
        that another process, seeing the consumer exist, already made (they were skipped)."""
        js = await self.connection.js()
        if not from_start and start_seq is None:
            start_seq = (await js.stream_info(self.connection.stream(topic))).state.last_seq + 1
        config = ConsumerConfig(
            durable_name=escape(group),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW,
            ack_wait=options.ack_timeout_s if options is not None else 30.0,
            max_deliver=options.max_attempts + 1 if options is not None else 6,
            max_ack_pending=-1,
        )
        if start_seq is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = start_seq
        try:
            existing = await js.consumer_info(self.connection.stream(topic), escape(group))
        except jerr.NotFoundError:
            await js.add_consumer(self.connection.stream(topic), config)
            return True
        if options is not None and (
            existing.config.ack_wait != config.ack_wait or existing.config.max_deliver != config.max_deliver
        ):
            config.deliver_policy = existing.config.deliver_policy  # fixed at creation
            config.opt_start_seq = existing.config.opt_start_seq
            await js.add_consumer(self.connection.stream(topic), config)  # an update: the last reader's settings win
        return False

    async def make_room(self, topic: str, limits: Limits, *, full: bool = False) -> int:
        """Drop what every group has acknowledged beyond the newest ``limits.retention`` messages
        (``full``: all of it, to make room) but never what a group still needs, and return the
        topic's backlog: the most unacknowledged by one group. One at a time per topic."""
        lock = self._trimming.setdefault(topic, asyncio.Lock())
        async with lock:
            js = await self.connection.js()
            stream = self.connection.stream(topic)
            state = (await js.stream_info(stream)).state
            consumers = [c for c in await js.consumers_info(stream) if c.config.durable_name]
            if consumers:
                floor = min(c.ack_floor.stream_seq if c.ack_floor else 0 for c in consumers)
                backlog = max(int(c.num_pending or 0) + int(c.num_ack_pending or 0) for c in consumers)
            else:  # no group: nothing is waited for, history is all there is
                floor, backlog = state.last_seq, 0
            keep_from = floor + 1 if full else min(floor + 1, state.last_seq + 1 - limits.retention)
            if keep_from > state.first_seq:
                await js.purge_stream(stream, seq=keep_from)
            return backlog
