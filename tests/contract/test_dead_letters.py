"""The broker contract, dead letters: attempts run out, the message is set aside; replay and purge."""

from __future__ import annotations

import pytest

import mqctl
from mqctl.core.backend import Limits, Outgoing
from mqctl.core.message import decode
from tests.conftest import BrokerFactory
from tests.contract.consuming import Consumer, eventually, take

FAST = {"poll_interval": 0.1, "ack_timeout": 0.5}


async def nack_poison(delivery: mqctl.Delivery) -> None:
    if delivery.message.type == "poison":
        await delivery.nack(delay=0, reason="cannot parse")
    else:
        await delivery.ack()


async def test_always_nacked_message_is_dead_lettered_after_max_attempts(broker: mqctl.Broker) -> None:
    """A message nacked on every attempt goes to the dead letters after max_attempts; the others still flow."""
    ids = await broker.publish_many(
        "orders", [{"type": "ok", "content": 1}, {"type": "poison", "content": 2}, {"type": "ok", "content": 3}]
    )

    async with Consumer(broker.subscribe("orders", max_attempts=3, **FAST), nack_poison) as consumer:

        async def buried() -> bool:
            return (await broker.stats("orders")).dead_letters == 1

        await eventually(buried, what="one dead letter")
        await consumer.wait_for(5)

    poison = [d for d in consumer.deliveries if d.message.type == "poison"]
    assert [d.attempt for d in poison] == [1, 2, 3]
    assert sorted(d.message.content for d in consumer.deliveries if d.message.type == "ok") == [1, 3]

    (letter,) = await broker.dead_letters("orders")
    assert letter.original_id == ids[1]
    assert letter.attempts == 3
    assert letter.group == "default"
    assert "cannot parse" in letter.reason
    assert decode(letter.payload) == mqctl.Message("poison", 2)
    stats = await broker.stats("orders")
    assert stats.dead_letters == 1
    assert stats.backlog == 0, "a dead-lettered message must not stay pending"


async def test_unacked_message_is_dead_lettered_after_max_attempts(broker: mqctl.Broker) -> None:
    """A message never acked (ack_timeout runs out each time) is dead-lettered after max_attempts deliveries."""

    async def ignore(delivery: mqctl.Delivery) -> None:
        pass

    entry_id = await broker.publish("orders", {"type": "slow"})

    async with Consumer(broker.subscribe("orders", max_attempts=2, poll_interval=0.1, ack_timeout=0.3), ignore) as c:

        async def buried() -> bool:
            return (await broker.stats("orders")).dead_letters == 1

        await eventually(buried, what="one dead letter")

    assert [d.attempt for d in c.deliveries] == [1, 2]
    (letter,) = await broker.dead_letters("orders")
    assert (letter.original_id, letter.attempts) == (entry_id, 2)
    assert letter.reason
    default = (await broker.stats("orders")).group("default")
    assert default is not None and default.pending == 0


async def test_replay_puts_dead_letters_back_on_the_topic(broker: mqctl.Broker) -> None:
    """replay() republishes the dead letters (delivered again with attempt 1) and removes them."""
    await broker.publish("orders", {"type": "poison", "content": 7})
    async with broker.subscribe("orders", max_attempts=1, **FAST) as sub:
        (delivery,) = await take(sub, 1)
        await delivery.nack(reason="bad")
    assert (await broker.stats("orders")).dead_letters == 1

    new_ids = await broker.replay("orders")

    assert len(new_ids) == 1
    assert (await broker.stats("orders")).dead_letters == 0
    assert await broker.dead_letters("orders") == []
    async with broker.subscribe("orders", max_attempts=1, **FAST) as sub:
        (again,) = await take(sub, 1)
        await again.ack()
    assert (again.id, again.attempt) == (new_ids[0], 1)
    assert again.message == mqctl.Message("poison", 7)


async def test_replay_of_chosen_ids_leaves_the_others(broker: mqctl.Broker) -> None:
    """replay(topic, ids) republishes only the named dead letters."""
    await broker.publish_many("orders", [{"type": "p", "content": 1}, {"type": "p", "content": 2}])
    async with broker.subscribe("orders", max_attempts=1, **FAST) as sub:
        for delivery in await take(sub, 2):
            await delivery.nack()
    first, second = await broker.dead_letters("orders")

    assert len(await broker.replay("orders", [second.id])) == 1

    assert [d.id for d in await broker.dead_letters("orders")] == [first.id]


