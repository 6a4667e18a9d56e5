"""The backend protocol: what every broker backend provides, in the broker's terms.

A backend moves bytes and keeps state; it holds no policy. Validation, publish coalescing and
retry, filters, the ack linger, nack backoff and when to give up on a message live in
``Broker`` and ``Subscription``, written once for every backend. A backend must pass the
contract suite in ``tests/contract``.

Vocabulary: a *topic* keeps messages in the order they were published. A *group* reads a
topic once: each message goes to one of its consumers and stays *pending* for it until it is
acknowledged; nacked, or not acknowledged within the group's ack timeout, it comes back with
``attempt + 1``; past ``max_attempts`` it moves to the topic's *dead letters*. A *broadcast*
reads everything, from a *position*, with no group and no acks.

Ids and positions are the backend's own strings. Nothing above the backends parses or
compares them: a backend mints them, and answers ``covers(position, id)`` where an order is
needed. A delivery carries its backend's *handle*, through which it is acknowledged, given
back or dead-lettered (an id for Redis Streams, the message itself for NATS JetStream).

    Backend                       topics, groups, stats, dead letters
    ├── group_reader(...)  -> GroupReader       one consumer of a group
    └── broadcast_reader(...) -> BroadcastReader  everything, from a position

Redelivery after the ack timeout is the backend's: the server's where it does it (NATS),
a reclaim loop in the reader where it does not (Redis Streams, memory).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from mqctl.core.errors import QueueFull


class Entry(NamedTuple):
    """One stored message as a reader returns it (a tuple: made per message, kept cheap)."""

    id: str
    payload: bytes
    attempt: int = 1
    handle: Any = None
    """The backend's handle for this delivery (its ack token); None: the id is the handle."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to store: its encoded payload, idempotency key and partition key."""

    payload: bytes
    idempotency_key: str | None = None
    key: str | None = None
    """Messages of one key keep their order on a partitioned topic (they share a partition)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What ``Backend.add`` enforces while it stores messages."""

    max_backlog: int | None
    retention: int
    idempotency_window_s: float
    default_group: str | None


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do beyond the contract every backend keeps; callers ask, not assume."""

    partitions: bool = False
    """A topic may be created with several partitions (``create_topic(topic, partitions=N)``)."""
    retained_history: bool = True
    """Acknowledged messages stay readable (up to ``retention``), so a broadcast can resume from a
    position older than what the groups still need. Without it only unacknowledged ones can."""
    consumer_names: bool = True
    """Stats count a group's consumers and the age of its oldest pending message."""


@dataclass(frozen=True, slots=True)
class ReaderOptions:
    """How one consumer of a group reads."""

    ack_timeout_s: float
    max_attempts: int
    from_start: bool = False
    """A group created by this reader starts at the oldest retained message, not at now."""
    reclaim_every_s: float = 2.0
    """How often a reader that reclaims on the client looks for deliveries past their ack timeout."""


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
    """Seconds since the oldest pending message was published (None: nothing pending, or unknown)."""
    last_delivered_id: str = ""


@dataclass(frozen=True, slots=True)
class TopicStats:
    """The state of one topic: its messages, its groups and its dead letters."""

    topic: str
    length: int
    """Messages retained in the topic (acknowledged history included where it is kept)."""
    dead_letters: int
    groups: tuple[GroupStats, ...] = field(default=())
    last_id: str = ""
    """The newest message's id ("" when there is none)."""
    first_id: str | None = None
    """The oldest retained message (a broadcast resume from before it has lost history)."""
    partitions: int = 1
    """Streams the topic is split into; with more than one the counts are sums over them."""
    scheduled: int = 0
    """Delayed messages waiting to be due (``publish(..., delay_s=...)``); filled in by the broker."""

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


class GroupReader(Protocol):
    """One consumer of a group: reads, and settles what it read through the entries' handles.

    ``handles`` are ``Entry.handle``, or ``Entry.id`` where the handle is None."""

    async def open(self) -> None:
        """Join the group, creating it if it does not exist (from now, or from the start): what
        is published from then on is kept for it."""
        ...

    async def read(self, *, count: int, block_s: float, ack: Sequence[Any] = ()) -> list[Entry]:
        """Up to ``count`` entries for this consumer, waiting up to ``block_s`` for one: new ones,
        or ones back after a nack or their ack timeout (``attempt`` + 1). First acknowledges
        ``ack`` (in the same round trip where the store allows). A message past ``max_attempts``
        goes to the dead letters instead of being returned. Recreates the group if it vanished,
        without skipping what was published meanwhile."""
        ...

    async def ack(self, handles: Sequence[Any]) -> None:
        """Acknowledge: returns once the store has the acks."""
        ...

    async def nack(self, handle: Any, *, delay_s: float) -> None:
        """Give one delivery back, to come again (``attempt`` + 1) in about ``delay_s``."""
        ...

    async def dead_letter(self, handle: Any, *, reason: str, attempts: int) -> bool:
        """Move one pending delivery to the dead letters and settle it. False if it is gone."""
        ...

    async def release(self, handles: Sequence[Any]) -> None:
        """Give deliveries back at once, for another consumer of the group (this one is closing)."""
        ...

    async def aclose(self) -> None:
        """Stop reads in flight; what they had read goes back to the group."""
        ...


