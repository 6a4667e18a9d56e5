"""A private Redis Cluster for tests: ``redis-server --cluster-enabled yes`` nodes on free
loopback ports, joined by ``redis-cli --cluster create``, each stopped by its PID.

    cluster = RedisCluster(masters=3, replicas=0, workdir=tmp)
    cluster.start()          # a few seconds: the nodes, the join, then every node says cluster_state:ok
    cluster.url              # redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...
    cluster.kill(port)       # SIGKILL one node (a failover test)
    cluster.stop()           # every node, by PID

Nodes use ``cluster-node-timeout`` of ``node_timeout_ms`` so a failover completes in a few
seconds. Nothing is persisted; the work directory holds only the nodes' cluster configs.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

HOW_TO_GET_REDIS = (
    "The cluster tests start their own Redis Cluster from redis-server and redis-cli on PATH; "
    "install them (e.g. `apt-get install -y redis-server`), or deselect them with -m 'not cluster'."
)


class ClusterStartError(RuntimeError):
    """The cluster could not be started; the message says why and what to do."""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_node_ports(count: int) -> list[int]:
    """``count`` ports P that are free with their cluster bus port P + 10000."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < 55000 and port not in ports and _port_free(port + 10000):
            ports.append(port)
    return ports


def _command(port: int, *args: str, timeout_s: float = 2.0) -> str:
    """One command to one node with redis-cli; '' if the node does not answer."""
    try:
        done = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout


@dataclass
class RedisCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each."""

    workdir: Path
    masters: int = 3
    replicas: int = 0
    node_timeout_ms: int = 1000
    ports: list[int] = field(default_factory=list)
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self, timeout_s: float = 30.0) -> None:
        """Start every node, join them, and wait until every node reports ``cluster_state:ok``."""
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise ClusterStartError(f"redis-server or redis-cli is not on PATH. {HOW_TO_GET_REDIS}")
        count = self.masters * (1 + self.replicas)
        self.ports = free_node_ports(count)
        try:
            for port in self.ports:
                self._start_node(server, port)
            deadline = time.monotonic() + timeout_s
            for port in self.ports:
                while _command(port, "ping").strip() != "PONG":
                    self._check_alive(port, deadline)
                    time.sleep(0.02)
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            created = subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
            if created.returncode != 0:
                raise ClusterStartError(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")
            self.wait_until_ok(deadline - time.monotonic())
        except BaseException:
            self.stop()
            raise

    def _start_node(self, server: str, port: int) -> None:
        node_dir = self.workdir / f"node-{port}"
        node_dir.mkdir(parents=True, exist_ok=True)
        args = [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(node_dir),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            f"nodes-{port}.conf",
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            # A replica whose link looked stale on a loaded machine would otherwise refuse to
            # fail over ("data too old"), and the cluster would stay down: always try.
            "--cluster-replica-validity-factor",
            "0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(node_dir / "redis.log"),
        ]
        self.processes[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _check_alive(self, port: int, deadline: float) -> None:
        process = self.processes.get(port)
        if process is not None and process.poll() is not None:
            log = self.workdir / f"node-{port}" / "redis.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise ClusterStartError(f"redis-server on port {port} exited with {process.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            raise ClusterStartError(f"The cluster node on port {port} did not become ready in time.")

    def wait_until_ok(self, timeout_s: float = 30.0) -> None:
        """Wait until every running node reports ``cluster_state:ok`` and knows every master."""
        deadline = time.monotonic() + timeout_s
        for port in self.running_ports():
            while True:
                info = _command(port, "cluster", "info")
                if "cluster_state:ok" in info and f"cluster_size:{self.masters}" in info:
                    break
                self._check_alive(port, deadline)
                time.sleep(0.05)

    def running_ports(self) -> list[int]:
        return [port for port, process in self.processes.items() if process.poll() is None]

    def master_ports(self) -> list[int]:
        """Ports of the nodes that are masters now (as a running node sees it)."""
        running = self.running_ports()
        if not running:
            return []
        masters = []
        for line in _command(running[0], "cluster", "nodes").splitlines():
            parts = line.split()
            if len(parts) > 2 and "master" in parts[2] and "fail" not in parts[2]:
                masters.append(int(parts[1].split("@")[0].rsplit(":", 1)[1]))
        return sorted(masters)

    def slot_owner(self, slot: int) -> int:
        """The port of the master that serves ``slot``."""
        running = self.running_ports()
        for line in _command(running[0], "cluster", "nodes").splitlines():
            parts = line.split()
            if len(parts) > 8 and "master" in parts[2] and "fail" not in parts[2]:
                for part in parts[8:]:
                    low, _, high = part.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low):
                        return int(parts[1].split("@")[0].rsplit(":", 1)[1])
        raise LookupError(f"No master serves slot {slot}.")

    def describe(self) -> str:
        """CLUSTER NODES and CLUSTER INFO as each running node sees them, for a failure message."""
        return "\n".join(
            f"--- node {port}:\n{_command(port, 'cluster', 'nodes')}{_command(port, 'cluster', 'info')[:200]}"
            for port in self.running_ports()
        )

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (no chance to hand over: a crash)."""
        process = self.processes[port]
        process.kill()
        process.wait(10)

    def restart(self, port: int) -> None:
        """Start the node on ``port`` again with its cluster config: it rejoins (a replica, if it was
        failed over)."""
        server = shutil.which("redis-server")
        assert server is not None
        self._start_node(server, port)
        deadline = time.monotonic() + 10
        while _command(port, "ping").strip() != "PONG":
            self._check_alive(port, deadline)
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop every node by PID: SIGTERM, then SIGKILL if it lingers."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
