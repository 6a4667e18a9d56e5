"""The coalescer: concurrent submits share one send, each caller gets its own result or error."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from mqctl.core.coalescer import Coalescer


class Recorder:
    """A send that records its batches and answers each item with ``item * 10``.

    Items listed in ``failing`` get their own ValueError; ``gate``, when set, holds every
    send until it is opened.
    """

    def __init__(self, *, failing: Sequence[int] = (), gate: asyncio.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.failing = set(failing)
        self.gate = gate
        self.in_flight = asyncio.Event()

    async def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        self.in_flight.set()
        if self.gate is not None:
            await self.gate.wait()
        return [ValueError(f"item {i} refused") if i in self.failing else i * 10 for i in items]


async def settle() -> None:
    """Let every ready task run (a handful of loop turns, no wall-clock wait)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_submits_share_one_send() -> None:
    """Items submitted together go to the broker in one send, and each caller gets its own result."""
    send = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(send)

    results = await asyncio.gather(*(coalescer.submit(i) for i in range(1, 6)))

    assert results == [10, 20, 30, 40, 50]
    assert send.batches == [[1, 2, 3, 4, 5]]


async def test_one_caller_alone_pays_one_send() -> None:
    """A lone submit is sent at once, in a batch of one."""
    send = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(send)

    assert await coalescer.submit(7) == 70
    assert await coalescer.submit(8) == 80
    assert send.batches == [[7], [8]]


async def test_items_submitted_during_a_send_form_the_next_batch() -> None:
    """While one batch is in flight, new submits gather and go together in the next send."""
    gate = asyncio.Event()
    send = Recorder(gate=gate)
    coalescer: Coalescer[int, int] = Coalescer(send)

    first = asyncio.create_task(coalescer.submit(1))
    await send.in_flight.wait()
    later = [asyncio.create_task(coalescer.submit(i)) for i in (2, 3, 4)]
    await settle()
    assert send.batches == [[1]]
    gate.set()

    assert await first == 10
    assert await asyncio.gather(*later) == [20, 30, 40]
    assert send.batches == [[1], [2, 3, 4]]


async def test_batches_are_cut_at_max_batch() -> None:
    """No send carries more than max_batch items; the rest follow in order."""
    send = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(send, max_batch=2)

    results = await asyncio.gather(*(coalescer.submit(i) for i in range(1, 6)))

    assert results == [10, 20, 30, 40, 50]
    assert send.batches == [[1, 2], [3, 4], [5]]


async def test_an_item_error_goes_to_its_own_caller_only() -> None:
    """When send answers one item with an exception, only that caller raises; the others get results."""
    send = Recorder(failing=[2])
    coalescer: Coalescer[int, int] = Coalescer(send)

    results = await asyncio.gather(*(coalescer.submit(i) for i in (1, 2, 3)), return_exceptions=True)

    assert results[0] == 10 and results[2] == 30
    assert isinstance(results[1], ValueError) and str(results[1]) == "item 2 refused"
    assert send.batches == [[1, 2, 3]]


