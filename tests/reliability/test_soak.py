"""The soak: ten minutes of `mqctl loadtest --rate 500` against serve-a and serve-b on a Redis
with `appendfsync always`, while Service B is killed (SIGKILL) every 30-60 s and restarted,
Service A is restarted, and Redis is killed and restarted twice. Nothing accepted may be lost;
duplicates are counted and the latency percentiles reported.

Not part of `.ci/run` (it takes over ten minutes): it runs only when asked for by marker,

    MQCTL_RELIABILITY_REPORT=reliability.jsonl python3 -m pytest -m soak tests/reliability/test_soak.py

and MQCTL_SOAK_S shortens it for a try (the faults keep their proportions).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.conftest import Service, Services
from tests.reliability.harness import Report
from tests.servers import RedisServer

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600)]

DURATION_S = float(os.environ.get("MQCTL_SOAK_S", "600"))
RATE = 500
SERVICE_ENV = {"MQCTL_ACK_TIMEOUT_S": "5", "MQCTL_PUBLISH_TIMEOUT_S": "2"}
"""A short ack timeout: what a killed Service B held comes back to the restarted one soon."""


@dataclass
class Faults:
    """Kills and restarts on a schedule, in a thread, while the load runs; what it did is logged."""

    redis: RedisServer
    services: Services
    a: Service
    b: Service
    started: float = field(default_factory=time.monotonic)
    log: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def at(self, fraction: float) -> float:
        return self.started + fraction * DURATION_S

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc

    def _run(self) -> None:
        rng = random.Random(7)
        once: list[tuple[float, Callable[[], None], str]] = [
            (self.at(0.25), self.restart_redis, "Redis killed (SIGKILL) and restarted"),
            (self.at(0.40), self.restart_a, "Service A restarted (SIGTERM)"),
            (self.at(0.70), self.restart_redis, "Redis killed (SIGKILL) and restarted"),
        ]
        next_b = time.monotonic() + rng.uniform(30, 60) * DURATION_S / 600
        while not self.stop.wait(0.2) and time.monotonic() < self.at(0.95):
            now = time.monotonic()
            if now >= next_b:
                self.kill_b()
                next_b = now + rng.uniform(30, 60) * DURATION_S / 600
            for item in [item for item in once if now >= item[0]]:
                once.remove(item)
                item[1]()
                self.note(item[2])

    def note(self, what: str) -> None:
        self.log.append((round(time.monotonic() - self.started, 1), what))

    def kill_b(self) -> None:
        self.b.signal(signal.SIGKILL)
        self.b.process.wait(10)
        self.b = self.services.start("serve-b", "--broker", self.redis.url, env=SERVICE_ENV, port=self.b.port)
        self.note("Service B killed (SIGKILL) and restarted")

    def restart_a(self) -> None:
        self.a.stop()
        self.a = self.services.start("serve-a", "--broker", self.redis.url, env=SERVICE_ENV, port=self.a.port)

    def restart_redis(self) -> None:
        self.redis.kill()
        time.sleep(1.0)
        self.redis.start(timeout_s=60)

    def timeline(self) -> str:
        """When each kind of fault struck, in seconds from the start: one short line for the table."""
        kinds = {"Service B": "B", "Service A": "A", "Redis": "Redis"}
        return "; ".join(
            f"{short} " + ", ".join(f"{at:.0f}" for at, what in self.log if what.startswith(kind))
            for kind, short in kinds.items()
        )

    def count(self, prefix: str) -> int:
        return sum(1 for _, what in self.log if what.startswith(prefix))


def test_soak_under_kills_and_restarts(tmp_path: Path, report: Report) -> None:
    """Ten minutes at 500 msg/s with Service B killed every 30-60 s, Service A restarted and Redis
    killed twice (appendfsync always): 0 accepted messages lost; duplicates and p99 reported."""
    services = Services(tmp_path)
    redis_server = RedisServer(extra=["--appendonly", "yes", "--appendfsync", "always"]).start()
    try:
        a = services.start("serve-a", "--broker", redis_server.url, env=SERVICE_ENV)
        b = services.start("serve-b", "--broker", redis_server.url, env=SERVICE_ENV)
        faults = Faults(redis_server, services, a, b)
        thread = threading.Thread(target=faults.run, name="faults")
        load = subprocess.Popen(
            [
                sys.executable, "-m", "mqctl", "loadtest", "--rate", str(RATE), "--duration", str(DURATION_S),
                "--workers", "20", "--drain-timeout", "120", "--json", "--a-url", a.http, "--b-url", b.ws,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        faults.started = time.monotonic()
        thread.start()
        try:
            out, err = load.communicate(timeout=DURATION_S + 600)
        finally:
            faults.stop.set()
            thread.join(120)
        assert faults.error is None, repr(faults.error)
        assert out.strip(), f"the loadtest printed no report (exit {load.returncode}):\n{err[-3000:]}"
        result = json.loads(out)
        report.record(
            "12. Soak: kills and restarts under load",
            f"{DURATION_S / 60:g} min of mqctl loadtest --rate {RATE}; Service B SIGKILLed every 30-60 s "
            f"({faults.count('Service B')} times), Service A restarted once, Redis (appendfsync always) "
            f"SIGKILLed and restarted {faults.count('Redis')} times",
            messages=result["accepted"],
            lost=result["lost"],
            duplicated=result["duplicates"],
            sent=result["sent"],
            refused_or_failed=sum(result["errors"].values()),
            errors=result["errors"],
            latency_ms=result["latency_ms"],
            listener_reconnects=result["listener_reconnects"],
            faults_at_s=faults.timeline(),
        )
        assert result["lost"] == 0, result["lost_ids"][:20]
        assert faults.count("Service B") >= DURATION_S // 60 and faults.count("Redis") == 2, faults.log
        assert result["accepted"] > 0.8 * RATE * DURATION_S, result
    finally:
        services.stop_all()
        redis_server.stop()
