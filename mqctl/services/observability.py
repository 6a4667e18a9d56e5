"""What both services observe: Prometheus metrics at ``GET /metrics`` and a request id per request.

Each app has a ``CollectorRegistry`` of its own (never the global one), so any number of
apps can live in one process. Each service adds its own metrics to the ones here
(``ingest/metrics.py``, ``delivery/metrics.py``).

Both services:
    mqctl_http_request_duration_seconds     histogram  method, route, status  HTTP requests, by route template
    mqctl_broker_up                         gauge                             1 if the last read of broker stats worked
    mqctl_topic_length                      gauge      topic                  entries retained (acked ones included)
    mqctl_topic_dead_letters                gauge      topic                  dead letters waiting
    mqctl_group_lag                         gauge      topic, group           not yet delivered to the group (backlog)
    mqctl_group_pending                     gauge      topic, group           delivered, not yet acknowledged
    mqctl_group_oldest_pending_age_seconds  gauge      topic, group           oldest pending message's age (0: none)
    mqctl_group_consumers                   gauge      topic, group           consumers the broker knows in the group

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
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
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

log = logging.getLogger(__name__)

BROKER_STATS_TTL_S = 5.0
"""The broker gauges are read at most this often."""
BROKER_STATS_TIMEOUT_S = 2.0
MAX_TOPICS = 100
"""Topics whose broker gauges one instance reports; more are left out (and logged once)."""

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
