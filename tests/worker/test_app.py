"""Handlers at work on memory, a real Redis and a real NATS: each rule of ``mqctl.App`` as a user meets it."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pydantic import BaseModel

import mqctl
from tests.conftest import BrokerFactory
from tests.contract.consuming import eventually

pytestmark = pytest.mark.parametrize(
    "broker_url",
    ["memory", pytest.param("redis", marks=pytest.mark.redis), pytest.param("nats", marks=pytest.mark.nats)],
    indirect=True,
)

FAST = mqctl.RetryPolicy(base_s=0.05, factor=2.0, cap_s=1.0, jitter=0.0)


class Order(BaseModel):
    id: int
    amount: float


@asynccontextmanager
async def running(app: mqctl.App, **options: Any) -> AsyncIterator[asyncio.Task[None]]:
    """``app.run()`` in a task, its groups joined; stopped (drained) on exit."""
    task = asyncio.ensure_future(app.run(poll_interval_s=0.05, **options))
    started = asyncio.ensure_future(app.started())
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    try:
        yield task
    finally:
        app.stop()
        await asyncio.wait_for(task, 10)


async def settled(broker: mqctl.Broker, topic: str, group: str) -> bool:
    stats = (await broker.stats(topic)).group(group)
    return stats is not None and stats.backlog == 0


async def publish(broker: mqctl.Broker, topic: str, *contents: Any, type: str = "order") -> list[str]:
    return [await broker.publish(topic, {"type": type, "content": c}) for c in contents]


async def test_a_return_acknowledges_in_the_broker(connect_broker: BrokerFactory) -> None:
    """Each message whose handler returned is acknowledged: the group has nothing waiting or pending."""
    seen: list[tuple[int, float]] = []
    async with connect_broker(library_defaults=True) as broker:
        app = mqctl.App(broker=broker)

        @app.handler("orders", group="billing", concurrency=4)
        async def bill(order: Order) -> None:
            seen.append((order.id, order.amount))

        async with running(app):
            await publish(broker, "orders", *({"id": i, "amount": i / 2} for i in range(20)))
            await eventually(lambda: settled(broker, "orders", "billing"), what="all 20 acknowledged")
        assert sorted(seen) == [(i, i / 2) for i in range(20)]
        assert app.runners[0].counts.processed == 20


async def test_parameters_are_filled_by_annotation(connect_broker: BrokerFactory) -> None:
    """A handler gets the delivery, the message and the validated content, by annotation, in any order."""
    got: list[Any] = []
    async with connect_broker(library_defaults=True) as broker:
        app = mqctl.App(broker=broker)

        @app.handler("orders")
        async def look(delivery: mqctl.Delivery, *, message: mqctl.Message, amounts: list[float]) -> None:
            got.append((delivery.attempt, delivery.headers, message.type, amounts))

        async with running(app):
            await broker.publish("orders", mqctl.Message("batch", ["1.5", 2], {"tenant": "a"}))
            await eventually(lambda: settled(broker, "orders", "look"))
    assert got == [(1, {"tenant": "a"}, "batch", [1.5, 2.0])]


async def test_an_exception_retries_with_backoff_then_succeeds(connect_broker: BrokerFactory) -> None:
    """A handler that raises gets the message again, attempt + 1, no sooner than the backoff."""
    calls: list[tuple[int, float]] = []
    async with connect_broker(library_defaults=True) as broker:
        app = mqctl.App(broker=broker)

        @app.handler("orders", max_attempts=5, retry=FAST, ack_timeout_s=5)
        async def flaky(delivery: mqctl.Delivery) -> None:
            calls.append((delivery.attempt, time.monotonic()))
            if delivery.attempt < 3:
                raise ConnectionError("the payment service is down")

        async with running(app):
            await publish(broker, "orders", {"id": 1})
            await eventually(lambda: settled(broker, "orders", "flaky"), what="acknowledged on attempt 3")
        assert [a for a, _ in calls] == [1, 2, 3]
        gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(calls)]
        assert gaps[0] >= 0.05 * 0.9 and gaps[1] >= 0.1 * 0.9  # the backoff held (a lower bound only)
        counts = app.runners[0].counts
        assert (counts.processed, counts.failed, counts.retried, counts.dead_lettered) == (1, 2, 2, 0)
        assert await broker.dead_letters("orders") == []


async def test_after_max_attempts_the_exception_is_the_dead_letters_reason(connect_broker: BrokerFactory) -> None:
    """A handler that always raises is called max_attempts times; the message then waits in the
    dead letters with the exception as its reason, and nothing is left pending."""
    attempts: list[int] = []
    async with connect_broker(library_defaults=True) as broker:
        app = mqctl.App(broker=broker)

        @app.handler("orders", max_attempts=3, retry=FAST, ack_timeout_s=5)
        async def doomed(delivery: mqctl.Delivery) -> None:
            attempts.append(delivery.attempt)
            raise KeyError("customer 42")

        async with running(app):
            await publish(broker, "orders", {"id": 1})
            await eventually(lambda: _dead(broker, "orders", 1), what="one dead letter")
            await eventually(lambda: settled(broker, "orders", "doomed"))
        (letter,) = await broker.dead_letters("orders")
    assert attempts == [1, 2, 3]
    assert letter.group == "doomed" and letter.attempts == 3
    assert letter.reason == "KeyError: 'customer 42' (attempt 3 of 3)"


async def test_retry_chooses_its_delay(connect_broker: BrokerFactory) -> None:
    """``raise mqctl.Retry(delay_s=...)`` brings the message back no sooner than that delay."""
    calls: list[float] = []
    async with connect_broker(library_defaults=True) as broker:
        app = mqctl.App(broker=broker)

        @app.handler("orders", ack_timeout_s=5, retry=FAST)
        async def later(delivery: mqctl.Delivery) -> None:
            calls.append(time.monotonic())
            if delivery.attempt == 1:
                raise mqctl.Retry(delay_s=0.6)

        async with running(app):
            await publish(broker, "orders", {"id": 1})
            await eventually(lambda: settled(broker, "orders", "later"))
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.6 * 0.95


async def test_reject_dead_letters_at_once(connect_broker: BrokerFactory) -> None:
    """``raise mqctl.Reject(reason)`` sends the message to the dead letters on its first attempt."""
    calls = 0
    async with connect_broker(library_defaults=True) as broker:
        app = mqctl.App(broker=broker)

        @app.handler("orders", max_attempts=5)
        async def picky(order: Order) -> None:
            nonlocal calls
            calls += 1
            raise mqctl.Reject(f"order {order.id} is for a closed account")

        async with running(app):
            await publish(broker, "orders", {"id": 7, "amount": 1})
            await eventually(lambda: _dead(broker, "orders", 1))
        (letter,) = await broker.dead_letters("orders")
    assert calls == 1 and letter.attempts == 1 and letter.reason == "order 7 is for a closed account"
    assert app.runners[0].counts.dead_lettered == 1


async def test_content_that_fails_validation_is_dead_lettered_without_a_call(connect_broker: BrokerFactory) -> None:
    """Content that does not fit the annotation never reaches the handler; pydantic's reason is kept."""
    called: list[Order] = []
    async with connect_broker(library_defaults=True) as broker:
        app = mqctl.App(broker=broker)

        @app.handler("orders", max_attempts=5)
        async def bill(order: Order) -> None:
            called.append(order)

        async with running(app):
            await publish(broker, "orders", {"id": "seven"}, {"id": 8, "amount": 2})
            await eventually(lambda: _dead(broker, "orders", 1))
            await eventually(lambda: settled(broker, "orders", "bill"))
        (letter,) = await broker.dead_letters("orders")
    assert called == [Order(id=8, amount=2)]
    assert letter.attempts == 1
    assert letter.reason.startswith("invalid content: id: Input should be a valid integer")
    assert "amount: Field required" in letter.reason


