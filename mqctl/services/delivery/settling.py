"""Acks and nacks that Service B asks of the broker for its clients, and what it does when one fails."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

from mqctl.core.subscription import Delivery
from mqctl.services.delivery.metrics import ConnectionCounters

log = logging.getLogger(__name__)


async def settle(action: Callable[[], Awaitable[None]], what: str, delivery: Delivery) -> bool:
    """Ack or nack ``delivery``; a broker that fails is logged (the ack timeout redelivers)."""
    try:
        await action()
    except Exception as exc:
        _settle_failed(what, delivery, exc)
        return False
    return True


def _settle_failed(what: str, delivery: Delivery, exc: Exception) -> None:
    log.warning(
        "Could not %s message %s of %r for group %r: %s",
        what,
        delivery.id,
        delivery.topic,
        delivery.group,
        exc,
        extra={"message_id": delivery.id},
    )


def ack_all(deliveries: list[Delivery], counters: ConnectionCounters | None) -> Awaitable[list[Delivery]] | None:
    """Ask for the ack of every delivery before awaiting any; None if all were taken at once.

    An ack the subscription takes at once (to ride with its next read: the common case) is
    counted here. Those it must send now (a read is in flight) come back as one awaitable
    that awaits them together, so they can share one XACK; it returns those that failed."""
    sending: list[tuple[Delivery, Awaitable[None]]] = []
    for delivery in deliveries:
        done = delivery.ack()
        if inspect.iscoroutine(done) or asyncio.isfuture(done):
            sending.append((delivery, done))
        elif counters is not None:
            counters.settled("ack")
    return _send_acks(sending, counters) if sending else None


async def _send_acks(
    sending: list[tuple[Delivery, Awaitable[None]]], counters: ConnectionCounters | None
) -> list[Delivery]:
    results = await asyncio.gather(*(done for _, done in sending), return_exceptions=True)
    failed = []
    for (delivery, _), result in zip(sending, results, strict=True):
        if isinstance(result, Exception):
            _settle_failed("acknowledge", delivery, result)
            failed.append(delivery)
        elif isinstance(result, BaseException):
            log.debug("The ack of %s was cancelled; the ack timeout redelivers it", delivery.id)
        elif counters is not None:
            counters.settled("ack")
    return failed


_detached: set[asyncio.Future[object]] = set()  # the loop keeps only weak references to tasks


def run_detached(work: Awaitable[object]) -> None:
    """Run ``work`` in a task of its own that does not end with the connection (acks of frames sent)."""
    task = asyncio.ensure_future(work)
    _detached.add(task)
    task.add_done_callback(_detached.discard)
