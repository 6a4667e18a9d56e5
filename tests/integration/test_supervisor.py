"""``mqctl serve-a --workers 2`` on a real Redis: two processes serve one port, a worker that
dies is replaced while the other keeps answering, and SIGTERM stops them all with exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import mqctl
from tests.integration.conftest import Service
from tests.servers import RedisServer, wait_for

pytestmark = pytest.mark.redis


def children(pid: int) -> set[int]:
    """The worker processes of the supervisor ``pid`` (its children other than multiprocessing's tracker)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"resource_tracker" not in cmdline:
                found.add(int(child))
    return found


def post_all(url: str, topic: str, count: int) -> list[str]:
    """POST ``count`` messages, each on a new connection (so the kernel spreads them)."""
    ids = []
    for n in range(count):
        response = httpx.post(f"{url}/messages", json={"type": "n", "content": n, "topic": topic}, timeout=5)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def stored(url: str, topic: str) -> int:
    async def length() -> int:
        async with mqctl.connect(url) as broker:
            return (await broker.stats(topic)).length

    return asyncio.run(length())


def test_two_workers_share_the_port_survive_a_crash_and_stop_on_sigterm(
    start_service: Callable[..., Service], redis_server: RedisServer
) -> None:
    """Both processes serve; kill -9 of one: the other answers and a new one takes its place; SIGTERM: exit 0."""
    service = start_service("serve-a", "--workers", "2", "--broker", redis_server.url)
    wait_for(lambda: len(children(service.process.pid)) == 2, 20, "two worker processes")
    first = children(service.process.pid)
    topic = f"sup-{uuid.uuid4().hex[:8]}"

    assert len(post_all(service.http, topic, 40)) == 40

    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    assert len(post_all(service.http, topic, 20)) == 20  # the survivor answers meanwhile
    wait_for(lambda: len(children(service.process.pid) - {victim}) == 2, 20, "a replacement worker")
    replacement = children(service.process.pid) - first
    assert len(replacement) == 1
    wait_for(lambda: "Application startup complete" in service.log().split("exited with code")[-1], 20, "its start")
    assert len(post_all(service.http, topic, 20)) == 20

    assert stored(redis_server.url, topic) == 80
    assert f"(pid {victim}) exited with code -9; starting another" in service.log()
    workers = children(service.process.pid)
    assert service.stop(timeout_s=20) == 0, service.log()
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers), "a worker outlived its supervisor"