async def test_a_handler_past_its_timeout_is_cancelled_and_retried(connect_broker: BrokerFactory) -> None:
    """A call that runs past ``timeout_s`` is cancelled and the message nacked; the reason says so."""
    cancelled = 0
    async with connect_broker(library_defaults=True) as broker:
        app = mqctl.App(broker=broker)

        @app.handler("orders", timeout_s=0.2, max_attempts=2, retry=FAST, ack_timeout_s=5)
        async def stuck() -> None:
            nonlocal cancelled
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled += 1
                raise

        async with running(app):
            await publish(broker, "orders", {"id": 1})
            await eventually(lambda: _dead(broker, "orders", 1))
        (letter,) = await broker.dead_letters("orders")
    assert cancelled == 2
    assert letter.reason == "timed out after 0.2 s (attempt 2 of 2)"


async def test_concurrency_bounds_the_calls_running_at_once(connect_broker: BrokerFactory) -> None:
    """With concurrency 3, three calls run together, never four."""
    running_now = peak = 0
    async with connect_broker(library_defaults=True) as broker:
        app = mqctl.App(broker=broker)

        @app.handler("orders", concurrency=3)
        async def slow() -> None:
            nonlocal running_now, peak
            running_now += 1
            peak = max(peak, running_now)
            await asyncio.sleep(0.05)
            running_now -= 1

        async with running(app):
            await publish(broker, "orders", *range(12))
            await eventually(lambda: settled(broker, "orders", "slow"))
    assert peak == 3


