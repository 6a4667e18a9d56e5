"""Consumers that misbehave or come in numbers: one that never acknowledges and vanishes,
a poison message, a client that stops reading, and a thousand clients at once."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import resource
import socket
import statistics
import subprocess
import sys
import time

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import mqctl
from tests.integration.conftest import Service
from tests.reliability.harness import (
    Consumer,
    MemoryWatch,
    Report,
    is_message,
    publish_seq,
    rss_mib,
    wait_until,
)
from tests.servers import RedisServer

pytestmark = pytest.mark.timeout(180)


async def publish_batches(a: Service, topic: str, count: int, *, size: int = 0, per_batch: int = 500) -> list[str]:
    """Publish ``count`` messages (content: seq, padded to ``size`` bytes) through the batch endpoint."""
    ids: list[str] = []

    def pad() -> str:  # random for each message: permessage-deflate would shrink a repeated one to nothing
        return base64.b64encode(os.urandom(size))[:size].decode()

    async with httpx.AsyncClient(base_url=a.http, timeout=30) as client:
        for start in range(0, count, per_batch):
            batch = [
                {"type": "seq", "content": {"seq": i, "pad": pad()} if size else i}
                for i in range(start, min(count, start + per_batch))
            ]
            r = await client.post("/messages/batch", json={"topic": topic, "messages": batch})
            assert r.status_code == 202, r.text
            ids.extend(r.json()["ids"])
    return ids


async def test_unacknowledged_messages_go_to_another_connection(
    redis_server: RedisServer, start_service, report: Report
) -> None:
    """A client that takes messages, never acks and drops its connection: another client of
    the group gets every one of them (attempt 2) within seconds."""
    a = start_service("serve-a", "--broker", redis_server.url)
    b = start_service("serve-b", "--broker", redis_server.url, "--poll-interval", "0.5")
    url = f"{b.ws}?topic=handoff&group=workers"
    count = 500
    hoarder = Consumer(url, ack=False, reconnect=False).start()
    await asyncio.wait_for(hoarder.subscribed.wait(), 10)
    await publish_batches(a, "handoff", count)
    await wait_until(lambda: len(hoarder.frames) == count, 30, "the hoarder to get every message")
    worker = Consumer(url).start()
    await asyncio.wait_for(worker.subscribed.wait(), 10)
    await asyncio.sleep(0.5)
    assert not worker.frames, "the worker got messages the hoarder holds"
    assert hoarder.ws is not None
    hoarder.ws.transport.abort()  # gone without a close frame, like a crashed client
    dropped = time.monotonic()
    await wait_until(lambda: len(worker.frames) >= count, 30, "the worker to get the hoarder's messages")
    handoff_s = time.monotonic() - dropped
    await asyncio.sleep(0.5)
    await worker.stop()
    await hoarder.stop()
    counts = worker.contents()
    report.record(
        "2. A client never acks, then drops its connection",
        "TCP abort of a group client holding 500 unacknowledged messages",
        messages=count,
        lost=count - len(counts),
        duplicated=sum(n - 1 for n in counts.values()),
        redelivered_to_other=len(counts),
        handoff_s=round(handoff_s, 2),
    )
    assert sorted(counts) == list(range(count))
    assert all(n == 1 for n in counts.values())
    assert {f["attempt"] for f in worker.frames} == {2}


async def test_poison_message_goes_to_dead_letters(redis_server: RedisServer, start_service, report: Report) -> None:
    """A message the consumer always nacks lands in the dead letters after max_attempts with
    its reason and count; the rest keeps flowing; replay brings it back."""
    env = {"MQCTL_MAX_ATTEMPTS": "3", "MQCTL_ACK_TIMEOUT_S": "1"}
    a = start_service("serve-a", "--broker", redis_server.url)
    b = start_service("serve-b", "--broker", redis_server.url, "--poll-interval", "0.2", env=env)
    consumer = Consumer(f"{b.ws}?topic=orders&group=billing", nack_types=frozenset({"poison"})).start()
    await asyncio.wait_for(consumer.subscribed.wait(), 10)
    good = 600
    half = publish_seq(a.http, "orders", range(good // 2), batch=20)
    await half
    async with httpx.AsyncClient(base_url=a.http) as client:
        r = await client.post("/messages", json={"topic": "orders", "type": "poison", "content": "bad"})
        assert r.status_code == 202
        poison_id = r.json()["id"]
    t0 = time.monotonic()
    await publish_seq(a.http, "orders", range(good // 2, good), batch=20)
    await wait_until(lambda: len([f for f in consumer.frames if f["type"] == "seq"]) >= good, 30, "the good messages")
    good_done_s = time.monotonic() - t0

    async with mqctl.connect(redis_server.url) as broker:

        async def dead() -> list[mqctl.DeadLetter]:
            return await broker.dead_letters("orders")

        deadline = time.monotonic() + 20
        letters = await dead()
        while not letters and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            letters = await dead()
        dead_s = time.monotonic() - t0
        stats = await broker.stats("orders")
    assert len(letters) == 1, letters
    letter = letters[0]
    assert letter.original_id == poison_id
    assert letter.attempts == 3
    assert letter.group == "billing"
    assert "nacked by the consumer" in letter.reason and "attempt 3 of 3" in letter.reason
    poison_attempts = [f["attempt"] for f in consumer.frames if f["type"] == "poison"]
    assert poison_attempts == [1, 2, 3]
    billing = stats.group("billing")
    assert billing is not None and billing.pending == 0
    seqs = [f["content"] for f in consumer.frames if f["type"] == "seq"]
    assert sorted(seqs) == list(range(good))

    replayed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "mqctl", "dlq", "replay", "orders", "--all", "--broker", redis_server.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert replayed.returncode == 0, replayed.stderr
    new_id = replayed.stdout.split()[-1]
    await wait_until(
        lambda: any(f["id"] == new_id for f in consumer.frames), 10, "the replayed message to be delivered again"
    )
    await consumer.stop()
    back = next(f for f in consumer.frames if f["id"] == new_id)
    assert (back["type"], back["content"], back["attempt"]) == ("poison", "bad", 1)
    report.record(
        "5. A poison message (always nacked)",
        f"1 message nacked on every delivery, amid {good} good ones; max_attempts=3",
        messages=good + 1,
        lost=good - len(set(seqs)),
        duplicated=len(seqs) - len(set(seqs)),
        dead_letters=len(letters),
        poison_attempts=len(poison_attempts),
        good_flow_s=round(good_done_s, 2),
        dead_lettered_after_s=round(dead_s, 2),
        replayed=1,
    )


async def stalled_client(url: str) -> ClientConnection:
    """A client that stops reading: a small TCP receive window (set before connecting, so the
    kernel does not grow it) and a receive queue of one frame, so its backlog stays with Service B."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return await connect(url, sock=sock, max_queue=1, max_size=None)


