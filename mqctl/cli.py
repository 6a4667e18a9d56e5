"""The ``mqctl`` command line: thin Typer shells over the library, the services and the clients.

Each command parses its options, calls one library coroutine with ``asyncio.run`` and
formats the result with Rich. An ``MQError`` becomes one line on stderr and exit code 1.
Heavy imports (uvicorn, the services) happen inside the commands that need them.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from mqctl import cli_ops, cli_worker
from mqctl.console import err, out, run
from mqctl.core.errors import MQError

T = TypeVar("T")

app = typer.Typer(
    name="mqctl",
    help="mqctl: an asynchronous message queue (memory, Redis Streams or NATS JetStream), its two services and tools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# -- shared options -------------------------------------------------------------

BrokerOpt = Annotated[
    str | None,
    typer.Option(
        "--broker",
        help="Broker URL: memory://, redis://[user:password@]host:port/db, rediss://..., "
        "or redis+cluster://host:port[,host:port...] (rediss+cluster:// for TLS)",
        show_default="redis://127.0.0.1:6379/0, env MQCTL_BROKER_URL",
    ),
]
HostOpt = Annotated[str, typer.Option("--host", help="Address to bind; 0.0.0.0 exposes the service to the network.")]
MaxBacklogOpt = Annotated[
    int | None,
    typer.Option(
        "--max-backlog",
        min=1,
        help="Refuse publishes once this many messages wait unacknowledged (the queue's capacity).",
        show_default="100000, env MQCTL_MAX_BACKLOG",
    ),
]
LogLevelOpt = Annotated[
    str | None,
    typer.Option("--log-level", help="debug, info, warning or error.", show_default="info, env MQCTL_LOG_LEVEL"),
]
LogFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        help="text (for people) or json (one object a line, with request and message ids).",
        show_default="text, env MQCTL_LOG_FORMAT",
    ),
]
TopicOpt = Annotated[
    str | None,
    typer.Option("--topic", help="Topic to use.", show_default="messages, env MQCTL_TOPIC"),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token", help="Bearer token for the services, if they require one.", envvar="MQCTL_TOKEN", show_default="none"
    ),
]


def _settings(**overrides: Any) -> Any:
    """Settings from MQCTL_* variables, with the flags that were given on top."""
    from pydantic import ValidationError

    from mqctl.config import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        err.print(f"[red]error:[/red] invalid setting: {problems}")
        raise typer.Exit(2) from None


def _setup_logging(settings: Any) -> None:
    from mqctl.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)


# -- services ---------------------------------------------------------------------


def _serve_one(create_app: Any, settings: Any, host: str, port: int) -> None:
    """Run one service until SIGINT/SIGTERM, its logs set up and its secrets masked."""
    from mqctl.services.server import Endpoint, serve

    _setup_logging(settings)
    run(serve([Endpoint(create_app(settings), host, port)], log_level=settings.log_level, secrets=[settings.token]))


@app.command("serve-a")
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
    log_level: LogLevelOpt = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Run Service A: REST ingest (POST /messages), Swagger UI at /docs."""
    from mqctl.services.ingest import create_app

    settings = _settings(
        broker_url=broker,
        max_backlog=max_backlog,
        topic=topic,
        replicas=replicas,
        log_level=log_level,
        log_format=log_format,
    )
    _serve_one(create_app, settings, host, port)


