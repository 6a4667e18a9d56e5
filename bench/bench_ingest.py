"""Ingest benchmark (issue #4): Service A's POST /messages against bare FastAPI endpoints, in one run.

Three servers, each a single uvicorn process (access log off) on a free port, and a private
redis-server started (and stopped, by PID) by this script:

    noop   bench/bare_ingest.py:noop_app   parses the JSON body, answers 202
    xadd   bench/bare_ingest.py:xadd_app   the same plus one redis-py XADD per request
    ours   mqctl serve-a                   POST /messages (concurrent publishes coalesced)

The same load generator drives each in turn with the same ~100-byte JSON body: wrk (2
threads, 50 connections, a Lua script for the POST), or with ``--generator httpx`` 50
keep-alive httpx workers in this process, like ``mqctl loadtest``'s (whose ceiling against
the no-op app's GET /health is then measured and reported, so you can tell when the
generator and not the server is the limit). A fourth side, ``batch``, posts 100 messages per
request to ours' POST /messages/batch and is counted in messages/s.

The generator runs on the same 2 cores as the servers and competes with them; it does so
equally for every side. Every round runs every side once, the order rotating by round; the
figures that count are the ratios of the median rates over the rounds. Between runs the
private Redis is emptied (FLUSHDB: it is ours alone; the shared Redis is never touched).
Ours runs with ``--max-backlog 100000000``: the backlog check still runs on every publish,
but the batch side would otherwise fill the default cap of 100,000 within a run.

    python3 bench/bench_ingest.py [--rounds 5] [--duration 8] [--generator wrk|httpx] [--ours-uvloop] [--json]

``--ours-uvloop`` starts serve-a with uvloop's event loop policy installed: the bare apps run
on uvloop (uvicorn's CLI picks it), while ``mqctl serve-a`` runs uvicorn inside its own
``asyncio.run``, on the standard loop; the flag measures what switching would change.

Needs wrk (``apt-get install -y wrk``) for the default generator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
from bare_ingest import STREAM
from servers import RedisServer, Server, cpu_s, environment, free_port, mqctl_argv, publish_report, uvicorn_argv

from mqctl.backends.keyspace import Keyspace

CONNECTIONS = 50
THREADS = 2
BATCH = 100
PAYLOAD_BYTES = 100
MAX_BACKLOG = 100_000_000
KEYSPACE = Keyspace("mqctl")
"""serve-a's keys (the default prefix)."""


def _message(i: int = 0) -> dict[str, Any]:
    return {"type": "bench", "content": {"i": i, "pad": ""}, "headers": {}}


def single_body(topic: str) -> bytes:
    """The JSON body of POST /messages, padded to PAYLOAD_BYTES."""
    body = {"topic": topic, **_message()}
    pad = PAYLOAD_BYTES - len(json.dumps(body, separators=(",", ":")))
    body["content"]["pad"] = "x" * max(pad, 0)
    return json.dumps(body, separators=(",", ":")).encode()


