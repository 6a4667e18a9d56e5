"""mqctl loadtest against real services: the counts add up, and loss is caught."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.conftest import RedisServer, Service

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
