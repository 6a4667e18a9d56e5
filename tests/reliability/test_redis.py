"""Redis misbehaving under the services: killed and restarted with its append-only file,
out of memory, set to evict keys, and a topic's stream or group deleted by hand."""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx
import orjson
import pytest
import redis
from websockets.asyncio.client import connect

from mqctl.core.message import decode
from tests.reliability.harness import Consumer, Published, Report, is_message, publish_seq, wait_until
from tests.servers import RedisServer, free_port, wait_for

pytestmark = pytest.mark.timeout(180)

PUBLISH_TIMEOUT_S = 2.0
"""Service A's publish deadline in these tests: the bound on any answer while Redis is down."""


def stored(server: RedisServer, topic: str) -> dict[str, bytes]:
    """Every entry of a topic's stream, id -> payload."""
    client = redis.Redis(port=server.port)
    try:
        return {i.decode(): f[b"m"] for i, f in client.xrange(f"mqctl:{{{topic}}}:stream")}
    finally:
        client.close()


@pytest.mark.parametrize("fsync", ["always", "everysec"])
async def test_redis_killed_and_restarted(fsync: str, start_service, report: Report) -> None:
    """Redis (AOF on) killed mid-load and restarted: no 202'd message is lost, A answers 503
    with Retry-After within its deadline meanwhile, B keeps its clients, both recover alone."""
    server = RedisServer(free_port(), extra=["--appendonly", "yes", "--appendfsync", fsync])
    server.start()
    try:
        env = {"MQCTL_PUBLISH_TIMEOUT_S": str(PUBLISH_TIMEOUT_S)}
        a = start_service("serve-a", "--broker", server.url, env=env)
        b = start_service("serve-b", "--broker", server.url, "--poll-interval", "0.5")
        group = Consumer(f"{b.ws}?topic=journal&group=audit").start()
        watcher = Consumer(f"{b.ws}?topic=journal&mode=broadcast").start()
        for consumer in (group, watcher):
            await asyncio.wait_for(consumer.subscribed.wait(), 10)
        published = Published()
        stop = asyncio.Event()
        publishing = asyncio.create_task(
            publish_seq(a.http, "journal", itertools.count(), concurrency=8, batch=4, out=published, stop=stop)
        )
        await wait_until(lambda: len(published.accepted) >= 600, 60, "600 accepted publishes")
        server.kill()
        down_at = time.monotonic()
        accepted_at_kill = len(published.accepted)
        await asyncio.sleep(PUBLISH_TIMEOUT_S + 1.5)
        server.start()
        up_at = time.monotonic()
        await wait_until(
            lambda: any(s == 202 and t > up_at for t, _, s, _ in published.answers), 30, "a 202 after the restart"
        )
        a_recovered_s = min(t + d for t, d, s, _ in published.answers if s == 202 and t > up_at) - up_at
        await wait_until(lambda: len(published.accepted) >= accepted_at_kill + 300, 60, "300 more accepted")
        stop.set()
        await publishing
        accepted = set(published.accepted)
        await wait_until(lambda: accepted <= set(group.contents()), 60, "every accepted message at the group")
        b_recovered_s = min(t for t in group.arrivals if t > up_at) - up_at
        await asyncio.sleep(0.5)
        for consumer in (group, watcher):
            await consumer.stop()

        entries = stored(server, "journal")
        lost = [seq for seq, entry_id in published.accepted.items() if entry_id not in entries]
        damaged = [
            seq
            for seq, entry_id in published.accepted.items()
            if entry_id in entries and decode(entries[entry_id]).content != seq
        ]
        # Every request Redis's absence touched: sent before it came back, answered after it went.
        during = [
            (took, status, retry) for t, took, status, retry in published.answers if t < up_at and t + took > down_at
        ]
        counts = group.contents()
        report.record(
            f"3. Redis killed and restarted (appendfsync {fsync})",
            f"SIGKILL of redis-server (AOF, appendfsync {fsync}) under 8 concurrent publishers (4 messages a "
            f"request); restart after {up_at - down_at:.1f} s",
            messages=len(published.accepted) + sum(published.refused.values()),
            accepted=len(accepted),
            lost=len(lost),
            duplicated=sum(n - 1 for n in counts.values()),
            requests_while_down=len(during),
            slowest_answer_while_down_s=round(max((d for d, _, _ in during), default=0.0), 2),
            a_recovered_s=round(a_recovered_s, 2),
            b_recovered_s=round(b_recovered_s, 2),
            b_reconnects=group.connections - 1 + watcher.connections - 1,
        )
        assert not lost and not damaged
        assert during, "no request was made while Redis was down"
        assert all(status == 503 and retry for _, status, retry in during if status != 202), during
        assert max(d for d, _, _ in during) < PUBLISH_TIMEOUT_S + 1.5
        assert group.connections == 1 and watcher.connections == 1, "Service B dropped its clients"
        assert a_recovered_s < 10 and b_recovered_s < 10
    finally:
        server.stop()


