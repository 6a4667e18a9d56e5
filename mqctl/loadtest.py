"""End-to-end load with proof of delivery: ``run(spec) -> Report``. Prints nothing.

Publishers POST to Service A (or call the library directly with ``direct_url``) while
listeners receive from Service B over WebSocket and acknowledge; every message carries
its sequence number, so the report can say exactly what was lost, duplicated or
reordered, and how long each took from publish to receipt.

Each run uses its own topic (``<topic>-<run id>``), so its messages are the only ones in
the group it listens to and nothing is left unacknowledged behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import orjson

from mqctl.core.errors import MQError


@dataclass(frozen=True, slots=True)
class LoadSpec:
    a_url: str = "http://127.0.0.1:8002"
    b_url: str = "ws://127.0.0.1:8003/ws"
    workers: int = 50
    messages: int | None = 10_000
    duration_s: float | None = None
    rate: float | None = None
    """Target messages per second over all workers (None: as fast as possible)."""
    size: int = 100
    batch: int = 1
    """Messages per request; above 1 uses the batch endpoint."""
    listeners: int = 1
    direct_url: str | None = None
    drain_timeout_s: float = 30.0
    topic: str = "loadtest"
    token: str | None = None
    measure_ceiling: bool = True
    listen_query: str = ""
    """Extra query parameters for the listeners' WebSocket URL (e.g. ``type=x`` to filter)."""


@dataclass(slots=True)
class Progress:
    sent: int = 0
    accepted: int = 0
    received: int = 0
    elapsed_s: float = 0.0


@dataclass(slots=True)
class Report:
    run_id: str
    topic: str
    sent: int
    accepted: int
    errors: dict[str, int]
    received: int
    lost: int
    duplicates: int
    out_of_order: int
    publish_s: float
    total_s: float
    throughput: float
    """Delivered messages per second, first publish to last receipt."""
    accepted_per_s: float
    latency_ms: dict[str, float]
    ceiling_rps: float | None = None
    """The load generator's own request rate against a bare endpoint (GET /health)."""
    lost_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by nearest rank; 0.0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


class _Run:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.run_id = uuid.uuid4().hex[:10]
        self.topic = f"{spec.topic}-{self.run_id}"
        self.progress = Progress()
        self.sent_at: dict[int, float] = {}
        self.accepted: set[int] = set()
        self.errors: Counter[str] = Counter()
        self.received: dict[int, float] = {}
        self.frames = 0
        self.out_of_order = 0
        self.all_received = asyncio.Event()
        self.publishing_done = False
        self._next = 0
        self.payload_pad = "x" * max(0, spec.size - 40)

    def _take(self, n: int) -> list[int]:
        limit = self.spec.messages
        if limit is not None:
            n = min(n, limit - self._next)
        seqs = list(range(self._next, self._next + max(n, 0)))
        self._next += len(seqs)
        return seqs

    def message(self, seq: int) -> dict[str, Any]:
        return {"type": "loadtest", "content": {"seq": seq, "pad": self.payload_pad}, "headers": {"run": self.run_id}}

    def on_frame(self, seq: int, last_seen: list[int]) -> None:
        now = time.perf_counter()
        self.frames += 1
        if seq not in self.received:
            self.received[seq] = now
            self.progress.received = len(self.received)
        if last_seen and seq < last_seen[0]:
            self.out_of_order += 1
        last_seen[:] = [seq]
        if self.publishing_done and self.accepted <= self.received.keys():
            self.all_received.set()

    def record(self, seqs: list[int], error: str | None) -> None:
        if error is None:
            self.accepted.update(seqs)
            self.progress.accepted += len(seqs)
        else:
            self.errors[error] += len(seqs)

    async def pace(self, start: float, deadline: float | None) -> bool:
        """Wait for the rate limit; False when the run's duration is over."""
        now = time.perf_counter()
        if deadline is not None and now >= deadline:
            return False
        if self.spec.rate:
            due = start + self._next / self.spec.rate
            if due > now:
                await asyncio.sleep(due - now)
        return True


