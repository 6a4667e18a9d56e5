"""The ``mqctl`` command line: thin Typer shells over the library, the services and the clients.

Each command parses its options, calls one library coroutine with ``asyncio.run`` and
formats the result with Rich. An ``MQError`` becomes one line on stderr and exit code 1.
Heavy imports (uvicorn, the services) happen inside the commands that need them.

    options.py   the options every command shares, settings, logging
    serve.py     serve-a, serve-b, up
    clients.py   publish, listen
    loadtest.py  loadtest
    topics.py    stats, create-topic
    dlq.py       dlq list|show|replay|purge
    worker.py    worker
"""

from __future__ import annotations

import typer

from mqctl.cli import clients, dlq, loadtest, serve, topics, worker
from mqctl.console import out

app = typer.Typer(
    name="mqctl",
    help="mqctl: an asynchronous message queue (memory, Redis Streams or NATS JetStream), its two services and tools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("serve-a")(serve.serve_a)
app.command("serve-b")(serve.serve_b)
app.command("up")(serve.up)
app.command("publish")(clients.publish)
app.command("listen")(clients.listen)
app.command("loadtest")(loadtest.loadtest)
app.command("stats")(topics.stats)
app.command("create-topic")(topics.create_topic)
app.add_typer(dlq.dlq_app, name="dlq")
app.command("worker")(worker.worker)


@app.command()
def version() -> None:
    """Print mqctl's version."""
    from mqctl.version import __version__

    out.print(__version__)


def main() -> None:
    app()
