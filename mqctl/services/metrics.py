"""Prometheus metrics of Service A and Service B, served at ``GET /metrics``.

Each app has a ``CollectorRegistry`` of its own (never the global one), so any number of
apps can live in one process.

Both services:
    mqctl_http_request_duration_seconds     histogram  method, route, status  HTTP requests, by route template
    mqctl_broker_up                         gauge                             1 if the last read of broker stats worked
    mqctl_topic_length                      gauge      topic                  entries retained (acked ones included)
    mqctl_topic_dead_letters                gauge      topic                  dead letters waiting
    mqctl_group_lag                         gauge      topic, group           not yet delivered to the group (backlog)
    mqctl_group_pending                     gauge      topic, group           delivered, not yet acknowledged
    mqctl_group_oldest_pending_age_seconds  gauge      topic, group           oldest pending message's age (0: none)
    mqctl_group_consumers                   gauge      topic, group           consumers the broker knows in the group

Service A:
    mqctl_messages_published_total          counter    topic                  messages accepted (answered 202)
    mqctl_publish_rejected_total            counter    reason                 publish requests refused (a batch: once)

Service B:
    mqctl_messages_delivered_total          counter    topic, mode            message frames written to clients
    mqctl_messages_acknowledged_total       counter    topic, group           acks taken (client frames or auto_ack)
    mqctl_messages_nacked_total             counter    topic, group           nacks taken
    mqctl_messages_redelivered_total        counter    topic, group           deliveries written with attempt > 1
    mqctl_messages_dead_lettered_total      counter    topic, group           moved to the dead letters here
    mqctl_websocket_connections             gauge      mode                   connected WebSocket clients
    mqctl_websocket_outbox_frames_max       gauge      mode                   frames waiting in the fullest outbox
    mqctl_websocket_outbox_capacity_frames  gauge                             frames an outbox holds (ws_send_buffer)
    mqctl_poll_cycle_seconds                histogram  mode                   one read from the broker (see below)

Reasons of ``mqctl_publish_rejected_total``: invalid, too_large, capacity, broker_down,
unauthorized, internal_error. A poll cycle blocks up to the poll interval and returns
early when a message lands. Modes: group, broadcast.

The broker gauges cover the topics this instance serves (its default topic and each one
it published to or delivered from, up to ``MAX_TOPICS``). They are read from the broker at
most every ``BROKER_STATS_TTL_S`` seconds, however often ``/metrics`` is scraped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Literal

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

from mqctl.core.backend import TopicStats
from mqctl.core.errors import MQError
from mqctl.logs import request_id

if TYPE_CHECKING:
    from fastapi import FastAPI

    from mqctl.core.broker import Broker
    from mqctl.services.hub import Hub

log = logging.getLogger(__name__)

BROKER_STATS_TTL_S = 5.0
"""The broker gauges are read at most this often."""
BROKER_STATS_TIMEOUT_S = 2.0
MAX_TOPICS = 100
"""Topics whose broker gauges one instance reports; more are left out (and logged once)."""

REJECTION_REASONS: dict[str, str] = {
    "invalid_request": "invalid",
    "invalid_message": "invalid",
    "request_too_large": "too_large",
    "message_too_large": "too_large",
    "queue_full": "capacity",
    "broker_unavailable": "broker_down",
    "broker_out_of_memory": "broker_down",
    "broker_refused": "broker_down",
    "unauthorized": "unauthorized",
    "internal_error": "internal_error",
}
"""Service A's error codes, as the reasons of ``mqctl_publish_rejected_total``."""

_POLL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


