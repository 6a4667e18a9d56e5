"""The store protocol of the Redis Streams family (``memory.py``, ``redis.py``).

A store keeps topics, groups and dead letters the way Redis Streams does; ``streams.py`` turns
one into a ``Backend``, and ``partitioned.py`` is a store over a store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from mqctl.core.backend import DeadLetter, Entry, Limits, Outgoing, TopicStats
from mqctl.core.errors import QueueFull


class StreamStore(Protocol):
    """Topics, groups and dead letters as Redis Streams keep them. ``topic`` may be an internal
    stream name (a partition); ids are ``"<ms>-<seq>"``."""

    async def add(self, topic: str, units: Sequence[Sequence[Outgoing]], limits: Limits) -> list[list[str] | QueueFull]:
        """Store each unit atomically (see ``Backend.add``)."""
        ...

    async def partitions(self, topic: str, *, create: int | None = None) -> int:
        """The partition count stored for ``topic`` (1 if none is). With ``create``, a topic that
        has none stores ``create`` (or 1 if it already holds a stream: it was used unpartitioned).
        Atomic: concurrent callers all get the count that was stored first."""
        ...

    async def create_group(self, topic: str, group: str, *, from_start: bool) -> bool: ...

    async def read_group(
        self, topic: str, group: str, consumer: str, *, count: int, block_s: float, ack: Sequence[str] = ()
    ) -> list[Entry]:
        """Up to ``count`` entries never delivered to the group, waiting up to ``block_s`` for one;
        they become pending for ``consumer`` with attempt 1. First acknowledges ``ack``. Recreates
        the group if it vanished, without skipping what was published meanwhile."""
        ...

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
        """Take over up to ``count`` entries pending for at least ``min_idle_s``; one already
        delivered ``max_attempts`` times moves to the dead letters with ``reason`` instead. Each
        claimed entry's attempt goes up by one. Returns the claimed entries and how many died."""
        ...

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> int: ...

    async def release(
        self, topic: str, group: str, consumer: str, ids: Sequence[str], *, ready_in_s: float, min_idle_s: float
    ) -> None:
        """Make pending ``ids`` reclaimable ``ready_in_s`` from now by a reclaimer that waits
        ``min_idle_s``. The attempt is unchanged."""
        ...

    async def dead_letter(self, topic: str, group: str, entry_id: str, *, reason: str, attempts: int) -> bool: ...

    async def read_after(self, topic: str, after_id: str, *, count: int, block_s: float) -> list[Entry]:
        """Up to ``count`` retained entries after ``after_id`` (``"$"``: only new ones)."""
        ...

    async def last_id(self, topic: str) -> str: ...

    async def stats(self, topic: str) -> TopicStats: ...

    async def topics(self) -> list[str]: ...

    async def dead_letters(self, topic: str, *, count: int, after: str) -> list[DeadLetter]: ...

    async def remove_dead_letters(self, topic: str, ids: Sequence[str] | None) -> int: ...

    async def ping(self, *, write: bool = False) -> None: ...

    async def warnings(self) -> list[str]: ...

    async def aclose(self) -> None: ...
