"""mqctl create-topic: a partitioned topic from the command line, shown by mqctl stats."""

from __future__ import annotations

import json
import uuid

from typer.testing import CliRunner

from mqctl.cli import app

runner = CliRunner()


def test_create_topic_sets_partitions_and_stats_shows_them() -> None:
    """create-topic --partitions 4 answers the count; stats (table and JSON) shows it."""
    url = f"memory://cli-{uuid.uuid4().hex}"
    created = runner.invoke(app, ["create-topic", "orders", "--partitions", "4", "--broker", url])
    assert created.exit_code == 0, created.output
    assert "4 partitions" in created.output

    table = runner.invoke(app, ["stats", "orders", "--broker", url], env={"COLUMNS": "200"})
    assert "4 partitions" in table.output
    as_json = runner.invoke(app, ["stats", "orders", "--broker", url, "--json"])
    assert json.loads(as_json.output)[0]["partitions"] == 4


def test_create_topic_refuses_another_count() -> None:
    """An existing topic keeps its count: another --partitions is one clear error line and exit code 1."""
    url = f"memory://cli-{uuid.uuid4().hex}"
    assert runner.invoke(app, ["create-topic", "orders", "-p", "2", "--broker", url]).exit_code == 0

    again = runner.invoke(app, ["create-topic", "orders", "-p", "3", "--broker", url])

    assert again.exit_code == 1
    assert "already exists with 2 partition" in again.output
