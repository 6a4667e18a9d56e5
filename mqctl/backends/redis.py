"""The Redis Streams backend (``redis://``, ``rediss://``).

A topic is a stream, a group is a consumer group: XADD, XREADGROUP with BLOCK, XACK,
XPENDING + XCLAIM for reclaim, delivery counts for dead-lettering. What must be atomic
(capacity check + add, idempotency + add, dead-lettering) runs as a Lua script; see
``scripts.py``. Keys come from ``keyspace.py``. Needs Redis >= 7.0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions as rex

from mqctl.backends import scripts
from mqctl.backends.keyspace import DEFAULT_PREFIX, Keyspace
from mqctl.backends.streams import StreamBackend
from mqctl.core.backend import DeadLetter, Entry, GroupStats, Limits, Outgoing, TopicStats
from mqctl.core.errors import BrokerOutOfMemory, BrokerRefused, BrokerUnavailable, ConfigError, QueueFull

log = logging.getLogger(__name__)

_ZERO, _ONE = b"0", b"1"
SAFE_POLICY = "noeviction"
"""The one maxmemory-policy that never deletes what mqctl stored."""


def redact(url: str) -> str:
    """``url`` with its password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


# Errors of a store that is failing over or resharding (or a replica that cannot take writes yet):
# each passes within seconds, so a publish answers "unavailable, retry" rather than an error.
_NOT_NOW = (
    rex.ClusterError,  # ClusterDownError, MasterDownError, "TTL exhausted" after too many redirects
    rex.TryAgainError,
    rex.ReadOnlyError,
    rex.SlotNotCoveredError,  # no node serves the slot (yet)
)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _keep_reply(response: Any, **options: Any) -> Any:
    """XREADGROUP's reply as Redis sent it: ``read_group`` makes its entries straight from it,
    without redis-py's dict per entry."""
    return response


def _entries(reply: Any) -> list[Entry]:
    """The entries of one stream's XREADGROUP reply: ``{stream: [[id, [field, value, ...]], ...]}``
    (RESP3) or ``[[stream, [...]]]`` (RESP2)."""
    if not reply:
        return []
    found = next(iter(reply.values())) if type(reply) is dict else reply[0][1]
    make = tuple.__new__  # Entry(...) without NamedTuple's Python-level __new__
    return [make(Entry, (i.decode(), f[1] if f[0] == b"m" else _field_m(f), 1, None)) for i, f in found]


def _field_m(flat: list[bytes]) -> bytes:
    """Field ``m`` of an entry whose first field is another (written by something else than mqctl)."""
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    return fields.get(b"m", b"")


