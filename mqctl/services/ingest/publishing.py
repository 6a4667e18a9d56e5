"""Service A's publish endpoints, ``POST /messages`` and ``POST /messages/batch``: read, check, answer.

They are served by plain Starlette routes: FastAPI's per-request machinery (dependencies, a JSON
parse then a validation, a response model) cost more than the rest of the request (issue #4).
``PublishHandler`` does the checks FastAPI did, in the same order, so every answer is the same:

1. read the body (413 over the limit, 400 if the read fails);
2. if the Content-Type is JSON, parse it (400 if it is not JSON);
3. the token (401), the Content-Type (415), the broker (500 without one);
4. the Idempotency-Key header and the body's fields, all errors in one 422.

A valid body is parsed and validated in one pass by pydantic-core (``model_validate_json``).
Anything else takes the way FastAPI took (``json.loads``, then ``model_validate``), so the
errors are the ones FastAPI gave. ``mqctl.services.ingest`` also registers FastAPI routes of
the same paths, behind these, to describe them in the OpenAPI schema; they call the same handler.
"""

from __future__ import annotations

import email.message
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from mqctl.config import Settings
from mqctl.core import tracing
from mqctl.core.broker import Broker
from mqctl.core.errors import MQError, QueueFull
from mqctl.core.message import Message
from mqctl.services.ingest.bodies import BatchRequest, PublishRequest
from mqctl.services.ingest.metrics import IngestMetrics
from mqctl.services.ingest.problems import (
    MAX_NAME,
    FieldError,
    Problem,
    broker_problem,
    http_problem,
    internal_error,
    redactor,
    shorten,
    validation_problem,
)

JSON_TYPE = "application/json"

MAX_IDEMPOTENCY_KEY_LENGTH = 200


IdempotencyKey = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
        title="Idempotency-Key",
        description="Publishing again with the same key (within an hour) returns the first id, stores nothing.",
    ),
]
idempotency_key: TypeAdapter[str | None] = TypeAdapter(IdempotencyKey)
M = TypeVar("M", bound=BaseModel)
_UNPARSED: Any = object()  # the body was not JSON-parsed (empty, or not sent as JSON)