async def test_a_slow_handler_does_not_hold_the_acks_of_finished_ones(connect_broker: BrokerFactory) -> None:
    """While one call hangs, the messages the other workers finished are acknowledged in the broker."""
    release = asyncio.Event()
    async with connect_broker(library_defaults=True) as broker:
        app = mqctl.App(broker=broker)

        @app.handler("orders", concurrency=2)
        async def mixed(order: Order) -> None:
            if order.id == 0:
                await release.wait()

        async with running(app):
            await publish(broker, "orders", *({"id": i, "amount": 1} for i in range(6)))

            async def only_the_slow_one_pending() -> bool:
                group = (await broker.stats("orders")).group("mixed")
                return group is not None and group.backlog == 1

            await eventually(only_the_slow_one_pending, what="5 of 6 acknowledged while one call hangs")
            release.set()
            await eventually(lambda: settled(broker, "orders", "mixed"))


async def test_a_filter_passes_only_matching_messages(connect_broker: BrokerFactory) -> None:
    """``filter=mqctl.by_type(...)`` as in subscribe: other messages are settled for this group, unhandled."""
    seen: list[str] = []
    async with connect_broker(library_defaults=True) as broker:
        app = mqctl.App(broker=broker)

        @app.handler("events", filter=mqctl.by_type("created"))
        async def on_created(message: mqctl.Message) -> None:
            seen.append(message.content)

        async with running(app):
            for kind, content in [("created", "a"), ("deleted", "b"), ("created", "c")]:
                await publish(broker, "events", content, type=kind)
            await eventually(lambda: settled(broker, "events", "on_created"))
    assert seen == ["a", "c"]


async def test_stopping_lets_running_calls_finish_and_hands_back_the_rest(connect_broker: BrokerFactory) -> None:
    """``stop()``: running calls finish and are acknowledged; fetched messages not started go back at
    once, so another worker of the group takes them long before the ack timeout."""
    started: list[int] = []
    finished: list[int] = []
    gate = asyncio.Event()
    async with connect_broker(library_defaults=True) as broker:
        first = mqctl.App(broker=broker)

        @first.handler("orders", group="billing", concurrency=2, ack_timeout_s=60)
        async def bill(order: Order) -> None:
            started.append(order.id)
            await gate.wait()
            finished.append(order.id)

        task = asyncio.ensure_future(first.run(poll_interval_s=0.05, graceful_timeout_s=10))
        await first.started()
        await publish(broker, "orders", *({"id": i, "amount": 1} for i in range(6)))
        await eventually(lambda: _true(len(started) == 2), what="two calls running")
        first.stop()
        await asyncio.sleep(0.1)  # the stop is under way while the two calls still run
        assert not task.done()
        gate.set()
        await asyncio.wait_for(task, 10)
        assert sorted(finished) == sorted(started)

        second_seen: list[int] = []
        second = mqctl.App(broker=broker)

        @second.handler("orders", group="billing", concurrency=4, ack_timeout_s=60)
        async def bill_again(order: Order) -> None:
            second_seen.append(order.id)

        async with running(second):
            await eventually(lambda: settled(broker, "orders", "billing"), what="the rest handled, not after 60 s")
    assert sorted(started + second_seen) == list(range(6))


async def test_a_forced_stop_cancels_running_calls_and_their_messages_come_back(connect_broker: BrokerFactory) -> None:
    """``stop(force=True)`` cancels calls that run on; nothing is acknowledged for them, and another
    worker gets them again at once (attempt 2)."""
    async with connect_broker(library_defaults=True) as broker:
        first = mqctl.App(broker=broker)
        entered = asyncio.Event()

        @first.handler("orders", group="billing", concurrency=2, ack_timeout_s=60)
        async def hang() -> None:
            entered.set()
            await asyncio.sleep(3600)

        task = asyncio.ensure_future(first.run(poll_interval_s=0.05, graceful_timeout_s=3600))
        await first.started()
        await publish(broker, "orders", 1, 2)
        await asyncio.wait_for(entered.wait(), 5)
        first.stop()
        first.stop(force=True)
        await asyncio.wait_for(task, 10)

        attempts: list[int] = []
        second = mqctl.App(broker=broker)

        @second.handler("orders", group="billing", ack_timeout_s=60)
        async def again(delivery: mqctl.Delivery) -> None:
            attempts.append(delivery.attempt)

        async with running(second):
            await eventually(lambda: settled(broker, "orders", "billing"), what="both back, not after 60 s")
    assert len(attempts) == 2 and max(attempts) >= 2


async def _dead(broker: mqctl.Broker, topic: str, count: int) -> bool:
    return len(await broker.dead_letters(topic)) == count


async def _true(value: bool) -> bool:
    return value
