"""The NATS JetStream backend (``nats://host:port[,host:port...]``), on nats-py.

How the broker's terms map onto JetStream:

    topic         a stream, ``<prefix>_<topic>``, of one subject ``<prefix>.t.<topic>``, with
                  limits retention, ``max_msgs`` = ``max_backlog`` and ``DiscardPolicy.NEW``: a
                  full stream refuses, nothing is evicted. mqctl drops acknowledged history itself
                  (``_make_room``): what every group has acknowledged beyond the newest
                  ``retention`` messages, never what a group still needs; a publish that finds the
                  stream full drops all acknowledged history to make room, then counts the backlog
                  and refuses (``QueueFull``) only if that is over ``max_backlog``
    group         a durable pull consumer: ``ack_wait`` is the ack timeout, redelivery after it is
                  the server's, ``num_delivered`` is the attempt; ``nack(delay)`` is ``NAK`` with a
                  delay; every ack, nack and term is a request the server answers once done
    dead letters  a second stream, ``<prefix>_<topic>_dead``, with the reason, group, attempts and
                  original id in headers; ``max_deliver`` is ``max_attempts + 1``: the delivery past
                  the last attempt is moved there by the client (the server alone would stop
                  delivering it and keep it, neither delivered nor dead: a silent loss)
    idempotency   ``Nats-Msg-Id`` within the stream's duplicate window (``idempotency_window_s``)
    publish_many  an atomic batch (nats-server 2.12 or newer: ``allow_atomic``): all or none
    broadcast     an ordered consumer from a stream sequence; a position is that sequence
    ids           stream sequences, as decimal strings

Not interest retention, though it would count the backlog on the server: on a cluster, a
message published while a consumer was still being set up on the stream's leader was dropped
as nobody's (seen in tests/cluster/test_nats_cluster.py). Names are escaped for JetStream
(``.`` and ``_`` become ``_2E`` and ``_5F``). Topics have one partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors as nerr
import nats.js.errors as jerr
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from mqctl.core.backend import (
    Capabilities,
    DeadLetter,
    Entry,
    GroupStats,
    Limits,
    Outgoing,
    ReaderOptions,
    TopicStats,
)
from mqctl.core.errors import BrokerOutOfMemory, BrokerRefused, BrokerUnavailable, ConfigError, QueueFull

log = logging.getLogger(__name__)

MAX_FETCH_S = 0.5
"""Longest one pull request waits; a read blocking longer makes several (see NatsGroupReader.read)."""

DEFAULT_PREFIX = "mqctl"
MAX_BATCH = 1000
"""Most messages in one atomic batch (the server's default limit)."""
TRIM_EVERY = 1000
"""Messages a process publishes to a topic between two trims of its acknowledged history (fewer
when ``retention`` is smaller, 10 at least)."""
_FULL = 10077  # JetStream: "maximum messages exceeded"
_NO_SPACE = (10047, 10023)  # "insufficient resources", "storage resources exceeded"
_ORIGINAL_ID = "Mqctl-Original-Id"
_GROUP = "Mqctl-Group"
_REASON = "Mqctl-Reason"
_ATTEMPTS = "Mqctl-Attempts"


def escape(name: str) -> str:
    """A name as one JetStream token (stream, consumer, subject): ``_`` and ``.`` escaped."""
    return name.replace("_", "_5F").replace(".", "_2E")


def unescape(token: str) -> str:
    return token.replace("_2E", ".").replace("_5F", "_")


def _said(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _seq(value: str) -> int:
    return int(value) if value.isdigit() else 0


class NatsBackend:
    """Topics on NATS JetStream. See ``mqctl.core.backend.Backend`` and this module's docstring."""

    capabilities = Capabilities(partitions=False, retained_history=True, consumer_names=False)

    def __init__(
        self,
        servers: list[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        display_url: str = "nats",
        replicas: int = 1,
        command_timeout_s: float = 5.0,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        if not prefix or not prefix.replace("-", "").isalnum():
            raise ConfigError(f"Invalid NATS prefix {prefix!r}: use letters, digits and '-'.")
        if not isinstance(replicas, int) or not 1 <= replicas <= 5:
            raise ConfigError(f"replicas must be a whole number from 1 to 5, got {replicas!r}.")
        self.servers = servers
        self.prefix = prefix
        self.display_url = display_url
        self.replicas = replicas
        self.command_timeout_s = command_timeout_s
        self._connect_options = connect_options or {}
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connecting = asyncio.Lock()
        self._streams: dict[str, Limits | None] = {}  # topic -> the limits its stream was set up with
        self._published: dict[str, int] = {}  # topic -> messages published since the last trim
        self._trimming: dict[str, asyncio.Lock] = {}
        self._publisher: _Publisher | None = None
        self._closed = False
        self._closings: set[asyncio.Future[Any]] = set()  # readers handing back what cut-short fetches bring

    # -- names ---------------------------------------------------------------------

    def stream(self, topic: str) -> str:
        return f"{self.prefix}_{escape(topic)}"

    def subject(self, topic: str) -> str:
        return f"{self.prefix}.t.{escape(topic)}"

    def dead_stream(self, topic: str) -> str:
        return f"{self.prefix}_{escape(topic)}_dead"

    def dead_subject(self, topic: str) -> str:
        return f"{self.prefix}.d.{escape(topic)}"

    # -- the connection ---------------------------------------------------------------

    async def js(self) -> JetStreamContext:
        """The JetStream context, connecting on first use."""
        if self._js is not None:
            return self._js
        if self._closed:
            raise BrokerUnavailable(f"This broker for {self.display_url} is closed; connect again to use it.")
        async with self._connecting:
            if self._js is None:
                try:
                    self._nc = await nats.connect(
                        servers=self.servers,
                        connect_timeout=min(self.command_timeout_s, 2.0),
                        allow_reconnect=True,
                        max_reconnect_attempts=-1,
                        reconnect_time_wait=0.5,
                        error_cb=self._on_error,
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                        **self._connect_options,
                    )
                except nerr.AuthorizationError as exc:
                    raise BrokerRefused(
                        f"NATS at {self.display_url} refused mqctl's credentials ({exc}). Put the right user and "
                        "password, or token, in the URL (nats://USER:PASSWORD@HOST:PORT)."
                    ) from exc
                except (nerr.Error, OSError, TimeoutError) as exc:
                    raise BrokerUnavailable(f"Cannot reach NATS at {self.display_url}: {_said(exc)}.") from exc
                self._js = self._nc.jetstream(timeout=self.command_timeout_s)
        return self._js

    async def _on_error(self, exc: Exception) -> None:
        if not self._closed:
            log.warning("NATS at %s: %s", self.display_url, exc)

    async def _on_disconnected(self) -> None:
        if not self._closed:  # not our own aclose()
            log.warning("NATS at %s: disconnected; reconnecting", self.display_url)

    async def _on_reconnected(self) -> None:
        log.info("NATS at %s: reconnected", self.display_url)

    @property
    def nc(self) -> Client:
        assert self._nc is not None  # after js()
        return self._nc

    @contextlib.asynccontextmanager
    async def _errors(self, timeout_s: float | None = None) -> AsyncIterator[None]:
        """Turn nats-py's errors into mqctl's, and bound the call in time."""
        bound = timeout_s or self.command_timeout_s
        try:
            async with asyncio.timeout(bound):
                yield
        except TimeoutError as exc:
            raise BrokerUnavailable(f"NATS at {self.display_url} did not answer within {bound:g} s.") from exc
        except jerr.NoStreamResponseError as exc:
            raise BrokerRefused(
                f"NATS at {self.display_url} has no JetStream answering ({exc}): start nats-server with -js "
                "(JetStream on), or enable it for this account."
            ) from exc
        except jerr.APIError as exc:
            raise self._api_error(exc) from exc
        except nerr.AuthorizationError as exc:
            raise BrokerRefused(
                f"NATS at {self.display_url} refused mqctl ({exc}); check the URL's credentials."
            ) from exc
        except (nerr.Error, OSError) as exc:
            raise BrokerUnavailable(f"Cannot reach NATS at {self.display_url}: {_said(exc)}.") from exc

    def _api_error(self, exc: jerr.APIError) -> BrokerUnavailable:
        said = f"{exc.description} (code {exc.code}, error {exc.err_code})"
        if exc.err_code in _NO_SPACE:
            return BrokerOutOfMemory(
                f"NATS at {self.display_url} has no room left for JetStream ({said}); free storage or raise its "
                "JetStream limits, then retry."
            )
        if exc.code in (401, 403):
            return BrokerRefused(f"NATS at {self.display_url} refused mqctl ({said}); grant this user JetStream.")
        return BrokerUnavailable(f"NATS at {self.display_url} cannot do this now: {said}.")

    # -- topics and groups ---------------------------------------------------------------

    async def _ensure_topic(self, topic: str, limits: Limits | None) -> None:
        """Create the topic's stream (and the default group with it), or bring ``max_msgs`` in line."""
        if topic in self._streams and (limits is None or self._streams[topic] == limits):
            return
        js = await self.js()
        # The stream refuses at max_backlog messages: then a publish drops acknowledged history to make
        # room and counts the backlog itself (_make_room), refusing only over max_backlog.
        max_msgs = -1 if limits is None or limits.max_backlog is None else limits.max_backlog
        config = StreamConfig(
            name=self.stream(topic),
            subjects=[self.subject(topic)],
            retention=RetentionPolicy.LIMITS,
            max_msgs=max_msgs,
            discard=DiscardPolicy.NEW,
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            duplicate_window=max(limits.idempotency_window_s, 0.001) if limits is not None else 120.0,
            allow_atomic=True,
        )
        async with self._errors():
            try:
                info = await js.stream_info(config.name or "")
            except jerr.NotFoundError:
                await js.add_stream(config)
                if limits is not None and limits.default_group:
                    await self._create_consumer(topic, limits.default_group, from_start=True)
            else:
                if limits is not None and (
                    info.config.max_msgs != max_msgs or info.config.duplicate_window != config.duplicate_window
                ):
                    await js.update_stream(config)
                if limits is not None and limits.default_group and not info.state.last_seq:
                    # the topic's first publish (a subscriber made the stream): its default group now
                    await self._create_consumer(topic, limits.default_group, from_start=True)
        self._streams[topic] = limits if limits is not None else self._streams.get(topic)

    async def _create_consumer(
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
        js = await self.js()
        if not from_start and start_seq is None:
            start_seq = (await js.stream_info(self.stream(topic))).state.last_seq + 1
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
            existing = await js.consumer_info(self.stream(topic), escape(group))
        except jerr.NotFoundError:
            await js.add_consumer(self.stream(topic), config)
            return True
        if options is not None and (
            existing.config.ack_wait != config.ack_wait or existing.config.max_deliver != config.max_deliver
        ):
            config.deliver_policy = existing.config.deliver_policy  # fixed at creation
            config.opt_start_seq = existing.config.opt_start_seq
            await js.add_consumer(self.stream(topic), config)  # an update: the last reader's settings win
        return False

    async def create_topic(self, topic: str, *, partitions: int) -> int:
        if partitions != 1:
            raise ConfigError(f"nats:// has no partitions: create {topic!r} with partitions=1.")
        await self._ensure_topic(topic, None)
        return 1

    async def create_group(self, topic: str, group: str, *, from_start: bool) -> bool:
        await self._ensure_topic(topic, None)
        async with self._errors():
            return await self._create_consumer(topic, group, from_start=from_start)

    # -- publishing ----------------------------------------------------------------------

    async def add(self, topic: str, units: Sequence[Sequence[Outgoing]], limits: Limits) -> list[list[str] | QueueFull]:
        await self._ensure_topic(topic, limits)
        subject = self.subject(topic)
        async with self._errors(self.command_timeout_s * 2):
            self._published[topic] = self._published.get(topic, 0) + sum(len(unit) for unit in units)
            if self._published[topic] >= max(10, min(TRIM_EVERY, limits.retention)):
                self._published[topic] = 0
                await self._make_room(topic, limits)
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
                backlog = await self._make_room(topic, limits, full=True)
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
                self._streams.pop(topic, None)  # deleted behind our back: set it up again
                await self._ensure_topic(topic, limits)
            except jerr.APIError as exc:
                if exc.err_code != _FULL:
                    raise
                full = True
        return QueueFull(topic, limits.max_backlog or 0, limits.max_backlog or 0)

    async def publisher(self) -> _Publisher:
        if self._publisher is None:
            await self.js()
            self._publisher = _Publisher(self.nc)
            await self._publisher.start()
        return self._publisher

    def _atomic(self) -> bool:
        """The server stores batches atomically (nats-server 2.12 or newer)."""
        version = self.nc.connected_server_version
        return (version.major, version.minor) >= (2, 12)

    async def _make_room(self, topic: str, limits: Limits, *, full: bool = False) -> int:
        """Drop what every group has acknowledged beyond the newest ``limits.retention`` messages
        (``full``: all of it, to make room) but never what a group still needs, and return the
        topic's backlog: the most unacknowledged by one group. One at a time per topic."""
        lock = self._trimming.setdefault(topic, asyncio.Lock())
        async with lock:
            js = await self.js()
            stream = self.stream(topic)
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

    async def _publish_batch(self, subject: str, unit: Sequence[Outgoing]) -> list[str]:
        """Store ``unit`` as one atomic batch (ADR-50): every message or none, in order. Only the
        last message is a request; the server answers once, for all."""
        if len(unit) > MAX_BATCH:
            raise ConfigError(f"nats:// stores at most {MAX_BATCH} messages at once, not {len(unit)}.")
        if not self._atomic():
            raise BrokerRefused(
                f"nats-server {self.nc.connected_server_version} at {self.display_url} cannot store several "
                "messages atomically (that needs 2.12 or newer); publish them one at a time, or upgrade the server."
            )
        batch_id = uuid.uuid4().hex
        for index, message in enumerate(unit[:-1], start=1):
            headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(index)}
            if message.idempotency_key is not None:
                headers["Nats-Msg-Id"] = message.idempotency_key
            await self.nc.publish(subject, message.payload, headers=headers)
        last = unit[-1]
        headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(len(unit)), "Nats-Batch-Commit": "1"}
        if last.idempotency_key is not None:
            headers["Nats-Msg-Id"] = last.idempotency_key
        js = await self.js()
        ack = await js.publish(subject, last.payload, headers=headers)
        return [str(seq) for seq in range(ack.seq - len(unit) + 1, ack.seq + 1)]

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
        return NatsGroupReader(self, topic, group, options, dead_reason=dead_reason, on_dead_letter=on_dead_letter)

    async def broadcast_reader(self, topic: str, after: str | None) -> NatsBroadcast:
        await self._ensure_topic(topic, None)
        js = await self.js()
        if after is None or after == "$":
            async with self._errors():
                state = (await js.stream_info(self.stream(topic))).state
            position = state.last_seq
        else:
            position = _seq(self.check_position(after))
        return NatsBroadcast(self, topic, position)

    def covers(self, position: str, entry_id: str) -> bool:
        return position.isdigit() and entry_id.isdigit() and int(entry_id) <= int(position)

    def check_position(self, position: str) -> str:
        if position == "$" or (position.isdigit() and len(position) <= 20):
            return position
        if position in ("0-0",):
            return "0"
        raise ConfigError(f"Invalid position {position!r}; on nats:// a position is a message id (a stream sequence).")

    async def history_gap(self, topic: str, after: str) -> tuple[str, str | None] | None:
        position = _seq(self.check_position(after))
        if position == 0:
            return None
        stats = await self.stats(topic)
        first = _seq(stats.first_id or "")
        last = _seq(stats.last_id)
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

    async def _ensure_dead(self, topic: str) -> None:
        js = await self.js()
        config = StreamConfig(
            name=self.dead_stream(topic),
            subjects=[self.dead_subject(topic)],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=self.replicas,
        )
        try:
            await js.stream_info(config.name or "")
        except jerr.NotFoundError:
            await js.add_stream(config)

    async def bury(self, topic: str, group: str, msg: Msg, *, reason: str, attempts: int) -> None:
        """Store ``msg`` in the topic's dead letters, then settle it (a crash between the two
        leaves a duplicate dead letter, never a loss)."""
        js = await self.js()
        headers = {
            _ORIGINAL_ID: str(msg.metadata.sequence.stream),
            _GROUP: group,
            _REASON: reason[:1000],
            _ATTEMPTS: str(attempts),
        }
        try:
            await js.publish(self.dead_subject(topic), msg.data, headers=headers)
        except jerr.NoStreamResponseError:
            await self._ensure_dead(topic)
            await js.publish(self.dead_subject(topic), msg.data, headers=headers)
        await self.settle(msg, b"+TERM")

    async def settle(self, msg: Msg, payload: bytes) -> None:
        """Ack, nak or term ``msg`` and wait for the server to confirm it did."""
        await self.nc.request(msg.reply, payload, timeout=self.command_timeout_s)

    async def dead_letters(self, topic: str, *, count: int, after: str) -> list[DeadLetter]:
        js = await self.js()
        seq = _seq(after) + 1 if after else 1
        letters: list[DeadLetter] = []
        async with self._errors(self.command_timeout_s * 2):
            while len(letters) < count:
                try:
                    raw = await js.get_msg(self.dead_stream(topic), seq, next=True)
                except jerr.NotFoundError:
                    break
                headers = raw.headers or {}
                letters.append(
                    DeadLetter(
                        id=str(raw.seq),
                        original_id=headers.get(_ORIGINAL_ID, ""),
                        payload=raw.data or b"",
                        group=headers.get(_GROUP, ""),
                        reason=headers.get(_REASON, ""),
                        attempts=int(headers.get(_ATTEMPTS, "0") or 0),
                        dead_at_ms=int(raw.time.timestamp() * 1000) if raw.time else 0,
                    )
                )
                seq = (raw.seq or seq) + 1
        return letters

    async def remove_dead_letters(self, topic: str, ids: Sequence[str] | None) -> int:
        js = await self.js()
        async with self._errors():
            try:
                info = await js.stream_info(self.dead_stream(topic))
            except jerr.NotFoundError:
                return 0
            if ids is None:
                await js.purge_stream(self.dead_stream(topic))
                return int(info.state.messages)
            removed = 0
            for letter in ids:
                with contextlib.suppress(jerr.NotFoundError):
                    removed += bool(await js.delete_msg(self.dead_stream(topic), _seq(letter)))
            return removed

    # -- operating -----------------------------------------------------------------------

    async def stats(self, topic: str) -> TopicStats:
        js = await self.js()
        async with self._errors():
            try:
                info = await js.stream_info(self.stream(topic))
            except jerr.NotFoundError:
                return TopicStats(topic=topic, length=0, dead_letters=await self._dead_count(topic))
            consumers = await js.consumers_info(self.stream(topic))
            dead = await self._dead_count(topic)
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

    async def _dead_count(self, topic: str) -> int:
        js = await self.js()
        try:
            return int((await js.stream_info(self.dead_stream(topic))).state.messages)
        except jerr.NotFoundError:
            return 0

    async def topics(self) -> list[str]:
        js = await self.js()
        async with self._errors():
            streams = await js.streams_info()
        head, tail = f"{self.prefix}_", "_dead"
        return sorted(
            unescape(s.config.name[len(head) :])
            for s in streams
            if s.config.name and s.config.name.startswith(head) and not s.config.name.endswith(tail)
        )

    async def ping(self, *, write: bool = False) -> None:
        js = await self.js()
        async with self._errors():
            await self.nc.flush(timeout=max(1, round(self.command_timeout_s)))
            if write:
                await js.account_info()  # JetStream answers for this account, within its limits

    async def warnings(self) -> list[str]:
        return []

    def _closing(self, work: asyncio.Future[Any]) -> None:
        """Keep the connection open until ``work`` (a reader's last hand-back) is done."""
        self._closings.add(work)
        work.add_done_callback(self._closings.discard)

    async def aclose(self) -> None:
        # Each fetch ends within its block_s; what it brings goes back to its group first.
        while self._closings:
            await asyncio.wait(set(self._closings), timeout=self.command_timeout_s + 5)
        self._closed = True
        self._publisher = None
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        self._nc = self._js = None


class _Publisher:
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
            results.append(int(answer["seq"]) if error is None else _api_error(error))
        return results


def _api_error(error: dict[str, Any]) -> jerr.APIError:
    """nats-py's error for a JetStream API error reply (its ``from_error`` raises it)."""
    try:
        jerr.APIError.from_error(error)
    except jerr.APIError as exc:
        return exc
    return jerr.APIError(**error)


class NatsGroupReader:
    """One consumer of a group: a pull subscription bound to the group's durable consumer."""

    def __init__(
        self,
        backend: NatsBackend,
        topic: str,
        group: str,
        options: ReaderOptions,
        *,
        dead_reason: str,
        on_dead_letter: Callable[[int], None] | None,
    ) -> None:
        self.backend = backend
        self.topic = topic
        self.group = group
        self.options = options
        self.dead_reason = dead_reason
        self.on_dead_letter = on_dead_letter
        self._sub: JetStreamContext.PullSubscription | None = None
        self._last_seq = 0  # the last stream sequence read, for a group that has to be created again
        self._cut_short: set[asyncio.Future[list[Msg]]] = set()  # fetches whose read was cancelled

    async def open(self) -> None:
        backend = self.backend
        await backend._ensure_topic(self.topic, None)
        js = await backend.js()
        async with backend._errors():
            await backend._create_consumer(
                self.topic, self.group, from_start=self.options.from_start, options=self.options
            )
            self._sub = await js.pull_subscribe_bind(escape(self.group), backend.stream(self.topic))

    async def read(self, *, count: int, block_s: float, ack: Sequence[Any] = ()) -> list[Entry]:
        backend = self.backend
        if ack:
            # Acks that ride with a read go as plain +ACK (no reply each): the read's request follows
            # them on the same connection. An ack given on its own (ack()) waits for the server.
            async with backend._errors():
                for msg in ack:
                    await backend.nc.publish(msg.reply, b"+ACK")
        if self._sub is None:
            await self.open()
        assert self._sub is not None
        msgs = self._take_cut_short()
        if not msgs:
            async with backend._errors(block_s + backend.command_timeout_s):
                # nats-py's fetch drops the messages it has taken if it is cancelled mid-batch (a
                # close, a worker's drain), and they would wait out ack_wait. So it runs shielded;
                # a fetch cut short is kept, and what it brings goes to the next read or, on close,
                # back to the group. It waits at most MAX_FETCH_S (a longer poll is several
                # fetches), so a close never waits long for one.
                end = time.monotonic() + block_s
                while not msgs:
                    wait_s = min(end - time.monotonic(), MAX_FETCH_S)
                    if wait_s <= 0:
                        return []
                    fetch = asyncio.ensure_future(self._sub.fetch(count, timeout=max(wait_s, 0.001)))
                    try:
                        msgs = await asyncio.shield(fetch)
                    except asyncio.CancelledError:
                        self._cut_short.add(fetch)
                        raise
                    except TimeoutError:  # nats-py raises its own and asyncio's: nothing arrived in time
                        continue
                    except jerr.NotFoundError:
                        await self._recreate()
                        return []
        entries: list[Entry] = []
        dead = 0
        for msg in msgs:
            meta = msg.metadata
            self._last_seq = max(self._last_seq, meta.sequence.stream)
            if meta.num_delivered > self.options.max_attempts:
                async with backend._errors():
                    await backend.bury(
                        self.topic, self.group, msg, reason=self.dead_reason, attempts=meta.num_delivered - 1
                    )
                dead += 1
                continue
            entries.append(Entry(str(meta.sequence.stream), msg.data, meta.num_delivered, msg))
        if dead and self.on_dead_letter is not None:
            self.on_dead_letter(dead)
        return entries

    async def _recreate(self) -> None:
        """The group's consumer vanished: create it again after the last message read (duplicates
        at worst, never a skip), and bind to it."""
        backend = self.backend
        log.warning(
            "Group %r of topic %r was missing; created it again after %d.", self.group, self.topic, self._last_seq
        )
        js = await backend.js()
        async with backend._errors():
            await backend._create_consumer(
                self.topic,
                self.group,
                from_start=True,
                options=self.options,
                start_seq=self._last_seq + 1 if self._last_seq else None,
            )
            self._sub = await js.pull_subscribe_bind(escape(self.group), backend.stream(self.topic))

    async def _settle_all(self, handles: Sequence[Any], payload: bytes) -> None:
        backend = self.backend
        async with backend._errors():
            results = await asyncio.gather(*(backend.settle(m, payload) for m in handles), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            with contextlib.suppress(BaseException):
                async with backend._errors():
                    raise failed[0]
            raise BrokerUnavailable(f"NATS at {backend.display_url} did not confirm {len(failed)} of {len(handles)}.")

    async def ack(self, handles: Sequence[Any]) -> None:
        await self._settle_all(handles, b"+ACK")

    async def nack(self, handle: Any, *, delay_s: float) -> None:
        delay = json.dumps({"delay": int(max(delay_s, 0.0) * 1e9)}).encode()
        await self._settle_all([handle], b"-NAK " + delay)

    async def dead_letter(self, handle: Any, *, reason: str, attempts: int) -> bool:
        backend = self.backend
        async with backend._errors():
            await backend.bury(self.topic, self.group, handle, reason=reason, attempts=attempts)
        return True

    async def release(self, handles: Sequence[Any]) -> None:
        if handles:
            await self._settle_all(handles, b"-NAK")

    def _take_cut_short(self) -> list[Msg]:
        """What finished fetches that were cut short brought."""
        msgs: list[Msg] = []
        for fetch in [f for f in self._cut_short if f.done()]:
            self._cut_short.discard(fetch)
            if not fetch.cancelled() and fetch.exception() is None:
                msgs.extend(fetch.result())
        return msgs

    async def aclose(self) -> None:
        sub, self._sub = self._sub, None
        if sub is None:
            return
        running = {f for f in self._cut_short if not f.done()}
        if not running:
            await self._hand_back(sub)
            return
        # A read cut short by this close: its fetch ends within its block_s. Return now (a close
        # is prompt) and hand back what it brings when it ends; the backend's close waits for it.
        waiting = set(running)

        def fetched(fetch: asyncio.Future[Any]) -> None:
            waiting.discard(fetch)
            if not waiting:
                self.backend._closing(asyncio.ensure_future(self._hand_back(sub)))

        for fetch in running:
            self.backend._closing(fetch)
            fetch.add_done_callback(fetched)

    async def _hand_back(self, sub: JetStreamContext.PullSubscription) -> None:
        """Give back what cut-short fetches brought and what waits in the subscription's queue
        (nobody would read it: it would wait out ack_wait), and unsubscribe."""
        unread = self._take_cut_short()
        queue: asyncio.Queue[Any] = sub._sub._pending_queue  # nats-py keeps it private; pinned by the lock
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        while not queue.empty():
            msg = queue.get_nowait()
            if msg.reply and not JetStreamContext.is_status_msg(msg):
                unread.append(msg)
        if unread:
            with contextlib.suppress(Exception):
                await self.release(unread)


class NatsBroadcast:
    """Everything after a stream sequence, through an ordered consumer. See ``BroadcastReader``."""

    def __init__(self, backend: NatsBackend, topic: str, position: int) -> None:
        self.backend = backend
        self.topic = topic
        self._position = position
        self._sub: Any = None

    @property
    def position(self) -> str:
        return str(self._position)

    async def read(self, *, count: int, block_s: float) -> list[Entry]:
        backend = self.backend
        js = await backend.js()
        if self._sub is None:
            async with backend._errors():
                self._sub = await js.subscribe(
                    backend.subject(self.topic),
                    stream=backend.stream(self.topic),
                    ordered_consumer=True,
                    config=ConsumerConfig(
                        deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self._position + 1
                    ),
                )
        entries: list[Entry] = []
        deadline = time.monotonic() + max(block_s, 0.0)
        while len(entries) < count:
            wait = deadline - time.monotonic() if not entries else 0.0
            try:
                msg = await self._sub.next_msg(timeout=max(wait, 0.0005) if not entries else 0.0005)
            except (TimeoutError, nerr.TimeoutError):
                break
            seq = msg.metadata.sequence.stream
            if seq <= self._position:
                continue
            self._position = seq
            entries.append(Entry(str(seq), msg.data))
        return entries

    def after(self, position: str, entry: Entry) -> str:
        return entry.id

    async def aclose(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


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
        servers,
        prefix=prefix,
        display_url=shown,
        replicas=replicas,
        command_timeout_s=command_timeout_s,
        connect_options=connect_options,
    )
