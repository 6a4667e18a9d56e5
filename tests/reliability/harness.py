"""What the reliability tests share: the figures they report, WebSocket clients that count
what they get, publishers that count what Service A accepted, and a process's memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

REPORT_ENV = "MQCTL_RELIABILITY_REPORT"


class Report:
    """Figures of one scenario: printed, and appended as a JSON line to ``$MQCTL_RELIABILITY_REPORT``
    (or ``reliability.jsonl`` in the test's tmp dir) for ``scripts/reliability_table.py``."""

    def __init__(self, path: Path, test: str) -> None:
        self.path = path
        self.test = test

    def record(self, scenario: str, injected: str, **figures: Any) -> dict[str, Any]:
        row = {"scenario": scenario, "injected": injected, "test": self.test, "at": time.time(), **figures}
        print(f"\n[reliability] {json.dumps(row, sort_keys=True)}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        return row


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (VmRSS from /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"No VmRSS for process {pid}.")


@dataclass
class MemoryWatch:
    """Samples a process's RSS every ``every_s`` while it runs; ``peak`` is the largest seen."""

    pid: int
    every_s: float = 0.1
    samples: list[float] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MemoryWatch:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(OSError, RuntimeError):
            self.samples.append(rss_mib(self.pid))

    async def _sample(self) -> None:
        while True:
            with contextlib.suppress(OSError, RuntimeError):
                self.samples.append(rss_mib(self.pid))
            await asyncio.sleep(self.every_s)

    @property
    def peak(self) -> float:
        return max(self.samples, default=0.0)


# -- publishing through Service A ---------------------------------------------------------


@dataclass
class Published:
    """What Service A answered: the ids it accepted (by the sequence number sent as content)."""

    accepted: dict[int, str] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    answers: list[tuple[float, float, int, str | None]] = field(default_factory=list)
    """(sent at, seconds taken, status (0: no answer), Retry-After) of every request."""


async def publish_seq(
    base_url: str,
    topic: str,
    seqs: Iterable[int],
    *,
    concurrency: int = 16,
    batch: int = 1,
    out: Published | None = None,
    timeout_s: float = 15.0,
    pause_s: float = 0.0,
    stop: asyncio.Event | None = None,
) -> Published:
    """POST one message per sequence number (content = the number), ``concurrency`` requests at
    a time, until the numbers run out or ``stop`` is set. With ``batch`` > 1, ``batch`` numbers
    go in each request to the batch endpoint (all stored or none)."""
    out = out if out is not None else Published()
    numbers = iter(seqs)

    def next_chunk() -> list[int]:
        return [seq for _, seq in zip(range(batch), numbers, strict=False)]

    async def worker(client: httpx.AsyncClient) -> None:
        while (chunk := next_chunk()) and not (stop is not None and stop.is_set()):
            started = time.monotonic()
            status, retry_after = 0, None
            messages = [{"type": "seq", "content": seq} for seq in chunk]
            try:
                if batch == 1:
                    r = await client.post("/messages", json={"topic": topic, **messages[0]})
                else:
                    r = await client.post("/messages/batch", json={"topic": topic, "messages": messages})
            except httpx.HTTPError as exc:
                out.refused[type(exc).__name__] += len(chunk)
            else:
                status, retry_after = r.status_code, r.headers.get("retry-after")
                if r.status_code == 202:
                    body = r.json()
                    out.accepted.update(zip(chunk, body["ids"] if batch > 1 else [body["id"]], strict=True))
                else:
                    out.refused[f"{r.status_code} {r.json().get('error', '?')}"] += len(chunk)
            took = time.monotonic() - started
            out.latencies_s.append(took)
            out.answers.append((started, took, status, retry_after))
            if pause_s:
                await asyncio.sleep(pause_s)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return out


# -- consuming from Service B -------------------------------------------------------------


def is_message(frame: Any) -> bool:
    return isinstance(frame, dict) and "id" in frame and "type" in frame


def seq_of(frame: dict[str, Any]) -> Any:
    content = frame["content"]
    return content["seq"] if isinstance(content, dict) else content


@dataclass
class Consumer:
    """A WebSocket client of Service B that records every message frame and (in group mode,
    unless ``ack=False``) acknowledges each one; with ``reconnect`` it comes back when dropped."""

    url: str
    ack: bool = True
    reconnect: bool = True
    nack_types: frozenset[str] = frozenset()
    """Message types this client always nacks (a consumer that cannot process them)."""
    frames: list[dict[str, Any]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    """When each frame of ``frames`` arrived (``time.monotonic()``)."""
    events: list[dict[str, Any]] = field(default_factory=list)
    closes: list[tuple[int | None, str]] = field(default_factory=list)
    connections: int = 0
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    ws: ClientConnection | None = None

    def start(self) -> Consumer:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def contents(self) -> Counter[Any]:
        """How often each content (or each padded content's ``seq``) was received."""
        return Counter(seq_of(f) for f in self.frames)

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                async with connect(self.url, open_timeout=5, close_timeout=2) as ws:
                    self.ws = ws
                    self.connections += 1
                    async for raw in ws:
                        frame = orjson.loads(raw)
                        if is_message(frame):
                            self.frames.append(frame)
                            self.arrivals.append(time.monotonic())
                            verb = "nack" if frame["type"] in self.nack_types else "ack"
                            if self.ack:
                                await ws.send(orjson.dumps({verb: frame["id"]}).decode())
                        else:
                            self.events.append(frame)
                            if frame.get("event") == "subscribed":
                                self.subscribed.set()
                    self.closes.append((ws.close_code, ws.close_reason or ""))
            except ConnectionClosed as exc:
                rcvd = exc.rcvd
                self.closes.append((rcvd.code if rcvd else None, rcvd.reason if rcvd else ""))
            except (OSError, InvalidHandshake, TimeoutError):
                pass  # the service is down: try again
            self.ws = None
            if not self.reconnect:
                return
            await asyncio.sleep(0.1)


async def wait_until(predicate: Any, timeout_s: float, what: str, every_s: float = 0.05) -> float:
    """Wait for ``predicate()`` to be true; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"Timed out after {timeout_s} s waiting for {what}.")
        await asyncio.sleep(every_s)
    return time.monotonic() - started


def report_path(tmp_path: Path) -> Path:
    configured = os.environ.get(REPORT_ENV)
    return Path(configured) if configured else tmp_path / "reliability.jsonl"
