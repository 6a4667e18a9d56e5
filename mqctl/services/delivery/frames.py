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
