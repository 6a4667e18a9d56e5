"""Service B: WebSocket delivery in group and broadcast mode, on the memory backend (and Redis).

Most tests drive the app with Starlette's ``TestClient``, which runs it in a thread of its
own with its own event loop: everything that touches the app's broker goes through
``client.portal``. The tests of slow clients, shutdown and an unreachable broker drive the
ASGI app directly (``AsgiSocket``), where a client can stop reading at will.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
import warnings
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from starlette.exceptions import StarletteDeprecationWarning
from starlette.websockets import WebSocketDisconnect

with warnings.catch_warnings():
    # Starlette 1.x wants the httpx2 package for its TestClient and warns when it falls back
    # to httpx; the fallback works the same for these tests.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient, WebSocketTestSession

import mqctl
from mqctl.backends.memory import MemoryStore
from mqctl.backends.streams import StreamBackend
from mqctl.config import Settings
from mqctl.services.delivery import create_app

Frame = dict[str, Any]


def make_settings(**overrides: Any) -> Settings:
    """Settings on a fresh memory store that poll fast.

    The ack timeout is long: a test that takes a moment to acknowledge must not see a
    redelivery it did not ask for. The test of the ack timeout sets a short one.
    """
    options: dict[str, Any] = {
        "broker_url": f"memory://test-{uuid.uuid4().hex}",
        "poll_interval_s": 0.1,
        "ack_timeout_s": 30.0,
        "topic": "messages",
        "group": "default",
        "token": None,
    }
    return Settings(**(options | overrides))


# -- driving the app through TestClient --------------------------------------------


def receive(ws: WebSocketTestSession, timeout_s: float = 5.0) -> Frame:
    """The next frame from the server; raises ``WebSocketDisconnect`` on a close, TimeoutError if none."""
    frame: Frame = json.loads(receive_text(ws, timeout_s))
    return frame


def receive_text(ws: WebSocketTestSession, timeout_s: float = 5.0) -> str:
    """The next frame from the server as the text it sent (see ``receive``)."""

    async def next_message() -> MutableMapping[str, Any]:
        with anyio.fail_after(timeout_s):
            return await ws._send_rx.receive()  # the session's own queue: receive() has no timeout

    message = ws.portal.call(next_message)
    if message["type"] == "websocket.close":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason", ""))
    text: str = message["text"]
    return text


def nothing_within(ws: WebSocketTestSession, timeout_s: float = 0.3) -> bool:
    """True if the server sends nothing for ``timeout_s``."""
    try:
        receive(ws, timeout_s)
    except TimeoutError:
        return True
    return False


@dataclass
class Service:
    """A running Service B and the helpers a test needs around it."""

    client: TestClient
    app: FastAPI
    settings: Settings

    @property
    def broker(self) -> mqctl.Broker:
        broker: mqctl.Broker = self.app.state.delivery.broker
        return broker

    def publish(
        self, type: str, content: Any = None, headers: dict[str, str] | None = None, *, broker: Any = None
    ) -> str:
        """Publish on the app's event loop (through the app's broker unless ``broker`` is given)."""
        message = {"type": type, "content": content, "headers": headers or {}}
        assert self.client.portal is not None
        message_id: str = self.client.portal.call((broker or self.broker).publish, self.settings.topic, message)
        return message_id

    def stats(self, topic: str | None = None) -> mqctl.TopicStats:
        assert self.client.portal is not None
        stats: mqctl.TopicStats = self.client.portal.call(self.broker.stats, topic or self.settings.topic)
        return stats

    def connect(self, query: str = "") -> WebSocketTestSession:
        return self.client.websocket_connect(f"/ws?{query}")

    def wait_until(self, condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, "the condition did not hold in time"
            time.sleep(0.02)


def subscribed(ws: WebSocketTestSession) -> Frame:
    frame = receive(ws)
    assert frame["event"] == "subscribed", frame
    return frame


# -- the basics -------------------------------------------------------------------


def test_published_message_arrives_as_a_frame_with_all_fields(service: Service) -> None:
    """A message published after connecting arrives as one frame with every field."""
    with service.connect() as ws:
        assert subscribed(ws) == {
            "event": "subscribed",
            "topic": "messages",
            "mode": "group",
            "group": "default",
            "filter": None,
        }
        message_id = service.publish("order.created", {"n": 1, "items": ["a"]}, {"env": "prod"})
        assert receive(ws) == {
            "id": message_id,
            "type": "order.created",
            "content": {"n": 1, "items": ["a"]},
            "headers": {"env": "prod"},
            "attempt": 1,
            "topic": "messages",
        }


def test_type_filter_takes_several_types_and_header_filter_must_match_too(service: Service) -> None:
    """type=a&type=b,c keeps any of the three; header=env:prod must match as well."""
    with service.connect("type=a&type=b,c&header=env:prod") as ws:
        assert subscribed(ws)["filter"] == "(by_type('a', 'b', 'c') & by_header('env', 'prod'))"
        service.publish("a", 1, {"env": "prod"})
        service.publish("b", 2, {"env": "test"})
        service.publish("d", 3, {"env": "prod"})
        service.publish("c", 4, {"env": "prod"})
        service.publish("a", 5)
        assert [receive(ws)["content"] for _ in range(2)] == [1, 4]
        assert nothing_within(ws)
    service.wait_until(lambda: service.stats().backlog == 2)  # 1 and 4 were never acknowledged


def test_header_filter_alone_checks_presence(service: Service) -> None:
    """header=trace keeps messages that carry a 'trace' header, whatever its value."""
    with service.connect("mode=broadcast&header=trace") as ws:
        subscribed(ws)
        service.publish("a", 1)
        service.publish("a", 2, {"trace": "x"})
        service.publish("a", 3, {"trace": ""})
        assert [receive(ws)["content"] for _ in range(2)] == [2, 3]


def test_filtered_out_messages_are_acknowledged_for_the_group(service: Service) -> None:
    """A message no connection of the group wants is acknowledged, so the group moves on."""
    with service.connect("type=wanted&auto_ack=true") as ws:
        subscribed(ws)
        service.publish("unwanted", 1)
        service.publish("wanted", 2)
        assert receive(ws)["content"] == 2
        service.wait_until(lambda: service.stats().backlog == 0)


def test_message_published_before_anyone_connected_is_delivered_on_connect(service: Service) -> None:
    """The default group exists from the topic's first publish, so nothing waits in vain."""
    message_id = service.publish("early", "bird")
    with service.connect() as ws:
        subscribed(ws)
        frame = receive(ws)
        assert (frame["id"], frame["content"], frame["attempt"]) == (message_id, "bird", 1)