class RedisStore:
    """Topics on one Redis server. See ``mqctl.core.backend.Backend``."""

    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster,
        *,
        prefix: str = DEFAULT_PREFIX,
        display_url: str = "redis",
        command_timeout_s: float = 5.0,
        min_replicas: int = 0,
        replica_timeout_s: float = 1.0,
        node_for: Callable[[str], Awaitable[aioredis.Redis]] | None = None,
        on_moved: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        if not isinstance(min_replicas, int) or min_replicas < 0:
            raise ConfigError(f"min_replicas must be a whole number >= 0, got {min_replicas!r}.")
        if not replica_timeout_s > 0:
            raise ConfigError(f"replica_timeout_s must be > 0, got {replica_timeout_s!r}.")
        self.client = client
        self.keys = Keyspace(prefix)
        self.display_url = display_url
        self.command_timeout_s = command_timeout_s
        self.min_replicas = min_replicas
        self.replica_timeout_s = replica_timeout_s
        # WAIT counts the writes of its own connection: the write and the WAIT must share one.
        # A single Redis pipelines both on its client; a cluster names the node that owns a key.
        self._node_for = node_for
        self._on_moved = on_moved
        self._add = client.register_script(scripts.ADD)
        self._reclaim = client.register_script(scripts.RECLAIM)
        self._dead_letter = client.register_script(scripts.DEAD_LETTER)
        self._partitions = client.register_script(scripts.PARTITIONS)
        self._ack = client.register_script(scripts.ACK)
        client.set_response_callback("XREADGROUP", _keep_reply)
        self._registered: set[str] = set()
        # (stream, group): the last entry read (id, payload), for _recreate_group
        self._read_to: dict[tuple[str, str], tuple[str, bytes]] = {}

    @contextlib.asynccontextmanager
    async def _errors(self, timeout_s: float | None = None) -> AsyncIterator[None]:
        """Turn redis-py's errors into mqctl's, and bound the call in time."""
        try:
            async with asyncio.timeout(timeout_s or self.command_timeout_s):
                yield
        except TimeoutError as exc:
            raise BrokerUnavailable(
                f"Redis at {self.display_url} did not answer within {timeout_s or self.command_timeout_s:g} s."
            ) from exc
        except rex.RedisError as exc:
            mapped = self.refusal(exc)
            if mapped is None:
                raise
            raise mapped from exc
        except OSError as exc:
            raise BrokerUnavailable(f"Cannot reach Redis at {self.display_url}: {exc}.") from exc

    def refusal(self, exc: rex.RedisError) -> BrokerUnavailable | None:
        """mqctl's error for a Redis error that says the store cannot or will not serve us, with what
        Redis answered and what to do; None for an error of the command itself."""
        at = f"Redis at {self.display_url}"
        text = str(exc)
        # redis-py strips the code of the errors it knows ("NOAUTH ...") and keeps the others' ("DENIED ...").
        code = getattr(exc, "status_code", None) or text.partition(" ")[0]
        said = text if text.startswith(code) else f"{code} {text}"
        if isinstance(exc, rex.AuthenticationError):
            return BrokerRefused(
                f"{at} refused mqctl's credentials ({said}). Put the right user and password in the URL "
                "(redis://USER:PASSWORD@HOST:PORT/DB, or rediss://...)."
            )
        if isinstance(exc, rex.NoPermissionError):
            return BrokerRefused(
                f"{at} refused a command to mqctl's ACL user ({said}). Grant it mqctl's keys and commands, e.g. "
                "ACL SETUSER USER ~mqctl:* &* +@all (with the key prefix mqctl uses)."
            )
        if code == "DENIED":
            return BrokerRefused(
                f"{at} refuses clients from other hosts: it runs in protected mode without a password ({said}). "
                "Give it a password (requirepass, or an ACL user) and put it in the URL, or start it with "
                "--protected-mode no on a network only your services reach."
            )
        if code == "MISCONF":
            return BrokerRefused(
                f"{at} refuses writes because it cannot save to disk ({said}). Fix its disk or dir (see its log), "
                "or, knowing what you give up, CONFIG SET stop-writes-on-bgsave-error no."
            )
        if "DB index is out of range" in text:
            return BrokerRefused(
                f"{at} has no such database ({said}). Use a database number below its 'databases' setting "
                "(16 by default) in the URL, e.g. redis://HOST:PORT/0."
            )
        if isinstance(exc, rex.OutOfMemoryError) or code == "OOM":
            return BrokerOutOfMemory(
                f"{at} is out of memory and refuses writes ({said}); free memory or raise maxmemory, then retry."
            )
        if isinstance(exc, rex.BusyLoadingError) or code == "LOADING":
            return BrokerUnavailable(f"{at} is loading its data into memory ({said}); it answers once done, retry.")
        if isinstance(exc, rex.ReadOnlyError) or code == "READONLY":
            return BrokerUnavailable(
                f"{at} is a read-only replica ({said}): a failover in progress ends by itself; otherwise point the "
                "URL at the master."
            )
        if isinstance(exc, _NOT_NOW) or code in ("MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"):
            # failover, resharding, a replica promoted mid-write: retry shortly
            return BrokerUnavailable(f"{at} cannot serve this now ({type(exc).__name__}: {said}); retry shortly.")
        if isinstance(exc, rex.ConnectionError | rex.TimeoutError):
            return BrokerUnavailable(f"Cannot reach {at}: {exc}.")
        return None

    # -- publishing ---------------------------------------------------------------

    async def add(self, topic: str, units: Sequence[Sequence[Outgoing]], limits: Limits) -> list[list[str] | QueueFull]:
        keys = [self.keys.stream(topic), self.keys.created(topic)]
        args: list[Any] = [
            -1 if limits.max_backlog is None else limits.max_backlog,
            limits.retention,
            max(1, int(limits.idempotency_window_s * 1000)),
            limits.default_group or "",
            len(units),
        ]
        # Bytes, not ints: redis-py passes bytes through but formats every int in Python.
        append = args.append
        for unit in units:
            append(_ONE if len(unit) == 1 else b"%d" % len(unit))
            for message in unit:
                if message.idempotency_key is None:
                    append(_ZERO)
                else:
                    keys.append(self.keys.idempotency(topic, message.idempotency_key))
                    append(len(keys))
                append(message.payload)
        async with self._errors():
            if topic not in self._registered:
                await self.client.sadd(self.keys.topics(), topic)
                self._registered.add(topic)
            if self.min_replicas:
                reply = await self._add_replicated(keys, args)
            else:
                reply = await self._add(keys=keys, args=args)
        results: list[list[str] | QueueFull] = []
        for item in reply:
            if item and item[0] == b"FULL":
                results.append(QueueFull(topic, int(item[1]), limits.max_backlog or 0))
            else:
                results.append([i.decode() if type(i) is bytes else i for i in item])
        return results

    async def _add_replicated(self, keys: list[str], args: list[Any]) -> Any:
        """Run the add script, then WAIT on the same connection until ``min_replicas`` have it."""
        node: Any = self.client if self._node_for is None else await self._node_for(keys[0])
        timeout_ms = max(1, int(self.replica_timeout_s * 1000))
        for attempt in range(2):
            pipe = node.pipeline(transaction=False)
            pipe.evalsha(self._add.sha, len(keys), *keys, *args)
            pipe.wait(self.min_replicas, timeout_ms)
            try:
                reply, acked = await pipe.execute()
            except rex.NoScriptError:
                if attempt:
                    raise
                await node.script_load(scripts.ADD)
                continue
            except rex.AskError as exc:  # MOVED or ASK: the slot is served elsewhere now
                if self._on_moved is None:
                    raise
                await self._on_moved(keys[0])  # let the cluster client learn the new owner
                raise BrokerUnavailable(
                    f"Topic keys moved to another node of {self.display_url} ({exc}); retry shortly."
                ) from exc
            if int(acked) < self.min_replicas:
                raise BrokerUnavailable(
                    f"Only {acked} of the {self.min_replicas} replica(s) required acknowledged the publish "
                    f"within {self.replica_timeout_s:g} s. The message is stored on the master and may or may "
                    "not survive its failure; a retry can store it twice (use an idempotency key)."
                )
            return reply
        raise AssertionError("unreachable")

    async def partitions(self, topic: str, *, create: int | None = None) -> int:
        async with self._errors():
            reply = await self._partitions(
                keys=[self.keys.meta(topic), self.keys.stream(topic)], args=["" if create is None else create]
            )
        return int(reply)

    # -- groups -------------------------------------------------------------------

    async def create_group(self, topic: str, group: str, *, from_start: bool) -> bool:
        async with self._errors():
            try:
                await self.client.xgroup_create(
                    self.keys.stream(topic), group, id="0" if from_start else "$", mkstream=True
                )
            except rex.ResponseError as exc:
                if "BUSYGROUP" in str(exc):
                    return False
                raise
        return True

    async def read_group(
        self, topic: str, group: str, consumer: str, *, count: int, block_s: float, ack: Sequence[str] = ()
    ) -> list[Entry]:
        stream = self.keys.stream(topic)
        block_ms = max(1, int(block_s * 1000))
        async with self._errors(block_s + self.command_timeout_s):
            try:
                if ack:  # the acks ride with the read: one round trip for both
                    pipe = self.client.pipeline(transaction=False)
                    pipe.evalsha(self._ack.sha, 1, stream, group, " ".join(ack))
                    pipe.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
                    acked, reply = await pipe.execute(raise_on_error=False)
                    if isinstance(reply, Exception):
                        raise reply
                    if isinstance(acked, rex.NoScriptError):  # Redis restarted or flushed its scripts
                        await self._ack(keys=[stream], args=[group, " ".join(ack)])
                    elif isinstance(acked, Exception):
                        raise acked
                else:
                    reply = await self.client.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
            except rex.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._recreate_group(topic, stream, group)
                return []
        entries = _entries(reply)
        if entries:
            last = entries[-1]
            self._read_to[stream, group] = (last.id, last.payload)
        return entries

    async def _recreate_group(self, topic: str, stream: str, group: str) -> None:
        """A group that vanished (a failover to a replica that had not received it yet, or deleted
        by hand) is created again right after the last entry this process read for it, if the
        stream still holds that entry, and from the stream's start if not: the history we knew is
        gone (a new master that never got it), so everything the stream holds is new to the group.
        Some messages may come twice; none published since is skipped, as "from now" would.

        "Holds that entry" compares the payload too: a stream lost and written again within the
        same millisecond gives its first new entry the very id last read, and only its payload
        tells it apart (comparing ids alone skipped it)."""
        last = self._read_to.get((stream, group))
        at = "0"
        if last is not None:
            last_id, payload = last
            found = await self.client.xrange(stream, min=last_id, max=last_id, count=1)
            if found and (found[0][1] or {}).get(b"m") == payload:
                at = last_id
        try:
            await self.client.xgroup_create(stream, group, id=at, mkstream=True)
        except rex.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # another consumer recreated it first
                raise
        log.warning("Group %r of topic %r was missing; created it again after %s.", group, topic, at)

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
        async with self._errors():
            try:
                reply = await self._reclaim(
                    keys=[self.keys.stream(topic), self.keys.dead(topic)],
                    args=[group, consumer, int(min_idle_s * 1000), count, max_attempts, reason],
                )
            except rex.ResponseError as exc:
                if "NOGROUP" in str(exc) or "no such key" in str(exc):
                    return [], 0
                raise
        entries = [Entry(_text(reply[i]), reply[i + 1], int(reply[i + 2])) for i in range(1, len(reply), 3)]
        return entries, int(reply[0])

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        async with self._errors():
            return int(await self._ack(keys=[self.keys.stream(topic)], args=[group, " ".join(ids)]))

    async def release(
        self, topic: str, group: str, consumer: str, ids: Sequence[str], *, ready_in_s: float, min_idle_s: float
    ) -> None:
        if not ids:
            return
        idle_ms = max(0, int((min_idle_s - ready_in_s) * 1000))
        async with self._errors():
            # XCLAIM with JUSTID keeps the delivery count; IDLE backdates the last delivery.
            await self.client.xclaim(self.keys.stream(topic), group, consumer, 0, list(ids), idle=idle_ms, justid=True)

    async def dead_letter(self, topic: str, group: str, entry_id: str, *, reason: str, attempts: int) -> bool:
        async with self._errors():
            done = await self._dead_letter(
                keys=[self.keys.stream(topic), self.keys.dead(topic)], args=[group, entry_id, reason, attempts]
            )
        return bool(done)

    # -- broadcast ----------------------------------------------------------------

    async def read_after(self, topic: str, after_id: str, *, count: int, block_s: float) -> list[Entry]:
        block_ms = max(1, int(block_s * 1000))
        async with self._errors(block_s + self.command_timeout_s):
            reply: Any = await self.client.xread({self.keys.stream(topic): after_id}, count=count, block=block_ms)
        if not reply:
            return []
        return [Entry(_text(entry_id), fields.get(b"m", b"")) for entry_id, fields in reply[0][1]]

    async def last_id(self, topic: str) -> str:
        async with self._errors():
            reply: Any = await self.client.xrevrange(self.keys.stream(topic), count=1)
        return _text(reply[0][0]) if reply else "0-0"

    # -- operating ----------------------------------------------------------------

    async def stats(self, topic: str) -> TopicStats:
        stream = self.keys.stream(topic)
        async with self._errors():
            dead = int(await self.client.xlen(self.keys.dead(topic)))
            try:
                info = await self.client.xinfo_stream(stream)
                groups = await self.client.xinfo_groups(stream)
            except rex.ResponseError as exc:
                if "no such key" not in str(exc):
                    raise
                return TopicStats(topic=topic, length=0, dead_letters=dead)
            now_ms = time.time() * 1000
            group_stats = []
            for g in groups:
                name = _text(g["name"])
                pending = int(g["pending"])
                last_delivered = _text(g["last-delivered-id"])
                lag = g.get("lag")
                if lag is None:  # unknown after deletions by hand: count (bounded)
                    later: Any = await self.client.xrange(stream, min=f"({last_delivered}", count=100_000)
                    lag = len(later)
                oldest_age = None
                if pending:
                    # a separate read: acks may have emptied the group since XINFO GROUPS
                    oldest = (await self.client.xpending(stream, name)).get("min")
                    if oldest is not None:
                        oldest_age = max(0.0, (now_ms - int(_text(oldest).split("-")[0])) / 1000)
                group_stats.append(
                    GroupStats(
                        name=name,
                        backlog=int(lag) + pending,
                        lag=int(lag),
                        pending=pending,
                        consumers=int(g["consumers"]),
                        oldest_pending_age_s=oldest_age,
                        last_delivered_id=last_delivered,
                    )
                )
        first = info.get("first-entry")
        last = info.get("last-entry")
        return TopicStats(
            topic=topic,
            length=int(info["length"]),
            dead_letters=dead,
            groups=tuple(sorted(group_stats, key=lambda g: g.name)),
            last_id=_text(last[0]) if last else "0-0",
            first_id=_text(first[0]) if first else None,
        )

    async def topics(self) -> list[str]:
        async with self._errors():
            return sorted(_text(t) for t in await self.client.smembers(self.keys.topics()))

    async def dead_letters(self, topic: str, *, count: int, after: str) -> list[DeadLetter]:
        start = "-" if after in ("-", "0", "0-0") else f"({after}"
        async with self._errors():
            reply: Any = await self.client.xrange(self.keys.dead(topic), min=start, count=count)
        letters = []
        for entry_id, f in reply:
            dead_id = _text(entry_id)
            letters.append(
                DeadLetter(
                    id=dead_id,
                    original_id=_text(f.get(b"id", b"")),
                    payload=f.get(b"m", b""),
                    group=_text(f.get(b"group", b"")),
                    reason=_text(f.get(b"reason", b"")),
                    attempts=int(f.get(b"attempts", 0)),
                    dead_at_ms=int(dead_id.split("-")[0]),
                )
            )
        return letters

    async def remove_dead_letters(self, topic: str, ids: Sequence[str] | None) -> int:
        key = self.keys.dead(topic)
        async with self._errors():
            if ids is None:
                count = int(await self.client.xlen(key))
                await self.client.delete(key)
                return count
            if not ids:
                return 0
            return int(await self.client.xdel(key, *ids))

    async def ping(self, *, write: bool = False) -> None:
        async with self._errors():
            await self.client.ping()
            if write:  # what refuses writes alone (a replica, a failing disk, maxmemory, an ACL) says so here
                await self.client.set(self.keys.probe(), b"1", px=1000)

    async def eviction_policy(self) -> str | None:
        """Redis's ``maxmemory-policy``; None when this user may not read it."""
        async with self._errors():
            try:
                reply = await self.client.config_get("maxmemory-policy")
            except rex.ResponseError:  # an ACL user without CONFIG, or a service that renamed the command
                return None
        values = {_text(k): v for k, v in dict(reply or {}).items() if isinstance(k, bytes | str)}
        policy = values.get("maxmemory-policy")
        return _text(policy) if isinstance(policy, bytes | str) else None

    async def warnings(self) -> list[str]:
        """A Redis that evicts keys when it is full can delete a topic's stream, and every message
        in it, without an error anywhere; with ``noeviction`` a full Redis refuses writes instead."""
        policy = await self.eviction_policy()
        if policy is None or policy == SAFE_POLICY:
            return []
        what = "idempotency records" if policy.startswith("volatile") else "topic streams and the messages in them"
        return [
            f"Redis at {self.display_url} has maxmemory-policy {policy!r}, so when it is full it deletes keys, "
            f"{what} included, without an error. Set maxmemory-policy {SAFE_POLICY} (CONFIG SET "
            f"maxmemory-policy {SAFE_POLICY}, and in redis.conf) so that a full Redis refuses publishes "
            "(503 broker_out_of_memory) instead."
        ]

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()


