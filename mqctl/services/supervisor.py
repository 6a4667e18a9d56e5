"""One service in several processes on one listening socket (``mqctl serve-a --workers N``).

A Python process runs its event loop on one core; past that, a service scales by processes.
The supervisor binds the address once and starts ``workers`` processes (spawned, not
forked: no event loop, broker connection or lock is inherited half-used); each accepts on the
shared socket and runs the service as ``serve`` does, with its own broker connection. The
kernel hands each new connection to one of the processes waiting in ``accept``.

Signals: the workers run in sessions of their own, so Ctrl+C reaches the supervisor alone; it
passes each SIGINT or SIGTERM on to every worker as SIGTERM (the first: a graceful stop; a
second: stop now) and waits for them. A worker that dies on its own is replaced, one second
later at the soonest. A worker whose supervisor dies stops itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

log = logging.getLogger(__name__)

RESTART_AFTER_S = 1.0
"""A worker that died is replaced no sooner than this after it was started."""
STOP_WAIT_S = 30.0
"""How long the supervisor waits for its workers to stop before it kills them."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` that spawned processes can accept on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    sock.set_inheritable(True)
    return sock


def supervise(target: Callable[[socket.socket], None], sock: socket.socket, workers: int) -> int:
    """Run ``target(sock)`` in ``workers`` processes until SIGINT/SIGTERM; the exit code.

    ``target`` must be picklable (a module-level function, or a ``functools.partial`` of one
    with picklable arguments): each process is spawned and gets it by pickle.
    """
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()

    def start(slot: int) -> BaseProcess:
        process = context.Process(
            target=_worker, args=(target, sock, os.getpid()), name=f"mqctl-worker-{slot}", daemon=False
        )
        process.start()
        log.info("Worker %d started (pid %d)", slot, process.pid)
        return process

    def forward(signum: int, _frame: object) -> None:
        stop.set()
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)

    processes: list[BaseProcess] = []
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        started_at: list[float] = []
        for slot in range(workers):
            processes.append(start(slot))
            started_at.append(time.monotonic())
        while not stop.wait(0.2):
            for slot, process in enumerate(processes):
                if process.exitcode is None or stop.is_set():
                    continue
                if time.monotonic() - started_at[slot] < RESTART_AFTER_S:
                    continue
                log.warning(
                    "Worker %d (pid %d) exited with code %s; starting another", slot, process.pid, process.exitcode
                )
                processes[slot] = start(slot)
                started_at[slot] = time.monotonic()
        deadline = time.monotonic() + STOP_WAIT_S
        for process in processes:
            process.join(max(deadline - time.monotonic(), 0.0))
        for process in processes:
            if process.exitcode is None:
                log.warning("Worker pid %d did not stop within %g s; killing it", process.pid, STOP_WAIT_S)
                process.kill()
                process.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    failed = [p.exitcode for p in processes if p.exitcode not in (0, -signal.SIGTERM)]
    return 1 if failed else 0


def _worker(target: Callable[[socket.socket], None], sock: socket.socket, supervisor_pid: int) -> None:
    os.setsid()  # Ctrl+C goes to the supervisor, which passes it on once

    def orphaned() -> None:
        while os.getppid() == supervisor_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=orphaned, name="mqctl-supervisor-watch", daemon=True).start()
    target(sock)
