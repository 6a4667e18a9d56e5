"""Coalescing: concurrent calls share one round trip (ioredis calls it auto-pipelining).

Every ``submit(item)`` waits for its own result, but while one batch is on its way to
the broker, the items submitted meanwhile gather into the next batch. One caller alone
pays one round trip, as without coalescing; fifty concurrent callers pay about one
round trip between them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# ``send`` returns one result per item: a value, or an exception for that item alone.
Send = Callable[[Sequence[Item]], Awaitable[Sequence["Result | BaseException"]]]


class Coalescer(Generic[Item, Result]):
    """Batch concurrent ``submit`` calls into calls of ``send``, one batch in flight at a time."""

    def __init__(self, send: Send[Item, Result], *, max_batch: int = 1000) -> None:
        self._send = send
        self._max_batch = max_batch
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._drainer: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Items waiting for the next batch (one more joins it at no extra round trip)."""
        return len(self._queue)

    async def submit(self, item: Item) -> Result:
        """Send ``item`` in the next batch and return its own result (or raise its own error).

        Cancelled while ``item`` still waits for its batch, it is taken out and never sent."""
        future = self.submit_nowait(item)
        try:
            return await future
        except asyncio.CancelledError:
            # Given up on (a deadline) before its batch left: it must not be sent after the caller
            # was told it failed. Once sent, it is too late; the caller's error says "may be stored".
            for index, (_, queued) in enumerate(self._queue):
                if queued is future:
                    del self._queue[index]
                    break
            raise

    def submit_nowait(self, item: Item) -> asyncio.Future[Result]:
        """Queue ``item`` for the next batch now and return the future of its result.

        For a caller that queues many items before awaiting any (no task per item). Cancel
        the future before its batch leaves and the item is not sent."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        return future

    async def _drain(self) -> None:
        try:
            while self._queue:
                # A caller cancelled whose task has not yet run to take its item out: leave it out.
                batch = [entry for entry in self._queue[: self._max_batch] if not entry[1].done()]
                del self._queue[: self._max_batch]
                if not batch:
                    continue
                try:
                    results: Sequence[Result | BaseException] = await self._send([item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"send() returned {len(results)} results for {len(batch)} items.")
                except Exception as exc:
                    results = [exc] * len(batch)
                except BaseException:
                    self._queue[:0] = batch  # cancelled: the finally below fails them all
                    raise
                for (_, future), result in zip(batch, results, strict=False):
                    if future.done():  # the caller was cancelled
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._drainer = None
            # Cancelled mid-send (at close): fail what is left rather than leave callers hanging.
            for _, future in self._queue:
                future.cancel()
            self._queue.clear()

    async def aclose(self) -> None:
        """Wait for the batch in flight and everything queued behind it."""
        if self._drainer is not None:
            await asyncio.shield(self._drainer)
