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
the ratios are against ``single``. Beside the rates it reports CPU per message, which the
noise of a shared machine disturbs less: this client process's (``time.process_time``) and
the Redis servers' (the sum of ``used_cpu_user + used_cpu_sys`` over the setup's nodes). On
a 2-core machine the 3 masters, the client and its event loop share the same cores, so the
client's CPU (one Python process) bounds every figure; see BENCHMARKS.md.

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

import redis

import mqctl
from tests.redis_cluster import RedisCluster
from tests.servers import RedisServer, free_port

PUBLISHERS = 50
CONSUMERS = 3
MESSAGE = {"type": "bench", "content": {"n": 0, "text": "x" * 48}, "headers": {"k": "v"}}


async def publish(url: str, topic: str, partitions: int, count: int) -> float:
    """Messages per second for ``count`` publishes from ``PUBLISHERS`` concurrent tasks."""
    async with mqctl.connect(
        url, prefix=f"bench-{uuid.uuid4().hex[:8]}", max_backlog=None, default_group="default"
    ) as broker:
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
    async with mqctl.connect(
        url, prefix=f"bench-{uuid.uuid4().hex[:8]}", max_backlog=None, default_group="default"
    ) as broker:
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


def server_cpu_s(ports: list[int]) -> float:
    """CPU seconds the Redis servers on ``ports`` have used so far."""
    total = 0.0
    for port in ports:
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            info = client.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        finally:
            client.close()
    return total


def measured(run: Any, ports: list[int], count: int) -> tuple[float, float, float]:
    """(msgs/s, client CPU µs/msg, server CPU µs/msg) of one run of a scenario."""
    client0, server0 = time.process_time(), server_cpu_s(ports)
    rate = asyncio.run(run)
    client1, server1 = time.process_time(), server_cpu_s(ports)
    return rate, (client1 - client0) * 1e6 / count, (server1 - server0) * 1e6 / count


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
        setups = {
            "single": (single.url, 1, [single.port]),
            "cluster-1p": (cluster.url, 1, cluster.ports),
            "cluster-6p": (cluster.url, 6, cluster.ports),
        }
        keys = ["publish", "end_to_end", "publish_client_cpu_us", "publish_server_cpu_us"]
        keys += ["end_to_end_client_cpu_us", "end_to_end_server_cpu_us"]
        results: dict[str, dict[str, list[float]]] = {s: {k: [] for k in keys} for s in setups}
        for round_ in range(args.rounds):
            for name, (url, partitions, ports) in setups.items():
                topic = f"bench-{round_}-{uuid.uuid4().hex[:6]}"
                for scenario, run in (
                    ("publish", publish(url, topic, partitions, args.messages)),
                    ("end_to_end", end_to_end(url, topic + "-e2e", partitions, args.messages)),
                ):
                    rate, client_us, server_us = measured(run, ports, args.messages)
                    results[name][scenario].append(rate)
                    results[name][f"{scenario}_client_cpu_us"].append(client_us)
                    results[name][f"{scenario}_server_cpu_us"].append(server_us)
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
            s: {k: medians[s][k] / medians["single"][k] for k in ("publish", "end_to_end")}
            for s in medians
            if s != "single"
        },
        "all_rounds": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.messages} messages, {args.rounds} rounds, {PUBLISHERS} publishers, {CONSUMERS} consumers")
    print("rates are medians over the rounds; CPU is µs per message, client / Redis servers")
    print(f"{'setup':<11} {'publish/s':>10} {'x':>5} {'CPU':>11} {'e2e/s':>8} {'x':>5} {'CPU':>11}")
    for name, m in medians.items():
        r = report["ratio_to_single"].get(name, {"publish": 1.0, "end_to_end": 1.0})
        print(
            f"{name:<11} {m['publish']:>10,.0f} {r['publish']:>5.2f} "
            f"{m['publish_client_cpu_us']:>5.0f}/{m['publish_server_cpu_us']:<5.0f} "
            f"{m['end_to_end']:>8,.0f} {r['end_to_end']:>5.2f} "
            f"{m['end_to_end_client_cpu_us']:>5.0f}/{m['end_to_end_server_cpu_us']:<5.0f}"
        )


if __name__ == "__main__":
    main()
