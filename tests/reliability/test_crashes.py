"""Crashes and restarts of the services under load: Service B killed (SIGKILL) and stopped
(SIGTERM) while it delivers thousands of messages to a group, Service A killed while it
takes them. Each counts what was accepted, delivered, lost and duplicated."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import pytest
import redis

from mqctl.core.message import decode
from tests.integration.conftest import Service
from tests.reliability.harness import Consumer, Published, Report, publish_seq, wait_until
from tests.servers import RedisServer

pytestmark = pytest.mark.timeout(180)

MESSAGES = 2000
FAST_B = {"MQCTL_ACK_TIMEOUT_S": "2", "MQCTL_POLL_INTERVAL_S": "0.2"}


def duplicates(counts: Counter[int]) -> int:
    return sum(n - 1 for n in counts.values() if n > 1)


def start_b(start_service, redis_server: RedisServer, port: int | None = None) -> Service:
    return start_service("serve-b", "--broker", redis_server.url, env=FAST_B, port=port)


async def test_service_b_killed_mid_stream(redis_server: RedisServer, start_service, report: Report) -> None:
    """SIGKILL of Service B mid-stream: every accepted message is delivered after the restart;
    only deliveries in flight at the kill come twice."""
    a = start_service("serve-a", "--broker", redis_server.url)
    b = start_b(start_service, redis_server)
    consumer = Consumer(f"{b.ws}?topic=durable&group=workers").start()
    await asyncio.wait_for(consumer.subscribed.wait(), 10)
    published = Published()
    publishing = asyncio.create_task(publish_seq(a.http, "durable", range(MESSAGES), batch=10, out=published))

    await wait_until(lambda: len(consumer.frames) >= MESSAGES // 3, 60, "a third of the messages")
    b.signal(signal.SIGKILL)
    b.process.wait(10)
    killed_at = time.monotonic()
    # What the killed process had sent may still sit in the client's socket: read it all first.
    await wait_until(lambda: consumer.closes, 10, "the client to see its connection drop")
    before_kill = Counter(f["content"] for f in consumer.frames)
    b = start_b(start_service, redis_server, port=b.port)
    restarted_s = time.monotonic() - killed_at
    await publishing

    accepted = set(published.accepted)
    await wait_until(lambda: accepted <= set(consumer.contents()), 60, "every accepted message")
    await asyncio.sleep(1.0)  # let stray redeliveries arrive, so that they are counted
    await consumer.stop()
    counts = consumer.contents()
    lost = accepted - set(counts)
    dup = duplicates(counts)
    redelivered = {f["content"] for f in consumer.frames if f["attempt"] > 1}
    report.record(
        "1. Service B killed (SIGKILL) mid-stream, restarted",
        f"SIGKILL of serve-b after {sum(before_kill.values())} deliveries to a group (10 messages a publish)",
        messages=MESSAGES,
        accepted=len(accepted),
        delivered=len(counts),
        lost=len(lost),
        duplicated=dup,
        redelivered_after_restart=len(redelivered),
        restart_s=round(restarted_s, 2),
    )
    assert not lost
    # A duplicate can only be a message the killed process had delivered (and not seen acknowledged).
    assert {seq for seq, n in counts.items() if n > 1} <= set(before_kill)


async def test_service_b_sigterm_under_load(redis_server: RedisServer, start_service, report: Report) -> None:
    """SIGTERM of Service B under load: it exits within seconds, clients get 1001, and after a
    restart nothing is lost and nothing is delivered twice."""
    a = start_service("serve-a", "--broker", redis_server.url)
    b = start_b(start_service, redis_server)
    consumers = [Consumer(f"{b.ws}?topic=graceful&group=workers").start() for _ in range(2)]
    for consumer in consumers:
        await asyncio.wait_for(consumer.subscribed.wait(), 10)
    published = Published()
    publishing = asyncio.create_task(publish_seq(a.http, "graceful", range(MESSAGES), batch=10, out=published))

    def delivered() -> Counter[int]:
        return sum((c.contents() for c in consumers), Counter())

    await wait_until(lambda: delivered().total() >= MESSAGES // 3, 60, "a third of the messages")
    t0 = time.monotonic()
    b.signal(signal.SIGTERM)
    exit_code = await asyncio.to_thread(b.process.wait, 15)
    stop_s = time.monotonic() - t0
    closes = [c.closes[0] if c.closes else (None, "") for c in consumers]
    b = start_b(start_service, redis_server, port=b.port)
    await publishing

    accepted = set(published.accepted)
    await wait_until(lambda: accepted <= set(delivered()), 60, "every accepted message")
    await asyncio.sleep(2.5)  # past the ack timeout (2 s): a message left pending would come again
    for consumer in consumers:
        await consumer.stop()
    counts = delivered()
    lost = accepted - set(counts)
    report.record(
        "11. Service B stopped (SIGTERM) under load, restarted",
        "SIGTERM of serve-b while 2 group clients receive (10 messages a publish)",
        messages=MESSAGES,
        accepted=len(accepted),
        delivered=len(counts),
        lost=len(lost),
        duplicated=duplicates(counts),
        stop_s=round(stop_s, 2),
        close_codes=sorted({code for code, _ in closes if code is not None}),
    )
    assert exit_code == 0, b.log()
    assert stop_s < 5
    assert [code for code, _ in closes] == [1001, 1001], closes
    assert not lost
    assert duplicates(counts) == 0


async def test_service_a_killed_mid_load(redis_server: RedisServer, start_service, report: Report) -> None:
    """SIGKILL of Service A while clients publish: every message answered 202 is stored."""
    a = start_service("serve-a", "--broker", redis_server.url)
    published = Published()
    publishing = asyncio.create_task(
        publish_seq(a.http, "ingest", range(MESSAGES), concurrency=32, batch=5, out=published)
    )
    await wait_until(lambda: len(published.accepted) >= MESSAGES // 3, 60, "a third of the publishes")
    a.signal(signal.SIGKILL)
    a.process.wait(10)
    await publishing  # the rest fail: the service is gone
    accepted_before_restart = dict(published.accepted)
    a = start_service("serve-a", "--broker", redis_server.url, port=a.port)
    unanswered = [seq for seq in range(MESSAGES) if seq not in published.accepted]
    await publish_seq(a.http, "ingest", unanswered, concurrency=32, batch=5, out=published)

    client = redis.Redis(port=redis_server.port)
    stored = client.xrange("mqctl:{ingest}:stream")
    stored_ids = {entry_id.decode() for entry_id, _ in stored}
    stored_seqs = Counter(decode(fields[b"m"]).content for _, fields in stored)
    lost = [seq for seq, entry_id in published.accepted.items() if entry_id not in stored_ids]
    report.record(
        "4. Service A killed (SIGKILL) mid-load, restarted",
        f"SIGKILL of serve-a after {len(accepted_before_restart)} of {MESSAGES} messages accepted "
        "(32 clients, 5 messages a request)",
        messages=MESSAGES,
        accepted=len(published.accepted),
        accepted_before_kill=len(accepted_before_restart),
        unanswered_at_kill=len(unanswered),
        lost=len(lost),
        duplicated=duplicates(stored_seqs),
    )
    assert not lost
    assert set(stored_seqs) == set(range(MESSAGES))