def ballast(client: redis.Redis, chunk: bytes) -> int:
    """Fill Redis with keys outside mqctl's until it refuses writes; returns how many were set."""
    n = 0
    while True:
        try:
            client.set(f"ballast:{n}", chunk)
        except redis.exceptions.OutOfMemoryError:
            return n
        n += 1


async def test_redis_out_of_memory(start_service, report: Report) -> None:
    """Redis full (maxmemory, noeviction): publishes get 503 broker_out_of_memory with a reason
    and Retry-After, nothing stored is damaged, and publishing resumes once memory frees."""
    server = RedisServer(free_port(), extra=["--maxmemory", "40mb", "--maxmemory-policy", "noeviction"])
    server.start()
    client = redis.Redis(port=server.port)
    try:
        a = start_service("serve-a", "--broker", server.url)
        b = start_service("serve-b", "--broker", server.url, "--poll-interval", "0.5")
        consumer = Consumer(f"{b.ws}?topic=big&group=archive").start()
        await asyncio.wait_for(consumer.subscribed.wait(), 10)
        filled = ballast(client, b"x" * (1 << 20))
        for n in range(3):  # room for a few hundred messages
            client.delete(f"ballast:{n}")
        pad = "y" * 8000
        published = Published()
        async with httpx.AsyncClient(base_url=a.http, timeout=10) as http:
            refused: httpx.Response | None = None
            for seq in range(2000):
                r = await http.post(
                    "/messages", json={"topic": "big", "type": "blob", "content": {"seq": seq, "pad": pad}}
                )
                if r.status_code != 202:
                    refused = r
                    break
                published.accepted[seq] = r.json()["id"]
            assert refused is not None, "Redis never ran out of memory"
            body = refused.json()
            entries = stored(server, "big")
            damaged = [
                seq
                for seq, entry_id in published.accepted.items()
                if decode(entries.get(entry_id, b"{}")).content != {"seq": seq, "pad": pad}
            ]
            for n in range(3, filled):
                client.delete(f"ballast:{n}")
            t0 = time.monotonic()
            resumed = None
            while time.monotonic() - t0 < 10:
                r = await http.post(
                    "/messages", json={"topic": "big", "type": "blob", "content": {"seq": -1, "pad": pad}}
                )
                if r.status_code == 202:
                    resumed = time.monotonic() - t0
                    break
                await asyncio.sleep(0.1)
        await wait_until(lambda: set(published.accepted) <= set(consumer.contents()), 30, "every stored message")
        await consumer.stop()
        report.record(
            "9. Redis out of memory (maxmemory + noeviction)",
            "publishes of 8 KB messages into a Redis with maxmemory 40mb, filled by other keys",
            messages=len(published.accepted) + 1,
            accepted=len(published.accepted),
            lost=len(set(published.accepted) - set(consumer.contents())),
            duplicated=0,
            damaged=len(damaged),
            refused_with=f"{refused.status_code} {body['error']}",
            resumed_after_free_s=None if resumed is None else round(resumed, 3),
        )
        assert refused.status_code == 503, refused.text
        assert body["error"] == "broker_out_of_memory"
        assert "out of memory" in body["detail"]
        assert int(refused.headers["retry-after"]) >= 1
        assert not damaged
        assert resumed is not None
        assert "maxmemory-policy" not in a.log() + b.log()  # noeviction: no warning
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_services_warn_about_an_evicting_redis(policy: str, start_service, report: Report) -> None:
    """Both services log a WARNING at start when Redis may evict keys."""
    server = RedisServer(free_port(), extra=["--maxmemory-policy", policy])
    server.start()
    try:
        services = [start_service(name, "--broker", server.url) for name in ("serve-a", "serve-b")]
        for service in services:
            wait_for(lambda s=service: "maxmemory-policy" in s.log(), 10, f"the warning of {service.name}")
            line = next(line for line in service.log().splitlines() if "maxmemory-policy" in line)
            assert "WARNING" in line and repr(policy) in line and "noeviction" in line, line
        report.record(
            f"9b. Redis set to evict keys ({policy})",
            f"serve-a and serve-b started on a Redis with maxmemory-policy {policy}",
            warned=[s.name for s in services],
        )
    finally:
        server.stop()


