"""Service A: publish messages over HTTP.

    POST /messages         one message            -> 202 {"id", "status": "accepted", "topic"}
    POST /messages/batch   1 to 1000, all or none -> 202 {"ids", "status", "count", "topic"}
    GET  /health           the process is alive   -> 200 {"status": "ok"}
    GET  /ready            the broker answers     -> 200 {"status": "ready"} or 503
    GET  /metrics          Prometheus metrics (see ``mqctl.services.metrics``)

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
    500     internal_error        anything else; logged with its traceback, never shown
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from fastapi import Body, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

from mqctl import __version__
from mqctl.config import Settings
from mqctl.connect import open_broker
from mqctl.core.broker import Broker
from mqctl.core.errors import (
    BrokerOutOfMemory,
    BrokerUnavailable,
    ConfigError,
    InvalidMessage,
    MessageTooLarge,
    MQError,
    QueueFull,
)
from mqctl.core.message import MAX_TYPE_LENGTH, Message
from mqctl.core.names import MAX_NAME_LENGTH, NAME_PATTERN, check_name
from mqctl.services.eviction import warn_if_evicting
from mqctl.services.metrics import IngestMetrics, Observe, add_metrics_route, note_error

log = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_HEADERS = 100
MAX_HEADER_BYTES = 32 * 1024
MAX_IDEMPOTENCY_KEY_LENGTH = 200
_MAX_FIELDS = 20  # field errors listed in one response; a bad 1000-message batch stays small
_MAX_DETAIL = 1000
_MAX_NAME = 64

# -- request and response bodies ---------------------------------------------------


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain a character other than whitespace")
    if _CONTROL.search(value):  # a type shows up in logs and filters: no line breaks or escapes
        raise ValueError("must not contain control characters (U+0000 to U+001F, U+007F)")
    return value


def _topic_name(value: str) -> str:
    return check_name("topic", value)  # ConfigError is a ValueError: pydantic reports it on the field


# The validators give the errors; json_schema_extra only tells the OpenAPI document what they accept.
MessageType = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_TYPE_LENGTH,
        description="What the message is, e.g. 'order.created'.",
        json_schema_extra={"pattern": r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"},
    ),
    AfterValidator(_not_blank),
]
TopicName = Annotated[
    str,
    Field(json_schema_extra={"minLength": 1, "maxLength": MAX_NAME_LENGTH, "pattern": NAME_PATTERN}),
    AfterValidator(_topic_name),
]

_EXAMPLE_MESSAGE: dict[str, Any] = {
    "type": "order.created",
    "content": {"order_id": 42, "total": 9.99},
    "headers": {"source": "swagger"},
}


class NewMessage(BaseModel):
    """One message as a publisher sends it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE_MESSAGE]})

    type: MessageType
    content: Any = Field(description="Any JSON value: object, array, string, number, boolean or null.")
    headers: dict[str, str] = Field(default_factory=dict, description="String keys to string values.")


PartitionKey = Annotated[str, Field(min_length=1, max_length=200)]
_KEY_DOC = (
    "On a partitioned topic, picks the partition: messages with the same key keep their order. "
    "Ignored on a topic of one partition."
)


class PublishRequest(NewMessage):
    """One message and, optionally, the topic to publish it on."""

    topic: TopicName | None = Field(None, description="The topic; the service's default topic when omitted.")
    key: PartitionKey | None = Field(None, description=_KEY_DOC)


