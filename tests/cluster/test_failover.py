"""A master of the cluster is killed under load: Service A answers 503 + Retry-After (never 500,
never past its bound) while the cluster fails over, then everything resumes by itself; with the
replica wait on, no message Service A acknowledged is lost."""

from __future__ import annotations

import asyncio
import binascii
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

import mqctl
from tests.integration.conftest import Service
from tests.redis_cluster import RedisCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(150)]

PUBLISH_TIMEOUT_S = 1.0
BOUND_S = PUBLISH_TIMEOUT_S + 2.0
"""No publish may take longer than this, failover or not: its deadline plus scheduling slack."""
WORKERS = 8


@dataclass
class Reply:
    content: int
    status: int
    retry_after: str | None
    elapsed_s: float
    at: float


class Load:
    """``WORKERS`` publishers, each sending one message after the other, until stopped."""

    def __init__(self, url: str, topic: str) -> None:
        self.url = url
        self.topic = topic
        self.replies: list[Reply] = []
        self.stopping = False
        self._next = 0

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=BOUND_S + 5) as client:
            await asyncio.gather(*(self._worker(client) for _ in range(WORKERS)))

    async def _worker(self, client: httpx.AsyncClient) -> None:
        while not self.stopping:
            content, self._next = self._next, self._next + 1
            started = time.monotonic()
            try:
                reply = await client.post("/messages", json={"topic": self.topic, "type": "n", "content": content})
                status, retry_after = reply.status_code, reply.headers.get("retry-after")
            except httpx.TimeoutException:
                status, retry_after = -1, None  # a hang past the bound: the test fails on it
            self.replies.append(Reply(content, status, retry_after, time.monotonic() - started, time.monotonic()))
            if status != 202:
                await asyncio.sleep(0.05)

    def accepted(self) -> set[int]:
        return {r.content for r in self.replies if r.status == 202}

    def resumed(self, since: float, count: int) -> bool:
        """``count`` publishes answered 202 in a row, all started after ``since``."""
        tail = [r for r in self.replies if r.at - r.elapsed_s > since][-count:]
        return len(tail) == count and all(r.status == 202 for r in tail)


def _slot(topic: str) -> int:
    return binascii.crc_hqx(topic.encode(), 0) % 16384


async def _wait(
    check: Callable[[], bool], timeout_s: float, what: str, explain: Callable[[], str] = lambda: ""
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"Not true within {timeout_s} s: {what}\n{explain()}")
        await asyncio.sleep(0.1)


async def _stored_contents(url: str, topic: str) -> set[int]:
    async with mqctl.connect(url) as broker:
        length = (await broker.stats(topic)).length
        got: set[int] = set()
        async with broker.broadcast(topic, last_id="0-0", poll_interval=0.1) as reader:
            async with asyncio.timeout(20):
                for _ in range(length):
                    _, message = await anext(reader)
                    got.add(message.content)
        return got


@pytest.mark.parametrize("replicas", [0, 1], ids=["no-replica-wait", "replica-wait"])
async def test_killing_a_master_under_load(
    replicas: int, replicated_cluster: RedisCluster, start_service: Callable[..., Service]
) -> None:
    """Kill the master of the topic's slot while 8 clients publish; check the answers, the resume and the data."""
    cluster = replicated_cluster
    topic = f"orders-{uuid.uuid4().hex[:8]}"
    env = {"MQCTL_PUBLISH_TIMEOUT_S": str(PUBLISH_TIMEOUT_S), "MQCTL_POLL_INTERVAL_S": "0.2"}
    a = start_service("serve-a", "--broker", cluster.url, "--replicas", str(replicas), env=env)
    b = start_service("serve-b", "--broker", cluster.url, env=env)
    delivered: set[int] = set()

    async def consume() -> None:
        while True:  # Service B closes nothing on a failover, but reconnect if it did
            try:
                async with connect(f"{b.ws}?topic={topic}&group=workers&auto_ack=true") as ws:
                    async for raw in ws:
                        frame = orjson.loads(raw)
                        if "content" in frame:
                            delivered.add(frame["content"])
            except OSError:
                await asyncio.sleep(0.2)

    consumer = asyncio.create_task(consume())
    load = Load(a.http, topic)
    running = asyncio.create_task(load.run())
    try:
        await _wait(lambda: len(load.accepted()) >= 50, 15, "50 publishes before the kill")
        victim = cluster.slot_owner(_slot(topic))
        cluster.kill(victim)
        killed_at = time.monotonic()
        await _wait(
            lambda: victim not in cluster.master_ports() and len(cluster.master_ports()) == 3,
            30,
            f"failover after killing {victim}",
            explain=cluster.describe,
        )
        failed_over_at = time.monotonic()
        if replicas:
            cluster.restart(victim)  # the new master needs a replica again before WAIT 1 can succeed
        await _wait(lambda: load.resumed(failed_over_at, 40), 30, "40 publishes answered 202 in a row after failover")
    finally:
        load.stopping = True
        await asyncio.wait_for(running, BOUND_S + 10)

    statuses = {r.status for r in load.replies}
    assert statuses <= {202, 503}, f"unexpected answers: {statuses - {202, 503}}"
    refused = [r for r in load.replies if r.status == 503]
    assert refused, "no publish was refused while the master was down"
    assert all(r.retry_after and int(r.retry_after) >= 1 for r in refused)
    assert max(r.elapsed_s for r in load.replies) < BOUND_S
    assert min(r.at for r in refused) >= killed_at - BOUND_S

    accepted = load.accepted()
    after = {r.content for r in load.replies if r.status == 202 and r.at - r.elapsed_s > failed_over_at}
    try:
        # With or without the replica wait, Service B resumes: what was published after the
        # failover reaches the client within 10 s of the publishes ending.
        await _wait(
            lambda: after <= delivered,
            10,
            "Service B delivers what was published after the failover",
            explain=lambda: f"missing {sorted(after - delivered)[:20]} of {len(after)}\n{b.log()[-3000:]}",
        )
        if replicas:  # the promise of the replica wait: nothing acknowledged is lost
            stored = await _stored_contents(cluster.url, topic)
            assert accepted <= stored, f"{len(accepted - stored)} acknowledged messages lost"
            # Deliveries in flight at the kill come back only after Service B's ack timeout (30 s).
            await _wait(lambda: accepted <= delivered, 60, "Service B delivers what was acknowledged")
    finally:
        consumer.cancel()
