"""Consuming in tests: bounded waits instead of fixed sleeps, and a consumer that runs in a task."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import mqctl

WAIT_S = 5.0
"""How long any test waits for something that should happen within a few poll intervals."""

Handler = Callable[[mqctl.Delivery], Awaitable[None]]


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float = WAIT_S, what: str = "") -> None:
    """Return once ``check()`` is true; fail the test if it is not within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            # What tests wait on (stats, dead letters) has no change event to await: poll it.
            while not await check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"Not true within {timeout_s:g} s: {what or check!r}") from None


async def take(reader: mqctl.Subscription, count: int, *, timeout_s: float = WAIT_S) -> list[mqctl.Delivery]:
    """The next ``count`` deliveries of an open subscription, unsettled."""
    deliveries: list[mqctl.Delivery] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(deliveries) < count:
                deliveries.append(await anext(reader))
    except TimeoutError:
        raise AssertionError(f"Got {len(deliveries)} of {count} deliveries within {timeout_s:g} s.") from None
    return deliveries


async def take_broadcast(
    reader: mqctl.Broadcast, count: int, *, timeout_s: float = WAIT_S
) -> list[tuple[str, mqctl.Message]]:
    """The next ``count`` ``(id, message)`` pairs of an open broadcast."""
    pairs: list[tuple[str, mqctl.Message]] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(pairs) < count:
                pairs.append(await anext(reader))
    except TimeoutError:
        raise AssertionError(f"Got {len(pairs)} of {count} broadcast messages within {timeout_s:g} s.") from None
    return pairs


async def ack(delivery: mqctl.Delivery) -> None:
    await delivery.ack()


class Consumer:
    """Iterates a subscription in a task, recording every delivery and handing it to ``handle``
    (by default: acknowledge it). ``async with Consumer(broker.subscribe(...)) as consumer``."""

    def __init__(self, subscription: mqctl.Subscription, handle: Handler = ack) -> None:
        self.subscription = subscription
        self.deliveries: list[mqctl.Delivery] = []
        self._handle = handle
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.deliveries]

    async def __aenter__(self) -> Consumer:
        await self.subscription.__aenter__()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        try:
            async for delivery in self.subscription:
                self.deliveries.append(delivery)
                await self._handle(delivery)
        except mqctl.SubscriptionClosed:
            # A close that lands while the handler awaits I/O ends the loop this way (see
            # test_close_from_another_task_ends_iteration_between_deliveries); only ours is expected.
            if not self._stopping:
                raise

    def _check_running(self) -> None:
        assert self._task is not None, "use the Consumer with async with"
        if self._task.done():
            self._task.result()  # re-raise what stopped it
            raise AssertionError("The consumer stopped iterating early.")

    async def wait_for(self, count: int, *, timeout_s: float = WAIT_S) -> list[mqctl.Delivery]:
        """The first ``count`` deliveries, once there are that many."""

        async def enough() -> bool:
            self._check_running()
            return len(self.deliveries) >= count

        await eventually(enough, timeout_s=timeout_s, what=f"{count} deliveries")
        return self.deliveries[:count]

    async def stop(self) -> None:
        """Close the subscription and wait for the task; re-raise whatever it raised."""
        self._stopping = True
        await self.subscription.aclose()
        if self._task is not None:
            async with asyncio.timeout(WAIT_S):
                await self._task
