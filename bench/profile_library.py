"""Where the time goes in one side of one library-benchmark scenario (see bench_library.py).

Runs the side once (after a warm-up), profiling only its timed part with pyinstrument,
prints the call tree, and prints what Redis spent per command during the side (``INFO
commandstats`` deltas, pre-fill included; on a shared server other clients' commands show
up too, so read the rows this benchmark issues).
pyinstrument is a benchmark-only tool: ``pip install pyinstrument``. Its overhead is
larger on code made of many small Python calls, so it overstates mqctl's share against
redis-py's; for shares to quote, sample from outside with py-spy (also benchmark-only):
``py-spy record -r 1000 --nonblocking -f raw -o out.txt -- python3 bench/bench_library.py``.

    python3 bench/profile_library.py consume --side ours --messages 50000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from typing import Any

import redis.asyncio as aioredis
from pyinstrument import Profiler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_library import SCENARIOS, Bench, delete_matching

import mqctl


async def commandstats(client: aioredis.Redis) -> dict[str, dict[str, float]]:
    stats: dict[str, Any] = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): dict(value) for name, value in stats.items()}


def stats_delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> list[tuple[str, int, int]]:
    rows = []
    for name, now in after.items():
        then = before.get(name, {"calls": 0, "usec": 0})
        calls, usec = int(now["calls"] - then["calls"]), int(now["usec"] - then["usec"])
        if calls:
            rows.append((name, calls, usec))
    return sorted(rows, key=lambda r: -r[2])


async def run(url: str, scenario: str, side: str, n: int, profiler: Profiler) -> None:
    prefix = f"bench-{secrets.token_hex(4)}"
    raw = aioredis.Redis.from_url(url)
    try:
        async with mqctl.connect(url, prefix=prefix, max_backlog=None, default_group="default") as broker:
            bench = Bench(url, prefix, broker, raw)
            await bench.pair(scenario, min(n, 2_000), ours_first=False)  # warm-up
            run_side = bench.sides(scenario)[0 if side == "raw" else 1]
            raw_stream, topic = bench.fresh_names(scenario)
            bench.on_begin, bench.on_end = profiler.start, profiler.stop
            before = await commandstats(raw)
            elapsed = await run_side(raw_stream if side == "raw" else topic, n)
            after = await commandstats(raw)
            await bench.drop(raw_stream, topic)
    finally:
        await delete_matching(raw, f"{prefix}:*")
        await raw.aclose()
    print(f"{scenario} / {side}: {n} messages, timed part {elapsed:.2f} s ({n / elapsed:,.0f} msg/s)")
    print("Redis server time during the profiled part (INFO commandstats deltas):")
    for name, calls, usec in stats_delta(before, after)[:12]:
        print(f"  {name:<20} calls {calls:>8,}  total {usec / 1e6:7.3f} s  per call {usec / calls:9.1f} us")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("scenario", choices=[s.name for s in SCENARIOS])
    parser.add_argument("--side", choices=["ours", "raw"], default="ours")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--interval", type=float, default=0.0005, help="pyinstrument sampling interval (s)")
    args = parser.parse_args()
    n = args.messages or next(s.default_messages for s in SCENARIOS if s.name == args.scenario)
    # async_mode disabled: samples include the event loop waiting in select(), i.e. on Redis.
    profiler = Profiler(interval=args.interval, async_mode="disabled")
    started = time.perf_counter()
    asyncio.run(run(args.redis_url, args.scenario, args.side, n, profiler))
    print(profiler.output_text(unicode=False, color=False, show_all=False, timeline=False))
    print(f"wall {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
