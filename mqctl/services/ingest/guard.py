"""The ASGI middleware in front of Service A: header and body limits, and the last line against a crash.

One middleware does the three jobs, so each request passes one wrapper instead of three:

- over ``MAX_HEADERS`` headers or ``MAX_HEADER_BYTES`` bytes of them: 431, before the app runs
  (uvicorn's httptools parser sets no limit of its own);
- a body over ``max_body_bytes``: 413, refused before the app runs if the Content-Length says so,
  else counted as it streams and refused at the first chunk over the limit;
- an unexpected exception: a logged 500, never a traceback or a crash.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

from mqctl.services.ingest.problems import Problem, http_problem, internal_error

MAX_HEADERS = 100
MAX_HEADER_BYTES = 32 * 1024


class BodyTooLarge(HTTPException):
    """Raised from ``receive``; FastAPI re-raises HTTPExceptions met while reading the body."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is over the limit of {limit} bytes; send less or split the batch.")


class Guard:
    """Refuse oversized headers (431) and bodies (413); turn an unexpected exception into a logged 500.

    ``log`` is the logger of the service it guards, so its errors read as the service's.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, log: logging.Logger) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        received = 0
        started = False

        async def receive_counted() -> ASGIMessage:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def send_tracked(message: ASGIMessage) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            try:
                refusal = _refusal(scope, limit)
                if refusal is not None:
                    await refusal.response()(scope, receive, send_tracked)
                    return
                await self.app(scope, receive_counted, send_tracked)
            except BodyTooLarge as exc:  # read outside a route (a route's handler answers it itself)
                if started:
                    raise
                await http_problem(exc).response()(scope, receive, send_tracked)
        except Exception:
            self.log.exception("Unexpected error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await internal_error().response()(scope, receive, send)


def _refusal(scope: Scope, max_body_bytes: int) -> Problem | None:
    """The 431 or 413 for a request whose headers alone are over a limit, else None."""
    headers = scope.get("headers", ())
    size = 0
    declared: int | None = None
    seen_length = False
    for name, value in headers:
        size += len(name) + len(value)
        if name == b"content-length" and not seen_length:
            seen_length = True
            try:
                declared = int(value)
            except ValueError:
                declared = None  # a server refuses it; counting still bounds the body
    if len(headers) > MAX_HEADERS or size > MAX_HEADER_BYTES:
        detail = (
            f"The request has {len(headers)} headers, {size} bytes in all; the limits are {MAX_HEADERS} "
            f"headers and {MAX_HEADER_BYTES} bytes. Send fewer or shorter headers."
        )
        return Problem(431, "headers_too_large", detail)
    if declared is not None and declared > max_body_bytes:
        return http_problem(BodyTooLarge(max_body_bytes))
    return None