async def test_a_send_that_raises_fails_the_whole_batch() -> None:
    """When send itself raises, every caller of that batch gets the error, and the next batch still works."""
    calls = 0

    async def send(items: Sequence[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("broker down")
        return [i * 10 for i in items]

    coalescer: Coalescer[int, int] = Coalescer(send)

    results = await asyncio.gather(*(coalescer.submit(i) for i in (1, 2, 3)), return_exceptions=True)

    assert all(isinstance(r, ConnectionError) for r in results), results
    assert await coalescer.submit(4) == 40


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    """A caller cancelled while its batch is in flight is skipped; the rest of the batch gets its results."""
    gate = asyncio.Event()
    send = Recorder(gate=gate)
    coalescer: Coalescer[int, int] = Coalescer(send)
    tasks = [asyncio.create_task(coalescer.submit(i)) for i in (1, 2, 3)]
    await send.in_flight.wait()

    tasks[1].cancel()
    gate.set()

    assert await tasks[0] == 10
    assert await tasks[2] == 30
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]


async def test_aclose_waits_for_the_batch_in_flight_and_what_is_queued() -> None:
    """aclose() returns only once every submitted item has its answer."""
    gate = asyncio.Event()
    send = Recorder(gate=gate)
    coalescer: Coalescer[int, int] = Coalescer(send)
    tasks = [asyncio.create_task(coalescer.submit(1))]
    await send.in_flight.wait()
    tasks.append(asyncio.create_task(coalescer.submit(2)))
    await settle()

    closing = asyncio.create_task(coalescer.aclose())
    await settle()
    assert not closing.done()
    gate.set()
    await closing

    assert all(t.done() for t in tasks)
    assert [t.result() for t in tasks] == [10, 20]


async def test_aclose_with_nothing_in_flight_returns_at_once() -> None:
    """aclose() of an idle coalescer is a no-op."""
    coalescer: Coalescer[int, int] = Coalescer(Recorder())

    await coalescer.aclose()


async def test_a_send_with_the_wrong_number_of_results_fails_its_callers() -> None:
    """A send that answers fewer items than it was given fails every caller instead of leaving one hanging."""

    async def short_send(items: Sequence[int]) -> list[int]:
        return [items[0] * 10]

    coalescer: Coalescer[int, int] = Coalescer(short_send)
    tasks = [asyncio.create_task(coalescer.submit(i)) for i in (1, 2)]
    await settle()
    try:
        assert all(t.done() for t in tasks), "a caller is still waiting for its answer"
        assert all(t.exception() is not None for t in tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_submit_given_up_before_its_batch_leaves_is_never_sent() -> None:
    """A caller cancelled (a deadline) while its item waits behind the batch in flight: the item
    is taken out, so it cannot be stored after the caller was told it failed."""
    gate = asyncio.Event()
    send = Recorder(gate=gate)
    coalescer: Coalescer[int, int] = Coalescer(send)
    first = asyncio.create_task(coalescer.submit(1))
    await send.in_flight.wait()
    waiting = asyncio.create_task(coalescer.submit(2))
    kept = asyncio.create_task(coalescer.submit(3))
    await settle()
    waiting.cancel()
    await settle()
    gate.set()

    assert await first == 10
    assert await kept == 30
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert send.batches == [[1], [3]]


async def test_a_submit_cancelled_just_before_its_batch_forms_is_never_sent() -> None:
    """The caller's cancellation lands before its task runs again to take the item out, and the
    drainer forms the batch in between: the item is still left out."""
    send = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(send)
    cancelled = asyncio.ensure_future(coalescer.submit(1))
    kept = asyncio.ensure_future(coalescer.submit(2))
    await asyncio.sleep(0)  # both queued; the drainer is scheduled but has not run
    cancelled.cancel()  # the drainer runs before the cancelled task wakes up

    assert await kept == 20
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert send.batches == [[2]]


async def test_submit_nowait_queues_at_once_and_a_cancelled_future_is_left_out() -> None:
    """Items queued with submit_nowait share one send; one whose future is cancelled first is not sent."""
    send = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(send)
    futures = [coalescer.submit_nowait(i) for i in (1, 2, 3)]
    futures[1].cancel()

    assert await futures[0] == 10
    assert await futures[2] == 30
    assert send.batches == [[1, 3]]


async def test_timeout_fails_the_sent_item_and_takes_the_waiting_one_out() -> None:
    """Past timeout_s the batch in flight fails with TimeoutError, and items still queued are never sent."""
    gate = asyncio.Event()
    send = Recorder(gate=gate)
    coalescer: Coalescer[int, int] = Coalescer(send, timeout_s=0.01)
    sent = asyncio.create_task(coalescer.submit(1))
    await send.in_flight.wait()
    waiting = asyncio.create_task(coalescer.submit(2))

    with pytest.raises(TimeoutError):
        await sent
    with pytest.raises(TimeoutError):
        await waiting
    assert coalescer.waiting == 0
    gate.set()
    assert await coalescer.submit(3) == 30
    assert send.batches == [[1], [3]]


async def test_timeout_spares_items_answered_in_time() -> None:
    """Items answered before their deadline keep their results, and later ones get their own deadline."""
    send = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(send, timeout_s=0.05)

    assert await asyncio.gather(*(coalescer.submit(i) for i in range(1, 4))) == [10, 20, 30]
    await asyncio.sleep(0.06)
    assert await coalescer.submit(4) == 40
