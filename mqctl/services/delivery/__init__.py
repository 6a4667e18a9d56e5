"""Service B: deliver messages to WebSocket clients (``/ws``). The app is in ``app.py``.

    app.py          routes, the /ws protocol, lifespan, ``create_app(settings)``
    hub.py          the connections of this instance and the pumps that feed them
    pumps.py        one reader of the broker per (topic, group), or per broadcast topic
    connection.py   one WebSocket client: its outbox, writer and reader
    frames.py       what is written to a client: frames, close codes and reasons
    settling.py     acks and nacks asked of the broker for the clients
    metrics.py      Service B's Prometheus metrics
    viewer.html     the live viewer page at ``/``

Imports flow ``frames``, ``metrics`` <- ``settling`` <- ``connection`` <- ``pumps`` <- ``hub`` <- ``app``.
"""

from mqctl.services.delivery.app import create_app

__all__ = ["create_app"]
