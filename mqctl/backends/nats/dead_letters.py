"""A topic's dead letters: a second stream, ``<prefix>_<topic>_dead``, with the reason, group,
attempts and original id of each in headers."""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Sequence

import nats.js.errors as jerr
from nats.aio.msg import Msg
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from mqctl.backends.nats.connection import Connection, sequence_of
from mqctl.core.backend import DeadLetter

_ORIGINAL_ID = "Mqctl-Original-Id"
_GROUP = "Mqctl-Group"
_REASON = "Mqctl-Reason"
_ATTEMPTS = "Mqctl-Attempts"


class DeadLetters:
    """The dead letters of one backend's topics."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    async def ensure(self, topic: str) -> None:
        js = await self.connection.js()
        config = StreamConfig(
            name=self.connection.dead_stream(topic),
            subjects=[self.connection.dead_subject(topic)],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=self.connection.replicas,
        )
        try:
            await js.stream_info(config.name or "")
        except jerr.NotFoundError:
            await js.add_stream(config)

    async def bury(self, topic: str, group: str, msg: Msg, *, reason: str, attempts: int) -> None:
        """Store ``msg`` in the topic's dead letters, then settle it (a crash between the two
        leaves a duplicate dead letter, never a loss)."""
        js = await self.connection.js()
        headers = {
            _ORIGINAL_ID: str(msg.metadata.sequence.stream),
            _GROUP: group,
            _REASON: reason[:1000],
            _ATTEMPTS: str(attempts),
        }
        try:
            await js.publish(self.connection.dead_subject(topic), msg.data, headers=headers)
        except jerr.NoStreamResponseError:
            await self.ensure(topic)
            await js.publish(self.connection.dead_subject(topic), msg.data, headers=headers)
        await self.connection.settle(msg, b"+TERM")

    async def list(self, topic: str, *, count: int, after: str) -> builtins.list[DeadLetter]:
        js = await self.connection.js()
        seq = sequence_of(after) + 1 if after else 1
        letters: builtins.list[DeadLetter] = []
        async with self.connection.errors(self.connection.command_timeout_s * 2):
            while len(letters) < count:
                try:
                    raw = await js.get_msg(self.connection.dead_stream(topic), seq, next=True)
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

    async def remove(self, topic: str, ids: Sequence[str] | None) -> int:
        js = await self.connection.js()
        async with self.connection.errors():
            try:
                info = await js.stream_info(self.connection.dead_stream(topic))
            except jerr.NotFoundError:
                return 0
            if ids is None:
                await js.purge_stream(self.connection.dead_stream(topic))
                return int(info.state.messages)
            removed = 0
            for letter in ids:
                with contextlib.suppress(jerr.NotFoundError):
                    removed += bool(await js.delete_msg(self.connection.dead_stream(topic), sequence_of(letter)))
            return removed

    async def count(self, topic: str) -> int:
        js = await self.connection.js()
        try:
            return int((await js.stream_info(self.connection.dead_stream(topic))).state.messages)
        except jerr.NotFoundError:
            return 0
