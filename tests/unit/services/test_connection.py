"""Service B's connection writer: bursts, when it wakes the pump, auto-acks and its frames."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from mqctl.core.message import Message
from mqctl.core.subscription import Delivery
from mqctl.services.delivery.connection import Connection
from mqctl.services.delivery.frames import message_frame
from mqctl.services.delivery.metrics import ConnectionCounters, DeliveryMetrics
from mqctl.services.delivery.settling import ack_all


@dataclass
class FakeSocket:
    """Records what the writer sends; ``gate`` holds every send while cleared; ``fail_at`` breaks one."""

    sent: list[str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    fail_at: int | None = None

    def __post_init__(self) -> None:
        self.gate.set()

    async def send_text(self, text: str) -> None:
        await self.gate.wait()
        if self.fail_at is not None and len(self.sent) == self.fail_at:
            raise ConnectionResetError("the client is gone")
        self.sent.append(text)

    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never sends anything
        raise AssertionError("unreachable")


class FakeSubscription:
    """Takes acks as ``Subscription.ack_many`` does: one call per burst, one awaitable for it.

    ``answer`` makes that awaitable: by default a coroutine (acks sent at once and taken);
    ``calls`` records, per call, how many frames the socket had sent and the ids acked."""

    def __init__(self, socket: FakeSocket | None = None) -> None:
        self.socket = socket
        self.calls: list[tuple[int, list[str]]] = []
        self.answer: Callable[[], Awaitable[None]] = nothing

    def ack_many(self, batch: list[FakeDelivery]) -> Awaitable[None]:
        self.calls.append((len(self.socket.sent) if self.socket else 0, [d.id for d in batch]))
        for delivery in batch:
            delivery.acked += 1
        return self.answer()


@dataclass(eq=False)
class FakeDelivery:
    id: str
    _subscription: FakeSubscription
    attempt: int = 1
    acked: int = 0
    topic: str = "t"  # named in the log line of a failed ack
    group: str = "g"


def deliveries(n: int, subscription: FakeSubscription | None = None) -> list[Delivery]:
    subscription = subscription or FakeSubscription()
    return [cast(Delivery, FakeDelivery(f"1-{i}", subscription)) for i in range(n)]


def acked(batch: list[Delivery]) -> list[int]:
    return [cast(FakeDelivery, d).acked for d in batch]


def connection(
    socket: FakeSocket, *, capacity: int = 10, auto_ack: bool = True, counters: ConnectionCounters | None = None
) -> Connection:
    return Connection(
        socket,  # type: ignore[arg-type]
        topic="t",
        mode="group",
        group="g",
        filter=None,
        auto_ack=auto_ack,
        capacity=capacity,
        counters=counters,
    )


async def nothing() -> None:
    pass


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.001)


async def test_writer_sends_what_waits_as_one_burst_and_asks_for_its_auto_acks_together() -> None:
    """Frames queued meanwhile go out in one burst; their auto-acks are asked for in one call, after the sends."""
    socket = FakeSocket()
    conn = connection(socket)
    subscription = FakeSubscription(socket)
    batch = deliveries(5, subscription)
    for delivery in batch:
        assert conn.push(f"frame {delivery.id}", delivery)
    running = asyncio.create_task(conn.run(nothing))
    await until(lambda: bool(subscription.calls))
    assert socket.sent == [f"frame {d.id}" for d in batch]
    assert subscription.calls == [(5, [d.id for d in batch])]  # once all five were written
    assert conn.unacked == {}
    conn.close(1000, "done")
    await running


async def test_writer_wakes_the_pump_only_when_a_full_outbox_gets_room() -> None:
    """The pump is woken once when a full outbox is drained, not once per frame."""
    socket = FakeSocket()
    socket.gate.clear()
    conn = connection(socket, capacity=3, auto_ack=False)
    wakes: list[int] = []
    conn.wake = lambda: wakes.append(conn.queued)
    for i in range(3):
        assert conn.push(f"a{i}")
    assert not conn.has_room()
    running = asyncio.create_task(conn.run(nothing))
    await until(lambda: conn.queued == 0)
    assert wakes == [0]  # the full outbox, taken as one burst
    assert conn.push("b0") and conn.push("b1")  # not full: taking these wakes nobody
    socket.gate.set()
    await until(lambda: len(socket.sent) == 5)
    assert wakes == [0]
    conn.close(1000, "done")
    await running


async def test_acks_of_frames_written_before_the_socket_failed_are_still_sent() -> None:
    """A socket that fails mid-burst: what was written is acked, the rest stays unacknowledged (redelivered)."""
    socket = FakeSocket(fail_at=2)
    conn = connection(socket)
    batch = deliveries(4)
    for delivery in batch:
        conn.push(f"frame {delivery.id}", delivery)
    await conn.run(nothing)
    assert conn.client_gone
    await until(lambda: sum(acked(batch)) >= 2)
    assert acked(batch) == [1, 1, 0, 0]
    assert set(conn.unacked) == {batch[2].id, batch[3].id}


async def test_the_writer_acks_a_burst_itself_and_counts_it() -> None:
    """The writer sends the acks of a burst itself, all asked for before any is awaited, and counts them."""
    metrics = DeliveryMetrics()
    counters = metrics.for_connection("t", "group", "g")
    conn = connection(FakeSocket(), counters=counters)
    batch = deliveries(3)
    for delivery in batch:
        conn.push("x", delivery)
    running = asyncio.create_task(conn.run(nothing))
    await until(lambda: counters.acknowledged == 3)
    assert acked(batch) == [1, 1, 1]
    assert counters.delivered == 3
    conn.close(1000, "done")
    await running


async def test_ack_all_counts_what_is_taken_at_once_and_awaits_the_rest_as_one() -> None:
    """ack_all: acks taken to ride with the next read are counted at once; acks sent now come
    back as one awaitable, counted when it completes."""
    metrics = DeliveryMetrics()
    counters = metrics.for_connection("t", "group", "g")
    queued = FakeSubscription()
    queued.answer = _Complete
    assert ack_all(deliveries(2, queued), counters) is None
    assert counters.acknowledged == 2
    rest = ack_all(deliveries(3), counters)
    assert rest is not None and counters.acknowledged == 2
    assert await rest == []
    assert counters.acknowledged == 5


async def test_ack_all_returns_every_delivery_of_a_burst_the_broker_refused() -> None:
    """A refused XACK fails the whole burst it carried: all of it is reported, none counted."""
    metrics = DeliveryMetrics()
    counters = metrics.for_connection("t", "group", "g")
    subscription = FakeSubscription()

    async def refused() -> None:
        raise ConnectionError("the broker is gone")

    subscription.answer = refused
    batch = deliveries(3, subscription)
    rest = ack_all(batch, counters)
    assert rest is not None
    assert await rest == batch
    assert counters.acknowledged == 0


class _Complete:
    def __await__(self) -> Any:
        return iter(())


def test_message_frame_has_the_documented_fields_in_order() -> None:
    """A message frame: id, type, content, headers, attempt, topic, as compact JSON."""
    message = Message("job", {"n": 1, "é": "ü"}, {"h": "v"})
    text = message_frame("1-0", message, attempt=2, topic="orders")
    expected = '{"id":"1-0","type":"job","content":{"n":1,"é":"ü"},"headers":{"h":"v"},"attempt":2,"topic":"orders"}'
    assert text == expected


@pytest.mark.parametrize("content", [2**70, {"big": -(2**80)}])
def test_message_frame_falls_back_to_the_standard_library_for_what_orjson_refuses(content: Any) -> None:
    """Integers beyond 64 bits, which orjson does not encode, still make a frame."""
    text = message_frame("1-0", Message("job", content), attempt=1, topic="t")
    assert json.loads(text)["content"] == content


async def test_frames_written_before_the_connection_ends_mid_burst_are_acked_not_handed_back() -> None:
    """Cancelled while a send waits: what went to the socket is acked, only the rest goes back to the group."""
    socket = FakeSocket()
    conn = connection(socket)
    batch = deliveries(4)
    for delivery in batch:
        conn.push(f"frame {delivery.id}", delivery)
    sends = socket.send_text

    async def stall_third(text: str) -> None:
        if len(socket.sent) == 2:
            socket.gate.clear()  # the client stops reading
        await sends(text)

    async def handler() -> list[Delivery]:
        await conn.run(nothing)  # returns at once on close; the cancelled writer has not run again yet
        return conn.take_unacked()  # as the hub does next, with no await in between

    socket.send_text = stall_third  # type: ignore[method-assign]
    running = asyncio.create_task(handler())
    await until(lambda: len(socket.sent) == 2 and not socket.gate.is_set())
    conn.close(4001, "too slow")
    handed_back = await running
    await until(lambda: sum(acked(batch)) >= 2)
    assert acked(batch) == [1, 1, 0, 0]
    assert [d.id for d in handed_back] == [batch[2].id, batch[3].id]


class HeldAcks(FakeSubscription):
    """Acks the subscription must send: each call's future completes when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.futures: list[asyncio.Future[None]] = []
        self.answer = self._held

    def _held(self) -> asyncio.Future[None]:
        self.futures.append(asyncio.get_running_loop().create_future())
        return self.futures[-1]


