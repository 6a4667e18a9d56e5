"""Broadcast: every message of a topic, live, for one reader, resumable from a position."""

from __future__ import annotations

import contextlib

from mqctl.core.backend import Backend, BroadcastReader
from mqctl.core.errors import InvalidMessage
from mqctl.core.filters import Predicate
from mqctl.core.message import Message, decode
from mqctl.core.reader import Reader, Readers


class Broadcast(Reader):
    """Every message of a topic, live, for one reader; no group, no acks.

    Iterate it for ``(id, message)`` pairs. ``last_id`` resumes after a message seen before;
    after each message, ``last_id`` is the position to resume from (the backend's own cursor).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        topic: str,
        last_id: str | None,
        filter: Predicate | None,
        poll_interval_s: float,
        batch: int,
        live: Readers,
    ) -> None:
        super().__init__(backend, topic, filter, poll_interval_s, batch, live)
        self.last_id = last_id
        self._reader: BroadcastReader | None = None

    async def _open(self) -> None:
        self._reader = await self.backend.broadcast_reader(self.topic, self.last_id)
        self.last_id = self._reader.position

    def __aiter__(self) -> Broadcast:
        return self

    async def __anext__(self) -> tuple[str, Message]:
        while True:
            entry = await self._next_entry()
            assert self._reader is not None and self.last_id is not None  # set by _open
            self.last_id = self._reader.after(self.last_id, entry)
            try:
                message = decode(entry.payload)
            except InvalidMessage:
                continue
            if self.filter is None or self.filter(message):
                return entry.id, message

    async def _fill(self) -> None:
        assert self._reader is not None  # set by _open
        self._buffer.extend(await self._reader.read(count=self.batch, block_s=self.poll_interval_s))

    async def aclose(self) -> None:
        """Stop reading. Returns at once, cutting short a blocking read in progress."""
        if self._closed:
            return
        await super().aclose()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader.aclose()
