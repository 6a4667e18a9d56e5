"""``NatsBackend``: the ``Backend`` protocol on JetStream, composed of the pieces beside it."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import nats.js.errors as jerr
from nats.aio.client import Client
from nats.js import JetStreamContext

from mqctl.backends.nats.connection import DEFAULT_PREFIX, Connection, sequence_of, unescape
from mqctl.backends.nats.dead_letters import DeadLetters
from mqctl.backends.nats.publishing import Publishing
from mqctl.backends.nats.readers import NatsBroadcast, NatsGroupReader
from mqctl.backends.nats.streams import Streams
from mqctl.core.backend import (
    Capabilities,
    DeadLetter,
    GroupStats,
    Limits,
    Outgoing,
    ReaderOptions,
    TopicStats,
)
from mqctl.core.errors import ConfigError, QueueFull


class NatsBackend:
    """Topics on NATS JetStream. See ``mqctl.core.backend.Backend`` and the package's docstring."""

    capabilities = Capabilities(partitions=False, retained_history=True, consumer_names=False)

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.streams = Streams(self.connection)
        self.dead = DeadLetters(self.connection)
        self.publishing = Publishing(self.connection, self.streams)

    async def js(self) -> JetStreamContext:
        """The JetStream context, connecting on first use."""
        return await self.connection.js()

    def stream(self, topic: str) -> str:
        """The name of ``topic``'s stream."""
        return self.connection.stream(topic)

    def subject(self, topic: str) -> str:
        """The subject ``topic``'s messages are published on."""
        return self.connection.subject(topic)

    # -- topics and groups ---------------------------------------------------------------

    async def create_topic(self, topic: str, *, partitions: int) -> int:
        if partitions != 1:
            raise ConfigError(f"nats:// has no partitions: create {topic!r} with partitions=1.")
        await self.streams.ensure(topic, None)
        return 1

    async def create_group(self, topic: str, group: str, *, from_start: bool) -> bool:
        await self.streams.ensure(topic, None)
        async with self.connection.errors():
            return await self.streams.create_consumer(topic, group, from_start=from_start)

    # -- publishing ----------------------------------------------------------------------

    async def add(self, topic: str, units: Sequence[Sequence[Outgoing]], limits: Limits) -> list[list[str] | QueueFull]:
        return await self.publishing.add(topic, units, limits)

    # -- consuming -----------------------------------------------------------------------

    def group_reader(
        self,
        topic: str,
        group: str,
        consumer: str,
        options: ReaderOptions,
        *,
        dead_reason: str,
        on_dead_letter: Callable[[int], None] | None = None,
    ) -> NatsGroupReader:
        return NatsGroupReader(
            self.connection,
            self.streams,
            self.dead,
            topic,
            group,
            options,
            dead_reason=dead_reason,
            on_dead_letter=on_dead_letter,
        )

    async def broadcast_reader(self, topic: str, after: str | None) -> NatsBroadcast:
        await self.streams.ensure(topic, None)
        js = await self.connection.js()
        if after is None or after == "$":
            async with self.connection.errors():
                state = (await js.stream_info(self.connection.stream(topic))).state
            position = state.last_seq
        else:
            position = sequence_of(self.check_position(after))
        return NatsBroadcast(self.connection, topic, position)

    def covers(self, position: str, entry_id: str) -> bool:
        return position.isdigit() and entry_id.isdigit() and int(entry_id) <= int(position)

    def check_position(self, position: str) -> str:
        if position == "$" or (position.isdigit() and len(position) <= 20):
            return position
        if position in ("0-0",):
            return "0"
        raise ConfigError(f"Invalid position {position!r}; on nats:// a position is a message id (a stream sequence).")

    async def history_gap(self, topic: str, after: str) -> tuple[str, str | None] | None:
        position = sequence_of(self.check_position(after))
        if position == 0:
            return None
        stats = await self.stats(topic)
        first = sequence_of(stats.first_id or "")
        last = sequence_of(stats.last_id)
        if stats.first_id is not None and position + 1 < first:
            return (
                f"Messages after {after!r} may be lost: the oldest message still retained is {stats.first_id!r}. "
                "Resuming from there.",
                stats.first_id,
            )
        if position > last:
            return (
                f"Messages after {after!r} may be lost: the topic holds nothing that recent (its newest message "
                f"is {stats.last_id or 'none'!r}): it was deleted or emptied since. Resuming with its next message.",
                stats.first_id,
            )
        return None

    # -- dead letters --------------------------------------------------------------------

    async def dead_letters(self, topic: str, *, count: int, after: str) -> list[DeadLetter]:
        return await self.dead.list(topic, count=count, after=after)

    async def remove_dead_letters(self, topic: str, ids: Sequence[str] | None) -> int:
        return await self.dead.remove(topic, ids)

    # -- operating -----------------------------------------------------------------------

    async def stats(self, topic: str) -> TopicStats:
        js = await self.connection.js()
        async with self.connection.errors():
            try:
                info = await js.stream_info(self.connection.stream(topic))
            except jerr.NotFoundError:
                return TopicStats(topic=topic, length=0, dead_letters=await self.dead.count(topic))
            consumers = await js.consumers_info(self.connection.stream(topic))
            dead = await self.dead.count(topic)
        groups = tuple(
            sorted(
                (
                    GroupStats(
                        name=unescape(c.name),
                        backlog=int(c.num_pending or 0) + int(c.num_ack_pending or 0),
                        lag=int(c.num_pending or 0),
                        pending=int(c.num_ack_pending or 0),
                        consumers=int(c.num_waiting or 0),
                        last_delivered_id=str(c.delivered.stream_seq) if c.delivered else "",
                    )
                    for c in consumers
                    if c.config.durable_name
                ),
                key=lambda g: g.name,
            )
        )
        state = info.state
        return TopicStats(
            topic=topic,
            length=int(state.messages),
            dead_letters=dead,
            groups=groups,
            last_id=str(state.last_seq) if state.last_seq else "",
            first_id=str(state.first_seq) if state.messages else None,
        )

    async def topics(self) -> list[str]:
        js = await self.connection.js()
        async with self.connection.errors():
            streams = await js.streams_info()
        head, tail = f"{self.connection.prefix}_", "_dead"
        return sorted(
            unescape(s.config.name[len(head) :])
            for s in streams
            if s.config.name and s.config.name.startswith(head) and not s.config.name.endswith(tail)
        )

    async def ping(self, *, write: bool = False) -> None:
        js = await self.connection.js()
        async with self.connection.errors():
            await self.connection.nc.flush(timeout=max(1, round(self.connection.command_timeout_s)))
            if write:
                await js.account_info()  # JetStream answers for this account, within its limits

    async def warnings(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        self.publishing.forget()
        await self.connection.aclose()


def _servers(url: str) -> tuple[list[str], str]:
    """``nats://[user:password@]h:p[,h:p...]`` as nats-py's server URLs, and one to show (no secret)."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    if not hosts:
        raise ConfigError(f"Invalid NATS URL {url!r}; expected nats://host:port[,host:port...].")
    servers = [
        f"nats://{userinfo + '@' if userinfo else ''}{host.strip()}" for host in hosts.split(",") if host.strip()
    ]
    shown = f"nats://{'***@' if userinfo else ''}{hosts}"
    return servers, shown


def from_url(
    url: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    replicas: int = 1,
    command_timeout_s: float = 5.0,
    **connect_options: Any,
) -> NatsBackend:
    """``nats://[user:password@]host:port[,host:port...]``: NATS with JetStream (nats-server -js).

    ``prefix`` namespaces every stream (so tests and tenants can share a server); ``replicas``
    is the replication of each stream on a JetStream cluster (3 for a 3-node cluster). Other
    keyword options go to ``nats.connect``.
    """
    servers, shown = _servers(url)
    unknown = set(connect_options) - set(inspect.signature(Client.connect).parameters)
    if unknown:
        raise ConfigError(f"Unknown option(s) for nats:// {sorted(unknown)!r}; see nats.connect for what it takes.")
    return NatsBackend(
        Connection(
            servers,
            prefix=prefix,
            display_url=shown,
            replicas=replicas,
            command_timeout_s=command_timeout_s,
            connect_options=connect_options,
        )
    )
