"""Reading a topic: a group's pull consumer (``NatsGroupReader``) and a broadcast's ordered one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import nats.errors as nerr
import nats.js.errors as jerr
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from mqctl.backends.nats.connection import Connection, escape
from mqctl.backends.nats.dead_letters import DeadLetters
from mqctl.backends.nats.streams import Streams
from mqctl.core.backend import Entry, ReaderOptions
from mqctl.core.errors import BrokerUnavailable

log = logging.getLogger("mqctl.backends.nats")

MAX_FETCH_S = 0.5
"""Longest one pull request waits; a read blocking longer makes several (see NatsGroupReader.read)."""


class NatsGroupReader:
    """One consumer of a group: a pull subscription bound to the group's durable consumer."""

    def __init__(
        self,
        connection: Connection,
        streams: Streams,
        dead_letters: DeadLetters,
        topic: str,
        group: str,
        options: ReaderOptions,
        *,
        dead_reason: str,
        on_dead_letter: Callable[[int], None] | None,
    ) -> None:
        self.connection = connection
        self.streams = streams
        self.dead_letters = dead_letters
        self.topic = topic
        self.group = group
        self.options = options
        self.dead_reason = dead_reason
        self.on_dead_letter = on_dead_letter
        self._sub: JetStreamContext.PullSubscription | None = None
        self._last_seq = 0  # the last stream sequence read, for a group that has to be created again
        self._cut_short: set[asyncio.Future[list[Msg]]] = set()  # fetches whose read was cancelled

    async def open(self) -> None:
        connection = self.connection
        await self.streams.ensure(self.topic, None)
        js = await connection.js()
        async with connection.errors():
            await self.streams.create_consumer(
                self.topic, self.group, from_start=self.options.from_start, options=self.options
            )
            self._sub = await js.pull_subscribe_bind(escape(self.group), connection.stream(self.topic))

    async def read(self, *, count: int, block_s: float, ack: Sequence[Any] = ()) -> list[Entry]:
        connection = self.connection
        if ack:
            # Acks that ride with a read go as plain +ACK (no reply each): the read's request follows
            # them on the same connection. An ack given on its own (ack()) waits for the server.
            async with connection.errors():
                for msg in ack:
                    await connection.nc.publish(msg.reply, b"+ACK")
        if self._sub is None:
            await self.open()
        assert self._sub is not None
        msgs = self._take_cut_short()
        if not msgs:
            async with connection.errors(block_s + connection.command_timeout_s):
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
                async with connection.errors():
                    await self.dead_letters.bury(
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
        connection = self.connection
        log.warning(
            "Group %r of topic %r was missing; created it again after %d.", self.group, self.topic, self._last_seq
        )
        js = await connection.js()
        async with connection.errors():
            await self.streams.create_consumer(
                self.topic,
                self.group,
                from_start=True,
                options=self.options,
                start_seq=self._last_seq + 1 if self._last_seq else None,
            )
            self._sub = await js.pull_subscribe_bind(escape(self.group), connection.stream(self.topic))

    async def _settle_all(self, handles: Sequence[Any], payload: bytes) -> None:
        connection = self.connection
        async with connection.errors():
            results = await asyncio.gather(*(connection.settle(m, payload) for m in handles), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            with contextlib.suppress(BaseException):
                async with connection.errors():
                    raise failed[0]
            raise BrokerUnavailable(
                f"NATS at {connection.display_url} did not confirm {len(failed)} of {len(handles)}."
            )

    async def ack(self, handles: Sequence[Any]) -> None:
        await self._settle_all(handles, b"+ACK")

    async def nack(self, handle: Any, *, delay_s: float) -> None:
        delay = json.dumps({"delay": int(max(delay_s, 0.0) * 1e9)}).encode()
        await self._settle_all([handle], b"-NAK " + delay)

    async def dead_letter(self, handle: Any, *, reason: str, attempts: int) -> bool:
        connection = self.connection
        async with connection.errors():
            await self.dead_letters.bury(self.topic, self.group, handle, reason=reason, attempts=attempts)
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
                self.connection.closing(asyncio.ensure_future(self._hand_back(sub)))

        for fetch in running:
            self.connection.closing(fetch)
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

    def __init__(self, connection: Connection, topic: str, position: int) -> None:
        self.connection = connection
        self.topic = topic
        self._position = position
        self._sub: Any = None

    @property
    def position(self) -> str:
        return str(self._position)

    async def read(self, *, count: int, block_s: float) -> list[Entry]:
        connection = self.connection
        js = await connection.js()
        if self._sub is None:
            async with connection.errors():
                self._sub = await js.subscribe(
                    connection.subject(self.topic),
                    stream=connection.stream(self.topic),
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
