"""The broker contract, stats and retention: what a topic reports, and what trimming may drop."""

from __future__ import annotations

import mqctl
from tests.conftest import BrokerFactory, BrokerURL
from tests.contract.consuming import Consumer, eventually, take


async def test_stats_of_an_unknown_topic_are_empty(broker: mqctl.Broker) -> None:
    """stats() of a topic never published to reports nothing, without error."""
    stats = await broker.stats("nothing-here")

    assert (stats.topic, stats.length, stats.dead_letters, stats.backlog, stats.pending) == ("nothing-here", 0, 0, 0, 0)
    assert stats.groups == ()


async def test_stats_report_length_backlog_lag_and_pending_per_group(broker: mqctl.Broker) -> None:
    """stats() counts per group what was never delivered (lag), what is unacked (pending) and their sum."""
    await broker.create_group("orders", "idle")
    ids = await broker.publish_many("orders", [{"type": "n", "content": i} for i in range(5)])

    async with broker.subscribe("orders", batch=2, poll_interval=0.1, ack_timeout=30) as sub:
        first, _second = await take(sub, 2)
        await first.ack()

    stats = await broker.stats("orders")
    assert stats.topic == "orders"
    assert stats.length == 5
    assert stats.dead_letters == 0
    assert (stats.first_id, stats.last_id) == (ids[0], ids[-1])
    assert [g.name for g in stats.groups] == ["default", "idle"]
    default, idle = stats.groups
    assert (default.lag, default.pending, default.backlog) == (3, 1, 4)
    assert default.last_delivered_id == ids[1]
    if broker.backend.capabilities.consumer_names:  # a NATS pull consumer names no consumers, keeps no ages
        assert default.consumers >= 1
        assert default.oldest_pending_age_s is not None and default.oldest_pending_age_s >= 0
    assert (idle.lag, idle.pending, idle.backlog) == (5, 0, 5)
    assert idle.oldest_pending_age_s is None
    assert stats.backlog == 5
    assert stats.pending == 1
    assert stats.group("idle") == idle
    assert stats.group("missing") is None


async def test_retention_trims_acknowledged_history(connect_broker: BrokerFactory) -> None:
    """With retention=5 and every message acknowledged, the topic keeps about 5 (plus the backend's slack)."""
    async with connect_broker(retention=5) as broker:
        async with Consumer(broker.subscribe("orders", poll_interval=0.1)) as consumer:
            for round_ in range(30):
                await broker.publish_many("orders", [{"type": "n", "content": round_}] * 10)
                await consumer.wait_for(10 * (round_ + 1))

                async def acked() -> bool:
                    return (await broker.stats("orders")).backlog == 0

                await eventually(acked, what="every message acknowledged")
            await broker.publish("orders", {"type": "last"})

        length = (await broker.stats("orders")).length
        assert length <= 5 + 100 + 11, f"{length} messages kept with retention=5"


async def test_retention_never_trims_what_a_group_still_needs(connect_broker: BrokerFactory) -> None:
    """Messages a group has not acknowledged (undelivered or pending) survive any trim and stay consumable."""
    async with connect_broker(retention=5) as broker:
        await broker.create_group("orders", "slow")
        ids = await broker.publish_many("orders", [{"type": "n", "content": i} for i in range(10)])
        async with broker.subscribe("orders", group="slow", poll_interval=0.1, ack_timeout=30) as slow:
            await take(slow, 10)  # now pending for "slow", and released unacked on close
        async with Consumer(broker.subscribe("orders", poll_interval=0.1)) as fast:
            for start in range(10, 200, 10):
                ids += await broker.publish_many(
                    "orders", [{"type": "n", "content": i} for i in range(start, start + 10)]
                )
            await fast.wait_for(len(ids))

        assert (await broker.stats("orders")).length == len(ids)
        async with broker.subscribe("orders", group="slow", poll_interval=0.1) as slow:
            got = await take(slow, len(ids))
        assert sorted(d.message.content for d in got) == list(range(200))


async def test_stats_can_be_read_while_consumers_ack(broker: mqctl.Broker, broker_url: BrokerURL) -> None:
    """stats() called over and over while a consumer acknowledges one message at a time never fails."""
    # nats:// sends the acks that ride with a read without waiting for the server's answer (a
    # round trip each would cost a third of the consumer's speed): stats may lag one behind.
    most = 2 if broker_url.backend == "nats" else 1
    count = 300
    await broker.publish_many("orders", [{"type": "n", "content": i} for i in range(count)])
    reads = 0

    async with Consumer(broker.subscribe("orders", batch=1, poll_interval=0.1)) as consumer:
        while len(consumer.deliveries) < count:
            stats = await broker.stats("orders")
            reads += 1
            default = stats.group("default")
            assert default is not None and 0 <= default.pending <= most
            await consumer.wait_for(min(count, len(consumer.deliveries) + 1))

    assert reads >= 1  # the memory backend can drain all 300 between two reads
