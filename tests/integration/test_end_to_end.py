"""The whole system as a user runs it: mqctl serve-a and serve-b processes, a real Redis,
the mqctl publish and listen commands, and raw WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from mqctl.clients.listener import Listener
from tests.integration.conftest import Service, healthy
from tests.servers import RedisServer, free_port, stop_process, wait_for

pytestmark = pytest.mark.timeout(90)


def mqctl(*args: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mqctl", *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


@pytest.fixture
def system(redis_server: RedisServer, start_service) -> tuple[Service, Service]:
    """Service A and Service B on one private Redis, B with a short poll cycle."""
    a = start_service("serve-a", "--broker", redis_server.url)
    b = start_service("serve-b", "--broker", redis_server.url, "--poll-interval", "0.5")
    return a, b


async def frames(ws, n: int, timeout_s: float = 10) -> list[dict]:
    """The next ``n`` message frames from ``ws`` (event frames skipped)."""
    got: list[dict] = []
    async with asyncio.timeout(timeout_s):
        while len(got) < n:
            frame = orjson.loads(await ws.recv())
            if "id" in frame and "type" in frame:
                got.append(frame)
    return got


async def subscribed(ws) -> dict:
    """Wait for the 'subscribed' event that says the connection's reader is in place."""
    async with asyncio.timeout(10):
        while True:
            frame = orjson.loads(await ws.recv())
            if frame.get("event") == "subscribed":
                return frame


