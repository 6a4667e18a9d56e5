"""Library benchmark (issue #2): mqctl against raw redis-py, on the same Redis, in one run.

Three scenarios, each measured as a raw redis-py side and an mqctl side that move the
same 100-byte JSON message (the raw side sends mqctl's exact wire bytes in field ``m``):

1. publish       50 concurrent tasks; raw: one XADD per message (one round trip each);
                 ours: ``broker.publish(topic, message)`` (coalesced into one Lua call per batch).
2. publish_many  sequential batches of 100; raw: a non-transactional pipeline of 100 XADDs;
                 ours: ``broker.publish_many(topic, messages)``.
3. consume       one consumer with acks over a pre-filled stream (pre-fill not timed);
                 raw: XREADGROUP COUNT 100 + XACK of those ids; ours: ``broker.subscribe(...)``
                 iterated with ``await delivery.ack()``.

Every round runs each scenario's two sides back to back (which goes first alternates by
round) on fresh keys. The machine is shared and noisy, so the figures that count are the
ratios of the medians over the rounds, not the absolute rates. Every key lives under a
random ``bench-<hex>`` prefix and is deleted (SCAN + DEL) at the end; nothing is flushed.

    python3 bench/bench_library.py [--redis-url URL] [--messages N] [--rounds R] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.utils import HIREDIS_AVAILABLE
from rich.console import Console
from rich.table import Table

import mqctl
from mqctl.backends.keyspace import Keyspace
from mqctl.core.message import encode

CONCURRENCY = 50
BATCH = 100
PREFILL_CHUNK = 1000
GROUP = "bench"
PAYLOAD_BYTES = 100

# The message both sides move; ``pad`` is sized so that the wire form is PAYLOAD_BYTES long.
_BASE = {"type": "bench", "content": {"i": 0, "pad": ""}, "headers": {}}
_PAD = PAYLOAD_BYTES - len(json.dumps(_BASE, separators=(",", ":")))
MESSAGE: dict[str, Any] = {"type": "bench", "content": {"i": 0, "pad": "x" * _PAD}, "headers": {}}
PAYLOAD: bytes = json.dumps(MESSAGE, separators=(",", ":")).encode()
EXPECTED = mqctl.Message(**MESSAGE)


Side = Callable[[str, int], Awaitable[float]]
"""One side of a scenario: (stream key or topic, messages) -> seconds taken."""


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    default_messages: int
    target: float
    """The least acceptable ratio ours / raw of the median rates."""


SCENARIOS = (
    Scenario("publish", f"{CONCURRENCY} tasks: XADD each vs broker.publish (coalesced)", 20_000, 2.0),
    Scenario("publish_many", f"sequential: pipeline of {BATCH} XADD vs publish_many({BATCH})", 50_000, 0.9),
    Scenario("consume", f"XREADGROUP COUNT {BATCH} + XACK vs subscribe(batch={BATCH}) + ack()", 50_000, 0.7),
)


@dataclass
class Result:
    scenario: Scenario
    messages: int
    raw: list[float] = field(default_factory=list)
    """Messages per second, one per round."""
    ours: list[float] = field(default_factory=list)
    raw_cpu_us: list[float] = field(default_factory=list)
    """Client CPU microseconds per message, one per round: less sensitive to a noisy machine."""
    ours_cpu_us: list[float] = field(default_factory=list)

    @property
    def raw_median(self) -> float:
        return statistics.median(self.raw)

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours)

    @property
    def ratio(self) -> float:
        return self.ours_median / self.raw_median

    @property
    def met(self) -> bool:
        return self.ratio >= self.scenario.target


def _split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal non-negative counts."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class Bench:
    """The two sides of every scenario, on one Redis, under one key prefix."""

    def __init__(self, url: str, prefix: str, broker: mqctl.Broker, raw: aioredis.Redis) -> None:
        self.url = url
        self.prefix = prefix
        self.broker = broker
        self.raw = raw
        self.keyspace = Keyspace(prefix)
        self._serial = 0
        self.on_begin: Callable[[], object] | None = None
        """Called as the timed part of a side starts (and ``on_end`` as it ends): for profiling."""
        self.on_end: Callable[[], object] | None = None
        self.last_cpu_s = 0.0
        """CPU time this process spent in the last timed part (all threads; Redis not included)."""
        self._cpu_start = 0.0

    def _begin(self) -> float:
        if self.on_begin is not None:
            self.on_begin()
        self._cpu_start = time.process_time()
        return time.perf_counter()

    def _end(self, start: float) -> float:
        elapsed = time.perf_counter() - start
        self.last_cpu_s = time.process_time() - self._cpu_start
        if self.on_end is not None:
            self.on_end()
        return elapsed

    def fresh_names(self, scenario: str) -> tuple[str, str]:
        """A fresh (raw stream key, mqctl topic) pair, so no round sees another's data."""
        self._serial += 1
        topic = f"{scenario}-{self._serial}"
        return f"{self.prefix}:raw:{topic}", topic

    async def drop(self, raw_stream: str, topic: str) -> None:
        """Delete one round's keys on both sides (SCAN + DEL; braces are not special in MATCH)."""
        await self.raw.delete(raw_stream)
        await self.raw.srem(f"{self.prefix}:topics", topic)
        await delete_matching(self.raw, f"{self.prefix}:{{{topic}}}:*")

    # -- 1. concurrent single publishes -------------------------------------------------

    async def raw_publish(self, stream: str, n: int) -> float:
        async def worker(count: int) -> None:
            for _ in range(count):
                await self.raw.xadd(stream, {"m": PAYLOAD})

        start = self._begin()
        await asyncio.gather(*(worker(c) for c in _split(n, CONCURRENCY)))
        elapsed = self._end(start)
        await self.check(stream, n)
        return elapsed

    async def ours_publish(self, topic: str, n: int) -> float:
        broker = self.broker

        async def worker(count: int) -> None:
            for _ in range(count):
                await broker.publish(topic, MESSAGE)

        start = self._begin()
        await asyncio.gather(*(worker(c) for c in _split(n, CONCURRENCY)))
        elapsed = self._end(start)
        await self.check(self.keyspace.stream(topic), n)
        return elapsed

    # -- 2. sequential batches --------------------------------------------------------

    async def raw_publish_many(self, stream: str, n: int) -> float:
        start = self._begin()
        for size in _split(n, -(-n // BATCH)):
            pipe = self.raw.pipeline(transaction=False)
            for _ in range(size):
                pipe.xadd(stream, {"m": PAYLOAD})
            await pipe.execute()
        elapsed = self._end(start)
        await self.check(stream, n)
        return elapsed

    async def ours_publish_many(self, topic: str, n: int) -> float:
        batches = [[MESSAGE] * size for size in _split(n, -(-n // BATCH))]
        start = self._begin()
        for batch in batches:
            await self.broker.publish_many(topic, batch)
        elapsed = self._end(start)
        await self.check(self.keyspace.stream(topic), n)
        return elapsed

    # -- 3. consume with acks -----------------------------------------------------------

    async def prefill(self, stream: str, n: int) -> None:
        """``n`` messages into ``stream`` by raw pipelines: the same, fast pre-fill for both sides."""
        for size in _split(n, -(-n // PREFILL_CHUNK)):
            pipe = self.raw.pipeline(transaction=False)
            for _ in range(size):
                pipe.xadd(stream, {"m": PAYLOAD})
            await pipe.execute()

    async def raw_consume(self, stream: str, n: int) -> float:
        await self.prefill(stream, n)
        await self.raw.xgroup_create(stream, GROUP, id="0")
        consumed = 0
        start = self._begin()
        while consumed < n:
            reply = await self.raw.xreadgroup(GROUP, "c1", {stream: ">"}, count=BATCH)
            if not reply:
                raise RuntimeError(f"raw consume: stream ran dry after {consumed} of {n} messages")
            ids = [entry_id for entry_id, _ in reply[0][1]]
            await self.raw.xack(stream, GROUP, *ids)
            consumed += len(ids)
        elapsed = self._end(start)
        await self.check(stream, n, consumed_by=GROUP)
        return elapsed

    async def ours_consume(self, topic: str, n: int) -> float:
        # The raw side's pre-fill, written into the topic's stream (mqctl reads field ``m``): both
        # sides start from identical entries, and no first publish adds mqctl's default group.
        await self.prefill(self.keyspace.stream(topic), n)
        await self.broker.create_group(topic, GROUP, from_start=True)
        consumed = 0
        start = self._begin()
        async with self.broker.subscribe(topic, group=GROUP, consumer="c1", batch=BATCH, poll_interval=0.5) as sub:
            async for delivery in sub:
                await delivery.ack()
                consumed += 1
                if consumed >= n:
                    break
        elapsed = self._end(start)
        if delivery.message != EXPECTED:
            raise RuntimeError(f"ours consume: got {delivery.message!r}, expected {EXPECTED!r}")
        await self.check(self.keyspace.stream(topic), n, consumed_by=GROUP)
        return elapsed

    async def check(self, stream: str, n: int, *, consumed_by: str | None = None) -> None:
        """After the timed part: the stream holds ``n`` entries (all read and acked by ``consumed_by``)."""
        length = await self.raw.xlen(stream)
        if length != n:
            raise RuntimeError(f"{stream!r} holds {length} entries, expected {n}")
        if consumed_by is not None:
            group = next(g for g in await self.raw.xinfo_groups(stream) if g["name"].decode() == consumed_by)
            if group["pending"] or group["lag"]:
                raise RuntimeError(f"group {consumed_by!r} of {stream!r} left work undone: {group!r}")

    def sides(self, scenario: str) -> tuple[Side, Side]:
        return getattr(self, f"raw_{scenario}"), getattr(self, f"ours_{scenario}")

    async def pair(self, scenario: str, n: int, *, ours_first: bool) -> tuple[float, float, float, float]:
        """One round of ``scenario``: raw and ours rates in messages per second, then raw and
        ours client CPU in microseconds per message."""
        raw, ours = self.sides(scenario)
        rates: dict[str, float] = {}
        cpu: dict[str, float] = {}
        order = [("ours", ours), ("raw", raw)] if ours_first else [("raw", raw), ("ours", ours)]
        for side, run in order:
            raw_stream, topic = self.fresh_names(scenario)
            try:
                elapsed = await run(raw_stream if side == "raw" else topic, n)
            finally:
                await self.drop(raw_stream, topic)
            rates[side] = n / elapsed
            cpu[side] = self.last_cpu_s / n * 1e6
        return rates["raw"], rates["ours"], cpu["raw"], cpu["ours"]


async def delete_matching(client: aioredis.Redis, pattern: str) -> int:
    deleted = 0
    batch: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += await client.delete(*batch)
            batch.clear()
    if batch:
        deleted += await client.delete(*batch)
    return deleted


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _mqctl_revision() -> str:
    """The commit of the mqctl under test, with ``+dirty`` when mqctl/ has uncommitted changes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(mqctl.__file__)))
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "--", "mqctl"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


async def environment(raw: aioredis.Redis) -> dict[str, Any]:
    info = await raw.info("server")
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "redis_py": redis.__version__,
        "hiredis": _version("hiredis"),
        "hiredis_in_use": bool(HIREDIS_AVAILABLE),
        "redis_server": info.get("redis_version"),
        "mqctl": f"{mqctl.__version__} ({_mqctl_revision()})",
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "payload_bytes": len(PAYLOAD),
        "concurrency": CONCURRENCY,
        "batch": BATCH,
    }


async def run(url: str, messages: int | None, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    prefix = f"bench-{secrets.token_hex(4)}"
    raw = aioredis.Redis.from_url(url)
    try:
        env = await environment(raw)
        env["key_prefix"] = prefix
        # A durable default group, as the services connect: the stream keeps every message for it
        # (without one, mqctl would trim beyond `retention`, work the raw side does not do).
        async with mqctl.connect(url, prefix=prefix, max_backlog=None, default_group="default") as broker:
            if encode(EXPECTED) != PAYLOAD:
                raise RuntimeError("mqctl's wire form differs from the raw payload; the comparison would be unfair")
            bench = Bench(url, prefix, broker, raw)
            results = [Result(s, messages or s.default_messages) for s in SCENARIOS]
            # Warm-up (not reported): connection pools on both sides, script load, code paths.
            for r in results:
                await bench.pair(r.scenario.name, min(r.messages, 2_000), ours_first=False)
            for i in range(rounds):
                for r in results:
                    raw_rate, ours_rate, raw_cpu, ours_cpu = await bench.pair(
                        r.scenario.name, r.messages, ours_first=i % 2 == 1
                    )
                    r.raw.append(raw_rate)
                    r.ours.append(ours_rate)
                    r.raw_cpu_us.append(raw_cpu)
                    r.ours_cpu_us.append(ours_cpu)
                    log(
                        f"round {i + 1}/{rounds} {r.scenario.name:<12} raw {raw_rate:>9,.0f}/s  "
                        f"ours {ours_rate:>9,.0f}/s  ratio {ours_rate / raw_rate:.2f}  "
                        f"(client CPU/msg raw {raw_cpu:.1f} us, ours {ours_cpu:.1f} us)"
                    )
    finally:
        await delete_matching(raw, f"{prefix}:*")
        await raw.aclose()
    return {
        "environment": env,
        "rounds": rounds,
        "scenarios": [
            {
                "name": r.scenario.name,
                "what": r.scenario.what,
                "messages_per_round": r.messages,
                "raw_per_round": [round(x, 1) for x in r.raw],
                "ours_per_round": [round(x, 1) for x in r.ours],
                "raw_median": round(r.raw_median, 1),
                "ours_median": round(r.ours_median, 1),
                "ratio": round(r.ratio, 3),
                "raw_cpu_us_per_msg": [round(x, 2) for x in r.raw_cpu_us],
                "ours_cpu_us_per_msg": [round(x, 2) for x in r.ours_cpu_us],
                "raw_cpu_us_median": round(statistics.median(r.raw_cpu_us), 2),
                "ours_cpu_us_median": round(statistics.median(r.ours_cpu_us), 2),
                "target": r.scenario.target,
                "met": r.met,
            }
            for r in results
        ],
    }


def render(report: dict[str, Any], console: Console) -> None:
    env = report["environment"]
    console.print(
        f"Python {env['python']} | redis-py {env['redis_py']} | hiredis {env['hiredis']} "
        f"(in use: {env['hiredis_in_use']})"
    )
    console.print(f"Redis server {env['redis_server']} | nproc {env['nproc']} | mqctl {env['mqctl']}")
    console.print(
        f"payload {env['payload_bytes']} bytes | {env['concurrency']} publishing tasks | batch {env['batch']} | "
        f"{report['rounds']} rounds"
    )
    summary = Table(
        title="mqctl vs raw redis-py: median rate over the rounds (messages/s), and client CPU per message",
        caption="the target applies to ours/raw; CPU is this process only (Redis excluded), a cross-check",
    )
    columns = ("scenario", "msgs/round", "raw", "ours", "ours/raw", "target", "met", "CPU us/msg raw", "ours")
    for column in columns:
        summary.add_column(column, justify="left" if column == "scenario" else "right")
    for s in report["scenarios"]:
        summary.add_row(
            s["name"],
            f"{s['messages_per_round']:,}",
            f"{s['raw_median']:,.0f}",
            f"{s['ours_median']:,.0f}",
            f"{s['ratio']:.2f}x",
            f">= {s['target']:g}x",
            "[green]yes[/]" if s["met"] else "[red]no[/]",
            f"{s['raw_cpu_us_median']:.1f}",
            f"{s['ours_cpu_us_median']:.1f}",
        )
    console.print(summary)
    per_round = Table(title="Per round (messages/s)")
    per_round.add_column("scenario")
    per_round.add_column("side")
    for i in range(report["rounds"]):
        per_round.add_column(f"r{i + 1}", justify="right")
    for s in report["scenarios"]:
        per_round.add_row(s["name"], "raw", *(f"{x:,.0f}" for x in s["raw_per_round"]))
        per_round.add_row("", "ours", *(f"{x:,.0f}" for x in s["ours_per_round"]))
        per_round.add_row(
            "", "ratio", *(f"{o / r:.2f}" for r, o in zip(s["raw_per_round"], s["ours_per_round"], strict=True))
        )
    console.print(per_round)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/0",
        help="the Redis both sides use (default: redis://127.0.0.1:6379/0)",
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=None,
        help="messages per side per round for every scenario (default: 20000 publish, 50000 the others)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every scenario; medians are taken over them")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout (tables to stderr)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or (args.messages is not None and args.messages < 1):
        parser.error("--rounds and --messages must be positive")
    width = None if sys.stdout.isatty() else 120  # rich's 80 columns squeeze the tables in a log
    err = Console(stderr=True, width=width)
    started = time.perf_counter()
    report = asyncio.run(run(args.redis_url, args.messages, args.rounds, lambda line: err.print(line, highlight=False)))
    report["command"] = " ".join(["python3", *sys.argv])
    report["wall_s"] = round(time.perf_counter() - started, 1)
    render(report, err if args.json else Console(width=width))
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
