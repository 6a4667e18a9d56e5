"""The broker contract, acks: those that come while a read is in flight share one round trip."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import mqctl
from mqctl.core import subscription as subscription_module
from tests.conftest import BrokerFactory
from tests.contract.consuming import eventually, take


async def _pending(broker: mqctl.Broker, topic: str, group: str = "default") -> int:
    stats = await broker.stats(topic)
    return next(g.pending for g in stats.groups if g.name == group)


async def _pending_is(broker: mqctl.Broker, topic: str, group: str, count: int) -> bool:
    return await _pending(broker, topic, group) == count


async def _reading(subscription: mqctl.Subscription) -> asyncio.Task[mqctl.Delivery]:
    """Start the subscription's next (blocking) read and return once it is in flight."""
    task = asyncio.ensure_future(anext(subscription))
    while subscription._fetch is None:
        await asyncio.sleep(0.001)
    return task


@pytest.mark.parametrize("how", ["ack each", "ack_many"])
async def test_acks_during_a_read_go_out_together(broker: mqctl.Broker, mocker: Any, how: str) -> None:
    """Acks that arrive while a blocking read is in flight are sent in a few round trips, not one
    each (``ack()`` each: the first alone, the other 19 together; ``ack_many``: one for all), and
    are in the broker when their await returns."""
    await broker.publish_many("orders", [{"type": "n", "content": i} for i in range(20)])
    sub = broker.subscribe("orders", batch=20, poll_interval=5)
    backend_ack = mocker.spy(sub._reader, "ack")
    round_trips = 2 if how == "ack each" else 1
    async with sub:
        deliveries = await take(sub, 20)
        reading = await _reading(sub)
        if how == "ack each":
            await asyncio.gather(*(d.ack() for d in deliveries))
        else:
            await sub.ack_many(deliveries)

        sent = [h for call in backend_ack.call_args_list for h in call.args[0]]
        assert sorted(map(id, sent)) == sorted(id(d._handle) for d in deliveries)
        assert backend_ack.call_count <= round_trips
        assert await _pending(broker, "orders") == 0
        await sub.ack_many(deliveries)  # settled already: nothing more is sent
        assert backend_ack.call_count <= round_trips
        reading.cancel()


async def test_an_ack_cancelled_before_its_batch_leaves_is_not_sent(broker: mqctl.Broker) -> None:
    """An ack whose awaiter is cancelled while it waits for its batch stays pending (the ack
    timeout redelivers it); the others of the batch are sent."""
    await broker.publish_many("orders", [{"type": "n", "content": i} for i in range(3)])
    async with broker.subscribe("orders", batch=3, poll_interval=5) as sub:
        first, second, third = await take(sub, 3)
        reading = await _reading(sub)
        await first.ack()  # starts the sender; the next two join one batch
        cancelled = asyncio.ensure_future(second.ack())
        kept = asyncio.ensure_future(third.ack())
        cancelled.cancel()  # before the loop runs again: before the batch leaves
        await kept
        assert cancelled.cancelled()
        stats = await broker.stats("orders")
        assert stats.group("default").pending == 1
        reading.cancel()


@pytest.mark.parametrize("how", ["ack each", "ack_many"])
async def test_a_failed_shared_ack_reaches_every_awaiter(broker: mqctl.Broker, mocker: Any, how: str) -> None:
    """When the XACK of a batch fails, every ack in it raises (each ``ack()``, or the one await of
    ``ack_many``), and the messages stay pending."""
    await broker.publish_many("orders", [{"type": "n", "content": i} for i in range(4)])
    sub = broker.subscribe("orders", batch=4, poll_interval=5, ack_timeout=60)
    async with sub:
        deliveries = await take(sub, 4)
        reading = await _reading(sub)
        mocker.patch.object(sub._reader, "ack", side_effect=mqctl.BrokerUnavailable("gone"))
        acks = [d.ack() for d in deliveries] if how == "ack each" else [sub.ack_many(deliveries)]
        results = await asyncio.gather(*acks, return_exceptions=True)
        assert all(isinstance(r, mqctl.BrokerUnavailable) for r in results), results
        mocker.stopall()
        assert await _pending(broker, "orders") == 4
        reading.cancel()