# -- group mode -------------------------------------------------------------------


def test_two_connections_of_one_group_share_the_messages(service: Service) -> None:
    """Each message goes to exactly one connection of the group; none is lost."""
    with service.connect("group=workers") as ws1, service.connect("group=workers") as ws2:
        subscribed(ws1)
        subscribed(ws2)
        published = [service.publish("job", i) for i in range(20)]
        got: dict[str, list[str]] = {"ws1": [], "ws2": []}
        deadline = time.monotonic() + 10
        while len(got["ws1"]) + len(got["ws2"]) < 20 and time.monotonic() < deadline:
            for name, ws in (("ws1", ws1), ("ws2", ws2)):
                try:
                    frame = receive(ws, 0.1)
                except TimeoutError:
                    continue
                got[name].append(frame["id"])
                ws.send_text(json.dumps({"ack": frame["id"]}))
        assert sorted(got["ws1"] + got["ws2"]) == sorted(published)
        assert got["ws1"] and got["ws2"]
        assert nothing_within(ws1) and nothing_within(ws2)
        service.wait_until(lambda: service.stats().group("workers").backlog == 0)  # type: ignore[union-attr]


def test_ack_frame_acknowledges_the_message(service: Service) -> None:
    """{"ack": id} and {"ack": [ids]} acknowledge: nothing stays pending for the group."""
    with service.connect() as ws:
        subscribed(ws)
        ids = [service.publish("job", i) for i in range(3)]
        assert [receive(ws)["id"] for _ in range(3)] == ids
        service.wait_until(lambda: service.stats().group("default").pending == 3)  # type: ignore[union-attr]
        ws.send_text(json.dumps({"ack": ids[0]}))
        ws.send_text(json.dumps({"ack": ids[1:]}))
        service.wait_until(lambda: service.stats().group("default").pending == 0)  # type: ignore[union-attr]
        assert nothing_within(ws)


