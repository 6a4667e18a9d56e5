"""Service B's batched frames (``/ws?frames=batch``): each frame a JSON array of the messages that
were ready, in order; acks, a slow client and resume as with a frame per message; memory and Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.websockets import WebSocketDisconnect

from tests.unit.services.test_delivery import (
    AsgiSocket,
    Service,
    TestClient,
    WebSocketTestSession,
    create_app,
    make_settings,
    nothing_within,
    receive,
    subscribed,
)


def messages_of(ws: WebSocketTestSession, n: int, *, ack: bool = False) -> tuple[list[dict[str, Any]], list[int]]:
    """The next ``n`` messages and the sizes of the frames that brought them (acked frame by frame)."""
    got: list[dict[str, Any]] = []
    sizes: list[int] = []
    while len(got) < n:
        frame: Any = receive(ws)
        assert isinstance(frame, list), f"not a batched frame: {frame!r}"
        assert frame, "an empty batched frame"
        got += frame
        sizes.append(len(frame))
        if ack:
            ws.send_json({"ack": [m["id"] for m in frame]})
    assert len(got) == n, f"{len(got) - n} more messages than asked for"
    return got, sizes


def publish_many(service: Service, n: int, type: str = "job") -> list[str]:
    assert service.client.portal is not None
    batch = [{"type": type, "content": i} for i in range(n)]
    ids: list[str] = service.client.portal.call(service.broker.publish_many, service.settings.topic, batch)
    return ids


def check_order_and_acks(service: Service) -> None:
    with service.connect("frames=batch&batch_max=100") as ws:
        assert subscribed(ws)["event"] == "subscribed"  # events stay single objects
        ids = publish_many(service, 250)
        got, sizes = messages_of(ws, 250, ack=True)
        assert [m["id"] for m in got] == ids
        assert [m["content"] for m in got] == list(range(250))
        assert all(m.keys() >= {"id", "type", "content", "headers", "attempt", "topic"} for m in got)
        assert max(sizes) <= 100
        assert len(sizes) < 250, "every message came alone: nothing was batched"
        service.wait_until(lambda: service.stats().group("default").backlog == 0)  # type: ignore[union-attr]
        assert nothing_within(ws)


def test_batched_frames_keep_the_order_and_take_acks_of_a_whole_frame(service: Service) -> None:
    """250 messages come in arrays of at most batch_max, in publish order; acking each array's ids
    in one frame acknowledges them all in the broker."""
    check_order_and_acks(service)


@pytest.mark.redis
def test_batched_frames_on_redis(redis_service: Service) -> None:
    """The same on a real Redis."""
    check_order_and_acks(redis_service)


def test_batch_max_bounds_a_frame_and_one_message_is_an_array_of_one(service: Service) -> None:
    """batch_max=7: no frame holds more; a lone message comes as an array of one."""
    with service.connect("frames=batch&batch_max=7") as ws:
        subscribed(ws)
        publish_many(service, 30)
        _, sizes = messages_of(ws, 30)
        assert max(sizes) <= 7 and sum(sizes) == 30
        message_id = service.publish("alone", 1)
        frame: Any = receive(ws)
        assert isinstance(frame, list) and [m["id"] for m in frame] == [message_id]


def test_unacked_messages_of_a_batched_frame_go_to_the_group_again_on_disconnect(service: Service) -> None:
    """A batched client that leaves without acking: the other connection of the group gets them all."""
    with service.connect("group=g&frames=batch") as first:
        subscribed(first)
        ids = publish_many(service, 20)
        got, _ = messages_of(first, 20)
        assert [m["id"] for m in got] == ids
    with service.connect("group=g&frames=batch") as second:
        subscribed(second)
        again, _ = messages_of(second, 20, ack=True)
    assert sorted(m["id"] for m in again) == sorted(ids)
    assert {m["attempt"] for m in again} == {2}


def test_broadcast_resume_in_batched_frames_has_no_gaps_nor_repeats() -> None:
    """mode=broadcast&last_id=...&frames=batch: the retained rest, then live messages, each once, in order."""
    settings = make_settings(ws_send_buffer=50)
    app = create_app(settings)
    with TestClient(app) as client:
        service = Service(client, app, settings)
        ids = publish_many(service, 600)
        with service.connect(f"mode=broadcast&last_id={ids[99]}&frames=batch") as ws:
            subscribed(ws)
            got, _ = messages_of(ws, 500)
            live = publish_many(service, 30)
            got_live, _ = messages_of(ws, 30)
            assert [m["id"] for m in got + got_live] == ids[100:] + live
            assert nothing_within(ws)


async def test_a_slow_batched_client_is_closed_4001_and_its_messages_go_to_another(fast_stall: None) -> None:
    """A batched group client that stops reading is closed with 4001; another gets everything."""
    settings = make_settings(ws_send_buffer=2)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        broker = app.state.delivery.broker
        async with AsgiSocket(app, "group=g&frames=batch") as slow, AsgiSocket(app, "group=g&frames=batch") as fast:
            assert (await slow.frame())["event"] == "subscribed"
            assert (await fast.frame())["event"] == "subscribed"
            slow.reading.clear()
            ids = [await broker.publish("messages", {"type": "job", "content": i}) for i in range(10)]
            got: dict[str, int] = {}
            async with asyncio.timeout(10):
                while set(got) != set(ids):
                    frame: Any = await fast.frame()
                    got.update((m["id"], m["attempt"]) for m in frame)
                    await fast.send({"ack": [m["id"] for m in frame]})
            assert 2 in got.values()  # what the slow one held came back
            closed = await slow.message()
            assert (closed["type"], closed["code"]) == ("websocket.close", 4001)
        assert (await broker.stats("messages")).group("g").backlog == 0


@pytest.mark.parametrize(
    "query, name",
    [
        ("frames=many", "frames"),
        ("frames=batch&batch_max=0", "batch_max"),
        ("frames=batch&batch_max=1001", "batch_max"),
        ("frames=batch&batch_max=ten", "batch_max"),
        ("batch_max=10", "batch_max"),
    ],
)
def test_bad_frames_or_batch_max_is_refused_naming_it(service: Service, query: str, name: str) -> None:
    """A bad frames or batch_max is an invalid_parameter error frame, then a 1008 close."""
    with service.connect(query) as ws:
        error = receive(ws)
        assert error["error"] == "invalid_parameter" and repr(name)[1:-1] in error["detail"], error
        with pytest.raises(WebSocketDisconnect) as closed:
            receive(ws)
        assert closed.value.code == 1008
