"""Fault injection against real processes: private redis-servers and mqctl services, each
started by the test that needs it and stopped by PID (see ``tests/integration/conftest.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import redis_server, start_service  # noqa: F401  (fixtures)
from tests.reliability.harness import Report, report_path


@pytest.fixture
def report(request: pytest.FixtureRequest, tmp_path: Path) -> Report:
    """Where a scenario records its figures (``$MQCTL_RELIABILITY_REPORT`` or the tmp dir)."""
    return Report(report_path(tmp_path), request.node.nodeid)