async def close_of(ws: ClientConnection, b: Service, timeout_s: float = 30) -> tuple[int | None, str]:
    """Once Service B has logged that it closes a slow client, read what is left (a slow client,
    not a dead one, reads again) and return the close code and reason the server sent."""
    await wait_until(lambda: "Closing a slow" in b.log(), timeout_s, "Service B to close the slow client")
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(timeout_s):
            async for _ in ws:
                pass
    frame = ws.protocol.close_rcvd
    return (frame.code, frame.reason) if frame else (None, "")


async def test_stalled_client_is_closed_and_memory_stays_bounded(
    redis_server: RedisServer, start_service, report: Report
) -> None:
    """A broadcast client that stops reading is closed with 4001 and its reason; Service B's
    memory stays bounded and the other client keeps its throughput."""
    a = start_service("serve-a", "--broker", redis_server.url)
    b = start_service("serve-b", "--broker", redis_server.url, "--poll-interval", "0.5")
    url = f"{b.ws}?topic=firehose&mode=broadcast"
    count, size = 4000, 2000

    async def run_once(with_stalled: bool) -> tuple[float, float, tuple[int | None, str] | None]:
        live = Consumer(url, reconnect=False).start()
        await asyncio.wait_for(live.subscribed.wait(), 10)
        closing = None
        if with_stalled:
            closing = asyncio.create_task(close_of(await stalled_client(url), b))
            await asyncio.sleep(0.5)
        async with MemoryWatch(b.process.pid) as memory:
            t0 = time.monotonic()
            await publish_batches(a, "firehose", count, size=size)
            await wait_until(lambda: len(live.frames) >= count, 60, "the live client to get every message")
            elapsed = time.monotonic() - t0
        await live.stop()
        return count / elapsed, memory.peak, await closing if closing is not None else None

    rss_before = rss_mib(b.process.pid)
    alone_rate, alone_peak, _ = await run_once(with_stalled=False)
    shared_rate, stalled_peak, closed = await run_once(with_stalled=True)
    report.record(
        "7. A stalled WebSocket client (stops reading)",
        f"a broadcast client that never reads, {count} messages of {size} B",
        messages=count,
        lost=0,
        duplicated=0,
        close=closed,
        rss_before_mib=round(rss_before, 1),
        rss_peak_alone_mib=round(alone_peak, 1),
        rss_peak_with_stalled_mib=round(stalled_peak, 1),
        rate_alone_per_s=round(alone_rate),
        rate_with_stalled_per_s=round(shared_rate),
    )
    assert closed is not None and closed[0] == 4001, closed
    assert "too slow" in closed[1]
    assert stalled_peak - rss_before < 60, "Service B's memory grew with the stalled client's backlog"
    assert shared_rate > alone_rate * 0.4


