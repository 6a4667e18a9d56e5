"""``mqctl dlq list|show|replay|purge``: the dead letters of a topic.

They talk to the broker directly (``--broker``, env ``MQCTL_BROKER_URL``) with the same
library calls a user's own code would make: ``broker.dead_letters(topic)``,
``broker.replay(topic, ids)`` and ``broker.purge_dead_letters(topic)``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import orjson
import typer
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from mqctl.cli.options import BrokerOpt, JsonOpt, TopicArg, json_line, with_broker
from mqctl.console import err, out, run
from mqctl.core.backend import DeadLetter
from mqctl.core.broker import Broker
from mqctl.core.errors import InvalidMessage, UnknownMessage
from mqctl.core.message import Message, decode


def _message_id(value: str) -> str:
    # Ids are the broker's own (``1718000000000-0``, ``2:1718000000000-0`` on a partitioned topic):
    # one that names no dead letter is told so by the lookup, with the command that lists them.
    if not value.strip():
        raise typer.BadParameter("A dead letter's id is needed; see: mqctl dlq list TOPIC.")
    return value


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
    broker: BrokerOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Show at most this many, oldest first.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """The dead letters of TOPIC, oldest first: id, type, attempts, reason and when."""

    async def read(b: Broker) -> tuple[list[DeadLetter], int]:
        letters = await _all_letters(b, topic, limit)
        return letters, (await b.stats(topic)).dead_letters

    letters, total = run(with_broker(broker, read))
    if as_json:
        json_line([letter_json(letter) for letter in letters])
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
    broker: BrokerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One dead letter of TOPIC in full: the message (type, content, headers), why and when it died."""

    async def find(b: Broker) -> DeadLetter:
        for letter in await _all_letters(b, topic):
            if letter.id == letter_id:
                return letter
        raise UnknownMessage(f"No dead letter {letter_id!r} on topic {topic!r}; see: mqctl dlq list {topic}")

    letter = run(with_broker(broker, find))
    data = letter_json(letter)
    if as_json:
        json_line(data)
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
    broker: BrokerOpt = None,
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

    new_ids = run(with_broker(broker, replay))
    for new_id in new_ids:
        out.print(new_id, highlight=False)
    err.print(f"Replayed {len(new_ids)} dead letter(s) onto {topic!r}.")


@dlq_app.command("purge")
def dlq_purge(
    topic: TopicArg,
    broker: BrokerOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete every dead letter of TOPIC, for good (asks first unless --yes)."""
    count = run(with_broker(broker, lambda b: b.stats(topic))).dead_letters
    if count == 0:
        err.print(f"No dead letters on {topic!r}.")
        return
    if not yes:
        typer.confirm(f"Delete {count:,} dead letter(s) of {topic!r}? This cannot be undone.", abort=True, err=True)
    deleted = run(with_broker(broker, lambda b: b.purge_dead_letters(topic)))
    err.print(f"Deleted {deleted:,} dead letter(s) of {topic!r}.")
