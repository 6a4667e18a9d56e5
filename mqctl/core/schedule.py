"""Delayed publishing, on every backend, with nothing but the broker's own topics and groups.

``broker.publish(topic, message, delay_s=30)`` stores the message at once on the topic's
schedule, an internal topic (``mqctl.delayed.<topic>``), with its due time in a header. A
promoter reads the schedule as the group ``mqctl-scheduler``: a message that is due is
published onto its topic and acknowledged; one that is not is nacked to come back when it is
due. So a delayed message is as durable as any message of the broker (it survives a restart of
every process where the broker keeps its data), and becomes visible to every group of its
topic once due, not before.

A broker runs a topic's promoter while anything of it subscribes to or broadcasts that topic
(Service B, ``mqctl worker``, a library subscriber); promoters of many processes share the one
group, and the promoted publish carries an idempotency key, so a promoter that crashes between
publish and ack does not publish twice within the idempotency window. Without any subscriber,
due messages wait on the schedule and are promoted when one comes: nobody could have read them
earlier anyway. ``stats(topic).scheduled`` counts what waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from mqctl.core.errors import ConfigError, MQError
from mqctl.core.message import Message
from mqctl.core.retry import RetryPolicy, retry_call

if TYPE_CHECKING:
    from mqctl.core.subscription import Subscription

Publish = Callable[..., Awaitable[object]]
"""``Broker.publish``: ``publish(topic, message, key=..., idempotency_key=...)``."""

log = logging.getLogger(__name__)

PREFIX = "mqctl.delayed."
"""Schedule topics are named this followed by their topic; names with it are mqctl's."""
GROUP = "mqctl-scheduler"
DUE_HEADER = "mqctl-due-ms"
KEY_HEADER = "mqctl-key"
MAX_DELAY_S = 366 * 24 * 3600.0
HOP_S = 3600.0
"""A schedule entry comes back at least this often (its ack timeout) until it is due."""
RETRY_S = 1.0
"""After a failed promotion (a full topic, a broker away), when to try again."""
ATTEMPTS = 10**8  # an entry is nacked once per hop until due: never dead-lettered for waiting


def schedule_topic(topic: str) -> str:
    return PREFIX + topic


def is_schedule(topic: str) -> bool:
    return topic.startswith(PREFIX)


def topic_of(name: str) -> str:
    """The topic a schedule belongs to; any other name as it is."""
    return name[len(PREFIX) :] if name.startswith(PREFIX) else name


def check_delay(delay_s: object) -> float:
    """``delay_s`` as seconds if it is a number from 0 to a year, else ``ConfigError``."""
    if isinstance(delay_s, bool) or not isinstance(delay_s, int | float) or not 0 <= delay_s <= MAX_DELAY_S:
        raise ConfigError(f"delay_s must be a number of seconds from 0 to {MAX_DELAY_S:g}, got {delay_s!r}.")
    if not math.isfinite(delay_s):
        raise ConfigError(f"delay_s must be finite, got {delay_s!r}.")
    return float(delay_s)


def scheduled(message: Message, delay_s: float, key: str | None, *, now_s: float | None = None) -> Message:
    """``message`` as it waits on the schedule: its due time (and partition key) in headers."""
    due_ms = int(((time.time() if now_s is None else now_s) + delay_s) * 1000)
    headers = {**message.headers, DUE_HEADER: str(due_ms)}
    if key is not None:
        headers[KEY_HEADER] = key
    return Message(message.type, message.content, headers)


def _restored(message: Message) -> tuple[Message, str | None, float]:
    """The message as it was published, its partition key and its due time (epoch seconds)."""
    headers: Mapping[str, str] = message.headers
    try:
        due_s = int(headers.get(DUE_HEADER, "0")) / 1000
    except ValueError:
        due_s = 0.0
    kept = {k: v for k, v in headers.items() if k not in (DUE_HEADER, KEY_HEADER)}
    return Message(message.type, message.content, kept), headers.get(KEY_HEADER), due_s


async def promote(sub: Subscription, publish: Publish, topic: str) -> None:
    """Move ``topic``'s due messages from its schedule onto it with ``publish``, until ``sub``
    closes. ``sub`` reads the schedule as the group ``GROUP`` on ``schedule_topic(topic)``, with
    ``ack_timeout=HOP_S`` and ``max_attempts=ATTEMPTS``, from the start."""
    async with sub:
        async for delivery in sub:
            message, key, due_s = _restored(delivery.message)
            wait_s = due_s - time.time()
            if wait_s > 0:
                await delivery.nack(wait_s, reason="not due yet")
                continue
            try:
                await publish(topic, message, key=key, idempotency_key=f"mqctl-delayed-{delivery.id}")
            except MQError as exc:
                log.warning("Could not publish a due message of %r (%s); trying again in %g s", topic, exc, RETRY_S)
                await delivery.nack(RETRY_S, reason=f"promotion failed: {exc}")
                continue
            await delivery.ack()


class Promoters:
    """A broker's promoters: one per topic that something of this broker reads (``start`` when a
    reader opens, ``stop`` when the topic's last one closes), each promoting until it is stopped,
    and trying again with ``retry``'s backoff while the broker is away."""

    def __init__(self, subscribe: Callable[..., Subscription], publish: Publish, retry: RetryPolicy) -> None:
        self._subscribe = subscribe
        self._publish = publish
        self._retry = retry
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closing = False

    def start(self, topic: str) -> None:
        """Promote ``topic``'s due messages from now on (nothing if it already is, or is a schedule)."""
        if is_schedule(topic) or topic in self._tasks or self._closing:
            return
        # In a context of its own: not in the span of whoever subscribed (mqctl.core.tracing).
        self._tasks[topic] = asyncio.get_running_loop().create_task(self._run(topic), context=contextvars.Context())

    async def stop(self, topic: str) -> None:
        """Stop promoting ``topic``."""
        task = self._tasks.pop(topic, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def aclose(self) -> None:
        """Stop every promoter, for good."""
        self._closing = True
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, topic: str) -> None:
        async def promote_once() -> None:
            sub = self._subscribe(
                schedule_topic(topic),
                group=GROUP,
                ack_timeout=HOP_S,
                max_attempts=ATTEMPTS,
                poll_interval=1.0,
                from_start=True,
            )
            await promote(sub, self._publish, topic)

        def retrying(exc: Exception, wait_s: float) -> None:
            log.warning(
                "Delayed messages of %r cannot be promoted now (%s); trying again in %.1f s", topic, exc, wait_s
            )

        # the broker went away: try again, as a consumer would, until the promoters close
        with contextlib.suppress(MQError):
            await retry_call(
                promote_once,
                policy=self._retry,
                deadline_s=None,
                should_retry=lambda exc: isinstance(exc, MQError) and not self._closing,
                on_retry=retrying,
            )
