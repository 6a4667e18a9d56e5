"""One trace from POST /messages through a handler and through Service B to the WebSocket client:
the trace context rides in the message's headers (``mqctl.core.tracing``), on memory and a real Redis.

Spans are recorded by OpenTelemetry's SDK into memory for the length of one test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

import mqctl
from mqctl.core import tracing
from mqctl.services import delivery as service_b
from mqctl.services import ingest as service_a
from tests.conftest import BrokerFactory
from tests.contract.consuming import eventually
from tests.unit.services.test_delivery import TestClient, make_settings, receive, subscribed
from tests.unit.services.test_ingest import client_for
from tests.unit.services.test_ingest import make_settings as settings_a

BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]
CALLER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN = 0x00F067AA0BA902B7
CALLER = f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01"


def _use_provider(provider: TracerProvider | None) -> None:
    # The API lets a process set its provider once; this is what opentelemetry-test-utils'
    # reset_trace_globals does, so each test records into its own exporter.
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = provider  # type: ignore[attr-defined]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _use_provider(provider)
    try:
        yield exporter
    finally:
        _use_provider(None)
        provider.shutdown()


def parts(traceparent: str) -> tuple[int, int]:
    """The trace id and span id of a W3C ``traceparent``."""
    version, trace_id, span_id, _flags = traceparent.split("-")
    assert version == "00"
    return int(trace_id, 16), int(span_id, 16)


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


@pytest.mark.parametrize("broker_url", BACKENDS, indirect=True)
async def test_a_publish_in_a_span_carries_its_context_and_keeps_one_given(
    connect_broker: BrokerFactory, spans: InMemorySpanExporter
) -> None:
    """Published in a span, a message (dict, Message, publish_many) carries the span's context; one that
    has a traceparent keeps it; outside any span nothing is added."""
    async with connect_broker() as broker:
        with trace.get_tracer("shop").start_as_current_span("checkout") as span:
            await broker.publish("t", {"type": "a", "content": 1})
            await broker.publish("t", mqctl.Message("b", 2, {"env": "prod"}))
            await broker.publish_many("t", [{"type": "c", "content": 3}])
            await broker.publish("t", {"type": "d", "content": 4, "headers": {"traceparent": CALLER}})
        await broker.publish("t", {"type": "e", "content": 5})
        async with broker.subscribe("t", group="default") as sub:
            got = [d.message async for d in _take(sub, 5)]
    context = span.get_span_context()
    ours = (context.trace_id, context.span_id)
    assert [parts(m.headers["traceparent"]) for m in got[:3]] == [ours, ours, ours]
    assert got[1].headers["env"] == "prod"
    assert got[3].headers == {"traceparent": CALLER}
    assert got[4].headers == {}


async def _take(sub: mqctl.Subscription, n: int):  # type: ignore[no-untyped-def]
    async for delivery in sub:
        await delivery.ack()
        yield delivery
        n -= 1
        if n == 0:
            return


@pytest.mark.parametrize("broker_url", BACKENDS, indirect=True)
async def test_one_trace_runs_from_post_messages_through_the_handler(
    connect_broker: BrokerFactory, spans: InMemorySpanExporter
) -> None:
    """POST /messages with the caller's traceparent: Service A's publish span is the caller's child,
    the handler runs in a process span that is the publish span's child; a failing handler's span
    says so."""
    async with connect_broker() as broker:
        app = mqctl.App(broker=broker)
        seen: list[int] = []

        @app.handler("orders", group="billing", max_attempts=1)
        async def bill(content: int) -> None:
            seen.append(trace.get_current_span().get_span_context().trace_id)
            if content < 0:
                raise mqctl.Reject("negative")

        async with client_for(service_a.create_app(settings_a(), broker=broker)) as client:
            task = asyncio.ensure_future(app.run(poll_interval_s=0.05))
            try:
                await asyncio.wait_for(app.started(), 10)  # the group exists: it gets what follows
                for content in (1, -1):
                    response = await client.post(
                        "/messages",
                        json={"topic": "orders", "type": "t", "content": content},
                        headers={"traceparent": CALLER},
                    )
                    assert response.status_code == 202, response.text
                await eventually(lambda: _done(spans, "process orders", 2), what="both handled")
            finally:
                app.stop()
                await asyncio.wait_for(task, 10)
            untraced = await client.post("/messages", json={"topic": "orders", "type": "t", "content": 2})
            assert untraced.status_code == 202

    publishes = named(spans, "publish orders")
    processes = sorted(named(spans, "process orders"), key=lambda s: s.start_time or 0)
    assert len(publishes) == 3 and len(processes) == 2
    finished = spans.get_finished_spans()
    for publish in publishes[:2]:
        assert publish.kind is SpanKind.PRODUCER
        assert publish.context.trace_id == CALLER_TRACE
        # FastAPI records the HTTP request's span (the caller's child); publish is its child.
        (request,) = [s for s in finished if publish.parent and s.context.span_id == publish.parent.span_id]
        assert request.kind is SpanKind.SERVER and request.parent and request.parent.span_id == CALLER_SPAN
    assert {p.parent.span_id for p in processes if p.parent} == {p.context.span_id for p in publishes[:2]}
    assert all(p.kind is SpanKind.CONSUMER and p.context.trace_id == CALLER_TRACE for p in processes)
    assert seen == [CALLER_TRACE, CALLER_TRACE]
    assert [p.status.status_code for p in processes] == [StatusCode.UNSET, StatusCode.ERROR]
    assert processes[0].attributes is not None
    assert processes[0].attributes["messaging.consumer.group.name"] == "billing"
    # Without a traceparent, POST /messages starts a trace of its own.
    assert publishes[2].context.trace_id != CALLER_TRACE


async def _done(exporter: InMemorySpanExporter, name: str, n: int) -> bool:
    return len(named(exporter, name)) >= n


def test_service_b_sends_each_frame_in_a_deliver_span_the_client_can_go_on_with(
    spans: InMemorySpanExporter,
) -> None:
    """A frame of a traced message carries the traceparent of Service B's deliver span, the child of
    the message's context; an untraced message's headers go out as they came, with no span."""
    settings = make_settings(broker_url=f"memory://test-{uuid.uuid4().hex}")
    with TestClient(service_b.create_app(settings)) as client, client.websocket_connect("/ws") as ws:
        subscribed(ws)
        broker = client.app.state.delivery.broker  # type: ignore[attr-defined]
        assert client.portal is not None
        traced = {"type": "t", "content": 1, "headers": {"traceparent": CALLER, "env": "prod"}}
        client.portal.call(broker.publish, settings.topic, traced)
        frame = receive(ws)
        client.portal.call(broker.publish, settings.topic, {"type": "t", "content": 2, "headers": {"env": "x"}})
        untraced = receive(ws)
    (deliver,) = named(spans, "deliver messages")
    assert deliver.kind is SpanKind.CONSUMER
    assert deliver.parent is not None and deliver.parent.span_id == CALLER_SPAN
    assert parts(frame["headers"]["traceparent"]) == (CALLER_TRACE, deliver.context.span_id)
    assert frame["headers"]["env"] == "prod"
    assert untraced["headers"] == {"env": "x"}


def test_without_a_recording_provider_a_given_context_goes_on_unchanged() -> None:
    """No SDK configured (the default): nothing is recorded, and a caller's traceparent passes through."""
    assert tracing.available()
    assert tracing.delivered({"traceparent": CALLER}, "t", "1") == {"traceparent": CALLER}
    assert tracing.stamped({"type": "t"}) == {"type": "t"}  # no span here: nothing to add