def batch_body(topic: str) -> bytes:
    """The JSON body of POST /messages/batch: BATCH messages like the single one (without topic)."""
    one = json.loads(single_body(topic))
    del one["topic"]
    return json.dumps({"topic": topic, "messages": [one] * BATCH}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Side:
    name: str
    server: str
    path: str
    per_request: int
    """Messages per request."""


SIDES = (
    Side("noop", "noop", "/messages", 1),
    Side("xadd", "xadd", "/messages", 1),
    Side("ours", "ours", "/messages", 1),
    Side("batch", "ours", "/messages/batch", BATCH),
)

TARGETS = (
    # (numerator, denominator, least ratio of the median rates in messages/s, what)
    ("ours", "xadd", 1.3, "POST /messages vs bare FastAPI + one XADD per request"),
    ("ours", "noop", 0.7, "POST /messages vs bare FastAPI no-op"),
    ("batch", "ours", 10.0, "POST /messages/batch (100/request) vs POST /messages, in messages/s"),
)


@dataclass
class Run:
    requests: int
    seconds: float
    errors: int
    p50_ms: float | None = None
    p99_ms: float | None = None
    output: str = ""
    """The generator's own report (wrk's), for the error message when requests failed."""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


@dataclass
class SideResult:
    side: Side
    rates: list[float] = field(default_factory=list)
    """Messages per second, one per round."""
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    server_cpu_us: list[float] = field(default_factory=list)
    """Server process CPU microseconds per message, one per round."""
    redis_cpu_us: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


# -- load generators -------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, body: bytes, duration_s: float) -> Run:
    """One wrk run posting ``body`` to ``url``."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        script.write(f"wrk.body = [==[{body.decode()}]==]\n")
    argv = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{duration_s:g}s", "--timeout", "10s", "--latency"]
    argv += ["-s", script.name, url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", out)
    if done is None:
        raise RuntimeError(f"Cannot read wrk's output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    return Run(
        requests=int(done.group(1)),
        seconds=_ms(done.group(2) + done.group(3)) / 1000,
        errors=errors,
        p50_ms=_ms(p50.group(1)) if p50 else None,
        p99_ms=_ms(p99.group(1)) if p99 else None,
        output=out,
    )


async def _httpx(base: str, path: str, body: bytes | None, duration_s: float) -> Run:
    """CONNECTIONS keep-alive httpx workers, as ``mqctl loadtest`` runs them (GET when no body)."""
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    headers = {"content-type": "application/json"}
    done = errors = 0
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30, headers=headers) as client:
        end = time.perf_counter() + duration_s

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < end:
                sent = time.perf_counter()
                if body is None:
                    response = await client.get(path)
                else:
                    response = await client.post(path, content=body)
                latencies.append(time.perf_counter() - sent)
                if response.status_code >= 300:
                    errors += 1
                done += 1

        begin = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
        seconds = time.perf_counter() - begin
    latencies.sort()
    return Run(
        requests=done,
        seconds=seconds,
        errors=errors,
        p50_ms=latencies[len(latencies) // 2] * 1000 if latencies else None,
        p99_ms=latencies[int(len(latencies) * 0.99)] * 1000 if latencies else None,
    )


def httpx_run(url: str, body: bytes | None, duration_s: float) -> Run:
    base, _, path = url.partition("://")[2].partition("/")
    return asyncio.run(_httpx("http://" + base, "/" + path, body, duration_s))


# -- the benchmark ---------------------------------------------------------------------


def _settled_length(r: redis.Redis, key: str, timeout_s: float = 30) -> int:
    """The length of stream ``key`` once it stops growing: requests that wrk cut off at the end
    of a run are still being served, and must not spill into the next run."""
    deadline = time.monotonic() + timeout_s
    length = r.xlen(key)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = r.xlen(key)
        if now == length:
            return now
        length = now
    raise RuntimeError(f"Stream {key!r} still grows {timeout_s:g} s after the run")


def measure(
    side: Side, server: Server, r: redis.Redis, redis_pid: int, generator: str, duration_s: float, topic: str
) -> tuple[Run, float, float]:
    """One run of one side: the run, then server and Redis CPU microseconds per message."""
    body = batch_body(topic) if side.per_request > 1 else single_body(topic)
    url = server.http + side.path
    r.flushdb()
    server_cpu, redis_cpu = cpu_s(server.pid), cpu_s(redis_pid)
    run = wrk(url, body, duration_s) if generator == "wrk" else httpx_run(url, body, duration_s)
    server_cpu, redis_cpu = cpu_s(server.pid) - server_cpu, cpu_s(redis_pid) - redis_cpu
    messages = run.requests * side.per_request
    if run.errors:
        raise RuntimeError(
            f"{side.name}: {run.errors} failed requests of {run.requests}:\n{run.output}\nserver log:\n{server.log()}"
        )
    if side.name == "noop":
        time.sleep(0.5)  # let the requests cut off at the end finish
    else:
        stored = _settled_length(r, STREAM if side.server == "xadd" else KEYSPACE.stream(topic))
        # wrk counts the replies it read; the requests it cut off at the end are stored all the same.
        if not messages <= stored <= messages + CONNECTIONS * side.per_request:
            raise RuntimeError(f"{side.name}: {stored} messages stored for {messages} acknowledged")
    r.flushdb()
    return run, server_cpu / messages * 1e6, redis_cpu / messages * 1e6


def ours_argv(port: int, redis_url: str, uvloop: bool) -> list[str]:
    args = ["serve-a", "--port", str(port), "--broker", redis_url, "--max-backlog", str(MAX_BACKLOG)]
    return mqctl_argv(*args, "--log-level", "warning", uvloop=uvloop)


def run(rounds: int, duration_s: float, generator: str, uvloop: bool, log: Any) -> dict[str, Any]:
    if generator == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH: install it with `apt-get install -y wrk`, or use --generator httpx.")
    results = {side.name: SideResult(side) for side in SIDES}
    ceilings: list[float] = []
    with RedisServer() as private:
        env = environment("websockets", "httpx", "orjson")
        env["generator"] = (
            subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split(" [")[0]
            if generator == "wrk"
            else f"httpx {env['httpx']}, {CONNECTIONS} workers in the benchmark process"
        )
        r = redis.Redis.from_url(private.url)
        ports = {name: free_port() for name in ("noop", "xadd", "ours")}
        servers = {
            "noop": Server("noop", uvicorn_argv("bare_ingest:noop_app", ports["noop"]), ports["noop"]),
            "xadd": Server(
                "xadd",
                uvicorn_argv("bare_ingest:xadd_app", ports["xadd"]),
                ports["xadd"],
                env={"BENCH_REDIS_URL": private.url},
            ),
            "ours": Server("ours", ours_argv(ports["ours"], private.url, uvloop), ports["ours"]),
        }
        try:
            for server in servers.values():
                server.start()
            log(f"servers up: {', '.join(f'{n} pid {s.pid} port {s.port}' for n, s in servers.items())}")
            for side in SIDES:  # warm-up, not reported
                measure(side, servers[side.server], r, private.pid, generator, 2, "bench-warmup")
            for i in range(rounds):
                order = SIDES[i % len(SIDES) :] + SIDES[: i % len(SIDES)]
                if generator == "httpx":
                    ceilings.append(httpx_run(servers["noop"].http + "/health", None, 3).rps)
                for side in order:
                    topic = f"bench-{i}-{side.name}"
                    one, server_us, redis_us = measure(
                        side, servers[side.server], r, private.pid, generator, duration_s, topic
                    )
                    result = results[side.name]
                    result.rates.append(one.rps * side.per_request)
                    result.p50_ms.append(one.p50_ms or 0.0)
                    result.p99_ms.append(one.p99_ms or 0.0)
                    result.server_cpu_us.append(server_us)
                    result.redis_cpu_us.append(redis_us)
                    log(
                        f"round {i + 1}/{rounds} {side.name:<6} {one.rps:>8,.0f} req/s "
                        f"{one.rps * side.per_request:>9,.0f} msg/s  p50 {one.p50_ms or 0:6.1f} ms "
                        f"p99 {one.p99_ms or 0:6.1f} ms  CPU/msg server {server_us:6.1f} us, redis {redis_us:5.1f} us"
                    )
                if ceilings:
                    log(f"round {i + 1}/{rounds} httpx generator ceiling (GET /health, noop) {ceilings[-1]:,.0f} req/s")
        finally:
            for server in servers.values():
                server.stop()
            r.close()
    env["ours_event_loop"] = "uvloop (policy installed by the benchmark)" if uvloop else "as mqctl serve-a starts it"
    return report(results, rounds, duration_s, generator, env, ceilings)


def report(
    results: dict[str, SideResult],
    rounds: int,
    duration_s: float,
    generator: str,
    env: dict[str, str],
    ceilings: list[float],
) -> dict[str, Any]:
    sides = {
        name: {
            "path": r.side.path,
            "messages_per_request": r.side.per_request,
            "messages_per_s": [round(x, 1) for x in r.rates],
            "median_messages_per_s": round(r.median, 1),
            "median_p50_ms": round(statistics.median(r.p50_ms), 2),
            "median_p99_ms": round(statistics.median(r.p99_ms), 2),
            "median_server_cpu_us_per_msg": round(statistics.median(r.server_cpu_us), 1),
            "median_redis_cpu_us_per_msg": round(statistics.median(r.redis_cpu_us), 2),
        }
        for name, r in results.items()
    }
    targets = []
    for num, den, least, what in TARGETS:
        ratio = results[num].median / results[den].median
        per_round = [a / b for a, b in zip(results[num].rates, results[den].rates, strict=True)]
        targets.append(
            {
                "what": what,
                "ratio": f"{num}/{den}",
                "value": round(ratio, 3),
                "per_round": [round(x, 2) for x in per_round],
                "target": least,
                "met": ratio >= least,
            }
        )
    out: dict[str, Any] = {
        "environment": env,
        "generator": generator,
        "connections": CONNECTIONS,
        "threads": THREADS if generator == "wrk" else None,
        "duration_s": duration_s,
        "rounds": rounds,
        "body_bytes": len(single_body("bench-0-ours")),
        "batch_body_bytes": len(batch_body("bench-0-batch")),
        "sides": sides,
        "targets": targets,
    }
    if ceilings:
        out["httpx_ceiling_rps"] = [round(c, 1) for c in ceilings]
        out["median_httpx_ceiling_rps"] = round(statistics.median(ceilings), 1)
    return out


def render(rep: dict[str, Any], out: Any) -> None:
    env = rep["environment"]
    out(
        f"Python {env['python']} | FastAPI {env['fastapi']} | uvicorn {env['uvicorn']} | redis-py {env['redis']} | "
        f"Redis {env['redis_server']} | nproc {env['nproc']} | mqctl {env['mqctl']}"
    )
    out(f"ours' event loop: {env['ours_event_loop']}")
    out(
        f"generator: {env['generator']}, {rep['connections']} connections, {rep['duration_s']:g} s per run, "
        f"{rep['rounds']} rounds; body {rep['body_bytes']} B (batch {rep['batch_body_bytes']} B)"
    )
    out(f"{'side':<6} {'msg/s (median)':>15} {'p50 ms':>7} {'p99 ms':>7} {'server us/msg':>14} {'redis us/msg':>13}")
    for name, s in rep["sides"].items():
        out(
            f"{name:<6} {s['median_messages_per_s']:>15,.0f} {s['median_p50_ms']:>7.1f} {s['median_p99_ms']:>7.1f} "
            f"{s['median_server_cpu_us_per_msg']:>14.1f} {s['median_redis_cpu_us_per_msg']:>13.2f}"
        )
    for t in rep["targets"]:
        out(
            f"{t['ratio']:<11} {t['value']:.2f}x  target >= {t['target']:g}x  {'MET' if t['met'] else 'MISSED'}  "
            f"rounds {', '.join(f'{x:.2f}' for x in t['per_round'])}  ({t['what']})"
        )
    if "median_httpx_ceiling_rps" in rep:
        out(f"httpx generator ceiling (GET /health on the no-op app): {rep['median_httpx_ceiling_rps']:,.0f} req/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every side (default 5)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run (default 8)")
    parser.add_argument("--generator", choices=("wrk", "httpx"), default="wrk", help="load generator (default wrk)")
    parser.add_argument(
        "--ours-uvloop",
        action="store_true",
        help="start serve-a with uvloop's event loop policy installed (measures the suggested fix; the bare "
        "apps run on uvloop already, as uvicorn's CLI picks it)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout (the log on stderr)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0:
        parser.error("--rounds and --duration must be positive")
    started = time.perf_counter()
    rep = run(
        args.rounds,
        args.duration,
        args.generator,
        args.ours_uvloop,
        lambda line: print(line, file=sys.stderr, flush=True),
    )
    return publish_report(rep, render, started, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