def from_url(
    url: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    max_connections: int = 1000,
    connect_timeout_s: float = 2.0,
    command_timeout_s: float = 5.0,
    min_replicas: int = 0,
    replica_timeout_s: float = 1.0,
    **redis_options: Any,
) -> StreamBackend:
    """``redis://[user:password@]host:port/db`` or ``rediss://...`` (TLS).

    ``prefix`` namespaces every key (so tests and tenants can share one Redis). With
    ``min_replicas=N`` a publish returns only once N replicas have it (Redis ``WAIT``, at
    most ``replica_timeout_s``; fewer in time: ``BrokerUnavailable``). Other keyword
    options go to ``redis.asyncio.Redis.from_url``.
    """
    if not prefix or "{" in prefix or "}" in prefix:
        raise ConfigError(f"Invalid key prefix {prefix!r}: use a non-empty name without braces.")
    try:
        client = aioredis.Redis.from_url(
            url,
            max_connections=max_connections,
            socket_connect_timeout=connect_timeout_s,
            health_check_interval=30,
            **redis_options,
        )
        # redis-py reads connection options only when it connects: check them now, not at first use.
        pool = client.connection_pool
        pool.connection_class(**pool.connection_kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"Invalid Redis URL or option for {redact(url)!r}: {exc}.") from exc
    store = RedisStore(
        client,
        prefix=prefix,
        display_url=redact(url),
        command_timeout_s=command_timeout_s,
        min_replicas=min_replicas,
        replica_timeout_s=replica_timeout_s,
    )
    return StreamBackend(store)
