"""What Service A, Service B and ``mqctl up`` do with their settings before they serve.

``broker_for(settings)`` is the one place settings become a broker, so the services and the
CLI cannot drift apart: the services' limits, the replica wait when one is set, and the
services' durable default group. The library creates no group of its own accord (a user who
names their groups must not be refused because of one they never use); the services do,
because a message posted to Service A before any WebSocket client connects must wait for one.

``check_broker(broker, service)`` runs once at start, in the background (the broker may be
down; the service serves anyway and answers 503 until it is back). When the broker refuses
mqctl (protected mode, a password, an ACL, a read-only replica, a disk it cannot save to) it
logs one line with what the broker answered and what to do. Then it logs a WARNING for each
way the broker's configuration can lose messages (``Broker.warnings``: a Redis set to evict
keys when it is full can delete a topic's stream, and every message in it, without an error).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mqctl.config import Settings
from mqctl.connect import open_broker
from mqctl.core.broker import Broker
from mqctl.core.errors import BrokerUnavailable, MQError

log = logging.getLogger(__name__)


def broker_for(settings: Settings) -> Broker:
    """The services' broker for ``settings``, not yet connected; the caller closes it."""
    options: dict[str, Any] = {
        "max_backlog": settings.max_backlog,
        "max_message_bytes": settings.max_message_bytes,
        "retention": settings.retention,
        "publish_timeout_s": settings.publish_timeout_s,
        # Created with each new topic, reading from its start: what is posted before any
        # client connects waits for the group clients join when they name none.
        "default_group": settings.group,
    }
    if settings.replicas and settings.broker_url.startswith("nats:"):
        # JetStream replicates each stream (R = replicas + 1) and acks a publish once a quorum has it
        options["replicas"] = settings.replicas + 1
    elif settings.replicas:  # Redis: WAIT for this many replicas; memory:// takes no such option
        options |= {"min_replicas": settings.replicas, "replica_timeout_s": settings.replica_timeout_s}
    return open_broker(settings.broker_url, **options)


CHECK_TIMEOUT_S = 5.0


async def check_broker(broker: Broker, service: str) -> str | None:
    """Check once that ``broker`` answers and takes writes; log one line saying what it answered and
    what to do if not, else warn about an evicting Redis. Returns the problem, None if there is none."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await broker.ping(write=True)
    except TimeoutError:
        problem = f"the broker did not answer within {CHECK_TIMEOUT_S:g} s"
    except BrokerUnavailable as exc:
        problem = str(exc)
    else:
        await warn_about(broker, service)
        return None
    log.error("%s cannot use its broker yet (it serves, and answers 503 meanwhile): %s", service, problem)
    return problem


async def warn_about(broker: Broker, service: str) -> list[str]:
    """Log a WARNING for each way the broker's configuration can lose messages; return them."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            warnings = await broker.warnings()
    except (MQError, TimeoutError) as exc:
        log.info("%s could not read the broker's configuration (%s).", service, exc)
        return []
    for warning in warnings:
        log.warning("%s: %s", service, warning)
    return warnings
