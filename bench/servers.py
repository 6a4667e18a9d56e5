"""Processes for the service benchmarks: a private redis-server (``tests.servers``, as the
tests start it) and HTTP/WebSocket servers.

Each runs as a subprocess on a loopback port nothing else can take and is stopped by its PID
(never by name). ``cpu_s(pid)`` reads a process's CPU time from ``/proc``, so a benchmark can say
how much CPU the server spent per message as well as how fast it went.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))  # tests.servers: the ports and the private redis-server, shared with the tests

from tests.servers import RedisServer, free_port, stop_process, wait_for  # noqa: E402

__all__ = ["RedisServer", "Server", "cpu_s", "environment", "free_port", "mqctl_argv", "publish_report", "uvicorn_argv"]
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (its threads included)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class Server:
    """One server subprocess (uvicorn or ``mqctl``), ready once ``GET <health>`` answers 200."""

    name: str
    argv: Sequence[str]
    port: int
    health: str = "/health"
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: str = ""

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 30) -> Server:
        fd, self.log_path = tempfile.mkstemp(prefix=f"mqctl-bench-{self.name}-", suffix=".log")
        with os.fdopen(fd, "wb") as log:
            self.process = subprocess.Popen(
                list(self.argv), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}, cwd=ROOT
            )
        try:
            wait_for(self._ready, timeout_s, f"{self.name} on port {self.port}")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{self.name} did not start; its log:\n{self.log()}") from None
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}; its log:\n{self.log()}")
        try:
            return httpx.get(self.http + self.health, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        with contextlib.suppress(OSError), open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()[-4000:]
        return ""

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, signal.SIGINT)
            self.process = None
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)


def uvicorn_argv(app: str, port: int, *extra: str) -> list[str]:
    """A single uvicorn process serving the factory ``module:function`` from bench/, access log off;
    ``extra`` goes to uvicorn's command line."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--factory",
        "--app-dir",
        str(BENCH_DIR),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
        *extra,
    ]


_UVLOOP_SHIM = (
    "import asyncio, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
    "from mqctl.cli import main; sys.argv[0] = 'mqctl'; main()"
)


def mqctl_argv(*args: str, uvloop: bool = False) -> list[str]:
    """``mqctl <args>`` run with this interpreter; with ``uvloop``, uvloop's event loop policy is
    installed first, so the command's ``asyncio.run`` runs on uvloop (as uvicorn's own CLI does)."""
    if uvloop:
        return [sys.executable, "-c", _UVLOOP_SHIM, *args]
    return [sys.executable, "-m", "mqctl", *args]


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def mqctl_revision() -> str:
    """The commit of the mqctl under test, with ``+dirty`` when mqctl/ has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", "mqctl"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def redis_version() -> str:
    """The version of the redis-server on PATH (the one ``RedisServer`` runs)."""
    binary = shutil.which("redis-server") or "redis-server"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return next((part.split("=", 1)[1] for part in out.split() if part.startswith("v=")), out.strip())


def environment(*dists: str) -> dict[str, str]:
    """Machine and versions, for the report."""
    env = {
        "python": platform.python_version(),
        "nproc": str(len(os.sched_getaffinity(0))),
        "platform": platform.platform(),
        "mqctl": f"{version('mqctl')} ({mqctl_revision()})",
    }
    for dist in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "redis", "hiredis", *dists):
        env[dist] = version(dist)
    env["redis_server"] = redis_version()
    return env


def publish_report(rep: dict, render, started: float, *, as_json: bool) -> int:
    """Stamp a benchmark's report with its command and wall time, then print it:
    the table on stdout, or (``--json``) the table on stderr and the JSON on stdout."""
    import json
    import sys

    rep["command"] = " ".join(["python3", *sys.argv])
    rep["wall_s"] = round(time.perf_counter() - started, 1)
    if as_json:
        render(rep, lambda line: print(line, file=sys.stderr))
        print(json.dumps(rep, indent=2))
    else:
        render(rep, print)
    return 0
