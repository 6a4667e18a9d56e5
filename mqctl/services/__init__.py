"""The HTTP services, each in its own package, and what they share beside them.

    ingest/          Service A: REST publishing (``create_app``)
    delivery/        Service B: WebSocket delivery (``create_app``)
    startup.py       settings -> broker (``broker_for``) and the one check at start
    observability.py Prometheus metrics both expose and the request id of each request
    serving.py       uvicorn, one or more apps in one process

Imports flow one way: ``ingest`` and ``delivery`` use the shared modules, never each other.
Each ``create_app(settings)`` is a factory; nothing connects until the app's lifespan
starts, so uvicorn runs them with ``factory=True``.
"""