class BatchRequest(BaseModel):
    """Up to 1000 messages for one topic, stored all or none."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"messages": [_EXAMPLE_MESSAGE, {"type": "order.paid", "content": 42}]}]},
    )

    messages: list[NewMessage] = Field(min_length=1, max_length=MAX_BATCH)
    topic: TopicName | None = Field(None, description="The topic; the service's default topic when omitted.")
    key: PartitionKey | None = Field(None, description=_KEY_DOC + " The whole batch goes to its partition.")


class Accepted(BaseModel):
    """The broker has stored the message."""

    id: str = Field(description="The message id, e.g. '1718000000000-0'.")
    status: Literal["accepted"] = "accepted"
    topic: str


class BatchAccepted(BaseModel):
    """The broker has stored every message of the batch."""

    ids: list[str] = Field(description="The message ids, in the order of the request.")
    status: Literal["accepted"] = "accepted"
    count: int
    topic: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"


class NotReady(BaseModel):
    status: Literal["unavailable"] = "unavailable"
    error: str = "broker_unavailable"
    detail: str


class FieldError(BaseModel):
    """One bad part of a request and why."""

    field: str = Field(description="Dotted path in the body ('messages.2.type'), a header name, or 'body'.")
    location: str = Field(description="Where the field is: body or header.")
    reason: str


class ErrorResponse(BaseModel):
    """Every error this service returns."""

    error: str = Field(description="A machine-readable code, e.g. 'queue_full'.")
    detail: str = Field(description="What went wrong and what to do, as a sentence.")
    fields: list[FieldError] | None = Field(None, description="With invalid_request: each bad field and why.")
    retry_after_s: int | None = Field(None, description="With a 503: seconds to wait, as in Retry-After.")


# -- errors --------------------------------------------------------------------------


class _Problem(Exception):
    """An error response on its way out; raised by dependencies, built by the handlers."""

    def __init__(
        self,
        status_code: int,
        error: str,
        detail: str,
        *,
        fields: list[FieldError] | None = None,
        retry_after_s: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.body = ErrorResponse(
            error=error,
            detail=detail,
            fields=fields,
            retry_after_s=None if retry_after_s is None else max(1, math.ceil(retry_after_s)),
        )
        self.headers = dict(headers or {})
        if self.body.retry_after_s is not None:
            self.headers["Retry-After"] = str(self.body.retry_after_s)

    def response(self, redact: Callable[[str], str] = str) -> JSONResponse:
        note_error(self.body.error)
        body = self.body.model_copy(update={"detail": _shorten(redact(self.body.detail), _MAX_DETAIL)})
        return JSONResponse(body.model_dump(exclude_none=True), status_code=self.status_code, headers=self.headers)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _internal_error() -> _Problem:
    return _Problem(500, "internal_error", "An unexpected error occurred; it has been logged.")


def _broker_problem(exc: MQError) -> _Problem | None:
    """The response for a library error, None for one a publish should never raise."""
    if isinstance(exc, MessageTooLarge):
        return _Problem(413, "message_too_large", str(exc))
    if isinstance(exc, InvalidMessage):
        return _Problem(422, "invalid_message", str(exc))
    if isinstance(exc, ConfigError):
        return _Problem(422, "invalid_request", str(exc))
    if isinstance(exc, QueueFull):
        return _Problem(503, "queue_full", str(exc), retry_after_s=exc.retry_after_s)
    if isinstance(exc, BrokerOutOfMemory):
        return _Problem(503, "broker_out_of_memory", str(exc), retry_after_s=exc.retry_after_s)
    if isinstance(exc, BrokerUnavailable):  # PublishTimeout included
        return _Problem(503, "broker_unavailable", str(exc), retry_after_s=exc.retry_after_s)
    return None


_REASONS = {
    "missing": "This field is required.",
    "extra_forbidden": "Unknown field; see the request schema at /docs.",
}


def _field_error(error: dict[str, Any]) -> FieldError:
    """One pydantic/FastAPI error as a FieldError; the input itself is never echoed."""
    loc = tuple(error.get("loc") or ("body",))
    kind = error.get("type", "")
    location, path = str(loc[0]), loc[1:]
    if kind == "json_invalid":
        reason = str((error.get("ctx") or {}).get("error", "JSON decode error"))
        where = f" at character {path[0]}" if path else ""
        return FieldError(field="body", location="body", reason=f"{reason}{where}.")
    if location == "header" and path:
        name = "-".join(part.capitalize() for part in str(path[0]).split("-"))
    else:
        name = ".".join(str(part) for part in path) or location
    if not path and kind in ("missing", "model_type", "model_attributes_type", "dict_type"):
        reason = "A JSON object is required."
    else:
        reason = _REASONS.get(kind) or str(error.get("msg", "Invalid value")).removeprefix("Value error, ")
        reason = _shorten(reason, 300).rstrip(".") + "."
    return FieldError(field=_shorten(name, _MAX_NAME), location=location, reason=reason)


def _validation_problem(errors: Sequence[Any]) -> _Problem:
    fields = [_field_error(error) for error in errors[:_MAX_FIELDS]]
    if any(error.get("type") == "json_invalid" for error in errors):
        detail = f"The request body is not valid JSON: {fields[0].reason}"
        return _Problem(400, "invalid_request", detail, fields=fields[:1])
    if len(errors) == 1:
        detail = f"Invalid field {fields[0].field!r}: {fields[0].reason}"
    else:
        named = ", ".join(repr(f.field) for f in fields[:5])
        more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
        detail = f"{len(errors)} fields are invalid: {named}{more}; see 'fields' for why."
    return _Problem(422, "invalid_request", detail, fields=fields)


def _http_problem(exc: HTTPException) -> _Problem:
    headers = dict(exc.headers or {})
    if exc.status_code == 400:  # FastAPI could not read the body (e.g. not UTF-8)
        field = FieldError(field="body", location="body", reason="Not readable as UTF-8 JSON.")
        return _Problem(400, "invalid_request", "The request body could not be read; send UTF-8 JSON.", fields=[field])
    if exc.status_code == 404:
        return _Problem(404, "not_found", "There is no such endpoint; see /docs for the API.", headers=headers)
    if exc.status_code == 405:
        allowed = headers.get("Allow", "")
        return _Problem(405, "method_not_allowed", f"This endpoint only accepts {allowed}.", headers=headers)
    if exc.status_code == 413:
        return _Problem(413, "request_too_large", str(exc.detail), headers=headers)
    return _Problem(exc.status_code, "http_error", str(exc.detail), headers=headers)


def _redactor(settings: Settings) -> Callable[[str], str]:
    """Replace the broker password and the service token wherever they would appear in a response."""
    hidden: set[str] = set()
    try:
        password = urlsplit(settings.broker_url).password
    except ValueError:
        password = None
    for secret in (password, password and unquote(password), settings.token):
        if secret:
            hidden.add(secret)

    def redact(text: str) -> str:
        for secret in hidden:
            text = text.replace(secret, "***")
        return text

    return redact


# -- middleware ----------------------------------------------------------------------


class _BodyTooLarge(HTTPException):
    """Raised from ``receive``; FastAPI re-raises HTTPExceptions met while reading the body."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is over the limit of {limit} bytes; send less or split the batch.")


