"""The broker contract, partitioned topics: one topic over N streams, with the same semantics."""

from __future__ import annotations

import asyncio

import pytest

import mqctl
from mqctl.backends.partitioned import split_id
from tests.conftest import BrokerFactory, BrokerURL
from tests.contract.consuming import Consumer, eventually, take, take_broadcast


@pytest.fixture(autouse=True)
def _backend_with_partitions(broker_url: BrokerURL) -> None:
    if broker_url.backend == "nats":
        pytest.skip("nats:// splits no topic into partitions (see test_a_backend_without_partitions_says_so)")


async def test_create_topic_sets_the_partition_count_once(broker: mqctl.Broker) -> None:
    """create_topic(N) is idempotent, shows in stats, and refuses another N for the same topic."""
    assert await broker.create_topic("orders", partitions=4) == 4
    assert await broker.create_topic("orders", partitions=4) == 4
    with pytest.raises(mqctl.ConfigError, match="already exists with 4 partition"):
        await broker.create_topic("orders", partitions=2)

    assert (await broker.stats("orders")).partitions == 4
    assert (await broker.stats("never-created")).partitions == 1


async def test_a_topic_used_unpartitioned_keeps_one_partition(broker: mqctl.Broker) -> None:
    """A topic that was published to without create_topic has 1 partition and cannot be split later."""
    first = await broker.publish("orders", {"type": "n"})

    assert ":" not in first
    with pytest.raises(mqctl.ConfigError, match="already exists with 1 partition"):
        await broker.create_topic("orders", partitions=3)
    assert await broker.create_topic("orders") == 1


async def test_invalid_partition_counts_are_refused(broker: mqctl.Broker) -> None:
    """A partition count must be a whole number from 1 to 256."""
    for bad in (0, -1, 257, 1.5, "2"):
        with pytest.raises(mqctl.ConfigError, match="partitions must be"):
            await broker.create_topic("orders", partitions=bad)  # type: ignore[arg-type]


async def test_internal_partition_names_cannot_be_used_as_topics(broker: mqctl.Broker) -> None:
    """Partition streams are named '<topic>#<p>'; '#' is refused in topic names, so no topic collides."""
    await broker.create_topic("orders", partitions=2)
    with pytest.raises(mqctl.ConfigError, match="Invalid topic name"):
        await broker.publish("orders#1", {"type": "n"})
    await broker.publish("orders", {"type": "n"})
    assert await broker.topics() == ["orders"]


async def test_ids_carry_the_partition_and_a_key_always_picks_the_same_one(broker: mqctl.Broker) -> None:
    """Ids are '<p>:<ms>-<seq>'; one key always lands on one partition; no key fills them in turn."""
    await broker.create_topic("orders", partitions=3)

    keyed = [await broker.publish("orders", {"type": "n", "content": i}, key="customer-7") for i in range(5)]
    unkeyed = [await broker.publish("orders", {"type": "n"}) for _ in range(6)]

    assert len({split_id(i)[0] for i in keyed}) == 1
    assert sorted(split_id(i)[0] for i in unkeyed) == [0, 0, 1, 1, 2, 2]
    assert (await broker.stats("orders")).length == 11


async def test_a_group_gets_every_message_of_every_partition_once(broker: mqctl.Broker) -> None:
    """A group reads all partitions: each message is delivered once, acks empty the backlog."""
    await broker.create_topic("orders", partitions=4)
    sent = await broker.publish_many("orders", [{"type": "n", "content": i} for i in range(10)])
    sent += [await broker.publish("orders", {"type": "n", "content": i}, key=f"k{i}") for i in range(10, 40)]

    async with Consumer(broker.subscribe("orders", poll_interval=0.1)) as consumer:
        await consumer.wait_for(40)

        async def drained() -> bool:
            return (await broker.stats("orders")).backlog == 0

        await eventually(drained, what="every message acknowledged")

    assert sorted(consumer.ids) == sorted(sent)
    assert sorted(d.message.content for d in consumer.deliveries) == list(range(40))
    stats = await broker.stats("orders")
    default = stats.group("default")
    assert default is not None and (default.lag, default.pending) == (0, 0)


async def test_messages_of_one_key_arrive_in_order(broker: mqctl.Broker) -> None:
    """Per key, the order of publishing is the order of delivery."""
    await broker.create_topic("orders", partitions=3)

    async def publisher(key: str) -> None:
        for i in range(20):
            await broker.publish("orders", {"type": "n", "content": [key, i]}, key=key)

    await asyncio.gather(*(publisher(f"key-{k}") for k in range(5)))

    async with broker.subscribe("orders", poll_interval=0.1) as sub:
        got = await take(sub, 100)
        for delivery in got:
            await delivery.ack()
    for k in range(5):
        assert [d.message.content[1] for d in got if d.message.content[0] == f"key-{k}"] == list(range(20))


