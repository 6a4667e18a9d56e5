"""The backend protocol: the storage primitives every broker backend provides.

A backend moves bytes and keeps state; it holds no policy. Filters, retry, backoff,
dead-letter decisions and publish coalescing live in ``Broker`` and ``Subscription``,
written once for every backend. A backend must make each method atomic where it says
so, and pass the contract suite in ``tests/contract``.

Vocabulary: a *topic* is an append-only log of entries with ids that sort by time
(``"<ms>-<seq>"``). A *group* reads the topic once in order; each entry it reads stays
*pending* for the consumer that read it until acknowledged. Every pending entry has a
delivery count (its *attempt*) and an idle time (since it was last delivered).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from mqctl.core.errors import QueueFull


class Entry(NamedTuple):
    """One stored message as a backend returns it (a tuple: made per message, kept cheap)."""

    id: str
    payload: bytes
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to store: its encoded payload and optional idempotency key."""

    payload: bytes
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """What ``Backend.add`` enforces while it stores messages."""

    max_backlog: int | None
    retention: int
    idempotency_window_s: float
    default_group: str | None


@dataclass(frozen=True, slots=True)
class GroupStats:
    """The state of one consumer group on a topic."""

    name: str
    backlog: int
    """Messages the group has not acknowledged: ``lag + pending``."""
    lag: int
    """Messages not yet delivered to any consumer of the group."""
    pending: int
    """Messages delivered and not yet acknowledged."""
    consumers: int
    oldest_pending_age_s: float | None = None
    """Seconds since the oldest pending message was published (None: nothing pending)."""
    last_delivered_id: str = "0-0"


@dataclass(frozen=True, slots=True)
class TopicStats:
    """The state of one topic: its stream, its groups and its dead letters."""

    topic: str
    length: int
    """Entries retained in the topic (acknowledged history included)."""
    dead_letters: int
    groups: tuple[GroupStats, ...] = field(default=())
    last_id: str = "0-0"
    first_id: str | None = None
    """The oldest retained entry (a broadcast resume from before it has lost history)."""
    partitions: int = 1
    """Streams the topic is split into; with more than one, ids and positions name their
    partition (``"<p>:<ms>-<seq>"``) and the counts are sums over the partitions."""

    @property
    def backlog(self) -> int:
        """Messages not yet acknowledged by every group (what ``max_backlog`` limits)."""
        return max((g.backlog for g in self.groups), default=0)

    @property
    def pending(self) -> int:
        return sum(g.pending for g in self.groups)

    def group(self, name: str) -> GroupStats | None:
        return next((g for g in self.groups if g.name == name), None)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that kept failing, moved out of its group with the reason."""

    id: str
    """The dead letter's own id (use it to replay one)."""
    original_id: str
    payload: bytes
    group: str
    reason: str
    attempts: int
    dead_at_ms: int


class Backend(Protocol):
    """Storage for topics, groups and dead letters. Every method may raise
    ``BrokerUnavailable`` (or a subclass) when the store cannot be reached."""

    async def add(self, topic: str, units: Sequence[Sequence[Outgoing]], limits: Limits) -> list[list[str] | QueueFull]:
        """Store each unit atomically: all its messages or none.

        A unit is refused with ``QueueFull`` when storing it would take the backlog over
        ``limits.max_backlog``. A message whose idempotency key was stored within the
        window is not stored again: its earlier id is returned. Creates the topic (and
        ``limits.default_group`` reading from its start) on first use, and trims
        acknowledged history beyond ``limits.retention``, never anything a group still needs.
        """
        ...

    async def partitions(self, topic: str, *, create: int | None = None) -> int:
        """The partition count stored for ``topic`` (1 if none is). With ``create``, a topic that
        has none stores ``create`` (or 1 if it already holds a stream: it was used unpartitioned).
        Atomic: concurrent callers all get the count that was stored first."""
        ...

    async def create_group(self, topic: str, group: str, *, from_start: bool) -> bool:
        """Create ``group`` (reading from the topic's start, or from now); False if it existed."""
        ...

    async def read_group(
        self, topic: str, group: str, consumer: str, *, count: int, block_s: float, ack: Sequence[str] = ()
    ) -> list[Entry]:
        """Up to ``count`` entries never delivered to the group, waiting up to ``block_s``
        for one to arrive; they become pending for ``consumer`` with attempt 1.
        First acknowledges ``ack`` (in the same round trip, where the store allows).
        Recreates the group at the topic's end if it was deleted."""
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
        """Take over up to ``count`` entries pending for at least ``min_idle_s``.

        An entry already delivered ``max_attempts`` times is moved to the dead letters
        with ``reason`` and acknowledged instead. Each claimed entry's attempt goes up by
        one. Returns the claimed entries and how many were dead-lettered. Atomic.
        """
        ...

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> int:
        """Acknowledge ``ids`` for ``group``; returns how many were pending."""
        ...

    async def release(
        self, topic: str, group: str, consumer: str, ids: Sequence[str], *, ready_in_s: float, min_idle_s: float
    ) -> None:
        """Make pending ``ids`` reclaimable ``ready_in_s`` from now by a reclaimer that waits
        ``min_idle_s`` (so ``ready_in_s`` is at most ``min_idle_s``). The attempt is unchanged."""
        ...

    async def dead_letter(self, topic: str, group: str, entry_id: str, *, reason: str, attempts: int) -> bool:
        """Move one pending entry to the dead letters and acknowledge it. Atomic."""
        ...

    async def read_after(self, topic: str, after_id: str, *, count: int, block_s: float) -> list[Entry]:
        """Up to ``count`` retained entries after ``after_id`` (``"$"``: only new ones),
        waiting up to ``block_s``. No group, no acknowledgement (broadcast)."""
        ...

    async def last_id(self, topic: str) -> str:
        """The id of the newest entry in the topic, ``"0-0"`` when there is none."""
        ...

    async def stats(self, topic: str) -> TopicStats:
        """The topic's length, groups and dead-letter count."""
        ...

    async def topics(self) -> list[str]:
        """Every topic this backend has stored a message in."""
        ...

    async def dead_letters(self, topic: str, *, count: int, after: str) -> list[DeadLetter]:
        """Up to ``count`` dead letters of ``topic`` after id ``after``, oldest first."""
        ...

    async def remove_dead_letters(self, topic: str, ids: Sequence[str] | None) -> int:
        """Delete the given dead letters (``None``: all of the topic's); returns how many."""
        ...

    async def ping(self, *, write: bool = False) -> None:
        """Return when the store answers (``write``: and would take a write now); raise
        ``BrokerUnavailable`` (``BrokerRefused`` when it refuses us) otherwise."""
        ...

    async def eviction_policy(self) -> str | None:
        """What the store deletes when it runs out of memory (Redis ``maxmemory-policy``), or
        None if it deletes nothing of its own accord or will not say (no permission)."""
        ...

    async def aclose(self) -> None:
        """Release connections and wake blocked readers."""
        ...
