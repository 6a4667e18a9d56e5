"""mqctl loadtest against real services: the counts add up, and loss is caught."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from mqctl.loadtest import LoadSpec, run
from mqctl.loadtest.http import HttpConnection, Origin
from tests.integration.conftest import Service
from tests.servers import RedisServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def system(redis_server: RedisServer, start_service) -> tuple[Service, Service]:
    a = start_service("serve-a", "--broker", redis_server.url)
    b = start_service("serve-b", "--broker", redis_server.url)
    return a, b


def loadtest(a: Service, b: Service, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mqctl", "loadtest", "--a-url", a.http, "--b-url", b.ws, "--json", *args],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


def test_loadtest_accounts_for_every_message(system: tuple[Service, Service]) -> None:
    """A small run through both services reports zero lost, and its counts add up."""
    a, b = system
    result = loadtest(a, b, "--workers", "10", "--messages", "400", "--listeners", "2", "--drain-timeout", "20")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["sent"] == 400
    assert report["accepted"] + sum(report["errors"].values()) == report["sent"]
    assert report["accepted"] == 400
    assert report["received"] == 400
    assert report["lost"] == 0
    assert report["duplicates"] >= 0
    assert report["throughput"] > 0
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert report["ceiling_rps"] > 0


def test_loadtest_batches_through_the_batch_endpoint(system: tuple[Service, Service]) -> None:
    """--batch uses the batch endpoint and still accounts for every message."""
    a, b = system
    result = loadtest(a, b, "--workers", "4", "--messages", "1000", "--batch", "50", "--drain-timeout", "20")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["accepted"], report["received"], report["lost"]) == (1000, 1000, 0)


def test_without_a_terminal_progress_and_the_table_are_whole_lines(system: tuple[Service, Service]) -> None:
    """Into a log (stderr and stdout in one file, no TTY): progress comes as whole lines, and the
    result table starts on a line of its own, not glued to the last progress line."""
    a, b = system
    result = subprocess.run(
        [sys.executable, "-m", "mqctl", "loadtest", "--a-url", a.http, "--b-url", b.ws, "--messages", "300"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    progress = [line for line in lines if "sent" in line and "accepted" in line and "received" in line]
    assert progress, result.stdout
    assert all(line.lstrip()[0].isdigit() and line.rstrip().endswith("/s)") for line in progress), progress
    # The table's title is centred over the table: leading spaces when the table is wider than it.
    assert any(line.strip().startswith("loadtest ") and " on topic " in line for line in lines), result.stdout


def test_loadtest_reports_loss_and_fails(system: tuple[Service, Service]) -> None:
    """A listener that filters everything out makes the run report loss and exit non-zero."""
    a, b = system
    result = loadtest(
        a, b, "--workers", "5", "--messages", "100", "--drain-timeout", "2", "--listen-query", "type=nothing-matches"
    )
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["accepted"] == 100
    assert report["lost"] == 100
    assert report["received"] == 0
    assert "not delivered" in result.stderr


@pytest.mark.parametrize("b_path", ["", "/ws-gone"])
def test_a_service_b_url_that_refuses_the_listener_is_one_clear_error(
    system: tuple[Service, Service], b_path: str
) -> None:
    """A B URL without the WebSocket path (403) or with a wrong one ends the run with one error
    line naming the URL and exit 1, not a traceback."""
    a, b = system
    origin = b.ws.rsplit("/", 1)[0]
    result = subprocess.run(
        [sys.executable, "-m", "mqctl", "loadtest", "--a-url", a.http, "--b-url", origin + b_path, "--messages", "10"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert f"Cannot listen on Service B at '{origin + b_path}'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_loadtest_direct_against_the_library(redis_server: RedisServer) -> None:
    """--direct drives the library against a broker with no services, and loses nothing."""
    result = subprocess.run(
        [sys.executable, "-m", "mqctl", "loadtest", "--direct", redis_server.url, "--messages", "2000", "--json"],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["accepted"], report["received"], report["lost"]) == (2000, 2000, 0)


def test_loadtest_never_exceeds_its_rate_and_reports_its_ceiling(system: tuple[Service, Service]) -> None:
    """--rate is an upper bound on what is offered (200/s for 3 s: at most 600), everything sent
    is accepted and received, and the generator's own ceiling is measured and reported.

    How close to the rate a run gets, and how high the ceiling is, depend on the machine: those
    are measured in bench/bench_e2e.py (BENCHMARKS.md), not asserted here."""
    a, b = system
    result = loadtest(a, b, "--workers", "20", "--rate", "200", "--duration", "3", "--drain-timeout", "20")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["errors"] == {}
    assert report["accepted"] == report["received"] == report["sent"]
    assert 0 < report["sent"] <= 600
    assert report["ceiling_rps"] > 0


async def test_loadtest_counts_failed_requests_by_kind(system: tuple[Service, Service]) -> None:
    """Through a proxy in front of Service A that answers some POSTs 503 and drops one connection
    unanswered, the run counts those by status and kind, reconnects, and loses nothing accepted."""
    a, b = system
    posts = 0

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal posts
        upstream = HttpConnection(Origin.parse(a.http))
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(h[15:]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:"))
                body = await reader.readexactly(length)
                posts += 1
                if posts == 10:
                    return  # closed without an answer
                if posts % 7 == 0:
                    writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                    continue
                answer = await upstream.request("POST", "/messages", body, content_type="application/json")
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (answer.status, len(answer.body), answer.body)
                )
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()
            await upstream.aclose()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    spec = LoadSpec(
        a_url=f"http://127.0.0.1:{port}", b_url=b.ws, workers=4, messages=100, measure_ceiling=False, drain_timeout_s=20
    )
    try:
        report = await run(spec)
    finally:
        server.close()
        await server.wait_closed()
    assert report.sent == 100
    assert report.errors == {"503": 14, "dropped": 1}
    assert report.accepted == 85
    assert (report.received, report.lost) == (85, 0)
