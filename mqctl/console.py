"""The CLI's consoles and its one error policy: an ``MQError`` is one line on stderr, exit 1."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import typer
from rich.console import Console

from mqctl.core.errors import MQError

T = TypeVar("T")

out = Console()
err = Console(stderr=True)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop if it imports (``uvicorn[standard]`` brings it), else None: asyncio's own.

    uvloop's transports write to sockets in C; asyncio's are pure Python, and the services
    spend much of their time writing (as uvicorn's own CLI picks uvloop when it can)."""
    try:
        import uvloop
    except ImportError:
        return None
    new_event_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return new_event_loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one library coroutine (on uvloop when it imports); an MQError becomes one line on
    stderr and exit code 1."""
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(coro)
    except MQError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