class _Invalid(Exception):
    """The request's fields are invalid; ``errors`` are FastAPI's shape (``loc`` starts at body/header)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("invalid request")
        self.errors = errors


@lru_cache(maxsize=256)
def _parsed_as_json(content_type: str) -> bool:
    """Whether FastAPI would JSON-parse a body sent with this Content-Type (its own test, kept as is)."""
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def _prefixed(errors: list[Any], prefix: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{**error, "loc": (*prefix, *error["loc"])} for error in errors]


def _validate(model: type[M], parsed: Any) -> M:
    """Validate an already parsed body the way FastAPI does; raise ``_Invalid`` with its errors."""
    if parsed is _UNPARSED:
        error = ValidationError.from_exception_data(
            "Field required", [{"type": "missing", "loc": ("body",), "input": {}}]
        )
        raise _Invalid([{**error.errors(include_url=False)[0], "input": None}])
    try:
        return model.model_validate(parsed, from_attributes=True)
    except ValidationError as exc:
        raise _Invalid(_prefixed(exc.errors(include_url=False), ("body",))) from exc


def _unless_json(content_type: str) -> Problem | None:
    """A 415 unless ``content_type`` is JSON (application/json or application/*+json)."""
    media_type = content_type.partition(";")[0].strip().lower()
    main, _, sub = media_type.partition("/")
    if main == "application" and (sub == "json" or sub.endswith("+json")):
        return None
    got = f"got {shorten(content_type, MAX_NAME)!r}" if content_type else "got none"
    reason = f"Must be application/json; {got}."
    return Problem(
        415,
        "invalid_request",
        f"The request body must be JSON sent with Content-Type: application/json; {got}.",
        fields=[FieldError(field="Content-Type", location="header", reason=reason)],
    )


bearer = HTTPBearer(auto_error=False, description="The service's token (MQCTL_TOKEN).")


class PublishHandler:
    """The publish endpoints' work, shared by the served routes and the documented ones."""

    def __init__(
        self, app: FastAPI, settings: Settings, metrics: IngestMetrics, default_topic: str, log: logging.Logger
    ) -> None:
        self.state = app.state
        self.log = log
        self.token = None if settings.token is None else settings.token.encode()
        self.metrics = metrics
        self.default_topic = default_topic
        self.redact = redactor(settings)

    async def publish(self, request: Request) -> Response:
        """Store one message on a topic; answers 202 with its id once the broker has it."""
        body = await self._admit(request, PublishRequest)
        if isinstance(body, Response):
            return body
        broker = broker_of(self.state)
        errors: list[dict[str, Any]] = []
        key = request.headers.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
            try:
                idempotency_key.validate_python(key)
            except ValidationError as exc:
                errors = _prefixed(exc.errors(include_url=False), ("header", "Idempotency-Key"))
        message = body if isinstance(body, PublishRequest) else None
        if message is None:
            try:
                message = _validate(PublishRequest, body)
            except _Invalid as exc:
                errors += exc.errors
        if errors or message is None:
            return validation_problem(errors).response(self.redact)
        topic = message.topic or self.default_topic
        try:
            stored = Message(message.type, message.content, message.headers)
            with tracing.producing(topic, request.headers):
                message_id = await broker.publish(
                    topic, stored, key=message.key, idempotency_key=key, delay_s=message.delay_s
                )
        except MQError as exc:
            return self.broker_error(request, exc)
        self.metrics.published_to(topic, 1)
        return Response(orjson.dumps({"id": message_id, "status": "accepted", "topic": topic}), 202, None, JSON_TYPE)

    async def publish_batch(self, request: Request) -> Response:
        """Store every message on one topic, all or none; answers 202 with their ids in order."""
        body = await self._admit(request, BatchRequest)
        if isinstance(body, Response):
            return body
        broker = broker_of(self.state)
        try:
            batch = body if isinstance(body, BatchRequest) else _validate(BatchRequest, body)
        except _Invalid as exc:
            return validation_problem(exc.errors).response(self.redact)
        topic = batch.topic or self.default_topic
        try:
            messages = [Message(m.type, m.content, m.headers) for m in batch.messages]
            with tracing.producing(topic, request.headers):
                ids = await broker.publish_many(topic, messages, key=batch.key, delay_s=batch.delay_s)
        except MQError as exc:
            return self.broker_error(request, exc)
        self.metrics.published_to(topic, len(ids))
        return Response(
            orjson.dumps({"ids": ids, "status": "accepted", "count": len(ids), "topic": topic}), 202, None, JSON_TYPE
        )

    async def _admit(self, request: Request, model: type[BaseModel]) -> Any:
        """The body as ``_read`` gives it, or the answer that refuses the request (400, 401,
        413, 415), checked in FastAPI's order: the body is read before the token and type."""
        body = await self._read(request, model)
        if isinstance(body, Response):
            return body
        refused = await self._refusal(request)
        return body if refused is None else refused

    async def _read(self, request: Request, model: type[BaseModel]) -> Any:
        """The body: validated as ``model`` if it is valid JSON of it, parsed JSON, ``_UNPARSED``, or a 400/413."""
        try:
            raw = await request.body()
        except HTTPException as exc:  # BodyTooLarge, from the guard
            return http_problem(exc).response(self.redact)
        except Exception:
            return http_problem(HTTPException(400, "There was an error parsing the body")).response(self.redact)
        if not raw:
            return _UNPARSED
        content_type = request.headers.get("content-type")
        if not content_type or not (content_type == JSON_TYPE or _parsed_as_json(content_type)):
            return raw
        try:
            return model.model_validate_json(raw)
        except ValidationError:
            pass  # some error: find it the way FastAPI did, for the same answer
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            error = {
                "type": "json_invalid",
                "loc": ("body", exc.pos),
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": exc.msg},
            }
            return validation_problem([error]).response(self.redact)
        except Exception:
            return http_problem(HTTPException(400, "There was an error parsing the body")).response(self.redact)

    async def _refusal(self, request: Request) -> Response | None:
        """A 401 for a missing or wrong token, a 415 for a body not sent as JSON, else None."""
        if self.token is not None:
            credentials = await bearer(request)
            if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), self.token):
                problem = Problem(
                    401,
                    "unauthorized",
                    "This service needs a bearer token: send the header 'Authorization: Bearer <token>'.",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                return problem.response(self.redact)
        content_type = request.headers.get("content-type", "")
        if content_type != JSON_TYPE and (unsupported := _unless_json(content_type)):
            return unsupported.response(self.redact)
        return None

    def broker_error(self, request: Request, exc: MQError) -> Response:
        problem = broker_problem(exc)
        if problem is None:
            self.log.error("Unexpected broker error in %s %s", request.method, request.url.path, exc_info=exc)
            return internal_error().response()
        if problem.status_code == 503 and not isinstance(exc, QueueFull):
            self.log.warning("Publish failed, answering %s: %s", problem.body.error, self.redact(str(exc)))
        return problem.response(self.redact)


def broker_of(state: Any) -> Broker:
    broker: Broker | None = getattr(state, "broker", None)
    if broker is None:
        raise RuntimeError("Service A has no broker: its lifespan did not run and create_app was given none.")
    return broker


class Served:
    """An ASGI app answering with ``handler(request)``.

    As a Route's endpoint it skips Starlette's per-request exception wrapper; the app's
    exception handlers and the guard still stand around it.
    """

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive, send))
        await response(scope, receive, send)
