"""Partitioned topics on a real 3-master Redis Cluster: spread over masters, order per key, exactly once."""

from __future__ import annotations

import asyncio
import binascii
import uuid
from collections.abc import AsyncIterator

import pytest

import mqctl
from mqctl.backends.keyspace import Keyspace
from mqctl.backends.partitioned import split_id, stream_name
from tests.contract.consuming import Consumer, eventually
from tests.redis_cluster import RedisCluster

pytestmark = pytest.mark.cluster


@pytest.fixture
async def broker(redis_cluster: RedisCluster) -> AsyncIterator[mqctl.Broker]:
    async with mqctl.connect(redis_cluster.url, prefix=f"mqtest-{uuid.uuid4().hex}") as connected:
        yield connected


def _slot(key: str) -> int:
    tag = key[key.index("{") + 1 : key.index("}")]
    return binascii.crc_hqx(tag.encode(), 0) % 16384


async def test_six_partitions_spread_over_all_three_masters(broker: mqctl.Broker, redis_cluster: RedisCluster) -> None:
    """The 6 streams of a 6-partition topic live on every master of a 3-master cluster, 2 each."""
    await broker.create_topic("hot", partitions=6)
    await broker.publish_many("hot", [{"type": "n"}])

    keys = Keyspace("x")
    owners = [redis_cluster.slot_owner(_slot(keys.stream(stream_name("hot", p, 6)))) for p in range(6)]

    assert sorted(set(owners)) == redis_cluster.master_ports()
    assert sorted(owners.count(port) for port in set(owners)) == [2, 2, 2]
    assert (await broker.stats("hot")).partitions == 6


async def test_order_per_key_holds_under_concurrent_publishers(broker: mqctl.Broker) -> None:
    """Concurrent publishers, 8 keys over 6 partitions: each key's messages arrive in publish order."""
    await broker.create_topic("hot", partitions=6)
    per_key = 50

    async def publisher(key: str) -> None:
        for i in range(per_key):
            await broker.publish("hot", {"type": "n", "content": [key, i]}, key=key)

    async with Consumer(broker.subscribe("hot", poll_interval=0.1, batch=20)) as consumer:
        await asyncio.gather(*(publisher(f"key-{k}") for k in range(8)))
        await consumer.wait_for(8 * per_key, timeout_s=20)

    for k in range(8):
        got = [d.message.content[1] for d in consumer.deliveries if d.message.content[0] == f"key-{k}"]
        assert got == list(range(per_key)), f"key-{k} out of order"
        assert len({split_id(d.id)[0] for d in consumer.deliveries if d.message.content[0] == f"key-{k}"}) == 1


async def test_a_group_consumes_everything_exactly_once(broker: mqctl.Broker) -> None:
    """Three consumers of one group over 6 partitions: every message once, none twice, backlog 0."""
    await broker.create_topic("hot", partitions=6)
    count = 600
    consumers = [Consumer(broker.subscribe("hot", poll_interval=0.1, consumer=f"c{i}")) for i in range(3)]
    for consumer in consumers:
        await consumer.__aenter__()
    try:
        sent = await asyncio.gather(*(broker.publish("hot", {"type": "n", "content": i}) for i in range(count)))

        async def all_in() -> bool:
            return sum(len(c.deliveries) for c in consumers) >= count

        await eventually(all_in, timeout_s=20, what=f"{count} deliveries")

        async def drained() -> bool:
            return (await broker.stats("hot")).backlog == 0

        await eventually(drained, timeout_s=10, what="backlog 0")
    finally:
        for consumer in consumers:
            await consumer.stop()

    got = [d.id for c in consumers for d in c.deliveries]
    assert sorted(got) == sorted(sent)
    assert len({split_id(i)[0] for i in got}) == 6
    assert all(d.attempt == 1 for c in consumers for d in c.deliveries)
