"""The load test itself: publishers, listeners and the accounting of every message."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from mqctl.core.errors import BrokerUnavailable, MQError
from mqctl.core.retry import RetryPolicy, retry_call
from mqctl.loadtest.http import HttpConnection, Origin
from mqctl.loadtest.report import LoadSpec, Progress, Report, percentile


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
        self.listener_reconnects = 0
        self.unreceived = 0
        """Accepted and not yet received; kept as a count so the drain check costs nothing per frame."""
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

    async def next_request(self, start: float, deadline: float | None) -> list[int]:
        """Claim the sequence numbers of one request and wait for its turn under ``spec.rate``;
        [] when the messages or the duration have run out.

        The slot is claimed before the wait, so each worker waits for a different instant and
        the requests go out evenly spaced, not in bursts of every idle worker at once."""
        if deadline is not None and time.perf_counter() >= deadline:
            return []
        seqs = self._take(self.spec.batch)
        if seqs and self.spec.rate:
            due = start + seqs[0] / self.spec.rate
            if deadline is not None and due >= deadline:
                return []
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        return seqs

    def stamp(self, seqs: list[int]) -> None:
        """Note the send time of these messages: call it just before the request is written."""
        now = time.perf_counter()
        for s in seqs:
            self.sent_at[s] = now
        self.progress.sent += len(seqs)

    def message(self, seq: int) -> dict[str, Any]:
        return {"type": "loadtest", "content": {"seq": seq, "pad": self.payload_pad}, "headers": {"run": self.run_id}}

    def on_frame(self, seq: int, last_seen: list[int]) -> None:
        now = time.perf_counter()
        self.frames += 1
        if seq not in self.received:
            self.received[seq] = now
            self.progress.received = len(self.received)
            if seq in self.accepted:
                self.unreceived -= 1
        if last_seen and seq < last_seen[0]:
            self.out_of_order += 1
        last_seen[:] = [seq]
        if self.publishing_done and not self.unreceived:
            self.all_received.set()

    def record(self, seqs: list[int], error: str | None) -> None:
        if error is None:
            for s in seqs:
                self.accepted.add(s)
                if s not in self.received:
                    self.unreceived += 1
            self.progress.accepted += len(seqs)
        else:
            self.errors[error] += len(seqs)


Send = Callable[[list[int]], Awaitable[str | None]]
"""Publish the messages of these sequence numbers (``stamp`` them just before); return None,
or the error's kind."""


async def _drive(run: _Run, start: float, deadline: float | None, senders: list[Send]) -> None:
    """Run one publisher per sender until the messages or the duration run out."""

    async def worker(send: Send) -> None:
        while seqs := await run.next_request(start, deadline):
            run.record(seqs, await send(seqs))

    await asyncio.gather(*(worker(send) for send in senders))


def _error_kind(exc: OSError) -> str:
    """How a request failed, for the report's errors (beside the HTTP statuses)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionResetError):
        return "dropped"
    if isinstance(exc, ConnectionAbortedError):
        return "not-http"
    return type(exc).__name__  # could not connect: ConnectionRefusedError, gaierror, SSLCertVerificationError...


async def _connect(spec: LoadSpec) -> list[HttpConnection]:
    """One open keep-alive connection to Service A per worker, sharing one SSL context."""
    origin = Origin.parse(spec.a_url)
    context = origin.ssl_context()
    headers = {"User-Agent": "mqctl-loadtest"}
    if spec.token:
        headers["Authorization"] = f"Bearer {spec.token}"
    connections = [
        HttpConnection(origin, headers=headers, ssl_context=context, timeout_s=spec.request_timeout_s)
        for _ in range(spec.workers)
    ]
    try:
        await asyncio.gather(*(c.open() for c in connections))
    except OSError as exc:
        await asyncio.gather(*(c.aclose() for c in connections))
        raise BrokerUnavailable(
            f"Cannot connect to Service A at {spec.a_url!r}: {exc}; start it (mqctl up) or pass --a-url."
        ) from exc
    return connections


async def _publish_http(run: _Run, connections: list[HttpConnection], start: float, deadline: float | None) -> None:
    """Publish through Service A, each worker on its own keep-alive connection."""
    spec = run.spec
    path = "/messages/batch" if spec.batch > 1 else "/messages"

    def sender(connection: HttpConnection) -> Send:
        async def send(seqs: list[int]) -> str | None:
            if spec.batch > 1:
                body: Any = {"topic": run.topic, "messages": [run.message(s) for s in seqs]}
            else:
                body = {"topic": run.topic, **run.message(seqs[0])}
            data = orjson.dumps(body)
            run.stamp(seqs)
            try:
                response = await connection.request("POST", path, data, content_type="application/json")
            except OSError as exc:  # the connection is closed; the next request opens another
                return _error_kind(exc)
            return None if response.status < 300 else str(response.status)

        return send

    await _drive(run, start, deadline, [sender(c) for c in connections])


ACK_CHUNK = 1000
"""Ids per ack frame at most; Service B closes on a frame over 64 KiB."""


RECONNECT = RetryPolicy(base_s=0.1, cap_s=1.0)
"""How a listener whose Service B went away (restarted, killed) tries to connect again."""


async def _listen_ws(run: _Run, ready: asyncio.Event, ready_count: list[int]) -> None:
    """Receive on Service B and acknowledge: every frame read in one go is acked in one frame.

    A first connection that fails is an error; one lost later (Service B restarted or killed)
    is opened again until the run ends, and counted in the report's ``listener_reconnects``."""
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

    spec = run.spec
    query = f"topic={run.topic}&header=run:{run.run_id}&frames=batch"  # --listen-query may say otherwise
    if spec.listen_query:
        query += "&" + spec.listen_query.lstrip("&?")
    if spec.token:
        query += f"&token={spec.token}"
    headers = {"Authorization": f"Bearer {spec.token}"} if spec.token else None

    async def open_connection() -> ClientConnection:
        return await connect(f"{spec.b_url}?{query}", additional_headers=headers, max_size=2**24)

    try:
        ws = await open_connection()
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        raise BrokerUnavailable(
            f"Cannot listen on Service B at {spec.b_url!r}: {exc}. Start it (mqctl up) or pass --b-url "
            "(the WebSocket endpoint, e.g. ws://127.0.0.1:8003/ws)."
        ) from exc
    last_seen: list[int] = []
    first = True
    while True:
        with contextlib.suppress(ConnectionClosed, OSError):
            await _receive(run, ws, last_seen, ready if first else None, ready_count)
        first = False
        ws = await retry_call(
            open_connection,
            policy=RECONNECT,
            deadline_s=None,  # until the run ends and cancels this listener
            should_retry=lambda exc: isinstance(exc, OSError | InvalidHandshake | TimeoutError),
        )
        run.listener_reconnects += 1


