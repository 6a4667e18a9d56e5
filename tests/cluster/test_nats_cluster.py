"""A 3-node NATS JetStream cluster with replicated streams (R3), on loopback, started by this test
from nats-server processes and stopped by PID: the stream's leader is killed (SIGKILL) under load,
and no message whose publish was acknowledged is lost."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest

import mqctl
from mqctl.backends.nats import NatsBackend
from tests.servers import NatsServer, free_port

pytestmark = [pytest.mark.cluster, pytest.mark.nats, pytest.mark.timeout(180)]

WORKERS = 8


@pytest.fixture
def nats_cluster() -> Iterator[list[NatsServer]]:
    """Three JetStream nodes routed to each other, each with a client and a cluster port of its own."""
    cluster_ports = [free_port() for _ in range(3)]
    nodes = [
        NatsServer(
            cluster_name="mqtest", cluster_port=port, routes=[p for p in cluster_ports if p != port], name=f"n{i}"
        )
        for i, port in enumerate(cluster_ports)
    ]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


async def _until_ready(url: str, prefix: str) -> None:
    """Wait until the cluster has elected a JetStream leader and can place an R3 stream."""
    deadline = time.monotonic() + 60
    while True:
        try:
            async with mqctl.connect(url, prefix=prefix, replicas=3) as broker:
                await broker.create_topic("warmup")
                return
        except mqctl.BrokerUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def test_killing_the_stream_leader_loses_no_acknowledged_message(nats_cluster: list[NatsServer]) -> None:
    """8 publishers and a consumer on an R3 topic; the stream's leader is SIGKILLed; every message whose
    publish returned an id is delivered, and publishing goes on after the kill."""
    url = "nats://" + ",".join(f"127.0.0.1:{node.port}" for node in nats_cluster)
    prefix = f"mqtest-{uuid.uuid4().hex[:8]}"
    await _until_ready(url, prefix)
    acknowledged: dict[int, float] = {}
    received: set[int] = set()
    stop = asyncio.Event()
    async with mqctl.connect(url, prefix=prefix, replicas=3, publish_timeout_s=10, default_group="default") as broker:
        await broker.create_topic("orders")
        counter = iter(range(10**9))

        async def publisher() -> None:
            while not stop.is_set():
                n = next(counter)
                try:
                    await broker.publish("orders", {"type": "n", "content": n})
                except mqctl.BrokerUnavailable:
                    await asyncio.sleep(0.05)  # refused while the cluster elects a new leader: not acknowledged
                    continue
                acknowledged[n] = time.monotonic()

        async def consumer() -> None:
            while True:
                try:
                    async with broker.subscribe("orders", poll_interval=0.2, ack_timeout=2) as sub:
                        async for delivery in sub:
                            received.add(delivery.message.content)
                            await delivery.ack()
                except mqctl.BrokerUnavailable:
                    await asyncio.sleep(0.2)

        consuming = asyncio.create_task(consumer())
        publishing = [asyncio.create_task(publisher()) for _ in range(WORKERS)]
        try:
            while len(acknowledged) < 300:
                await asyncio.sleep(0.05)
            backend = broker.backend
            assert isinstance(backend, NatsBackend)
            js = await backend.js()
            info = await js.stream_info(backend.stream("orders"))
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2, info.cluster
            leader = next(node for node in nats_cluster if node.name == info.cluster.leader)
            leader.kill()
            killed_at = time.monotonic()
            while not any(at > killed_at + 1 for at in acknowledged.values()) or len(acknowledged) < 600:
                if time.monotonic() - killed_at > 60:
                    raise AssertionError(f"publishing did not resume within 60 s of the kill ({len(acknowledged)})")
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await asyncio.gather(*publishing, return_exceptions=True)
        deadline = time.monotonic() + 60
        while not set(acknowledged) <= received and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        consuming.cancel()
        await asyncio.gather(consuming, return_exceptions=True)
    lost = sorted(set(acknowledged) - received)
    assert not lost, f"{len(lost)} acknowledged messages were not delivered: {lost[:20]}"
    assert any(at > killed_at for at in acknowledged.values())