class HeaderLimit:
    """Refuse requests with over ``MAX_HEADERS`` headers or ``MAX_HEADER_BYTES`` bytes of them (431).

    uvicorn's httptools parser sets no limit of its own; this keeps the app from working on them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope.get("headers", ())
            size = sum(len(name) + len(value) for name, value in headers)
            if len(headers) > MAX_HEADERS or size > MAX_HEADER_BYTES:
                detail = (
                    f"The request has {len(headers)} headers, {size} bytes in all; the limits are {MAX_HEADERS} "
                    f"headers and {MAX_HEADER_BYTES} bytes. Send fewer or shorter headers."
                )
                await _Problem(431, "headers_too_large", detail).response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over ``max_body_bytes`` before they are read whole.

    A Content-Length over the limit is refused before the app runs; a body without one
    (chunked) is counted as it streams and refused at the first chunk over the limit.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _http_problem(_BodyTooLarge(limit)).response()(scope, receive, send)
            return
        received = 0
        started = False

        async def receive_counted() -> ASGIMessage:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def send_tracked(message: ASGIMessage) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_counted, send_tracked)
        except _BodyTooLarge as exc:  # read outside a route (a route's handler answers it itself)
            if started:
                raise
            await _http_problem(exc).response()(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # a server refuses it; counting still bounds the body
    return None


class _Guard:
    """The last line: an unexpected exception becomes a logged 500, never a traceback or a crash."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: ASGIMessage) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception:
            log.exception("Unexpected error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await _internal_error().response()(scope, receive, send)


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
        "`queue_full`, `broker_out_of_memory` or `broker_unavailable`: retry after `Retry-After` seconds.",
        retry_after=True,
    ),
}
_AUTH_ERROR: dict[int | str, dict[str, Any]] = {
    401: _error_doc("`unauthorized`: the bearer token is missing or wrong."),
}
_PUBLISH_EXAMPLES: dict[str, Any] = {
    "order": {"summary": "A JSON object as content", "value": _EXAMPLE_MESSAGE},
    "text": {"summary": "A string as content, no headers", "value": {"type": "note", "content": "hello"}},
}


# Dependencies are async: FastAPI would run a plain def in its thread pool on every request.
async def _broker(request: Request) -> Broker:
    broker: Broker | None = getattr(request.app.state, "broker", None)
    if broker is None:
        raise RuntimeError("Service A has no broker: its lifespan did not run and create_app was given none.")
    return broker


async def _require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    main, _, sub = media_type.partition("/")
    if main == "application" and (sub == "json" or sub.endswith("+json")):
        return
    got = f"got {_shorten(content_type, _MAX_NAME)!r}" if content_type else "got none"
    reason = f"Must be application/json; {got}."
    raise _Problem(
        415,
        "invalid_request",
        f"The request body must be JSON sent with Content-Type: application/json; {got}.",
        fields=[FieldError(field="Content-Type", location="header", reason=reason)],
    )