@app.command("serve-b")
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

    settings = _settings(
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


@app.command()
def up(
    port_a: Annotated[int, typer.Option("--port-a", help="Service A's port.")] = 8002,
    port_b: Annotated[int, typer.Option("--port-b", help="Service B's port.")] = 8003,
    host: HostOpt = "127.0.0.1",
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            help="Broker URL. Unset: Redis at 127.0.0.1:6379 if it answers, else the embedded memory:// broker.",
            show_default="env MQCTL_BROKER_URL",
        ),
    ] = None,
    max_backlog: MaxBacklogOpt = None,
    poll_interval: Annotated[
        float | None,
        typer.Option("--poll-interval", min=0.01, help="Service B's poll cycle in seconds.", show_default="2.0"),
    ] = None,
    log_level: LogLevelOpt = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Run Service A and Service B together in one process (the quickest way to try mqctl)."""
    import os

    from mqctl.config import DEFAULT_BROKER_URL

    explicit = broker or os.environ.get("MQCTL_BROKER_URL")
    problem = None if explicit is not None else asyncio.run(_unusable(DEFAULT_BROKER_URL, 1.0))
    if problem is not None:
        broker = "memory://"
        err.print(
            f"[yellow]{escape(problem)} Running on the embedded memory:// broker instead "
            "(messages live only as long as this process).[/yellow]"
        )
    settings = _settings(
        broker_url=broker,
        max_backlog=max_backlog,
        poll_interval_s=poll_interval,
        log_level=log_level,
        log_format=log_format,
    )
    _setup_logging(settings)
    run(_up(settings, host, port_a, port_b))


async def _up(settings: Any, host: str, port_a: int, port_b: int) -> None:
    from mqctl.services import delivery, ingest
    from mqctl.services.server import Endpoint, serve
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


# -- clients ----------------------------------------------------------------------


def _parse_headers(values: list[str] | None) -> dict[str, str]:
    headers = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"Header {item!r} is not NAME=VALUE.", param_hint="--header")
        headers[name] = value
    return headers


@app.command()
def publish(
    content: Annotated[str | None, typer.Argument(help="The message content (a string; see --json-content).")] = None,
    type_: Annotated[str, typer.Option("--type", "-t", help="The message type.")] = "note",
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="A header NAME=VALUE; repeat for more.")
    ] = None,
    topic: Annotated[str | None, typer.Option("--topic", help="Topic (Service A's default when unset).")] = None,
    json_content: Annotated[
        bool, typer.Option("--json-content", help="Parse CONTENT as JSON instead of sending it as a string.")
    ] = False,
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="Send the message this many times.")] = 1,
    file: Annotated[
        str | None,
        typer.Option(
            "--file", "-f", help="Send each line of this JSON-lines file ({type, content, headers}); - reads stdin."
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Requests in flight at once.")] = 16,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="Store the message once even if this command is repeated."),
    ] = None,
    delay: Annotated[
        float | None,
        typer.Option(
            "--delay",
            min=0.0,
            help="Deliver no sooner than this many seconds from now (stored at once, in the broker).",
            show_default="none",
        ),
    ] = None,
    url: Annotated[
        str, typer.Option("--url", envvar="MQCTL_A_URL", help="Service A's base URL.")
    ] = "http://127.0.0.1:8002",
    token: TokenOpt = None,
) -> None:
    """Client A: publish messages through Service A and print their ids."""
    import json

    if file is None and content is None:
        raise typer.BadParameter("Give CONTENT or --file.", param_hint="CONTENT")
    headers = _parse_headers(header)
    messages: list[dict[str, Any]] = []
    if file is not None:
        stream = sys.stdin if file == "-" else open(file, encoding="utf-8")  # noqa: SIM115
        with stream:
            for number, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    err.print(f"[red]error:[/red] {file}:{number}: not JSON ({exc.msg}).")
                    raise typer.Exit(2) from None
                if not isinstance(item, dict):
                    err.print(f"[red]error:[/red] {file}:{number}: each line must be a JSON object.")
                    raise typer.Exit(2)
                messages.append(item)
    else:
        body: Any = content
        if json_content:
            try:
                body = json.loads(content or "")
            except json.JSONDecodeError as exc:
                raise typer.BadParameter(f"Not JSON: {exc.msg}.", param_hint="CONTENT") from None
        messages = [{"type": type_, "content": body, "headers": headers}] * count
    ids = run(_publish(url, token, topic, messages, concurrency, idempotency_key, delay))
    for message_id in ids:
        out.print(message_id, highlight=False)


async def _publish(
    url: str,
    token: str | None,
    topic: str | None,
    messages: list[dict[str, Any]],
    concurrency: int,
    key: str | None,
    delay_s: float | None,
) -> list[str]:
    from rich.progress import Progress

    from mqctl.clients.publisher import Publisher

    ids: list[str] = [""] * len(messages)
    queue = iter(enumerate(messages))
    async with Publisher(url, token=token, max_connections=concurrency) as publisher:
        with Progress(console=err, transient=True, disable=len(messages) < 2) as progress:
            task = progress.add_task("publishing", total=len(messages))

            async def worker() -> None:
                for index, m in queue:
                    ids[index] = await publisher.publish(
                        m.get("type", ""),
                        m.get("content"),
                        headers=m.get("headers"),
                        topic=topic,
                        idempotency_key=key,
                        delay_s=delay_s,
                    )
                    progress.advance(task)

            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(messages)))))
    return ids


@app.command()
def listen(
    url: Annotated[
        str, typer.Option("--url", envvar="MQCTL_B_URL", help="Service B's WebSocket URL.")
    ] = "ws://127.0.0.1:8003/ws",
    topic: Annotated[str | None, typer.Option("--topic", help="Topic (Service B's default when unset).")] = None,
    type_: Annotated[
        list[str] | None, typer.Option("--type", "-t", help="Only messages of this type; repeat for more.")
    ] = None,
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="Only messages with header NAME or NAME:VALUE.")
    ] = None,
    group: Annotated[
        str | None, typer.Option("--group", "-g", help="Consumer group to join (Service B's default when unset).")
    ] = None,
    broadcast: Annotated[
        bool, typer.Option("--broadcast", help="Receive every message live instead of sharing a group's.")
    ] = False,
    count: Annotated[int | None, typer.Option("--count", "-n", min=1, help="Exit after this many messages.")] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0.0, help="Exit after this many seconds (1 if --count unmet).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object a line.")] = False,
    token: TokenOpt = None,
) -> None:
    """Client B: receive messages from Service B over WebSocket, print and acknowledge each."""
    received = run(_listen(url, topic, type_ or [], header or [], group, broadcast, count, timeout, as_json, token))
    if count is not None and received < count:
        err.print(f"[yellow]Received {received} of {count} messages before the timeout.[/yellow]")
        raise typer.Exit(1)


async def _listen(
    url: str,
    topic: str | None,
    types: list[str],
    headers: list[str],
    group: str | None,
    broadcast: bool,
    count: int | None,
    timeout_s: float | None,
    as_json: bool,
    token: str | None,
) -> int:
    import orjson

    from mqctl.clients.listener import Listener

    received = 0
    listener = Listener(url, topic=topic, types=types, headers=headers, group=group, broadcast=broadcast, token=token)
    try:
        async with asyncio.timeout(timeout_s), listener:
            if not as_json:
                err.print(f"[dim]Listening on {url} ({'broadcast' if broadcast else 'group'}); Ctrl+C stops.[/dim]")
            async for frame in listener:
                if as_json:
                    sys.stdout.write(orjson.dumps(frame).decode() + "\n")
                    sys.stdout.flush()
                else:
                    content = frame.get("content")
                    shown = content if isinstance(content, str) else orjson.dumps(content).decode()
                    out.print(
                        f"[bold]{frame['type']}[/bold] [dim]{frame['id']} (attempt {frame.get('attempt', 1)})[/dim] "
                        f"{shown}",
                        highlight=False,
                    )
                await listener.ack(frame)
                received += 1
                if count is not None and received >= count:
                    break
    except TimeoutError:
        pass
    return received


@app.command()
def loadtest(
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Concurrent publishers.")] = 50,
    messages: Annotated[
        int | None, typer.Option("--messages", "-n", min=1, help="Messages to publish (unless --duration).")
    ] = None,
    duration: Annotated[
        float | None, typer.Option("--duration", "-d", min=0.1, help="Publish for this many seconds instead.")
    ] = None,
    rate: Annotated[
        float | None, typer.Option("--rate", min=1.0, help="Target messages per second in all (default: flat out).")
    ] = None,
    size: Annotated[int, typer.Option("--size", min=40, help="Approximate payload bytes per message.")] = 100,
    batch: Annotated[
        int, typer.Option("--batch", min=1, max=1000, help="Messages per request; above 1 uses the batch endpoint.")
    ] = 1,
    listeners: Annotated[int, typer.Option("--listeners", min=1, help="WebSocket clients sharing the group.")] = 1,
    a_url: Annotated[
        str, typer.Option("--a-url", envvar="MQCTL_A_URL", help="Service A's base URL.")
    ] = "http://127.0.0.1:8002",
    b_url: Annotated[
        str, typer.Option("--b-url", envvar="MQCTL_B_URL", help="Service B's WebSocket URL.")
    ] = "ws://127.0.0.1:8003/ws",
    direct: Annotated[
        str | None,
        typer.Option("--direct", help="Skip the services: drive the library against this broker URL directly."),
    ] = None,
    drain_timeout: Annotated[
        float, typer.Option("--drain-timeout", min=0.0, help="Seconds to wait for stragglers after publishing.")
    ] = 30.0,
    listen_query: Annotated[
        str,
        typer.Option("--listen-query", help="Extra query parameters for the listeners, e.g. 'type=x' to filter."),
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    token: TokenOpt = None,
) -> None:
    """Parallel end-to-end load: publish through A, receive from B, account for every message.

    Exits 1 when any accepted message was not received within the drain timeout.
    """
    from mqctl.loadtest import LoadSpec

    if messages is None and duration is None:
        messages = 10_000
    spec = LoadSpec(
        a_url=a_url,
        b_url=b_url,
        workers=workers,
        messages=None if duration else messages,
        duration_s=duration,
        rate=rate,
        size=size,
        batch=batch,
        listeners=listeners,
        direct_url=direct,
        drain_timeout_s=drain_timeout,
        token=token,
        listen_query=listen_query,
    )
    report = run(_loadtest(spec, show_progress=not as_json))
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(report.to_dict()).decode() + "\n")
    else:
        _print_report(report)
    if report.lost:
        err.print(f"[red]{report.lost} accepted message(s) were not delivered within {drain_timeout:g} s.[/red]")
        raise typer.Exit(1)


LOG_EVERY_S = 5.0
"""Without a terminal, the loadtest's progress is a line this often."""


