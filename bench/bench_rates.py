"""End-to-end rates (issue #16): ``mqctl loadtest`` against ``serve-a`` + ``serve-b`` as separate
processes on a private Redis, at rising rates, with the CPU each process spent per message.

Every step starts a fresh private redis-server, ``mqctl serve-a --workers W`` and
``mqctl serve-b`` (each its own process, on ports nothing else can take), runs

    mqctl loadtest --workers 50 --rate R --messages R*SECONDS --json      (single POSTs)
    mqctl loadtest --workers 50 --batch 100 [--rate R] --messages N --json   (the batch endpoint)

and reads, from ``/proc``, the CPU seconds of Service A (its workers included), Service B,
Redis and the generator over the run. From those: each process's share of a core while the
load ran (``cpu_s / publish_s``) and its CPU per delivered message. The process whose share
is nearest one core is the limit; on this machine (2 cores shared by all four) the total
is bounded by 2.0 as well, and the report says so.

    python3 bench/bench_rates.py [--rates 2000,5000,7000,10000] [--seconds 10]
                                 [--workers-a 1,2] [--batch-rates 50000,0] [--batch-seconds 5] [--json]

Targets (issue #16): p99 <= 50 ms at >= 10,000 msg/s of single POSTs, 0 lost; through the batch
endpoint >= 50,000 msg/s, 0 lost, p99 <= 100 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Any

from servers import RedisServer, Server, cpu_s, environment, free_port, mqctl_argv, publish_report

TARGET_RATE = 10_000
TARGET_P99_MS = 50.0
TARGET_BATCH_RATE = 50_000
TARGET_BATCH_P99_MS = 100.0
LOADTEST_WORKERS = 50


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
            found += [int(c) for c in f.read().split()]
    return found


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its living children (serve-a's worker processes)."""
    total = 0.0
    for each in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):  # a worker that just ended
            total += cpu_s(each)
    return total


