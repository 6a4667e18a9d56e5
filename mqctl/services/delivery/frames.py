"""What Service B writes to a WebSocket client: frames as compact JSON text, close codes and reasons."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import orjson
from starlette.websockets import WebSocket

from mqctl.core import tracing
from mqctl.core.message import Message
from mqctl.core.subscription import Delivery

GOING_AWAY = 1001
POLICY_VIOLATION = 1008
TOO_BIG = 1009
INTERNAL_ERROR = 1011
TOO_SLOW = 4001
TOO_SLOW_REASON = "send buffer full: client too slow; reconnect to resume"


def dumps(frame: dict[str, Any]) -> str:
    """One frame as compact JSON text."""
    try:
        return orjson.dumps(frame).decode()  # several times faster, and this runs once per frame
    except TypeError:  # what orjson does not take (an int over 64 bits...): the standard library
        return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def message_frame(entry_id: str, message: Message, *, attempt: int, topic: str, position: str | None = None) -> str:
    """The frame that carries one message to a client. A broadcast frame carries ``position``, the
    ``last_id`` to resume after it, where that is not the message's id (a partitioned topic)."""
    frame = {
        "id": entry_id,
        "type": message.type,
        "content": message.content,
        "headers": dict(tracing.delivered(message.headers, topic, entry_id)),
        "attempt": attempt,
        "topic": topic,
    }
    if position is not None and position != entry_id:
        frame["position"] = position
    return dumps(frame)


def frame_of(delivery: Delivery) -> str:
    """``message_frame`` of a delivery; spliced from its stored bytes where it carries them: the
    stored ``{"type":...,"content":...,"headers":{...}}`` with ``id`` put before and ``attempt``
    and ``topic`` after, the content never decoded and encoded again."""
    stored = delivery.payload
    if stored is None or tracing.traced(delivery.message.headers):
        return message_frame(delivery.id, delivery.message, attempt=delivery.attempt, topic=delivery.topic)
    topic = _topics.get(delivery.topic)
    if topic is None:
        topic = _topics[delivery.topic] = ',"topic":' + _string(delivery.topic) + "}"
    return '{"id":' + _string(delivery.id) + "," + stored[1:-1].decode() + ',"attempt":' + str(delivery.attempt) + topic


_topics: dict[str, str] = {}
"""A frame's closing text by topic: ``,"topic":"<topic>"}``. (Topics are few and named by users.)"""


def _string(value: str) -> str:
    """``value`` as a JSON string; ids and topic names need no escaping, checked cheaply."""
    if '"' in value or "\\" in value or not value.isprintable():
        return json.dumps(value, ensure_ascii=False)
    return '"' + value + '"'


def error_frame(code: str, detail: str) -> str:
    """The frame that tells a client what was wrong with what it sent."""
    return dumps({"error": code, "detail": detail})


async def close_quietly(websocket: WebSocket, code: int, reason: str, *, timeout_s: float = 2.0) -> None:
    """Send the close frame, giving up after ``timeout_s`` or if the socket is gone."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout_s):
            await websocket.close(code, close_reason(reason))


def close_reason(reason: str) -> str:
    """``reason`` cut to the 123 bytes a WebSocket close frame can carry."""
    return reason.encode()[:123].decode(errors="ignore")
