"""Client A: publishes to Service A over HTTP (keep-alive, one pooled client)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from mqctl.core.errors import BrokerUnavailable, ServiceError

DEFAULT_A_URL = "http://127.0.0.1:8002"


def _service_error(response: httpx.Response) -> ServiceError:
    try:
        body = response.json()
        code, detail = str(body.get("error", "error")), str(body.get("detail", body))
    except ValueError:
        code, detail = "error", response.text[:200] or response.reason_phrase
    retry_after = response.headers.get("retry-after")
    return ServiceError(
        response.status_code, code, detail, float(retry_after) if retry_after and retry_after.isdigit() else None
    )


class Publisher:
    """Posts messages to Service A. Use as ``async with Publisher(url) as pub``."""

    def __init__(
        self,
        url: str = DEFAULT_A_URL,
        *,
        token: str | None = None,
        timeout_s: float = 10.0,
        max_connections: int = 100,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = client or httpx.AsyncClient(
            timeout=timeout_s,
            headers=headers,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def publish(
        self,
        type: str,
        content: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        topic: str | None = None,
        idempotency_key: str | None = None,
        delay_s: float | None = None,
    ) -> str:
        """POST one message (delivered no sooner than ``delay_s`` from now, if given); return its
        id. Raises ``ServiceError`` or ``BrokerUnavailable``."""
        body: dict[str, Any] = {"type": type, "content": content}
        if headers:
            body["headers"] = dict(headers)
        if topic:
            body["topic"] = topic
        if delay_s:
            body["delay_s"] = delay_s
        request_headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        response = await self._post("/messages", body, request_headers)
        return str(response.json()["id"])

    async def publish_batch(self, messages: Sequence[Mapping[str, Any]], *, topic: str | None = None) -> list[str]:
        """POST many messages in one request (one broker round trip); return their ids."""
        body: dict[str, Any] = {"messages": [dict(m) for m in messages]}
        if topic:
            body["topic"] = topic
        response = await self._post("/messages/batch", body, None)
        return [str(i) for i in response.json()["ids"]]

    async def _post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None) -> httpx.Response:
        try:
            response = await self._client.post(self.url + path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise BrokerUnavailable(f"Cannot reach Service A at {self.url}: {exc or type(exc).__name__}.") from exc
        if response.status_code >= 400:
            raise _service_error(response)
        return response

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
