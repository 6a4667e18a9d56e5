"""Delivery benchmark (issue #4): Service B against a bare Starlette WebSocket endpoint, in one run.

Two servers, each a single process on a free port, and a private redis-server started (and
stopped, by PID) by this script:

    bare   bench/bare_delivery.py (uvicorn)   pushes N identical frames, encoded once, from memory
    ours   mqctl serve-b                      delivers N messages from a topic

Both write the same frame: Service B's message frame for the same 100-byte message
(``{"id","type","content","headers","attempt","topic"}``, about 150 bytes). The clients are
``websockets`` connections in this process, with its defaults; both servers refuse
permessage-deflate (Service B always does; bare is started with uvicorn's
``--ws-per-message-deflate false``), so neither side compresses. They count frames and parse
none but the last.

    batched     one client as users write them (issue #16): ``json.loads`` on every frame, acks
                of 100 ids a frame. Bare pushes a frame per message (it ignores the acks); ours
                sends batched frames (``frames=batch``, group mode, no auto_ack) over a
                pre-filled topic. The rate is messages/s; the target compares it with the
                frames/s the same client takes from bare.
    single      one client. Ours: group mode (the default group), ``auto_ack=true``, over a
                topic that holds the N messages before the client connects (pre-filled with
                ``publish_many``, not timed). Timed from the connect to the N-th message frame.
    broadcast   100 clients. Both sides first wait until every client has its ``subscribed``
                frame; then bare is told to start (POST /go) and ours gets N messages published
                (``publish_many`` of 100 at a time). Timed from then to the last client's N-th
                frame; the rate is the aggregate, 100 x N frames over that time.

Every round runs both sides of both scenarios, the side going first alternating by round;
the figures that count are the ratios of the median rates. Reported with them: the server's
CPU per frame (from /proc) and this process's (the clients'), since client and server share
the machine's 2 cores.

    python3 bench/bench_delivery.py [--rounds 5] [--messages 20000] [--clients 100]
                                    [--broadcast-messages 1000] [--ours-uvloop] [--json]
                                    [--scenario single|broadcast|batched ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import httpx
from servers import RedisServer, Server, cpu_s, environment, free_port, mqctl_argv, publish_report, uvicorn_argv
from websockets.asyncio.client import ClientConnection, connect

import mqctl

PAYLOAD_BYTES = 100
_BASE = {"type": "bench", "content": {"i": 0, "pad": ""}, "headers": {}}
MESSAGE: dict[str, Any] = {
    "type": "bench",
    "content": {"i": 0, "pad": "x" * (PAYLOAD_BYTES - len(json.dumps(_BASE, separators=(",", ":"))))},
    "headers": {},
}
PUBLISH_BATCH = 100
PREFILL_BATCH = 1000
MAX_SIZE = 2**20

TARGETS = {"single": 0.7, "broadcast": 0.5, "batched": 1.0}
ACK_BURST = 100


@dataclass
class Timed:
    seconds: float
    frames: int
    server_cpu_s: float
    client_cpu_s: float
    last_frame: str


@dataclass
class Scenario:
    name: str
    bare: list[Timed] = field(default_factory=list)
    ours: list[Timed] = field(default_factory=list)

    @staticmethod
    def rates(runs: list[Timed]) -> list[float]:
        return [r.frames / r.seconds for r in runs]

    def median(self, side: str) -> float:
        return statistics.median(self.rates(getattr(self, side)))

    @property
    def ratio(self) -> float:
        return self.median("ours") / self.median("bare")


async def _open(url: str) -> ClientConnection:
    ws = await connect(url, max_size=MAX_SIZE, open_timeout=30)
    first = json.loads(await ws.recv())
    if first.get("event") != "subscribed":
        await ws.close()
        raise RuntimeError(f"Expected a 'subscribed' frame from {url}, got {first!r}")
    return ws


async def _count(ws: ClientConnection, n: int) -> tuple[float, str]:
    """Receive until ``n`` message frames (ids first) have come; the time of the last, and its text."""
    seen = 0
    text = ""
    while seen < n:
        raw = await ws.recv()
        assert isinstance(raw, str)
        if raw.startswith('{"id"'):
            seen += 1
            text = raw
        elif '"error"' in raw:
            raise RuntimeError(f"The server sent an error frame: {raw}")
    return time.perf_counter(), text


async def _consume(ws: ClientConnection, n: int) -> tuple[float, str]:
    """A client as users write one: ``json.loads`` per frame, acks in bursts of ``ACK_BURST`` ids
    (bare takes them and ignores them). A batched frame (a JSON array) counts for its messages."""
    seen = 0
    ids: list[str] = []
    text = ""
    while seen < n:
        raw = await ws.recv()
        frame = json.loads(raw)
        messages = frame if isinstance(frame, list) else [frame] if "id" in frame else []
        if not messages:
            if "error" in frame:
                raise RuntimeError(f"The server sent an error frame: {raw!r}")
            continue
        seen += len(messages)
        text = str(raw)
        ids += [m["id"] for m in messages]
        if len(ids) >= ACK_BURST or seen >= n:
            await ws.send(json.dumps({"ack": ids}))
            ids = []
    return time.perf_counter(), text


class Bench:
    def __init__(self, bare: Server, ours: Server, broker: mqctl.Broker, clients: int) -> None:
        self.bare = bare
        self.ours = ours
        self.broker = broker
        self.clients = clients
        self._serial = 0

    def topic(self, scenario: str) -> str:
        # Same length on both sides, so that frames are the same size.
        self._serial += 1
        return f"bench-{scenario[:5]}-{self._serial:05d}"

    def bare_url(self, topic: str, n: int, wait: bool) -> str:
        query = urllib.parse.urlencode(
            {"n": n, "topic": topic, "message": json.dumps(MESSAGE, separators=(",", ":")), "wait": int(wait)}
        )
        return f"ws://127.0.0.1:{self.bare.port}/ws?{query}"

    def ours_url(self, topic: str, query: str) -> str:
        return f"ws://127.0.0.1:{self.ours.port}/ws?topic={topic}&{query}"

    async def _timed(self, server: Server, work: Any) -> Timed:
        server_cpu, client_cpu = cpu_s(server.pid), time.process_time()
        start = time.perf_counter()
        end, frames, last = await work(start)
        return Timed(end - start, frames, cpu_s(server.pid) - server_cpu, time.process_time() - client_cpu, last)

    # -- one client ----------------------------------------------------------------------

    async def bare_single(self, n: int) -> Timed:
        url = self.bare_url(self.topic("single"), n, wait=False)

        async def work(start: float) -> tuple[float, int, str]:
            async with await _open(url) as ws:
                end, last = await _count(ws, n)
            return end, n, last

        return await self._timed(self.bare, work)

    async def ours_single(self, n: int) -> Timed:
        topic = self.topic("single")
        for i in range(0, n, PREFILL_BATCH):
            await self.broker.publish_many(topic, [MESSAGE] * min(PREFILL_BATCH, n - i))
        url = self.ours_url(topic, "auto_ack=true")

        async def work(start: float) -> tuple[float, int, str]:
            async with await _open(url) as ws:
                end, last = await _count(ws, n)
            return end, n, last

        timed = await self._timed(self.ours, work)
        await self._settled(topic, n)
        return timed

    # -- one client as users write them: parses every frame, acks in bursts -------------------

    async def bare_batched(self, n: int) -> Timed:
        """Bare pushes a frame per message; the client parses each and acks in bursts."""
        url = self.bare_url(self.topic("batched"), n, wait=False)

        async def work(start: float) -> tuple[float, int, str]:
            async with await _open(url) as ws:
                end, last = await _consume(ws, n)
            return end, n, last

        return await self._timed(self.bare, work)

    async def ours_batched(self, n: int) -> Timed:
        """Ours sends batched frames (frames=batch) in group mode; the same client acks in bursts."""
        topic = self.topic("batched")
        for i in range(0, n, PREFILL_BATCH):
            await self.broker.publish_many(topic, [MESSAGE] * min(PREFILL_BATCH, n - i))
        url = self.ours_url(topic, "frames=batch")

        async def work(start: float) -> tuple[float, int, str]:
            async with await _open(url) as ws:
                end, last = await _consume(ws, n)
            return end, n, last

        timed = await self._timed(self.ours, work)
        await self._settled(topic, n)
        return timed

    async def _settled(self, topic: str, n: int) -> None:
        """Not timed: the default group has every message acknowledged (acks land after the reads)."""
        deadline = time.monotonic() + 10
        while True:
            group = (await self.broker.stats(topic)).group("default")
            if group is not None and not group.pending and not group.lag:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Topic {topic!r} was not settled after delivering {n} messages: {group!r}")
            await asyncio.sleep(0.05)

    # -- broadcast ----------------------------------------------------------------------

    async def _broadcast(self, server: Server, urls: list[str], n: int, trigger: Any) -> Timed:
        sockets = await asyncio.gather(*(_open(url) for url in urls))
        try:

            async def work(start: float) -> tuple[float, int, str]:
                counting = [asyncio.create_task(_count(ws, n)) for ws in sockets]
                await trigger()
                done = await asyncio.gather(*counting)
                return max(end for end, _ in done), n * len(sockets), done[-1][1]

            return await self._timed(server, work)
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

    async def bare_broadcast(self, n: int) -> Timed:
        url = self.bare_url(self.topic("broadcast"), n, wait=True)

        async def go() -> None:
            async with httpx.AsyncClient() as client:
                (await client.post(f"{self.bare.http}/go")).raise_for_status()

        return await self._broadcast(self.bare, [url] * self.clients, n, go)

    async def ours_broadcast(self, n: int) -> Timed:
        topic = self.topic("broadcast")
        url = self.ours_url(topic, "mode=broadcast")

        async def publish() -> None:
            for i in range(0, n, PUBLISH_BATCH):
                await self.broker.publish_many(topic, [MESSAGE] * min(PUBLISH_BATCH, n - i))

        return await self._broadcast(self.ours, [url] * self.clients, n, publish)


async def run(
    rounds: int, n_single: int, n_broadcast: int, clients: int, uvloop: bool, log: Any, names: list[str]
) -> tuple[dict[str, Scenario], dict[str, str]]:
    scenarios = {name: Scenario(name) for name in names}
    with RedisServer() as private:
        env = environment("websockets", "orjson")
        env["ours_event_loop"] = (
            "uvloop (policy installed by the benchmark)" if uvloop else "as mqctl serve-b starts it"
        )
        bare_port, ours_port = free_port(), free_port()
        no_deflate = ("--ws-per-message-deflate", "false")  # as Service B
        bare = Server("bare", uvicorn_argv("bare_delivery:app", bare_port, *no_deflate), bare_port)
        ours = Server(
            "ours",
            mqctl_argv(
                "serve-b", "--port", str(ours_port), "--broker", private.url, "--log-level", "warning", uvloop=uvloop
            ),
            ours_port,
        )
        try:
            bare.start()
            ours.start()
            log(f"servers up: bare pid {bare.pid} port {bare.port}, ours pid {ours.pid} port {ours.port}")
            async with mqctl.connect(private.url, max_backlog=None, default_group="default") as broker:
                bench = Bench(bare, ours, broker, clients)
                # Warm-up (not reported).
                sizes = {"single": n_single, "broadcast": n_broadcast, "batched": n_single}
                for side in ("bare", "ours"):
                    for name in names:
                        await getattr(bench, f"{side}_{name}")(min(sizes[name], 100 if name == "broadcast" else 2000))
                for i in range(rounds):
                    order = ("ours", "bare") if i % 2 else ("bare", "ours")
                    for name in names:
                        n = sizes[name]
                        got: dict[str, Timed] = {}
                        for side in order:
                            got[side] = timed = await getattr(bench, f"{side}_{name}")(n)
                            getattr(scenarios[name], side).append(timed)
                        b, o = got["bare"], got["ours"]
                        log(
                            f"round {i + 1}/{rounds} {name:<9} bare {b.frames / b.seconds:>8,.0f}/s  "
                            f"ours {o.frames / o.seconds:>8,.0f}/s  ratio {b.seconds / o.seconds:.2f}  "
                            f"server CPU/frame bare {b.server_cpu_s / b.frames * 1e6:5.1f} us, "
                            f"ours {o.server_cpu_s / o.frames * 1e6:5.1f} us; client CPU/frame "
                            f"{b.client_cpu_s / b.frames * 1e6:5.1f} / {o.client_cpu_s / o.frames * 1e6:5.1f} us"
                        )
        finally:
            bare.stop()
            ours.stop()
    return scenarios, env


def report(scenarios: dict[str, Scenario], env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"environment": env, "rounds": args.rounds, "scenarios": []}
    for s in scenarios.values():
        entry: dict[str, Any] = {"name": s.name, "frames_per_run": s.bare[0].frames}
        for side in ("bare", "ours"):
            runs: list[Timed] = getattr(s, side)
            entry[side] = {
                "frames_per_s": [round(x, 1) for x in s.rates(runs)],
                "median_frames_per_s": round(s.median(side), 1),
                "median_server_cpu_us_per_frame": round(
                    statistics.median(r.server_cpu_s / r.frames for r in runs) * 1e6, 2
                ),
                "median_client_cpu_us_per_frame": round(
                    statistics.median(r.client_cpu_s / r.frames for r in runs) * 1e6, 2
                ),
                "frame_bytes": len(runs[-1].last_frame.encode()),
            }
        entry["ratio"] = round(s.ratio, 3)
        entry["per_round"] = [round(b.seconds / o.seconds, 3) for b, o in zip(s.bare, s.ours, strict=True)]
        entry["target"] = TARGETS[s.name]
        entry["met"] = s.ratio >= TARGETS[s.name]
        out["scenarios"].append(entry)
    out["clients_broadcast"] = args.clients
    sample = scenarios.get("single") or next(iter(scenarios.values()))
    out["sample_frame_ours"] = sample.ours[-1].last_frame
    out["sample_frame_bare"] = sample.bare[-1].last_frame
    return out


def render(rep: dict[str, Any], out: Any) -> None:
    env = rep["environment"]
    out(
        f"Python {env['python']} | Starlette {env['starlette']} | uvicorn {env['uvicorn']} | websockets "
        f"{env['websockets']} | Redis {env['redis_server']} | nproc {env['nproc']} | mqctl {env['mqctl']}"
    )
    out(f"ours' event loop: {env['ours_event_loop']}; {rep['rounds']} rounds; broadcast to {rep['clients_broadcast']}")
    for s in rep["scenarios"]:
        b, o = s["bare"], s["ours"]
        out(
            f"{s['name']:<9} frames/run {s['frames_per_run']:>7,}  bare {b['median_frames_per_s']:>8,.0f}/s  "
            f"ours {o['median_frames_per_s']:>8,.0f}/s  ours/bare {s['ratio']:.2f}x  target >= {s['target']:g}x  "
            f"{'MET' if s['met'] else 'MISSED'}  rounds {', '.join(f'{x:.2f}' for x in s['per_round'])}"
        )
        out(
            f"{'':<9} server CPU/frame bare {b['median_server_cpu_us_per_frame']:.1f} us, ours "
            f"{o['median_server_cpu_us_per_frame']:.1f} us; client CPU/frame bare "
            f"{b['median_client_cpu_us_per_frame']:.1f} us, ours {o['median_client_cpu_us_per_frame']:.1f} us; "
            f"frame bytes {b['frame_bytes']} / {o['frame_bytes']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--messages", type=int, default=20_000, help="frames to the one client (default 20000)")
    parser.add_argument("--clients", type=int, default=100, help="broadcast clients (default 100)")
    parser.add_argument(
        "--broadcast-messages",
        type=int,
        default=1000,
        help="frames to each broadcast client (default 1000: Service B's default send buffer, so no client "
        "can be dropped as slow whatever the timing)",
    )
    parser.add_argument(
        "--ours-uvloop", action="store_true", help="start serve-b with uvloop's event loop policy installed"
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(TARGETS),
        help="run only this scenario (repeat for several; default: all three), e.g. while profiling one",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout (the log on stderr)")
    args = parser.parse_args(argv)
    if min(args.rounds, args.messages, args.clients, args.broadcast_messages) < 1:
        parser.error("--rounds, --messages, --clients and --broadcast-messages must be positive")
    started = time.perf_counter()
    scenarios, env = asyncio.run(
        run(
            args.rounds,
            args.messages,
            args.broadcast_messages,
            args.clients,
            args.ours_uvloop,
            lambda line: print(line, file=sys.stderr, flush=True),
            [name for name in TARGETS if args.scenario is None or name in args.scenario],
        )
    )
    rep = report(scenarios, env, args)
    return publish_report(rep, render, started, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
