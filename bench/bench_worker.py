"""Handler runtime benchmark (issue #15): a no-op ``@app.handler`` against the bare loop and FastStream.

Three consumers of one consumer group, each over a stream pre-filled with N entries of a
100-byte message (pre-fill not timed), on a private redis-server this script starts (and stops,
by PID), in one process, same run:

    bare        async with broker.subscribe(topic, group=..., batch=100) as sub:
                    async for d in sub: await d.ack()
    handler     @app.handler(topic, group=..., concurrency=8) async def noop(message: mqctl.Message): ...
                run by App.run() (8 workers, prefetch 8, acks that land: nothing pending after)
    faststream  FastStream's Redis stream subscriber, per-message handler, AckPolicy.ACK,
                max_records=100 (bench/bench_faststream.py's consume), if FastStream is installed:
                pip install 'faststream[redis]'   (benchmark-only; not a dependency of mqctl)

Every round runs each side on a fresh stream, the order rotating by round; the figures that
count are the ratios of the median rates. Targets: handler >= 0.7x bare, >= 10x FastStream.

    python3 bench/bench_worker.py [--rounds 5] [--messages 10000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from servers import RedisServer, environment, publish_report

import mqctl
from mqctl.backends.keyspace import Keyspace
from mqctl.core.message import encode

try:
    from faststream.middlewares import AckPolicy
    from faststream.redis import RedisBroker, StreamSub
except ImportError:  # pragma: no cover
    RedisBroker = None

BATCH = 100
CONCURRENCY = 8
GROUP = "bench"
POLL_S = 0.5
MESSAGE = mqctl.Message("bench", {"i": 0, "pad": "x" * 52})
TARGETS = {"bare": 0.7, "faststream": 10.0}


class Bench:
    def __init__(self, url: str, raw: aioredis.Redis, broker: mqctl.Broker) -> None:
        self.url = url
        self.raw = raw
        self.broker = broker
        self.keyspace = Keyspace("mqctl")
        self._serial = 0
        self._fs_fields: dict[bytes, bytes] | None = None

    async def _prefilled(self, name: str, n: int, fields: dict[bytes, bytes] | None = None) -> tuple[str, str]:
        self._serial += 1
        topic = f"{name}-{self._serial}"
        stream = self.keyspace.stream(topic) if fields is None else topic
        fields = fields or {b"m": encode(MESSAGE)}
        for start in range(0, n, 1000):
            pipe = self.raw.pipeline(transaction=False)
            for _ in range(min(1000, n - start)):
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            await pipe.execute()
        return topic, stream

    async def _settled(self, stream: str) -> None:
        deadline = time.monotonic() + 10
        while True:
            group = next(g for g in await self.raw.xinfo_groups(stream) if g["name"].decode() == GROUP)
            if not group["pending"] and not group["lag"]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{stream!r}: group left work undone: {group!r}")
            await asyncio.sleep(0.01)

    @staticmethod
    async def _timed(work: Callable[[], Awaitable[None]]) -> tuple[float, float]:
        cpu, start = time.process_time(), time.perf_counter()
        await work()
        return time.perf_counter() - start, time.process_time() - cpu

    async def bare(self, n: int) -> tuple[float, float]:
        topic, stream = await self._prefilled("bare", n)
        await self.broker.create_group(topic, GROUP, from_start=True)

        async def work() -> None:
            done = 0
            async with self.broker.subscribe(topic, group=GROUP, batch=BATCH, poll_interval=POLL_S) as sub:
                async for delivery in sub:
                    await delivery.ack()
                    done += 1
                    if done >= n:
                        break

        timed = await self._timed(work)
        await self._settled(stream)
        return timed

    async def handler(self, n: int) -> tuple[float, float]:
        topic, stream = await self._prefilled("handler", n)
        await self.broker.create_group(topic, GROUP, from_start=True)
        app = mqctl.App(broker=self.broker)
        finished = asyncio.Event()
        count = 0

        @app.handler(topic, group=GROUP, concurrency=CONCURRENCY)
        async def noop(message: mqctl.Message) -> None:
            nonlocal count
            count += 1
            if count >= n:
                finished.set()

        async def work() -> None:
            task = asyncio.ensure_future(app.run(poll_interval_s=POLL_S))
            await finished.wait()
            app.stop()
            await task  # the drain sends the last acks

        timed = await self._timed(work)
        await self._settled(stream)
        return timed

    async def faststream(self, n: int) -> tuple[float, float]:
        assert RedisBroker is not None
        if self._fs_fields is None:  # the entry one real FastStream publish writes
            probe = RedisBroker(self.url, logger=None)
            await probe.connect()
            await probe.publish(MESSAGE.content, stream="fs-probe")
            [(_, self._fs_fields)] = await self.raw.xrange("fs-probe")
            await probe.stop()
        _, stream = await self._prefilled("fs", n, self._fs_fields)
        await self.raw.xgroup_create(stream, GROUP, id="0")
        broker = RedisBroker(self.url, logger=None)
        finished = asyncio.Event()
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
                finished.set()

        await broker.connect()
        try:

            async def work() -> None:
                await broker.start()
                await finished.wait()

            timed = await self._timed(work)
        finally:
            await broker.stop()
        await self._settled(stream)
        return timed


async def run(rounds: int, n: int, log: Callable[[str], None]) -> tuple[dict[str, list[tuple[float, float]]], dict]:
    sides = ["bare", "handler"] + (["faststream"] if RedisBroker is not None else [])
    rates: dict[str, list[tuple[float, float]]] = {s: [] for s in sides}
    with RedisServer() as private:
        env = environment(*(["faststream"] if RedisBroker is not None else []))
        raw = aioredis.Redis.from_url(private.url)
        try:
            async with mqctl.connect(private.url) as broker:
                bench = Bench(private.url, raw, broker)
                for side in sides:  # warm-up, not reported
                    await getattr(bench, side)(min(n, 2000))
                for i in range(rounds):
                    order = sides[i % len(sides) :] + sides[: i % len(sides)]
                    line = []
                    for side in order:
                        seconds, cpu = await getattr(bench, side)(n)
                        rates[side].append((n / seconds, cpu / n * 1e6))
                        line.append(f"{side} {n / seconds:>8,.0f}/s ({cpu / n * 1e6:5.1f} us CPU)")
                    log(f"round {i + 1}/{rounds}  " + "  ".join(line))
        finally:
            await raw.aclose()
    return rates, env


def report(rates: dict[str, list[tuple[float, float]]], env: dict, rounds: int, n: int) -> dict[str, Any]:
    median = {side: statistics.median(r for r, _ in values) for side, values in rates.items()}
    cpu = {side: statistics.median(c for _, c in values) for side, values in rates.items()}
    comparisons = []
    for baseline, target in TARGETS.items():
        if baseline not in median:
            continue
        ratio = median["handler"] / median[baseline]
        comparisons.append({"baseline": baseline, "ratio": round(ratio, 3), "target": target, "met": ratio >= target})
    return {
        "environment": env,
        "rounds": rounds,
        "messages_per_round": n,
        "concurrency": CONCURRENCY,
        "median_per_s": {k: round(v, 1) for k, v in median.items()},
        "cpu_us_per_message": {k: round(v, 1) for k, v in cpu.items()},
        "per_round": {k: [round(r, 1) for r, _ in v] for k, v in rates.items()},
        "comparisons": comparisons,
    }


def render(rep: dict[str, Any], out: Callable[[str], None]) -> None:
    env = rep["environment"]
    out(" | ".join(f"{k} {v}" for k, v in env.items()))
    out(
        "median/s: "
        + ", ".join(f"{k} {v:,.0f} ({rep['cpu_us_per_message'][k]:.1f} us CPU)" for k, v in rep["median_per_s"].items())
    )
    for c in rep["comparisons"]:
        out(
            f"handler (concurrency {rep['concurrency']}) / {c['baseline']}: {c['ratio']:.2f}x  "
            f"target >= {c['target']:g}x  {'MET' if c['met'] else 'MISSED'}"
        )
    if not any(c["baseline"] == "faststream" for c in rep["comparisons"]):
        out("faststream: not installed, not measured (pip install 'faststream[redis]')")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--messages", type=int, default=10_000, help="per side per round (default 10000)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout (the log on stderr)")
    args = parser.parse_args(argv)
    if min(args.rounds, args.messages) < 1:
        parser.error("--rounds and --messages must be positive")
    started = time.perf_counter()
    rates, env = asyncio.run(run(args.rounds, args.messages, lambda line: print(line, file=sys.stderr, flush=True)))
    return publish_report(report(rates, env, args.rounds, args.messages), render, started, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