def test_publish_command_reaches_listen_command(system: tuple[Service, Service]) -> None:
    """mqctl publish -> Service A -> Redis -> Service B -> mqctl listen, as the README shows."""
    a, b = system
    listener = subprocess.Popen(
        [sys.executable, "-m", "mqctl", "listen", "--url", b.ws, "--count", "1", "--json", "--timeout", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # let the listener connect (the default group keeps the message anyway)
        published = mqctl("publish", "hello", "--type", "note", "--url", a.http)
        assert published.returncode == 0, published.stderr
        message_id = published.stdout.strip()
        out, err = listener.communicate(timeout=30)
    finally:
        listener.kill()
    assert listener.returncode == 0, err
    frame = json.loads(out.strip().splitlines()[-1])
    assert frame["id"] == message_id
    assert (frame["type"], frame["content"], frame["attempt"]) == ("note", "hello", 1)


def test_message_published_before_listening_is_delivered(system: tuple[Service, Service]) -> None:
    """A newcomer who publishes first and listens second still gets the message (default group)."""
    a, b = system
    published = mqctl("publish", "early bird", "--url", a.http)
    assert published.returncode == 0, published.stderr
    listened = mqctl("listen", "--url", b.ws, "--count", "1", "--json", "--timeout", "20")
    assert listened.returncode == 0, listened.stderr
    assert json.loads(listened.stdout.strip())["content"] == "early bird"


def test_publish_with_delay_reaches_listen_once_due_not_before(
    system: tuple[Service, Service], redis_server: RedisServer
) -> None:
    """`mqctl publish --delay 2`: Service B holds it (stats count it scheduled) and delivers it once due."""
    a, b = system
    sent_s = time.time()
    published = mqctl("publish", "later", "--delay", "2", "--url", a.http)
    assert published.returncode == 0, published.stderr
    stats = mqctl("stats", "--broker", redis_server.url, "--json")
    assert stats.returncode == 0, stats.stderr
    assert [(t["topic"], t["scheduled"]) for t in json.loads(stats.stdout)] == [("messages", 1)]
    table = mqctl("stats", "--broker", redis_server.url)
    assert "scheduled" in table.stdout, table.stdout  # under the topic's name (wrapped if narrow)
    listened = mqctl("listen", "--url", b.ws, "--count", "1", "--json", "--timeout", "20")
    assert listened.returncode == 0, listened.stderr
    assert json.loads(listened.stdout.strip())["content"] == "later"
    assert time.time() - sent_s >= 2.0


def test_publish_command_reports_server_error(system: tuple[Service, Service]) -> None:
    """mqctl publish exits non-zero with the server's reason when Service A refuses."""
    a, _ = system
    result = mqctl("publish", "x", "--type", " ", "--url", a.http)
    assert result.returncode == 1
    assert "422" in result.stderr


async def test_group_connections_share_the_stream(system: tuple[Service, Service]) -> None:
    """Two connections of one group split the messages: each message to exactly one, none lost."""
    a, b = system
    url = f"{b.ws}?topic=shared&group=workers&auto_ack=true"
    async with connect(url) as ws1, connect(url) as ws2:
        await subscribed(ws1)
        await subscribed(ws2)
        async with httpx.AsyncClient(base_url=a.http) as client:
            response = await client.post(
                "/messages/batch",
                json={"topic": "shared", "messages": [{"type": "t", "content": i} for i in range(40)]},
            )
            assert response.status_code == 202, response.text
        seen: dict[int, int] = {}

        async def drain(ws, tag: int) -> None:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(2.0):
                    while True:
                        frame = orjson.loads(await ws.recv())
                        if "id" in frame:
                            assert frame["content"] not in seen, "a message went to both connections"
                            seen[frame["content"]] = tag

        await asyncio.gather(drain(ws1, 1), drain(ws2, 2))
    assert sorted(seen) == list(range(40))
    assert set(seen.values()) == {1, 2}, "one connection got everything: no sharing"


async def test_listener_takes_batched_frames_one_message_at_a_time_and_resumes_after_the_last_taken(
    system: tuple[Service, Service],
) -> None:
    """mqctl's Listener asks for batched frames: it yields their messages in order, and its resume
    point is the last message it yielded, not the last one the frame held."""
    a, b = system
    async with Listener(b.ws, topic="batched", broadcast=True, max_reconnects=0) as listener:
        async with httpx.AsyncClient(base_url=a.http) as client:
            body = {"topic": "batched", "messages": [{"type": "n", "content": i} for i in range(30)]}
            response = await client.post("/messages/batch", json=body)
            assert response.status_code == 202, response.text
            ids = response.json()["ids"]
        async with asyncio.timeout(10):
            first = [await anext(listener) for _ in range(10)]
        assert listener.last_id == ids[9]
    assert [f["id"] for f in first] == ids[:10]
    async with Listener(b.ws, topic="batched", broadcast=True, last_id=ids[9], max_reconnects=0) as resumed:
        async with asyncio.timeout(10):
            rest = [await anext(resumed) for _ in range(20)]
    assert [f["content"] for f in rest] == list(range(10, 30))


async def test_broadcast_resume_without_gaps(system: tuple[Service, Service]) -> None:
    """A broadcast client that reconnects with last_id gets everything since, once each."""
    a, b = system
    async with httpx.AsyncClient(base_url=a.http) as client:

        async def post(i: int) -> None:
            r = await client.post("/messages", json={"topic": "news", "type": "n", "content": i})
            assert r.status_code == 202, r.text

        async with connect(f"{b.ws}?topic=news&mode=broadcast") as ws:
            await subscribed(ws)
            for i in range(5):
                await post(i)
            first = await frames(ws, 5)
        last_id = first[-1]["id"]
        for i in range(5, 12):
            await post(i)  # published while disconnected
        async with connect(f"{b.ws}?topic=news&mode=broadcast&last_id={last_id}") as ws:
            await subscribed(ws)
            await post(12)
            resumed = await frames(ws, 8)
    assert [f["content"] for f in first] == list(range(5))
    assert [f["content"] for f in resumed] == list(range(5, 13))


async def test_stalled_client_does_not_hold_up_others(system: tuple[Service, Service]) -> None:
    """A broadcast client that never reads does not delay another client's messages."""
    a, b = system
    async with connect(f"{b.ws}?topic=busy&mode=broadcast", max_queue=1) as stalled:
        await subscribed(stalled)
        async with connect(f"{b.ws}?topic=busy&mode=broadcast") as live:
            await subscribed(live)
            async with httpx.AsyncClient(base_url=a.http) as client:
                for _ in range(6):
                    batch = [{"type": "b", "content": "x" * 200}] * 500
                    r = await client.post("/messages/batch", json={"topic": "busy", "messages": batch})
                    assert r.status_code == 202, r.text
            t0 = time.monotonic()
            got = await frames(live, 3000, timeout_s=30)
            assert len(got) == 3000
            assert time.monotonic() - t0 < 20


async def test_broker_down_then_up(system: tuple[Service, Service], redis_server: RedisServer) -> None:
    """With Redis gone, A answers 503 with Retry-After quickly; when it returns, both recover alone."""
    a, b = system
    async with connect(f"{b.ws}?topic=phoenix&auto_ack=true") as ws:
        await subscribed(ws)
        redis_server.kill()
        async with httpx.AsyncClient(base_url=a.http, timeout=15) as client:
            t0 = time.monotonic()
            r = await client.post("/messages", json={"topic": "phoenix", "type": "x", "content": 1})
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "broker_unavailable"
            assert int(r.headers["retry-after"]) >= 1
            assert time.monotonic() - t0 < 10
            assert (await client.get("/ready")).status_code == 503
            redis_server.start()

            async def accepted() -> bool:
                r = await client.post("/messages", json={"topic": "phoenix", "type": "x", "content": "back"})
                return r.status_code == 202

            async with asyncio.timeout(20):
                while not await accepted():
                    await asyncio.sleep(0.2)
            assert (await client.get("/ready")).status_code == 200
        got = await frames(ws, 1, timeout_s=20)
        assert got[0]["content"] == "back"


def test_sigterm_stops_services_cleanly(system: tuple[Service, Service]) -> None:
    """SIGTERM stops each service within a few seconds with exit code 0."""
    for service in system:
        t0 = time.monotonic()
        code = service.stop(timeout_s=10)
        assert code == 0, service.log()
        assert time.monotonic() - t0 < 8
        wait_for(lambda s=service: s.process.poll() is not None, 1, "exit")


def _up(tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, str, Path]:
    """``mqctl up`` on free ports, ready once both services answer /health."""
    port_a, port_b = free_port(), free_port()
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mqctl", "up", "--port-a", str(port_a), "--port-b", str(port_b), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )
    a, b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    try:
        wait_for(lambda: (healthy(a) and healthy(b)) or process.poll() is not None, 20, "mqctl up")
    except TimeoutError:
        stop_process(process)
        raise AssertionError(f"mqctl up did not start:\n{log_path.read_text()}") from None
    assert process.poll() is None, log_path.read_text()
    return process, a, b, log_path


async def test_up_runs_both_services_on_redis(redis_server: RedisServer, tmp_path: Path) -> None:
    """mqctl up (the README's main job) on a Redis: a message posted to A reaches a client of B;
    the log says which service each of uvicorn's lines is about."""
    process, a, b, log_path = _up(tmp_path, env={"MQCTL_BROKER_URL": redis_server.url})
    try:
        async with connect(b.replace("http", "ws") + "/ws?topic=t&group=g") as ws:
            await subscribed(ws)
            async with httpx.AsyncClient() as client:
                posted = await client.post(f"{a}/messages", json={"topic": "t", "type": "x", "content": 1})
            assert posted.status_code == 202, posted.text
            [frame] = await frames(ws, 1)
            assert frame["id"] == posted.json()["id"] and frame["content"] == 1
    finally:
        assert stop_process(process) == 0
    started = [line for line in log_path.read_text().splitlines() if "Application startup complete" in line]
    assert len(started) == 2 and any("Service A: " in x for x in started) and any("Service B: " in x for x in started)


def test_up_honours_mqctl_replicas(redis_server: RedisServer, tmp_path: Path) -> None:
    """With MQCTL_REPLICAS=1 and a Redis that has no replica, mqctl up refuses the publish with a
    503 that says so (it ignored the setting and answered 202 before)."""
    env = {"MQCTL_BROKER_URL": redis_server.url, "MQCTL_REPLICAS": "1", "MQCTL_REPLICA_TIMEOUT_S": "0.2"}
    process, a, _, _ = _up(tmp_path, env=env)
    try:
        posted = httpx.post(f"{a}/messages", json={"type": "x", "content": 1}, timeout=10)
        assert posted.status_code == 503, posted.text
        assert posted.json()["error"] == "broker_unavailable" and "replica" in posted.json()["detail"]
    finally:
        stop_process(process)
