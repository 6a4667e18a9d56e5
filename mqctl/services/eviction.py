"""The services' start-up check of Redis's eviction policy.

A Redis that evicts keys when it is full can delete a topic's stream, and every message in
it, without an error anywhere. With ``noeviction`` a full Redis refuses writes instead, and
Service A answers 503 ``broker_out_of_memory``. So each service reads the policy once at
start and logs a WARNING when it is anything else.
"""

from __future__ import annotations

import asyncio
import logging

from mqctl.core.broker import Broker
from mqctl.core.errors import MQError

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 5.0
SAFE_POLICY = "noeviction"


async def warn_if_evicting(broker: Broker, service: str) -> str | None:
    """Log a WARNING if the broker may delete keys when full; return its policy (None: unknown)."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            policy = await broker.eviction_policy()
    except (MQError, TimeoutError) as exc:
        log.info("%s could not read the broker's eviction policy (%s); it should be %s.", service, exc, SAFE_POLICY)
        return None
    if policy is not None and policy != SAFE_POLICY:
        what = "idempotency records" if policy.startswith("volatile") else "topic streams and the messages in them"
        log.warning(
            "%s: Redis has maxmemory-policy %r, so when it is full it deletes keys, %s included, without an "
            "error. Set maxmemory-policy %s (CONFIG SET maxmemory-policy %s, and in redis.conf) so that a full "
            "Redis refuses publishes (503 broker_out_of_memory) instead.",
            service,
            policy,
            what,
            SAFE_POLICY,
            SAFE_POLICY,
        )
    return policy
