"""The baseline of the end-to-end benchmark: POST in, WebSocket out, over Redis, with no mqctl.

One bare FastAPI app that ``mqctl loadtest`` can drive in place of Service A and Service B:

    POST /messages   {"topic", ...}: one XADD of the body (topic removed) to ``bench-bare:<topic>``; 202
    WS   /ws?topic=  a ``subscribed`` frame, then every entry added to the stream after it, read
                     by a blocking XREAD (up to 2 s, waking on arrival, like Service B's default
                     poll cycle) and sent as Service B's message frame. Frames from the client
                     (the loadtest's acks) are read and ignored: no groups, no acks.
    GET  /health     200

    BENCH_REDIS_URL=redis://127.0.0.1:6390/0 uvicorn bare_pipeline:app --factory --app-dir bench
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from redis.exceptions import ResponseError

PREFIX = "bench-bare:"
BLOCK_MS = 2000


def app() -> FastAPI:
    url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    state: dict[str, aioredis.Redis] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["redis"] = aioredis.Redis.from_url(url)
        try:
            yield
        finally:
            await state.pop("redis").aclose()

    api = FastAPI(lifespan=lifespan)

    @api.post("/messages", status_code=202)
    async def publish(body: dict[str, Any]) -> dict[str, str]:
        topic = str(body.pop("topic", None) or "messages")
        entry_id = await state["redis"].xadd(PREFIX + topic, {"m": orjson.dumps(body)})
        return {"id": entry_id.decode(), "status": "accepted", "topic": topic}

    @api.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.websocket("/ws")
    async def deliver(websocket: WebSocket) -> None:
        await websocket.accept()
        topic = websocket.query_params.get("topic") or "messages"
        stream = PREFIX + topic
        client = state["redis"]
        try:
            position = (await client.xinfo_stream(stream))["last-generated-id"].decode()
        except ResponseError:  # no such stream yet
            position = "0-0"
        subscribed = {"event": "subscribed", "topic": topic, "mode": "bare", "group": None, "filter": None}
        await websocket.send_text(json.dumps(subscribed, separators=(",", ":")))

        async def read_forever() -> None:
            nonlocal position
            while True:
                reply = await client.xread({stream: position}, count=100, block=BLOCK_MS)
                for _, entries in reply:
                    for raw_id, fields in entries:
                        position = raw_id.decode()
                        message = orjson.loads(fields[b"m"])
                        frame = {
                            "id": position,
                            "type": message.get("type"),
                            "content": message.get("content"),
                            "headers": message.get("headers") or {},
                            "attempt": 1,
                            "topic": topic,
                        }
                        await websocket.send_text(json.dumps(frame, separators=(",", ":"), ensure_ascii=False))

        sender = asyncio.create_task(read_forever())
        try:
            while True:
                await websocket.receive_text()  # acks: ignored
        except WebSocketDisconnect:
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender

    return api
