"""Peer benchmark (issue #4): mqctl against FastStream's Redis broker, on the same Redis, in one run.

FastStream is the strongest Python peer with a Redis Streams broker. It is a benchmark-only
dependency, not one of mqctl's; install it first:

    pip install 'faststream[redis]'

Both sides move the same 100-byte message dict on a private redis-server that this script
starts (and stops, by PID):

    publish   50 concurrent tasks, each awaiting one publish at a time.
              FastStream: ``await broker.publish(message, stream=...)`` (one XADD each);
              ours: ``await broker.publish(topic, message)`` (concurrent calls coalesced).
    consume   one consumer of a consumer group over a stream pre-filled with N entries
              (pre-fill not timed), acknowledging every message, reading 100 at a time.
              FastStream: a per-message handler on ``StreamSub(stream, group=..., consumer=...,
              max_records=100)`` with ``ack_policy=AckPolicy.ACK`` (XACK after each handler);
              ours: ``async with broker.subscribe(topic, group=..., batch=100) as sub:
              async for d in sub: await d.ack()``.

Each side pre-fills its stream with its own wire format (FastStream's envelope, copied from
one real ``broker.publish``; mqctl's JSON), by raw pipelines, so neither pre-fill is timed or
favoured. FastStream runs with ``logger=None`` (its default logs every message at INFO). Every
round runs both sides of both scenarios on fresh streams, the side going first alternating by
round; the figures that count are the ratios of the median rates.

    python3 bench/bench_faststream.py [--rounds 5] [--publish-messages 20000]
                                      [--consume-messages 10000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

try:
    from faststream.middlewares import AckPolicy
    from faststream.redis import RedisBroker, StreamSub
except ImportError:  # pragma: no cover
    raise SystemExit(
        "FastStream is not installed. It is a benchmark-only dependency: pip install 'faststream[redis]'"
    ) from None

from servers import RedisServer, environment, publish_report

import mqctl
from mqctl.backends.keyspace import Keyspace
from mqctl.core.message import encode

CONCURRENCY = 50
BATCH = 100
PREFILL_CHUNK = 1000
GROUP = "bench"
PAYLOAD_BYTES = 100
POLL_S = 0.5

_BASE = {"type": "bench", "content": {"i": 0, "pad": ""}, "headers": {}}
MESSAGE: dict[str, Any] = {
    "type": "bench",
    "content": {"i": 0, "pad": "x" * (PAYLOAD_BYTES - len(json.dumps(_BASE, separators=(",", ":"))))},
    "headers": {},
}

TARGETS = {"publish": 3.0, "consume": 10.0}


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@dataclass
class Result:
    name: str
    messages: int
    faststream: list[float] = field(default_factory=list)
    """Messages per second, one per round."""
    ours: list[float] = field(default_factory=list)
    faststream_cpu_us: list[float] = field(default_factory=list)
    """This process's CPU microseconds per message, one per round (Redis not included)."""
    ours_cpu_us: list[float] = field(default_factory=list)

    def median(self, side: str) -> float:
        return statistics.median(getattr(self, side))

    @property
    def ratio(self) -> float:
        return self.median("ours") / self.median("faststream")