Send = Callable[[list[int]], Awaitable[str | None]]
"""Publish the messages of these sequence numbers; return None, or the error's name."""


async def _drive(run: _Run, start: float, deadline: float | None, send: Send) -> None:
    """Run ``spec.workers`` concurrent publishers until the messages or the duration run out."""

    async def worker() -> None:
        while await run.pace(start, deadline):
            seqs = run._take(run.spec.batch)
            if not seqs:
                return
            now = time.perf_counter()
            for s in seqs:
                run.sent_at[s] = now
            run.progress.sent += len(seqs)
            run.record(seqs, await send(seqs))

    await asyncio.gather(*(worker() for _ in range(run.spec.workers)))


async def _publish_http(run: _Run, start: float, deadline: float | None) -> None:
    """Publish through Service A, on keep-alive connections (one per worker)."""
    spec = run.spec
    headers = {"Authorization": f"Bearer {spec.token}"} if spec.token else {}
    headers["content-type"] = "application/json"
    limits = httpx.Limits(max_connections=spec.workers, max_keepalive_connections=spec.workers)
    async with httpx.AsyncClient(base_url=spec.a_url, headers=headers, limits=limits, timeout=30) as client:

        async def send(seqs: list[int]) -> str | None:
            if spec.batch > 1:
                body: Any = {"topic": run.topic, "messages": [run.message(s) for s in seqs]}
                path = "/messages/batch"
            else:
                body = {"topic": run.topic, **run.message(seqs[0])}
                path = "/messages"
            try:
                response = await client.post(path, content=orjson.dumps(body))
            except httpx.HTTPError as exc:
                return type(exc).__name__
            return None if response.status_code < 300 else str(response.status_code)

        await _drive(run, start, deadline, send)


async def _listen_ws(run: _Run, ready: asyncio.Event, ready_count: list[int]) -> None:
    from websockets.asyncio.client import connect

    spec = run.spec
    query = f"topic={run.topic}&header=run:{run.run_id}"
    if spec.listen_query:
        query += "&" + spec.listen_query.lstrip("&?")
    if spec.token:
        query += f"&token={spec.token}"
    headers = {"Authorization": f"Bearer {spec.token}"} if spec.token else None
    async with connect(f"{spec.b_url}?{query}", additional_headers=headers, max_size=2**24) as ws:
        last_seen: list[int] = []
        subscribed = False
        async for raw in ws:
            frame = orjson.loads(raw)
            if "id" not in frame:
                if frame.get("event") == "subscribed" and not subscribed:
                    subscribed = True
                    ready_count[0] += 1
                    if ready_count[0] >= spec.listeners:
                        ready.set()
                continue
            await ws.send(orjson.dumps({"ack": frame["id"]}).decode())
            content = frame.get("content")
            if isinstance(content, dict) and isinstance(content.get("seq"), int):
                run.on_frame(content["seq"], last_seen)


async def _publish_direct(run: _Run, broker: Any, start: float, deadline: float | None) -> None:
    """Publish through the library against ``direct_url`` (no services)."""

    async def send(seqs: list[int]) -> str | None:
        try:
            if len(seqs) > 1:
                await broker.publish_many(run.topic, [run.message(s) for s in seqs])
            else:
                await broker.publish(run.topic, run.message(seqs[0]))
        except MQError as exc:
            return type(exc).__name__
        return None

    await _drive(run, start, deadline, send)


async def _consume_direct(run: _Run, broker: Any, ready: asyncio.Event) -> None:
    async with broker.subscribe(run.topic, group="default", poll_interval=0.5) as sub:
        ready.set()
        last_seen: list[int] = []
        async for delivery in sub:
            await delivery.ack()
            content = delivery.message.content
            if isinstance(content, dict):
                run.on_frame(content["seq"], last_seen)


