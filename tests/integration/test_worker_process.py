"""``mqctl worker`` as a process on a real Redis: a drain that loses nothing across SIGTERM and a
restart, a second signal that cancels, metrics, logs, and clear errors for a bad target."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import httpx
import pytest

import mqctl
from tests.servers import RedisServer, free_port, stop_process, wait_for

pytestmark = pytest.mark.redis

HANDLERS = textwrap.dedent(
    """
    import asyncio
    import os

    import mqctl

    app = mqctl.App()
    LOG = os.environ["T_LOG"]


    def note(*words: object) -> None:
        with open(LOG, "a", encoding="utf-8") as f:
            f.write(" ".join(map(str, words)) + "\\n")


    @app.handler("jobs", group="workers", concurrency=4, ack_timeout_s=120, from_start=True)
    async def work(n: int, delivery: mqctl.Delivery) -> None:
        note("start", n, delivery.attempt, os.getpid())
        await asyncio.sleep(float(os.environ["T_SLEEP"]))
        note("done", n, delivery.attempt, os.getpid())
    """
)


class Worker:
    def __init__(self, tmp_path: Path, url: str, sleep_s: float, *extra: str) -> None:
        self.output = tmp_path / f"worker-{free_port()}.out"
        env = {**os.environ, "T_LOG": str(tmp_path / "calls.log"), "T_SLEEP": str(sleep_s), "MQCTL_BROKER_URL": url}
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mqctl", "worker", "jobs_app:app", "--no-status", *extra],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: "Handler work: topic 'jobs'" in self.log() or self.process.poll() is not None, 20, "a start")
        assert self.process.poll() is None, self.log()

    def log(self) -> str:
        return self.output.read_text(encoding="utf-8", errors="replace")


def calls(tmp_path: Path, kind: str) -> list[tuple[int, int]]:
    path = tmp_path / "calls.log"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [(int(n), int(attempt)) for k, n, attempt, _pid in (line.split() for line in lines) if k == kind]


def backlog(url: str) -> int:
    async def read() -> int:
        async with mqctl.connect(url) as broker:
            group = (await broker.stats("jobs")).group("workers")
            return -1 if group is None else group.backlog

    return asyncio.run(read())


def publish(url: str, count: int) -> None:
    async def send() -> None:
        async with mqctl.connect(url) as broker:
            await broker.publish_many("jobs", [{"type": "job", "content": n} for n in range(count)])

    asyncio.run(send())


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "jobs_app.py").write_text(HANDLERS, encoding="utf-8")
    return tmp_path


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


def test_sigterm_drains_and_a_restart_finishes_the_rest_with_nothing_lost(app_dir: Path, redis_url: str) -> None:
    """SIGTERM mid-load: running calls finish and are acked, exit 0; the next worker takes what was
    handed back at once (well inside the 120 s ack timeout); every message done exactly once."""
    first = Worker(app_dir, redis_url, 0.2)
    try:
        publish(redis_url, 40)
        wait_for(lambda: len(calls(app_dir, "done")) >= 8, 30, "8 messages done")
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(30) == 0, first.log()
    finally:
        stop_process(first.process)
    assert "SIGTERM: draining" in first.log()
    started, done = calls(app_dir, "start"), calls(app_dir, "done")
    assert sorted(started) == sorted(done), "a running call was cut short by a graceful stop"
    assert len(done) < 40

    second = Worker(app_dir, redis_url, 0.0)
    try:
        wait_for(lambda: backlog(redis_url) == 0, 30, "the rest handled by the next worker")
    finally:
        assert stop_process(second.process) == 0, second.log()
    done = calls(app_dir, "done")
    assert sorted(n for n, _ in done) == list(range(40)), "a message was lost or handled twice"
    # A hand-back is a delivery to the broker (Redis and NATS count them), so what came back may say
    # attempt 2; a message the first worker finished never comes again.
    first_done = {n for n, _ in started}
    assert all(attempt <= 2 and n not in first_done for n, attempt in done[len(started) :])


def test_a_second_signal_cancels_and_the_messages_come_back_at_once(app_dir: Path, redis_url: str) -> None:
    """Two SIGTERMs: the hanging calls are cancelled, the worker exits 0, and the next worker gets
    those messages again at once (attempt 2), not after the ack timeout."""
    first = Worker(app_dir, redis_url, 3600)
    try:
        publish(redis_url, 6)
        wait_for(lambda: len(calls(app_dir, "start")) == 4, 20, "four calls hanging")
        first.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining" in first.log(), 10, "the drain to start")
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(15) == 0, first.log()
    finally:
        stop_process(first.process)
    assert "cancelling 4 running call(s)" in first.log()

    second = Worker(app_dir, redis_url, 0.0)
    try:
        wait_for(lambda: backlog(redis_url) == 0, 30, "all six handled")
    finally:
        stop_process(second.process)
    done = Counter(n for n, _ in calls(app_dir, "done"))
    assert sorted(done) == list(range(6)) and set(done.values()) == {1}
    hung = {n for n, _ in calls(app_dir, "start")[:4]}
    assert {n for n, attempt in calls(app_dir, "done") if attempt == 2} == hung


def test_metrics_and_json_logs(app_dir: Path, redis_url: str) -> None:
    """--metrics-port serves the handler's series; --log-format json logs one JSON object a line."""
    port = free_port()
    worker = Worker(app_dir, redis_url, 0.0, "--metrics-port", str(port), "--log-format", "json")
    try:
        publish(redis_url, 5)
        wait_for(lambda: backlog(redis_url) == 0, 20, "five handled")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        assert stop_process(worker.process) == 0, worker.log()
    assert 'mqctl_handler_messages_total{handler="work",outcome="processed"} 5.0' in text
    assert 'mqctl_handler_duration_seconds_count{handler="work"} 5.0' in text
    records = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    assert any(r["message"].startswith("Handler work: topic 'jobs', group 'workers', concurrency 4") for r in records)
    assert any(r["message"].startswith("Handler work: processed 5") for r in records)


@pytest.mark.parametrize(
    ("target", "said"),
    [
        ("nowhere:app", "Cannot import 'nowhere': no module 'nowhere' here"),
        ("jobs_app:missing", "jobs_app:missing is NoneType, not an mqctl.App."),
        ("jobs_app:app --handler nope", "No handler named 'nope'; this app has: work."),
    ],
)
def test_a_bad_target_is_one_clear_line(app_dir: Path, target: str, said: str) -> None:
    """A module that is not there, an attribute that is not an App, an unknown handler: exit 2, one line."""
    result = subprocess.run(
        [sys.executable, "-m", "mqctl", "worker", *target.split()],
        cwd=app_dir,
        env={**os.environ, "T_LOG": "unused", "MQCTL_BROKER_URL": "memory://"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert said in result.stderr and "Traceback" not in result.stderr
