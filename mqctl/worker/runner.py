"""Running one handler: a subscription, ``concurrency`` workers, and what becomes of each message.

Each of the handler's ``concurrency`` workers reads one delivery (one at a time reads from the
subscription), calls the handler and settles the delivery by how it ended:

    returned                 ack (sent within 10 ms, whatever the other workers are doing)
    raised Retry(delay_s)    nack after delay_s (default: the backoff for this attempt)
    raised anything else     nack after the backoff; logged with its traceback
    ran past timeout_s       cancelled, then nacked as above
    raised Reject(reason)    dead letters at once, with the reason
    content did not validate dead letters at once, with pydantic's reason

A nack on the last attempt (``max_attempts``) dead-letters instead, with the reason.

The prefetch (messages fetched per round trip, waiting for a worker) starts at ``concurrency``
and widens, up to ``MAX_PREFETCH``, only while calls are quick enough that a fetched message
starts within a quarter of ``ack_timeout_s`` (from a running mean of the call time): a slow
handler never holds more than it can start in time, a fast one does not pay a round trip per
``concurrency`` messages.

Stopping (``stop``) reads no more and hands back what was read and not started, so another
worker gets it at once; running handlers finish. ``aclose`` then cancels whatever is still
running, and their messages go back to the group at once (a second signal, or the graceful
timeout). Nothing is acknowledged that a handler did not finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from mqctl.core import tracing
from mqctl.core.broker import Broker
from mqctl.core.errors import MQError
from mqctl.core.retry import RetryPolicy, retry_call
from mqctl.core.subscription import Delivery, Subscription
from mqctl.worker.handler import Handler, InvalidContent, Reject, Retry

log = logging.getLogger(__name__)

READ_RETRY = RetryPolicy(base_s=0.1, cap_s=5.0)
"""Backoff between failed reads (the broker restarting, a failover)."""
MAX_PREFETCH = 100
"""Most messages fetched per round trip (at least ``concurrency``)."""


@dataclass(slots=True)
class HandlerCounts:
    """What one handler has done since it started."""

    processed: int = 0
    """Returned, and acknowledged."""
    failed: int = 0
    """Raised (or timed out, or did not validate): retried or dead-lettered."""
    retried: int = 0
    dead_lettered: int = 0
    running: int = 0
    seconds: float = 0.0
    """Time spent in the handler, summed over calls."""


class HandlerRunner:
    """One handler at work on a broker."""

    def __init__(
        self,
        handler: Handler,
        broker: Broker,
        *,
        poll_interval_s: float = 2.0,
        consumer: str | None = None,
    ) -> None:
        self.handler = handler
        self.counts = HandlerCounts()
        self._subscription: Subscription = broker.subscribe(
            handler.topic,
            group=handler.group,
            consumer=consumer,
            filter=handler.filter,
            poll_interval=poll_interval_s,
            batch=handler.concurrency,  # widened by _fit_prefetch while calls are quick
            ack_timeout=handler.ack_timeout_s,
            max_attempts=handler.max_attempts,
            from_start=handler.from_start,
        )
        self._mean_call_s: float | None = None
        # One worker at a time reads; the others wait for that read to end. A worker that finds
        # deliveries ready takes one without suspending, so nobody waits and nothing is handed
        # over per message (an asyncio.Lock would cost a loop turn per message under load).
        self._reading = False
        self._waiting = 0
        self._read_over = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = False
        self.on_call: Callable[[float], None] | None = None
        """Called with each call's duration in seconds (the worker's histogram); quick, never raising."""

    async def start(self) -> None:
        """Join the group (creating it if new) and start the workers."""
        await self._subscription.__aenter__()
        name = self.handler.name
        self._workers = [
            asyncio.create_task(self._work(), name=f"mqctl-handler-{name}-{i}") for i in range(self.handler.concurrency)
        ]

    async def wait(self) -> None:
        """Return when every worker has ended (after ``stop``)."""
        if self._workers:
            await asyncio.wait(self._workers)

    async def stop(self) -> None:
        """Read no more; hand back what was read and not started. Running handlers go on."""
        self._stopping = True
        await self._subscription.hand_back()

    async def aclose(self) -> None:
        """Cancel the handlers still running and give their messages back to the group."""
        self._stopping = True
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        await self._subscription.aclose()

    # -- one worker -------------------------------------------------------------------

    async def _work(self) -> None:
        topic = self._subscription.topic

        def retrying(exc: Exception, wait_s: float) -> None:
            log.warning("Handler %s cannot read %r: %s; trying again in %.1f s", self.handler.name, topic, exc, wait_s)

        while not self._stopping:
            try:
                delivery = await self._next()
            except StopAsyncIteration:  # the subscription ended
                return
            except MQError:  # the broker went away: keep trying, as a service would
                try:
                    delivery = await retry_call(
                        self._next,
                        policy=READ_RETRY,
                        deadline_s=None,
                        should_retry=lambda exc: isinstance(exc, MQError) and not self._stopping,
                        on_retry=retrying,
                    )
                except (StopAsyncIteration, MQError):  # the subscription ended, or stopping
                    return
            await self._handle(delivery)

    async def _next(self) -> Delivery:
        while self._reading:
            self._waiting += 1  # reset when the read ends and wakes them all
            await self._read_over.wait()
        self._reading = True
        try:
            return await self._subscription.__anext__()
        finally:
            self._reading = False
            if self._waiting:  # wake the workers waiting for this read, once
                self._waiting = 0
                over, self._read_over = self._read_over, asyncio.Event()
                over.set()

    async def _handle(self, delivery: Delivery) -> None:
        handler = self.handler
        counts = self.counts
        counts.running += 1
        started = time.perf_counter()
        bound: asyncio.Timeout | None = None
        try:
            try:
                args, kwargs = handler.arguments(delivery)
            except InvalidContent as exc:
                counts.failed += 1
                await self._dead_letter(delivery, f"invalid content: {exc}")
                return
            try:
                with tracing.consuming("process", handler.topic, delivery.id, delivery.headers, handler.group):
                    if handler.timeout_s is None:
                        await handler.func(*args, **kwargs)
                    else:
                        async with asyncio.timeout(handler.timeout_s) as bound:
                            await handler.func(*args, **kwargs)
            except Retry as exc:
                counts.failed += 1
                await self._nack(delivery, exc.delay_s, exc.reason)
            except Reject as exc:
                counts.failed += 1
                await self._dead_letter(delivery, exc.reason)
            except TimeoutError as exc:
                counts.failed += 1
                if bound is not None and bound.expired():
                    reason = f"timed out after {handler.timeout_s:g} s"
                else:
                    reason = _describe(exc)
                    self._log_failure(delivery, exc)
                await self._nack(delivery, None, reason)
            except Exception as exc:
                counts.failed += 1
                self._log_failure(delivery, exc)
                await self._nack(delivery, None, _describe(exc))
            else:
                await delivery.ack()
                counts.processed += 1
        except MQError as exc:  # the settle did not reach the broker: the ack timeout brings it back
            log.warning(
                "Handler %s could not settle message %s: %s; it comes back after the ack timeout",
                handler.name,
                delivery.id,
                exc,
                extra={"message_id": delivery.id},
            )
        finally:
            elapsed = time.perf_counter() - started
            counts.seconds += elapsed
            if self.on_call is not None:
                self.on_call(elapsed)
            counts.running -= 1
            self._fit_prefetch(elapsed)

    def _fit_prefetch(self, elapsed_s: float) -> None:
        mean = self._mean_call_s
        mean = self._mean_call_s = elapsed_s if mean is None else mean + 0.1 * (elapsed_s - mean)
        concurrency = self.handler.concurrency
        startable = int(concurrency * (self.handler.ack_timeout_s / 4) / max(mean, 1e-6))
        self._subscription.batch = max(concurrency, min(startable, MAX_PREFETCH))

    async def _nack(self, delivery: Delivery, delay_s: float | None, reason: str) -> None:
        if delivery.attempt >= self.handler.max_attempts:
            self.counts.dead_lettered += 1
        else:
            self.counts.retried += 1
            if delay_s is None:
                delay_s = self.handler.retry.delay_s(delivery.attempt)
        await delivery.nack(delay_s, reason=reason)

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        self.counts.dead_lettered += 1
        await delivery.dead_letter(reason)

    def _log_failure(self, delivery: Delivery, exc: BaseException) -> None:
        last = delivery.attempt >= self.handler.max_attempts
        log.warning(
            "Handler %s failed on message %s (attempt %d of %d): %s%s",
            self.handler.name,
            delivery.id,
            delivery.attempt,
            self.handler.max_attempts,
            _describe(exc),
            "; it goes to the dead letters" if last else "; it will be retried",
            exc_info=exc,
            extra={"message_id": delivery.id},
        )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
