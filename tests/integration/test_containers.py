"""docker-compose.yml and the Dockerfile run for real: scripts/container_check.py builds the image,
starts the containers (the nats profile's too), waits until they are healthy, checks their uids and sends a
message from A to B, then removes everything. Skipped, loudly, where no Docker engine answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIPPED = 77

pytestmark = [pytest.mark.container, pytest.mark.timeout(1200)]


def test_compose_up_builds_runs_as_non_root_and_delivers() -> None:
    """The container check passes: all six healthy, non-root, one message A to B on Redis and on NATS."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "container_check.py")],
        capture_output=True,
        text=True,
        timeout=1150,
        check=False,
    )
    if done.returncode == SKIPPED:
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "container check passed" in done.stdout
