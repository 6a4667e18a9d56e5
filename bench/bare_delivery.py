"""The baseline of the delivery benchmark: a bare Starlette WebSocket endpoint, no mqctl in it.

    WS   /ws?n=N&topic=T[&wait=1]   sends a ``subscribed`` frame, then (with ``wait=1``, after the
                                    next POST /go) N identical frames encoded once, from memory
    POST /go                        starts every connection waiting with ``wait=1``
    GET  /health                    200

The frame has the JSON shape and size of Service B's message frames (see ``frame``). Run it
with uvicorn as a factory (``bench/bench_delivery.py`` does)::

    uvicorn bare_delivery:app --factory --app-dir bench
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

FRAME_ID = "1700000000000-0"


def frame(topic: str, message: dict[str, Any], entry_id: str = FRAME_ID) -> str:
    """A message frame as Service B writes it (``mqctl.services.delivery.frames.message_frame``)."""
    body = {
        "id": entry_id,
        "type": message["type"],
        "content": message["content"],
        "headers": dict(message["headers"]),
        "attempt": 1,
        "topic": topic,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def app() -> Starlette:
    go = [asyncio.Event()]

    async def start(request: Request) -> JSONResponse:
        event, go[0] = go[0], asyncio.Event()
        event.set()
        return JSONResponse({"status": "started"})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def push(websocket: WebSocket) -> None:
        await websocket.accept()
        n = int(websocket.query_params["n"])
        topic = websocket.query_params.get("topic", "bench")
        text = frame(topic, json.loads(websocket.query_params["message"]))
        started = go[0]
        subscribed = {"event": "subscribed", "topic": topic, "mode": "bare", "group": None, "filter": None}
        await websocket.send_text(json.dumps(subscribed, separators=(",", ":")))
        if websocket.query_params.get("wait") == "1":
            await started.wait()
        for _ in range(n):
            await websocket.send_text(text)
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass

    routes = [
        Route("/health", health),
        Route("/go", start, methods=["POST"]),
        WebSocketRoute("/ws", push),
    ]
    return Starlette(routes=routes)
