"""``mqctl worker MODULE:APP``: run an ``mqctl.App``'s handlers as a process.

It imports the module (the current directory first on the path, as uvicorn does), prints a
line per handler, then a live status on a terminal (log lines every ``--status-interval``
otherwise). The first SIGTERM or SIGINT drains: no more fetching, what was fetched and not
started goes back to its group at once, running handlers get ``--graceful-timeout`` seconds
to finish; then it exits 0. A second signal, or the timeout, cancels what still runs, and
those messages go back to their groups. ``mqctl.cli`` registers the command.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import sys
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from mqctl.cli.options import BrokerOpt
from mqctl.console import err, run
from mqctl.core.errors import ConfigError

log = logging.getLogger("mqctl.worker")


def load_app(target: str) -> Any:
    """The ``mqctl.App`` named by ``module.path:attribute`` (attribute ``app`` when omitted)."""
    from mqctl.worker import App

    module_name, _, attribute = target.partition(":")
    attribute = attribute or "app"
    if not module_name:
        raise ConfigError(f"Expected MODULE:APP (for example 'myproject.handlers:app'), got {target!r}.")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(
                f"Cannot import {module_name!r}: no module {exc.name!r} here (run from the directory that holds it, "
                "or install it)."
            ) from exc
        raise
    found = getattr(module, attribute, None)
    if not isinstance(found, App):
        raise ConfigError(f"{module_name}:{attribute} is {type(found).__name__}, not an mqctl.App.")
    return found


def worker(
    target: Annotated[
        str,
        typer.Argument(metavar="MODULE:APP", help="The app to run, e.g. 'shop.handlers:app' (':app' may be left out)."),
    ],
    handler: Annotated[
        list[str] | None,
        typer.Option("--handler", help="Run only this handler (by name; repeat for more). Default: all of them."),
    ] = None,
    broker: BrokerOpt = None,
    graceful_timeout: Annotated[
        float,
        typer.Option(
            "--graceful-timeout",
            min=0.0,
            envvar="MQCTL_GRACEFUL_TIMEOUT",
            help="After a first SIGTERM/SIGINT, seconds running handlers get to finish before they are cancelled.",
        ),
    ] = 30.0,
    poll_interval: Annotated[
        float,
        typer.Option(
            "--poll-interval", min=0.01, envvar="MQCTL_POLL_INTERVAL_S", help="Longest blocking read, seconds."
        ),
    ] = 2.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            envvar="MQCTL_METRICS_PORT",
            help="Serve Prometheus metrics of the handlers at http://HOST:PORT/metrics.",
            show_default="off",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", envvar="MQCTL_METRICS_HOST", help="Address the metrics server binds.")
    ] = "127.0.0.1",
    status: Annotated[
        bool | None,
        typer.Option("--status/--no-status", help="A live status table.", show_default="on when stderr is a terminal"),
    ] = None,
    status_interval: Annotated[
        float,
        typer.Option("--status-interval", min=0.1, help="Without the live status, log the counts this often, seconds."),
    ] = 10.0,
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="MQCTL_LOG_LEVEL", help="debug, info, warning or error.")
    ] = "info",
    log_format: Annotated[
        str,
        typer.Option("--log-format", envvar="MQCTL_LOG_FORMAT", help="text (for people) or json (one object a line)."),
    ] = "text",
) -> None:
    """Run the handlers of an mqctl.App until SIGTERM/SIGINT, then drain and exit 0.

    --broker (or MQCTL_BROKER_URL) replaces the URL the app was given; without either, the app's own.
    """
    from mqctl.logs import LOG_FORMATS, setup_logging

    if log_format not in LOG_FORMATS:
        err.print(f"[red]error:[/red] --log-format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}.")
        raise typer.Exit(2)
    setup_logging(log_level, log_format)  # type: ignore[arg-type,unused-ignore]  # a LogFormat: checked above
    try:
        app = load_app(target)
        if broker is not None:
            if app.broker is not None:
                raise ConfigError(f"{target} brings its own Broker object; --broker cannot replace it.")
            app.url = broker
        names = app.select(handler)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    live = err.is_terminal if status is None else status
    run(
        _work(
            app,
            [h.name for h in names],
            graceful_timeout,
            poll_interval,
            metrics_host,
            metrics_port,
            live,
            status_interval,
        )
    )


async def _work(
    app: Any,
    names: list[str],
    graceful_timeout_s: float,
    poll_interval_s: float,
    metrics_host: str,
    metrics_port: int | None,
    live: bool,
    status_interval_s: float,
) -> None:
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        running = sum(r.counts.running for r in app.runners)
        if signals == 1:
            log.warning(
                "%s: draining; %d handler call(s) running get up to %g s (a second signal cancels them)",
                signal.Signals(signum).name,
                running,
                graceful_timeout_s,
            )
            app.stop()
        else:
            log.warning(
                "%s again: cancelling %d running call(s); their messages go back", signal.Signals(signum).name, running
            )
            app.stop(force=True)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    metrics_server = None
    if metrics_port is not None:
        from mqctl.worker import metrics

        metrics_server = metrics.serve(metrics.instrument(app), metrics_host, metrics_port)
        log.info("Metrics at http://%s:%d/metrics", metrics_host, metrics_server.server_port)
    task = asyncio.ensure_future(
        app.run(handlers=names, graceful_timeout_s=graceful_timeout_s, poll_interval_s=poll_interval_s)
    )
    try:
        started = asyncio.ensure_future(app.started())
        await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if not task.done():
            for runner in app.runners:
                h = runner.handler
                log.info(
                    "Handler %s: topic %r, group %r, concurrency %d, max_attempts %d",
                    h.name,
                    h.topic,
                    h.group,
                    h.concurrency,
                    h.max_attempts,
                )
            if live:
                await _live_status(app, task)
            else:
                await _logged_status(app, task, status_interval_s)
        await task
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if metrics_server is not None:
            metrics_server.shutdown()
    for line in _summary(app):
        log.info("%s", line)


def _summary(app: Any) -> list[str]:
    lines = []
    for runner in app.runners:
        c = runner.counts
        lines.append(
            f"Handler {runner.handler.name}: processed {c.processed:,}, failed {c.failed:,} (retried {c.retried:,}, "
            f"dead-lettered {c.dead_lettered:,}), running {c.running}"
        )
    return lines


async def _logged_status(app: Any, task: asyncio.Future[None], interval_s: float) -> None:
    last: list[tuple[Any, ...]] = []
    while not task.done():
        await asyncio.wait({task}, timeout=interval_s)
        now = [(r.counts.processed, r.counts.failed, r.counts.running) for r in app.runners]
        if now != last and not task.done():
            for line in _summary(app):
                log.info("%s", line)
        last = now


async def _live_status(app: Any, task: asyncio.Future[None]) -> None:
    from rich.live import Live

    before = {r.handler.name: (time.monotonic(), r.counts.processed) for r in app.runners}

    def table() -> Table:
        t = Table(title="mqctl worker (Ctrl+C drains, twice cancels)", title_justify="left")
        for column in ("handler", "topic", "group", "processed", "/s", "failed", "retried", "dead-lettered", "running"):
            t.add_column(column, justify="left" if column in ("handler", "topic", "group") else "right")
        for r in app.runners:
            c, h = r.counts, r.handler
            then, count = before[h.name]
            now = time.monotonic()
            rate = (c.processed - count) / max(now - then, 1e-9)
            before[h.name] = (now, c.processed)
            t.add_row(
                h.name,
                h.topic,
                h.group,
                f"{c.processed:,}",
                f"{rate:,.0f}",
                f"{c.failed:,}",
                f"{c.retried:,}",
                f"{c.dead_lettered:,}",
                f"{c.running}/{h.concurrency}",
            )
        return t

    with Live(table(), console=err, refresh_per_second=2, transient=False) as view:
        while not task.done():
            await asyncio.wait({task}, timeout=1.0)
            view.update(table())