async def test_stream_and_group_deleted_by_hand(redis_server: RedisServer, start_service, report: Report) -> None:
    """A topic's group, then its whole stream, deleted while the services run: Service B
    recreates what it needs without a restart, and a broadcast client resuming across the
    gap is told that history was lost."""
    a = start_service("serve-a", "--broker", redis_server.url)
    b = start_service("serve-b", "--broker", redis_server.url, "--poll-interval", "0.2")
    client = redis.Redis(port=redis_server.port)
    stream = "mqctl:{fragile}:stream"
    group = Consumer(f"{b.ws}?topic=fragile&group=workers").start()
    watcher = Consumer(f"{b.ws}?topic=fragile&mode=broadcast", reconnect=False).start()
    for consumer in (group, watcher):
        await asyncio.wait_for(consumer.subscribed.wait(), 10)
    await publish_seq(a.http, "fragile", range(0, 100), batch=10)
    await wait_until(lambda: len(group.frames) >= 100 and len(watcher.frames) >= 100, 20, "the first 100")
    await watcher.stop()
    resume_from = watcher.frames[-1]["id"]

    def group_exists() -> bool:
        return any(g["name"] == b"workers" for g in client.xinfo_groups(stream)) if client.exists(stream) else False

    # 1. The group is destroyed: B's reader recreates it (after the last message it read) by itself.
    client.xgroup_destroy(stream, "workers")
    t0 = time.monotonic()
    await wait_until(group_exists, 20, "Service B to recreate the group")
    group_back_s = time.monotonic() - t0
    await publish_seq(a.http, "fragile", range(100, 200), batch=10)
    await wait_until(lambda: set(range(100, 200)) <= set(group.contents()), 20, "messages after the group came back")

    # 2. The whole stream is deleted, with its groups and history: B recreates stream and group.
    client.delete(stream)
    t0 = time.monotonic()
    await wait_until(group_exists, 20, "Service B to recreate the stream and its group")
    stream_back_s = time.monotonic() - t0
    # A broadcast client resumes from before the deletion while the topic is still empty.
    async with connect(f"{b.ws}?topic=fragile&mode=broadcast&last_id={resume_from}") as ws:
        early = [orjson.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
    await publish_seq(a.http, "fragile", range(200, 300), batch=10)
    await wait_until(lambda: set(range(200, 300)) <= set(group.contents()), 20, "messages after the stream came back")
    async with httpx.AsyncClient() as http:
        ready = (await http.get(b.http + "/ready")).status_code

    # 3. A broadcast client resumes from before the deletion: it is told, not given a silent gap.
    events: list[dict] = []
    resumed: list[dict] = []
    async with connect(f"{b.ws}?topic=fragile&mode=broadcast&last_id={resume_from}") as ws:
        async with asyncio.timeout(10):
            while len(resumed) < 100:
                frame = orjson.loads(await ws.recv())
                (resumed if is_message(frame) else events).append(frame)
    await group.stop()
    client.close()
    lost_notice = [e for e in events if e.get("event") == "history_lost"]
    early_notice = [e for e in early if e.get("event") == "history_lost"]
    report.record(
        "10. A topic's group, then its stream, deleted by hand",
        "XGROUP DESTROY, then DEL of the stream, while the services run",
        messages=300,
        lost=len(set(range(100, 300)) - set(group.contents())),
        duplicated=sum(n - 1 for n in group.contents().values()),
        group_recreated_s=round(group_back_s, 2),
        stream_recreated_s=round(stream_back_s, 2),
        ready_after=ready,
        history_lost_told=bool(lost_notice) and bool(early_notice),
    )
    assert ready == 200
    assert lost_notice, events
    assert early_notice, early
    assert sorted(f["content"] for f in resumed) == list(range(200, 300)), [f["content"] for f in resumed]
