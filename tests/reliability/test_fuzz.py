"""Service A's OpenAPI, fuzzed by schemathesis against a real serve-a process on a private
Redis: valid and invalid requests alike get no 5xx, and every answer is one the schema
documents (status code, content type and body shape)."""

from __future__ import annotations

import os
from collections.abc import Iterator

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

from tests.integration.conftest import Services
from tests.servers import RedisServer

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
    services = Services(tmp_path_factory.mktemp("fuzz"))
    with RedisServer() as server:
        a = services.start("serve-a", "--broker", server.url, env={"MQCTL_MAX_BACKLOG": "1000000"})
        try:
            yield a.http
            assert a.process.poll() is None, "serve-a died under the fuzzer:\n" + a.log()
            assert "Traceback" not in a.log(), a.log()
        finally:
            services.stop_all()


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
