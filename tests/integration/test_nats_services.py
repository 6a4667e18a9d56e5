"""Service A, Service B and the CLI unchanged on NATS JetStream: only MQCTL_BROKER_URL differs.
Real serve-a and serve-b processes on the session's nats-server, the loadtest, stats and dlq."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest
from typer.testing import CliRunner

import mqctl
from mqctl.cli import app
from tests.integration.conftest import Service

pytestmark = [pytest.mark.nats, pytest.mark.timeout(120)]


def test_loadtest_through_the_services_on_nats_loses_nothing(
    nats_url: str, start_service: Callable[..., Service]
) -> None:
    """2,000 messages through serve-a and serve-b on nats://: every one delivered once."""
    env = {"MQCTL_BROKER_URL": nats_url, "MQCTL_POLL_INTERVAL_S": "0.5"}
    a = start_service("serve-a", env=env)
    b = start_service("serve-b", env=env)
    load = ["loadtest", "--messages", "2000", "--workers", "20", "--json", "--a-url", a.http, "--b-url", b.ws]
    done = subprocess.run(
        [sys.executable, "-m", "mqctl", *load],
        capture_output=True,
        text=True,
        timeout=100,
        env={**os.environ},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert (report["accepted"], report["received"], report["lost"], report["duplicates"]) == (2000, 2000, 0, 0)
    assert "Traceback" not in a.log() + b.log()


def test_stats_and_dlq_on_nats(nats_url: str) -> None:
    """mqctl stats shows a NATS topic's groups; dlq list, show, replay and purge work on its dead letters."""
    topic = f"jobs-{uuid.uuid4().hex[:8]}"

    async def seed() -> list[str]:
        async with mqctl.connect(nats_url, default_group="default") as broker:
            await broker.publish_many(topic, [{"type": "job", "content": i} for i in range(3)])
            async with broker.subscribe(topic, max_attempts=1, poll_interval=0.1) as sub:
                for _ in range(3):
                    async with asyncio.timeout(10):
                        delivery = await anext(sub)
                    await delivery.nack(reason="the handler crashed")
            return [letter.id for letter in await broker.dead_letters(topic)]

    letters = asyncio.run(seed())
    assert len(letters) == 3
    runner = CliRunner()
    stats = runner.invoke(app, ["stats", topic, "--json", "--broker", nats_url])
    assert stats.exit_code == 0, stats.stderr
    [row] = json.loads(stats.stdout)
    assert row["dead_letters"] == 3 and [g["name"] for g in row["groups"]] == ["default"]
    shown = runner.invoke(app, ["dlq", "show", topic, letters[0], "--json", "--broker", nats_url])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["reason"].startswith("the handler crashed"), shown.stderr
    replayed = runner.invoke(app, ["dlq", "replay", topic, "--id", letters[0], "--broker", nats_url])
    assert replayed.exit_code == 0 and len(replayed.stdout.split()) == 1, replayed.stderr
    purged = runner.invoke(app, ["dlq", "purge", topic, "--yes", "--broker", nats_url])
    assert purged.exit_code == 0 and "Deleted 2 dead letter(s)" in purged.stderr, purged.stderr