async def _receive(
    run: _Run, ws: Any, last_seen: list[int], ready: asyncio.Event | None, ready_count: list[int]
) -> None:
    """Take the frames of one connection until it closes; ``ready`` is set once every listener
    is subscribed (on the first connection only)."""
    async with ws:
        unacked: list[str] = []
        wake = asyncio.Event()

        async def acknowledge() -> None:
            # runs whenever the reader has drained what arrived, so the acks of a burst go together
            while True:
                await wake.wait()
                wake.clear()
                while unacked:
                    ids = unacked[:ACK_CHUNK]
                    del unacked[:ACK_CHUNK]
                    await ws.send(orjson.dumps({"ack": ids}).decode())

        acker = asyncio.create_task(acknowledge())
        try:
            async for raw in ws:
                parsed = orjson.loads(raw)
                if isinstance(parsed, dict):
                    if "id" not in parsed:
                        if parsed.get("event") == "subscribed" and ready is not None:
                            ready_count[0] += 1
                            if ready_count[0] >= run.spec.listeners:
                                ready.set()
                            ready = None
                        continue
                    parsed = [parsed]
                for frame in parsed:  # frames=batch: the messages of one frame, in order
                    unacked.append(frame["id"])
                    content = frame.get("content")
                    if isinstance(content, dict) and isinstance(content.get("seq"), int):
                        run.on_frame(content["seq"], last_seen)
                wake.set()
                if acker.done():
                    acker.result()  # raises why acknowledging stopped
        finally:
            acker.cancel()
            await asyncio.gather(acker, return_exceptions=True)


async def _publish_direct(run: _Run, broker: Any, start: float, deadline: float | None) -> None:
    """Publish through the library against ``direct_url`` (no services)."""

    async def send(seqs: list[int]) -> str | None:
        messages = [run.message(s) for s in seqs]
        run.stamp(seqs)
        try:
            if len(seqs) > 1:
                await broker.publish_many(run.topic, messages)
            else:
                await broker.publish(run.topic, messages[0])
        except MQError as exc:
            return type(exc).__name__
        return None

    await _drive(run, start, deadline, [send] * run.spec.workers)


async def _consume_direct(run: _Run, broker: Any, ready: asyncio.Event) -> None:
    async with broker.subscribe(run.topic, group="default", poll_interval=0.5) as sub:
        ready.set()
        last_seen: list[int] = []
        async for delivery in sub:
            await delivery.ack()
            content = delivery.message.content
            if isinstance(content, dict):
                run.on_frame(content["seq"], last_seen)


CEILING_WINDOW_S = 1.5


async def _ceiling(spec: LoadSpec, connections: list[HttpConnection]) -> float:
    """Requests per second the publishers' own connections reach against Service A's GET /health,
    which does no work: the most this generator could offer."""
    done = 0
    end = time.perf_counter() + CEILING_WINDOW_S

    async def worker(connection: HttpConnection) -> None:
        nonlocal done
        while time.perf_counter() < end:
            await connection.request("GET", "/health")
            done += 1

    begin = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in connections))
    except OSError as exc:
        raise BrokerUnavailable(
            f"Service A at {spec.a_url!r} failed a GET /health while the load generator measured its ceiling: "
            f"{exc or type(exc).__name__}."
        ) from exc
    return done / (time.perf_counter() - begin)


async def run(spec: LoadSpec, on_progress: Callable[[Progress], Awaitable[None] | None] | None = None) -> Report:
    """Run the load described by ``spec`` and account for every message."""
    if spec.messages is None and spec.duration_s is None:
        raise ValueError("LoadSpec needs messages or duration_s.")
    r = _Run(spec)
    ready = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    connections: list[HttpConnection] = []
    broker = None
    ceiling = None
    try:
        if spec.direct_url is None:
            connections = await _connect(spec)
            if spec.measure_ceiling:
                ceiling = await _ceiling(spec, connections)
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
            publishing = asyncio.create_task(_publish_http(r, connections, start, deadline))
        else:
            publishing = asyncio.create_task(_publish_direct(r, broker, start, deadline))
        ticker = asyncio.create_task(_tick(r, start, on_progress))
        await publishing
        publish_s = time.perf_counter() - start
        r.publishing_done = True
        if not r.unreceived:
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
        await asyncio.gather(*(c.aclose() for c in connections))
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
        listener_reconnects=r.listener_reconnects,
        lost_ids=lost[:100],
    )
