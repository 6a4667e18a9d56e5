"""Service B: deliver messages to WebSocket clients.

    GET  /ws       WebSocket: messages of a topic, shared by a group or broadcast to all
    GET  /health   the process is alive   -> 200 {"status": "ok"}
    GET  /ready    the broker answers and every group served still exists
                   -> 200 {"status": "ready"} or 503 {"status": "unavailable", "detail"}
    GET  /metrics  Prometheus metrics (see ``mqctl.services.observability`` and ``metrics.py`` here)
    GET  /         a small live viewer page (broadcast mode; ?topic=...&type=...)

Query parameters of ``/ws``:

    topic=NAME          the topic (default ``settings.topic``)
    type=T              keep messages of these types; repeat it or separate with commas
    header=NAME:VALUE   keep messages whose header NAME is VALUE (``header=NAME``: has NAME).
                        Values of one name are alternatives; different names must all match,
                        and so must the type filter
    mode=group          (default) each message to one connection of the group, acknowledged
    mode=broadcast      every message to every connection, no acknowledgement
    group=NAME          the group in group mode (default ``settings.group``)
    auto_ack=true       acknowledge each message once it is written to the socket (default false)
    frames=batch        each message frame is a JSON array of the messages that were ready, in
                        order (at most ``batch_max``; one message is an array of one); events
                        stay single objects. ``frames=message`` (the default): one a frame
    batch_max=N         with ``frames=batch``: most messages in one frame (1 to 1000, default 100)
    last_id=ID          broadcast mode only: first send what was retained after ID (a resume);
                        ``0-0`` means everything retained. On a partitioned topic, message ids are
                        ``P:MS-SEQ`` and a resume names the last id seen of each partition:
                        ``0:MS-SEQ,1:MS-SEQ,...`` (a partition left out resumes from the oldest
                        time named: perhaps a repeat, never a gap; ``mqctl.clients.Listener``
                        keeps this position by itself)
    token=SECRET        when ``settings.token`` is set (or send ``Authorization: Bearer SECRET``)

Frames from the server, one JSON object each; a connection that is accepted first gets ``subscribed``:

    {"event": "subscribed", "topic", "mode", "group" (null in broadcast), "filter" (repr or null)}
    {"event": "history_lost", "detail", "first_id"}   a resume from before the oldest retained message,
                                                      or from past the newest (the topic was deleted since)
    {"id", "type", "content", "headers", "attempt", "topic"}   a message (broadcast: attempt 1)
    [{"id", ...}, {"id", ...}]                        frames=batch: messages in order
    {"error": CODE, "detail": SENTENCE}               the connection stays open, except as noted

    error               when
    invalid_parameter   a bad query parameter (then closed with 1008)
    unauthorized        the token is missing or wrong (then closed with 1008)
    invalid_json        a text frame that is not JSON
    unknown_frame       JSON that is not an ack or a nack
    binary_frame        a binary frame
    unknown_id          an ack/nack for no delivery this connection holds unacknowledged
    ack_failed          the broker did not take an ack/nack (the message will come again)

Frames from the client (group mode; ignored in broadcast mode):

    {"ack": "ID"} or {"ack": ["ID", ...]}     done with these messages
    {"nack": "ID"} or {"nack": ["ID", ...]}   give them back for redelivery after a backoff

Close codes:

    1001  the service is shutting down; reconnect (group mode gets its unacknowledged messages again)
    1008  an invalid query parameter or a missing/wrong token; the error frame says which
    1009  a frame over 64 KiB
    1011  an internal error or the service not started
    1012  uvicorn's own close on shutdown, when the app is served by other means than
          ``mqctl.services.serving.serve`` (which closes them with 1001 first); reconnect
    4001  "send buffer full: client too slow; reconnect to resume": the outbox
          (``settings.ws_send_buffer`` frames) stayed full for 5 s (group) or overflowed (broadcast)

Group mode: the service reads each (topic, group) once, however many clients it has, and
gives each message to one client of the group whose filter matches and whose outbox has
room (round robin), waiting while none has room. A message that no connected client of the
group wants is acknowledged for the group: filters choose among the group's clients, they
do not keep messages for a client that connects later. What a connection was sent and did
not acknowledge goes back to the group at once when it disconnects (``nack(0)``: another
client gets it with ``attempt + 1``), and after ``settings.ack_timeout_s`` if it stays
connected without acknowledging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.datastructures import QueryParams

from mqctl.config import Settings
from mqctl.core.broker import Broker
from mqctl.core.errors import ConfigError, MQError
from mqctl.core.filters import All, Filter, by_header, by_type
from mqctl.core.names import check_name
from mqctl.services.delivery.connection import Connection, Mode
from mqctl.services.delivery.frames import INTERNAL_ERROR, POLICY_VIOLATION, close_quietly, close_reason, error_frame
from mqctl.services.delivery.hub import Hub
from mqctl.services.delivery.metrics import DeliveryMetrics
from mqctl.services.observability import Observe, add_metrics_route
from mqctl.services.startup import broker_for, check_broker

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0
DEFAULT_BATCH_MAX = 100
MAX_BATCH_MAX = 1000
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class InvalidParameter(ConfigError):
    """A query parameter of ``/ws`` that Service B cannot use."""

    def __init__(self, name: str, detail: str) -> None:
        self.name = name
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class Params:
    """What a ``/ws`` client asked for."""

    topic: str
    mode: Mode
    group: str | None
    filter: Filter | None
    auto_ack: bool
    last_id: str | None
    batch_max: int | None = None
    """With ``frames=batch``: most messages in one frame; None: a frame per message."""


def parse_params(
    query: QueryParams, settings: Settings, check_position: Callable[[str], object] = lambda position: position
) -> Params:
    """The ``/ws`` query parameters as ``Params``; raises ``InvalidParameter``. ``check_position``
    is the broker's (positions are its own)."""
    topic = _checked("topic", query.get("topic") or settings.topic)
    mode = query.get("mode") or "group"
    if mode not in ("group", "broadcast"):
        raise InvalidParameter("mode", f"Unknown mode {mode!r}; expected 'group' or 'broadcast'.")
    auto_ack = (query.get("auto_ack") or "false").lower()
    if auto_ack not in _TRUE | _FALSE:
        raise InvalidParameter("auto_ack", f"auto_ack must be true or false, got {query.get('auto_ack')!r}.")
    batch_max = _batch_max(query)
    last_id = query.get("last_id")
    if last_id is not None:
        if mode != "broadcast":
            raise InvalidParameter(
                "last_id",
                "last_id resumes a broadcast; use mode=broadcast (a group resumes where it left off by itself).",
            )
        try:
            check_position(last_id)
        except ConfigError as exc:
            raise InvalidParameter("last_id", f"Invalid last_id: {exc}") from exc
    return Params(
        topic=topic,
        mode="broadcast" if mode == "broadcast" else "group",
        group=_checked("group", query.get("group") or settings.group) if mode == "group" else None,
        filter=_filter(query),
        auto_ack=auto_ack in _TRUE,
        last_id=last_id,
        batch_max=batch_max,
    )