async def _loadtest(spec: Any, show_progress: bool) -> Any:
    from rich.live import Live

    from mqctl import loadtest

    if not show_progress:
        return await loadtest.run(spec)
    previous = [0.0, 0, 0]
    latest: list[loadtest.Progress] = []

    def view(p: loadtest.Progress) -> str:
        dt = max(p.elapsed_s - previous[0], 1e-9)
        accepted_rate, received_rate = (p.accepted - previous[1]) / dt, (p.received - previous[2]) / dt
        previous[:] = [p.elapsed_s, p.accepted, p.received]
        return (
            f"[bold]{p.elapsed_s:6.1f} s[/bold]  sent {p.sent:>8}  accepted {p.accepted:>8} ({accepted_rate:,.0f}/s)"
            f"  received {p.received:>8} ({received_rate:,.0f}/s)"
        )

    if not err.is_terminal:  # a log or a pipe: whole lines, one every LOG_EVERY_S and the last

        def log_line(p: loadtest.Progress) -> None:
            latest[:] = [p]
            if p.elapsed_s - previous[0] >= LOG_EVERY_S:
                err.print(view(p), highlight=False, soft_wrap=True)

        report = await loadtest.run(spec, on_progress=log_line)
        if latest and latest[0].elapsed_s > previous[0]:
            err.print(view(latest[0]), highlight=False, soft_wrap=True)
        return report
    with Live("starting...", console=err, refresh_per_second=4, transient=False) as live:
        return await loadtest.run(spec, on_progress=lambda p: live.update(view(p)))


