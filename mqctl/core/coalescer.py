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

    def __init__(self, send: Send[Item, Result], *, max_batch: int = 1000, timeout_s: float | None = None) -> None:
        self._send = send
        self._max_batch = max_batch
        self._timeout_s = timeout_s
        # (item, its future, its deadline on the loop's clock), oldest first
        self._queue: list[tuple[Item, asyncio.Future[Result], float]] = []
        self._sending: list[tuple[Item, asyncio.Future[Result], float]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        """Items waiting for the next batch (one more joins it at no extra round trip)."""
        return len(self._queue)

    async def submit(self, item: Item) -> Result:
        """Send ``item`` in the next batch and return its own result (or raise its own error).

        Cancelled while ``item`` still waits for its batch, it is taken out and never sent. With
        ``timeout_s``, a result not in within that time raises ``TimeoutError`` (taken out too, if
        its batch has not left)."""
        future = self.submit_nowait(item)
        try:
            return await future
        except asyncio.CancelledError:
            # Given up on before its batch left: it must not be sent after the caller was told
            # it failed. Once sent, it is too late; the caller's error says "may be stored".
            for index, (_, queued, _) in enumerate(self._queue):
                if queued is future:
                    del self._queue[index]
                    break
            raise

    def submit_nowait(self, item: Item) -> asyncio.Future[Result]:
        """Queue ``item`` for the next batch now and return the future of its result.

        For a caller that queues many items before awaiting any (no task per item). Cancel
        the future before its batch leaves and the item is not sent."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        if self._timeout_s is None:
            self._queue.append((item, future, 0.0))
        else:
            # One timer for the whole coalescer, not one per item: deadlines come in the order
            # items do, so the timer only ever needs the oldest one still waiting.
            deadline = loop.time() + self._timeout_s
            self._queue.append((item, future, deadline))
            if self._timer is None:
                self._timer = loop.call_at(deadline, self._expire)
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        return future

    def _expire(self) -> None:
        """Fail every item past its deadline, unsent ones taken out of the queue; rearm for the next."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        next_deadline: float | None = None
        for entry in self._sending:  # sent: the caller's error says it may be stored
            future, deadline = entry[1], entry[2]
            if future.done():
                continue
            if deadline > now:
                next_deadline = deadline
                break
            future.set_exception(TimeoutError())
        expired = 0
        for _, future, deadline in self._queue:
            if deadline > now:
                if next_deadline is None:
                    next_deadline = deadline
                break
            expired += 1
            if not future.done():
                future.set_exception(TimeoutError())
        del self._queue[:expired]
        if next_deadline is None:
            for entry in self._queue:
                if not entry[1].done():
                    next_deadline = entry[2]
                    break
        if next_deadline is not None:
            self._timer = loop.call_at(next_deadline, self._expire)

    async def _drain(self) -> None:
        try:
            while self._queue:
                # A caller cancelled whose task has not yet run to take its item out: leave it out.
                batch = [entry for entry in self._queue[: self._max_batch] if not entry[1].done()]
                del self._queue[: self._max_batch]
                if not batch:
                    continue
                self._sending = batch
                try:
                    results: Sequence[Result | BaseException] = await self._send([entry[0] for entry in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"send() returned {len(results)} results for {len(batch)} items.")
                except Exception as exc:
                    results = [exc] * len(batch)
                except BaseException:
                    self._queue[:0] = batch  # cancelled: the finally below fails them all
                    raise
                self._sending = []
                for (_, future, _), result in zip(batch, results, strict=False):
                    if future.done():  # the caller was cancelled
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._drainer = None
            self._sending = []
            # Cancelled mid-send (at close): fail what is left rather than leave callers hanging.
            for _, future, _ in self._queue:
                future.cancel()
            self._queue.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    async def aclose(self) -> None:
        """Wait for the batch in flight and everything queued behind it."""
        if self._drainer is not None:
            await asyncio.shield(self._drainer)
