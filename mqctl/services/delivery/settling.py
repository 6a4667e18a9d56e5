"""Acks and nacks that Service B asks of the broker for its clients, and what it does when one fails."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence

from mqctl.core.subscription import Delivery, ack_many
from mqctl.services.delivery.metrics import ConnectionCounters

log = logging.getLogger(__name__)


async def settle(action: Callable[[], Awaitable[None]], what: str, delivery: Delivery) -> bool:
    """Ack or nack ``delivery``; a broker that fails is logged (the ack timeout redelivers)."""
    try:
        await action()
    except Exception as exc:
        _settle_failed(what, [delivery], exc)
        return False
    return True


def _settle_failed(what: str, deliveries: Sequence[Delivery], exc: Exception) -> None:
    first = deliveries[0]
    more = f" (and {len(deliveries) - 1} more)" if len(deliveries) > 1 else ""
    log.warning(
        "Could not %s message %s%s of %r for group %r: %s",
        what,
        first.id,
        more,
        first.topic,
        first.group,
        exc,
        extra={"message_id": first.id},
    )


def ack_all(deliveries: list[Delivery], counters: ConnectionCounters | None) -> Awaitable[list[Delivery]] | None:
    """Ask for the acks of every delivery at once; None if they were all taken to ride with the
    subscription's next read (the common case), counted here.

    Acks that must be sent now (a read is in flight) come back as one awaitable for all of them
    (``ack_many``: one future, one XACK shared with other connections' acks); it counts them once
    the broker has them and returns the deliveries it did not take."""
    done = ack_many(deliveries)
    if inspect.iscoroutine(done) or asyncio.isfuture(done):
        return _sent(deliveries, done, counters)
    if counters is not None:
        counters.settled("ack", len(deliveries))
    return None


async def _sent(
    deliveries: list[Delivery], done: Awaitable[None], counters: ConnectionCounters | None
) -> list[Delivery]:
    try:
        await done
    except Exception as exc:
        _settle_failed("acknowledge", deliveries, exc)
        return deliveries
    except asyncio.CancelledError:  # the subscription closed under them
        log.debug("The acks of %d deliveries were cancelled; the ack timeout redelivers them", len(deliveries))
        return []
    if counters is not None:
        counters.settled("ack", len(deliveries))
    return []


_detached: set[asyncio.Future[object]] = set()  # the loop keeps only weak references to tasks


def run_detached(work: Awaitable[object]) -> None:
    """Run ``work`` in a task of its own that does not end with the connection (acks of frames sent)."""
    task = asyncio.ensure_future(work)
    _detached.add(task)
    task.add_done_callback(_detached.discard)
