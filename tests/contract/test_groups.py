"""The broker contract, groups: fan-out between groups, competition within one, where a group starts."""

from __future__ import annotations

import asyncio

import mqctl
from tests.conftest import BrokerFactory
from tests.contract.consuming import WAIT_S, Consumer, Handler, eventually, take


async def test_every_group_receives_every_message(broker: mqctl.Broker) -> None:
    """Fan-out: two groups created before publishing each receive all messages, in order."""
    assert await broker.create_group("orders", "billing")
    assert await broker.create_group("orders", "shipping")
    ids = await broker.publish_many("orders", [{"type": "n", "content": i} for i in range(5)])

    async with (
        broker.subscribe("orders", group="billing", poll_interval=0.1) as billing,
        broker.subscribe("orders", group="shipping", poll_interval=0.1) as shipping,
    ):
        assert [d.id for d in await take(billing, 5)] == ids
        assert [d.id for d in await take(shipping, 5)] == ids


async def test_create_group_reports_whether_it_was_new(broker: mqctl.Broker) -> None:
    """create_group() returns True when it creates the group and False when it existed."""
    assert await broker.create_group("orders", "billing") is True
    assert await broker.create_group("orders", "billing") is False


async def test_consumers_of_one_group_share_the_messages(broker: mqctl.Broker) -> None:
    """Competing consumers: each message goes to exactly one consumer of the group, none is lost."""
    count = 20
    both_busy = asyncio.Barrier(2)

    def holding_the_first() -> Handler:
        # Keep the first delivery until the other consumer has one too: proof that both take part.
        first = True

        async def handle(delivery: mqctl.Delivery) -> None:
            nonlocal first
            if first:
                first = False
                async with asyncio.timeout(WAIT_S):
                    await both_busy.wait()
            await delivery.ack()

        return handle

    async with (
        Consumer(broker.subscribe("orders", consumer="a", batch=1, poll_interval=0.1), holding_the_first()) as a,
        Consumer(broker.subscribe("orders", consumer="b", batch=1, poll_interval=0.1), holding_the_first()) as b,
    ):
        ids = await broker.publish_many("orders", [{"type": "n", "content": i} for i in range(count)])

        async def all_delivered() -> bool:
            return len(a.deliveries) + len(b.deliveries) >= count

        await eventually(all_delivered, what=f"{count} deliveries between two consumers")

    assert a.deliveries and b.deliveries
    assert not set(a.ids) & set(b.ids), "a message went to both consumers"
    assert len(a.ids) + len(b.ids) == count
    assert set(a.ids) | set(b.ids) == set(ids)
    assert {d.attempt for d in a.deliveries + b.deliveries} == {1}
    stats = await broker.stats("orders")
    assert stats.backlog == 0


async def test_default_group_exists_from_the_first_publish(broker: mqctl.Broker) -> None:
    """Messages published before anyone subscribed wait in the "default" group for its first consumer."""
    ids = await broker.publish_many("orders", [{"type": "a"}, {"type": "b"}, {"type": "c"}])

    stats = await broker.stats("orders")
    default = stats.group("default")
    assert default is not None and default.lag == 3

    async with broker.subscribe("orders", poll_interval=0.1) as sub:
        assert [d.id for d in await take(sub, 3)] == ids


async def test_group_created_before_publish_keeps_messages_for_later_consumers(broker: mqctl.Broker) -> None:
    """A group created before a message is published receives it though no consumer was connected."""
    await broker.create_group("orders", "audit")
    entry_id = await broker.publish("orders", {"type": "a"})

    async with broker.subscribe("orders", group="audit", poll_interval=0.1) as sub:
        (delivery,) = await take(sub, 1)
    assert delivery.id == entry_id
    assert delivery.group == "audit"
    assert delivery.topic == "orders"


async def test_new_group_reads_from_now_on(broker: mqctl.Broker) -> None:
    """subscribe() to a group that does not exist yet starts after the messages already published."""
    await broker.publish("orders", {"type": "old"})

    async with broker.subscribe("orders", group="late", poll_interval=0.1) as sub:
        new_id = await broker.publish("orders", {"type": "new"})
        (delivery,) = await take(sub, 1)
    assert delivery.id == new_id
    assert delivery.message.type == "new"


async def test_new_group_from_start_reads_retained_history(broker: mqctl.Broker) -> None:
    """subscribe(from_start=True) to a new group starts at the oldest retained message."""
    ids = await broker.publish_many("orders", [{"type": "a"}, {"type": "b"}])

    async with broker.subscribe("orders", group="replayer", from_start=True, poll_interval=0.1) as sub:
        assert [d.id for d in await take(sub, 2)] == ids


async def test_create_group_from_now_skips_earlier_messages(broker: mqctl.Broker) -> None:
    """create_group(from_start=False) keeps only messages published after it."""
    await broker.publish("orders", {"type": "old"})
    await broker.create_group("orders", "fresh", from_start=False)
    new_id = await broker.publish("orders", {"type": "new"})

    async with broker.subscribe("orders", group="fresh", poll_interval=0.1) as sub:
        (delivery,) = await take(sub, 1)
    assert delivery.id == new_id


async def test_without_a_default_group_nothing_waits_for_later_consumers(connect_broker: BrokerFactory) -> None:
    """With default_group=None no group exists on first publish, so a later subscriber starts from now."""
    async with connect_broker(default_group=None) as broker:
        await broker.publish("orders", {"type": "old"})
        assert (await broker.stats("orders")).groups == ()

        async with broker.subscribe("orders", poll_interval=0.1) as sub:
            new_id = await broker.publish("orders", {"type": "new"})
            (delivery,) = await take(sub, 1)
        assert delivery.id == new_id


async def test_acked_message_is_not_delivered_again(broker: mqctl.Broker) -> None:
    """Once acknowledged, a message is done for the group: a later consumer does not get it."""
    await broker.publish("orders", {"type": "a"})
    async with broker.subscribe("orders", poll_interval=0.1, ack_timeout=0.3) as sub:
        (delivery,) = await take(sub, 1)
        await delivery.ack()
        await delivery.ack()  # a second ack is a no-op

    second = await broker.publish("orders", {"type": "b"})
    async with broker.subscribe("orders", poll_interval=0.1, ack_timeout=0.3) as sub:
        (delivery,) = await take(sub, 1)
    assert delivery.id == second
    default = (await broker.stats("orders")).group("default")
    assert default is not None and default.pending == 1