def test_unacked_message_goes_to_the_other_connection_when_its_holder_disconnects(service: Service) -> None:
    """What a connection did not acknowledge reaches another one at once, as attempt 2."""
    second = service.connect("group=g")
    with service.connect("group=g") as first:
        subscribed(first)
        message_id = service.publish("job", "x")
        assert (receive(first)["id"],) == (message_id,)
        other = second.__enter__()
        subscribed(other)
    try:
        frame = receive(other, 5.0)
        assert (frame["id"], frame["attempt"]) == (message_id, 2)
        other.send_text(json.dumps({"ack": message_id}))
        service.wait_until(lambda: service.stats().group("g").pending == 0)  # type: ignore[union-attr]
    finally:
        second.__exit__(None, None, None)


def test_message_not_acknowledged_within_the_ack_timeout_comes_again() -> None:
    """A delivery left unacknowledged for ack_timeout_s is sent again, as attempt 2."""
    settings = make_settings(ack_timeout_s=0.5)
    app = create_app(settings)
    with TestClient(app) as client:
        service = Service(client, app, settings)
        with service.connect() as ws:
            subscribed(ws)
            message_id = service.publish("job", 1)
            assert receive(ws)["attempt"] == 1
            frame = receive(ws, 5.0)
            assert (frame["id"], frame["attempt"]) == (message_id, 2)
            ws.send_text(json.dumps({"ack": message_id}))
            assert nothing_within(ws)  # the old copy was superseded: its id is settled once


def test_nack_frame_gives_the_message_back_for_redelivery(service: Service) -> None:
    """{"nack": id} hands the message back; it comes again with attempt 2."""
    with service.connect() as ws:
        subscribed(ws)
        message_id = service.publish("job", 1)
        assert receive(ws)["id"] == message_id
        ws.send_text(json.dumps({"nack": message_id}))
        frame = receive(ws, 5.0)
        assert (frame["id"], frame["attempt"]) == (message_id, 2)


def test_auto_ack_acknowledges_once_written(service: Service) -> None:
    """With auto_ack=true nothing stays pending and no ack frame is needed."""
    with service.connect("auto_ack=true") as ws:
        subscribed(ws)
        ids = [service.publish("job", i) for i in range(3)]
        assert [receive(ws)["id"] for _ in range(3)] == ids
        service.wait_until(lambda: service.stats().backlog == 0)
        ws.send_text(json.dumps({"ack": ids[0]}))  # already settled
        assert receive(ws)["error"] == "unknown_id"


def test_auto_acks_written_during_a_blocking_read_do_not_wait_for_it_to_end() -> None:
    """The read that follows a delivery blocks for the poll interval; the frame's auto-ack leaves long before."""
    settings = make_settings(poll_interval_s=5.0)
    with TestClient(create_app(settings)) as client:
        service = Service(client, client.app, settings)  # type: ignore[arg-type]
        with service.connect("auto_ack=true") as ws:
            subscribed(ws)
            message_id = service.publish("job", 1)
            assert receive(ws)["id"] == message_id
            started = time.monotonic()
            service.wait_until(lambda: service.stats().backlog == 0, timeout_s=2.0)
            assert time.monotonic() - started < 2.0


# -- broadcast mode ---------------------------------------------------------------


def test_broadcast_sends_every_message_to_every_connection(service: Service) -> None:
    """Two broadcast connections each get every message, in order, as attempt 1."""
    with service.connect("mode=broadcast") as ws1, service.connect("mode=broadcast") as ws2:
        assert subscribed(ws1)["group"] is None
        subscribed(ws2)
        ids = [service.publish("tick", i) for i in range(5)]
        for ws in (ws1, ws2):
            frames = [receive(ws) for _ in range(5)]
            assert [f["id"] for f in frames] == ids
            assert {f["attempt"] for f in frames} == {1}
        assert nothing_within(ws1) and nothing_within(ws2)


def test_broadcast_ignores_ack_frames(service: Service) -> None:
    """An ack in broadcast mode is no error: there is nothing to acknowledge."""
    with service.connect("mode=broadcast") as ws:
        subscribed(ws)
        ws.send_text(json.dumps({"ack": "1-0"}))
        ws.send_text(json.dumps({"nack": ["1-0"]}))
        message_id = service.publish("tick", 1)
        assert receive(ws)["id"] == message_id


