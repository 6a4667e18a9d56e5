"""What a load test is asked to do (``LoadSpec``) and what it found (``Progress``, ``Report``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class LoadSpec:
    a_url: str = "http://127.0.0.1:8002"
    b_url: str = "ws://127.0.0.1:8003/ws"
    workers: int = 50
    messages: int | None = 10_000
    duration_s: float | None = None
    rate: float | None = None
    """Target messages per second over all workers (None: as fast as possible)."""
    size: int = 100
    batch: int = 1
    """Messages per request; above 1 uses the batch endpoint."""
    listeners: int = 1
    direct_url: str | None = None
    drain_timeout_s: float = 30.0
    topic: str = "loadtest"
    token: str | None = None
    measure_ceiling: bool = True
    listen_query: str = ""
    """Extra query parameters for the listeners' WebSocket URL (e.g. ``type=x`` to filter)."""
    request_timeout_s: float = 30.0
    """A POST that takes longer is abandoned (its connection closed) and counted as ``timeout``."""


@dataclass(slots=True)
class Progress:
    sent: int = 0
    accepted: int = 0
    received: int = 0
    elapsed_s: float = 0.0


@dataclass(slots=True)
class Report:
    run_id: str
    topic: str
    sent: int
    accepted: int
    errors: dict[str, int]
    received: int
    lost: int
    duplicates: int
    out_of_order: int
    publish_s: float
    total_s: float
    throughput: float
    """Delivered messages per second, first publish to last receipt."""
    accepted_per_s: float
    latency_ms: dict[str, float]
    ceiling_rps: float | None = None
    """The load generator's own request rate against a bare endpoint (GET /health), with the
    same workers on the same connections."""
    listener_reconnects: int = 0
    """Times a listener lost Service B (restarted, killed) and connected again."""
    lost_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by nearest rank; 0.0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]
