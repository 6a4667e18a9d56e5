"""One WebSocket client of Service B: its outbox, its writer, its reader and what it holds.

A ``Connection`` owns three tasks while it lives: a *writer* draining the bounded outbox
with ``send_text`` (the only task that writes to the socket), a *reader* handling the
client's ack/nack frames, and the *setup* that joins a pump (see ``pumps.py``). Whoever
wants it gone calls ``close(code, reason)``; the handler then stops the tasks, hands back
what the client had not acknowledged and sends the close frame.

The writer works in bursts: it takes every frame waiting (up to ``BURST``), writes them
one by one, then asks for the burst's auto-acks all at once, so that they share one XACK
(or ride with the subscription's next read). It wakes the pump only when the outbox goes
from full to having room, not once per frame.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Literal, NamedTuple

from starlette.websockets import WebSocket

from mqctl.core.filters import Filter
from mqctl.core.message import Message
from mqctl.core.subscription import Delivery
from mqctl.services.delivery.frames import INTERNAL_ERROR, TOO_BIG, error_frame
from mqctl.services.delivery.metrics import ConnectionCounters
from mqctl.services.delivery.settling import ack_all, run_detached, settle

log = logging.getLogger(__name__)

Mode = Literal["group", "broadcast"]

MAX_FRAME_BYTES = 64 * 1024
"""Largest frame a client may send; a larger one closes the connection with 1009."""
STALL_S = 5.0
"""A group connection whose outbox stays full this long is closed with 4001."""
BURST = 256
"""Most frames the writer takes from the outbox at once (before it settles their auto-acks)."""


def _nothing() -> None:
    pass


class _Frame(NamedTuple):
    text: str
    delivery: Delivery | None
    message: bool


_frame = tuple.__new__  # _Frame(...) without NamedTuple's Python-level __new__: one per message


class Connection:
    """A client socket with a bounded outbox of ``capacity`` frames."""

    def __init__(
        self,
        websocket: WebSocket,
        *,
        topic: str,
        mode: Mode,
        group: str | None,
        filter: Filter | None,
        auto_ack: bool,
        capacity: int,
        batch_max: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        counters: ConnectionCounters | None = None,
    ) -> None:
        self.websocket = websocket
        self.topic = topic
        self.mode: Mode = mode
        self.group = group
        self.filter = filter
        self.auto_ack = auto_ack
        self.capacity = capacity
        self.batch_max = batch_max
        """Most messages in one frame (a JSON array of them); None: a frame per message."""
        self.unacked: dict[str, Delivery] = {}
        """Deliveries queued or sent to this client and not yet acknowledged, by id."""
        self.held: list[tuple[str, str]] | None = None
        """Live broadcast frames held back while this connection catches up from history."""
        self.wake: Callable[[], None] = _nothing
        """Called when the outbox has room again (set by the group pump)."""
        self.full_since: float | None = None
        self.draining = False
        """Set on shutdown: the pumps hand this connection nothing more, so it can finish what it holds."""
        self.close_code: int | None = None
        self.close_reason = ""
        self.client_gone = False
        self.ended = asyncio.Event()
        self._clock = clock
        self._counters = counters
        self._outbox: deque[_Frame] = deque()  # capacity bounds it (forced frames aside)
        self._idle: asyncio.Future[None] | None = None  # the writer waits on it while the outbox is empty
        self._drained = asyncio.Event()  # set when the outbox goes from full to having room
        self._written: list[Delivery] = []  # auto-acked deliveries of this burst whose frame went to the socket

    # -- what the pumps use ---------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self.ended.is_set()

    @property
    def queued(self) -> int:
        """Frames in the outbox, not yet taken by the writer."""
        return len(self._outbox)

    def accepts(self, message: Message) -> bool:
        return self.filter is None or self.filter(message)

    def has_room(self) -> bool:
        """True if the outbox takes another frame; notes when it was first found full."""
        if self.closing or self.draining:
            return False
        if len(self._outbox) < self.capacity:
            return True
        if self.full_since is None:
            self.full_since = self._clock()
        return False

    def stalled(self, now: float) -> bool:
        """True if the outbox has been full for ``STALL_S`` with nothing written since."""
        return (
            not self.closing
            and self.full_since is not None
            and len(self._outbox) >= self.capacity
            and now - self.full_since >= STALL_S
        )

    def push(self, text: str, delivery: Delivery | None = None, *, force: bool = False, message: bool = False) -> bool:
        """Queue one frame; False (and nothing queued) if the outbox is full and not ``force``.

        A frame with a ``delivery`` carries a message; so does one pushed with ``message=True``
        (a broadcast); the others are events and errors."""
        outbox = self._outbox
        if len(outbox) >= self.capacity and not force:
            return False
        outbox.append(_frame(_Frame, (text, delivery, message or delivery is not None)))
        if len(outbox) >= self.capacity and self.full_since is None:
            self.full_since = self._clock()
        if delivery is not None:
            self.unacked[delivery.id] = delivery
        idle = self._idle
        if idle is not None:
            self._idle = None
            if not idle.done():
                idle.set_result(None)
        return True

    async def push_wait(self, text: str, *, message: bool = False) -> bool:
        """Queue one frame once the outbox has room (the caller is cancelled if the connection ends)."""
        while len(self._outbox) >= self.capacity:
            self._drained.clear()
            await self._drained.wait()
        return self.push(text, message=message)

    def close(self, code: int, reason: str) -> None:
        """Ask for the connection to end with ``code`` (the first reason given wins)."""
        if self.close_code is None and not self.ended.is_set():
            self.close_code, self.close_reason = code, reason
        self.ended.set()

    def take_unacked(self) -> list[Delivery]:
        """Everything this client was given and did not acknowledge; the dict is emptied.

        Auto-acked frames of the burst being written that went to the socket are acked first
        (the writer, cancelled mid-burst, may not have run again yet)."""
        self._auto_ack(self._written)
        deliveries = list(self.unacked.values())
        self.unacked.clear()
        return deliveries

    # -- running --------------------------------------------------------------------

    async def run(self, setup: Callable[[], Awaitable[None]]) -> None:
        """Write, read and run ``setup`` until the client leaves or ``close`` is called."""
        tasks = [
            asyncio.create_task(self._write_loop(), name=f"mqctl-ws-writer-{self.topic}"),
            asyncio.create_task(self._read_loop(), name=f"mqctl-ws-reader-{self.topic}"),
            asyncio.create_task(self._setup(setup), name=f"mqctl-ws-setup-{self.topic}"),
        ]
        try:
            await self.ended.wait()
        finally:
            # Not awaited: under a cancelled handler every await would be cut short anyway.
            for task in tasks:
                task.cancel()

    async def _setup(self, setup: Callable[[], Awaitable[None]]) -> None:
        try:
            await setup()
        except Exception:
            if self.closing:
                return  # the client left, or the service is shutting down
            log.exception("Setting up a WebSocket client of %r failed", self.topic)
            self.close(INTERNAL_ERROR, "internal error; reconnect to try again")

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self._outbox:
                    self._idle = asyncio.get_running_loop().create_future()
                    await self._idle
                    continue
                burst = self._take()
                written = self._written = []
                try:
                    await self._write(burst, written)
                finally:  # also when the socket fails or the task is cancelled mid-burst
                    self._auto_ack(written)
        except Exception as exc:  # the socket is gone
            log.debug("WebSocket writer of %r stopped: %r", self.topic, exc)
            self.client_gone = True
            self.ended.set()

    def _take(self) -> list[_Frame]:
        """Up to ``BURST`` frames from the outbox; wakes the pump if that gave the outbox room."""
        outbox = self._outbox
        was_full = len(outbox) >= self.capacity
        if len(outbox) <= BURST:
            burst = list(outbox)
            outbox.clear()
        else:
            burst = [outbox.popleft() for _ in range(BURST)]
        self.full_since = None
        if was_full and len(outbox) < self.capacity:
            self._drained.set()
            self.wake()
        return burst

    async def _write(self, burst: list[_Frame], written: list[Delivery]) -> None:
        if self.batch_max is not None:
            await self._write_batched(burst, written, self.batch_max)
            return
        send = self.websocket.send_text
        counters = self._counters
        auto_ack = self.auto_ack
        for frame in burst:  # _sent, inline: this runs once per frame
            await send(frame.text)
            delivery = frame.delivery
            if frame.message and counters is not None:
                counters.sent(1 if delivery is None else delivery.attempt)
            if delivery is not None and auto_ack:
                written.append(delivery)

    async def _write_batched(self, burst: list[_Frame], written: list[Delivery], batch_max: int) -> None:
        """Runs of message frames go out as JSON arrays of at most ``batch_max``, in order; the
        frames of events between them go out alone. A frame's text is already a JSON object, so
        an array is the texts joined."""
        send = self.websocket.send_text
        run: list[_Frame] = []
        for frame in burst:
            if frame.message:
                run.append(frame)
                if len(run) < batch_max:
                    continue
            if run:
                await send("[" + ",".join([f.text for f in run]) + "]")
                for sent in run:
                    self._sent(sent, written)
                run = []
            if not frame.message:
                await send(frame.text)
        if run:
            await send("[" + ",".join([f.text for f in run]) + "]")
            for sent in run:
                self._sent(sent, written)

    def _sent(self, frame: _Frame, written: list[Delivery]) -> None:
        delivery = frame.delivery
        if frame.message and self._counters is not None:
            self._counters.sent(1 if delivery is None else delivery.attempt)
        if delivery is not None and self.auto_ack:
            written.append(delivery)

    def _auto_ack(self, written: list[Delivery]) -> None:
        """Acknowledge deliveries written to the socket that the client has not settled itself,
        all asked for before any is awaited."""
        if not written:
            return
        unacked = self.unacked
        due: list[Delivery] = []
        for delivery in written:
            if unacked.get(delivery.id) is delivery:  # else settled by the client, or superseded
                del unacked[delivery.id]
                due.append(delivery)
        if not due:
            return
        rest = ack_all(due, self._counters)
        if rest is not None:
            run_detached(rest)

    async def _read_loop(self) -> None:
        try:
            while not self.closing:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    self.client_gone = True
                    break
                text: str | None = message.get("text")
                data: bytes | None = message.get("bytes")
                if _size(text, data) > MAX_FRAME_BYTES:
                    self.close(TOO_BIG, f"frame over {MAX_FRAME_BYTES} bytes; send smaller frames")
                    break
                if text is None:
                    self._error("binary_frame", "Binary frames are not understood; send acks as JSON text frames.")
                    continue
                await self._handle(text)
        except Exception as exc:  # the socket is gone
            log.debug("WebSocket reader of %r stopped: %r", self.topic, exc)
            self.client_gone = True
        finally:
            self.ended.set()

    # -- the client's frames --------------------------------------------------------

    def _error(self, code: str, detail: str) -> None:
        if not self.push(error_frame(code, detail)):
            log.debug("Dropped an error frame for a client of %r whose outbox is full", self.topic)

    async def _handle(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
            self._error("invalid_json", 'The frame is not JSON; send {"ack": "<id>"} or {"nack": "<id>"}.')
            return
        verb = next(iter(frame)) if isinstance(frame, dict) and len(frame) == 1 else None
        value = frame[verb] if verb in ("ack", "nack") else None
        ids = [value] if isinstance(value, str) else value
        if (
            verb not in ("ack", "nack")
            or not isinstance(ids, list)
            or not ids
            or not all(isinstance(i, str) for i in ids)
        ):
            self._error(
                "unknown_frame",
                f'Unknown frame {text[:80]!r}; expected {{"ack": "<id>"}}, {{"ack": ["<id>", ...]}} '
                'or {"nack": "<id>"}.',
            )
            return
        if self.mode == "broadcast":
            return  # broadcast deliveries need no acknowledgement
        unknown = []
        failed = []
        settling = []
        for entry_id in ids:
            delivery = self.unacked.pop(entry_id, None)
            if delivery is None:
                unknown.append(entry_id)
            elif verb == "ack":
                settling.append(delivery)
            elif not await settle(delivery.nack, "nack", delivery):
                failed.append(entry_id)
            elif self._counters is not None:
                self._counters.settled("nack")
        if settling:
            # Every ack is queued before any is awaited, and the reader does not wait for them:
            # acks from this frame and the next ones share XACKs (the subscription's coalescer).
            sending = ack_all(settling, self._counters)
            if sending is not None:
                run_detached(self._report_failed_acks(sending))
        self.wake()
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            self._error(
                "unknown_id",
                f"No unacknowledged delivery {unknown[0]!r}{more} on this connection: it was settled "
                "already, never sent here, or redelivered elsewhere after the ack timeout.",
            )
        if failed:
            self._settle_failed_error("nack", failed[0])

    async def _report_failed_acks(self, sending: Awaitable[list[Delivery]]) -> None:
        failed = await sending
        if failed:
            self._settle_failed_error("ack", failed[0].id)

    def _settle_failed_error(self, verb: str, entry_id: str) -> None:
        self._error(
            "ack_failed", f"The broker did not take the {verb} of {entry_id!r}; the message will be redelivered."
        )


def _size(text: str | None, data: bytes | None) -> int:
    if text is None:
        return len(data or b"")
    if len(text) * 4 <= MAX_FRAME_BYTES:  # cheap: no need to encode small frames
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))