def test_broadcast_resume_sends_the_rest_then_live_without_gaps_or_duplicates() -> None:
    """last_id: retained history after it (several pages), then live messages, each exactly once."""
    settings = make_settings(ws_send_buffer=50)
    app = create_app(settings)
    with TestClient(app) as client:
        service = Service(client, app, settings)
        assert client.portal is not None
        batches = [[{"type": "old", "content": i} for i in range(b * 600, b * 600 + 600)] for b in range(2)]
        ids = [i for batch in batches for i in client.portal.call(service.broker.publish_many, "messages", batch)]
        resume_after = ids[99]

        async def publish_live() -> list[str]:
            live = []
            for i in range(30):
                live.append(await service.broker.publish("messages", {"type": "live", "content": i}))
                await asyncio.sleep(0.002)
            return live

        with service.connect(f"mode=broadcast&last_id={resume_after}") as ws:
            subscribed(ws)
            live_future = client.portal.start_task_soon(publish_live)
            got = [receive(ws)["id"] for _ in range(1100)]
            live_ids = live_future.result(timeout=10)
            got += [receive(ws)["id"] for _ in range(30)]
            assert got == ids[100:] + live_ids
            assert nothing_within(ws)


def test_resume_from_before_the_oldest_retained_message_says_history_was_lost(service: Service) -> None:
    """A last_id older than what the topic retains gets a history_lost event first."""
    assert service.client.portal is not None
    trimming = mqctl.open_broker(service.settings.broker_url, retention=3, default_group=None)
    try:
        ids = [service.publish("old", i, broker=trimming) for i in range(6)]
        assert service.stats().first_id == ids[3]
        with service.connect(f"mode=broadcast&last_id={ids[0]}") as ws:
            subscribed(ws)
            lost = receive(ws)
            assert lost["event"] == "history_lost" and lost["first_id"] == ids[3]
            assert ids[0] in lost["detail"]
            assert [receive(ws)["id"] for _ in range(3)] == ids[3:]
        with service.connect("mode=broadcast&last_id=0-0") as ws:  # "everything retained": nothing lost
            subscribed(ws)
            assert [receive(ws)["id"] for _ in range(3)] == ids[3:]
    finally:
        service.client.portal.call(trimming.aclose)


def test_resume_from_past_the_newest_message_says_history_was_lost(service: Service) -> None:
    """A last_id newer than anything the topic holds (it was deleted by hand since) gets history_lost."""
    before = service.publish("old", 1)
    later = f"{int(before.split('-')[0]) + 60_000}-0"  # as if the topic had gone on, then been deleted
    with service.connect(f"mode=broadcast&last_id={later}") as ws:
        subscribed(ws)
        lost = receive(ws)
        assert lost["event"] == "history_lost" and later in lost["detail"]
    with service.connect(f"mode=broadcast&last_id={before}") as ws:  # up to date: nothing lost
        subscribed(ws)
        after = service.publish("new", 2)
        assert receive(ws)["id"] == after


def test_a_partitioned_resume_from_before_what_is_retained_says_history_was_lost(service: Service) -> None:
    """On a topic of 2 partitions, a last_id older than what one partition retains gets history_lost
    naming that partition (a partitioned resume said nothing before), then what is retained."""
    assert service.client.portal is not None
    trimming = mqctl.open_broker(service.settings.broker_url, retention=2, default_group=None)
    try:
        service.client.portal.call(lambda: trimming.create_topic(service.settings.topic, partitions=2))
        ids = [service.publish("old", i, broker=trimming) for i in range(8)]  # 4 a partition, 2 kept
        assert {i.split(":")[0] for i in ids} == {"0", "1"}
        with service.connect(f"mode=broadcast&last_id={ids[0]}") as ws:
            subscribed(ws)
            lost = receive(ws)
            assert lost["event"] == "history_lost" and ids[0] in lost["detail"], lost
            assert "partition 0" in lost["detail"] and "partition 1" in lost["detail"], lost
            assert lost["first_id"] == service.stats().first_id
            assert sorted(receive(ws)["id"] for _ in range(4)) == sorted(ids[4:])
        with service.connect("mode=broadcast&last_id=0-0") as ws:  # "everything retained": nothing lost
            subscribed(ws)
            assert "id" in receive(ws)
    finally:
        service.client.portal.call(trimming.aclose)


# -- what clients get wrong -------------------------------------------------------