async def test_nack_and_dead_letters_work_per_partition(broker: mqctl.Broker) -> None:
    """A nacked message comes back from its own partition; at max_attempts it is a dead letter, and replays."""
    await broker.create_topic("orders", partitions=3)
    ids = [await broker.publish("orders", {"type": "n", "content": i}) for i in range(3)]

    async with broker.subscribe("orders", poll_interval=0.05, max_attempts=2, ack_timeout=5) as sub:
        first = await take(sub, 3)
        for delivery in first:
            await delivery.nack(0)
        second = await take(sub, 3)
        assert sorted(d.id for d in second) == sorted(ids)
        assert {d.attempt for d in second} == {2}
        for delivery in second:
            await delivery.nack(0)

    letters = await broker.dead_letters("orders")
    assert sorted(d.original_id for d in letters) == sorted(ids)
    assert (await broker.stats("orders")).dead_letters == 3

    replayed = await broker.replay("orders")
    assert len(replayed) == 3
    assert (await broker.stats("orders")).dead_letters == 0
    async with broker.subscribe("orders", poll_interval=0.05) as sub:
        again = await take(sub, 3)
    assert sorted(d.message.content for d in again) == [0, 1, 2]


async def test_dead_letters_page_over_the_partitions_without_repeats(broker: mqctl.Broker) -> None:
    """Dead letters listed one page at a time (each page after the last letter of the one before)
    give every letter of every partition once (a page after a letter of one partition repeated
    the other partitions' letters before)."""
    await broker.create_topic("orders", partitions=3)
    ids = [await broker.publish("orders", {"type": "n", "content": i}) for i in range(6)]
    async with broker.subscribe("orders", poll_interval=0.05, max_attempts=1) as sub:
        for delivery in await take(sub, 6):
            await delivery.nack(0)

    paged: list[str] = []
    after = ""
    while page := await broker.dead_letters("orders", count=2, after=after):
        paged += [d.original_id for d in page]
        after = page[-1].id
        assert len(paged) <= 6, paged
    assert sorted(paged) == sorted(ids)


async def test_capacity_is_per_partition(connect_broker: BrokerFactory) -> None:
    """max_backlog applies to each partition: a full partition refuses, naming the topic, another accepts."""
    async with connect_broker(max_backlog=2) as broker:
        await broker.create_topic("orders", partitions=2)
        await broker.publish("orders", {"type": "n"}, key="a")
        await broker.publish("orders", {"type": "n"}, key="a")
        with pytest.raises(mqctl.QueueFull, match="'orders'"):
            await broker.publish("orders", {"type": "n"}, key="a")
        other = next(k for k in (f"k{i}" for i in range(100)) if _partition_of(k, 2) != _partition_of("a", 2))
        await broker.publish("orders", {"type": "n"}, key=other)


def _partition_of(key: str, partitions: int) -> int:
    from mqctl.backends.partitioned import pick

    return pick(key, partitions)


async def test_broadcast_resumes_every_partition_without_gaps_or_duplicates(broker: mqctl.Broker) -> None:
    """A broadcast position names every partition's last id; resuming from it misses and repeats nothing."""
    await broker.create_topic("orders", partitions=3)
    async with broker.broadcast("orders", poll_interval=0.1) as reader:
        sent = [await broker.publish("orders", {"type": "n", "content": i}) for i in range(6)]
        seen = await take_broadcast(reader, 6)  # type: ignore[arg-type]
        position = reader.last_id
    assert sorted(i for i, _ in seen) == sorted(sent)
    assert position is not None and position.count(":") == 3

    later = [await broker.publish("orders", {"type": "n", "content": i}) for i in range(6, 12)]
    async with broker.broadcast("orders", last_id=position, poll_interval=0.1) as resumed:
        got = await take_broadcast(resumed, 6)  # type: ignore[arg-type]
        newer = await broker.publish("orders", {"type": "n", "content": 12})
        live = await take_broadcast(resumed, 1)  # type: ignore[arg-type]
    assert sorted(i for i, _ in got) == sorted(later)
    assert [i for i, _ in live] == [newer]


async def test_broadcast_from_zero_reads_every_partition(broker: mqctl.Broker) -> None:
    """last_id="0-0" on a partitioned topic yields everything retained in every partition."""
    await broker.create_topic("orders", partitions=2)
    sent = [await broker.publish("orders", {"type": "n", "content": i}) for i in range(4)]

    async with broker.broadcast("orders", last_id="0-0", poll_interval=0.1) as reader:
        got = await take_broadcast(reader, 4)  # type: ignore[arg-type]

    assert sorted(i for i, _ in got) == sorted(sent)


async def test_a_burst_without_keys_spreads_over_every_partition(broker: mqctl.Broker) -> None:
    """600 concurrent publishes without a key land on all 3 partitions, none with more than half."""
    await broker.create_topic("orders", partitions=3)

    ids = await asyncio.gather(*(broker.publish("orders", {"type": "n", "content": i}) for i in range(600)))

    per_partition = [sum(1 for i in ids if split_id(i)[0] == p) for p in range(3)]
    assert all(0 < count <= 300 for count in per_partition), per_partition