def create_app(settings: Settings, *, broker: Broker | None = None) -> FastAPI:
    """Service A for ``settings``; nothing connects until the app's lifespan starts.

    With ``broker``, the app publishes through it and leaves closing it to the caller
    (tests pass a ``memory://`` broker, since ``httpx.ASGITransport`` runs no lifespan).
    """
    default_topic = check_name("topic", settings.topic)
    redact = _redactor(settings)
    metrics = IngestMetrics(default_topic=default_topic)
    metrics.broker_gauges.broker = broker

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if broker is not None:
            yield
            return
        owned = open_broker(
            settings.broker_url,
            max_backlog=settings.max_backlog,
            max_message_bytes=settings.max_message_bytes,
            retention=settings.retention,
            publish_timeout_s=settings.publish_timeout_s,
            **(
                {"min_replicas": settings.replicas, "replica_timeout_s": settings.replica_timeout_s}
                if settings.replicas
                else {}
            ),
        )
        app.state.broker = metrics.broker_gauges.broker = owned
        log.info("Service A publishing to %s, default topic %r", redact(settings.broker_url), default_topic)
        check = asyncio.create_task(warn_if_evicting(owned, "Service A"))  # in the background: Redis may be down
        try:
            yield
        finally:
            check.cancel()
            app.state.broker = metrics.broker_gauges.broker = None
            await owned.aclose()

    app = FastAPI(
        title="mqctl Service A",
        version=__version__,
        description="Publish messages to mqctl topics over HTTP. A 202 means the broker has stored them.",
        lifespan=lifespan,
    )
    app.state.broker = broker
    app.state.metrics = metrics
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(HeaderLimit)
    app.add_middleware(_Guard)
    app.add_middleware(Observe, metrics=metrics)  # outermost: it times and counts what the client sees

    @app.exception_handler(_Problem)
    async def on_problem(request: Request, exc: _Problem) -> JSONResponse:
        return exc.response(redact)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_problem(exc.errors()).response(redact)

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> JSONResponse:
        return _http_problem(exc).response(redact)

    @app.exception_handler(MQError)
    async def on_broker_error(request: Request, exc: MQError) -> JSONResponse:
        problem = _broker_problem(exc)
        if problem is None:
            log.error("Unexpected broker error in %s %s", request.method, request.url.path, exc_info=exc)
            return _internal_error().response()
        if problem.status_code == 503 and not isinstance(exc, QueueFull):
            log.warning("Publish failed, answering %s: %s", problem.body.error, redact(str(exc)))
        return problem.response(redact)

    publish_dependencies = [Depends(_require_json)]
    publish_errors = dict(_PUBLISH_ERRORS)
    if settings.token is not None:
        publish_dependencies.insert(0, Depends(_authorizer(settings.token)))
        publish_errors.update(_AUTH_ERROR)

    @app.post(
        "/messages",
        status_code=202,
        summary="Publish one message",
        response_description="The broker has stored the message.",
        responses=publish_errors,
        dependencies=publish_dependencies,
    )
    async def publish(
        message: Annotated[PublishRequest, Body(openapi_examples=_PUBLISH_EXAMPLES)],
        broker: Annotated[Broker, Depends(_broker)],
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                min_length=1,
                max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
                description="Publishing again with the same key (within an hour) returns the first id, stores nothing.",
            ),
        ] = None,
    ) -> Accepted:
        """Store one message on a topic; answers 202 with its id once the broker has it."""
        topic = message.topic or default_topic
        stored = Message(message.type, message.content, message.headers)
        message_id = await broker.publish(topic, stored, key=message.key, idempotency_key=idempotency_key)
        metrics.published_to(topic, 1)
        return Accepted(id=message_id, topic=topic)

    @app.post(
        "/messages/batch",
        status_code=202,
        summary="Publish up to 1000 messages in one round trip",
        response_description="The broker has stored every message.",
        responses=publish_errors,
        dependencies=publish_dependencies,
    )
    async def publish_batch(
        batch: BatchRequest,
        broker: Annotated[Broker, Depends(_broker)],
    ) -> BatchAccepted:
        """Store every message on one topic, all or none; answers 202 with their ids in order."""
        topic = batch.topic or default_topic
        ids = await broker.publish_many(
            topic, [Message(m.type, m.content, m.headers) for m in batch.messages], key=batch.key
        )
        metrics.published_to(topic, len(ids))
        return BatchAccepted(ids=ids, count=len(ids), topic=topic)

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
        """Answers 200 when the broker answers a ping, 503 with the reason otherwise."""
        try:
            async with asyncio.timeout(settings.publish_timeout_s):
                await broker.ping()
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
        body = NotReady(detail=_shorten(redact(reason), _MAX_DETAIL))
        return JSONResponse(body.model_dump(), status_code=503)

    add_metrics_route(app, metrics)
    return app


_bearer = HTTPBearer(auto_error=False, description="The service's token (MQCTL_TOKEN).")


def _authorizer(token: str) -> Callable[..., Any]:
    expected = token.encode()

    # Annotations name only module globals: with postponed annotations FastAPI resolves them there.
    async def authorize(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), expected):
            raise _Problem(
                401,
                "unauthorized",
                "This service needs a bearer token: send the header 'Authorization: Bearer <token>'.",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return authorize
