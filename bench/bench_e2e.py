"""End-to-end latency benchmark (issue #4): POST to WebSocket receipt at a steady rate, in one run.

Two load generators drive two targets in turn, each target a single process on free ports,
over a private redis-server that this script starts (and stops, by PID). The generators:

    loadtest   ``mqctl loadtest --rate 500 --duration 10 --workers 20 --json`` (httpx publishers,
               a ``websockets`` listener that acks every frame); it first measures its own
               ceiling, requests/s against the target's GET /health
    raw        the same load from this process with a lean client: each of the 20 workers owns
               one keep-alive HTTP/1.1 connection on asyncio streams (no HTTP library), paced
               to the same global schedule; the same listener behaviour (``websockets``, one
               ``{"ack": id}`` per frame). Its ceiling is measured the same way.

The raw generator is there because the loadtest's httpx publishers cannot reach 500 requests/s
on this machine (see BENCHMARKS.md); their latencies are then the generator's queueing. The
targets:

    ours   mqctl up --broker <private redis>     Service A and Service B in one process,
                                                 default 2 s poll cycle (the read wakes on arrival)
    bare   bench/bare_pipeline.py (uvicorn)      bare FastAPI: XADD per POST, and a WebSocket that
                                                 XREADs (BLOCK 2000) and sends the same frames

Latency is from just before a message's POST is written to its frame's receipt, per message,
p50/p99 by nearest rank. Every round runs both targets with each generator, the target going
first alternating by round; reported are the medians over the rounds, and ours against the
targets (p50 <= 5 ms, p99 <= 50 ms) and against bare.

    python3 bench/bench_e2e.py [--rounds 3] [--rate 500] [--duration 10] [--workers 20]
                               [--generator both|loadtest|raw] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import orjson
from servers import RedisServer, Server, cpu_s, environment, free_port, mqctl_argv, publish_report, uvicorn_argv
from websockets.asyncio.client import connect

TARGET_P50_MS = 5.0
TARGET_P99_MS = 50.0
KEEP = ("accepted", "received", "lost", "duplicates", "errors", "accepted_per_s", "throughput", "ceiling_rps")
DRAIN_S = 15.0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank, as ``mqctl.loadtest.percentile``."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# -- generator 1: mqctl loadtest -------------------------------------------------------


def loadtest(a_url: str, b_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """One ``mqctl loadtest`` run: its JSON report."""
    argv = mqctl_argv(
        "loadtest",
        "--rate",
        f"{args.rate:g}",
        "--duration",
        f"{args.duration:g}",
        "--workers",
        str(args.workers),
        "--a-url",
        a_url,
        "--b-url",
        b_url,
        "--json",
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=args.duration + 90)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"mqctl loadtest failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1])


# -- generator 2: raw HTTP/1.1 on asyncio streams ----------------------------------------


class _Http:
    """One keep-alive HTTP/1.1 connection: write a request, read the status and the body."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> _Http:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def request(self, method: str, path: str, body: bytes = b"") -> int:
        assert self.reader is not None and self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        lines = (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next((int(line[15:]) for line in lines if line[:15].lower() == b"content-length:"), 0)
        await self.reader.readexactly(length)
        return status

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


async def _raw_ceiling(host: str, port: int, workers: int, seconds: float = 1.5) -> float:
    connections = [await _Http(host, port).open() for _ in range(workers)]
    done = 0
    end = time.perf_counter() + seconds

    async def worker(http: _Http) -> None:
        nonlocal done
        while time.perf_counter() < end:
            await http.request("GET", "/health")
            done += 1

    begin = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    rate = done / (time.perf_counter() - begin)
    await asyncio.gather(*(c.aclose() for c in connections))
    return rate


async def raw_run(port_a: int, b_url: str, args: argparse.Namespace, server_pid: int) -> dict[str, Any]:
    """The loadtest's load and accounting, with a lean HTTP client; a report shaped like the loadtest's,
    plus the server's CPU per message over the publishing and draining (the ceiling left out)."""
    host = "127.0.0.1"
    run_id = uuid.uuid4().hex[:10]
    topic = f"rawload-{run_id}"
    pad = "x" * 60  # the loadtest's default --size 100
    ceiling = await _raw_ceiling(host, port_a, args.workers)
    sent_at: dict[int, float] = {}
    answered: list[float] = []
    """Milliseconds from writing each POST to reading its 202 (Service A's share of the latency)."""
    received: dict[int, float] = {}
    accepted: set[int] = set()
    errors = 0
    frames = 0
    subscribed = asyncio.Event()
    everything = asyncio.Event()
    publishing = [True]

    async def listen() -> None:
        nonlocal frames
        async with connect(f"{b_url}?topic={topic}&header=run:{run_id}", max_size=2**24) as ws:
            async for raw in ws:
                frame = orjson.loads(raw)
                if "id" not in frame:
                    if frame.get("event") == "subscribed":
                        subscribed.set()
                    continue
                now = time.perf_counter()
                await ws.send(orjson.dumps({"ack": frame["id"]}).decode())
                seq = frame["content"]["seq"]
                frames += 1
                received.setdefault(seq, now)
                if not publishing[0] and accepted <= received.keys():
                    everything.set()

    listener = asyncio.create_task(listen())
    connections = [await _Http(host, port_a).open() for _ in range(args.workers)]
    try:
        async with asyncio.timeout(15):
            await subscribed.wait()
        cpu_before = cpu_s(server_pid)
        start = time.perf_counter()
        deadline = start + args.duration
        next_seq = 0

        async def worker(http: _Http) -> None:
            nonlocal next_seq, errors
            while True:
                seq = next_seq
                due = start + seq / args.rate
                if due >= deadline:
                    return
                next_seq += 1
                now = time.perf_counter()
                if due > now:
                    await asyncio.sleep(due - now)
                body = orjson.dumps(
                    {
                        "topic": topic,
                        "type": "loadtest",
                        "content": {"seq": seq, "pad": pad},
                        "headers": {"run": run_id},
                    }
                )
                sent_at[seq] = sent = time.perf_counter()
                if await http.request("POST", "/messages", body) < 300:
                    answered.append((time.perf_counter() - sent) * 1000)
                    accepted.add(seq)
                else:
                    errors += 1

        await asyncio.gather(*(worker(c) for c in connections))
        publish_s = time.perf_counter() - start
        publishing[0] = False
        if accepted <= received.keys():
            everything.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_S):
                await everything.wait()
        cpu_used = cpu_s(server_pid) - cpu_before
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await asyncio.gather(*(c.aclose() for c in connections))
    latencies = sorted((received[s] - sent_at[s]) * 1000 for s in accepted if s in received)
    answered.sort()
    return {
        "accepted": len(accepted),
        "received": len(received),
        "lost": len(accepted - received.keys()),
        "duplicates": frames - len(received),
        "errors": {"http": errors} if errors else {},
        "accepted_per_s": round(len(accepted) / publish_s, 1),
        "throughput": None,
        "ceiling_rps": round(ceiling, 1),
        "server_cpu_us_per_msg": cpu_used / max(len(accepted), 1) * 1e6,
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 2),
            "p95": round(percentile(latencies, 95), 2),
            "p99": round(percentile(latencies, 99), 2),
            "max": round(latencies[-1], 2) if latencies else 0.0,
        },
        "post_ms": {"p50": round(percentile(answered, 50), 2), "p99": round(percentile(answered, 99), 2)},
    }


