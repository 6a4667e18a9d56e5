"""Service A: publish messages over HTTP.

    POST /messages         one message            -> 202 {"id", "status": "accepted", "topic"}
    POST /messages/batch   1 to 1000, all or none -> 202 {"ids", "status", "count", "topic"}
    GET  /health           the process is alive   -> 200 {"status": "ok"}
    GET  /ready            the broker answers     -> 200 {"status": "ready"} or 503
    GET  /metrics          Prometheus metrics (see ``mqctl.services.observability`` and ``metrics.py`` here)

Every response carries ``X-Request-ID`` (the client's, if it sent a sane one), and so does
every log line written while the request is handled.

A 202 means the broker has stored the message. Every error is JSON
``{"error": <code>, "detail": <sentence>, ...}``:

    status  error                 when
    400     invalid_request       the body is not valid (UTF-8) JSON
    401     unauthorized          ``settings.token`` is set and the request does not carry it
    413     request_too_large     the body is over ``settings.max_body_bytes`` (refused while streaming)
    413     message_too_large     a message is over the broker's ``max_message_bytes``
    415     invalid_request       the Content-Type is not JSON
    431     headers_too_large     over ``MAX_HEADERS`` headers or ``MAX_HEADER_BYTES`` bytes of them
    422     invalid_request       a field is missing, empty, of the wrong type or unknown (see ``fields``)
    422     invalid_message       the library refuses the message (``mqctl.InvalidMessage``)
    503     queue_full            the topic's backlog is at ``max_backlog``; ``Retry-After`` set
    503     broker_out_of_memory  Redis refuses writes; ``Retry-After`` set
    503     broker_unavailable    the broker did not answer in time; ``Retry-After`` set
    503     broker_refused        the broker answers but refuses (credentials, ACL, protected mode...)
    500     internal_error        anything else; logged with its traceback, never shown

The two POST endpoints are served by plain Starlette routes (``mqctl.services.ingest.publishing``);
FastAPI routes of the same paths describe them in ``/openapi.json`` and ``/docs``. The bodies
are in ``mqctl.services.ingest.bodies``, the errors in ``mqctl.services.ingest.problems``, the header and
body limits in ``mqctl.services.ingest.guard``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mqctl.config import Settings
from mqctl.core.broker import Broker
from mqctl.core.errors import MQError
from mqctl.core.names import check_name
from mqctl.services.ingest.bodies import (
    EXAMPLE_MESSAGE,
    Accepted,
    BatchAccepted,
    BatchRequest,
    Health,
    NotReady,
    PublishRequest,
    Ready,
)
from mqctl.services.ingest.guard import MAX_HEADER_BYTES, MAX_HEADERS, Guard
from mqctl.services.ingest.metrics import IngestMetrics
from mqctl.services.ingest.problems import (
    MAX_DETAIL,
    ErrorResponse,
    Problem,
    http_problem,
    redactor,
    shorten,
    validation_problem,
)
from mqctl.services.ingest.publishing import (
    JSON_TYPE,
    PublishHandler,
    Served,
    bearer,
    broker_of,
    idempotency_key,
)
from mqctl.services.observability import Observe, add_metrics_route
from mqctl.services.startup import broker_for, check_broker
from mqctl.version import __version__

log = logging.getLogger(__name__)

# -- the app -------------------------------------------------------------------------


def _error_doc(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": ErrorResponse, "description": description}
    if retry_after:
        doc["headers"] = {
            "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
        }
    return doc


_PUBLISH_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error_doc("`invalid_request`: the body is not valid JSON."),
    413: _error_doc(
        "`request_too_large`: the body is over the service's max_body_bytes; "
        "`message_too_large`: a message is over the broker's max_message_bytes."
    ),
    415: _error_doc("`invalid_request`: the Content-Type is not application/json."),
    431: _error_doc(f"`headers_too_large`: over {MAX_HEADERS} headers, or over {MAX_HEADER_BYTES} bytes of them."),
    422: _error_doc(
        "`invalid_request`: a field is missing, empty, of the wrong type or unknown (see `fields`); "
        "`invalid_message`: the broker refuses the message."
    ),
    500: _error_doc("`internal_error`: an unexpected error, logged by the service."),
    503: _error_doc(
        "`queue_full`, `broker_out_of_memory`, `broker_unavailable` or `broker_refused` (an operator must act "
        "on the broker): retry after `Retry-After` seconds.",
        retry_after=True,
    ),
}
_AUTH_ERROR: dict[int | str, dict[str, Any]] = {
    401: _error_doc("`unauthorized`: the bearer token is missing or wrong."),
}
_PUBLISH_EXAMPLES: dict[str, Any] = {
    "order": {"summary": "A JSON object as content", "value": EXAMPLE_MESSAGE},
    "text": {"summary": "A string as content, no headers", "value": {"type": "note", "content": "hello"}},
}
_BODY_MODELS: tuple[type[BaseModel], ...] = (PublishRequest, BatchRequest)


def _request_body_doc(model: type[BaseModel], **media: Any) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of an endpoint that reads ``model`` itself (see ``_BODY_MODELS``)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {JSON_TYPE: {"schema": schema, **media}}}}


_PUBLISH_DOC: dict[str, Any] = {
    **_request_body_doc(PublishRequest, examples=_PUBLISH_EXAMPLES),
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": idempotency_key.json_schema(),
            "description": idempotency_key.json_schema()["description"],
        }
    ],
}
_PUBLISH_BATCH_DOC = _request_body_doc(BatchRequest)


def _body_schemas() -> dict[str, Any]:
    """The OpenAPI components of ``_BODY_MODELS`` (and the models they use), as FastAPI writes them."""
    described = APIRouter()
    for model in _BODY_MODELS:
        described.add_api_route(f"/{model.__name__}", _takes(model), methods=["POST"], name=model.__name__)
    _, definitions = models_json_schema([(model, "validation") for model in _BODY_MODELS])
    schemas: dict[str, Any] = get_openapi(title="", version="", routes=described.routes)["components"]["schemas"]
    return {name: schemas[name] for name in definitions["$defs"]}


def _takes(model: type[BaseModel]) -> Callable[..., Awaitable[None]]:
    async def endpoint(body: Any) -> None:
        """Never called: it shows FastAPI the body model."""

    endpoint.__annotations__ = {"body": model, "return": None}  # postponed annotations would name "model"
    return endpoint


# Dependencies are async: FastAPI would run a plain def in its thread pool on every request.
async def _broker(request: Request) -> Broker:
    return broker_of(request.app.state)


def create_app(settings: Settings, *, broker: Broker | None = None) -> FastAPI:
    """Service A for ``settings``; nothing connects until the app's lifespan starts.

    With ``broker``, the app publishes through it and leaves closing it to the caller
    (tests pass a ``memory://`` broker, since ``httpx.ASGITransport`` runs no lifespan).
    """
    default_topic = check_name("topic", settings.topic)
    redact = redactor(settings)
    metrics = IngestMetrics(default_topic=default_topic)
    metrics.broker_gauges.broker = broker

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if broker is not None:
            yield
            return
        owned = broker_for(settings)
        app.state.broker = metrics.broker_gauges.broker = owned
        log.info("Service A publishing to %s, default topic %r", redact(settings.broker_url), default_topic)
        check = asyncio.create_task(check_broker(owned, "Service A"))  # in the background: Redis may be down
        try:
            yield
        finally:
            check.cancel()
            app.state.broker = metrics.broker_gauges.broker = None
            await owned.aclose()

    app = FastAPIOffline(  # /docs and /redoc from the package's own assets: no CDN
        title="mqctl Service A",
        version=__version__,
        description="Publish messages to mqctl topics over HTTP. A 202 means the broker has stored them.",
        lifespan=lifespan,
    )
    app.state.broker = broker
    app.state.metrics = metrics
    app.add_middleware(Guard, max_body_bytes=settings.max_body_bytes, log=log)
    app.add_middleware(Observe, metrics=metrics)  # outermost: it times and counts what the client sees
    handler = PublishHandler(app, settings, metrics, default_topic, log)

    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> JSONResponse:
        return exc.response(redact)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_problem(exc.errors()).response(redact)

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> JSONResponse:
        return http_problem(exc).response(redact)

    @app.exception_handler(MQError)
    async def on_broker_error(request: Request, exc: MQError) -> Response:
        return handler.broker_error(request, exc)

    # The documented routes: FastAPI describes them in /openapi.json. The served routes, inserted
    # ahead of them below, answer the requests; both call the same handler.
    publish_errors = dict(_PUBLISH_ERRORS)
    security = []
    if settings.token is not None:
        security.append(Depends(bearer))  # documents the scheme; the handler checks the token
        publish_errors.update(_AUTH_ERROR)

    @app.post(
        "/messages",
        status_code=202,
        response_model=Accepted,
        summary="Publish one message",
        response_description="The broker has stored the message.",
        responses=publish_errors,
        dependencies=security,
        openapi_extra=_PUBLISH_DOC,
    )
    async def publish(request: Request) -> Response:
        """Store one message on a topic; answers 202 with its id once the broker has it."""
        return await handler.publish(request)

    @app.post(
        "/messages/batch",
        status_code=202,
        response_model=BatchAccepted,
        summary="Publish up to 1000 messages in one round trip",
        response_description="The broker has stored every message.",
        responses=publish_errors,
        dependencies=security,
        openapi_extra=_PUBLISH_BATCH_DOC,
    )
    async def publish_batch(request: Request) -> Response:
        """Store every message on one topic, all or none; answers 202 with their ids in order."""
        return await handler.publish_batch(request)

    app.router.routes[0:0] = [
        Route("/messages", Served(handler.publish), methods=["POST"], name="publish"),
        Route("/messages/batch", Served(handler.publish_batch), methods=["POST"], name="publish_batch"),
    ]

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, plus the body models that the publish endpoints read themselves."""
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = FastAPI.openapi(app)  # built once, and kept in app.openapi_schema
        schemas = {**schema.setdefault("components", {}).get("schemas", {}), **_body_schemas()}
        schema["components"]["schemas"] = dict(sorted(schemas.items()))
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> Health:
        """Answers 200 while the process runs, whatever the broker's state."""
        return Health()

    @app.get(
        "/ready",
        summary="Readiness: the broker answers",
        response_model=Ready,
        responses={503: {"model": NotReady, "description": "The broker does not answer."}},
    )
    async def ready(broker: Annotated[Broker, Depends(_broker)]) -> Ready | JSONResponse:
        """Answers 200 when the broker answers and takes writes, 503 with the reason otherwise."""
        try:
            async with asyncio.timeout(settings.publish_timeout_s):
                await broker.ping(write=True)
        except TimeoutError:
            reason = f"The broker did not answer a ping within {settings.publish_timeout_s:g} s."
        except MQError as exc:
            reason = str(exc)
        except Exception:
            log.exception("The broker's ping failed unexpectedly")
            reason = "The broker check failed unexpectedly; see the service's logs."
        else:
            return Ready()
        log.warning("Not ready: %s", redact(reason))
        body = NotReady(detail=shorten(redact(reason), MAX_DETAIL))
        return JSONResponse(body.model_dump(), status_code=503)

    add_metrics_route(app, metrics)
    return app
