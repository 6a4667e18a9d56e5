"""Several Service A and Service B processes on one Redis Cluster at once."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

import mqctl
from tests.integration.conftest import Service
from tests.redis_cluster import RedisCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

ENV = {"MQCTL_POLL_INTERVAL_S": "0.2", "MQCTL_MAX_BACKLOG": "1000000"}


def _services(start_service: Callable[..., Service], url: str) -> tuple[list[Service], list[Service]]:
    a = [start_service("serve-a", "--broker", url, env=ENV) for _ in range(2)]
    b = [start_service("serve-b", "--broker", url, env=ENV) for _ in range(2)]
    return a, b


async def _subscribed(ws: ClientConnection) -> None:
    async with asyncio.timeout(10):
        while orjson.loads(await ws.recv()).get("event") != "subscribed":
            pass


async def _publish(a: list[Service], topic: str, count: int) -> list[str]:
    """``count`` messages, alternately through each Service A, 20 at a time."""
    clients = [httpx.AsyncClient(base_url=s.http, timeout=10) for s in a]
    turn = itertools.cycle(clients)
    try:
        ids: list[str] = []
        for start in range(0, count, 20):
            replies = await asyncio.gather(
                *(
                    next(turn).post("/messages", json={"topic": topic, "type": "n", "content": i, "key": f"k{i % 7}"})
                    for i in range(start, min(start + 20, count))
                )
            )
            for reply in replies:
                assert reply.status_code == 202, reply.text
                ids.append(reply.json()["id"])
        return ids
    finally:
        for client in clients:
            await client.aclose()


async def _collect(ws: ClientConnection, got: list[dict], *, ack: bool) -> None:
    async for raw in ws:
        frame = orjson.loads(raw)
        if "id" in frame and "type" in frame:
            got.append(frame)
            if ack:
                await ws.send(orjson.dumps({"ack": frame["id"]}).decode())


async def _until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"Not true within {timeout_s} s: {what}") from None


async def test_a_group_is_shared_by_the_connections_of_two_service_b(
    redis_cluster: RedisCluster, start_service: Callable[..., Service]
) -> None:
    """Two A and two B processes: a group's 4 connections (2 per B) split the messages, none lost or doubled."""
    topic = f"orders-{uuid.uuid4().hex[:8]}"
    async with mqctl.connect(redis_cluster.url) as broker:
        await broker.create_topic(topic, partitions=3)
    a, b = _services(start_service, redis_cluster.url)
    count = 400
    received: list[list[dict]] = [[] for _ in range(4)]
    sockets = [await connect(f"{b[i % 2].ws}?topic={topic}&group=workers") for i in range(4)]
    tasks = []
    try:
        for ws in sockets:
            await _subscribed(ws)
        tasks = [asyncio.create_task(_collect(ws, got, ack=True)) for ws, got in zip(sockets, received, strict=True)]
        sent = await _publish(a, topic, count)
        await _until(lambda: sum(map(len, received)) >= count, 30, f"{count} deliveries")
        await asyncio.sleep(0.5)  # a duplicate would show up now
    finally:
        for task in tasks:
            task.cancel()
        for ws in sockets:
            await ws.close()

    delivered = [f["id"] for got in received for f in got]
    assert len(delivered) == len(set(delivered)), "a message went to two connections"
    assert set(sent) <= set(delivered), "a message acknowledged by Service A was not delivered"
    # A publish retried after a lost reply may store a second copy (at least once): never a loss.
    assert sorted({f["content"] for got in received for f in got}) == list(range(count))
    per_instance = [sum(len(received[i]) for i in range(4) if i % 2 == k) for k in range(2)]
    assert all(n > 0 for n in per_instance), per_instance


async def test_broadcast_clients_on_both_service_b_see_everything(
    redis_cluster: RedisCluster, start_service: Callable[..., Service]
) -> None:
    """A broadcast client on each Service B sees every message published through either Service A."""
    topic = f"news-{uuid.uuid4().hex[:8]}"
    async with mqctl.connect(redis_cluster.url) as broker:
        await broker.create_topic(topic, partitions=6)
    a, b = _services(start_service, redis_cluster.url)
    received: list[list[dict]] = [[], []]
    sockets = [await connect(f"{service.ws}?topic={topic}&mode=broadcast") for service in b]
    tasks = []
    try:
        for ws in sockets:
            await _subscribed(ws)
        tasks = [asyncio.create_task(_collect(ws, got, ack=False)) for ws, got in zip(sockets, received, strict=True)]
        sent = await _publish(a, topic, 200)
        await _until(lambda: all(len(got) >= 200 for got in received), 30, "200 broadcast frames on each")
    finally:
        for task in tasks:
            task.cancel()
        for ws in sockets:
            await ws.close()

    for got in received:
        assert sorted(f["id"] for f in got) == sorted(sent)
