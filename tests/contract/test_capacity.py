"""The broker contract, capacity: max_backlog refuses whole publishes and loses nothing queued."""

from __future__ import annotations

import pytest

import mqctl
from tests.conftest import BrokerFactory, BrokerURL
from tests.contract.consuming import eventually, take


async def test_publish_beyond_max_backlog_raises_queue_full(connect_broker: BrokerFactory) -> None:
    """With max_backlog=N, message N+1 raises QueueFull naming the topic, and all N stay consumable."""
    async with connect_broker(max_backlog=3) as broker:
        ids = [await broker.publish("orders", {"type": "n", "content": i}) for i in range(3)]

        with pytest.raises(mqctl.QueueFull) as caught:
            await broker.publish("orders", {"type": "n", "content": 3})

        assert caught.value.topic == "orders"
        assert caught.value.max_backlog == 3
        assert caught.value.backlog == 3
        assert "'orders'" in str(caught.value)
        assert caught.value.retry_after_s > 0
        assert (await broker.stats("orders")).length == 3
        async with broker.subscribe("orders", poll_interval=0.1) as sub:
            got = await take(sub, 3)
        assert [d.id for d in got] == ids
        assert [d.message.content for d in got] == [0, 1, 2]


async def test_publish_works_again_once_messages_are_acked(connect_broker: BrokerFactory) -> None:
    """After consumers acknowledge, a full topic takes new messages again."""
    async with connect_broker(max_backlog=2) as broker:
        await broker.publish_many("orders", [{"type": "a"}, {"type": "b"}])
        with pytest.raises(mqctl.QueueFull):
            await broker.publish("orders", {"type": "c"})

        async with broker.subscribe("orders", poll_interval=0.1) as sub:
            for delivery in await take(sub, 2):
                await delivery.ack()

        await broker.publish("orders", {"type": "c"})
        assert (await broker.stats("orders")).backlog == 1


async def test_pending_messages_count_toward_max_backlog(connect_broker: BrokerFactory) -> None:
    """Delivered but unacknowledged messages still count: only an ack frees capacity."""
    async with connect_broker(max_backlog=2) as broker:
        await broker.publish_many("orders", [{"type": "a"}, {"type": "b"}])
        async with broker.subscribe("orders", poll_interval=0.1, ack_timeout=30) as sub:
            await take(sub, 2)
            with pytest.raises(mqctl.QueueFull):
                await broker.publish("orders", {"type": "c"})


async def test_publish_many_that_would_overflow_is_refused_whole(connect_broker: BrokerFactory) -> None:
    """publish_many() that does not fit stores none of its messages; one that fits stores all."""
    async with connect_broker(max_backlog=3) as broker:
        await broker.publish("orders", {"type": "first"})

        with pytest.raises(mqctl.QueueFull):
            await broker.publish_many("orders", [{"type": "a"}, {"type": "b"}, {"type": "c"}])
        assert (await broker.stats("orders")).length == 1

        await broker.publish_many("orders", [{"type": "a"}, {"type": "b"}])
        assert (await broker.stats("orders")).length == 3


async def test_capacity_is_per_group_backlog(connect_broker: BrokerFactory) -> None:
    """The slowest group's backlog is what fills a topic: one group acking does not free the other's."""
    async with connect_broker(max_backlog=2) as broker:
        await broker.create_group("orders", "slow")
        await broker.publish_many("orders", [{"type": "a"}, {"type": "b"}])
        async with broker.subscribe("orders", poll_interval=0.1) as sub:
            for delivery in await take(sub, 2):
                await delivery.ack()

        stats = await broker.stats("orders")
        assert stats.group("default") is not None and stats.group("default").backlog == 0
        assert stats.backlog == 2
        with pytest.raises(mqctl.QueueFull):
            await broker.publish("orders", {"type": "c"})


async def test_duplicate_publish_at_capacity_returns_the_stored_id(connect_broker: BrokerFactory) -> None:
    """Re-publishing an idempotency key that is already stored succeeds even when the topic is full."""
    async with connect_broker(max_backlog=1) as broker:
        first = await broker.publish("orders", {"type": "a"}, idempotency_key="k")

        assert await broker.publish("orders", {"type": "a"}, idempotency_key="k") == first
        with pytest.raises(mqctl.QueueFull):
            await broker.publish("orders", {"type": "a"}, idempotency_key="other")


async def test_a_group_nobody_uses_never_refuses_a_publish(
    connect_broker: BrokerFactory, broker_url: BrokerURL
) -> None:
    """With the library's defaults, a user whose one group keeps up is never refused: no group
    is made for them that nobody reads (it held every message and refused the 6th)."""
    async with (
        connect_broker(library_defaults=True, max_backlog=5) as broker,
        broker.subscribe("orders", group="billing", poll_interval=0.1) as sub,
    ):
        for round_ in range(3):
            await broker.publish_many("orders", [{"type": "n", "content": i} for i in range(5)])
            for delivery in await take(sub, 5):
                await delivery.ack()
            await eventually(lambda: _backlog_is(broker, "orders", 0), what=f"round {round_} acknowledged")
        stats = await broker.stats("orders")
        assert [g.name for g in stats.groups] == ["billing"]
        # nats:// keeps acknowledged history only while its stream (max_msgs = max_backlog) has room.
        assert stats.length == (5 if broker_url.backend == "nats" else 15)


async def _backlog_is(broker: mqctl.Broker, topic: str, count: int) -> bool:
    return (await broker.stats(topic)).backlog == count
