"""The ``mqctl`` command line: thin Typer shells over the library and the services."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="mqctl",
    help="mqctl: an asynchronous message queue (memory or Redis Streams), its services and tools.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """mqctl: an asynchronous message queue (memory or Redis Streams), its services and tools."""


@app.command()
def version() -> None:
    """Print mqctl's version."""
    from mqctl import __version__

    typer.echo(__version__)


def main() -> None:
    app()
