"""mqctl stats and mqctl dlq against a private redis-server, as an operator runs them."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

import mqctl
from mqctl.cli import app
from tests.servers import RedisServer, free_port, stop_process, wait_for

pytestmark = pytest.mark.timeout(60)


def mqctl_cli(*args: str, input: str | None = None) -> Any:
    """Run one mqctl command in this process; stdout and stderr apart."""
    return CliRunner().invoke(app, list(args), input=input)


async def dead_letters(url: str, topic: str, contents: list[str]) -> list[str]:
    """Publish ``contents`` on ``topic`` and nack each on its last attempt: they become dead letters."""
    async with mqctl.connect(url, default_group="default") as broker:  # as the services connect
        for content in contents:
            await broker.publish(topic, {"type": "job.run", "content": content, "headers": {"from": "test"}})
        async with broker.subscribe(topic, group="default", max_attempts=1, poll_interval=0.1) as sub:
            seen = 0
            async for delivery in sub:
                await delivery.nack(reason="the handler crashed")
                seen += 1
                if seen == len(contents):
                    break
        return [letter.id for letter in await broker.dead_letters(topic)]


def test_stats_table_and_json_show_each_topic_and_group(redis_server: RedisServer) -> None:
    """stats shows length, backlog, pending, oldest pending age, consumers and dead letters per group."""

    async def seed() -> None:
        async with mqctl.connect(redis_server.url, default_group="default") as broker:
            for i in range(3):
                await broker.publish("orders", {"type": "order", "content": i})
            await broker.publish("emails", {"type": "email", "content": "hi"})
            await broker.create_group("orders", "billing", from_start=True)
            async with broker.subscribe("orders", group="billing", poll_interval=0.1, batch=1) as sub:
                await anext(sub)  # now pending for billing: never acknowledged

    asyncio.run(seed())
    asyncio.run(dead_letters(redis_server.url, "jobs", ["x"]))

    table = mqctl_cli("stats", "--broker", redis_server.url)
    assert table.exit_code == 0, table.stderr
    for word in ("topic", "group", "length", "backlog", "pending", "consumers", "dead", "orders", "billing", "emails"):
        assert word in table.stdout

    result = mqctl_cli("stats", "orders", "--json", "--broker", redis_server.url)
    assert result.exit_code == 0, result.stderr
    [orders] = json.loads(result.stdout)
    groups = {g["name"]: g for g in orders["groups"]}
    assert orders["length"] == 3 and orders["dead_letters"] == 0
    assert groups["billing"]["pending"] == 1 and groups["billing"]["lag"] == 2 and groups["billing"]["backlog"] == 3
    assert groups["billing"]["oldest_pending_age_s"] >= 0
    assert groups["default"]["lag"] == 3 and groups["default"]["oldest_pending_age_s"] is None

    every = json.loads(mqctl_cli("stats", "--json", "--broker", redis_server.url).stdout)
    assert [t["topic"] for t in every] == ["emails", "jobs", "orders"]
    assert next(t for t in every if t["topic"] == "jobs")["dead_letters"] == 1


def test_stats_watch_refreshes_until_ctrl_c(redis_server: RedisServer) -> None:
    """stats --watch keeps refreshing (--json: one line per refresh) and exits 0 on Ctrl+C."""
    asyncio.run(dead_letters(redis_server.url, "jobs", ["x"]))

    def watch(*extra: str) -> subprocess.Popen[str]:
        command = ["stats", "--watch", "--interval", "0.2", "--broker", redis_server.url, *extra]
        return subprocess.Popen(
            [sys.executable, "-m", "mqctl", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    process = watch("--json")
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]  # three refreshes, one line each
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=10)
    finally:
        stop_process(process)
    assert process.returncode == 0, err
    assert all(json.loads(line)[0]["topic"] == "jobs" for line in lines), lines

    client = redis.Redis.from_url(redis_server.url)
    try:
        process = watch()
        # A table on a pipe is drawn when the watch ends: wait until it reads the broker, then stop it.
        wait_for(lambda: len(client.client_list()) > 1, 20, "the watch to connect to Redis")
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        client.close()
        stop_process(process)
    assert process.returncode == 0, err
    assert "jobs" in out and "Ctrl+C stops" in out


def test_dlq_list_show_and_replay_bring_a_dead_letter_back_to_a_consumer(redis_server: RedisServer) -> None:
    """A replayed dead letter reaches a consumer of the group again, and leaves the dead letters."""
    first, second = asyncio.run(dead_letters(redis_server.url, "jobs", ["one", "two"]))

    listed = mqctl_cli("dlq", "list", "jobs", "--broker", redis_server.url)
    assert listed.exit_code == 0, listed.stderr
    assert first in listed.stdout and "job.run" in listed.stdout and "crashed" in listed.stdout
    letters = json.loads(mqctl_cli("dlq", "list", "jobs", "--json", "--broker", redis_server.url).stdout)
    assert [(d["id"], d["content"], d["attempts"]) for d in letters] == [(first, "one", 1), (second, "two", 1)]
    assert letters[0]["reason"].startswith("the handler crashed")

    shown = mqctl_cli("dlq", "show", "jobs", second, "--broker", redis_server.url)
    assert shown.exit_code == 0, shown.stderr
    assert '"two"' in shown.stdout and '"from": "test"' in shown.stdout and "crashed" in shown.stdout
    detail = json.loads(mqctl_cli("dlq", "show", "jobs", second, "--json", "--broker", redis_server.url).stdout)
    assert detail["group"] == "default" and detail["type"] == "job.run"

    replayed = mqctl_cli("dlq", "replay", "jobs", "--id", second, "--broker", redis_server.url)
    assert replayed.exit_code == 0, replayed.stderr
    [new_id] = replayed.stdout.split()
    assert "Replayed 1 dead letter" in replayed.stderr

    async def consume() -> tuple[str, Any, int]:
        async with (
            mqctl.connect(redis_server.url, default_group="default") as broker,
            broker.subscribe("jobs", group="default", poll_interval=0.1) as sub,
        ):
            async with asyncio.timeout(10):
                delivery = await anext(sub)
            await delivery.ack()
            return delivery.id, delivery.message.content, delivery.attempt

    assert asyncio.run(consume()) == (new_id, "two", 1)
    left = json.loads(mqctl_cli("dlq", "list", "jobs", "--json", "--broker", redis_server.url).stdout)
    assert [d["id"] for d in left] == [first]

    everything = mqctl_cli("dlq", "replay", "jobs", "--all", "--broker", redis_server.url)
    assert everything.exit_code == 0, everything.stderr
    assert len(everything.stdout.split()) == 1
    assert json.loads(mqctl_cli("dlq", "list", "jobs", "--json", "--broker", redis_server.url).stdout) == []


def test_dlq_refuses_unknown_ids_and_a_missing_choice(redis_server: RedisServer) -> None:
    """replay needs --id or --all, and replays nothing if any id is not a dead letter; show names a missing id."""
    [letter] = asyncio.run(dead_letters(redis_server.url, "jobs", ["x"]))
    neither = mqctl_cli("dlq", "replay", "jobs", "--broker", redis_server.url)
    assert neither.exit_code == 2 and "--all" in neither.stderr
    unknown = mqctl_cli("dlq", "replay", "jobs", "--id", letter, "--id", "1-0", "--broker", redis_server.url)
    assert unknown.exit_code == 1
    assert unknown.stderr.strip().splitlines() == [
        "error: No dead letter '1-0' on topic 'jobs'; nothing was replayed. See: mqctl dlq list jobs"
    ]
    assert len(json.loads(mqctl_cli("dlq", "list", "jobs", "--json", "--broker", redis_server.url).stdout)) == 1
    missing = mqctl_cli("dlq", "show", "jobs", "1-0", "--broker", redis_server.url)
    assert missing.exit_code == 1 and "No dead letter '1-0'" in missing.stderr
    malformed = mqctl_cli("dlq", "show", "jobs", "not-an-id", "--broker", redis_server.url)
    assert malformed.exit_code == 1 and "No dead letter 'not-an-id'" in malformed.stderr


def test_dlq_show_and_replay_take_the_ids_of_a_partitioned_topic(redis_server: RedisServer) -> None:
    """On a topic of partitions, dead letters' ids name their partition (p:ms-seq): show and
    replay --id take them (they refused anything but ms-seq before)."""

    async def partitioned() -> None:
        async with mqctl.connect(redis_server.url, default_group="default") as broker:
            await broker.create_topic("jobs", partitions=2)

    asyncio.run(partitioned())
    letters = asyncio.run(dead_letters(redis_server.url, "jobs", ["a", "b", "c", "d"]))
    assert all(":" in letter for letter in letters), letters
    for letter in letters:
        shown = mqctl_cli("dlq", "show", "jobs", letter, "--json", "--broker", redis_server.url)
        assert shown.exit_code == 0 and json.loads(shown.stdout)["id"] == letter, shown.stderr
    replayed = mqctl_cli("dlq", "replay", "jobs", "--id", letters[0], "--id", letters[-1], "--broker", redis_server.url)
    assert replayed.exit_code == 0, replayed.stderr
    assert len(replayed.stdout.split()) == 2
    left = json.loads(mqctl_cli("dlq", "list", "jobs", "--json", "--broker", redis_server.url).stdout)
    assert sorted(d["id"] for d in left) == sorted(letters[1:-1])


def test_dlq_purge_asks_before_deleting(redis_server: RedisServer) -> None:
    """purge deletes nothing when the operator says no, everything on yes or with --yes."""
    asyncio.run(dead_letters(redis_server.url, "jobs", ["a", "b"]))
    declined = mqctl_cli("dlq", "purge", "jobs", "--broker", redis_server.url, input="n\n")
    assert declined.exit_code == 1
    assert "Delete 2 dead letter(s) of 'jobs'?" in declined.stderr
    assert len(json.loads(mqctl_cli("dlq", "list", "jobs", "--json", "--broker", redis_server.url).stdout)) == 2
    accepted = mqctl_cli("dlq", "purge", "jobs", "--broker", redis_server.url, input="y\n")
    assert accepted.exit_code == 0 and "Deleted 2 dead letter(s)" in accepted.stderr
    asyncio.run(dead_letters(redis_server.url, "jobs", ["c"]))
    forced = mqctl_cli("dlq", "purge", "jobs", "--yes", "--broker", redis_server.url)
    assert forced.exit_code == 0 and "Deleted 1 dead letter(s)" in forced.stderr
    assert "No dead letters" in mqctl_cli("dlq", "purge", "jobs", "--broker", redis_server.url).stderr


def test_commands_report_an_unreachable_broker_in_one_line() -> None:
    """With no broker at the URL, each command prints one error line and exits 1."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    for args in (["stats"], ["dlq", "list", "jobs"], ["dlq", "replay", "jobs", "--all"], ["dlq", "purge", "jobs"]):
        result = mqctl_cli(*args, "--broker", url)
        assert result.exit_code == 1, (args, result.stdout)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: Cannot reach Redis"), (args, lines)