def holding(conn: Connection, *ids: str) -> tuple[HeldAcks, list[FakeDelivery]]:
    subscription = HeldAcks()
    held = [FakeDelivery(i, subscription) for i in ids]
    conn.unacked.update({d.id: cast(Delivery, d) for d in held})
    return subscription, held


async def test_client_acks_are_all_asked_for_before_any_is_awaited_and_do_not_hold_the_reader() -> None:
    """Acks from one frame and the next are all queued at once, so they can share an XACK, while
    the reader goes on to the next frame; each is counted once its broker answer comes."""
    metrics = DeliveryMetrics()
    conn = connection(FakeSocket())
    conn._counters = metrics.for_connection("t", "group", "g")
    subscription, held = holding(conn, "1-0", "1-1", "1-2")

    async with asyncio.timeout(1):  # would hang if the reader awaited the held acks
        await conn._handle(json.dumps({"ack": ["1-0", "1-1"]}))
        await conn._handle(json.dumps({"ack": "1-2"}))
    assert [d.acked for d in held] == [1, 1, 1]
    assert [ids for _, ids in subscription.calls] == [["1-0", "1-1"], ["1-2"]]
    assert conn.unacked == {} and conn._counters.acknowledged == 0

    for future in subscription.futures:
        future.set_result(None)
    await until(lambda: conn._counters is not None and conn._counters.acknowledged == 3)
    assert conn.queued == 0  # no error frame


async def test_a_client_ack_the_broker_refuses_is_reported_as_ack_failed() -> None:
    """When the broker does not take an ack, the client gets an ack_failed frame naming the id."""
    conn = connection(FakeSocket())
    subscription, _ = holding(conn, "1-7")

    await conn._handle(json.dumps({"ack": "1-7"}))
    subscription.futures[0].set_exception(ConnectionError("the broker is gone"))

    await until(lambda: conn.queued == 1)
    frame = json.loads(conn._outbox[0].text)
    assert frame["error"] == "ack_failed" and "'1-7'" in frame["detail"]
