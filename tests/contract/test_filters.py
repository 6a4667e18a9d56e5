"""The broker contract, filters: a group's filter drops messages for that group only."""

from __future__ import annotations

import pytest

import mqctl
from tests.contract.consuming import Consumer, eventually, take, take_broadcast

MESSAGES = [
    {"type": "a", "content": 1, "headers": {"env": "prod"}},
    {"type": "b", "content": 2, "headers": {"env": "test"}},
    {"type": "a", "content": 3},
    {"type": "c", "content": 4, "headers": {"env": "prod"}},
    {"type": "b", "content": 5},
]

FILTERS: dict[str, tuple[mqctl.Filter, list[int]]] = {
    "by_type": (mqctl.by_type("a"), [1, 3]),
    "by_type_many": (mqctl.by_type("a", "c"), [1, 3, 4]),
    "by_header": (mqctl.by_header("env"), [1, 2, 4]),
    "by_header_value": (mqctl.by_header("env", "prod"), [1, 4]),
    "and": (mqctl.by_type("a") & mqctl.by_header("env"), [1]),
    "or": (mqctl.by_type("b") | mqctl.by_header("env", "prod"), [1, 2, 4, 5]),
    "not": (~mqctl.by_type("a"), [2, 4, 5]),
    "nested": ((mqctl.by_type("a") | mqctl.by_type("b")) & ~mqctl.by_header("env", "test"), [1, 3, 5]),
    "where": (mqctl.where(lambda m: m.content % 2 == 0), [2, 4]),
    "none": (mqctl.by_type("zzz"), []),
}


@pytest.mark.parametrize(("keep", "expected"), FILTERS.values(), ids=FILTERS.keys())
async def test_filtered_subscription_gets_only_matching_messages(
    broker: mqctl.Broker, keep: mqctl.Filter, expected: list[int]
) -> None:
    """A subscription with a filter receives exactly the matching messages, and its group is left with no backlog."""
    await broker.create_group("orders", "picky")
    await broker.publish_many("orders", MESSAGES)

    async with Consumer(broker.subscribe("orders", group="picky", filter=keep, poll_interval=0.1)) as consumer:

        async def group_done() -> bool:
            picky = (await broker.stats("orders")).group("picky")
            return picky is not None and picky.backlog == 0 and picky.pending == 0

        await eventually(group_done, what="the filtering group has acknowledged everything")

    assert [d.message.content for d in consumer.deliveries] == expected


async def test_filtered_out_messages_still_reach_other_groups(broker: mqctl.Broker) -> None:
    """Messages one group's filter drops are acknowledged for that group only; another group gets them all."""
    await broker.create_group("orders", "only-a")
    await broker.create_group("orders", "everything")
    ids = await broker.publish_many("orders", MESSAGES)

    async with Consumer(broker.subscribe("orders", group="only-a", filter=mqctl.by_type("a"), poll_interval=0.1)):

        async def only_a_done() -> bool:
            group = (await broker.stats("orders")).group("only-a")
            return group is not None and group.backlog == 0

        await eventually(only_a_done, what="group only-a has no backlog")

    everything = (await broker.stats("orders")).group("everything")
    assert everything is not None and everything.backlog == len(MESSAGES)
    async with broker.subscribe("orders", group="everything", poll_interval=0.1) as sub:
        assert [d.id for d in await take(sub, len(MESSAGES))] == ids


async def test_plain_callable_works_as_a_filter(broker: mqctl.Broker) -> None:
    """Any callable Message -> bool can be given as filter=."""
    await broker.create_group("orders", "odd")
    await broker.publish_many("orders", MESSAGES)

    async with broker.subscribe("orders", group="odd", filter=lambda m: m.content % 2 == 1, poll_interval=0.1) as sub:
        got = await take(sub, 3)
    assert [d.message.content for d in got] == [1, 3, 5]


async def test_broadcast_applies_its_filter(broker: mqctl.Broker) -> None:
    """A broadcast with a filter yields only matching messages."""
    async with broker.broadcast("orders", filter=mqctl.by_type("b"), poll_interval=0.1) as reader:
        await broker.publish_many("orders", MESSAGES)
        got = await take_broadcast(reader, 2)  # type: ignore[arg-type]
    assert [message.content for _, message in got] == [2, 5]
