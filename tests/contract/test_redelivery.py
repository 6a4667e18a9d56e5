"""The broker contract, redelivery: nack, a consumer that stops without acking, a clean close."""

from __future__ import annotations

import asyncio
import time

import mqctl
from tests.contract.consuming import WAIT_S, Consumer, eventually, take

FAST = {"poll_interval": 0.1, "ack_timeout": 0.5}


async def test_nacked_message_comes_back_with_the_next_attempt(broker: mqctl.Broker) -> None:
    """nack(delay=...) hands the message back; it is delivered again with attempt 2."""
    entry_id = await broker.publish("orders", {"type": "a", "content": 1})

    async with broker.subscribe("orders", **FAST) as sub:
        (first,) = await take(sub, 1)
        await first.nack(delay=0.05)
        (second,) = await take(sub, 1)
        await second.ack()

    assert (first.id, first.attempt) == (entry_id, 1)
    assert (second.id, second.attempt) == (entry_id, 2)
    assert second.message == first.message


async def test_nack_without_delay_comes_back_within_ack_timeout(broker: mqctl.Broker) -> None:
    """nack() with the default backoff redelivers no later than the subscription's ack_timeout."""
    entry_id = await broker.publish("orders", {"type": "a"})

    async with broker.subscribe("orders", **FAST) as sub:
        (first,) = await take(sub, 1)
        await first.nack()
        (second,) = await take(sub, 1)

    assert (second.id, second.attempt) == (entry_id, 2)


async def test_nack_delay_is_respected(broker: mqctl.Broker) -> None:
    """A nacked message is not redelivered before its delay."""
    await broker.publish("orders", {"type": "a"})

    async with broker.subscribe("orders", poll_interval=0.05, ack_timeout=1.0) as sub:
        (first,) = await take(sub, 1)
        nacked_at = time.monotonic()
        await first.nack(delay=0.4)
        (second,) = await take(sub, 1)
        waited = time.monotonic() - nacked_at

    assert second.attempt == 2
    assert waited >= 0.3, f"redelivered after {waited:.3f} s, before the 0.4 s delay"


async def test_messages_of_an_abandoned_consumer_come_back_after_ack_timeout(broker: mqctl.Broker) -> None:
    """A consumer that stops without acking or closing (a crash) leaves its messages to another after ack_timeout."""
    ids = await broker.publish_many("orders", [{"type": "a"}, {"type": "b"}])
    crashed = broker.subscribe("orders", consumer="crashed", **FAST)
    await crashed.__aenter__()
    read_at = time.monotonic()
    (lost,) = await take(crashed, 1)
    del crashed  # never acked, never closed

    async with broker.subscribe("orders", consumer="rescuer", **FAST) as rescuer:
        got = await take(rescuer, 2)
        waited = time.monotonic() - read_at
        for delivery in got:
            await delivery.ack()

    assert sorted(d.id for d in got) == ids
    assert lost.id == ids[0]
    assert {d.attempt for d in got} == {2}
    assert waited >= 0.4, f"taken over after {waited:.3f} s, before the 0.5 s ack_timeout"


async def test_messages_of_a_cancelled_consumer_task_come_back(broker: mqctl.Broker) -> None:
    """A consumer task cancelled mid-handling (no ack, no close) leaves its message to another after ack_timeout."""
    entry_id = await broker.publish("orders", {"type": "a"})
    got_it = asyncio.Event()

    async def consume() -> None:
        sub = broker.subscribe("orders", consumer="doomed", **FAST)
        await sub.__aenter__()
        async for _ in sub:
            got_it.set()
            await asyncio.Event().wait()  # hangs until cancelled

    task = asyncio.create_task(consume())
    async with asyncio.timeout(WAIT_S):
        await got_it.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    async with broker.subscribe("orders", consumer="rescuer", **FAST) as rescuer:
        (delivery,) = await take(rescuer, 1)
        await delivery.ack()
    assert (delivery.id, delivery.attempt) == (entry_id, 2)


async def test_closing_a_subscription_hands_back_unacked_messages_at_once(broker: mqctl.Broker) -> None:
    """aclose() with unacked deliveries releases them: another consumer gets them long before ack_timeout."""
    ids = await broker.publish_many("orders", [{"type": "n", "content": i} for i in range(3)])
    slow = {"poll_interval": 0.1, "ack_timeout": 30.0}

    async with broker.subscribe("orders", consumer="leaving", **slow) as leaving:
        await take(leaving, 1)  # one handed out, the other two still in its buffer

    started = time.monotonic()
    async with broker.subscribe("orders", consumer="staying", **slow) as staying:
        got = await take(staying, 3)
        for delivery in got:
            await delivery.ack()

    assert sorted(d.id for d in got) == ids
    assert time.monotonic() - started < 10, "released deliveries waited for the ack timeout"
    assert (await broker.stats("orders")).backlog == 0


async def test_ack_after_close_still_counts(broker: mqctl.Broker) -> None:
    """A delivery acked after its subscription closed is acknowledged all the same."""
    await broker.publish("orders", {"type": "a"})

    async with broker.subscribe("orders", **FAST) as sub:
        (delivery,) = await take(sub, 1)
    await delivery.ack()

    default = (await broker.stats("orders")).group("default")
    assert default is not None and default.pending == 0 and default.backlog == 0


async def test_unacked_messages_do_not_block_the_next(broker: mqctl.Broker) -> None:
    """A consumer that holds one delivery unacked still receives the following messages."""
    ids = await broker.publish_many("orders", [{"type": "a"}, {"type": "b"}, {"type": "c"}])

    async with broker.subscribe("orders", batch=1, **FAST) as sub:
        got = await take(sub, 3)
        for delivery in got:
            await delivery.ack()

    assert [d.id for d in got] == ids


async def test_acks_reach_the_broker_while_the_consumer_waits(broker: mqctl.Broker) -> None:
    """Acks sent while a subscription sits in a read are not held back until the next message."""
    await broker.publish("orders", {"type": "a"})

    async with Consumer(broker.subscribe("orders", **FAST)) as consumer:
        await consumer.wait_for(1)

        async def acked() -> bool:
            default = (await broker.stats("orders")).group("default")
            return default is not None and default.pending == 0

        await eventually(acked, what="the ack is visible in stats while the consumer is still open")


async def test_a_delivery_is_settled_once(broker: mqctl.Broker) -> None:
    """After ack(), a nack() is ignored: the message is not delivered again."""
    first_id = await broker.publish("orders", {"type": "a"})

    async with broker.subscribe("orders", **FAST) as sub:
        (delivery,) = await take(sub, 1)
        await delivery.ack()
        await delivery.nack(delay=0)
        second_id = await broker.publish("orders", {"type": "b"})
        (after,) = await take(sub, 1)

    assert delivery.id == first_id
    assert after.id == second_id
