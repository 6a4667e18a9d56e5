"""The broker's publish policy over a stand-in backend: coalescing, retry and the publish deadline."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

import mqctl
from mqctl import Broker, BrokerOptions, RetryPolicy
from mqctl.backends import memory
from mqctl.core.backend import Limits, Outgoing

NO_WAIT = RetryPolicy(base_s=0.0, cap_s=0.0, jitter=0.0)


class Scripted:
    """A memory backend whose ``add`` first raises the scripted errors (or hangs on ``"hang"``)."""

    def __init__(self, *script: Exception | str) -> None:
        self.inner = memory.from_url(f"memory://unit-{uuid.uuid4().hex}")
        self.script = list(script)
        self.add_calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def add(self, topic: str, units: Sequence[Sequence[Outgoing]], limits: Limits) -> list[Any]:
        self.add_calls.append(len(units))
        if self.script:
            step = self.script.pop(0)
            if step == "hang":
                await asyncio.Event().wait()
            assert isinstance(step, Exception)
            raise step
        return await self.inner.add(topic, units, limits)


def broker_over(backend: Scripted, **options: Any) -> Broker:
    return Broker(backend, BrokerOptions(publish_retry=NO_WAIT, **options))  # type: ignore[arg-type]


async def test_concurrent_publishes_share_one_backend_call() -> None:
    """Publishes made together reach the backend as one add() carrying every unit."""
    backend = Scripted()
    async with broker_over(backend) as broker:
        ids = await asyncio.gather(*(broker.publish("orders", {"type": "n", "content": i}) for i in range(10)))

        assert len(set(ids)) == 10
        assert backend.add_calls == [10]
        assert (await broker.stats("orders")).length == 10


async def test_publish_retries_while_the_broker_is_unavailable() -> None:
    """A BrokerUnavailable from the backend is retried; the message is stored once."""
    backend = Scripted(mqctl.BrokerUnavailable("blip"), mqctl.BrokerUnavailable("blip again"))
    async with broker_over(backend) as broker:
        await broker.publish("orders", {"type": "a"})

        assert len(backend.add_calls) == 3
        assert (await broker.stats("orders")).length == 1


async def test_out_of_memory_is_not_retried() -> None:
    """BrokerOutOfMemory goes straight to the caller: retrying cannot help."""
    backend = Scripted(mqctl.BrokerOutOfMemory("full"))
    async with broker_over(backend) as broker:
        with pytest.raises(mqctl.BrokerOutOfMemory):
            await broker.publish("orders", {"type": "a"})

        assert len(backend.add_calls) == 1


async def test_other_errors_are_not_retried() -> None:
    """An error that is not about availability is raised at once."""
    backend = Scripted(RuntimeError("bug"))
    async with broker_over(backend) as broker:
        with pytest.raises(RuntimeError):
            await broker.publish("orders", {"type": "a"})

        assert len(backend.add_calls) == 1


async def test_publish_to_a_hung_backend_raises_publish_timeout() -> None:
    """A backend that never answers is cut off after publish_timeout_s with PublishTimeout."""
    backend = Scripted("hang")
    async with broker_over(backend, publish_timeout_s=0.01) as broker:
        with pytest.raises(mqctl.PublishTimeout):
            await broker.publish("orders", {"type": "a"})


async def test_publish_after_an_error_works() -> None:
    """A failed batch does not poison the topic: the next publish goes through."""
    backend = Scripted(mqctl.BrokerOutOfMemory("full"))
    async with broker_over(backend) as broker:
        with pytest.raises(mqctl.BrokerOutOfMemory):
            await broker.publish("orders", {"type": "a"})

        await broker.publish("orders", {"type": "b"})
        assert (await broker.stats("orders")).length == 1


async def test_queue_full_fails_only_the_unit_that_does_not_fit() -> None:
    """In one coalesced batch, a unit refused with QueueFull fails its own caller; earlier units are stored."""
    backend = Scripted()
    async with broker_over(backend, max_backlog=2, default_group="default") as broker:
        results = await asyncio.gather(
            broker.publish("orders", {"type": "a"}),
            broker.publish_many("orders", [{"type": "b"}, {"type": "c"}]),
            broker.publish("orders", {"type": "d"}),
            return_exceptions=True,
        )

        assert isinstance(results[0], str)
        assert isinstance(results[1], mqctl.QueueFull)
        assert isinstance(results[2], str)
        assert backend.add_calls == [3]
        assert (await broker.stats("orders")).length == 2
