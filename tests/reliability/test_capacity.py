"""A topic at capacity (max_backlog): publishes are refused loudly, nothing queued is
evicted, and publishing works again once consumers drain the backlog."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import redis

import mqctl
from mqctl.core.message import decode
from tests.reliability.harness import Consumer, Published, Report, publish_seq, wait_until
from tests.servers import RedisServer

pytestmark = pytest.mark.timeout(120)

CAPACITY = 500


async def test_queue_at_capacity_refuses_then_recovers(
    redis_server: RedisServer, start_service, report: Report
) -> None:
    """Over max_backlog: 503 queue_full with Retry-After, nothing evicted; after a drain, 202 again."""
    a = start_service("serve-a", "--broker", redis_server.url, "--max-backlog", str(CAPACITY))
    b = start_service("serve-b", "--broker", redis_server.url, "--poll-interval", "0.5")
    published = Published()
    await publish_seq(a.http, "bounded", range(CAPACITY + 300), batch=10, concurrency=4, out=published)
    async with httpx.AsyncClient(base_url=a.http) as client:
        refused = await client.post("/messages", json={"topic": "bounded", "type": "seq", "content": -1})

    client_redis = redis.Redis(port=redis_server.port)
    entries = {i.decode(): decode(f[b"m"]).content for i, f in client_redis.xrange("mqctl:{bounded}:stream")}
    client_redis.close()
    kept = [seq for seq, entry_id in published.accepted.items() if entries.get(entry_id) == seq]

    consumer = Consumer(f"{b.ws}?topic=bounded&group=default").start()  # the default group holds the backlog
    t0 = time.monotonic()
    await wait_until(lambda: set(published.accepted) <= set(consumer.contents()), 30, "every message delivered")
    async with mqctl.connect(redis_server.url) as broker:  # drained: acknowledged, as Redis counts it
        while (await broker.stats("bounded")).backlog and time.monotonic() - t0 < 30:
            await asyncio.sleep(0.05)
    drained_s = time.monotonic() - t0
    after = await publish_seq(a.http, "bounded", range(10_000, 10_100), batch=10)
    await wait_until(lambda: set(after.accepted) <= set(consumer.contents()), 30, "the new messages")
    await consumer.stop()
    report.record(
        "6. A topic at capacity (max_backlog)",
        f"{CAPACITY + 301} messages published to a topic with max_backlog={CAPACITY}, no consumer; then one",
        messages=CAPACITY + 301,
        accepted=len(published.accepted),
        refused=sum(published.refused.values()) + 1,
        refused_with=f"{refused.status_code} {refused.json()['error']}, "
        f"Retry-After {refused.headers.get('retry-after')}",
        lost=len(published.accepted) - len(kept),
        duplicated=0,
        evicted=len(published.accepted) - len(kept),
        drained_s=round(drained_s, 2),
        accepted_after_drain=len(after.accepted),
    )
    assert len(published.accepted) == CAPACITY
    assert set(published.refused) == {"503 queue_full"}
    assert (refused.status_code, refused.json()["error"]) == (503, "queue_full")
    assert int(refused.headers["retry-after"]) >= 1
    assert "max_backlog=500" in refused.json()["detail"]
    assert len(kept) == CAPACITY, "a queued message was evicted or damaged"
    assert len(after.accepted) == 100