def test_bad_frames_get_error_frames_and_the_connection_stays_open(service: Service) -> None:
    """Non-JSON, unknown shapes, binary frames and unknown ids each get an error frame."""
    with service.connect() as ws:
        subscribed(ws)
        sent_and_expected = [
            ("not json", "invalid_json"),
            ("[" * 30_000 + "]" * 30_000, "invalid_json"),  # deeper than the parser goes
            (json.dumps({"hello": 1}), "unknown_frame"),
            (json.dumps({"ack": 5}), "unknown_frame"),
            (json.dumps({"ack": []}), "unknown_frame"),
            (json.dumps({"ack": "1-0", "nack": "1-0"}), "unknown_frame"),
            (json.dumps(["ack", "1-0"]), "unknown_frame"),
            (json.dumps({"ack": "1-0"}), "unknown_id"),
        ]
        for text, code in sent_and_expected:
            ws.send_text(text)
            error = receive(ws)
            assert error["error"] == code, (text, error)
            assert error["detail"].endswith(".")
        ws.send_bytes(b"\x00\x01")
        assert receive(ws)["error"] == "binary_frame"
        message_id = service.publish("still", "open")
        assert receive(ws)["id"] == message_id


def test_oversized_frame_closes_with_1009(service: Service) -> None:
    """A frame over 64 KiB closes the connection with 1009."""
    with service.connect() as ws:
        subscribed(ws)
        ws.send_text(json.dumps({"ack": "x" * (65 * 1024)}))
        with pytest.raises(WebSocketDisconnect) as closed:
            receive(ws)
        assert closed.value.code == 1009


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("topic=bad%20topic", "topic"),
        ("topic=%7Bx%7D", "topic"),
        ("mode=fanout", "mode"),
        ("group=bad%20group", "group"),
        ("auto_ack=maybe", "auto_ack"),
        ("mode=broadcast&last_id=yesterday", "last_id"),
        ("last_id=1-0", "last_id"),
        ("header=%3Avalue", "header"),
    ],
)
def test_bad_query_parameters_close_with_1008(service: Service, query: str, parameter: str) -> None:
    """An invalid query parameter gets an error frame, then a close with 1008 and a reason."""
    with service.connect(query) as ws:
        error = receive(ws)
        assert error["error"] == "invalid_parameter"
        assert parameter in error["detail"]
        with pytest.raises(WebSocketDisconnect) as closed:
            receive(ws)
        assert closed.value.code == 1008
        assert closed.value.reason and len(closed.value.reason.encode()) <= 123


def test_token_is_required_when_set() -> None:
    """With settings.token, /ws needs it (header or ?token=); without it the close is 1008."""
    settings = make_settings(token="s3cret")
    with TestClient(create_app(settings)) as client:
        with client.websocket_connect("/ws") as ws:
            assert receive(ws)["error"] == "unauthorized"
            with pytest.raises(WebSocketDisconnect) as closed:
                receive(ws)
            assert closed.value.code == 1008
        with client.websocket_connect("/ws?token=s3cret") as ws:
            subscribed(ws)
        with client.websocket_connect("/ws", headers={"Authorization": "Bearer s3cret"}) as ws:
            subscribed(ws)


# -- HTTP -------------------------------------------------------------------------


def test_health_and_ready(service: Service) -> None:
    """/health is always ok; /ready is 200 while the broker answers."""
    assert service.client.get("/health").json() == {"status": "ok"}
    response = service.client.get("/ready")
    assert response.status_code == 200 and response.json() == {"status": "ready"}


