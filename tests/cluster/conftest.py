"""Fixtures of the cluster tests: the session's 3-master cluster comes from tests/conftest.py;
service processes from tests/integration/conftest.py; a cluster with replicas per test here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import start_service  # noqa: F401  (a fixture, re-exported)
from tests.redis_cluster import ClusterStartError, RedisCluster


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A cluster of 3 masters with 1 replica each, for this test alone (a failover test breaks it)."""
    cluster = RedisCluster(tmp_path / "cluster", masters=3, replicas=1, node_timeout_ms=1000)
    try:
        cluster.start()
    except ClusterStartError as exc:
        pytest.fail(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()