async def test_stalled_group_client_hands_its_messages_back(
    redis_server: RedisServer, start_service, report: Report
) -> None:
    """A group client that stops reading is closed with 4001 after its buffer stays full;
    what it held goes to the other client of the group: nothing lost."""
    a = start_service("serve-a", "--broker", redis_server.url)
    b = start_service(
        "serve-b", "--broker", redis_server.url, "--poll-interval", "0.5", env={"MQCTL_WS_SEND_BUFFER": "100"}
    )
    url = f"{b.ws}?topic=work&group=workers"
    count, size = 4000, 2000
    closing = asyncio.create_task(close_of(await stalled_client(url), b))
    worker = Consumer(url).start()
    await asyncio.wait_for(worker.subscribed.wait(), 10)
    async with MemoryWatch(b.process.pid) as memory:
        await publish_batches(a, "work", count, size=size)
        closed = await closing
        await wait_until(lambda: len(worker.contents()) >= count, 30, "the worker to get every message")
    await worker.stop()
    counts = worker.contents()
    report.record(
        "7b. A stalled group client (stops reading)",
        f"a group client that never reads, {count} messages of {size} B, ws_send_buffer=100",
        messages=count,
        lost=count - len(counts),
        duplicated=sum(n - 1 for n in counts.values()),
        close=closed,
        rss_peak_mib=round(memory.peak, 1),
    )
    assert closed[0] == 4001 and "too slow" in closed[1], closed
    assert len(counts) == count


async def test_thousand_broadcast_clients(redis_server: RedisServer, start_service, report: Report) -> None:
    """1,000 WebSocket clients on one Service B receive a broadcast: delivery time and memory."""
    clients_wanted = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * clients_wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * clients_wanted), hard))
    a = start_service("serve-a", "--broker", redis_server.url)
    b = start_service("serve-b", "--broker", redis_server.url, "--poll-interval", "0.5")
    rss_idle = rss_mib(b.process.pid)
    url = f"{b.ws}?topic=announce&mode=broadcast"
    sockets: list[ClientConnection] = []
    gate = asyncio.Semaphore(50)

    async def join() -> None:
        async with gate:
            ws = await connect(url, open_timeout=30)
            sockets.append(ws)  # first, so that it is closed whatever happens next
            async with asyncio.timeout(30):
                while orjson.loads(await ws.recv()).get("event") != "subscribed":
                    pass

    rounds = 5
    latencies: list[float] = []
    try:
        t0 = time.monotonic()
        await asyncio.gather(*(join() for _ in range(clients_wanted)))
        connect_s = time.monotonic() - t0
        rss_connected = rss_mib(b.process.pid)
        async with MemoryWatch(b.process.pid) as memory, httpx.AsyncClient(base_url=a.http) as client:
            for n in range(rounds):

                async def receive(ws: ClientConnection, n: int = n) -> float:
                    while True:
                        frame = orjson.loads(await ws.recv())
                        if is_message(frame) and frame["content"] == n:
                            return time.monotonic()

                waiting = [asyncio.create_task(receive(ws)) for ws in sockets]
                sent = time.monotonic()
                r = await client.post("/messages", json={"topic": "announce", "type": "news", "content": n})
                assert r.status_code == 202
                async with asyncio.timeout(60):
                    arrivals = await asyncio.gather(*waiting)
                latencies.append(max(arrivals) - sent)
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    report.record(
        "8. 1,000 WebSocket clients, one broadcast",
        f"{clients_wanted} broadcast clients on one serve-b, {rounds} messages",
        messages=rounds,
        clients=len(sockets),
        lost=0,
        duplicated=0,
        connect_all_s=round(connect_s, 2),
        delivery_to_all_s_median=round(statistics.median(latencies), 3),
        delivery_to_all_s_max=round(max(latencies), 3),
        rss_idle_mib=round(rss_idle, 1),
        rss_connected_mib=round(rss_connected, 1),
        rss_peak_mib=round(memory.peak, 1),
    )
    assert len(sockets) == clients_wanted
    assert max(latencies) < 10
