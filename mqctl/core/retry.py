"""Retry policy: how long to wait before the next try, and how many tries there are.

Backoff is a pure function of the attempt number and a random source, so tests pin it
down without sleeping; ``retry_call`` takes ``sleep`` and ``clock`` for the same reason.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from mqctl.core.errors import ConfigError, PublishTimeout

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped.

    The wait before try ``n + 1`` (after ``n`` failed tries) is drawn uniformly from
    ``[base_s * factor**(n-1) * (1 - jitter), base_s * factor**(n-1)]``, never above ``cap_s``.
    """

    base_s: float = 0.5
    factor: float = 2.0
    cap_s: float = 30.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.cap_s < 0:
            raise ConfigError(f"Backoff times must be >= 0, got base_s={self.base_s!r}, cap_s={self.cap_s!r}.")
        if self.factor < 1:
            raise ConfigError(f"Backoff factor must be >= 1, got {self.factor!r}.")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"Backoff jitter must be within [0, 1], got {self.jitter!r}.")

    def delay_s(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after ``failures`` failed tries (``failures >= 1``)."""
        if failures < 1:
            return 0.0
        try:
            ceiling = min(self.cap_s, self.base_s * self.factor ** (failures - 1))
        except OverflowError:  # a huge failure count: the cap rules
            ceiling = self.cap_s
        return ceiling * (1 - self.jitter * rand())


async def retry_call(
    call: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    deadline_s: float | None,
    should_retry: Callable[[Exception], bool],
    max_retries: int | None = None,
    on_retry: Callable[[Exception, float], object] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Await ``call()``, retrying errors for which ``should_retry`` is true, with backoff,
    until ``deadline_s`` passes (None: for as long as it takes, until cancelled) or
    ``max_retries`` retries failed too; then the last error is re-raised. Each try is itself
    bounded by the time left, so a hung call cannot outlive the deadline. ``on_retry(error,
    wait_s)`` is called before each wait (to log it).
    """
    end = math.inf if deadline_s is None else clock() + deadline_s
    failures = 0
    last: Exception | None = None
    while True:
        # No deadline, no timeout scope: the worker and the pumps call this once per read.
        bound = None if deadline_s is None else asyncio.timeout(max(end - clock(), 0.001))
        try:
            if bound is None:
                return await call()
            async with bound:
                return await call()
        except Exception as exc:
            if bound is not None and bound.expired():
                said = f"; its last answer: {last}" if last is not None else "; it may be overloaded or unreachable."
                raise PublishTimeout(f"The broker did not answer within {deadline_s:g} s{said}") from exc
            if not should_retry(exc):
                raise
            last = exc
            failures += 1
            wait = policy.delay_s(failures)
            if clock() + wait >= end or (max_retries is not None and failures > max_retries):
                raise
            if on_retry is not None:
                on_retry(exc, wait)
            await sleep(wait)
