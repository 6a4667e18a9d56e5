"""Service A's error responses: ``{"error": <code>, "detail": <sentence>, ...}`` and how each is made.

A ``Problem`` is an error response on its way out. The functions below turn what went wrong
(a pydantic validation error, a Starlette ``HTTPException``, a library ``MQError``) into one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from mqctl.config import Settings
from mqctl.core.errors import (
    BrokerOutOfMemory,
    BrokerRefused,
    BrokerUnavailable,
    ConfigError,
    InvalidMessage,
    MessageTooLarge,
    MQError,
    QueueFull,
)
from mqctl.services.observability import note_error

MAX_FIELDS = 20  # field errors listed in one response; a bad 1000-message batch stays small
MAX_DETAIL = 1000
MAX_NAME = 64


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


class Problem(Exception):
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
        body = self.body.model_copy(update={"detail": shorten(redact(self.body.detail), MAX_DETAIL)})
        return JSONResponse(body.model_dump(exclude_none=True), status_code=self.status_code, headers=self.headers)


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def internal_error() -> Problem:
    return Problem(500, "internal_error", "An unexpected error occurred; it has been logged.")


def broker_problem(exc: MQError) -> Problem | None:
    """The response for a library error, None for one a publish should never raise."""
    if isinstance(exc, MessageTooLarge):
        return Problem(413, "message_too_large", str(exc))
    if isinstance(exc, InvalidMessage):
        return Problem(422, "invalid_message", str(exc))
    if isinstance(exc, ConfigError):
        return Problem(422, "invalid_request", str(exc))
    if isinstance(exc, QueueFull):
        return Problem(503, "queue_full", str(exc), retry_after_s=exc.retry_after_s)
    if isinstance(exc, BrokerOutOfMemory):
        return Problem(503, "broker_out_of_memory", str(exc), retry_after_s=exc.retry_after_s)
    if isinstance(exc, BrokerRefused):
        return Problem(503, "broker_refused", str(exc), retry_after_s=exc.retry_after_s)
    if isinstance(exc, BrokerUnavailable):  # PublishTimeout included
        return Problem(503, "broker_unavailable", str(exc), retry_after_s=exc.retry_after_s)
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
        reason = shorten(reason, 300).rstrip(".") + "."
    return FieldError(field=shorten(name, MAX_NAME), location=location, reason=reason)


def validation_problem(errors: Sequence[Any]) -> Problem:
    """A 422 naming each bad field (at most ``MAX_FIELDS``), or a 400 if the body is not JSON."""
    fields = [_field_error(error) for error in errors[:MAX_FIELDS]]
    if any(error.get("type") == "json_invalid" for error in errors):
        detail = f"The request body is not valid JSON: {fields[0].reason}"
        return Problem(400, "invalid_request", detail, fields=fields[:1])
    if len(errors) == 1:
        detail = f"Invalid field {fields[0].field!r}: {fields[0].reason}"
    else:
        named = ", ".join(repr(f.field) for f in fields[:5])
        more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
        detail = f"{len(errors)} fields are invalid: {named}{more}; see 'fields' for why."
    return Problem(422, "invalid_request", detail, fields=fields)


def http_problem(exc: HTTPException) -> Problem:
    headers = dict(exc.headers or {})
    if exc.status_code == 400:  # the body could not be read (e.g. not UTF-8)
        field = FieldError(field="body", location="body", reason="Not readable as UTF-8 JSON.")
        return Problem(400, "invalid_request", "The request body could not be read; send UTF-8 JSON.", fields=[field])
    if exc.status_code == 404:
        return Problem(404, "not_found", "There is no such endpoint; see /docs for the API.", headers=headers)
    if exc.status_code == 405:
        allowed = headers.get("Allow", "")
        return Problem(405, "method_not_allowed", f"This endpoint only accepts {allowed}.", headers=headers)
    if exc.status_code == 413:
        return Problem(413, "request_too_large", str(exc.detail), headers=headers)
    return Problem(exc.status_code, "http_error", str(exc.detail), headers=headers)


def redactor(settings: Settings) -> Callable[[str], str]:
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
