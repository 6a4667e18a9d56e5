"""``mqctl serve-a``, ``mqctl serve-b`` and ``mqctl up``: the services, one or both in a process."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from mqctl.cli.options import (
    BrokerOpt,
    HostOpt,
    LogFormatOpt,
    LogLevelOpt,
    MaxBacklogOpt,
    TopicOpt,
    load_settings,
    setup_logging,
)
from mqctl.console import err, run
from mqctl.core.errors import MQError

if TYPE_CHECKING:
    import socket

    from mqctl.config import Settings


def _serve_one(create_app: Any, settings: Settings, host: str, port: int, sock: socket.socket | None = None) -> None:
    """Run one service until SIGINT/SIGTERM, its logs set up and its secrets masked."""
    from mqctl.services.serving import Endpoint, serve

    setup_logging(settings)
    endpoint = Endpoint(create_app(settings), host, port, sock=sock)
    run(serve([endpoint], log_level=settings.log_level, secrets=[settings.token]))


def _serve_ingest(settings: Settings, host: str, port: int, sock: socket.socket) -> None:
    """One of ``serve-a --workers``'s processes (module-level: spawned processes unpickle it)."""
    from mqctl.services.ingest import create_app

    _serve_one(create_app, settings, host, port, sock)


def _serve_ingest_workers(settings: Settings, host: str, port: int, workers: int) -> None:
    import functools

    from mqctl.services.supervisor import bind, supervise

    setup_logging(settings)
    try:
        sock = bind(host, port)
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot listen on {host}:{port}: {exc.strerror or exc}.")
        raise typer.Exit(1) from None
    err.print(f"Service A on http://{host}:{port} in {workers} processes; Ctrl+C stops them all.")
    code = supervise(functools.partial(_serve_ingest, settings, host, port), sock, workers)
    raise typer.Exit(code)


def serve_a(
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8002,
    host: HostOpt = "127.0.0.1",
    broker: BrokerOpt = None,
    max_backlog: MaxBacklogOpt = None,
    topic: TopicOpt = None,
    replicas: Annotated[
        int | None,
        typer.Option(
            "--replicas",
            min=0,
            help="Answer 202 only once this many Redis replicas have each message (WAIT): it survives its "
            "master's loss, at the cost of a replication round trip per publish batch. 0: off.",
            show_default="0, env MQCTL_REPLICAS",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            envvar="MQCTL_WORKERS",
            help="Processes serving the port (one core each). Above 1, a supervisor runs them and replaces "
            "one that dies.",
        ),
    ] = 1,
    log_level: LogLevelOpt = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Run Service A: REST ingest (POST /messages), Swagger UI at /docs."""
    from mqctl.services.ingest import create_app

    settings = load_settings(
        broker_url=broker,
        max_backlog=max_backlog,
        topic=topic,
        replicas=replicas,
        log_level=log_level,
        log_format=log_format,
    )
    if workers > 1:
        _serve_ingest_workers(settings, host, port, workers)  # exits with the supervisor's code
    else:
        _serve_one(create_app, settings, host, port)


def serve_b(
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8003,
    host: HostOpt = "127.0.0.1",
    broker: BrokerOpt = None,
    max_backlog: MaxBacklogOpt = None,
    topic: TopicOpt = None,
    poll_interval: Annotated[
        float | None,
        typer.Option(
            "--poll-interval",
            min=0.01,
            help="Poll cycle in seconds: the longest blocking read (it wakes at once when a message lands).",
            show_default="2.0, env MQCTL_POLL_INTERVAL_S",
        ),
    ] = None,
    log_level: LogLevelOpt = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Run Service B: WebSocket delivery at /ws, a live viewer page at /."""
    from mqctl.services.delivery import create_app

    settings = load_settings(
        broker_url=broker,
        max_backlog=max_backlog,
        topic=topic,
        poll_interval_s=poll_interval,
        log_level=log_level,
        log_format=log_format,
    )
    _serve_one(create_app, settings, host, port)


async def _unusable(url: str, timeout_s: float) -> str | None:
    """Why the broker at ``url`` cannot be used now (no answer, or a refusal), None if it can."""
    from mqctl.connect import open_broker

    broker = open_broker(url)
    try:
        async with asyncio.timeout(timeout_s):
            await broker.ping(write=True)
        return None
    except TimeoutError:
        return f"No Redis answered at {url} within {timeout_s:g} s."
    except MQError as exc:
        return str(exc)
    finally:
        await broker.aclose()


def up(
    port_a: Annotated[int, typer.Option("--port-a", help="Service A's port.")] = 8002,
    port_b: Annotated[int, typer.Option("--port-b", help="Service B's port.")] = 8003,
    host: HostOpt = "127.0.0.1",
    broker: BrokerOpt = None,
    max_backlog: MaxBacklogOpt = None,
    poll_interval: Annotated[
        float | None,
        typer.Option("--poll-interval", min=0.01, help="Service B's poll cycle in seconds.", show_default="2.0"),
    ] = None,
    log_level: LogLevelOpt = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Run Service A and Service B together in one process (the quickest way to try mqctl).

    Without --broker (or MQCTL_BROKER_URL): Redis at 127.0.0.1:6379 if it answers, else memory://.
    """
    from mqctl.config import DEFAULT_BROKER_URL

    problem = None if broker is not None else asyncio.run(_unusable(DEFAULT_BROKER_URL, 1.0))
    if problem is not None:
        broker = "memory://"
        err.print(
            f"[yellow]{escape(problem)} Running on the embedded memory:// broker instead "
            "(messages live only as long as this process).[/yellow]"
        )
    settings = load_settings(
        broker_url=broker,
        max_backlog=max_backlog,
        poll_interval_s=poll_interval,
        log_level=log_level,
        log_format=log_format,
    )
    setup_logging(settings)
    run(_up(settings, host, port_a, port_b))


async def _up(settings: Any, host: str, port_a: int, port_b: int) -> None:
    from mqctl.services import delivery, ingest
    from mqctl.services.serving import Endpoint, serve
    from mqctl.services.startup import broker_for, check_broker

    broker = broker_for(settings)
    started = asyncio.Event()

    async def announce() -> None:
        await started.wait()
        err.print(
            f"[green]mqctl is up[/green] on {broker.url.split('@')[-1]}: "
            f"Service A http://{host}:{port_a}/docs, Service B ws://{host}:{port_b}/ws "
            f"(viewer http://{host}:{port_b}/). Ctrl+C stops both."
        )
        await check_broker(broker, "mqctl up")

    announcer = asyncio.create_task(announce())
    try:
        await serve(
            [
                Endpoint(ingest.create_app(settings, broker=broker), host, port_a, "Service A"),
                Endpoint(delivery.create_app(settings, broker=broker), host, port_b, "Service B"),
            ],
            log_level=settings.log_level,
            started=started,
            secrets=[settings.token],
        )
    finally:
        announcer.cancel()
        await broker.aclose()