class BroadcastReader(Protocol):
    """Every message of a topic, from a position, for one reader: no group, no acks."""

    position: str
    """Where the next read starts: after the last entry read (the backend's own cursor)."""

    async def read(self, *, count: int, block_s: float) -> list[Entry]:
        """Up to ``count`` entries after ``position``, waiting up to ``block_s``; advances it."""
        ...

    def after(self, position: str, entry: Entry) -> str:
        """The position after ``entry``, read from ``position`` (for a caller that hands the
        entries of a read out one by one, and must be able to resume after any of them)."""
        ...

    async def aclose(self) -> None: ...


class Backend(Protocol):
    """Storage for topics, groups and dead letters. Every method may raise
    ``BrokerUnavailable`` (or a subclass) when the store cannot be reached or refuses us."""

    capabilities: Capabilities

    async def add(self, topic: str, units: Sequence[Sequence[Outgoing]], limits: Limits) -> list[list[str] | QueueFull]:
        """Store each unit atomically: all its messages or none.

        A unit is refused with ``QueueFull`` when storing it would take the backlog over
        ``limits.max_backlog``. A message whose idempotency key was stored within the window
        is not stored again: its earlier id is returned where the store still knows it.
        Creates the topic (and ``limits.default_group``, reading from its start) on first use;
        drops acknowledged history beyond ``limits.retention``, never what a group still needs.
        """
        ...

    async def create_topic(self, topic: str, *, partitions: int) -> int:
        """Create ``topic`` with ``partitions`` partitions if it does not exist; return the count it
        has (a topic keeps the count it was created with; one used before has 1). Atomic."""
        ...

    async def create_group(self, topic: str, group: str, *, from_start: bool) -> bool:
        """Create ``group`` (reading from the topic's start, or from now); False if it existed."""
        ...

    def group_reader(
        self,
        topic: str,
        group: str,
        consumer: str,
        options: ReaderOptions,
        *,
        dead_reason: str,
        on_dead_letter: Callable[[int], None] | None = None,
    ) -> GroupReader:
        """A reader for one consumer of ``group``; messages it moves to the dead letters after
        their last attempt timed out get ``dead_reason``, and ``on_dead_letter(count)`` is called."""
        ...

    async def broadcast_reader(self, topic: str, after: str | None) -> BroadcastReader:
        """A reader of everything after position ``after`` (None: from now; "0": all retained)."""
        ...

    def covers(self, position: str, entry_id: str) -> bool:
        """True if a broadcast at ``position`` has already read the message ``entry_id``."""
        ...

    def check_position(self, position: str) -> str:
        """``position`` if it can be one of this backend's (a message id or a broadcast's
        ``last_id``), else ``ConfigError`` saying what one looks like."""
        ...

    async def history_gap(self, topic: str, after: str) -> tuple[str, str | None] | None:
        """Why a broadcast resuming after ``after`` may miss messages (with the oldest position
        still retained), or None when nothing it follows is gone."""
        ...

    async def stats(self, topic: str) -> TopicStats:
        """The topic's length, groups and dead-letter count."""
        ...

    async def topics(self) -> list[str]:
        """Every topic this backend has stored a message in, or has a group of."""
        ...

    async def dead_letters(self, topic: str, *, count: int, after: str) -> list[DeadLetter]:
        """Up to ``count`` dead letters of ``topic`` after dead letter ``after`` ("": from the
        oldest), oldest first."""
        ...

    async def remove_dead_letters(self, topic: str, ids: Sequence[str] | None) -> int:
        """Delete the given dead letters (``None``: all of the topic's); returns how many."""
        ...

    async def ping(self, *, write: bool = False) -> None:
        """Return when the store answers (``write``: and would take a write now); raise
        ``BrokerUnavailable`` (``BrokerRefused`` when it refuses us) otherwise."""
        ...

    async def warnings(self) -> list[str]:
        """What about the store's configuration can lose messages, in sentences (e.g. a Redis that
        evicts keys when full); [] when nothing, or when the store will not say."""
        ...

    async def aclose(self) -> None:
        """Release connections and wake blocked readers."""
        ...
