"""Real processes for integration tests: a private redis-server, and the services run by
the ``mqctl`` command itself, each on a free loopback port, stopped by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"Timed out after {timeout_s} s waiting for {what}.")


@dataclass
class RedisServer:
    """A redis-server owned by one test: start, kill and restart it on the same port."""

    port: int
    extra: list[str] = field(default_factory=list)
    dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="mqctl-redis-"))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH: install it (apt-get install redis-server).")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", ""]
        if "--appendonly" not in self.extra:
            args += ["--appendonly", "no"]
        self.process = subprocess.Popen([*args, *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.answers, 10, f"redis-server on port {self.port}")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server on a free port (no persistence), stopped by PID afterwards."""
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


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
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def start_service(tmp_path: os.PathLike[str]) -> Iterator[Callable[..., Service]]:
    """Start ``mqctl <command> --port P ...`` (serve-a, serve-b) and wait until /health answers."""
    started: list[Service] = []

    def start(command: str, *args: str, env: dict[str, str] | None = None, port: int | None = None) -> Service:
        port = port or free_port()
        log_path = os.path.join(str(tmp_path), f"{command}-{port}.log")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "mqctl", command, "--port", str(port), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
            )
        service = Service(command, port, process, log_path)
        started.append(service)
        try:
            wait_for(lambda: healthy(service.http) or process.poll() is not None, 20, f"{command} on {port}")
        except TimeoutError:
            service.stop()
            raise AssertionError(f"{command} did not start:\n{service.log()}") from None
        if process.poll() is not None:
            raise AssertionError(f"{command} exited with {process.returncode}:\n{service.log()}")
        return service

    yield start
    for service in started:
        with contextlib.suppress(Exception):
            service.stop()
