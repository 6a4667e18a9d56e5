"""``mqctl publish`` (Client A, over Service A) and ``mqctl listen`` (Client B, from Service B)."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated, Any

import typer

from mqctl.cli.options import TokenOpt
from mqctl.console import err, out, run


def _parse_headers(values: list[str] | None) -> dict[str, str]:
    headers = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"Header {item!r} is not NAME=VALUE.", param_hint="--header")
        headers[name] = value
    return headers


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
