"""The Redis Cluster backend (``redis+cluster://``, ``rediss+cluster://``).

It is the Redis Streams store (``redis.py``) over redis-py's asyncio cluster client,
composed rather than rewritten: every key of a topic carries the hash tag ``{topic}``
(``keyspace.py``), so each Lua script declares keys of one slot and runs atomically on
the master that owns it; XREADGROUP, XCLAIM, XPENDING and XINFO route by their key.
The topics registry is one key and lives on whichever master owns its slot.

redis-py follows MOVED and ASK redirections and refreshes its slot map after a
failover. While a master is down and not yet replaced (ClusterDownError, TryAgainError,
a connection refused), calls fail with ``BrokerUnavailable`` and the broker's publish
retry goes on until its deadline: Service A answers 503 with ``Retry-After``.

``min_replicas=N`` makes every publish wait for N replicas (Redis ``WAIT`` on the
connection that wrote it, to the master that owns the partition) before it returns.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.cluster import ClusterNode

from mqctl.backends.keyspace import DEFAULT_PREFIX
from mqctl.backends.redis import RedisStore, redact
from mqctl.backends.streams import StreamBackend
from mqctl.core.errors import ConfigError

DEFAULT_PORT = 6379


def _nodes(parts: SplitResult, url: str) -> list[tuple[str, int]]:
    hosts = parts.netloc.rpartition("@")[2]
    nodes = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = item.strip(), str(DEFAULT_PORT)
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise ConfigError(
                f"Invalid node {item!r} in {redact(url)!r}; expected redis+cluster://host:port[,host:port...]."
            )
        nodes.append((host, int(port)))
    return nodes


class _NodeClients:
    """A plain client per master, for commands that must share a connection with a write (WAIT)."""

    def __init__(self, cluster: aioredis.RedisCluster, template: SplitResult, options: dict[str, Any]) -> None:
        self.cluster = cluster
        self.template = template
        self.options = options
        self.clients: dict[str, aioredis.Redis] = {}

    async def node_for(self, key: str) -> aioredis.Redis:
        await self.cluster.initialize()
        node = self.cluster.get_node_from_key(key)
        if node is None:
            raise rex.SlotNotCoveredError(f"No master serves the slot of {key!r}.")
        client = self.clients.get(node.name)
        if client is None:
            userinfo = self.template.netloc.rpartition("@")[0]
            netloc = f"{userinfo + '@' if userinfo else ''}{node.host}:{node.port}"
            url = urlunsplit(self.template._replace(netloc=netloc, path="/0"))
            client = self.clients[node.name] = aioredis.Redis.from_url(url, **self.options)
        return client

    async def refresh(self, key: str) -> None:
        """A keyed read through the cluster client, which follows MOVED and updates its slot map."""
        with contextlib.suppress(rex.RedisError):  # the caller reports the first error; the next try refreshes
            await self.cluster.exists(key)

    async def aclose(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(Exception):  # closing only
                await client.aclose()
        self.clients.clear()


class ClusterStore(RedisStore):
    """Topics on a Redis Cluster: the Redis backend over a cluster client, plus its node clients."""

    def __init__(self, client: aioredis.RedisCluster, node_clients: _NodeClients, **options: Any) -> None:
        super().__init__(client, node_for=node_clients.node_for, on_moved=node_clients.refresh, **options)
        self._node_clients = node_clients

    async def aclose(self) -> None:
        await self._node_clients.aclose()
        await super().aclose()


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
    """``redis+cluster://[user:password@]host:port[,host:port...]`` or ``rediss+cluster://...`` (TLS).

    Any one reachable node is enough to discover the cluster; list several so that a
    start during one node's outage still works. ``max_connections`` is per node (a blocking
    read holds one while it waits). Other keyword options go to ``RedisCluster``.
    """
    if not prefix or "{" in prefix or "}" in prefix:
        raise ConfigError(f"Invalid key prefix {prefix!r}: use a non-empty name without braces.")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    tls = scheme == "rediss+cluster"
    if parts.path.strip("/") not in ("", "0"):
        raise ConfigError(f"A Redis Cluster has only database 0; remove {parts.path!r} from {redact(url)!r}.")
    nodes = _nodes(parts, url)
    options: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout_s,
        **({"username": parts.username} if parts.username else {}),
        **({"password": parts.password} if parts.password else {}),
        **({"ssl": True} if tls else {}),
        **redis_options,
    }
    try:
        client = aioredis.RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            max_connections=max_connections,
            socket_timeout=None,  # blocking reads wait longer than any socket timeout; calls are bounded above
            **options,
        )
    except (ValueError, TypeError, rex.RedisClusterException) as exc:
        raise ConfigError(f"Invalid Redis Cluster URL or option for {redact(url)!r}: {exc}.") from exc
    plain_scheme = "rediss" if tls else "redis"
    node_options = {k: v for k, v in options.items() if k not in ("username", "password", "ssl")}
    node_clients = _NodeClients(
        client, parts._replace(scheme=plain_scheme, query="", fragment=""), {**node_options, "max_connections": 100}
    )
    store = ClusterStore(
        client,
        node_clients,
        prefix=prefix,
        display_url=redact(url),
        command_timeout_s=command_timeout_s,
        min_replicas=min_replicas,
        replica_timeout_s=replica_timeout_s,
    )
    return StreamBackend(store)