class BrokerGauges(Collector):
    """The broker's view of the served topics, read at most every ``ttl_s`` seconds."""

    def __init__(
        self,
        *,
        ttl_s: float = BROKER_STATS_TTL_S,
        timeout_s: float = BROKER_STATS_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.broker: Broker | None = None
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._topics: dict[str, None] = {}  # insertion-ordered set
        self._stats: list[TopicStats] = []
        self._up: bool | None = None
        self._read_at = -math.inf
        self._lock = asyncio.Lock()
        self.reads = 0
        """How many times the broker was read (for tests)."""

    def serve(self, topic: str) -> None:
        """Report ``topic`` from now on."""
        if topic in self._topics:
            return
        if len(self._topics) >= MAX_TOPICS:
            if len(self._topics) == MAX_TOPICS:
                log.warning("Reporting broker gauges for the first %d topics only; %r is left out", MAX_TOPICS, topic)
                self._topics[""] = None  # a marker: warned once
            return
        self._topics[topic] = None

    @property
    def topics(self) -> list[str]:
        return [t for t in self._topics if t]

    async def refresh(self) -> None:
        """Read the broker's stats of every served topic unless the last read is recent."""
        if self.broker is None or self._clock() - self._read_at < self.ttl_s:
            return
        async with self._lock:
            if self._clock() - self._read_at < self.ttl_s:
                return  # another scrape read them while this one waited
            stats: list[TopicStats] = []
            try:
                async with asyncio.timeout(self.timeout_s):
                    for topic in self.topics:
                        stats.append(await self.broker.stats(topic))
            except (MQError, TimeoutError) as exc:
                log.debug("Could not read the broker's stats for /metrics: %s", exc)
                self._up, self._stats = False, []
            else:
                self._up, self._stats = True, stats
            self.reads += 1
            self._read_at = self._clock()

    def collect(self) -> Iterator[Metric]:
        if self._up is None:
            return
        yield GaugeMetricFamily(
            "mqctl_broker_up", "1 if the last read of the broker's stats worked, else 0.", value=int(self._up)
        )
        length = GaugeMetricFamily("mqctl_topic_length", "Entries retained in the topic.", labels=["topic"])
        dead = GaugeMetricFamily("mqctl_topic_dead_letters", "Dead letters of the topic.", labels=["topic"])
        lag = GaugeMetricFamily(
            "mqctl_group_lag", "Messages not yet delivered to the group (its backlog).", labels=["topic", "group"]
        )
        pending = GaugeMetricFamily(
            "mqctl_group_pending", "Messages delivered to the group, not yet acknowledged.", labels=["topic", "group"]
        )
        oldest = GaugeMetricFamily(
            "mqctl_group_oldest_pending_age_seconds",
            "Age of the group's oldest pending message (0 when nothing is pending).",
            labels=["topic", "group"],
        )
        consumers = GaugeMetricFamily(
            "mqctl_group_consumers", "Consumers the broker knows in the group.", labels=["topic", "group"]
        )
        for topic in self._stats:
            length.add_metric([topic.topic], topic.length)
            dead.add_metric([topic.topic], topic.dead_letters)
            for group in topic.groups:
                labels = [topic.topic, group.name]
                lag.add_metric(labels, group.lag)
                pending.add_metric(labels, group.pending)
                oldest.add_metric(labels, group.oldest_pending_age_s or 0.0)
                consumers.add_metric(labels, group.consumers)
        yield from (length, dead, lag, pending, oldest, consumers)


class Metrics:
    """What both services expose: HTTP latency and the broker gauges, on a registry of their own."""

    def __init__(self, *, default_topic: str | None = None) -> None:
        self.registry = CollectorRegistry()
        self.http_seconds = Histogram(
            "mqctl_http_request_duration_seconds",
            "HTTP requests, from the first byte in to the last byte out.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.broker_gauges = BrokerGauges()
        self.registry.register(self.broker_gauges)
        if default_topic is not None:
            self.broker_gauges.serve(default_topic)

    async def exposition(self) -> bytes:
        """Every metric in the Prometheus text format (the broker gauges refreshed if stale)."""
        await self.broker_gauges.refresh()
        self.fold()
        return generate_latest(self.registry)

    def fold(self) -> None:
        """Move counts kept in plain ints into the Prometheus counters (before a scrape)."""

    def route_of(self, scope: Scope) -> str:
        """The route template of a request (``unmatched`` for one refused before routing, or a 404)."""
        return getattr(scope.get("route"), "path", None) or "unmatched"

    def observe_request(self, scope: Scope, route: str, status: int, seconds: float, error: str | None) -> None:
        """Called by ``Observe`` once per HTTP request; ``error`` is the error code answered, if any."""
        self.http_seconds.labels(scope.get("method", ""), route, str(status)).observe(seconds)


class IngestMetrics(Metrics):
    """Service A's metrics."""

    PUBLISH_PATHS = frozenset({"/messages", "/messages/batch"})

    def __init__(self, *, default_topic: str | None = None) -> None:
        super().__init__(default_topic=default_topic)
        self.published = Counter(
            "mqctl_messages_published", "Messages accepted (202) by this service.", ["topic"], registry=self.registry
        )
        self.rejected = Counter(
            "mqctl_publish_rejected",
            "Publish requests refused, by reason (a refused batch counts once).",
            ["reason"],
            registry=self.registry,
        )
        for reason in dict.fromkeys(REJECTION_REASONS.values()):
            self.rejected.labels(reason)  # present at 0 from the start

    def route_of(self, scope: Scope) -> str:
        path = scope.get("path")
        return path if path in self.PUBLISH_PATHS and "route" not in scope else super().route_of(scope)

    def published_to(self, topic: str, count: int) -> None:
        self.published.labels(topic).inc(count)
        self.broker_gauges.serve(topic)

    def observe_request(self, scope: Scope, route: str, status: int, seconds: float, error: str | None) -> None:
        super().observe_request(scope, route, status, seconds, error)
        if error is not None and scope.get("method") == "POST" and scope.get("path") in self.PUBLISH_PATHS:
            self.rejected.labels(REJECTION_REASONS.get(error, "other")).inc()


class ConnectionCounters:
    """What the WebSocket connections of one (topic, mode, group) count, in plain ints.

    Every connection with those labels shares one instance. ``DeliveryMetrics.fold`` moves
    the counts into the Prometheus counters at each scrape: a ``Counter.inc`` takes a lock,
    too dear once per frame on the delivery path.
    """

    __slots__ = ("_counters", "acknowledged", "delivered", "nacked", "redelivered")

    def __init__(
        self,
        delivered: Counter,
        redelivered: Counter | None = None,
        acknowledged: Counter | None = None,
        nacked: Counter | None = None,
    ) -> None:
        self.delivered = 0
        self.redelivered = 0
        self.acknowledged = 0
        self.nacked = 0
        self._counters = (delivered, redelivered, acknowledged, nacked)

    def sent(self, attempt: int) -> None:
        """A message frame was written to the socket."""
        self.delivered += 1
        if attempt > 1:
            self.redelivered += 1

    def settled(self, verb: Literal["ack", "nack"], count: int = 1) -> None:
        """The broker took ``count`` acks or nacks."""
        if verb == "ack":
            self.acknowledged += count
        else:
            self.nacked += count

    def fold(self) -> None:
        """Add the counts to their Prometheus counters and start again from zero."""
        delivered, redelivered, acknowledged, nacked = self._counters
        counts = (self.delivered, self.redelivered, self.acknowledged, self.nacked)
        self.delivered = self.redelivered = self.acknowledged = self.nacked = 0
        for counter, count in zip((delivered, redelivered, acknowledged, nacked), counts, strict=True):
            if counter is not None and count:
                counter.inc(count)


class DeliveryMetrics(Metrics):
    """Service B's metrics."""

    def __init__(self, *, default_topic: str | None = None) -> None:
        super().__init__(default_topic=default_topic)
        r = self.registry
        self.delivered = Counter(
            "mqctl_messages_delivered", "Message frames written to WebSocket clients.", ["topic", "mode"], registry=r
        )
        self.acknowledged = Counter(
            "mqctl_messages_acknowledged",
            "Acks the broker took (client frames or auto_ack).",
            ["topic", "group"],
            registry=r,
        )
        self.nacked = Counter("mqctl_messages_nacked", "Nacks the broker took.", ["topic", "group"], registry=r)
        self.redelivered = Counter(
            "mqctl_messages_redelivered", "Deliveries written with attempt > 1.", ["topic", "group"], registry=r
        )
        self.dead_lettered = Counter(
            "mqctl_messages_dead_lettered",
            "Messages this instance moved to the dead letters (last nack, ack timeout, undecodable).",
            ["topic", "group"],
            registry=r,
        )
        self.poll_seconds = Histogram(
            "mqctl_poll_cycle_seconds",
            "One read from the broker: it blocks up to poll_interval and returns early when a message lands.",
            ["mode"],
            buckets=_POLL_BUCKETS,
            registry=r,
        )
        self.hub: HubGauges | None = None
        self._tallies: dict[tuple[str, str, str | None], ConnectionCounters] = {}

    def fold(self) -> None:
        for tally in self._tallies.values():
            tally.fold()

    def watch_hub(self, hub: Callable[[], Hub | None], capacity: int) -> None:
        """Report the connections of the hub that ``hub()`` returns (None: not running)."""
        self.hub = HubGauges(hub, capacity)
        self.registry.register(self.hub)

    def for_connection(self, topic: str, mode: str, group: str | None) -> ConnectionCounters:
        """The counts a connection moves, shared by every connection with the same labels
        (so none is lost when a connection ends before a scrape)."""
        self.broker_gauges.serve(topic)
        key = (topic, mode, group)
        tally = self._tallies.get(key)
        if tally is None:
            if group is None:
                tally = ConnectionCounters(self.delivered.labels(topic, mode))
            else:
                tally = ConnectionCounters(
                    self.delivered.labels(topic, mode),
                    self.redelivered.labels(topic, group),
                    self.acknowledged.labels(topic, group),
                    self.nacked.labels(topic, group),
                )
            self._tallies[key] = tally
        return tally

    def dead_letter_counter(self, topic: str, group: str) -> Callable[[int], None]:
        """A ``Subscription.on_dead_letter`` callback."""
        return self.dead_lettered.labels(topic, group).inc

    def poll_observer(self, mode: str) -> Callable[[float], None]:
        """A reader's ``on_poll`` callback."""
        return self.poll_seconds.labels(mode).observe


class HubGauges(Collector):
    """Service B's WebSocket clients, counted at each scrape."""

    def __init__(self, hub: Callable[[], Hub | None], capacity: int) -> None:
        self._hub = hub
        self.capacity = capacity

    def collect(self) -> Iterator[Metric]:
        count = {"group": 0, "broadcast": 0}
        deepest = {"group": 0, "broadcast": 0}
        hub = self._hub()
        for connection in hub.clients() if hub is not None else ():
            count[connection.mode] += 1
            deepest[connection.mode] = max(deepest[connection.mode], connection.queued)
        connections = GaugeMetricFamily("mqctl_websocket_connections", "Connected WebSocket clients.", labels=["mode"])
        outbox = GaugeMetricFamily(
            "mqctl_websocket_outbox_frames_max", "Frames waiting in the fullest client outbox.", labels=["mode"]
        )
        for mode in count:
            connections.add_metric([mode], count[mode])
            outbox.add_metric([mode], deepest[mode])
        yield connections
        yield outbox
        yield GaugeMetricFamily(
            "mqctl_websocket_outbox_capacity_frames", "Frames one client's outbox holds.", value=self.capacity
        )


# -- per request ------------------------------------------------------------------------


class _Exchange:
    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: str | None = None


_exchange: ContextVar[_Exchange | None] = ContextVar("mqctl_exchange", default=None)


def note_error(code: str) -> None:
    """Record the error code the current HTTP request is answered with (for the rejection counts)."""
    exchange = _exchange.get()
    if exchange is not None:
        exchange.error = code


class Observe:
    """ASGI middleware: time each HTTP request, give it an id for the logs and count its error.

    The id is the client's ``X-Request-ID`` if it sent a sane one, else a new one; either
    way it is echoed in the response's ``X-Request-ID`` and set as ``mqctl.logs.request_id``.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _incoming_request_id(scope) or os.urandom(16).hex()  # uuid4() costs ~4% of Service A's CPU
        header = (b"x-request-id", rid.encode())
        exchange = _Exchange()
        status = 500  # what the server answers if the app raises before starting a response

        async def send_observed(message: ASGIMessage) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        started = time.perf_counter()
        rid_token = request_id.set(rid)
        exchange_token = _exchange.set(exchange)
        try:
            await self.app(scope, receive, send_observed)
        finally:
            _exchange.reset(exchange_token)
            request_id.reset(rid_token)
            self.metrics.observe_request(
                scope, self.metrics.route_of(scope), status, time.perf_counter() - started, exchange.error
            )


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID.fullmatch(text) else None
    return None


def add_metrics_route(app: FastAPI, metrics: Metrics) -> None:
    """``GET /metrics`` on ``app``: ``metrics`` in the Prometheus text format."""

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        """Counters, gauges and histograms of this instance, in the Prometheus text format."""
        return Response(await metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
