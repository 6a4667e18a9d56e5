"""The broker contract, waiting and closing: a blocked read wakes on a message and ends on close."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import mqctl
from tests.conftest import BrokerFactory
from tests.contract.consuming import WAIT_S, take, take_broadcast

MQCTL_DIR = Path(mqctl.__file__).parent


def mqctl_tasks() -> set[asyncio.Task[object]]:
    """Unfinished tasks running mqctl's own coroutines."""
    tasks = set()
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if not task.done() and code is not None and Path(code.co_filename).is_relative_to(MQCTL_DIR):
            tasks.add(task)
    return tasks


async def _blocked(reader: mqctl.Subscription | mqctl.Broadcast) -> tuple[asyncio.Task[list[object]], float]:
    """Start iterating ``reader`` in a task and return it once it has had time to block in a read."""

    async def drain() -> list[object]:
        return [item async for item in reader]

    task = asyncio.create_task(drain())
    await asyncio.sleep(0.2)  # let the read reach the broker; nothing to wait for is observable
    assert not task.done(), "the reader returned though there was nothing to read"
    return task, time.monotonic()


@pytest.mark.parametrize("kind", ["subscription", "broadcast"])
async def test_aclose_cuts_a_blocked_read_short(broker: mqctl.Broker, kind: str) -> None:
    """aclose() of a reader blocked in a 2 s poll returns at once, ends its iteration and leaves no mqctl tasks."""
    before = mqctl_tasks()
    if kind == "subscription":
        reader: mqctl.Subscription | mqctl.Broadcast = broker.subscribe("orders", poll_interval=2.0)
    else:
        reader = broker.broadcast("orders", poll_interval=2.0)
    await reader.__aenter__()
    task, started = await _blocked(reader)

    await reader.aclose()
    closed_in = time.monotonic() - started
    async with asyncio.timeout(WAIT_S):
        items = await task

    assert closed_in < 1.0, f"aclose() took {closed_in:.3f} s with a 2 s poll interval"
    assert items == []
    leftover = mqctl_tasks() - before
    assert not leftover, f"tasks left behind: {leftover!r}"


async def test_closing_the_broker_ends_its_subscriptions(connect_broker: BrokerFactory) -> None:
    """Leaving mqctl.connect() closes open subscriptions: a blocked consumer's loop ends promptly."""
    async with connect_broker() as broker:
        sub = broker.subscribe("orders", poll_interval=2.0)
        await sub.__aenter__()
        task, started = await _blocked(sub)
    async with asyncio.timeout(WAIT_S):
        items = await task
    assert items == []
    assert time.monotonic() - started < 1.0


async def test_closed_subscription_cannot_be_reused(broker: mqctl.Broker) -> None:
    """Iterating or re-entering a closed subscription raises SubscriptionClosed; a second aclose() is a no-op."""
    sub = broker.subscribe("orders", poll_interval=0.1)
    async with sub:
        pass
    await sub.aclose()

    with pytest.raises(mqctl.SubscriptionClosed):
        await anext(sub)
    with pytest.raises(mqctl.SubscriptionClosed):
        await sub.__aenter__()


async def test_close_from_another_task_ends_iteration_between_deliveries(broker: mqctl.Broker) -> None:
    """A close that lands while the consumer handles a delivery ends its loop as cleanly as one during a read."""
    await broker.publish_many("orders", [{"type": "a"}, {"type": "b"}])
    handling = asyncio.Event()
    closed = asyncio.Event()
    sub = broker.subscribe("orders", poll_interval=0.1, batch=1)

    async def consume() -> list[str]:
        seen = []
        async with sub:
            async for delivery in sub:
                seen.append(delivery.id)
                handling.set()
                await closed.wait()  # the service shuts down while this delivery is in hand
                await delivery.ack()
        return seen

    task = asyncio.create_task(consume())
    async with asyncio.timeout(WAIT_S):
        await handling.wait()
    await sub.aclose()
    closed.set()
    async with asyncio.timeout(WAIT_S):
        seen = await task
    assert len(seen) == 1


@pytest.mark.parametrize("kind", ["subscription", "broadcast"])
async def test_blocked_reader_wakes_as_soon_as_a_message_arrives(broker: mqctl.Broker, kind: str) -> None:
    """A reader blocked in a 2 s poll receives a message published 0.1 s later well before the poll ends."""
    if kind == "subscription":
        reader: mqctl.Subscription | mqctl.Broadcast = broker.subscribe("orders", poll_interval=2.0)
    else:
        reader = broker.broadcast("orders", poll_interval=2.0)
    async with reader:
        receive = asyncio.create_task(
            take(reader, 1) if isinstance(reader, mqctl.Subscription) else take_broadcast(reader, 1)
        )
        await asyncio.sleep(0.1)
        entry_id = await broker.publish("orders", {"type": "a"})
        published = time.monotonic()
        (got,) = await receive
        waited = time.monotonic() - published

    got_id = got.id if isinstance(got, mqctl.Delivery) else got[0]
    assert got_id == entry_id
    assert waited < 1.0, f"received {waited:.3f} s after publishing, with a 2 s poll interval"
