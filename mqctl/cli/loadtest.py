"""``mqctl loadtest``: end-to-end load through the services, every message accounted for."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from mqctl.cli.options import TokenOpt
from mqctl.console import err, out, run


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