async def test_purge_removes_every_dead_letter(broker: mqctl.Broker) -> None:
    """purge_dead_letters() deletes them all and says how many there were."""
    await broker.publish_many("orders", [{"type": "p"}, {"type": "p"}])
    async with broker.subscribe("orders", max_attempts=1, **FAST) as sub:
        for delivery in await take(sub, 2):
            await delivery.nack()
    assert (await broker.stats("orders")).dead_letters == 2

    assert await broker.purge_dead_letters("orders") == 2

    assert await broker.dead_letters("orders") == []
    assert (await broker.stats("orders")).dead_letters == 0
    assert await broker.purge_dead_letters("orders") == 0


async def test_dead_letters_are_paged_oldest_first(broker: mqctl.Broker) -> None:
    """dead_letters(count=, after=) pages through the dead letters in order."""
    ids = await broker.publish_many("orders", [{"type": "p", "content": i} for i in range(3)])
    async with broker.subscribe("orders", max_attempts=1, **FAST) as sub:
        for delivery in await take(sub, 3):
            await delivery.nack()

    first_page = await broker.dead_letters("orders", count=2)
    second_page = await broker.dead_letters("orders", count=2, after=first_page[-1].id)

    assert [d.original_id for d in first_page + second_page] == ids


async def test_entry_that_is_not_a_mqctl_message_is_dead_lettered_at_once(broker: mqctl.Broker) -> None:
    """A stored entry mqctl cannot decode goes straight to the dead letters; the consumer moves on."""
    limits = Limits(max_backlog=None, retention=10_000, idempotency_window_s=60.0, default_group="default")
    ((garbage_id,),) = await broker.backend.add("orders", [[Outgoing(b"\xff not json")]], limits)
    good_id = await broker.publish("orders", {"type": "ok"})

    async with broker.subscribe("orders", **FAST) as sub:
        (delivery,) = await take(sub, 1)
        await delivery.ack()

    assert delivery.id == good_id
    (letter,) = await broker.dead_letters("orders")
    assert (letter.original_id, letter.payload) == (garbage_id, b"\xff not json")
    assert "decode" in letter.reason
    assert (await broker.stats("orders")).backlog == 0


async def test_replay_into_a_full_topic_keeps_the_dead_letters(connect_broker: BrokerFactory) -> None:
    """replay() that the topic has no room for raises QueueFull and leaves the dead letters in place."""
    async with connect_broker(max_backlog=1) as broker:
        await broker.publish("orders", {"type": "poison"})
        async with broker.subscribe("orders", max_attempts=1, **FAST) as sub:
            (delivery,) = await take(sub, 1)
            await delivery.nack()
        await broker.publish("orders", {"type": "fills-the-topic"})

        with pytest.raises(mqctl.QueueFull):
            await broker.replay("orders")

        assert (await broker.stats("orders")).dead_letters == 1


async def test_ready_stops_at_an_entry_it_cannot_decode_and_anext_dead_letters_it(broker: mqctl.Broker) -> None:
    """ready() gives out what a read brought without an await, but not what it cannot decode: it
    returns None there, and the next anext() moves that entry to the dead letters and goes on."""
    limits = Limits(max_backlog=None, retention=10_000, idempotency_window_s=60.0, default_group="default")
    first = await broker.publish("orders", {"type": "ok", "content": 1})
    ((garbage_id,),) = await broker.backend.add("orders", [[Outgoing(b"\xff not json")]], limits)
    last = await broker.publish("orders", {"type": "ok", "content": 3})
    async with broker.subscribe("orders", batch=10, **FAST) as sub:
        (delivery,) = await take(sub, 1)
        assert len(sub._buffer) == 2  # one read brought all three
        assert sub.ready() is None  # the undecodable one is next: left for anext()
        (after,) = await take(sub, 1)
        assert after.id == last and delivery.id == first
        assert sub.ready() is None  # nothing more was read
        await sub.ack_many([delivery, after])
    (letter,) = await broker.dead_letters("orders")
    assert letter.original_id == garbage_id
