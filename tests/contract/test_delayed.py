"""Delayed publish on every backend: held until due, then delivered to every group, counted while it waits."""

from __future__ import annotations

import asyncio
import time

import pytest

import mqctl
from tests.conftest import BrokerFactory
from tests.contract.consuming import eventually, take

DELAY_S = 0.6


async def test_a_delayed_message_waits_for_its_delay_then_reaches_every_group(broker: mqctl.Broker) -> None:
    """A message published with delay_s is not delivered before it is due; then each group gets it,
    with its headers as published; meanwhile ``stats.scheduled`` counts it."""
    async with (
        broker.subscribe("orders", group="billing", poll_interval=0.1) as billing,
        broker.subscribe("orders", group="shipping", poll_interval=0.1) as shipping,
    ):
        published = time.monotonic()
        await broker.publish("orders", {"type": "later", "content": 1, "headers": {"h": "v"}}, delay_s=DELAY_S)
        await broker.publish("orders", {"type": "now", "content": 2})
        assert (await broker.stats("orders")).scheduled == 1
        for sub in (billing, shipping):
            [now] = await take(sub, 1)
            assert now.message.type == "now"
            await now.ack()
        for sub in (billing, shipping):
            [later] = await take(sub, 1)
            assert time.monotonic() - published >= DELAY_S * 0.95, "delivered before it was due"
            assert (later.message.type, later.message.content, dict(later.message.headers)) == ("later", 1, {"h": "v"})
            await later.ack()

        async def none_scheduled() -> bool:
            return (await broker.stats("orders")).scheduled == 0

        await eventually(none_scheduled, what="the schedule empty once the message is due")


async def test_nothing_arrives_early(broker: mqctl.Broker) -> None:
    """Within the delay, a reader waiting for the message gets nothing."""
    async with broker.subscribe("orders", group="billing", poll_interval=0.1) as sub:
        await broker.publish("orders", {"type": "later", "content": 1}, delay_s=2.0)
        with pytest.raises(AssertionError, match="Got 0 of 1"):
            await take(sub, 1, timeout_s=1.0)
        [later] = await take(sub, 1)
        await later.ack()


async def test_publish_many_delays_them_all(broker: mqctl.Broker) -> None:
    """``publish_many(..., delay_s=...)``: all held, then all delivered. Not in order on every
    backend: each waits as a redelivery does, and JetStream redelivers ties in any order."""
    async with broker.subscribe("orders", group="billing", poll_interval=0.1) as sub:
        published = time.monotonic()
        await broker.publish_many("orders", [{"type": "n", "content": i} for i in range(5)], delay_s=DELAY_S)
        got = await take(sub, 5)
        assert time.monotonic() - published >= DELAY_S * 0.95
        assert sorted(d.message.content for d in got) == [0, 1, 2, 3, 4]
        for d in got:
            await d.ack()


async def test_the_schedule_is_not_listed_as_a_topic(broker: mqctl.Broker) -> None:
    """``topics()`` lists the topic, not the internal schedule its delayed messages wait on."""
    await broker.publish("orders", {"type": "later", "content": 1}, delay_s=60)
    assert await broker.topics() == ["orders"]


@pytest.mark.parametrize("delay", [-1, float("nan"), float("inf"), True, "5", 10**9])
async def test_a_bad_delay_is_refused(broker: mqctl.Broker, delay: object) -> None:
    """delay_s is a number of seconds from 0 to a year; anything else is a ConfigError, nothing stored."""
    with pytest.raises(mqctl.ConfigError, match="delay_s must be"):
        await broker.publish("orders", {"type": "x", "content": 1}, delay_s=delay)  # type: ignore[arg-type]
    assert (await broker.stats("orders")).scheduled == 0


async def test_a_zero_delay_publishes_at_once(broker: mqctl.Broker) -> None:
    """delay_s=0 is an ordinary publish."""
    async with broker.subscribe("orders", group="billing", poll_interval=0.1) as sub:
        await broker.publish("orders", {"type": "x", "content": 1}, delay_s=0)
        assert (await broker.stats("orders")).scheduled == 0
        [d] = await take(sub, 1, timeout_s=2.0)
        await d.ack()


async def test_a_promoter_is_stopped_with_its_broker(connect_broker: BrokerFactory) -> None:
    """Closing the broker ends its promoters: no task of them is left running."""
    async with connect_broker() as broker, broker.subscribe("orders", group="billing", poll_interval=0.1):
        await broker.publish("orders", {"type": "x", "content": 1}, delay_s=60)
        await asyncio.sleep(0.2)
        promoters = list(broker._promoters._tasks.values())
        assert promoters
    assert all(task.done() for task in promoters)
