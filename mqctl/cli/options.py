"""What the commands share: their common options (each defined once), settings from flags
and ``MQCTL_*`` variables, logging, and a broker opened for one command."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import typer

from mqctl.console import err

if TYPE_CHECKING:
    from mqctl.config import Settings
    from mqctl.core.broker import Broker

T = TypeVar("T")

BrokerOpt = Annotated[
    str | None,
    typer.Option(
        "--broker",
        envvar="MQCTL_BROKER_URL",
        help="Broker URL: memory://, redis://[user:password@]host:port/db, rediss://..., "
        "redis+cluster://host:port[,host:port...] (rediss+cluster:// for TLS) or nats://host:port.",
        show_default="redis://127.0.0.1:6379/0",
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


TopicArg = Annotated[str, typer.Argument(metavar="TOPIC", help="The topic.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def load_settings(**overrides: Any) -> Settings:
    """Settings from MQCTL_* variables, with the flags that were given on top."""
    from pydantic import ValidationError

    from mqctl.config import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        err.print(f"[red]error:[/red] invalid setting: {problems}")
        raise typer.Exit(2) from None


def setup_logging(settings: Settings) -> None:
    from mqctl.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)


def broker_url(flag: str | None) -> str:
    """The broker a command uses: ``--broker`` (or ``MQCTL_BROKER_URL``), else the default."""
    from mqctl.config import DEFAULT_BROKER_URL

    return flag or DEFAULT_BROKER_URL


async def with_broker(url: str | None, work: Callable[[Broker], Awaitable[T]]) -> T:
    """``work(broker)`` on a broker opened for it (``url`` as ``broker_url`` resolves it), then closed."""
    from mqctl.connect import open_broker

    broker = open_broker(broker_url(url))
    try:
        return await work(broker)
    finally:
        await broker.aclose()


def json_line(value: Any) -> None:
    """``value`` as one JSON line on stdout."""
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()
