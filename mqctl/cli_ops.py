"""Operator commands: ``mqctl stats``, ``mqctl create-topic`` and ``mqctl dlq list|show|replay|purge``.

They talk to the broker directly (``--broker``, env ``MQCTL_BROKER_URL``) with the same
library calls a user's own code would make: ``broker.topics()``, ``broker.stats(topic)``,
``broker.dead_letters(topic)``, ``broker.replay(topic, ids)`` and
``broker.purge_dead_letters(topic)``. ``mqctl.cli`` registers them on the main app. As
there, an ``MQError`` becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from mqctl.config import DEFAULT_BROKER_URL
from mqctl.connect import open_broker
from mqctl.console import err, out, run
from mqctl.core.backend import DeadLetter, TopicStats
from mqctl.core.broker import Broker
from mqctl.core.errors import InvalidMessage, MQError, UnknownMessage
from mqctl.core.message import Message, decode

T = TypeVar("T")


BrokerOpt = Annotated[
    str,
    typer.Option(
        "--broker",
        envvar="MQCTL_BROKER_URL",
        help="Broker URL: redis://[user:password@]host:port/db or rediss://...",
    ),
]
TopicArg = Annotated[str, typer.Argument(metavar="TOPIC", help="The topic.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


async def _with_broker(url: str, work: Callable[[Broker], Awaitable[T]]) -> T:
    broker = open_broker(url)
    try:
        return await work(broker)
    finally:
        await broker.aclose()


def _json_line(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()


def _message_id(value: str) -> str:
    # Ids are the broker's own (``1718000000000-0``, ``2:1718000000000-0`` on a partitioned topic):
    # one that names no dead letter is told so by the lookup, with the command that lists them.
    if not value.strip():
        raise typer.BadParameter("A dead letter's id is needed; see: mqctl dlq list TOPIC.")
    return value


# -- stats --------------------------------------------------------------------------


async def read_stats(broker: Broker, topic: str | None) -> list[TopicStats]:
    """The stats of ``topic``, or of every topic the broker has."""
    topics = [topic] if topic is not None else await broker.topics()
    return [await broker.stats(name) for name in topics]


def age(seconds: float | None) -> str:
    """``seconds`` for a person: ``-``, ``4.2 s``, ``3m 05s``, ``2h 07m``, ``3d 04h``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600:02d}h"


