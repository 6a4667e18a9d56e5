"""The services' metrics on the memory backend: counters, the cached broker gauges, request ids
and Service B's readiness."""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

with warnings.catch_warnings():
    # Starlette 1.x wants the httpx2 package for its TestClient and warns when it falls back.
    from starlette.exceptions import StarletteDeprecationWarning

    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

import mqctl
from mqctl.config import Settings
from mqctl.services.delivery import app as delivery
from mqctl.services.delivery.metrics import DeliveryMetrics
from mqctl.services.ingest import app as ingest
from mqctl.services.observability import BrokerGauges
from mqctl.services.startup import broker_for
from tests.scrape import has, sample


def _url() -> str:
    return f"memory://metrics-{uuid.uuid4().hex}"


@pytest.fixture
async def broker() -> AsyncIterator[mqctl.Broker]:
    """The services' broker (``broker_for``) on a fresh memory store, with small limits."""
    broker = broker_for(Settings(broker_url=_url(), max_backlog=3, max_message_bytes=200, publish_timeout_s=0.3))
    yield broker
    await broker.aclose()


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://a")


async def _metrics(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_broker_gauges_are_read_at_most_once_per_ttl(broker: mqctl.Broker) -> None:
    """A burst of scrapes reads the broker once; the next read comes only after the TTL."""
    clock = FakeClock()
    gauges = BrokerGauges(ttl_s=5.0, clock=clock)
    gauges.broker = broker
    gauges.serve("orders")
    await broker.publish("orders", {"type": "t", "content": 1})
    for _ in range(10):
        await gauges.refresh()
    assert gauges.reads == 1
    clock.now += 4.9
    await gauges.refresh()
    assert gauges.reads == 1
    clock.now += 0.2
    await gauges.refresh()
    assert gauges.reads == 2


async def test_broker_gauges_report_down_when_the_broker_fails() -> None:
    """A broker that cannot be read gives mqctl_broker_up 0 and no stale topic gauges."""
    broker = mqctl.open_broker(_url())
    gauges = BrokerGauges(ttl_s=0.0)
    gauges.broker = broker
    gauges.serve("orders")
    await broker.publish("orders", {"type": "t", "content": 1})
    await gauges.refresh()
    families = {f.name: f for f in gauges.collect()}
    assert families["mqctl_broker_up"].samples[0].value == 1
    assert families["mqctl_topic_length"].samples[0].value == 1
    await broker.aclose()
    await gauges.refresh()
    families = {f.name: f for f in gauges.collect()}
    assert families["mqctl_broker_up"].samples[0].value == 0
    assert families["mqctl_topic_length"].samples == []


async def test_service_a_counts_published_and_rejected_by_reason(broker: mqctl.Broker) -> None:
    """Each refused publish is counted under its reason; accepted messages under their topic."""
    app = ingest.create_app(Settings(broker_url=broker.url, token="s3cret"), broker=broker)
    auth = {"Authorization": "Bearer s3cret"}
    async with _client(app) as client:
        before = await _metrics(client)
        assert sample(before, "mqctl_publish_rejected_total", reason="capacity") == 0
        assert (await client.post("/messages", json={"type": "t", "content": 1}, headers=auth)).status_code == 202
        batch = {"topic": "orders", "messages": [{"type": "t", "content": i} for i in range(2)]}
        assert (await client.post("/messages/batch", json=batch, headers=auth)).status_code == 202
        refused = [
            (client.post("/messages", json={"type": "t", "content": 1}), 401),
            (client.post("/messages", json={"type": "", "content": 1}, headers=auth), 422),
            (client.post("/messages", content=b"{", headers={**auth, "content-type": "application/json"}), 400),
            (client.post("/messages", json={"type": "t", "content": "x" * 500}, headers=auth), 413),
        ]
        for request, status in refused:
            assert (await request).status_code == status
        for _ in range(2):  # the default topic holds 1; max_backlog is 3
            await client.post("/messages", json={"type": "t", "content": 1}, headers=auth)
        full = await client.post("/messages", json={"type": "t", "content": 1}, headers=auth)
        assert full.status_code == 503
        await broker.aclose()
        down = await client.post("/messages", json={"type": "t", "content": 1}, headers=auth)
        assert down.status_code == 503
        assert (await client.get("/nowhere")).status_code == 404
        after = await _metrics(client)
    assert sample(after, "mqctl_messages_published_total", topic="messages") == 3
    assert sample(after, "mqctl_messages_published_total", topic="orders") == 2
    expected = {"unauthorized": 1, "invalid": 2, "too_large": 1, "capacity": 1, "broker_down": 1, "internal_error": 0}
    for reason, count in expected.items():
        assert sample(after, "mqctl_publish_rejected_total", reason=reason) == count, reason
    assert sample(after, "mqctl_http_request_duration_seconds_count", route="/messages", status="202") == 3
    assert sample(after, "mqctl_http_request_duration_seconds_count", route="unmatched", status="404") == 1


async def test_each_app_has_a_registry_of_its_own(broker: mqctl.Broker) -> None:
    """Two apps in one process count separately (no global registry)."""
    settings = Settings(broker_url=broker.url)
    one, two = ingest.create_app(settings, broker=broker), ingest.create_app(settings, broker=broker)
    async with _client(one) as first, _client(two) as second:
        await first.post("/messages", json={"type": "t", "content": 1})
        assert sample(await _metrics(first), "mqctl_messages_published_total", topic="messages") == 1
        assert sample(await _metrics(second), "mqctl_messages_published_total", topic="messages") == 0


async def test_request_id_is_echoed_or_made(broker: mqctl.Broker) -> None:
    """A sane X-Request-ID comes back as sent; a missing or odd one is replaced by a new id."""
    app = ingest.create_app(Settings(broker_url=broker.url), broker=broker)
    async with _client(app) as client:
        assert (await client.get("/health", headers={"X-Request-ID": "trace-7"})).headers["x-request-id"] == "trace-7"
        made = (await client.get("/health")).headers["x-request-id"]
        odd = (await client.get("/health", headers={"X-Request-ID": "a b\tc"})).headers["x-request-id"]
    assert len(made) == 32 and len(odd) == 32 and made != odd


class FakeHub:
    def __init__(self, *groups: tuple[str, str]) -> None:
        self.groups = list(groups)

    def served_groups(self) -> list[tuple[str, str]]:
        return self.groups


async def test_service_b_is_not_ready_when_a_served_group_has_vanished(broker: mqctl.Broker) -> None:
    """Readiness names a group this instance reads that the broker no longer has."""
    await broker.create_group("orders", "billing")
    assert await delivery.unready_reason(broker, FakeHub(("orders", "billing"))) is None  # type: ignore[arg-type]
    reason = await delivery.unready_reason(broker, FakeHub(("orders", "billing"), ("orders", "gone")))  # type: ignore[arg-type]
    assert reason is not None and "'gone'" in reason and "'orders'" in reason
    await broker.aclose()
    reason = await delivery.unready_reason(broker, None)
    assert reason is not None and "closed" in reason


def test_service_b_counts_a_delivery_an_ack_a_nack_and_a_dead_letter() -> None:
    """Service B counts what it writes and what its clients settle, and a nack on the last attempt."""
    settings = Settings(broker_url=_url(), poll_interval_s=0.1, max_attempts=1, topic="jobs")
    app = delivery.create_app(settings)
    with TestClient(app) as client:
        hub = app.state.delivery
        with client.websocket_connect("/ws?group=workers") as ws:
            assert ws.receive_json()["event"] == "subscribed"
            text = client.get("/metrics").text
            assert sample(text, "mqctl_websocket_connections", mode="group") == 1
            assert sample(text, "mqctl_websocket_outbox_capacity_frames") == settings.ws_send_buffer
            for content in ("keep", "drop"):
                assert client.portal is not None
                client.portal.call(hub.broker.publish, "jobs", {"type": "t", "content": content})
            first, second = ws.receive_json(), ws.receive_json()
            ws.send_json({"ack": first["id"]})
            ws.send_json({"nack": second["id"]})
            deadline = time.monotonic() + 5
            while sample(text, "mqctl_messages_dead_lettered_total", topic="jobs", group="workers") == 0:
                assert time.monotonic() < deadline, "the nack on the last attempt was not counted"
                time.sleep(0.02)  # the app runs on the TestClient's own thread
                text = client.get("/metrics").text
    labels = {"topic": "jobs", "group": "workers"}
    assert sample(text, "mqctl_messages_delivered_total", topic="jobs", mode="group") == 2
    assert sample(text, "mqctl_messages_acknowledged_total", **labels) == 1
    assert sample(text, "mqctl_messages_nacked_total", **labels) == 1
    assert sample(text, "mqctl_messages_dead_lettered_total", **labels) == 1
    assert sample(text, "mqctl_messages_redelivered_total", **labels) == 0
    assert sample(text, "mqctl_poll_cycle_seconds_count", mode="group") >= 1
    assert has(text, "mqctl_topic_length", topic="jobs")


async def test_service_b_counts_are_kept_in_ints_and_folded_exactly_at_each_scrape() -> None:
    """Connections with the same labels share one tally; each scrape adds what it counted since, once."""
    metrics = DeliveryMetrics()
    first = metrics.for_connection("jobs", "group", "workers")
    assert metrics.for_connection("jobs", "group", "workers") is first  # a second connection, same labels
    watcher = metrics.for_connection("jobs", "broadcast", None)
    first.sent(1)
    first.sent(2)
    first.settled("ack", 3)
    first.settled("nack")
    watcher.sent(1)
    labels = {"topic": "jobs", "group": "workers"}
    for expected in (1, 2):  # the second scrape adds only what came after the first
        text = (await metrics.exposition()).decode()
        assert sample(text, "mqctl_messages_delivered_total", topic="jobs", mode="group") == 2 * expected
        assert sample(text, "mqctl_messages_redelivered_total", **labels) == expected
        assert sample(text, "mqctl_messages_acknowledged_total", **labels) == 3 * expected
        assert sample(text, "mqctl_messages_nacked_total", **labels) == expected
        assert sample(text, "mqctl_messages_delivered_total", topic="jobs", mode="broadcast") == expected
        assert (first.delivered, first.acknowledged, watcher.delivered) == (0, 0, 0)
        first.sent(1)
        first.sent(2)
        first.settled("ack", 3)
        first.settled("nack")
        watcher.sent(1)