async def _ceiling(spec: LoadSpec) -> float:
    """Requests per second this generator reaches against Service A's bare GET /health."""
    limits = httpx.Limits(max_connections=spec.workers, max_keepalive_connections=spec.workers)
    done = 0
    async with httpx.AsyncClient(base_url=spec.a_url, limits=limits, timeout=10) as client:
        end = time.perf_counter() + 1.5

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await client.get("/health")
                done += 1

        begin = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(spec.workers)))
        return done / (time.perf_counter() - begin)


async def run(spec: LoadSpec, on_progress: Callable[[Progress], Awaitable[None] | None] | None = None) -> Report:
    """Run the load described by ``spec`` and account for every message."""
    if spec.messages is None and spec.duration_s is None:
        raise ValueError("LoadSpec needs messages or duration_s.")
    r = _Run(spec)
    ceiling = await _ceiling(spec) if spec.measure_ceiling and spec.direct_url is None else None
    ready = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    broker = None
    try:
        if spec.direct_url is None:
            count = [0]
            tasks = [asyncio.create_task(_listen_ws(r, ready, count)) for _ in range(spec.listeners)]
        else:
            from mqctl.connect import open_broker

            broker = open_broker(spec.direct_url, max_backlog=None)
            tasks = [asyncio.create_task(_consume_direct(r, broker, ready))]
        async with asyncio.timeout(15):
            await _first(ready.wait(), tasks)
        start = time.perf_counter()
        deadline = start + spec.duration_s if spec.duration_s else None
        if broker is None:
            publishing = asyncio.create_task(_publish_http(r, start, deadline))
        else:
            publishing = asyncio.create_task(_publish_direct(r, broker, start, deadline))
        ticker = asyncio.create_task(_tick(r, start, on_progress))
        await publishing
        publish_s = time.perf_counter() - start
        r.publishing_done = True
        if r.accepted <= r.received.keys():
            r.all_received.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(spec.drain_timeout_s):
                await _first(r.all_received.wait(), tasks)
        total_s = time.perf_counter() - start
        ticker.cancel()
        r.progress.elapsed_s = total_s
        if on_progress is not None:
            result = on_progress(r.progress)
            if result is not None:
                await result
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if broker is not None:
            await broker.aclose()
    return _report(r, publish_s, total_s, ceiling)


async def _first(awaitable: Awaitable[Any], tasks: list[asyncio.Task[Any]]) -> None:
    """Await ``awaitable``; raise at once if a listener task fails first."""
    waiter = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        for task in done:
            task.result()  # raises the listener's error
        raise MQError("A listener stopped before the run was complete.")


async def _tick(r: _Run, start: float, on_progress: Callable[[Progress], Awaitable[None] | None] | None) -> None:
    if on_progress is None:
        return
    while True:
        r.progress.elapsed_s = time.perf_counter() - start
        result = on_progress(r.progress)
        if result is not None:
            await result
        await asyncio.sleep(0.25)


def _report(r: _Run, publish_s: float, total_s: float, ceiling: float | None) -> Report:
    latencies = sorted((r.received[s] - r.sent_at[s]) * 1000 for s in r.accepted if s in r.received and s in r.sent_at)
    lost = sorted(r.accepted - r.received.keys())
    delivered = len(r.accepted & r.received.keys())
    return Report(
        run_id=r.run_id,
        topic=r.topic,
        sent=r.progress.sent,
        accepted=len(r.accepted),
        errors=dict(r.errors),
        received=len(r.received),
        lost=len(lost),
        duplicates=r.frames - len(r.received),
        out_of_order=r.out_of_order,
        publish_s=round(publish_s, 3),
        total_s=round(total_s, 3),
        throughput=round(delivered / total_s, 1) if total_s else 0.0,
        accepted_per_s=round(len(r.accepted) / publish_s, 1) if publish_s else 0.0,
        latency_ms={
            "p50": round(percentile(latencies, 50), 2),
            "p95": round(percentile(latencies, 95), 2),
            "p99": round(percentile(latencies, 99), 2),
            "max": round(latencies[-1], 2) if latencies else 0.0,
        },
        ceiling_rps=round(ceiling, 1) if ceiling is not None else None,
        lost_ids=lost[:100],
    )
