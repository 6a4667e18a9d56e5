"""A private Redis Cluster for tests: ``redis-server --cluster-enabled yes`` nodes on loopback
ports that nothing else can take (``tests.servers.free_port``, bus ports included), joined by
``redis-cli --cluster create``, each stopped by its PID.

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
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import RedisServer, ServerStartError, free_port

BUS_OFFSET = 10_000
"""Redis Cluster's bus port is the node's port + 10000."""

HOW_TO_GET_REDIS = (
    "The cluster tests start their own Redis Cluster from redis-server and redis-cli on PATH; "
    "install them (e.g. `apt-get install -y redis-server`), or deselect them with -m 'not cluster'."
)


class ClusterStartError(RuntimeError):
    """The cluster could not be started; the message says why and what to do."""


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
    nodes: dict[int, RedisServer] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self, timeout_s: float = 30.0) -> None:
        """Start every node, join them, and wait until every node reports ``cluster_state:ok``."""
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise ClusterStartError(f"redis-server or redis-cli is not on PATH. {HOW_TO_GET_REDIS}")
        count = self.masters * (1 + self.replicas)
        self.ports = [free_port(also_offset=BUS_OFFSET) for _ in range(count)]
        deadline = time.monotonic() + timeout_s
        try:
            for port in self.ports:
                self._start_node(port)
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

    def _start_node(self, port: int) -> None:
        node = self.nodes.get(port)
        if node is None:
            node_dir = self.workdir / f"node-{port}"
            node_dir.mkdir(parents=True, exist_ok=True)
            extra = [
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
            ]
            node = self.nodes[port] = RedisServer(port, extra=extra, dir=str(node_dir))
        try:
            node.start()
        except ServerStartError as exc:
            raise ClusterStartError(str(exc)) from exc

    def _check_alive(self, port: int, deadline: float) -> None:
        node = self.nodes.get(port)
        if node is not None and node.process is not None and node.process.poll() is not None:
            raise ClusterStartError(
                f"redis-server on port {port} exited with {node.process.returncode}:\n{node.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise ClusterStartError(f"The cluster node on port {port} did not become ready in time.")

    def wait_until_ok(self, timeout_s: float = 30.0) -> None:
        """Wait until every running node reports ``cluster_state:ok`` and knows every master, and
        (with replicas) every replication link is up: until then a WAIT for a replica times out,
        and a publish with the replica wait is refused before any fault was injected."""
        deadline = time.monotonic() + timeout_s
        for port in self.running_ports():
            while True:
                info = _command(port, "cluster", "info")
                if "cluster_state:ok" in info and f"cluster_size:{self.masters}" in info and self._replicated(port):
                    break
                self._check_alive(port, deadline)
                time.sleep(0.05)

    def _replicated(self, port: int) -> bool:
        """A master has all its replicas online; a replica's link to its master is up."""
        if not self.replicas:
            return True
        info = _command(port, "info", "replication")
        if "role:slave" in info:
            return "master_link_status:up" in info
        online = sum(1 for line in info.splitlines() if line.startswith("slave") and "state=online" in line)
        return online >= self.replicas

    def running_ports(self) -> list[int]:
        return [port for port, node in self.nodes.items() if node.process is not None and node.process.poll() is None]

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
        self.nodes[port].kill()

    def restart(self, port: int) -> None:
        """Start the node on ``port`` again with its cluster config: it rejoins (a replica, if it was
        failed over)."""
        self._start_node(port)

    def stop(self) -> None:
        """Stop every node by PID: SIGTERM, then SIGKILL if it lingers."""
        for node in self.nodes.values():
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes.values():
            node.stop()
