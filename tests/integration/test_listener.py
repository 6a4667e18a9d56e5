"""The listener's reconnects go through the one retry helper: its waits come from the policy,
through its injectable sleep, and it gives up after ``max_reconnects`` with a clear error."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from mqctl import BrokerUnavailable, RetryPolicy
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
