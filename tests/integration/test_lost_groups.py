"""A consumer group that vanishes under a running subscription, on a real Redis: deleted by hand,
or lost with the stream's history (as on a replica promoted before it received them). The group
comes back without skipping what was published meanwhile (it came back "from now" before)."""

from __future__ import annotations

import asyncio

import pytest
import redis

import mqctl
from mqctl.core.message import Message, encode
from tests.servers import RedisServer

pytestmark = pytest.mark.timeout(30)


async def _next(sub: mqctl.Subscription) -> mqctl.Delivery:
    async with asyncio.timeout(5):
        delivery = await anext(sub)
    await delivery.ack()
    return delivery


async def test_a_group_deleted_by_hand_misses_nothing_published_meanwhile(redis_server: RedisServer) -> None:
    """XGROUP DESTROY after the first delivery; two publishes before the next read: both arrive."""
    admin = redis.Redis.from_url(redis_server.url)
    async with (
        mqctl.connect(redis_server.url) as broker,
        broker.subscribe("orders", group="billing", poll_interval=0.1) as sub,
    ):
        await broker.publish("orders", {"type": "n", "content": 1})
        assert (await _next(sub)).message.content == 1
        admin.xgroup_destroy("mqctl:{orders}:stream", "billing")
        await broker.publish_many("orders", [{"type": "n", "content": 2}, {"type": "n", "content": 3}])
        assert [(await _next(sub)).message.content for _ in range(2)] == [2, 3]
    admin.close()


async def test_a_group_lost_with_its_history_gets_what_the_stream_holds_now(redis_server: RedisServer) -> None:
    """The stream is gone with its group (a failover to a replica that never got them); what is
    published to the new stream before the next read arrives."""
    admin = redis.Redis.from_url(redis_server.url)
    async with (
        mqctl.connect(redis_server.url) as broker,
        broker.subscribe("orders", group="billing", poll_interval=0.1) as sub,
    ):
        await broker.publish("orders", {"type": "n", "content": 1})
        assert (await _next(sub)).message.content == 1
        admin.delete("mqctl:{orders}:stream")
        await broker.publish("orders", {"type": "n", "content": 2})
        assert (await _next(sub)).message.content == 2
    admin.close()


async def test_a_stream_written_again_in_the_same_millisecond_loses_nothing(redis_server: RedisServer) -> None:
    """The stream is lost and its first new entry gets the very id last read (same millisecond):
    the group comes back from the start of the new stream, so that entry is delivered."""
    admin = redis.Redis.from_url(redis_server.url)
    async with (
        mqctl.connect(redis_server.url) as broker,
        broker.subscribe("orders", group="billing", poll_interval=0.1) as sub,
    ):
        await broker.publish("orders", {"type": "n", "content": 1})
        first = await _next(sub)
        admin.delete("mqctl:{orders}:stream")
        admin.xadd("mqctl:{orders}:stream", {"m": encode(Message("n", 2))}, id=first.id)
        second = await _next(sub)
        assert (second.id, second.message.content) == (first.id, 2)
    admin.close()
