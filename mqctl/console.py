"""The CLI's consoles and its one error policy: an ``MQError`` is one line on stderr, exit 1."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import typer
from rich.console import Console

from mqctl.core.errors import MQError

T = TypeVar("T")

out = Console()
err = Console(stderr=True)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one library coroutine; an MQError becomes one line on stderr and exit code 1."""
    try:
        return asyncio.run(coro)
    except MQError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
