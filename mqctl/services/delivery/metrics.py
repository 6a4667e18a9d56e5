"""Service B's metrics, beside those of ``observability.py``:

    mqctl_messages_delivered_total          counter    topic, mode            message frames written to clients
    mqctl_messages_acknowledged_total       counter    topic, group           acks taken (client frames or auto_ack)
    mqctl_messages_nacked_total             counter    topic, group           nacks taken
    mqctl_messages_redelivered_total        counter    topic, group           deliveries written with attempt > 1
    mqctl_messages_dead_lettered_total      counter    topic, group           moved to the dead letters here
    mqctl_websocket_connections             gauge      mode                   connected WebSocket clients
    mqctl_websocket_outbox_frames_max       gauge      mode                   frames waiting in the fullest outbox
    mqctl_websocket_outbox_capacity_frames  gauge                             frames an outbox holds (ws_send_buffer)
    mqctl_poll_cycle_seconds                histogram  mode                   one read from the broker (see below)

A poll cycle blocks up to the poll interval and returns early when a message lands. Modes:
group, broadcast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Literal, Protocol

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mqctl.services.observability import Metrics

_POLL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0)


class Client(Protocol):
    """What the gauges read of a connected client (``connection.Connection``)."""

    @property
    def mode(self) -> str: ...

    @property
    def queued(self) -> int: ...


class Clients(Protocol):
    """What the gauges read of the hub (``hub.Hub``)."""

    def clients(self) -> Iterable[Client]: ...


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

    def watch_hub(self, hub: Callable[[], Clients | None], capacity: int) -> None:
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

    def __init__(self, hub: Callable[[], Clients | None], capacity: int) -> None:
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
