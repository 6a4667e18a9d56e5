"""Prometheus series of a worker's handlers, served by ``mqctl worker --metrics-port``.

    mqctl_handler_messages_total     counter    handler, outcome   processed, failed, retried, dead_lettered
    mqctl_handler_running            gauge      handler            calls running now
    mqctl_handler_duration_seconds   histogram  handler            one call of the handler, settle excluded

``failed`` counts every call that did not return (an exception, a timeout, content that did
not validate); each of those is then either ``retried`` or ``dead_lettered``. The counts are
the runners' own plain integers, read at scrape time; a registry of its own, never the global one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mqctl.worker.app import App

OUTCOMES = ("processed", "failed", "retried", "dead_lettered")


class _HandlerCollector(Collector):
    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            "mqctl_handler_messages", "Messages a handler has finished, by outcome.", labels=["handler", "outcome"]
        )
        running = GaugeMetricFamily("mqctl_handler_running", "Handler calls running now.", labels=["handler"])
        for runner in self.app.runners:
            name = runner.handler.name
            for outcome in OUTCOMES:
                messages.add_metric([name, outcome], getattr(runner.counts, outcome))
            running.add_metric([name], runner.counts.running)
        yield messages
        yield running


def instrument(app: App) -> CollectorRegistry:
    """A registry with ``app``'s handler series; the duration histogram is fed through ``app.on_call``."""
    registry = CollectorRegistry()
    registry.register(_HandlerCollector(app))
    durations = Histogram(
        "mqctl_handler_duration_seconds",
        "Time one call of a handler took.",
        ["handler"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    )
    app.on_call = lambda name, seconds: durations.labels(name).observe(seconds)
    return registry


def serve(registry: CollectorRegistry, host: str, port: int) -> Any:
    """Serve ``registry`` at ``http://host:port/metrics`` from a thread; returns the server
    (``server.shutdown()`` stops it)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
