"""A delayed message is kept by the broker, not by a process: it survives Redis restarting (with
an append-only file) and every mqctl process going away, and is delivered when due, not before."""

from __future__ import annotations

import asyncio
import time

import pytest

import mqctl
from tests.contract.consuming import take
from tests.servers import RedisServer

pytestmark = pytest.mark.redis

DELAY_S = 3.0


def test_a_delayed_message_survives_restarts_of_redis_and_of_every_process() -> None:
    """Publish with a delay, close every broker, kill Redis and start it again: the message comes to
    the group once, no sooner than its delay after the publish."""
    with RedisServer(extra=["--appendonly", "yes", "--appendfsync", "always"]) as server:

        async def publish() -> float:
            async with mqctl.connect(server.url) as broker:
                await broker.create_group("jobs", "workers", from_start=False)
                published = time.time()
                await broker.publish("jobs", {"type": "reminder", "content": "later"}, delay_s=DELAY_S)
                assert (await broker.stats("jobs")).scheduled == 1
            return published

        published = asyncio.run(publish())
        server.kill()
        server.start()

        async def consume() -> tuple[float, mqctl.Delivery]:
            async with (
                mqctl.connect(server.url) as broker,
                broker.subscribe("jobs", group="workers", poll_interval=0.2) as sub,
            ):
                assert (await broker.stats("jobs")).scheduled == 1
                [delivery] = await take(sub, 1, timeout_s=DELAY_S + 10)
                arrived = time.time()
                await delivery.ack()
                return arrived, delivery

        arrived, delivery = asyncio.run(consume())
    assert delivery.message.content == "later" and delivery.attempt == 1
    assert arrived - published >= DELAY_S * 0.99, "delivered before it was due"
