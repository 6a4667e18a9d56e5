"""Service A: publish messages over HTTP (``POST /messages``). The app is in ``app.py``.

app.py          routes, lifespan, ``create_app(settings)``
publishing.py   the two POST endpoints on plain Starlette routes
bodies.py       request and response bodies
guard.py        limits on headers and body size, before anything is parsed
problems.py     errors as JSON bodies with their status
metrics.py      Service A's Prometheus metrics
"""

from mqctl.services.ingest.app import create_app

__all__ = ["create_app"]
