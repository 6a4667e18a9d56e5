"""The retry policy's backoff schedule, and retry_call with a fake clock and sleep."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqctl import BrokerOutOfMemory, BrokerUnavailable, ConfigError, PublishTimeout, RetryPolicy
from mqctl.core.retry import retry_call


def top(rand: float = 0.0) -> float:
    """A random source pinned to one value (0.0: the top of the jitter range)."""
    return rand


def test_delay_grows_exponentially_from_base() -> None:
    """Without jitter the waits are base, base*factor, base*factor**2, ..."""
    policy = RetryPolicy(base_s=0.5, factor=2.0, cap_s=100.0, jitter=0.5)

    assert [policy.delay_s(n, rand=top) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_delay_is_capped() -> None:
    """The wait never goes above cap_s, however many failures."""
    policy = RetryPolicy(base_s=1.0, factor=3.0, cap_s=5.0)

    assert [policy.delay_s(n, rand=top) for n in range(1, 5)] == [1.0, 3.0, 5.0, 5.0]
    assert policy.delay_s(10_000, rand=top) == 5.0


def test_no_wait_before_the_first_failure() -> None:
    """delay_s(0) (and below) is 0: nothing has failed yet."""
    policy = RetryPolicy()

    assert policy.delay_s(0, rand=top) == 0.0
    assert policy.delay_s(-3, rand=top) == 0.0


def test_jitter_takes_off_at_most_its_fraction() -> None:
    """With jitter j the wait lies in [ceiling * (1 - j), ceiling]; rand picks the point."""
    policy = RetryPolicy(base_s=2.0, factor=2.0, cap_s=100.0, jitter=0.25)

    assert policy.delay_s(1, rand=lambda: 0.0) == 2.0
    assert policy.delay_s(1, rand=lambda: 0.5) == 1.75
    assert policy.delay_s(1, rand=lambda: 1.0) == 1.5


def test_zero_jitter_is_deterministic() -> None:
    """jitter=0 ignores the random source."""
    policy = RetryPolicy(base_s=0.1, factor=2.0, cap_s=1.0, jitter=0.0)

    assert policy.delay_s(3, rand=lambda: 0.9) == pytest.approx(0.4)


def test_default_random_source_stays_in_bounds() -> None:
    """Without an injected rand the wait still lies in the jitter range."""
    policy = RetryPolicy(base_s=1.0, factor=2.0, cap_s=10.0, jitter=0.5)

    for _ in range(200):
        assert 1.0 <= policy.delay_s(2) <= 2.0


@given(
    failures=st.integers(min_value=1, max_value=500),
    rand=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    base=st.floats(min_value=0.0, max_value=10.0),
    factor=st.floats(min_value=1.0, max_value=4.0),
    cap=st.floats(min_value=0.0, max_value=60.0),
    jitter=st.floats(min_value=0.0, max_value=1.0),
)
def test_delay_always_lies_between_the_jittered_floor_and_the_cap(
    failures: int, rand: float, base: float, factor: float, cap: float, jitter: float
) -> None:
    """For any valid policy the wait is within [0, cap_s] and no more than jitter below its ceiling."""
    policy = RetryPolicy(base_s=base, factor=factor, cap_s=cap, jitter=jitter)
    ceiling = policy.delay_s(failures, rand=top)

    delay = policy.delay_s(failures, rand=lambda: rand)

    assert 0.0 <= delay <= cap
    assert ceiling * (1 - jitter) - 1e-9 <= delay <= ceiling


def test_constant_backoff_stays_constant_after_many_failures() -> None:
    """factor=1 gives the same wait on every try, the 65th included."""
    policy = RetryPolicy(base_s=0.2, factor=1.0, cap_s=30.0, jitter=0.0)

    assert {policy.delay_s(n) for n in (1, 64, 65, 100)} == {0.2}


@pytest.mark.parametrize(
    "options",
    [
        {"base_s": -0.1},
        {"cap_s": -1.0},
        {"factor": 0.5},
        {"jitter": -0.1},
        {"jitter": 1.5},
    ],
    ids=["negative-base", "negative-cap", "shrinking-factor", "negative-jitter", "jitter-over-1"],
)
def test_invalid_policy_raises_config_error(options: dict[str, float]) -> None:
    """Negative times, a factor below 1 and jitter outside [0, 1] are refused with ConfigError."""
    with pytest.raises(ConfigError):
        RetryPolicy(**options)


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Flaky:
    """A call that raises ``errors`` one after the other, then returns "done"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