def _batch_max(query: QueryParams) -> int | None:
    """``frames`` and ``batch_max``: the most messages in one frame, or None for a frame per message."""
    frames = query.get("frames") or "message"
    if frames not in ("message", "batch"):
        raise InvalidParameter("frames", f"Unknown frames {frames!r}; expected 'message' or 'batch'.")
    given = query.get("batch_max")
    if given is None:
        return DEFAULT_BATCH_MAX if frames == "batch" else None
    if frames != "batch":
        raise InvalidParameter("batch_max", "batch_max sizes batched frames; add frames=batch.")
    if not given.isdigit() or not 1 <= int(given) <= MAX_BATCH_MAX:
        raise InvalidParameter(
            "batch_max", f"batch_max must be a whole number from 1 to {MAX_BATCH_MAX}, got {given!r}."
        )
    return int(given)


def _checked(kind: Literal["topic", "group"], value: str) -> str:
    try:
        return check_name(kind, value)
    except ConfigError as exc:
        raise InvalidParameter(kind, str(exc)) from exc


def _filter(query: QueryParams) -> Filter | None:
    types = [t.strip() for value in query.getlist("type") for t in value.split(",") if t.strip()]
    parts: list[Filter] = [by_type(*dict.fromkeys(types))] if types else []
    headers: dict[str, list[str]] = {}
    for value in query.getlist("header"):
        name, colon, wanted = value.partition(":")
        name = name.strip()
        if not name:
            raise InvalidParameter("header", f"Invalid header filter {value!r}; expected NAME:VALUE or NAME.")
        values = headers.setdefault(name, [])  # NAME alone (no values): the header is present
        if colon:
            values.append(wanted)
    for name, values in headers.items():
        parts.append(by_header(name, *dict.fromkeys(values)))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else All(tuple(parts))


def _authorized(websocket: WebSocket, token: str | None) -> bool:
    if token is None:
        return True
    scheme, _, given = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        given = websocket.query_params.get("token") or ""
    return secrets.compare_digest(given.strip().encode(), token.encode())


async def _refuse(websocket: WebSocket, code: int, error: str, detail: str, reason: str) -> None:
    with contextlib.suppress(Exception):  # the client may be gone already
        await websocket.send_text(error_frame(error, detail))
    await close_quietly(websocket, code, reason)


