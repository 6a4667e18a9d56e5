"""GET /metrics and GET /ready of real serve-a and serve-b processes on a private Redis."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from tests.integration.conftest import Service
from tests.scrape import sample
from tests.servers import RedisServer

pytestmark = pytest.mark.timeout(90)

MAX_ATTEMPTS = 2


@pytest.fixture
def system(redis_server: RedisServer, start_service) -> tuple[Service, Service]:
    """Service A and Service B on one private Redis; B redelivers fast and dead-letters on the 2nd attempt."""
    a = start_service("serve-a", "--broker", redis_server.url)
    b = start_service(
        "serve-b",
        "--broker",
        redis_server.url,
        "--poll-interval",
        "0.2",
        env={"MQCTL_ACK_TIMEOUT_S": "1", "MQCTL_MAX_ATTEMPTS": str(MAX_ATTEMPTS)},
    )
    return a, b


async def next_message(ws, timeout_s: float = 10) -> dict:
    async with asyncio.timeout(timeout_s):
        while True:
            frame = orjson.loads(await ws.recv())
            if "id" in frame and "type" in frame:
                return frame


async def test_metrics_follow_publish_delivery_ack_nack_and_dead_letter(system: tuple[Service, Service]) -> None:
    """Counters and broker gauges move as two messages are published, delivered, acked, nacked and dead-lettered."""
    a, b = system
    group = {"topic": "metered", "group": "workers"}
    async with httpx.AsyncClient(timeout=10) as http:
        before_a = (await http.get(f"{a.http}/metrics")).text
        before_b = (await http.get(f"{b.http}/metrics")).text
        async with connect(f"{b.ws}?topic=metered&group=workers") as ws:
            async with asyncio.timeout(10):
                while orjson.loads(await ws.recv()).get("event") != "subscribed":
                    pass
            for content in ("ack me", "nack me"):
                r = await http.post(f"{a.http}/messages", json={"topic": "metered", "type": "job", "content": content})
                assert r.status_code == 202, r.text
            refused = await http.post(f"{a.http}/messages", json={"topic": "metered", "type": "", "content": 1})
            assert refused.status_code == 422
            during_b = (await http.get(f"{b.http}/metrics")).text

            settled = {}
            while len(settled) < 1 + MAX_ATTEMPTS:  # one ack, then a nack on each attempt of the other
                frame = await next_message(ws)
                verb = "ack" if frame["content"] == "ack me" else "nack"
                await ws.send(orjson.dumps({verb: frame["id"]}).decode())
                settled[(frame["content"], frame["attempt"])] = verb
        assert settled == {("ack me", 1): "ack", ("nack me", 1): "nack", ("nack me", 2): "nack"}

        # The broker gauges are cached for a few seconds: wait for a read after the dead letter.
        deadline = time.monotonic() + 15
        while True:
            after_b = (await http.get(f"{b.http}/metrics")).text
            if sample(after_b, "mqctl_topic_dead_letters", topic="metered") == 1:
                break
            assert time.monotonic() < deadline, "the broker gauges did not show the dead letter"
            await asyncio.sleep(0.5)
        after_a = (await http.get(f"{a.http}/metrics")).text

    def delta(before: str, after: str, name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta(before_a, after_a, "mqctl_messages_published_total", topic="metered") == 2
    assert delta(before_a, after_a, "mqctl_publish_rejected_total", reason="invalid") == 1
    assert delta(before_a, after_a, "mqctl_http_request_duration_seconds_count", route="/messages", status="202") == 2

    assert sample(during_b, "mqctl_websocket_connections", mode="group") == 1
    assert delta(before_b, after_b, "mqctl_messages_delivered_total", topic="metered", mode="group") == 3
    assert delta(before_b, after_b, "mqctl_messages_acknowledged_total", **group) == 1
    assert delta(before_b, after_b, "mqctl_messages_nacked_total", **group) == 2
    assert delta(before_b, after_b, "mqctl_messages_redelivered_total", **group) == 1
    assert delta(before_b, after_b, "mqctl_messages_dead_lettered_total", **group) == 1
    assert delta(before_b, after_b, "mqctl_poll_cycle_seconds_count", mode="group") > 0
    assert sample(after_b, "mqctl_websocket_connections", mode="group") == 0
    assert sample(after_b, "mqctl_broker_up") == 1
    assert sample(after_b, "mqctl_group_pending", **group) == 0
    assert sample(after_b, "mqctl_group_lag", **group) == 0


async def test_ready_turns_503_when_redis_stops_and_200_when_it_returns(
    system: tuple[Service, Service], redis_server: RedisServer
) -> None:
    """Both services answer /ready 503 with the reason while Redis is down, and 200 once it is back."""
    a, b = system
    async with httpx.AsyncClient(timeout=15) as http:
        for service in system:
            assert (await http.get(f"{service.http}/ready")).status_code == 200
        redis_server.kill()
        for service in (a, b):
            r = await http.get(f"{service.http}/ready")
            assert r.status_code == 503, r.text
            assert r.json()["status"] == "unavailable"
            assert "Redis" in r.json()["detail"]
        metrics = (await http.get(f"{b.http}/metrics")).text
        assert sample(metrics, "mqctl_broker_up") == 0
        redis_server.start()
        deadline = time.monotonic() + 20
        for service in (a, b):
            while (await http.get(f"{service.http}/ready")).status_code != 200:
                assert time.monotonic() < deadline, f"{service.name} did not become ready again"
                await asyncio.sleep(0.2)