STEADY = RetryPolicy(base_s=0.1, factor=2.0, cap_s=1.0, jitter=0.0)


def transient(exc: Exception) -> bool:
    return isinstance(exc, BrokerUnavailable)


async def test_retry_call_retries_transient_errors_until_success() -> None:
    """Errors that should_retry accepts are retried with the policy's waits until the call succeeds."""
    fake = FakeTime()
    call = Flaky(BrokerUnavailable("down"), BrokerUnavailable("still down"))

    result = await retry_call(
        call, policy=STEADY, deadline_s=10.0, should_retry=transient, sleep=fake.sleep, clock=fake.clock
    )

    assert result == "done"
    assert call.calls == 3
    assert fake.sleeps == [0.1, 0.2]


async def test_retry_call_gives_up_at_the_deadline_with_the_last_error() -> None:
    """When the next wait would pass the deadline, the last error is raised."""
    fake = FakeTime()
    last = BrokerUnavailable("down for good")
    call = Flaky(*[BrokerUnavailable(f"down {i}") for i in range(3)], last, BrokerUnavailable("never raised"))

    with pytest.raises(BrokerUnavailable) as caught:
        await retry_call(
            call, policy=STEADY, deadline_s=1.0, should_retry=transient, sleep=fake.sleep, clock=fake.clock
        )

    assert caught.value is last
    assert fake.sleeps == [0.1, 0.2, 0.4]  # 0.7 s slept; 0.8 more would pass the 1 s deadline
    assert call.calls == 4


async def test_retry_call_gives_up_after_max_retries_and_reports_each_wait() -> None:
    """With max_retries=2 and no deadline, the third failure is raised; on_retry saw each wait."""
    fake = FakeTime()
    errors = [BrokerUnavailable(f"down {i}") for i in range(4)]
    call = Flaky(*errors)
    seen: list[tuple[str, float]] = []

    with pytest.raises(BrokerUnavailable) as caught:
        await retry_call(
            call,
            policy=STEADY,
            deadline_s=None,
            should_retry=transient,
            max_retries=2,
            on_retry=lambda exc, wait_s: seen.append((str(exc), wait_s)),
            sleep=fake.sleep,
            clock=fake.clock,
        )

    assert caught.value is errors[2]
    assert call.calls == 3
    assert seen == [("down 0", 0.1), ("down 1", 0.2)]
    assert fake.sleeps == [0.1, 0.2]


async def test_retry_call_does_not_retry_when_should_retry_is_false() -> None:
    """An error should_retry refuses is raised at once, without sleeping."""
    fake = FakeTime()
    error = BrokerOutOfMemory("full")
    call = Flaky(error)

    with pytest.raises(BrokerOutOfMemory) as caught:
        await retry_call(
            call,
            policy=STEADY,
            deadline_s=10.0,
            should_retry=lambda exc: not isinstance(exc, BrokerOutOfMemory),
            sleep=fake.sleep,
            clock=fake.clock,
        )

    assert caught.value is error
    assert call.calls == 1
    assert fake.sleeps == []


async def test_retry_call_returns_first_success_without_sleeping() -> None:
    """A call that succeeds at once is awaited once, with no wait."""
    fake = FakeTime()
    call = Flaky()

    assert await retry_call(call, policy=STEADY, deadline_s=1.0, should_retry=transient, sleep=fake.sleep) == "done"
    assert (call.calls, fake.sleeps) == (1, [])


async def test_retry_call_bounds_a_hung_call_with_publish_timeout() -> None:
    """A call that never answers is cut off at the deadline with PublishTimeout (a BrokerUnavailable)."""
    fake = FakeTime()

    async def hang() -> str:
        await asyncio.Event().wait()
        return "never"

    with pytest.raises(PublishTimeout) as caught:
        await retry_call(hang, policy=STEADY, deadline_s=0.001, should_retry=transient, sleep=fake.sleep)

    assert isinstance(caught.value, BrokerUnavailable)
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert fake.sleeps == []
