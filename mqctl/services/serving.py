"""Run one or both services under uvicorn, in this process, with a clean shutdown.

SIGINT and SIGTERM stop every server gracefully: first each app that has an
``app.state.before_shutdown`` coroutine function gets it awaited (up to ``graceful_s``;
Service B closes its WebSockets there with 1001, where uvicorn would use 1012), then
uvicorn stops accepting, lets in-flight requests finish (up to ``graceful_s``), and each
app's lifespan closes its broker, which hands unacknowledged deliveries back for
redelivery. A second signal skips what is left of the first step.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import uvicorn

log = logging.getLogger(__name__)

_TOKEN_IN_QUERY = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)


class RedactSecrets(logging.Filter):
    """Hide tokens (``?token=...`` in WebSocket URLs uvicorn logs, and the configured secrets)."""

    def __init__(self, secrets: Sequence[str | None] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        redacted = _TOKEN_IN_QUERY.sub(r"\1***", text)
        for secret in self.secrets:
            redacted = redacted.replace(secret, "***")
        if redacted != text:
            record.msg, record.args = redacted, None
        return True


_serving: contextvars.ContextVar[str] = contextvars.ContextVar("mqctl_serving", default="")


class NameTheServer(logging.Filter):
    """Prefix uvicorn's lines with the name of the endpoint whose server wrote them (``mqctl up``
    runs two servers in one process, and their lines would read the same)."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = _serving.get()
        if name and isinstance(record.msg, str):
            record.msg = f"{name}: {record.msg}"
        return True


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One app to serve on one address; ``name`` prefixes its server's log lines when several run."""

    app: Any
    host: str
    port: int
    name: str = ""
    sock: socket.socket | None = None
    """A socket already listening on host:port (``supervisor.bind``) to accept on instead."""


async def serve(
    endpoints: Sequence[Endpoint],
    *,
    log_level: str = "info",
    access_log: bool = False,
    graceful_s: float = 5.0,
    started: asyncio.Event | None = None,
    secrets: Sequence[str | None] = (),
) -> None:
    """Serve every endpoint until SIGINT/SIGTERM (or cancellation), then shut all down.

    ``secrets`` (a token, a password) are masked in every log line uvicorn writes.
    """
    redact = RedactSecrets(secrets)
    named = NameTheServer()
    uvicorn_loggers = [logging.getLogger(name) for name in ("uvicorn.error", "uvicorn.access")]
    for logger in uvicorn_loggers:
        logger.addFilter(redact)
        if len(endpoints) > 1:
            logger.addFilter(named)
    servers = [
        uvicorn.Server(
            uvicorn.Config(
                e.app,
                host=e.host,
                port=e.port,
                log_level=log_level,
                access_log=access_log,
                lifespan="on",
                # uvicorn annotates an int, but waits with asyncio: a fraction of a second works.
                timeout_graceful_shutdown=cast(int, graceful_s),
                ws_max_size=64 * 1024,
                # Service B's frames are a few hundred bytes: compressing each one costs the
                # server ~15% of its CPU per frame, and every client as much again to inflate it.
                ws_per_message_deflate=False,
                log_config=None,
            )
        )
        for e in endpoints
    ]
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def exit_all() -> None:
        for server in servers:
            server.should_exit = True

    async def shut_down() -> None:
        hooks = [getattr(getattr(e.app, "state", None), "before_shutdown", None) for e in endpoints]
        try:
            async with asyncio.timeout(graceful_s):
                await asyncio.gather(*(hook() for hook in hooks if hook is not None))
        except TimeoutError:
            log.warning("A service's shutdown step took over %g s; stopping anyway", graceful_s)
        except Exception:
            log.exception("A service's shutdown step failed; stopping anyway")
        finally:
            exit_all()

    def stop() -> None:
        if stopping:  # a second signal: stop now
            stopping[0].cancel()
            exit_all()
        else:
            stopping.append(asyncio.create_task(shut_down(), name="mqctl-shutdown"))

    for server in servers:
        # One handler for all servers: uvicorn's own would stop only the last one started.
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign, assignment]
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        tasks = []
        for server, endpoint in zip(servers, endpoints, strict=True):
            context = contextvars.copy_context()  # each server's lines carry its endpoint's name
            context.run(_serving.set, endpoint.name or f"{endpoint.host}:{endpoint.port}")
            sockets = [endpoint.sock] if endpoint.sock is not None else None
            tasks.append(asyncio.create_task(server.serve(sockets=sockets), context=context))
        if started is not None:
            while not all(s.started for s in servers) and not any(t.done() for t in tasks):
                await asyncio.sleep(0.05)
            started.set()
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        exit_all()  # one server failed to start or stopped: stop the others too
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()
    finally:
        for task in stopping:
            task.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        for logger in uvicorn_loggers:
            logger.removeFilter(named)