def test_ready_is_503_when_the_broker_does_not_answer_and_a_given_broker_stays_open() -> None:
    """/ready reports 503 with a detail; a broker passed to create_app is not closed by the app."""
    settings = make_settings()
    broker = mqctl.open_broker(settings.broker_url)
    with TestClient(create_app(settings, broker=broker)) as client:
        assert client.get("/ready").status_code == 200
        assert client.portal is not None
        client.portal.call(broker.backend.aclose)
        response = client.get("/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable" and response.json()["detail"]


def test_given_broker_is_left_open_on_shutdown() -> None:
    """The lifespan closes only a broker it opened itself."""
    settings = make_settings()
    broker = mqctl.open_broker(settings.broker_url)
    with TestClient(create_app(settings, broker=broker)) as client:
        assert client.get("/ready").status_code == 200
    asyncio.run(broker.ping())  # raises BrokerUnavailable if it was closed


def test_viewer_page_is_self_contained(service: Service) -> None:
    """GET / is an HTML page that connects in broadcast mode and resumes with last_id."""
    response = service.client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    for needed in ("mqctl viewer", "new WebSocket", '"broadcast"', "last_id", 'page.get("keep")', "|| 200", "onclose"):
        assert needed in page
    for external in ("<script src", "<link", "http://", "https://", "@import"):
        assert external not in page


def test_app_title_and_nothing_connects_at_creation() -> None:
    """create_app opens no broker: an unreachable URL only matters once the lifespan runs."""
    app = create_app(make_settings(broker_url="redis://127.0.0.1:1/0"))
    assert app.title == "mqctl Service B"


# -- driving the ASGI app directly: slow clients, shutdown, an unreachable broker --


class AsgiSocket:
    """A WebSocket client calling the ASGI app in this event loop; ``paused`` stops its reading."""

    def __init__(self, app: FastAPI, query: str = "") -> None:
        self.app = app
        self.query = query
        self.to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.from_app: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        self.reading = asyncio.Event()
        self.reading.set()
        self.task: asyncio.Task[None] | None = None

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "websocket.send":
            await self.reading.wait()  # a client that does not read: the server's send blocks
        self.from_app.put_nowait(message)

    async def __aenter__(self) -> AsgiSocket:
        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "scheme": "ws",
            "path": "/ws",
            "raw_path": b"/ws",
            "root_path": "",
            "query_string": self.query.encode(),
            "headers": [],
            "client": ("test", 1),
            "server": ("test", 80),
            "subprotocols": [],
            "state": {},
        }
        self.task = asyncio.create_task(self.app(scope, self.to_app.get, self._send))
        self.to_app.put_nowait({"type": "websocket.connect"})
        accepted = await self.message()
        assert accepted["type"] == "websocket.accept"
        return self

    async def message(self, timeout_s: float = 5.0) -> MutableMapping[str, Any]:
        async with asyncio.timeout(timeout_s):
            return await self.from_app.get()

    async def frame(self, timeout_s: float = 5.0) -> Frame:
        message = await self.message(timeout_s)
        assert message["type"] == "websocket.send", message
        frame: Frame = json.loads(message["text"])
        return frame

    async def send(self, frame: Frame) -> None:
        self.to_app.put_nowait({"type": "websocket.receive", "text": json.dumps(frame)})

    async def __aexit__(self, *exc_info: object) -> None:
        self.to_app.put_nowait({"type": "websocket.disconnect", "code": 1000})
        assert self.task is not None
        async with asyncio.timeout(5):
            await self.task


async def test_stalled_group_connection_is_closed_4001_and_its_messages_go_to_another(fast_stall: None) -> None:
    """A group client that stops reading: others get the messages, it is closed with 4001, nothing is lost."""
    settings = make_settings(ws_send_buffer=2)  # the ack timeout (30 s) cannot rescue anything here
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        broker = app.state.delivery.broker
        async with AsgiSocket(app, "group=g") as slow, AsgiSocket(app, "group=g") as fast:
            assert (await slow.frame())["event"] == "subscribed"
            assert (await fast.frame())["event"] == "subscribed"
            slow.reading.clear()
            ids = [await broker.publish("messages", {"type": "job", "content": i}) for i in range(10)]
            got: dict[str, int] = {}
            async with asyncio.timeout(10):
                while set(got) != set(ids):
                    frame = await fast.frame()
                    got[frame["id"]] = frame["attempt"]
                    await fast.send({"ack": frame["id"]})
            assert 2 in got.values()  # what the slow one held came back
            closed = await slow.message()
            assert closed == {
                "type": "websocket.close",
                "code": 4001,
                "reason": "send buffer full: client too slow; reconnect to resume",
            }
        stats = await broker.stats("messages")
        assert stats.group("g").backlog == 0


async def test_full_broadcast_connection_is_closed_4001_at_once_and_others_get_everything() -> None:
    """A broadcast client whose buffer overflows is closed with 4001; the others miss nothing."""
    settings = make_settings(ws_send_buffer=2)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        broker = app.state.delivery.broker
        async with AsgiSocket(app, "mode=broadcast") as slow, AsgiSocket(app, "mode=broadcast") as fast:
            await slow.frame()
            await fast.frame()
            slow.reading.clear()
            ids = [await broker.publish("messages", {"type": "tick", "content": i}) for i in range(8)]
            assert [(await fast.frame())["id"] for _ in ids] == ids
            closed = await slow.message()
            assert (closed["type"], closed["code"]) == ("websocket.close", 4001)


