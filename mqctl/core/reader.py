"""What group and broadcast readers share: a buffer, a filter, a blocking read that a close cuts
short, and the broker's register of open readers (``subscription.py``, ``broadcast.py``)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from mqctl.core.backend import Backend, Entry
from mqctl.core.errors import ConfigError, SubscriptionClosed
from mqctl.core.filters import Filter, Predicate, as_filter

CUT_SHORT_EVERY_S = 0.01
"""While a cancelled read has not ended, cancel it again this often (see ``cut_short``)."""


class Readers(Protocol):
    """Where a broker keeps its open readers: told when one opens and when it has closed."""

    def add(self, reader: Any) -> None: ...

    async def remove(self, reader: Any) -> None: ...


async def cut_short(fetch: asyncio.Task[None]) -> None:
    """Cancel a read in flight and wait for it to end.

    Python 3.11's ``asyncio.wait_for`` swallows a cancellation that lands as the future it waits
    on completes (gh-86296, fixed in 3.12), and redis-py sends each command through one: a read
    cancelled as it starts then blocks for its whole poll interval. So cancel again, every
    ``CUT_SHORT_EVERY_S``, until it ends: the next cancel lands in the blocking read itself."""
    while not fetch.done():
        fetch.cancel()
        await asyncio.wait({fetch}, timeout=CUT_SHORT_EVERY_S)
    if not fetch.cancelled():
        fetch.exception()  # retrieved: a read that failed as it was cut short says nothing more


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}.")


class Reader:
    """What group and broadcast readers share: a buffer, a filter and a prompt close."""

    def __init__(
        self,
        backend: Backend,
        topic: str,
        filter: Predicate | None,
        poll_interval_s: float,
        batch: int,
        live: Readers,
    ) -> None:
        check_positive("poll_interval", poll_interval_s)
        if not isinstance(batch, int) or batch < 1:
            raise ConfigError(f"batch must be a positive integer, got {batch!r}.")
        self.backend = backend
        self.topic = topic
        self.filter: Filter | None = None if filter is None else as_filter(filter)
        self.poll_interval_s = poll_interval_s
        self.batch = batch
        self._live = live  # the broker's open readers, which it closes when it closes
        self._buffer: deque[Entry] = deque()
        self._fetch: asyncio.Task[None] | None = None
        self._opened = False
        self._closed = False
        self._stopped = False  # reads no more (hand_back), though not closed
        self._iterated = False
        self.on_poll: Callable[[float], None] | None = None

    async def _open(self) -> None:
        """Prepare the reader (join the group, find the starting position...)."""

    async def _fill(self) -> None:
        """Put entries in the buffer, waiting at most one poll interval."""
        raise NotImplementedError

    async def __aenter__(self) -> Reader:
        await self._ensure_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _ensure_open(self) -> None:
        if self._closed:
            raise SubscriptionClosed(f"The subscription to {self.topic!r} is closed.")
        if not self._opened:
            await self._open()
            self._opened = True
            self._live.add(self)

    async def _next_entry(self) -> Entry:
        if (self._closed and self._iterated) or self._stopped:
            raise StopAsyncIteration  # closed (or stopped) from elsewhere mid-loop: the loop ends
        await self._ensure_open()
        self._iterated = True
        while not self._buffer:
            if self._closed or self._stopped:
                raise StopAsyncIteration
            # The read runs as its own task so that aclose() from anywhere can cut it short.
            self._fetch = asyncio.ensure_future(self._fill())
            started = time.monotonic()
            try:
                await self._fetch
                if self.on_poll is not None:
                    self.on_poll(time.monotonic() - started)
            except asyncio.CancelledError:
                if self._closed or self._stopped:
                    raise StopAsyncIteration from None
                raise
            finally:
                self._fetch = None
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # redis-py can swallow a cancellation in a blocking read (redis/redis-py#2028):
                # the read returns normally though our task was cancelled. Do not lose it.
                raise asyncio.CancelledError
        return self._buffer.popleft()

    async def aclose(self) -> None:
        """Stop reading. Returns at once, cutting short a blocking read in progress."""
        if self._closed:
            return
        self._closed = True
        if self._fetch is not None:
            await cut_short(self._fetch)
        await self._live.remove(self)
