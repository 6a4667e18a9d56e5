"""Fixtures of Service B's tests: the service on memory or a real Redis, and a fast stall."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

import mqctl
from mqctl.services.delivery import connection as connection_module
from mqctl.services.delivery import create_app
from mqctl.services.delivery import pumps as pumps_module
from tests.unit.services.test_delivery import Service, TestClient, make_settings


@pytest.fixture
def service() -> Iterator[Service]:
    """Service B with its lifespan running and a broker of its own on a fresh memory store."""
    settings = make_settings()
    app = create_app(settings)
    with TestClient(app) as client:
        yield Service(client, app, settings)


@pytest.fixture
def fast_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stalled connection is noticed after 0.3 s instead of 5 s."""
    monkeypatch.setattr(connection_module, "STALL_S", 0.3)
    monkeypatch.setattr(pumps_module, "TICK_S", 0.1)


@pytest.fixture
def redis_service() -> Iterator[Service]:
    """Service B on a real Redis under a key prefix of its own (skipped if no Redis answers)."""
    url = os.environ.get("MQCTL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    probe = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        probe.ping()
    except (redis.RedisError, OSError):
        pytest.skip(f"No Redis answers at {url}.")
    finally:
        probe.close()
    prefix = f"mqtest-{uuid.uuid4().hex}"
    settings = make_settings(broker_url=url)
    broker = mqctl.open_broker(url, prefix=prefix)
    app = create_app(settings, broker=broker)
    try:
        with TestClient(app) as client:
            yield Service(client, app, settings)
            assert client.portal is not None
            client.portal.call(app.state.delivery.aclose)  # readers first, while the broker is open
            client.portal.call(broker.aclose)
    finally:
        cleaner = redis.Redis.from_url(url, socket_timeout=5)
        try:
            keys = list(cleaner.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                cleaner.delete(*keys)
        finally:
            cleaner.close()