class Bench:
    def __init__(self, url: str, raw: aioredis.Redis, fs: RedisBroker, ours: mqctl.Broker) -> None:
        self.url = url
        self.raw = raw
        self.fs = fs
        self.ours = ours
        self.keyspace = Keyspace("mqctl")
        self._serial = 0
        self._fs_fields: dict[bytes, bytes] | None = None

    def fresh(self, name: str) -> str:
        self._serial += 1
        return f"{name}-{self._serial}"

    async def _timed(self, work: Callable[[], Awaitable[None]]) -> tuple[float, float]:
        cpu = time.process_time()
        start = time.perf_counter()
        await work()
        return time.perf_counter() - start, time.process_time() - cpu

    async def _check(self, stream: str, n: int, *, consumed_by: str | None = None) -> None:
        length = await self.raw.xlen(stream)
        if length != n:
            raise RuntimeError(f"{stream!r} holds {length} entries, expected {n}")
        if consumed_by is None:
            return
        deadline = time.monotonic() + 10
        while True:  # FastStream acks the last message after its handler returns
            group = next(g for g in await self.raw.xinfo_groups(stream) if g["name"].decode() == consumed_by)
            if not group["pending"] and not group["lag"]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"group {consumed_by!r} of {stream!r} left work undone: {group!r}")
            await asyncio.sleep(0.05)

    # -- publish ------------------------------------------------------------------------

    async def faststream_publish(self, n: int) -> tuple[float, float]:
        stream = self.fresh("fs-publish")
        fs = self.fs

        async def worker(count: int) -> None:
            for _ in range(count):
                await fs.publish(MESSAGE, stream=stream)

        async def work() -> None:
            await asyncio.gather(*(worker(c) for c in _split(n, CONCURRENCY)))

        timed = await self._timed(work)
        await self._check(stream, n)
        return timed

    async def ours_publish(self, n: int) -> tuple[float, float]:
        topic = self.fresh("ours-publish")
        broker = self.ours

        async def worker(count: int) -> None:
            for _ in range(count):
                await broker.publish(topic, MESSAGE)

        async def work() -> None:
            await asyncio.gather(*(worker(c) for c in _split(n, CONCURRENCY)))

        timed = await self._timed(work)
        await self._check(self.keyspace.stream(topic), n)
        return timed

    # -- consume ------------------------------------------------------------------------

    async def _prefill(self, stream: str, fields: dict[bytes, bytes], n: int) -> None:
        for size in _split(n, -(-n // PREFILL_CHUNK)):
            pipe = self.raw.pipeline(transaction=False)
            for _ in range(size):
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            await pipe.execute()

    async def _faststream_fields(self) -> dict[bytes, bytes]:
        """The entry one real FastStream publish of MESSAGE writes (its envelope around the JSON)."""
        if self._fs_fields is None:
            probe = self.fresh("fs-probe")
            await self.fs.publish(MESSAGE, stream=probe)
            [(_, fields)] = await self.raw.xrange(probe)
            await self.raw.delete(probe)
            self._fs_fields = fields
        return self._fs_fields

    async def faststream_consume(self, n: int) -> tuple[float, float]:
        stream = self.fresh("fs-consume")
        await self._prefill(stream, await self._faststream_fields(), n)
        await self.raw.xgroup_create(stream, GROUP, id="0")
        broker = RedisBroker(self.url, logger=None)
        done = asyncio.Event()
        count = 0

        @broker.subscriber(
            stream=StreamSub(
                stream, group=GROUP, consumer="c1", max_records=BATCH, polling_interval=int(POLL_S * 1000)
            ),
            ack_policy=AckPolicy.ACK,
        )
        async def handle(body: dict[str, Any]) -> None:
            nonlocal count
            count += 1
            if count >= n:
                done.set()

        await broker.connect()
        try:

            async def work() -> None:
                await broker.start()
                await done.wait()

            timed = await self._timed(work)
            if count != n:
                raise RuntimeError(f"FastStream handled {count} messages, expected {n}")
        finally:
            await broker.stop()
        await self._check(stream, n, consumed_by=GROUP)
        return timed

    async def ours_consume(self, n: int) -> tuple[float, float]:
        topic = self.fresh("ours-consume")
        stream = self.keyspace.stream(topic)
        await self._prefill(stream, {b"m": encode(mqctl.Message(**MESSAGE))}, n)
        await self.ours.create_group(topic, GROUP, from_start=True)
        consumed = 0

        async def work() -> None:
            nonlocal consumed
            async with self.ours.subscribe(topic, group=GROUP, consumer="c1", batch=BATCH, poll_interval=POLL_S) as sub:
                async for delivery in sub:
                    await delivery.ack()
                    consumed += 1
                    if consumed >= n:
                        break

        timed = await self._timed(work)
        await self._check(stream, n, consumed_by=GROUP)
        return timed


async def run(rounds: int, sizes: dict[str, int], log: Callable[[str], None]) -> tuple[list[Result], dict[str, str]]:
    results = [Result(name, n) for name, n in sizes.items()]
    with RedisServer() as private:
        env = environment("faststream", "fast-depends")
        raw = aioredis.Redis.from_url(private.url)
        fs = RedisBroker(private.url, logger=None)
        await fs.connect()
        try:
            async with mqctl.connect(private.url, default_group="default") as ours:
                bench = Bench(private.url, raw, fs, ours)
                for r in results:  # warm-up, not reported
                    for side in ("faststream", "ours"):
                        await getattr(bench, f"{side}_{r.name}")(min(r.messages, 2000))
                for i in range(rounds):
                    order = ("ours", "faststream") if i % 2 else ("faststream", "ours")
                    for r in results:
                        line = []
                        for side in order:
                            seconds, cpu = await getattr(bench, f"{side}_{r.name}")(r.messages)
                            getattr(r, side).append(r.messages / seconds)
                            getattr(r, f"{side}_cpu_us").append(cpu / r.messages * 1e6)
                            line.append(
                                f"{side} {r.messages / seconds:>9,.0f}/s ({cpu / r.messages * 1e6:5.1f} us CPU)"
                            )
                        log(
                            f"round {i + 1}/{rounds} {r.name:<8} {'  '.join(line)}  "
                            f"ratio {r.ours[-1] / r.faststream[-1]:.2f}"
                        )
        finally:
            await fs.stop()
            await raw.aclose()
    return results, env


def report(results: list[Result], env: dict[str, str], rounds: int) -> dict[str, Any]:
    return {
        "environment": env,
        "rounds": rounds,
        "concurrency": CONCURRENCY,
        "batch": BATCH,
        "payload_bytes": len(json.dumps(MESSAGE, separators=(",", ":"))),
        "scenarios": [
            {
                "name": r.name,
                "messages_per_round": r.messages,
                "faststream_per_round": [round(x, 1) for x in r.faststream],
                "ours_per_round": [round(x, 1) for x in r.ours],
                "faststream_median": round(r.median("faststream"), 1),
                "ours_median": round(r.median("ours"), 1),
                "ratio": round(r.ratio, 3),
                "per_round": [round(o / f, 2) for f, o in zip(r.faststream, r.ours, strict=True)],
                "faststream_cpu_us_median": round(statistics.median(r.faststream_cpu_us), 1),
                "ours_cpu_us_median": round(statistics.median(r.ours_cpu_us), 1),
                "target": TARGETS[r.name],
                "met": r.ratio >= TARGETS[r.name],
            }
            for r in results
        ],
    }


def render(rep: dict[str, Any], out: Callable[[str], None]) -> None:
    env = rep["environment"]
    out(
        f"Python {env['python']} | FastStream {env['faststream']} | redis-py {env['redis']} | hiredis "
        f"{env['hiredis']} | Redis {env['redis_server']} | nproc {env['nproc']} | mqctl {env['mqctl']}"
    )
    for s in rep["scenarios"]:
        out(
            f"{s['name']:<8} {s['messages_per_round']:>6,}/round  FastStream {s['faststream_median']:>9,.0f}/s  "
            f"ours {s['ours_median']:>9,.0f}/s  ours/FastStream {s['ratio']:.2f}x  target >= {s['target']:g}x  "
            f"{'MET' if s['met'] else 'MISSED'}  rounds {', '.join(f'{x:.2f}' for x in s['per_round'])}  "
            f"CPU us/msg {s['faststream_cpu_us_median']:.1f} / {s['ours_cpu_us_median']:.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--publish-messages", type=int, default=20_000, help="per side per round (default 20000)")
    parser.add_argument("--consume-messages", type=int, default=10_000, help="per side per round (default 10000)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout (the log on stderr)")
    args = parser.parse_args(argv)
    if min(args.rounds, args.publish_messages, args.consume_messages) < 1:
        parser.error("--rounds and the message counts must be positive")
    started = time.perf_counter()
    sizes = {"publish": args.publish_messages, "consume": args.consume_messages}
    results, env = asyncio.run(run(args.rounds, sizes, lambda line: print(line, file=sys.stderr, flush=True)))
    rep = report(results, env, args.rounds)
    return publish_report(rep, render, started, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