def step(redis: RedisServer, workers_a: int, loadtest_args: list[str], log: Any) -> dict[str, Any]:
    """One loadtest against fresh services; its report plus each process's CPU."""
    port_a, port_b = free_port(), free_port()
    a = Server(
        "serve-a",
        mqctl_argv("serve-a", "--port", str(port_a), "--workers", str(workers_a), "--log-level", "warning"),
        port_a,
        env={"MQCTL_BROKER_URL": redis.url},
    ).start()
    b = Server(
        "serve-b",
        mqctl_argv("serve-b", "--port", str(port_b), "--log-level", "warning"),
        port_b,
        env={"MQCTL_BROKER_URL": redis.url},
    ).start()
    try:
        time.sleep(1.0)  # serve-a's workers: all up, not only the first that answered /health
        argv = mqctl_argv(
            "loadtest",
            "--a-url",
            a.http,
            "--b-url",
            f"ws://127.0.0.1:{port_b}/ws",
            "--json",
            *loadtest_args,
        )
        log(f"   {' '.join(argv[2:])} (serve-a --workers {workers_a})")
        # CPU is sampled through the run, and counted only over the load itself: the report's
        # total_s (first publish to last receipt) before the generator's end. Before it, the
        # generator measures its ceiling against serve-a's /health flat out.
        samples: list[tuple[float, dict[str, float]]] = []
        generator = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        started = time.perf_counter()
        while generator.poll() is None:
            with contextlib.suppress(OSError):  # the generator ended between poll and read
                now = {"a": _tree_cpu_s(a.pid), "b": cpu_s(b.pid), "redis": cpu_s(redis.pid)}
                now["generator"] = _tree_cpu_s(generator.pid)
                samples.append((time.perf_counter(), now))
            time.sleep(0.1)
        ended = time.perf_counter()
        out = generator.stdout.read() if generator.stdout else b""
        wall_s = ended - started
        report = json.loads(out)
    finally:
        a.stop()
        b.stop()
    busy_s = max(report["total_s"], 1e-9)
    window = [s for s in samples if s[0] >= ended - busy_s] or samples[-1:]
    first, last = window[0], window[-1]
    span_s = max(last[0] - first[0], 1e-9)
    cpu = {name: last[1][name] - first[1][name] for name in last[1]}
    received = max(round(report["received"] * span_s / busy_s), 1)  # delivered within the sampled span
    return {
        "workers_a": workers_a,
        "loadtest": loadtest_args,
        "accepted_per_s": report["accepted_per_s"],
        "delivered_per_s": report["throughput"],
        "accepted": report["accepted"],
        "received": report["received"],
        "lost": report["lost"],
        "duplicates": report["duplicates"],
        "errors": report["errors"],
        "latency_ms": report["latency_ms"],
        "ceiling_rps": report["ceiling_rps"],
        "wall_s": round(wall_s, 1),
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "cores": {k: round(v / span_s, 2) for k, v in cpu.items()},
        "cpu_us_per_msg": {k: round(v / received * 1e6, 1) for k, v in cpu.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="2000,5000,7000,10000", help="asked rates of single POSTs")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load per rate")
    parser.add_argument("--workers-a", default="1,2", help="serve-a --workers values to compare")
    parser.add_argument("--batch-rates", default="50000,0", help="asked rates through the batch endpoint (0: flat out)")
    parser.add_argument("--batch-seconds", type=float, default=5.0, help="seconds of load per batch rate")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    args = parser.parse_args()
    began = time.perf_counter()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    rates = [int(r) for r in args.rates.split(",") if r]
    workers = [int(w) for w in args.workers_a.split(",") if w]
    steps: list[dict[str, Any]] = []
    with RedisServer() as redis:
        for w in workers:
            for rate in rates:
                log(f"== single POSTs at {rate:,}/s, serve-a --workers {w}")
                messages = int(rate * args.seconds)
                loadtest = ["--workers", str(LOADTEST_WORKERS), "--rate", str(rate), "--messages", str(messages)]
                steps.append({"kind": "single", "rate": rate, **step(redis, w, loadtest, log)})
            for rate in [int(r) for r in args.batch_rates.split(",") if r]:
                paced = f"at {rate:,}/s" if rate else "flat out"
                log(f"== batch endpoint, 100 a request, {paced}, serve-a --workers {w}")
                messages = int((rate or TARGET_BATCH_RATE) * args.batch_seconds)
                loadtest = ["--workers", str(LOADTEST_WORKERS), "--batch", "100", "--messages", str(messages)]
                loadtest += ["--rate", str(rate)] if rate else []
                steps.append({"kind": "batch", "rate": rate or None, **step(redis, w, loadtest, log)})
    rep = {"environment": environment(), "steps": steps, "targets": targets(steps)}
    return publish_report(rep, render, began, as_json=args.json)


def targets(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets against the best step that meets the rate (or the fastest if none)."""
    out = []
    single = [s for s in steps if s["kind"] == "single"]
    fast = [s for s in single if s["delivered_per_s"] >= TARGET_RATE * 0.98]
    best = min(fast, key=lambda s: s["latency_ms"].get("p99", 1e9)) if fast else max(single, key=_rate, default=None)
    if best is not None:
        met = bool(fast) and best["lost"] == 0 and best["latency_ms"].get("p99", 1e9) <= TARGET_P99_MS
        out.append(
            {
                "what": f"single POSTs: p99 <= {TARGET_P99_MS:g} ms at >= {TARGET_RATE:,}/s, 0 lost",
                "value": f"{_rate(best):,.0f}/s delivered (asked {best['rate']:,}/s, serve-a --workers "
                f"{best['workers_a']}), p99 {best['latency_ms'].get('p99', 0):.1f} ms, lost {best['lost']}",
                "met": met,
            }
        )
    batch = [s for s in steps if s["kind"] == "batch"]
    if batch:
        fast = [s for s in batch if _rate(s) >= TARGET_BATCH_RATE * 0.98]
        top = min(fast, key=lambda s: s["latency_ms"].get("p99", 1e9)) if fast else max(batch, key=_rate)
        met = bool(fast) and top["lost"] == 0 and top["latency_ms"].get("p99", 1e9) <= TARGET_BATCH_P99_MS
        out.append(
            {
                "what": f"batch endpoint: >= {TARGET_BATCH_RATE:,}/s, 0 lost, p99 <= {TARGET_BATCH_P99_MS:g} ms",
                "value": f"{_rate(top):,.0f}/s delivered (serve-a --workers {top['workers_a']}), "
                f"p99 {top['latency_ms'].get('p99', 0):.1f} ms, lost {top['lost']}",
                "met": met,
            }
        )
    return out


def _rate(step: dict[str, Any]) -> float:
    return float(step["delivered_per_s"])


def render(rep: dict[str, Any], emit: Any) -> None:
    emit(
        "| load | A workers | accepted/s | delivered/s | p50 ms | p99 ms | lost | dup | generator ceiling "
        "| cores A / B / Redis / gen | CPU µs/msg A / B / Redis / gen |"
    )
    emit("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for s in rep["steps"]:
        asked = f"asked {s['rate']:,}/s" if s["rate"] else "flat out"
        load = f"single, {asked}" if s["kind"] == "single" else f"batch of 100, {asked}"
        cores = " / ".join(f"{s['cores'][k]:.2f}" for k in ("a", "b", "redis", "generator"))
        per = " / ".join(f"{s['cpu_us_per_msg'][k]:.0f}" for k in ("a", "b", "redis", "generator"))
        ceiling = f"{s['ceiling_rps']:,.0f} req/s" if s["ceiling_rps"] else "-"
        emit(
            f"| {load} | {s['workers_a']} | {s['accepted_per_s']:,.0f} | {s['delivered_per_s']:,.0f} "
            f"| {s['latency_ms'].get('p50', 0):.1f} | {s['latency_ms'].get('p99', 0):.1f} | {s['lost']} "
            f"| {s['duplicates']} | {ceiling} | {cores} | {per} |"
        )
    emit("")
    for t in rep["targets"]:
        emit(f"- {t['what']}: {t['value']}: {'met' if t['met'] else 'NOT met'}")


if __name__ == "__main__":
    raise SystemExit(main())
