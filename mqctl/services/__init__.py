"""The HTTP services: ``ingest`` (Service A, REST publishing) and ``delivery`` (Service B).

Each module has a ``create_app(settings)`` factory; nothing connects until the app's
lifespan starts, so uvicorn runs them with ``factory=True``.
"""
