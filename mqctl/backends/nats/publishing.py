"""Publishing to JetStream: one message a request with one reply subscription, batches atomically."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import nats.js.errors as jerr
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg

from mqctl.backends.nats.connection import Connection
from mqctl.backends.nats.streams import Streams
from mqctl.core.backend import Limits, Outgoing
from mqctl.core.errors import BrokerRefused, ConfigError, QueueFull

MAX_BATCH = 1000
"""Most messages in one atomic batch (the server's default limit)."""
TRIM_EVERY = 1000
"""Messages a process publishes to a topic between two trims of its acknowledged history (fewer
when ``retention`` is smaller, 10 at least)."""
_FULL = 10077  # JetStream: "maximum messages exceeded"


class Publishing:
    """``Backend.add`` on JetStream: singles all at once, batches atomically, room made when full."""

    def __init__(self, connection: Connection, streams: Streams) -> None:
        self.connection = connection
        self.streams = streams
        self._published: dict[str, int] = {}  # topic -> messages published since the last trim
        self._publisher: Publisher | None = None

    def forget(self) -> None:
        """Drop the reply subscription's state (the connection is closing)."""
        self._publisher = None

    async def add(self, topic: str, units: Sequence[Sequence[Outgoing]], limits: Limits) -> list[list[str] | QueueFull]:
        await self.streams.ensure(topic, limits)
        subject = self.connection.subject(topic)
        async with self.connection.errors(self.connection.command_timeout_s * 2):
            self._published[topic] = self._published.get(topic, 0) + sum(len(unit) for unit in units)
            if self._published[topic] >= max(10, min(TRIM_EVERY, limits.retention)):
                self._published[topic] = 0
                await self.streams.make_room(topic, limits)
            publisher = await self.publisher()
            # Every unit of one message at once: one reply each, no round trip waits for another.
            singles = [i for i, unit in enumerate(units) if len(unit) == 1]
            replies = await publisher.publish([units[i][0] for i in singles], subject)
            results: list[list[str] | QueueFull | None] = [None] * len(units)
            for i, reply in zip(singles, replies, strict=True):
                results[i] = [str(reply)] if isinstance(reply, int) else None
                if isinstance(reply, jerr.APIError) and reply.err_code != _FULL:
                    raise reply
            for i, unit in enumerate(units):
                if results[i] is None:  # a batch, or a single the full stream refused
                    results[i] = await self._store(topic, subject, unit, limits, full=len(unit) == 1)
            return [r for r in results if r is not None]

    async def _store(
        self, topic: str, subject: str, unit: Sequence[Outgoing], limits: Limits, *, full: bool
    ) -> list[str] | QueueFull:
        """Store one unit (a batch atomically), making room once if the stream is (``full``: was) full."""
        for attempt in range(2):
            if full or attempt:
                # The stream is at max_backlog: drop acknowledged history to make room, then count.
                backlog = await self.streams.make_room(topic, limits, full=True)
                if limits.max_backlog is not None and backlog + len(unit) > limits.max_backlog:
                    return QueueFull(topic, backlog, limits.max_backlog)
            try:
                if len(unit) == 1:
                    (reply,) = await (await self.publisher()).publish(unit, subject)
                    if isinstance(reply, BaseException):
                        raise reply
                    return [str(reply)]
                return await self._publish_batch(subject, unit)
            except jerr.NoStreamResponseError:
                if attempt:
                    raise
                self.streams.known.pop(topic, None)  # deleted behind our back: set it up again
                await self.streams.ensure(topic, limits)
            except jerr.APIError as exc:
                if exc.err_code != _FULL:
                    raise
                full = True
        return QueueFull(topic, limits.max_backlog or 0, limits.max_backlog or 0)

    async def publisher(self) -> Publisher:
        if self._publisher is None:
            await self.connection.js()
            self._publisher = Publisher(self.connection.nc)
            await self._publisher.start()
        return self._publisher

    def _atomic(self) -> bool:
        """The server stores batches atomically (nats-server 2.12 or newer)."""
        version = self.connection.nc.connected_server_version
        return (version.major, version.minor) >= (2, 12)

    async def _publish_batch(self, subject: str, unit: Sequence[Outgoing]) -> list[str]:
        """Store ``unit`` as one atomic batch (ADR-50): every message or none, in order. Only the
        last message is a request; the server answers once, for all."""
        if len(unit) > MAX_BATCH:
            raise ConfigError(f"nats:// stores at most {MAX_BATCH} messages at once, not {len(unit)}.")
        if not self._atomic():
            raise BrokerRefused(
                f"nats-server {self.connection.nc.connected_server_version} at {self.connection.display_url} cannot "
                "store several messages atomically (that needs 2.12 or newer); publish them one at a time, "
                "or upgrade the server."
            )
        batch_id = uuid.uuid4().hex
        for index, message in enumerate(unit[:-1], start=1):
            headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(index)}
            if message.idempotency_key is not None:
                headers["Nats-Msg-Id"] = message.idempotency_key
            await self.connection.nc.publish(subject, message.payload, headers=headers)
        last = unit[-1]
        headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(len(unit)), "Nats-Batch-Commit": "1"}
        if last.idempotency_key is not None:
            headers["Nats-Msg-Id"] = last.idempotency_key
        js = await self.connection.js()
        ack = await js.publish(subject, last.payload, headers=headers)
        return [str(seq) for seq in range(ack.seq - len(unit) + 1, ack.seq + 1)]


class Publisher:
    """Publishes to JetStream with one wildcard reply subscription and a future per message.

    ``js.publish`` costs about 55 us of client CPU a message here (a timer per request, a token
    from the NUID, a PubAck dataclass); this costs about 22 (bench/bench_nats.py). Each reply is
    the stored sequence, or the API error for that message alone."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox() + "."
        self.futures: dict[str, asyncio.Future[bytes | Msg]] = {}
        self.sent = 0

    async def start(self) -> None:
        await self.nc.subscribe(self.prefix + "*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        future = self.futures.pop(msg.subject[len(self.prefix) :], None)
        if future is not None and not future.done():
            # A status reply (no stream for the subject) carries no body: hand the message over.
            future.set_result(msg.data if msg.data else msg)

    async def publish(self, messages: Sequence[Outgoing], subject: str) -> list[int | BaseException]:
        """Publish every message; the stored sequence of each, or its error."""
        loop = asyncio.get_running_loop()
        tokens: list[str] = []
        futures: list[asyncio.Future[bytes | Msg]] = []
        try:
            for message in messages:
                self.sent += 1
                token = str(self.sent)
                future: asyncio.Future[bytes | Msg] = loop.create_future()
                self.futures[token] = future
                tokens.append(token)
                futures.append(future)
                headers = None if message.idempotency_key is None else {"Nats-Msg-Id": message.idempotency_key}
                await self.nc.publish(subject, message.payload, reply=self.prefix + token, headers=headers)
            replies = await asyncio.gather(*futures)
        finally:
            for token in tokens:
                self.futures.pop(token, None)
        results: list[int | BaseException] = []
        for reply in replies:
            if isinstance(reply, Msg):
                results.append(jerr.NoStreamResponseError())
                continue
            answer = orjson.loads(reply)
            error = answer.get("error")
            results.append(int(answer["seq"]) if error is None else api_error(error))
        return results


def api_error(error: dict[str, Any]) -> jerr.APIError:
    """nats-py's error for a JetStream API error reply (its ``from_error`` raises it)."""
    try:
        jerr.APIError.from_error(error)
    except jerr.APIError as exc:
        return exc
    return jerr.APIError(**error)
