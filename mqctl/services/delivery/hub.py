"""The hub of Service B: its connections and pumps, and a clean shutdown.

A connection joins the pump it needs (one per (topic, group) in group mode, one per
topic in broadcast mode), which starts with its first connection and closes with its
last. When a group connection leaves, what it had not acknowledged goes back to the
group at once (``nack(0)``). ``close_clients`` stops handing out messages, gives group
clients a moment to acknowledge what they hold, then closes every connection with 1001
(``server.serve`` runs it before uvicorn's shutdown); ``aclose`` closes what connections
are left, then every pump, handing back whatever was read and not acknowledged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable

from mqctl.config import Settings
from mqctl.core.broker import Broker
from mqctl.core.subscription import Delivery
from mqctl.services.delivery.connection import Connection
from mqctl.services.delivery.frames import GOING_AWAY, dumps
from mqctl.services.delivery.metrics import DeliveryMetrics
from mqctl.services.delivery.pumps import BroadcastPump, GroupPump, wait_for
from mqctl.services.delivery.settling import settle

log = logging.getLogger(__name__)

OPEN_WAIT_S = 2.0
"""How long a new connection waits for its pump's first broker call before it is told ``subscribed``."""
DRAIN_S = 2.0
"""On shutdown, how long group clients get to acknowledge what they were sent before the 1001 close."""
SHUTDOWN_REASON = "server shutting down; reconnect to resume"


class Hub:
    """Every connection and pump of one service instance."""

    def __init__(self, broker: Broker, settings: Settings, *, metrics: DeliveryMetrics | None = None) -> None:
        self.broker = broker
        self.settings = settings
        self.metrics = metrics
        self._groups: dict[tuple[str, str], GroupPump] = {}
        self._broadcasts: dict[str, BroadcastPump] = {}
        self._connections: set[Connection] = set()
        self._left = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False

    def _pump_for(self, connection: Connection) -> GroupPump | BroadcastPump:
        pump: GroupPump | BroadcastPump | None
        if connection.mode == "group":
            key = (connection.topic, connection.group or self.settings.group)
            pump = self._groups.get(key)
            if pump is None:
                pump = self._groups[key] = GroupPump(self.broker, self.settings, *key, self.metrics)
                pump.start()
        else:
            pump = self._broadcasts.get(connection.topic)
            if pump is None:
                pump = BroadcastPump(self.broker, self.settings, connection.topic, self.metrics)
                self._broadcasts[connection.topic] = pump
                pump.start()
        return pump

    async def join(self, connection: Connection, *, last_id: str | None = None) -> None:
        """Attach ``connection`` to its pump (starting it if needed) after the ``subscribed`` frame."""
        self._connections.add(connection)
        if self._closing:
            connection.close(GOING_AWAY, SHUTDOWN_REASON)
            return
        pump = self._pump_for(connection)
        pump.users.add(connection)
        if last_id is None or not isinstance(pump, BroadcastPump):
            await wait_for(pump.opened, OPEN_WAIT_S)
        else:
            await pump.opened.wait()  # a resume needs the live cursor to be set, or a gap could open
        connection.push(
            dumps(
                {
                    "event": "subscribed",
                    "topic": connection.topic,
                    "mode": connection.mode,
                    "group": connection.group,
                    "filter": None if connection.filter is None else repr(connection.filter),
                }
            ),
            force=True,
        )
        if last_id is not None and isinstance(pump, BroadcastPump):
            await pump.resume(connection, last_id)
        else:
            pump.attach(connection)
        log.debug("A client joined the %s", pump)

    def leave(self, connection: Connection) -> None:
        """Detach ``connection``; its unacknowledged deliveries go back to the group at once."""
        self._connections.discard(connection)
        self._left.set()
        pump: GroupPump | BroadcastPump | None
        if connection.mode == "group":
            key = (connection.topic, connection.group or self.settings.group)
            pump = self._groups.get(key)
            unacked = connection.take_unacked()
            if unacked:
                self._spawn(_nack_all(unacked))
            if pump is not None:
                pump.detach(connection)
                if not pump.users:
                    del self._groups[key]
                    self._spawn(pump.aclose())
        else:
            pump = self._broadcasts.get(connection.topic)
            if pump is not None:
                pump.detach(connection)
                if not pump.users:
                    del self._broadcasts[connection.topic]
                    self._spawn(pump.aclose())

    def clients(self) -> list[Connection]:
        """Every connection joined or joining."""
        return list(self._connections)

    def served_groups(self) -> list[tuple[str, str]]:
        """The (topic, group) pairs this instance reads, once their reader has opened the group."""
        return [key for key, pump in self._groups.items() if pump.opened.is_set()]

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close_clients(self, *, drain_s: float = DRAIN_S, timeout_s: float = 3.0) -> None:
        """Stop handing out messages, wait up to ``drain_s`` for group clients to acknowledge
        what they were sent, then close every connection with 1001 and wait (up to
        ``timeout_s``) for them to leave. What is still unacknowledged goes back to its group.

        Acknowledgements in flight when the close comes would be lost and their messages
        delivered twice; the drain lets them land first, so a clean shutdown duplicates nothing
        a client acknowledges in time.
        """
        self._closing = True
        deadline = time.monotonic() + drain_s
        for connection in list(self._connections):
            connection.draining = True
        while time.monotonic() < deadline and any(
            c.unacked and not c.closing for c in self._connections if c.mode == "group"
        ):
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + timeout_s
        for connection in list(self._connections):
            connection.close(GOING_AWAY, SHUTDOWN_REASON)
        while self._connections and time.monotonic() < deadline:
            self._left.clear()
            await wait_for(self._left, deadline - time.monotonic())
        if self._connections:
            log.warning("%d WebSocket client(s) did not finish closing in time", len(self._connections))

    async def aclose(self, *, timeout_s: float = 3.0) -> None:
        """Close every connection left (1001, no drain), then every pump; hand back what was not acknowledged."""
        deadline = time.monotonic() + timeout_s
        await self.close_clients(drain_s=0.0, timeout_s=timeout_s)
        pumps: list[GroupPump | BroadcastPump] = [*self._groups.values(), *self._broadcasts.values()]
        self._groups.clear()
        self._broadcasts.clear()
        for pump in pumps:
            self._spawn(pump.aclose())
        if self._background:
            _, pending = await asyncio.wait(self._background, timeout=max(deadline - time.monotonic(), 0.5))
            for task in pending:
                task.cancel()


async def _nack_all(deliveries: list[Delivery]) -> None:
    for delivery in deliveries:
        await settle(functools.partial(delivery.nack, 0), "hand back", delivery)
