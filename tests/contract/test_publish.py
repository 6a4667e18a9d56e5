"""The broker contract, publishing: ids, validation, size limit, topic names, idempotency."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import mqctl
from mqctl.core.message import encode
from tests.conftest import BrokerFactory
from tests.contract.consuming import take


async def test_publish_returns_the_new_message_s_id(broker: mqctl.Broker) -> None:
    """publish() returns the new message's id (the backend's own string) once it is stored."""
    entry_id = await broker.publish("orders", {"type": "created", "content": {"id": 1}})

    assert isinstance(entry_id, str) and entry_id
    stats = await broker.stats("orders")
    assert stats.length == 1 and stats.last_id == entry_id
    assert broker.check_position(entry_id) == entry_id


async def test_publish_many_returns_ids_in_order_and_stores_all(broker: mqctl.Broker) -> None:
    """publish_many() stores every message and returns their ids in the order given."""
    messages = [{"type": "n", "content": i} for i in range(5)]

    ids = await broker.publish_many("orders", messages)

    assert len(ids) == len(set(ids)) == 5
    assert (await broker.stats("orders")).length == 5
    async with broker.subscribe("orders", poll_interval=0.1) as sub:
        got = await take(sub, 5)
    assert [d.id for d in got] == ids
    assert [d.message.content for d in got] == list(range(5))


async def test_publish_many_of_nothing_stores_nothing(broker: mqctl.Broker) -> None:
    """publish_many() of an empty list returns [] and stores nothing."""
    assert await broker.publish_many("orders", []) == []
    assert (await broker.stats("orders")).length == 0


async def test_plain_dict_and_message_are_both_accepted(broker: mqctl.Broker) -> None:
    """A plain dict and a mqctl.Message publish the same message."""
    as_dict = {"type": "created", "content": {"id": 1, "tags": ["a"]}, "headers": {"env": "prod"}}
    as_message = mqctl.Message("created", {"id": 1, "tags": ["a"]}, {"env": "prod"})

    await broker.publish("orders", as_dict)
    await broker.publish("orders", as_message)

    async with broker.subscribe("orders", poll_interval=0.1) as sub:
        first, second = await take(sub, 2)
    assert first.message == second.message == as_message


async def test_message_without_content_or_headers_gets_defaults(broker: mqctl.Broker) -> None:
    """A message with only a type arrives with content None and no headers."""
    await broker.publish("orders", {"type": "ping"})

    async with broker.subscribe("orders", poll_interval=0.1) as sub:
        (delivery,) = await take(sub, 1)
    assert delivery.message == mqctl.Message("ping", None, {})


async def test_message_arrives_exactly_as_sent(broker: mqctl.Broker) -> None:
    """Type, JSON content and headers survive the store byte for byte: Unicode, newlines, big and float numbers."""
    sent = mqctl.Message(
        "grüße/ä 日本",
        {
            "text": "line\nbreak \u2028 emoji \U0001f680 nul \x00",
            "big": 2**63 + 1,
            "float": 0.1,
            "neg": -0.0,
            "nested": [None, True, {"": []}],
        },
        {"trace-id": "ä:{b}", "": "empty name", "blank": ""},
    )
    await broker.publish("orders", sent)

    async with broker.subscribe("orders", poll_interval=0.1) as sub:
        (delivery,) = await take(sub, 1)
    assert delivery.message == sent
    assert encode(delivery.message) == encode(sent)


INVALID_MESSAGES: dict[str, Any] = {
    "missing type": {"content": 1},
    "empty type": {"type": "", "content": 1},
    "blank type": {"type": "  ", "content": 1},
    "type not a string": {"type": 7, "content": 1},
    "header value not a string": {"type": "a", "headers": {"k": 1}},
    "headers not a mapping": {"type": "a", "headers": ["k"]},
    "content a set": {"type": "a", "content": {1, 2}},
    "content NaN": {"type": "a", "content": float("nan")},
    "content infinite": {"type": "a", "content": [float("inf")]},
    "content an object": {"type": "a", "content": object()},
    "unknown field": {"type": "a", "content": 1, "priority": 5},
    "not a mapping": "just a string",
}


@pytest.mark.parametrize("message", INVALID_MESSAGES.values(), ids=INVALID_MESSAGES.keys())
async def test_invalid_message_is_refused_before_anything_is_stored(broker: mqctl.Broker, message: Any) -> None:
    """publish() and publish_many() raise InvalidMessage for a bad message and store nothing."""
    await broker.publish("orders", {"type": "ok"})

    with pytest.raises(mqctl.InvalidMessage):
        await broker.publish("orders", message)
    with pytest.raises(mqctl.InvalidMessage):
        await broker.publish_many("orders", [{"type": "ok"}, message, {"type": "ok"}])

    assert (await broker.stats("orders")).length == 1


async def test_message_over_max_message_bytes_is_refused(connect_broker: BrokerFactory) -> None:
    """A message over max_message_bytes raises MessageTooLarge (an InvalidMessage); nothing is stored."""
    async with connect_broker(max_message_bytes=100) as broker:
        await broker.publish("orders", {"type": "ok"})

        with pytest.raises(mqctl.MessageTooLarge) as caught:
            await broker.publish("orders", {"type": "big", "content": "x" * 200})
        with pytest.raises(mqctl.InvalidMessage):
            await broker.publish_many("orders", [{"type": "ok"}, {"type": "big", "content": "x" * 200}])

        assert caught.value.limit == 100
        assert caught.value.size > 100
        assert "100" in str(caught.value)
        assert (await broker.stats("orders")).length == 1


async def test_message_of_exactly_max_message_bytes_is_stored(connect_broker: BrokerFactory) -> None:
    """The size limit is inclusive: a message whose encoding is exactly the limit is stored."""
    message = mqctl.Message("exact", "x" * 60)
    size = len(encode(message))
    async with connect_broker(max_message_bytes=size) as broker:
        await broker.publish("orders", message)

        with pytest.raises(mqctl.MessageTooLarge):
            await broker.publish("orders", mqctl.Message("exact", "x" * 61))
        assert (await broker.stats("orders")).length == 1


INVALID_TOPICS = ["with{braces}", "with space", "", "-leading-dash", "tab\there", "x" * 201]


@pytest.mark.parametrize("topic", INVALID_TOPICS, ids=["braces", "space", "empty", "dash", "tab", "too-long"])
async def test_invalid_topic_name_raises_config_error(broker: mqctl.Broker, topic: str) -> None:
    """A topic name with braces, spaces, a leading dash, or empty or too long raises ConfigError everywhere."""
    with pytest.raises(mqctl.ConfigError):
        await broker.publish(topic, {"type": "a"})
    with pytest.raises(mqctl.ConfigError):
        await broker.publish_many(topic, [{"type": "a"}])
    with pytest.raises(mqctl.ConfigError):
        broker.subscribe(topic)
    with pytest.raises(mqctl.ConfigError):
        broker.broadcast(topic)
    with pytest.raises(mqctl.ConfigError):
        await broker.stats(topic)
    with pytest.raises(mqctl.ConfigError):
        await broker.create_group(topic, "g")
    assert await broker.topics() == []


@pytest.mark.parametrize("name", ["orders", "Orders.v2", "a:b", "user@host", "x_y-z", "7"])
async def test_valid_topic_names_are_accepted(broker: mqctl.Broker, name: str) -> None:
    """Letters, digits and . _ : @ - (starting with a letter or digit) make a valid topic name."""
    await broker.publish(name, {"type": "a"})
    assert (await broker.stats(name)).length == 1


async def test_invalid_group_and_consumer_names_raise_config_error(broker: mqctl.Broker) -> None:
    """Group and consumer names follow the topic-name rules."""
    with pytest.raises(mqctl.ConfigError):
        broker.subscribe("orders", group="a b")
    with pytest.raises(mqctl.ConfigError):
        broker.subscribe("orders", consumer="{x}")
    with pytest.raises(mqctl.ConfigError):
        await broker.create_group("orders", "")


@pytest.mark.parametrize("key", ["order-1", "a b:{c}/ü*?"], ids=["plain", "odd-characters"])
async def test_same_idempotency_key_stores_one_message(broker: mqctl.Broker, key: str) -> None:
    """Publishing twice with one idempotency_key returns the same id and stores one message."""
    first = await broker.publish("orders", {"type": "a", "content": 1}, idempotency_key=key)
    second = await broker.publish("orders", {"type": "a", "content": 1}, idempotency_key=key)

    assert first == second
    assert (await broker.stats("orders")).length == 1


async def test_different_idempotency_keys_store_two_messages(broker: mqctl.Broker) -> None:
    """Different idempotency keys are different messages."""
    first = await broker.publish("orders", {"type": "a"}, idempotency_key="order-1")
    second = await broker.publish("orders", {"type": "a"}, idempotency_key="order-2")

    assert first != second
    assert (await broker.stats("orders")).length == 2


async def test_concurrent_publishes_with_one_key_store_one_message(broker: mqctl.Broker) -> None:
    """Concurrent publishes with the same idempotency key (one coalesced batch) store one message."""
    ids = await asyncio.gather(*(broker.publish("orders", {"type": "a"}, idempotency_key="same") for _ in range(5)))

    assert len(set(ids)) == 1
    assert (await broker.stats("orders")).length == 1


async def test_idempotency_key_is_scoped_to_its_topic(broker: mqctl.Broker) -> None:
    """The same idempotency key on two topics stores a message on each."""
    await broker.publish("orders", {"type": "a"}, idempotency_key="k")
    await broker.publish("refunds", {"type": "a"}, idempotency_key="k")

    assert (await broker.stats("orders")).length == 1
    assert (await broker.stats("refunds")).length == 1


async def test_idempotency_key_expires_after_its_window(connect_broker: BrokerFactory) -> None:
    """After idempotency_window_s the same key stores a new message."""
    async with connect_broker(idempotency_window_s=0.2) as broker:
        first = await broker.publish("orders", {"type": "a"}, idempotency_key="k")
        async with asyncio.timeout(5):
            # Nothing announces the key's expiry: publish again until a new id comes back.
            while (again := await broker.publish("orders", {"type": "a"}, idempotency_key="k")) == first:
                await asyncio.sleep(0.02)

        assert again != first
        assert (await broker.stats("orders")).length == 2


@pytest.mark.parametrize("key", ["", 5])
async def test_invalid_idempotency_key_raises_config_error(broker: mqctl.Broker, key: Any) -> None:
    """An idempotency key must be a non-empty string."""
    with pytest.raises(mqctl.ConfigError):
        await broker.publish("orders", {"type": "a"}, idempotency_key=key)
    assert (await broker.stats("orders")).length == 0


async def test_unknown_connect_option_raises_config_error(connect_broker: BrokerFactory) -> None:
    """An option neither the broker nor the backend knows raises ConfigError at connect."""
    with pytest.raises(mqctl.ConfigError):
        async with connect_broker(no_such_option=1) as broker:
            await broker.publish("orders", {"type": "a"})


async def test_a_backend_without_partitions_says_so(broker: mqctl.Broker) -> None:
    """create_topic with 1 partition works everywhere; with more, a backend without partitions
    refuses it with ConfigError, naming the backend (the others: see test_partitions.py)."""
    assert await broker.create_topic("orders") == 1
    if not broker.backend.capabilities.partitions:
        with pytest.raises(mqctl.ConfigError, match="has no partitions"):
            await broker.create_topic("invoices", partitions=3)


async def test_topics_lists_every_topic_published_to(broker: mqctl.Broker) -> None:
    """topics() names every topic that has had a message, sorted."""
    await broker.publish("refunds", {"type": "a"})
    await broker.publish("orders", {"type": "a"})

    assert await broker.topics() == ["orders", "refunds"]


async def test_ping_answers(broker: mqctl.Broker) -> None:
    """ping() returns when the broker is reachable."""
    await broker.ping()
