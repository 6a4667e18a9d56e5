"""Connecting: the URL picks the backend by scheme, options split between broker and backend."""

from __future__ import annotations

from typing import Any

import pytest

import mqctl
from mqctl.backends.memory import MemoryStore
from mqctl.backends.streams import StreamBackend


def test_memory_url_opens_the_memory_backend() -> None:
    """memory:// (the default URL) gives a broker over the in-process backend."""
    broker = mqctl.open_broker()

    assert isinstance(broker.backend, StreamBackend) and isinstance(broker.backend.store.backend, MemoryStore)
    assert broker.url == "memory://"


def test_broker_options_reach_the_broker() -> None:
    """Options named in BrokerOptions set the broker's policy."""
    broker = mqctl.open_broker("memory://", max_backlog=10, retention=3, default_group=None)

    assert (broker.options.max_backlog, broker.options.retention, broker.options.default_group) == (10, 3, None)


@pytest.mark.parametrize("url", ["foo://x", "kafka://localhost:9092"])
def test_unknown_scheme_raises_config_error_listing_the_known_ones(url: str) -> None:
    """An unknown scheme raises ConfigError that names the schemes mqctl knows."""
    with pytest.raises(mqctl.ConfigError, match=r"memory, nats, redis, redis\+cluster, rediss, rediss\+cluster"):
        mqctl.open_broker(url)


@pytest.mark.parametrize("url", ["", "localhost:6379", None])
def test_url_without_a_scheme_raises_config_error(url: Any) -> None:
    """A URL without "scheme://" raises ConfigError."""
    with pytest.raises(mqctl.ConfigError):
        mqctl.open_broker(url)


def test_memory_backend_takes_no_options() -> None:
    """An option the memory backend does not know raises ConfigError."""
    with pytest.raises(mqctl.ConfigError, match="no_such_option"):
        mqctl.open_broker("memory://", no_such_option=1)


@pytest.mark.parametrize(
    "options",
    [
        {"max_backlog": 0},
        {"max_message_bytes": 10},
        {"retention": -1},
        {"publish_timeout_s": 0},
        {"default_group": "has space"},
    ],
    ids=["backlog-0", "tiny-messages", "negative-retention", "no-timeout", "bad-group"],
)
def test_invalid_broker_option_raises_config_error(options: dict[str, Any]) -> None:
    """Out-of-range broker options raise ConfigError at connect."""
    with pytest.raises(mqctl.ConfigError):
        mqctl.open_broker("memory://", **options)


async def test_subscription_options_are_checked() -> None:
    """Non-positive poll_interval, ack_timeout, batch or max_attempts raise ConfigError."""
    async with mqctl.connect("memory://unit-subscription-options") as broker:
        for options in ({"poll_interval": 0}, {"ack_timeout": -1}, {"batch": 0}, {"max_attempts": 0}):
            with pytest.raises(mqctl.ConfigError):
                broker.subscribe("orders", **options)  # type: ignore[arg-type]
        with pytest.raises(mqctl.ConfigError):
            broker.broadcast("orders", poll_interval=0)


async def test_memory_brokers_with_one_name_share_a_store() -> None:
    """Two brokers on memory://NAME see the same topics; another name sees none of them."""
    async with (
        mqctl.connect("memory://unit-shared") as first,
        mqctl.connect("memory://unit-shared") as second,
        mqctl.connect("memory://unit-other") as other,
    ):
        await first.publish("orders", {"type": "a"})

        assert (await second.stats("orders")).length == 1
        assert (await other.stats("orders")).length == 0


async def test_closed_memory_broker_is_unavailable() -> None:
    """After the broker closes, its backend refuses work with BrokerUnavailable."""
    async with mqctl.connect("memory://unit-closed") as broker:
        pass

    with pytest.raises(mqctl.BrokerUnavailable):
        await broker.ping()


def test_cluster_url_lists_its_seed_nodes() -> None:
    """redis+cluster://h:p,h:p opens the cluster backend with every listed node as a seed (nothing connects yet)."""
    from mqctl.backends.cluster import ClusterStore

    broker = mqctl.open_broker("redis+cluster://user:secret@127.0.0.1:7000,127.0.0.2:7001", prefix="t")

    store = broker.backend.store.backend  # type: ignore[attr-defined]
    assert isinstance(store, ClusterStore)
    assert [(n.host, n.port) for n in store.client.startup_nodes] == [("127.0.0.1", 7000), ("127.0.0.2", 7001)]
    assert "secret" not in store.display_url


def test_rediss_cluster_url_uses_tls() -> None:
    """rediss+cluster:// connects every node over TLS."""
    from redis.asyncio.connection import SSLConnection

    broker = mqctl.open_broker("rediss+cluster://127.0.0.1:7000")

    store = broker.backend.store.backend  # type: ignore[attr-defined]
    assert store.client.connection_kwargs["connection_class"] is SSLConnection


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis+cluster://127.0.0.1:7000/3", "only database 0"),
        ("redis+cluster://127.0.0.1:notaport", "Invalid node"),
    ],
)
def test_bad_cluster_url_raises_config_error(url: str, match: str) -> None:
    """A cluster URL naming a database other than 0, or a node without a port number, raises ConfigError."""
    with pytest.raises(mqctl.ConfigError, match=match):
        mqctl.open_broker(url)


def test_replica_wait_options_are_checked() -> None:
    """min_replicas must be a whole number >= 0 (the replica wait is off by default)."""
    assert mqctl.open_broker("redis://127.0.0.1:1/0").backend.store.backend.min_replicas == 0  # type: ignore[attr-defined]
    with pytest.raises(mqctl.ConfigError, match="min_replicas"):
        mqctl.open_broker("redis+cluster://127.0.0.1:7000", min_replicas=-1)