def stats_table(stats: list[TopicStats], title: str | None = None, *, consumer_names: bool = True) -> Table:
    """One row per group of each topic (a topic without groups gets one row). Without
    ``consumer_names`` (the backend keeps no consumer count nor pending ages) those say n/a."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("topic", style="bold", overflow="fold", min_width=6)
    table.add_column("group", overflow="fold", min_width=6)
    for name in ("length", "backlog", "pending", "oldest\npending", "consumers", "dead\nletters"):
        table.add_column(name, justify="right")
    for topic in stats:
        dead = f"[red]{topic.dead_letters:,}[/red]" if topic.dead_letters else "0"
        name = topic.topic if topic.partitions == 1 else f"{topic.topic}\n[dim]{topic.partitions} partitions[/dim]"
        if topic.scheduled:  # delayed messages not yet due
            name += f"\n[dim]{topic.scheduled:,} scheduled[/dim]"
        if not topic.groups:
            table.add_row(name, "-", f"{topic.length:,}", "-", "-", "-", "-", dead)
        for i, g in enumerate(topic.groups):
            first = i == 0
            table.add_row(
                name if first else "",
                g.name,
                f"{topic.length:,}" if first else "",
                f"{g.backlog:,}",
                f"{g.pending:,}",
                age(g.oldest_pending_age_s) if consumer_names else "n/a",
                f"{g.consumers:,}" if consumer_names else "n/a",
                dead if first else "",
            )
    return table


def stats_json(stats: list[TopicStats]) -> list[dict[str, Any]]:
    return [{**dataclasses.asdict(s), "backlog": s.backlog} for s in stats]


def stats(
    topic: Annotated[
        str | None, typer.Argument(metavar="[TOPIC]", help="Only this topic (default: every topic).")
    ] = None,
    broker: BrokerOpt = DEFAULT_BROKER_URL,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh in place until Ctrl+C.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between refreshes.")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (with --watch: one line per refresh).")] = False,
) -> None:
    """Length, backlog, pending, oldest pending age, consumers and dead letters per topic and group.

    backlog = lag (not yet delivered to the group) + pending (delivered, not acknowledged).
    """
    if watch:
        _watch(broker, topic, interval, as_json)
        return
    result, names = run(_with_broker(broker, lambda b: _read_stats_and_names(b, topic)))
    if as_json:
        _json_line(stats_json(result))
    elif not result:
        err.print("No topics yet: nothing has been published on this broker.")
    else:
        out.print(stats_table(result, consumer_names=names))


async def _read_stats_and_names(broker: Broker, topic: str | None) -> tuple[list[TopicStats], bool]:
    return await read_stats(broker, topic), broker.backend.capabilities.consumer_names


def create_topic(
    topic: Annotated[str, typer.Argument(help="The topic to create.")],
    partitions: Annotated[
        int,
        typer.Option(
            "--partitions",
            "-p",
            min=1,
            max=256,
            help="Streams to split the topic into: on a Redis Cluster they spread over the masters.",
        ),
    ] = 1,
    broker: BrokerOpt = DEFAULT_BROKER_URL,
) -> None:
    """Create a topic with a number of partitions, before its first use (idempotent).

    A topic keeps the count it was created with; one first used without create-topic has 1.
    """
    count = run(_with_broker(broker, lambda b: b.create_topic(topic, partitions=partitions)))
    out.print(f"Topic {topic!r} has {count} partition{'s' if count != 1 else ''}.")


def _watch(url: str, topic: str | None, interval_s: float, as_json: bool) -> None:
    from rich.live import Live

    names = [True]

    async def loop(broker: Broker, show: Callable[[list[TopicStats] | None, str | None], None]) -> None:
        names[0] = broker.backend.capabilities.consumer_names
        # Ctrl+C (or SIGTERM) ends the watch through an event, not by cancelling whatever runs:
        # a cancellation can be lost inside a Redis command (Python 3.11's wait_for, gh-86296).
        stop = asyncio.Event()
        running = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            running.add_signal_handler(signum, stop.set)
        try:
            while not stop.is_set():
                try:
                    show(await read_stats(broker, topic), None)
                except MQError as exc:  # keep watching: the broker may come back
                    show(None, str(exc))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval_s):
                        await stop.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                running.remove_signal_handler(signum)

    if as_json:

        def print_line(result: list[TopicStats] | None, problem: str | None) -> None:
            if result is not None:
                _json_line(stats_json(result))
            else:
                err.print(f"[red]error:[/red] {problem}", highlight=False, soft_wrap=True)

        try:
            run(_with_broker(url, lambda b: loop(b, print_line)))
        except typer.Exit as exc:
            if exc.exit_code != 130:
                raise
        return

    with Live(Text("reading the broker..."), console=out, auto_refresh=False) as live:

        def redraw(result: list[TopicStats] | None, problem: str | None) -> None:
            stamp = time.strftime("%H:%M:%S")
            view: RenderableType
            if result is None:
                view = Text(f"{stamp}  error: {problem}", style="red")
            elif not result:
                view = Text(f"{stamp}  no topics yet; refreshing every {interval_s:g} s (Ctrl+C stops)")
            else:
                title = f"{stamp}  every {interval_s:g} s, Ctrl+C stops"
                view = stats_table(result, title=title, consumer_names=names[0])
            live.update(view, refresh=True)

        try:
            run(_with_broker(url, lambda b: loop(b, redraw)))
        except typer.Exit as exc:
            if exc.exit_code != 130:  # Ctrl+C is how a watch ends
                raise


# -- dead letters ----------------------------------------------------------------------

dlq_app = typer.Typer(
    help="Dead letters: messages that kept failing. List, show, replay onto their topic, or purge.",
    no_args_is_help=True,
)


def _message(letter: DeadLetter) -> Message | None:
    try:
        return decode(letter.payload)
    except InvalidMessage:
        return None


def _when(dead_at_ms: int) -> str:
    return datetime.fromtimestamp(dead_at_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")  # local time


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    message = _message(letter)
    return {
        "id": letter.id,
        "original_id": letter.original_id,
        "group": letter.group,
        "type": None if message is None else message.type,
        "content": None if message is None else message.content,
        "headers": None if message is None else dict(message.headers),
        "attempts": letter.attempts,
        "reason": letter.reason,
        "dead_at": _when(letter.dead_at_ms),
        "dead_at_ms": letter.dead_at_ms,
    }


async def _all_letters(broker: Broker, topic: str, limit: int | None = None) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    after = ""
    while limit is None or len(letters) < limit:
        page = await broker.dead_letters(
            topic, count=500 if limit is None else min(500, limit - len(letters)), after=after
        )
        if not page:
            break
        letters.extend(page)
        after = page[-1].id
    return letters


@dlq_app.command("list")
def dlq_list(
    topic: TopicArg,
    broker: BrokerOpt = DEFAULT_BROKER_URL,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Show at most this many, oldest first.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """The dead letters of TOPIC, oldest first: id, type, attempts, reason and when."""

    async def read(b: Broker) -> tuple[list[DeadLetter], int]:
        letters = await _all_letters(b, topic, limit)
        return letters, (await b.stats(topic)).dead_letters

    letters, total = run(_with_broker(broker, read))
    if as_json:
        _json_line([letter_json(letter) for letter in letters])
        return
    if not letters:
        err.print(f"No dead letters on {topic!r}.")
        return
    table = Table(title=f"dead letters of {topic!r}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", no_wrap=True)
    table.add_column("type", overflow="fold", min_width=6)
    table.add_column("attempts", justify="right")
    table.add_column("when")
    table.add_column("group", overflow="fold", min_width=6)
    table.add_column("reason")
    for letter in letters:
        message = _message(letter)
        table.add_row(
            letter.id,
            "[red](not a mqctl message)[/red]" if message is None else Text(message.type),
            str(letter.attempts),
            _when(letter.dead_at_ms),
            letter.group,
            Text(letter.reason),
        )
    out.print(table)
    if total > len(letters):
        err.print(f"{total - len(letters):,} more not shown; raise --limit to see them.")


@dlq_app.command("show")
def dlq_show(
    topic: TopicArg,
    letter_id: Annotated[
        str, typer.Argument(metavar="ID", help="The dead letter's id (see dlq list).", callback=_message_id)
    ],
    broker: BrokerOpt = DEFAULT_BROKER_URL,
    as_json: JsonOpt = False,
) -> None:
    """One dead letter of TOPIC in full: the message (type, content, headers), why and when it died."""

    async def find(b: Broker) -> DeadLetter:
        for letter in await _all_letters(b, topic):
            if letter.id == letter_id:
                return letter
        raise UnknownMessage(f"No dead letter {letter_id!r} on topic {topic!r}; see: mqctl dlq list {topic}")

    letter = run(_with_broker(broker, find))
    data = letter_json(letter)
    if as_json:
        _json_line(data)
        return
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column()
    for name in ("id", "original_id", "group", "type", "attempts", "reason", "dead_at"):
        value = data[name]
        fields.add_row(name.replace("_", " "), Text("(not a mqctl message)" if value is None else str(value)))
    body: RenderableType
    if data["type"] is None:
        body = Text(f"payload ({len(letter.payload)} bytes): {letter.payload[:500]!r}")
    else:
        body = Text(
            orjson.dumps({"content": data["content"], "headers": data["headers"]}, option=orjson.OPT_INDENT_2).decode()
        )
    out.print(Group(fields, Text(""), body))


@dlq_app.command("replay")
def dlq_replay(
    topic: TopicArg,
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="Replay this dead letter; repeat for more.", show_default=False)
    ] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every dead letter of TOPIC.")] = False,
    broker: BrokerOpt = DEFAULT_BROKER_URL,
) -> None:
    """Publish dead letters back onto TOPIC (each group gets them again) and remove them.

    Prints the new message ids, one a line. With --id, every id must be a dead letter of
    TOPIC, or nothing is replayed.
    """
    if bool(ids) == replay_all:
        raise typer.BadParameter("Give either --id ID (repeat it for more) or --all.", param_hint="--id / --all")
    wanted = [_message_id(i) for i in ids or []]

    async def replay(b: Broker) -> list[str]:
        if wanted:
            known = {letter.id for letter in await _all_letters(b, topic)}
            missing = [i for i in wanted if i not in known]
            if missing:
                raise UnknownMessage(
                    f"No dead letter {missing[0]!r} on topic {topic!r}"
                    + (f" (nor {len(missing) - 1} more of the ids given)" if len(missing) > 1 else "")
                    + f"; nothing was replayed. See: mqctl dlq list {topic}"
                )
        return await b.replay(topic, wanted or None)

    new_ids = run(_with_broker(broker, replay))
    for new_id in new_ids:
        out.print(new_id, highlight=False)
    err.print(f"Replayed {len(new_ids)} dead letter(s) onto {topic!r}.")


@dlq_app.command("purge")
def dlq_purge(
    topic: TopicArg,
    broker: BrokerOpt = DEFAULT_BROKER_URL,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete every dead letter of TOPIC, for good (asks first unless --yes)."""
    count = run(_with_broker(broker, lambda b: b.stats(topic))).dead_letters
    if count == 0:
        err.print(f"No dead letters on {topic!r}.")
        return
    if not yes:
        typer.confirm(f"Delete {count:,} dead letter(s) of {topic!r}? This cannot be undone.", abort=True, err=True)
    deleted = run(_with_broker(broker, lambda b: b.purge_dead_letters(topic)))
    err.print(f"Deleted {deleted:,} dead letter(s) of {topic!r}.")
