"""Run one or both services under uvicorn, in this process, with a clean shutdown.

SIGINT and SIGTERM stop every server gracefully: uvicorn stops accepting, lets
in-flight requests finish (up to ``graceful_s``), and each app's lifespan closes its
broker, which hands unacknowledged deliveries back for redelivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One app to serve on one address."""

    app: Any
    host: str
    port: int


async def serve(
    endpoints: Sequence[Endpoint],
    *,
    log_level: str = "info",
    access_log: bool = False,
    graceful_s: float = 5.0,
    started: asyncio.Event | None = None,
) -> None:
    """Serve every endpoint until SIGINT/SIGTERM (or cancellation), then shut all down."""
    servers = [
        uvicorn.Server(
            uvicorn.Config(
                e.app,
                host=e.host,
                port=e.port,
                log_level=log_level,
                access_log=access_log,
                lifespan="on",
                timeout_graceful_shutdown=graceful_s,
                ws_max_size=64 * 1024,
                log_config=None,
            )
        )
        for e in endpoints
    ]
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for server in servers:
        # One handler for all servers: uvicorn's own would stop only the last one started.
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        tasks = [asyncio.create_task(s.serve()) for s in servers]
        if started is not None:
            while not all(s.started for s in servers) and not any(t.done() for t in tasks):
                await asyncio.sleep(0.05)
            started.set()
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stop()  # one server failed to start or stopped: stop the others too
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
