"""Service A's metrics, beside those of ``observability.py``:

    mqctl_messages_published_total          counter    topic                  messages accepted (answered 202)
    mqctl_publish_rejected_total            counter    reason                 publish requests refused (a batch: once)

Reasons of ``mqctl_publish_rejected_total``: invalid, too_large, capacity, broker_down,
unauthorized, internal_error.
"""

from __future__ import annotations

from prometheus_client import Counter
from starlette.types import Scope

from mqctl.services.observability import Metrics

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
