"""Real processes for integration tests: a private redis-server, and the services run by
the ``mqctl`` command itself, each on a free loopback port (``tests.servers``), stopped by PID."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.servers import RedisServer, free_port, stop_process, wait_for


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server on a free port (no persistence), stopped by PID afterwards."""
    with RedisServer() as server:
        yield server


@dataclass
class Service:
    """One ``mqctl`` service process."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: str

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout_s: float = 15) -> int:
        return stop_process(self.process, timeout_s=timeout_s)


def healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Services:
    """Starts ``mqctl <command> --port P ...`` processes (serve-a, serve-b) with their logs in
    ``folder``, each ready once /health answers; ``stop_all`` stops them by PID."""

    folder: Path
    started: list[Service] = field(default_factory=list)

    def start(self, command: str, *args: str, env: dict[str, str] | None = None, port: int | None = None) -> Service:
        port = port or free_port()
        log_path = str(self.folder / f"{command}-{port}.log")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "mqctl", command, "--port", str(port), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
            )
        service = Service(command, port, process, log_path)
        self.started.append(service)
        try:
            wait_for(lambda: healthy(service.http) or process.poll() is not None, 20, f"{command} on {port}")
        except TimeoutError:
            service.stop()
            raise AssertionError(f"{command} did not start:\n{service.log()}") from None
        if process.poll() is not None:
            raise AssertionError(f"{command} exited with {process.returncode}:\n{service.log()}")
        return service

    def stop_all(self) -> None:
        for service in self.started:
            with contextlib.suppress(Exception):
                service.stop()


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start ``mqctl <command> --port P ...`` (serve-a, serve-b) and wait until /health answers."""
    services = Services(tmp_path)
    yield services.start
    services.stop_all()
