"""A trace context carried in message headers: one trace from ``POST /messages`` through a
handler of ``mqctl worker`` and through Service B to the WebSocket client.

mqctl speaks W3C Trace Context through OpenTelemetry's API (the ``mqctl[otel]`` extra,
``opentelemetry-api``) and records nothing by itself: what records and exports spans is the
application's choice, e.g. ``opentelemetry-instrument mqctl serve-a`` (``opentelemetry-distro``
and an exporter) or a ``TracerProvider`` set in code. Without one, spans are not recorded but a
``traceparent`` that came in still goes on; without the API installed, everything here is a no-op.

- Publishing in a span (the library, Service A's ``publish <topic>`` span, which continues the
  request's ``traceparent``) stamps the message's headers with the span's context, unless the
  message already carries one.
- A handler runs in a ``process <topic>`` span, the child of the message's context.
- Service B records a ``deliver <topic>`` span per frame and sends the frame with that span's
  ``traceparent``, so a WebSocket client can go on with the trace.

A message without a ``traceparent`` costs one dictionary lookup at each consumer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from mqctl.core.message import Message

if TYPE_CHECKING:
    from opentelemetry.trace import SpanKind, Tracer

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind
except ImportError:  # pragma: no cover - the extra is not installed: everything is a no-op
    propagate = trace = None  # type: ignore[assignment]

TRACEPARENT = "traceparent"
SYSTEM = {"messaging.system": "mqctl"}


def available() -> bool:
    """Whether OpenTelemetry's API is installed (else nothing here does anything)."""
    return trace is not None


def _tracer() -> Tracer:
    from mqctl.version import __version__

    return trace.get_tracer("mqctl", __version__)


def stamped(message: Message | Mapping[str, Any]) -> Message | Mapping[str, Any]:
    """``message`` with the current span's context in its headers, if there is a span here and
    the message carries no context of its own; else ``message`` itself."""
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return message
    if isinstance(message, Message):
        headers: Any = message.headers
    elif isinstance(message, Mapping):
        headers = message.get("headers") or {}
    else:
        return message  # not a message: the publish's own checks say what is wrong
    if not isinstance(headers, Mapping) or TRACEPARENT in headers:
        return message
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return message
    if isinstance(message, Message):
        return Message(message.type, message.content, {**headers, **carrier})
    return {**message, "headers": {**headers, **carrier}}


@contextlib.contextmanager
def producing(topic: str, request_headers: Mapping[str, str]) -> Iterator[None]:
    """Service A's ``publish <topic>`` span around a publish: the child of the span already
    current (an instrumented server) or else of the request's ``traceparent``, if any."""
    if trace is None:
        yield
        return
    parent = None if trace.get_current_span().get_span_context().is_valid else propagate.extract(request_headers)
    attributes = {**SYSTEM, "messaging.operation.type": "send", "messaging.destination.name": topic}
    with _tracer().start_as_current_span(f"publish {topic}", parent, SpanKind.PRODUCER, attributes):
        yield


def consuming(
    operation: str, topic: str, message_id: str, headers: Mapping[str, str], group: str | None = None
) -> contextlib.AbstractContextManager[Any]:
    """A ``<operation> <topic>`` span, the child of the message's context, made current while
    the block runs (it records an exception that leaves the block); nothing for a message
    without a context."""
    if trace is None or TRACEPARENT not in headers:
        return contextlib.nullcontext()
    attributes = {**SYSTEM, "messaging.operation.type": operation, "messaging.destination.name": topic}
    attributes["messaging.message.id"] = message_id
    if group is not None:
        attributes["messaging.consumer.group.name"] = group
    return _tracer().start_as_current_span(
        f"{operation} {topic}", propagate.extract(headers), SpanKind.CONSUMER, attributes
    )


def traced(headers: Mapping[str, str]) -> bool:
    """True if ``delivered`` would add to these headers (tracing is on and they carry a context)."""
    return trace is not None and TRACEPARENT in headers


def delivered(headers: Mapping[str, str], topic: str, message_id: str) -> Mapping[str, str]:
    """Service B: the headers a frame carries to a client, with the context of a ``deliver
    <topic>`` span recorded for it (the child of the message's); ``headers`` as they are for a
    message without a context."""
    if trace is None or TRACEPARENT not in headers:
        return headers
    with consuming("deliver", topic, message_id, headers):
        carrier = dict(headers)
        propagate.inject(carrier)
    return carrier
