#!/usr/bin/env python3
"""The container check: docker-compose.yml and the Dockerfile, run for real.

    python3 scripts/container_check.py          # from the project's root, in its venv

Builds the images and starts the compose file's containers, the nats profile's too, under a
private project name (host ports chosen free, so a running `mqctl up` is not in the way),
waits until all six report healthy, checks that the services and NATS run as a non-root uid,
posts a message to each Service A (on Redis, on NATS) and receives it from its Service B over
WebSocket, then removes everything it made (`down -v`). Exit status: 0 passed, 1 failed (with
the containers' logs), 77 skipped because no Docker engine answers here (one loud line says
so). `.ci/run` runs it through the pytest test marked `container` after
`../shared/tools/container-stand-ins` (where no registry is reachable) has made the base images.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from tests.servers import free_port  # noqa: E402

SKIPPED = 77
BUILD_TIMEOUT_S = 900
HEALTHY_TIMEOUT_S = 180
SERVICES = {"redis", "service-a", "service-b", "nats", "service-a-nats", "service-b-nats"}
HOST_PORTS = ("MQCTL_A_HOST_PORT", "MQCTL_B_HOST_PORT", "MQCTL_NATS_A_HOST_PORT", "MQCTL_NATS_B_HOST_PORT")


class CheckFailed(Exception):
    """The check ran and something was wrong; the message says what."""


def run(argv: list[str], *, timeout_s: float = 60, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise CheckFailed(
            f"`{' '.join(argv)}` exited with {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done.stdout


def compose_command() -> list[str] | None:
    """`docker compose` (v2) where the plugin is installed, else the legacy `docker-compose`."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def engine_problem() -> str | None:
    """Why no check can run here, or None when a Docker engine and compose answer."""
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        return "no Docker engine answers (`docker info` failed)"
    if compose_command() is None:
        return "neither `docker compose` nor `docker-compose` is installed"
    return None


def service(container: dict[str, Any]) -> str:
    """The compose service a `docker inspect`ed container belongs to."""
    return str(container["Config"]["Labels"]["com.docker.compose.service"])


def wait_healthy(compose: list[str], env: dict[str, str]) -> dict[str, str]:
    """{compose service: container id} once every container of SERVICES reports healthy."""
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        ids = run([*compose, "ps", "-q"], env=env).split()
        if ids:
            inspected = json.loads(run(["docker", "inspect", *ids]))
            states = {
                c["Config"]["Labels"]["com.docker.compose.service"]: (c["State"].get("Health") or {}).get(
                    "Status", "none"
                )
                for c in inspected
            }
            if set(states) == SERVICES and all(s == "healthy" for s in states.values()):
                return {service(c): c["Id"] for c in inspected}
            if any(s == "unhealthy" for s in states.values()) or any(not c["State"]["Running"] for c in inspected):
                raise CheckFailed(f"A container is unhealthy or stopped: {states}")
        time.sleep(1)
    raise CheckFailed(f"Not all {len(SERVICES)} containers were healthy within {HEALTHY_TIMEOUT_S} s: {states}")


def process_uid(container: str) -> int:
    """The real uid of the container's main process (PID 1 inside it)."""
    status = run(["docker", "exec", container, "cat", "/proc/1/status"])
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))


def round_trip(a_port: int, b_port: int) -> str:
    """Post one message to Service A and receive it from Service B over WebSocket; its id."""
    topic, content = "container-check", f"hello from {uuid.uuid4().hex}"
    with connect(f"ws://127.0.0.1:{b_port}/ws?topic={topic}&group=check", open_timeout=10) as ws:
        subscribed = json.loads(ws.recv(timeout=10))
        if subscribed.get("event") != "subscribed":
            raise CheckFailed(f"Service B's first frame was not the subscription: {subscribed}")
        response = httpx.post(
            f"http://127.0.0.1:{a_port}/messages",
            json={"topic": topic, "type": "check", "content": content},
            timeout=10,
        )
        if response.status_code != 202:
            raise CheckFailed(f"POST /messages answered {response.status_code}: {response.text}")
        message_id = response.json()["id"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if frame.get("id") == message_id:
                if frame.get("content") != content:
                    raise CheckFailed(f"Service B delivered {frame} for the message posted as {content!r}")
                ws.send(json.dumps({"ack": [message_id]}))
                return str(message_id)
        raise CheckFailed(f"Service B did not deliver message {message_id} within 15 s")


def main() -> int:
    problem = engine_problem()
    if problem is not None:
        print(f"CONTAINER CHECK SKIPPED: {problem}; docker-compose.yml and the Dockerfile were NOT run.", flush=True)
        return SKIPPED
    compose_base = compose_command()
    assert compose_base is not None
    project = f"mqctl-check-{uuid.uuid4().hex[:8]}"
    ports = {name: free_port() for name in HOST_PORTS}
    env = {**os.environ, **{name: str(port) for name, port in ports.items()}}
    compose = [*compose_base, "--project-name", project, "--file", str(ROOT / "docker-compose.yml")]
    compose += ["--profile", "nats"]
    started = time.monotonic()
    try:
        run([*compose, "up", "--detach", "--build"], timeout_s=BUILD_TIMEOUT_S, env=env)
        built_s = time.monotonic() - started
        containers = wait_healthy(compose, env)
        healthy_s = time.monotonic() - started
        uids = {name: process_uid(containers[name]) for name in sorted(SERVICES - {"redis"})}
        if any(uid == 0 for uid in uids.values()):
            raise CheckFailed(f"A service runs as root: {uids}")
        on_redis = round_trip(ports["MQCTL_A_HOST_PORT"], ports["MQCTL_B_HOST_PORT"])
        on_nats = round_trip(ports["MQCTL_NATS_A_HOST_PORT"], ports["MQCTL_NATS_B_HOST_PORT"])
    except (CheckFailed, subprocess.TimeoutExpired, OSError, TimeoutError, ValueError, KeyError) as exc:
        logs = subprocess.run([*compose, "logs", "--no-color", "--tail", "60"], capture_output=True, text=True, env=env)
        print(f"CONTAINER CHECK FAILED: {exc}\n--- logs:\n{logs.stdout[-6000:]}{logs.stderr[-2000:]}", flush=True)
        return 1
    finally:
        subprocess.run([*compose, "down", "--volumes", "--remove-orphans"], capture_output=True, env=env, timeout=120)
    print(
        f"container check passed: built and up in {built_s:.0f} s, all {len(SERVICES)} healthy at "
        f"{healthy_s:.0f} s, non-root uids {sorted(set(uids.values()))}; on Redis message {on_redis}, on NATS "
        f"message {on_nats} posted to Service A and received from Service B; removed."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
