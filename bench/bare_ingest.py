"""The baselines of the ingest benchmark: bare FastAPI apps with no mqctl in them.

    noop_app   POST /messages parses the JSON body and answers 202, nothing else
    xadd_app   the same, plus one redis-py XADD of the body per request (one round trip each)

Both have GET /health. Run one with uvicorn as a factory (``bench/bench_ingest.py`` does)::

    BENCH_REDIS_URL=redis://127.0.0.1:6390/0 uvicorn bare_ingest:xadd_app --factory --app-dir bench
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI

STREAM = "bench-bare:messages"
"""The one stream the XADD app writes to (the benchmark deletes it between rounds)."""


def noop_app() -> FastAPI:
    app = FastAPI()

    @app.post("/messages", status_code=202)
    async def publish(body: dict[str, Any]) -> dict[str, str]:
        return {"status": "accepted"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def xadd_app() -> FastAPI:
    url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    client: dict[str, aioredis.Redis] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client["redis"] = aioredis.Redis.from_url(url)
        try:
            yield
        finally:
            await client.pop("redis").aclose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/messages", status_code=202)
    async def publish(body: dict[str, Any]) -> dict[str, str]:
        entry_id = await client["redis"].xadd(STREAM, {"m": orjson.dumps(body)})
        return {"id": entry_id.decode(), "status": "accepted"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