# -- the benchmark ---------------------------------------------------------------------


def run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    generators = ("loadtest", "raw") if args.generator == "both" else (args.generator,)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {g: {"ours": [], "bare": []} for g in generators}
    with RedisServer() as private:
        env = environment("websockets", "httpx", "orjson")
        a, b, bare_port = free_port(), free_port(), free_port()
        servers = {
            "ours": Server(
                "ours",
                mqctl_argv(
                    "up", "--broker", private.url, "--port-a", str(a), "--port-b", str(b), "--log-level", "warning"
                ),
                a,
            ),
            "bare": Server(
                "bare",
                uvicorn_argv("bare_pipeline:app", bare_port, "--ws-per-message-deflate", "false"),  # as Service B
                bare_port,
                env={"BENCH_REDIS_URL": private.url},
            ),
        }
        ports = {"ours": (a, b), "bare": (bare_port, bare_port)}
        try:
            for server in servers.values():
                server.start()
            log(f"servers up: ours pid {servers['ours'].pid} (A {a}, B {b}), bare pid {servers['bare'].pid}")
            for i in range(args.rounds):
                for generator in generators:
                    for side in ("ours", "bare") if i % 2 == 0 else ("bare", "ours"):
                        port_a, port_b = ports[side]
                        a_url, b_url = f"http://127.0.0.1:{port_a}", f"ws://127.0.0.1:{port_b}/ws"
                        pid = servers[side].pid
                        if generator == "loadtest":
                            before = cpu_s(pid)
                            rep = loadtest(a_url, b_url, args)
                            # the loadtest's ceiling phase (GET /health) is counted in
                            rep["server_cpu_us_per_msg"] = (cpu_s(pid) - before) / max(rep["accepted"], 1) * 1e6
                        else:
                            rep = asyncio.run(raw_run(port_a, b_url, args, pid))
                        results[generator][side].append(rep)
                        lat = rep["latency_ms"]
                        log(
                            f"round {i + 1}/{args.rounds} {generator:<8} {side:<4} accepted {rep['accepted']:>6} "
                            f"({rep['accepted_per_s']:,.0f}/s) lost {rep['lost']} dup {rep['duplicates']}  "
                            f"p50 {lat['p50']:7.2f} ms  p95 {lat['p95']:7.2f}  p99 {lat['p99']:7.2f}  "
                            f"max {lat['max']:8.2f}  ceiling {rep['ceiling_rps']:,.0f} req/s  "
                            f"server CPU {rep['server_cpu_us_per_msg']:.0f} us/msg"
                            + (f"  POST->202 p50 {rep['post_ms']['p50']:.2f} ms" if "post_ms" in rep else "")
                        )
        finally:
            for server in servers.values():
                server.stop()
    out: dict[str, Any] = {
        "environment": env,
        "rounds": args.rounds,
        "rate": args.rate,
        "duration_s": args.duration,
        "workers": args.workers,
        "generators": {},
    }
    for generator, sides in results.items():
        summary: dict[str, Any] = {}
        for side, reps in sides.items():
            summary[side] = {
                "runs": [
                    {k: r[k] for k in KEEP} | {"latency_ms": r["latency_ms"], "post_ms": r.get("post_ms")} for r in reps
                ],
                "median_p50_ms": round(statistics.median(r["latency_ms"]["p50"] for r in reps), 2),
                "median_p95_ms": round(statistics.median(r["latency_ms"]["p95"] for r in reps), 2),
                "median_p99_ms": round(statistics.median(r["latency_ms"]["p99"] for r in reps), 2),
                "median_max_ms": round(statistics.median(r["latency_ms"]["max"] for r in reps), 2),
                "median_ceiling_rps": round(statistics.median(r["ceiling_rps"] or 0 for r in reps), 1),
                "median_accepted_per_s": round(statistics.median(r["accepted_per_s"] for r in reps), 1),
                "median_server_cpu_us_per_msg": round(statistics.median(r["server_cpu_us_per_msg"] for r in reps), 1),
                "median_post_p50_ms": (
                    round(statistics.median(r["post_ms"]["p50"] for r in reps), 2) if "post_ms" in reps[0] else None
                ),
                "lost": sum(r["lost"] for r in reps),
                "duplicates": sum(r["duplicates"] for r in reps),
            }
        ours, bare = summary["ours"], summary["bare"]
        summary["targets"] = [
            {"what": "p50 ms", "ours": ours["median_p50_ms"], "target": TARGET_P50_MS},
            {"what": "p99 ms", "ours": ours["median_p99_ms"], "target": TARGET_P99_MS},
        ]
        for t in summary["targets"]:
            t["met"] = t["ours"] <= t["target"]
        summary["ratio_p50_ours_over_bare"] = round(ours["median_p50_ms"] / max(bare["median_p50_ms"], 1e-9), 2)
        summary["ratio_p99_ours_over_bare"] = round(ours["median_p99_ms"] / max(bare["median_p99_ms"], 1e-9), 2)
        out["generators"][generator] = summary
    return out


