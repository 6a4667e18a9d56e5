"""The broker contract, broadcast: every new message to every reader, and resume without gaps."""

from __future__ import annotations

import mqctl
from tests.contract.consuming import take, take_broadcast


async def test_broadcast_yields_new_messages_in_order(broker: mqctl.Broker) -> None:
    """broadcast() yields (id, message) for each message published after it opened, and not earlier ones."""
    await broker.publish("orders", {"type": "before"})

    async with broker.broadcast("orders", poll_interval=0.1) as reader:
        ids = await broker.publish_many("orders", [{"type": "n", "content": i} for i in range(3)])
        got = await take_broadcast(reader, 3)  # type: ignore[arg-type]

    assert [entry_id for entry_id, _ in got] == ids
    assert [message for _, message in got] == [mqctl.Message("n", i) for i in range(3)]


async def test_broadcast_resumes_after_last_id_without_gaps_or_duplicates(broker: mqctl.Broker) -> None:
    """broadcast(last_id=X) first yields everything after X, then new messages, each exactly once."""
    ids = await broker.publish_many("orders", [{"type": "n", "content": i} for i in range(5)])

    async with broker.broadcast("orders", last_id=ids[1], poll_interval=0.1) as reader:
        backlog = await take_broadcast(reader, 3)  # type: ignore[arg-type]
        newer = await broker.publish_many("orders", [{"type": "n", "content": i} for i in range(5, 7)])
        live = await take_broadcast(reader, 2)  # type: ignore[arg-type]

    assert [entry_id for entry_id, _ in backlog + live] == ids[2:] + newer
    assert [m.content for _, m in backlog + live] == [2, 3, 4, 5, 6]


async def test_broadcast_from_zero_yields_the_retained_history(broker: mqctl.Broker) -> None:
    """broadcast(last_id="0") starts at the oldest retained message."""
    ids = await broker.publish_many("orders", [{"type": "a"}, {"type": "b"}])

    async with broker.broadcast("orders", last_id="0", poll_interval=0.1) as reader:
        got = await take_broadcast(reader, 2)  # type: ignore[arg-type]

    assert [entry_id for entry_id, _ in got] == ids


async def test_every_broadcast_reader_gets_every_message(broker: mqctl.Broker) -> None:
    """Two broadcast readers each see all messages (no competition, unlike a group)."""
    async with (
        broker.broadcast("orders", poll_interval=0.1) as first,
        broker.broadcast("orders", poll_interval=0.1) as second,
    ):
        ids = await broker.publish_many("orders", [{"type": "a"}, {"type": "b"}])
        assert [i for i, _ in await take_broadcast(first, 2)] == ids  # type: ignore[arg-type]
        assert [i for i, _ in await take_broadcast(second, 2)] == ids  # type: ignore[arg-type]


async def test_broadcast_does_not_consume(broker: mqctl.Broker) -> None:
    """Reading a broadcast acknowledges nothing: the group's backlog is untouched."""
    async with broker.broadcast("orders", poll_interval=0.1) as reader:
        ids = await broker.publish_many("orders", [{"type": "a"}, {"type": "b"}])
        await take_broadcast(reader, 2)  # type: ignore[arg-type]

    assert (await broker.stats("orders")).backlog == 2
    async with broker.subscribe("orders", poll_interval=0.1) as sub:
        assert [d.id for d in await take(sub, 2)] == ids
