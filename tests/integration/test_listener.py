"""The listener's reconnects go through the one retry helper: its waits come from the policy,
through its injectable sleep, and it gives up after ``max_reconnects`` with a clear error."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from mqctl import BrokerUnavailable, RetryPolicy, ServiceError
from mqctl.clients.listener import Listener


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it), never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_listener_gives_up_after_max_reconnects_waiting_as_the_policy_says(refusing_port: int) -> None:
    """Three refused handshakes with max_reconnects=2: two waits of the policy, then BrokerUnavailable."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    listener = Listener(
        f"ws://127.0.0.1:{refusing_port}/ws",
        reconnect=RetryPolicy(base_s=0.5, factor=2.0, cap_s=5.0, jitter=0.0),
        max_reconnects=2,
    )
    listener.sleep = sleep

    with pytest.raises(BrokerUnavailable, match=f"Cannot reach Service B at ws://127.0.0.1:{refusing_port}/ws"):
        await listener.__aenter__()

    assert waits == [0.5, 1.0]


async def test_a_refused_handshake_is_a_service_error_at_once() -> None:
    """A 4xx to the WebSocket handshake is not retried: ServiceError(403, handshake_refused), no wait."""

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    listener = Listener(f"ws://127.0.0.1:{port}/ws", max_reconnects=5)
    listener.sleep = sleep
    async with server:
        with pytest.raises(ServiceError) as caught:
            await listener.__aenter__()
    assert (caught.value.status, caught.value.code, waits) == (403, "handshake_refused", [])