async def test_close_waits_for_acks_in_flight(broker: mqctl.Broker) -> None:
    """aclose() returns only after the acks taken during a read have reached the broker."""
    await broker.publish_many("orders", [{"type": "n", "content": i} for i in range(5)])
    sub = broker.subscribe("orders", batch=5, poll_interval=5)
    async with sub:
        deliveries = await take(sub, 5)
        await _reading(sub)
        acks = [asyncio.ensure_future(d.ack()) for d in deliveries]
        await asyncio.sleep(0)
    assert all(a.done() and a.exception() is None for a in acks)
    assert await _pending(broker, "orders") == 0


async def test_an_ack_after_close_is_still_sent(broker: mqctl.Broker) -> None:
    """A delivery acked after its subscription closed is acknowledged, not left to time out."""
    await broker.publish("orders", {"type": "n"})
    async with broker.subscribe("orders", poll_interval=5, ack_timeout=60) as sub:
        (delivery,) = await take(sub, 1)
    assert await _pending(broker, "orders") == 1  # handed back by aclose()
    await delivery.ack()
    assert await _pending(broker, "orders") == 0


async def test_an_ack_reaches_the_broker_without_another_read(connect_broker: BrokerFactory) -> None:
    """A slow handler acks and works on without reading again: another connection sees the ack
    within the linger (ACK_LINGER_S), not when the subscription next reads or closes."""
    async with (
        connect_broker() as broker,
        connect_broker() as observer,
        broker.subscribe("t", group="slow", batch=100, poll_interval=5) as sub,
    ):
        await broker.publish("t", {"type": "n"})
        (delivery,) = await take(sub, 1)
        await delivery.ack()
        await eventually(lambda: _pending_is(observer, "t", "slow", 0), timeout_s=2, what="the ack in the broker")


def _recorded(broker: mqctl.Broker, mocker: Any, *, batch: int) -> tuple[mqctl.Subscription, Any, Any]:
    """A subscription to "orders" whose acks and reads are recorded (spies), with the linger
    stretched so that a slow machine cannot flush gathered acks on their own early."""
    mocker.patch.object(subscription_module, "ACK_LINGER_S", 30.0)
    sub = broker.subscribe("orders", batch=batch, poll_interval=5)
    return sub, mocker.spy(sub._reader, "ack"), mocker.spy(sub._reader, "read")


async def test_acks_of_a_fast_loop_ride_with_its_reads(broker: mqctl.Broker, mocker: Any) -> None:
    """A loop that acks each delivery as it goes sends its acks with its next read, not one XACK each."""
    await broker.publish_many("orders", [{"type": "n", "content": i} for i in range(300)])
    sub, backend_ack, read = _recorded(broker, mocker, batch=100)
    async with sub:
        async for delivery in sub:
            await delivery.ack()
            if delivery.message.content == 299:
                break
        assert [len(call.kwargs["ack"]) for call in read.call_args_list] == [0, 100, 100]
    assert backend_ack.call_count == 1  # the last 100, at close
    assert await _pending(broker, "orders") == 0


async def test_ack_many_between_reads_rides_with_the_next_read(broker: mqctl.Broker, mocker: Any) -> None:
    """ack_many between two reads (a loop that acks what it took) sends nothing on its own:
    the acks go with the next read, and only the unacked one is redelivered later."""
    await broker.publish_many("orders", [{"type": "n", "content": i} for i in range(10)])
    sub, backend_ack, read = _recorded(broker, mocker, batch=5)
    async with sub:
        first = await take(sub, 5)
        await sub.ack_many(first[:4])
        await take(sub, 1)  # the next read carries the four acks
        assert [len(call.kwargs["ack"]) for call in read.call_args_list] == [0, 4]
        assert backend_ack.call_count == 0
        assert await _pending(broker, "orders") == 6  # first[4] and the five of the second read


async def test_ack_many_refuses_deliveries_of_another_subscription(broker: mqctl.Broker) -> None:
    """Deliveries of another subscription are refused before any is settled."""
    await broker.publish("a", {"type": "n"})
    await broker.publish("b", {"type": "n"})
    async with broker.subscribe("a", poll_interval=5) as sub_a, broker.subscribe("b", poll_interval=5) as sub_b:
        (mine,) = await take(sub_a, 1)
        (theirs,) = await take(sub_b, 1)
        with pytest.raises(ValueError, match=theirs.id):
            sub_a.ack_many([mine, theirs])
        await mine.ack()  # not settled by the refused call: its own ack still goes out
        await eventually(lambda: _pending_is(broker, "a", "default", 0), what="the ack of 'a'")