def render(rep: dict[str, Any], out: Any) -> None:
    env = rep["environment"]
    out(
        f"Python {env['python']} | FastAPI {env['fastapi']} | uvicorn {env['uvicorn']} | websockets "
        f"{env['websockets']} | httpx {env['httpx']} | Redis {env['redis_server']} | nproc {env['nproc']} | "
        f"mqctl {env['mqctl']}"
    )
    out(
        f"rate {rep['rate']:g}/s for {rep['duration_s']:g} s, {rep['workers']} workers; {rep['rounds']} rounds; "
        "medians over the rounds"
    )
    for generator, summary in rep["generators"].items():
        for side in ("ours", "bare"):
            s = summary[side]
            out(
                f"{generator:<8} {side:<4} p50 {s['median_p50_ms']:7.2f} ms  p95 {s['median_p95_ms']:7.2f}  "
                f"p99 {s['median_p99_ms']:7.2f}  max {s['median_max_ms']:8.2f}  accepted "
                f"{s['median_accepted_per_s']:,.0f}/s  ceiling {s['median_ceiling_rps']:,.0f} req/s  "
                f"server CPU {s['median_server_cpu_us_per_msg']:.0f} us/msg  lost {s['lost']} dup {s['duplicates']}"
                + (f"  POST->202 p50 {s['median_post_p50_ms']:.2f} ms" if s["median_post_p50_ms"] is not None else "")
            )
        for t in summary["targets"]:
            out(
                f"{generator:<8} ours {t['what']}: {t['ours']:.2f} (target <= {t['target']:g}) "
                f"{'MET' if t['met'] else 'MISSED'}"
            )
        out(
            f"{generator:<8} ours/bare: p50 {summary['ratio_p50_ours_over_bare']:.2f}x, "
            f"p99 {summary['ratio_p99_ours_over_bare']:.2f}x"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--rate", type=float, default=500.0, help="messages per second (default 500)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of publishing per run (default 10)")
    parser.add_argument("--workers", type=int, default=20, help="publishing workers (default 20)")
    parser.add_argument(
        "--generator", choices=("both", "loadtest", "raw"), default="both", help="load generator(s) (default both)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout (the log on stderr)")
    args = parser.parse_args(argv)
    if min(args.rounds, args.workers) < 1 or args.rate <= 0 or args.duration <= 0:
        parser.error("--rounds, --rate, --duration and --workers must be positive")
    started = time.perf_counter()
    rep = run(args, lambda line: print(line, file=sys.stderr, flush=True))
    return publish_report(rep, render, started, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
