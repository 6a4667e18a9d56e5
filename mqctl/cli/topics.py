"""``mqctl stats`` and ``mqctl create-topic``: what the broker holds, read as a user's own code would."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich import box
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from mqctl.cli.options import BrokerOpt, json_line, with_broker
from mqctl.console import err, out, run
from mqctl.core.backend import TopicStats
from mqctl.core.broker import Broker
from mqctl.core.errors import MQError

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
    broker: BrokerOpt = None,
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
    result, names = run(with_broker(broker, lambda b: _read_stats_and_names(b, topic)))
    if as_json:
        json_line(stats_json(result))
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
    broker: BrokerOpt = None,
) -> None:
    """Create a topic with a number of partitions, before its first use (idempotent).

    A topic keeps the count it was created with; one first used without create-topic has 1.
    """
    count = run(with_broker(broker, lambda b: b.create_topic(topic, partitions=partitions)))
    out.print(f"Topic {topic!r} has {count} partition{'s' if count != 1 else ''}.")


def _watch(url: str | None, topic: str | None, interval_s: float, as_json: bool) -> None:
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
                json_line(stats_json(result))
            else:
                err.print(f"[red]error:[/red] {problem}", highlight=False, soft_wrap=True)

        try:
            run(with_broker(url, lambda b: loop(b, print_line)))
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
            run(with_broker(url, lambda b: loop(b, redraw)))
        except typer.Exit as exc:
            if exc.exit_code != 130:  # Ctrl+C is how a watch ends
                raise


# -- dead letters ----------------------------------------------------------------------