async def unready_reason(broker: Broker, hub: Hub | None) -> str | None:
    """Why this instance should not be sent clients now, or None if it is ready.

    Not ready: the broker does not answer, or a group this instance reads has vanished
    from the broker (deleted by hand); its reader recreates it from now on, so what was
    published in between is not delivered to that group.
    """
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await broker.ping()
            served: dict[str, list[str]] = {}
            for topic, group in hub.served_groups() if hub is not None else ():
                served.setdefault(topic, []).append(group)
            for topic, groups in served.items():
                stats = await broker.stats(topic)
                missing = [g for g in groups if stats.group(g) is None]
                if missing:
                    return (
                        f"Group {missing[0]!r} of topic {topic!r} has vanished from the broker (deleted by hand?); "
                        "its reader recreates it from now on, and messages published meanwhile are not delivered "
                        "to that group."
                    )
    except TimeoutError:
        return f"The broker did not answer within {READY_TIMEOUT_S:g} s."
    except MQError as exc:
        return str(exc) or "The broker does not answer."
    return None


def _viewer_page() -> str:
    return resources.files("mqctl.services.delivery").joinpath("viewer.html").read_text(encoding="utf-8")


@dataclass(slots=True)
class _Runtime:
    broker: Broker | None = None
    hub: Hub | None = None


def create_app(settings: Settings, *, broker: Broker | None = None) -> FastAPI:
    """Service B for ``settings``; nothing connects until the app's lifespan starts.

    The lifespan opens a broker for ``settings.broker_url`` unless ``broker`` is given
    (that one is used and left open). On shutdown every WebSocket is closed with 1001,
    unacknowledged deliveries go back to their groups and every reader stops.
    ``app.state.before_shutdown`` does the WebSocket part; ``server.serve`` awaits it
    before uvicorn's own shutdown, which would close them with 1012.
    """
    runtime = _Runtime()
    page = _viewer_page()
    metrics = DeliveryMetrics(default_topic=settings.topic)
    metrics.watch_hub(lambda: runtime.hub, settings.ws_send_buffer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = broker is None
        active = broker or broker_for(settings)
        runtime.broker, runtime.hub = active, Hub(active, settings, metrics=metrics)
        metrics.broker_gauges.broker = active
        app.state.delivery = runtime.hub
        # In the background (Redis may be down); `mqctl up` checks the broker it shares itself.
        check = asyncio.create_task(check_broker(active, "Service B")) if owned else None
        try:
            yield
        finally:
            if check is not None:
                check.cancel()
            metrics.broker_gauges.broker = None
            hub, runtime.hub = runtime.hub, None
            try:
                await hub.aclose()
            finally:
                if owned:
                    await active.aclose()

    app = FastAPIOffline(  # /docs and /redoc from the package's own assets: no CDN
        title="mqctl Service B",
        description="Deliver messages to WebSocket clients: shared by a group, or broadcast.",
        lifespan=lifespan,
    )
    app.state.metrics = metrics

    async def before_shutdown() -> None:
        # uvicorn closes WebSockets with 1012 before the lifespan ends: close them first, with 1001.
        if runtime.hub is not None:
            await runtime.hub.close_clients()

    app.state.before_shutdown = before_shutdown
    app.add_middleware(Observe, metrics=metrics)
    add_metrics_route(app, metrics)

    @app.get("/health", summary="The process is alive")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="The broker answers and every group served exists", response_model=None)
    async def ready() -> dict[str, str] | JSONResponse:
        detail: str | None = "Service B is not running: its lifespan has not started."
        if runtime.broker is not None:
            detail = await unready_reason(runtime.broker, runtime.hub)
            if detail is None:
                return {"status": "ready"}
            if settings.token:
                detail = detail.replace(settings.token, "***")
            log.warning("Not ready: %s", detail)
        return JSONResponse({"status": "unavailable", "detail": detail}, status_code=503)

    @app.get("/", response_class=HTMLResponse, summary="A live viewer of a topic (broadcast mode)")
    async def viewer(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    @app.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        hub = runtime.hub
        if hub is None:
            detail = "Service B is not running (its lifespan has not started); retry shortly."
            await _refuse(websocket, INTERNAL_ERROR, "unavailable", detail, "service not started; retry shortly")
            return
        if not _authorized(websocket, settings.token):
            detail = "This service needs a token: send 'Authorization: Bearer <token>' or ?token=<token>."
            await _refuse(websocket, POLICY_VIOLATION, "unauthorized", detail, "missing or wrong token")
            return
        try:
            params = parse_params(websocket.query_params, settings, hub.broker.check_position)
        except InvalidParameter as exc:
            reason = str(exc) if len(str(exc).encode()) <= 123 else f"Invalid query parameter {exc.name!r}."
            await _refuse(websocket, POLICY_VIOLATION, "invalid_parameter", str(exc), reason)
            return
        connection = Connection(
            websocket,
            topic=params.topic,
            mode=params.mode,
            group=params.group,
            filter=params.filter,
            auto_ack=params.auto_ack,
            batch_max=params.batch_max,
            capacity=settings.ws_send_buffer,
            counters=metrics.for_connection(params.topic, params.mode, params.group),
        )
        try:
            await connection.run(lambda: hub.join(connection, last_id=params.last_id))
        finally:
            hub.leave(connection)
            if connection.close_code is not None and not connection.client_gone:
                await close_quietly(websocket, connection.close_code, close_reason(connection.close_reason))

    return app
