"""docker-compose.yml, checked without a Docker engine: its shape, then its own commands
and environments run as local processes (Redis on a private redis-server, the services by
``python -m mqctl``, ports mapped to free ones) until a publish to A arrives over B."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import pytest
import redis
from typer.testing import CliRunner
from websockets.asyncio.client import connect

from mqctl.cli import app
from mqctl.config import Settings
from tests.integration.conftest import Service
from tests.integration.deployment import (
    COMPOSE_FILE,
    ROOT,
    environment,
    option,
    port_mappings,
    read_compose,
    read_dockerfile,
)
from tests.servers import RedisServer, free_port, wait_for

pytestmark = pytest.mark.timeout(90)

MQCTL_SERVICES = {"service-a": ("serve-a", 8002), "service-b": ("serve-b", 8003)}
NATS_SERVICES = {"service-a-nats": ("serve-a", 8002, 8012), "service-b-nats": ("serve-b", 8003, 8013)}
RESTART_POLICIES = {"always", "unless-stopped", "on-failure"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return read_compose()


def test_compose_file_is_the_modern_format(compose: dict[str, Any]) -> None:
    """No ``version:`` key, only Compose Specification top-level keys, the three services, and three
    more in the ``nats`` profile alone."""
    assert "version" not in compose
    allowed = {"services", "volumes", "networks", "configs", "secrets"}
    assert {k for k in compose if not k.startswith("x-")} <= allowed
    assert set(compose["services"]) == {"redis", *MQCTL_SERVICES, "nats", *NATS_SERVICES}
    in_profile = {name for name, service in compose["services"].items() if service.get("profiles")}
    assert in_profile == {"nats", *NATS_SERVICES}
    assert all(compose["services"][name]["profiles"] == ["nats"] for name in in_profile)


@pytest.mark.parametrize("name", sorted(NATS_SERVICES))
def test_the_nats_profile_runs_the_services_on_nats(compose: dict[str, Any], name: str) -> None:
    """service-a-nats/-b-nats: the mqctl image on nats://nats:4222 once NATS is healthy, on their
    own host ports (8012, 8013); nats is built from docker/nats with a volume at /data."""
    subcommand, port, host_port = NATS_SERVICES[name]
    service = compose["services"][name]
    assert service["command"][0] == subcommand and option(service["command"], "--port") == str(port)
    assert port_mappings(service) == {port: host_port}
    broker = urlsplit(environment(service)["MQCTL_BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("nats", "nats", 4222)
    assert service["depends_on"] == {"nats": {"condition": "service_healthy"}}
    nats = compose["services"]["nats"]
    assert (ROOT / nats["build"] / "Dockerfile").is_file() and nats["volumes"][0].endswith(":/data")


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="the legacy docker-compose command is not installed")
def test_legacy_docker_compose_accepts_the_file() -> None:
    """The legacy ``docker-compose`` command validates the file (no engine needed for that)."""
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_redis_is_pinned_persistent_and_healthchecked(compose: dict[str, Any]) -> None:
    """Redis: a pinned image, AOF with appendfsync everysec, a named volume at /data, a
    health check and a restart policy."""
    service = compose["services"]["redis"]
    image, _, tag = service["image"].partition(":")
    assert image == "redis" and tag[:1].isdigit() and tag.count(".") >= 2, f"{service['image']!r} is not pinned"
    command = service["command"]
    assert command[0] == "redis-server"
    assert option(command, "--appendonly") == "yes"
    assert option(command, "--appendfsync") == "everysec"
    volume, _, target = service["volumes"][0].partition(":")
    assert target.split(":")[0] == "/data" and volume in (compose.get("volumes") or {}), "no named volume at /data"
    assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert service["restart"] in RESTART_POLICIES


@pytest.mark.parametrize("name", sorted(MQCTL_SERVICES))
def test_mqctl_service_runs_the_image_on_all_interfaces(compose: dict[str, Any], name: str) -> None:
    """service-a/-b: built from this Dockerfile, ``serve-a``/``serve-b`` on 0.0.0.0 and its
    port, published as is, on the Redis service, after Redis is healthy, restarted."""
    subcommand, port = MQCTL_SERVICES[name]
    service = compose["services"][name]
    build = service["build"]
    assert (build if isinstance(build, str) else build.get("context", ".")) == "."
    assert (ROOT / "Dockerfile").is_file()
    command = service["command"]
    assert isinstance(command, list) and command[0] == subcommand
    assert option(command, "--host") == "0.0.0.0"
    assert option(command, "--port") == str(port)
    assert port_mappings(service) == {port: port}
    broker = urlsplit(environment(service)["MQCTL_BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert service["restart"] in RESTART_POLICIES
    assert urlsplit(environment(service)["HEALTHCHECK_URL"]).port == port, "the image's health check asks elsewhere"


@pytest.mark.parametrize("name", sorted({**MQCTL_SERVICES, **NATS_SERVICES}))
def test_mqctl_service_names_real_commands_and_settings(compose: dict[str, Any], name: str) -> None:
    """The command parses as a real mqctl command, and every MQCTL_* variable is a real setting."""
    service = compose["services"][name]
    result = CliRunner().invoke(app, [*service["command"], "--help"])
    assert result.exit_code == 0, result.output
    fields = {f"MQCTL_{field.upper()}" for field in Settings.model_fields}
    unknown = {k for k in environment(service) if k.startswith("MQCTL_")} - fields
    assert not unknown, f"not mqctl settings (typos?): {sorted(unknown)}"


# -- the compose file as local processes ---------------------------------------------


@dataclass
class LocalSystem:
    redis: RedisServer
    services: dict[str, Service]
    envs: dict[str, dict[str, str]]


def local_value(value: str, redis_url: str, ports: dict[int, int]) -> str:
    """A compose environment value as it must read here: the Redis service's address becomes
    the private Redis, a loopback URL on a container port becomes the mapped host port."""
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError:
        return value
    if url.scheme in ("redis", "rediss") and url.hostname == "redis":
        local = urlsplit(redis_url)
        return urlunsplit((url.scheme, local.netloc, url.path, url.query, url.fragment))
    if url.hostname in ("127.0.0.1", "localhost") and port in ports:
        return urlunsplit((url.scheme, f"{url.hostname}:{ports[port]}", url.path, url.query, url.fragment))
    return value


def local_redis(compose: dict[str, Any]) -> RedisServer:
    """A private redis-server started with the compose Redis service's own command line."""
    command = compose["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    return RedisServer(free_port(), extra=list(command[1:]))


@pytest.fixture
def local_system(compose: dict[str, Any], start_service: Callable[..., Service]) -> Iterator[LocalSystem]:
    """Redis, service-a and service-b from docker-compose.yml, as processes on free ports."""
    server = local_redis(compose)
    server.start()
    try:
        services: dict[str, Service] = {}
        envs: dict[str, dict[str, str]] = {}
        for name in MQCTL_SERVICES:
            service = compose["services"][name]
            ports = {target: free_port() for target in port_mappings(service)}
            command = list(service["command"])
            port = int(option(command, "--port") or 0)
            # start_service passes --port itself (the mapped one): drop the compose file's.
            at = command.index("--port")
            del command[at : at + 2]
            env = {k: local_value(v, server.url, ports) for k, v in environment(service).items()}
            envs[name] = env
            services[name] = start_service(command[0], *command[1:], env=env, port=ports[port])
        yield LocalSystem(server, services, envs)
    finally:
        server.stop()


def test_compose_redis_command_gives_append_only_redis_that_passes_its_healthcheck(compose: dict[str, Any]) -> None:
    """redis-server accepts the compose command line: AOF on, fsync every second; its
    health check command passes."""
    service = compose["services"]["redis"]
    server = local_redis(compose)
    server.start()
    try:
        client = redis.Redis(port=server.port)
        try:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        finally:
            client.close()
        kind, *check = service["healthcheck"]["test"]
        if shutil.which("redis-cli") is None:
            pytest.fail("redis-cli is not on PATH: install it (apt-get install redis-tools).")
        # The check runs inside the Redis container, where redis-cli's default port is the server's.
        if kind == "CMD-SHELL":
            argv = ["sh", "-c", check[0].replace("redis-cli", f"redis-cli -p {server.port}")]
        else:
            argv = [check[0], "-p", str(server.port), *check[1:]]
        assert subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0
    finally:
        server.stop()


async def test_compose_services_deliver_a_message_from_a_to_b(local_system: LocalSystem) -> None:
    """As compose runs them: a message published to service-a arrives at a WebSocket client of
    service-b, through the Redis service, and its ack is taken."""
    a, b = local_system.services["service-a"], local_system.services["service-b"]
    async with connect(b.ws) as ws:
        async with asyncio.timeout(10):
            while orjson.loads(await ws.recv()).get("event") != "subscribed":
                pass
        async with httpx.AsyncClient(base_url=a.http) as client:
            response = await client.post("/messages", json={"type": "note", "content": "through compose"})
            assert response.status_code == 202, response.text
            message_id = response.json()["id"]
            async with asyncio.timeout(10):
                while "id" not in (frame := orjson.loads(await ws.recv())):
                    pass
            assert (frame["id"], frame["type"], frame["content"], frame["attempt"]) == (
                message_id,
                "note",
                "through compose",
                1,
            )
            await ws.send(orjson.dumps({"ack": frame["id"]}).decode())
            assert (await client.get("/ready")).status_code == 200
    # The services used the private Redis named by the compose file, and the ack reached it.
    client = redis.Redis(port=local_system.redis.port)
    try:
        stream = "mqctl:{messages}:stream"
        assert client.exists(stream) == 1
        wait_for(lambda: client.xpending(stream, "default")["pending"] == 0, 10, "the ack to reach Redis")
    finally:
        client.close()


def test_image_healthcheck_passes_for_each_compose_service(local_system: LocalSystem) -> None:
    """The Dockerfile's HEALTHCHECK, with each service's compose environment, finds it healthy."""
    healthcheck = read_dockerfile()[-1].last("HEALTHCHECK")
    assert healthcheck is not None
    _, argv = healthcheck.healthcheck()
    assert argv is not None and argv[0] == "python"
    for name, env in local_system.envs.items():
        result = subprocess.run(
            [sys.executable, *argv[1:]],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert result.returncode == 0, f"{name}: {result.stderr}"
