"""Service A's OpenAPI, fuzzed by schemathesis against a real serve-a process on a private
Redis: valid and invalid requests alike get no 5xx, and every answer is one the schema
documents (status code, content type and body shape)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import RedisServer, free_port, healthy, wait_for

EXAMPLES = int(os.environ.get("MQCTL_FUZZ_EXAMPLES", "60"))
"""Examples per operation and generation mode; the whole file stays well under a minute."""

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    positive_data_acceptance,
]


@pytest.fixture(scope="module")
def service_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One serve-a process on a private redis-server for the whole module, stopped by PID."""
    server = RedisServer(free_port())
    server.start()
    port = free_port()
    log_path = Path(tmp_path_factory.mktemp("fuzz")) / "serve-a.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mqctl", "serve-a", "--port", str(port), "--broker", server.url],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MQCTL_MAX_BACKLOG": "1000000"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: healthy(url) or process.poll() is not None, 20, "serve-a")
        assert process.poll() is None, log_path.read_text()
        yield url
        assert process.poll() is None, "serve-a died under the fuzzer:\n" + log_path.read_text()
        assert "Traceback" not in log_path.read_text(), log_path.read_text()
    finally:
        process.terminate()
        process.wait(10)
        server.stop()


@pytest.fixture(scope="module")
def api(service_a: str) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(service_a + "/openapi.json")
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES, database="none"
    )
    return schema


schema = schemathesis.pytest.from_fixture("api")


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.timeout(120)
def test_service_a_openapi(case: schemathesis.Case) -> None:
    """Generated requests, valid and not: no 5xx, and every answer as the OpenAPI document says."""
    case.call_and_validate(checks=CHECKS, timeout=15)
