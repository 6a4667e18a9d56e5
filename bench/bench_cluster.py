"""Cluster benchmark (issue #7): one Redis against a 3-master Redis Cluster, 1 and 6 partitions, in one run.

Two scenarios, each on three setups that start in this process's reach (private servers on
free loopback ports, stopped by PID at the end; nothing shared is touched):

    single       one redis-server, a topic of 1 partition (today's layout)
    cluster-1p   a Redis Cluster of 3 masters, a topic of 1 partition (one master does the work)
    cluster-6p   the same cluster, a topic of 6 partitions (2 per master)

1. publish      50 concurrent tasks call ``broker.publish`` until N messages are stored.
2. end-to-end   the same publishing while 3 consumers of one group iterate ``broker.subscribe``
                and ack each delivery; timed until every message is acknowledged.

Each round runs every setup on a fresh topic; the figures are medians over the rounds and
the ratios are against ``single``. On a 2-core machine the 3 masters, the client and the
event loop share the same cores, so the client's CPU (one Python process) bounds every
figure; see BENCHMARKS.md.

    python3 bench/bench_cluster.py [--messages N] [--rounds R] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mqctl
from tests.integration.conftest import RedisServer, free_port
from tests.redis_cluster import RedisCluster

PUBLISHERS = 50
CONSUMERS = 3
MESSAGE = {"type": "bench", "content": {"n": 0, "text": "x" * 48}, "headers": {"k": "v"}}


async def publish(url: str, topic: str, partitions: int, count: int) -> float:
    """Messages per second for ``count`` publishes from ``PUBLISHERS`` concurrent tasks."""
    async with mqctl.connect(url, prefix=f"bench-{uuid.uuid4().hex[:8]}", max_backlog=None) as broker:
        await broker.create_topic(topic, partitions=partitions)
        await broker.publish(topic, MESSAGE)  # connections and scripts are warm before the clock starts
        left = count

        async def task() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await broker.publish(topic, MESSAGE)

        started = time.perf_counter()
        await asyncio.gather(*(task() for _ in range(PUBLISHERS)))
        return count / (time.perf_counter() - started)


async def end_to_end(url: str, topic: str, partitions: int, count: int) -> float:
    """Messages per second from the first publish to the last ack, publishing and consuming at once."""
    async with mqctl.connect(url, prefix=f"bench-{uuid.uuid4().hex[:8]}", max_backlog=None) as broker:
        await broker.create_topic(topic, partitions=partitions)
        acked = 0
        done = asyncio.Event()

        async def consume(name: str) -> None:
            nonlocal acked
            async with broker.subscribe(topic, consumer=name, poll_interval=0.2, batch=200) as sub:
                async for delivery in sub:
                    await delivery.ack()
                    acked += 1
                    if acked >= count:
                        done.set()

        consumers = [asyncio.create_task(consume(f"c{i}")) for i in range(CONSUMERS)]
        await asyncio.sleep(0.3)  # the group and its readers are in place
        left = count

        async def task() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await broker.publish(topic, MESSAGE)

        started = time.perf_counter()
        await asyncio.gather(*(task() for _ in range(PUBLISHERS)))
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.perf_counter() - started
        for consumer in consumers:
            consumer.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not on PATH: install it (apt-get install redis-server).")

    single = RedisServer(free_port())
    cluster = RedisCluster(Path(tempfile.mkdtemp(prefix="mqctl-bench-cluster-")), masters=3)
    single.start()
    try:
        cluster.start()
        setups = {"single": (single.url, 1), "cluster-1p": (cluster.url, 1), "cluster-6p": (cluster.url, 6)}
        results: dict[str, dict[str, list[float]]] = {s: {"publish": [], "end_to_end": []} for s in setups}
        for round_ in range(args.rounds):
            for name, (url, partitions) in setups.items():
                topic = f"bench-{round_}-{uuid.uuid4().hex[:6]}"
                results[name]["publish"].append(asyncio.run(publish(url, topic, partitions, args.messages)))
                results[name]["end_to_end"].append(
                    asyncio.run(end_to_end(url, topic + "-e2e", partitions, args.messages))
                )
    finally:
        cluster.stop()
        single.stop()

    medians = {s: {k: statistics.median(v) for k, v in r.items()} for s, r in results.items()}
    report: dict[str, Any] = {
        "messages": args.messages,
        "rounds": args.rounds,
        "publishers": PUBLISHERS,
        "consumers": CONSUMERS,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "redis": subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2],
        "median_msgs_per_s": medians,
        "ratio_to_single": {
            s: {k: medians[s][k] / medians["single"][k] for k in m} for s, m in medians.items() if s != "single"
        },
        "all_rounds": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.messages} messages, {args.rounds} rounds, {PUBLISHERS} publishers, {CONSUMERS} consumers")
    print(f"{'setup':<12} {'publish msg/s':>14} {'x single':>9} {'end-to-end msg/s':>17} {'x single':>9}")
    for name, m in medians.items():
        r = report["ratio_to_single"].get(name, {"publish": 1.0, "end_to_end": 1.0})
        print(
            f"{name:<12} {m['publish']:>14,.0f} {r['publish']:>9.2f} {m['end_to_end']:>17,.0f} {r['end_to_end']:>9.2f}"
        )


if __name__ == "__main__":
    main()