def _print_report(report: Any) -> None:
    from rich.table import Table

    table = Table(title=f"loadtest {report.run_id} on topic {report.topic}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("published (sent)", f"{report.sent:,}"),
        ("accepted", f"{report.accepted:,}"),
        ("errors", ", ".join(f"{k}: {v:,}" for k, v in sorted(report.errors.items())) or "0"),
        ("received", f"{report.received:,}"),
        ("lost", f"[{'red' if report.lost else 'green'}]{report.lost:,}[/]"),
        ("duplicates", f"{report.duplicates:,}"),
        ("out of order", f"{report.out_of_order:,}"),
        ("accepted/s", f"{report.accepted_per_s:,.0f}"),
        ("delivered/s", f"{report.throughput:,.0f}"),
        *((f"latency {k}", f"{v:,.1f} ms") for k, v in report.latency_ms.items()),
    ]
    if report.ceiling_rps is not None:
        rows.append(("generator ceiling (GET /health)", f"{report.ceiling_rps:,.0f} req/s"))
    if report.listener_reconnects:
        rows.append(("listener reconnects (Service B went away)", f"{report.listener_reconnects:,}"))
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)


# -- operating (mqctl/cli_ops.py) ---------------------------------------------------

app.command("stats")(cli_ops.stats)
app.command("create-topic")(cli_ops.create_topic)
app.add_typer(cli_ops.dlq_app, name="dlq")
app.command("worker")(cli_worker.worker)


@app.command()
def version() -> None:
    """Print mqctl's version."""
    from mqctl import __version__

    out.print(__version__)


def main() -> None:
    app()
