"""``mqctl.connect``: a broker for a URL, as an async context manager."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mqctl.backends import open_backend
from mqctl.core.broker import Broker, BrokerOptions
from mqctl.core.errors import ConfigError

_BROKER_OPTIONS = {f.name for f in dataclasses.fields(BrokerOptions)}


def open_broker(url: str = "memory://", **options: Any) -> Broker:
    """A broker for ``url``; the caller must ``await broker.aclose()``.

    Options named in ``BrokerOptions`` (``max_backlog``, ``max_message_bytes``,
    ``retention``, ``publish_timeout_s``, ``publish_retry``, ``redelivery``,
    ``default_group``, ``idempotency_window_s``) set the broker's policy; any other
    option goes to the backend (for Redis: ``prefix``, ``max_connections``, ...).
    """
    broker_options = {k: v for k, v in options.items() if k in _BROKER_OPTIONS}
    backend_options = {k: v for k, v in options.items() if k not in _BROKER_OPTIONS}
    try:
        policy = BrokerOptions(**broker_options)
    except TypeError as exc:
        raise ConfigError(f"Invalid broker option: {exc}.") from exc
    return Broker(open_backend(url, **backend_options), policy, url=url)


@asynccontextmanager
async def connect(url: str = "memory://", **options: Any) -> AsyncIterator[Broker]:
    """Connect to the broker at ``url`` and close it on exit.

    async with mqctl.connect("redis://127.0.0.1:6379/0", max_backlog=10_000) as broker:
        await broker.publish("orders", {"type": "created", "content": {"id": 1}})
    """
    broker = open_broker(url, **options)
    try:
        yield broker
    finally:
        await broker.aclose()