async def test_shutdown_closes_sockets_1001_and_hands_back_unacked_messages() -> None:
    """Stopping the service closes each WebSocket with 1001 within seconds; unacked messages return at once."""
    settings = make_settings()
    broker = mqctl.open_broker(settings.broker_url)
    app = create_app(settings, broker=broker)
    lifespan = app.router.lifespan_context(app)
    try:
        async with contextlib.AsyncExitStack() as sockets:
            await lifespan.__aenter__()
            ws = await sockets.enter_async_context(AsgiSocket(app))
            watcher = await sockets.enter_async_context(AsgiSocket(app, "mode=broadcast"))
            await ws.frame()
            await watcher.frame()
            message_id = await broker.publish("messages", {"type": "job"})
            assert (await ws.frame())["id"] == message_id
            started = time.monotonic()
            await lifespan.__aexit__(None, None, None)
            assert time.monotonic() - started < 3
            for socket in (ws, watcher):
                while (message := await socket.message())["type"] != "websocket.close":
                    pass
                assert message["code"] == 1001
        subscription = broker.subscribe("messages", poll_interval=0.1, ack_timeout=settings.ack_timeout_s)
        async with subscription:
            async with asyncio.timeout(2):
                delivery = await anext(subscription)
            assert (delivery.id, delivery.attempt) == (message_id, 2)
            await delivery.ack()
    finally:
        await broker.aclose()


class SwitchableStore:
    """A memory store the test can switch off: every call raises BrokerUnavailable meanwhile."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name == "aclose":
            return attribute

        @functools.wraps(attribute)
        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise mqctl.BrokerUnavailable("The test switched the broker off.")
            return await attribute(*args, **kwargs)

        return call


async def test_pump_keeps_retrying_while_the_broker_is_down_and_resumes(caplog: pytest.LogCaptureFixture) -> None:
    """An unreachable broker keeps clients connected; delivery resumes by itself once it is back."""
    settings = make_settings()
    name = settings.broker_url.removeprefix("memory://")
    backend = SwitchableStore(MemoryStore(name))
    flaky = mqctl.Broker(StreamBackend(backend))  # type: ignore[arg-type]
    app = create_app(settings, broker=flaky)
    async with (
        mqctl.connect(settings.broker_url) as healthy,
        flaky,
        app.router.lifespan_context(app),
        AsgiSocket(app) as ws,
    ):
        await ws.frame()
        with caplog.at_level(logging.WARNING, logger="mqctl.services.delivery.pumps"):
            backend.down = True
            with pytest.raises(TimeoutError):
                await ws.message(timeout_s=0.8)  # nothing: no frame, no close
            message_id = await healthy.publish("messages", {"type": "job"})
            backend.down = False
            frame = await ws.frame(timeout_s=10)
        assert frame["id"] == message_id
        assert any("unavailable" in r.getMessage() for r in caplog.records)
        await ws.send({"ack": message_id})


# -- real Redis -------------------------------------------------------------------


@pytest.mark.redis
def test_redis_group_sharing(redis_service: Service) -> None:
    """On Redis too, two connections of a group share the messages: each exactly once."""
    test_two_connections_of_one_group_share_the_messages(redis_service)


@pytest.mark.redis
def test_redis_unacked_message_goes_to_the_other_connection(redis_service: Service) -> None:
    """On Redis too, a disconnect hands the unacknowledged message to the other connection."""
    test_unacked_message_goes_to_the_other_connection_when_its_holder_disconnects(redis_service)


@pytest.mark.redis
def test_redis_broadcast_resume(redis_service: Service) -> None:
    """On Redis too, a broadcast resume sends the rest, then live messages, without gap or duplicate."""
    service = redis_service
    ids = [service.publish("old", i) for i in range(10)]
    with service.connect(f"mode=broadcast&last_id={ids[3]}") as ws:
        subscribed(ws)
        assert [receive(ws)["id"] for _ in range(6)] == ids[4:]
        live = [service.publish("live", i) for i in range(5)]
        assert [receive(ws)["id"] for _ in range(5)] == live
        assert nothing_within(ws)
