"""The test rig's ports: outside the kernel's ephemeral range, free, and never handed out twice."""

from __future__ import annotations

import socket

import pytest

from tests import servers
from tests.servers import RedisServer, ServerStartError, free_port


def test_ports_are_outside_the_ephemeral_range_and_never_repeat() -> None:
    """200 ports: none in the ephemeral range, none twice, each bindable when handed out."""
    low, high = servers.ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(servers.LOWEST_PORT <= p <= 65535 and not low <= p <= high for p in ports)


def test_a_bus_port_is_checked_too() -> None:
    """With also_offset, port + offset is outside the ephemeral range and free as well."""
    low, high = servers.ephemeral_range()
    for _ in range(20):
        port = free_port(also_offset=10_000)
        assert not low <= port + 10_000 <= high and port + 10_000 <= 65535
        with socket.socket() as s:
            s.bind(("127.0.0.1", port + 10_000))


def test_a_port_something_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """With one candidate port left and a listener on it, free_port refuses instead of handing it out."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Everything but `port` is "ephemeral" or handed out already: only the taken port is a candidate.
        monkeypatch.setattr(servers, "ephemeral_range", lambda: (servers.LOWEST_PORT, port - 1))
        monkeypatch.setattr(servers, "_handed_out", set(range(port + 1, 65536)))
        with pytest.raises(RuntimeError, match="taken"):
            free_port()


def test_a_redis_that_cannot_bind_says_why() -> None:
    """A redis-server that cannot start fails at once with the end of its own log."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = RedisServer(taken.getsockname()[1])
        with pytest.raises(ServerStartError, match=r"(?i)address already in use"):
            server.start()
        server.stop()
