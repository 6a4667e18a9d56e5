"""End-to-end load with proof of delivery: ``run(spec) -> Report``. Prints nothing.

Publishers POST to Service A (or call the library directly with ``direct_url``) while
listeners receive from Service B over WebSocket and acknowledge; every message carries
its sequence number, so the report can say exactly what was lost, duplicated or
reordered, and how long each took from publish to receipt.

Each run uses its own topic (``<topic>-<run id>``), so its messages are the only ones in
the group it listens to and nothing is left unacknowledged behind it.

The generator must not be the bottleneck it measures: each worker owns one keep-alive
connection (``http.py`` here), the ceiling is measured on those same connections
before the run, ``rate`` spaces the requests evenly over the workers, latency runs from just
before a POST is written to the receipt of its frame, and the listeners ack each burst of
frames in one frame; they ask for batched frames (``frames=batch``: one parse per frame of many).

    report.py   LoadSpec, Progress, Report
    runner.py   run(spec): publishers, listeners, the accounting
    http.py     a minimal keep-alive HTTP/1.1 client, private to the load test
"""

from mqctl.loadtest.report import LoadSpec, Progress, Report, percentile
from mqctl.loadtest.runner import run

__all__ = ["LoadSpec", "Progress", "Report", "percentile", "run"]
