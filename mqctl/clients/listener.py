"""Client B: receives messages from Service B over WebSocket, acks them, reconnects by itself.

    async with Listener("ws://127.0.0.1:8003/ws", types=["note"]) as listener:
        async for frame in listener:
            print(frame["content"])
            await listener.ack(frame)

A reconnect resumes: in a group, unacknowledged messages come back (attempt + 1); in
broadcast mode the listener sends the last id it saw and gets everything since.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from mqctl.core.errors import BrokerUnavailable, ServiceError
from mqctl.core.retry import RetryPolicy, retry_call

log = logging.getLogger(__name__)

DEFAULT_B_URL = "ws://127.0.0.1:8003/ws"

# Closes that reconnecting would not mend: policy violation (bad parameters, auth), too big.
_FINAL_CLOSE_CODES = {1008, 1009}


def position_after(frame: dict[str, Any]) -> str:
    """Where a broadcast resumes after ``frame``: the ``position`` Service B puts in the frames of
    a partitioned topic, else the message's id. Positions are the broker's: never parsed here."""
    return str(frame.get("position") or frame["id"])


class Listener:
    """A WebSocket client of Service B that yields message frames (dicts)."""

    def __init__(
        self,
        url: str = DEFAULT_B_URL,
        *,
        topic: str | None = None,
        types: Sequence[str] = (),
        headers: Sequence[str] = (),
        group: str | None = None,
        broadcast: bool = False,
        auto_ack: bool = False,
        last_id: str | None = None,
        token: str | None = None,
        reconnect: RetryPolicy | None = None,
        max_reconnects: int | None = None,
    ) -> None:
        self.base_url = url
        # Batched frames: several messages in one frame, one parse for all (Service B's frames=batch).
        self.params: dict[str, Any] = {"mode": "broadcast" if broadcast else "group", "frames": "batch"}
        if topic:
            self.params["topic"] = topic
        if types:
            self.params["type"] = list(types)
        if headers:
            self.params["header"] = list(headers)
        if group and not broadcast:
            self.params["group"] = group
        if auto_ack:
            self.params["auto_ack"] = "true"
        self.broadcast = broadcast
        self.last_id = last_id
        self.token = token
        self.reconnect = reconnect or RetryPolicy(base_s=0.2, cap_s=5.0)
        self.sleep: Callable[[float], Awaitable[object]] = asyncio.sleep
        """How the listener waits before it tries to connect again (tests replace it)."""
        self.max_reconnects = max_reconnects
        self.reconnects = 0
        self.events: list[dict[str, Any]] = []
        self._ws: ClientConnection | None = None
        self._closed = False
        self._ready: deque[dict[str, Any]] = deque()  # messages of the last batched frame, not yet yielded

    def _url(self) -> str:
        params = dict(self.params)
        if self.broadcast and self.last_id:
            params["last_id"] = self.last_id
        if self.token:
            params["token"] = self.token
        return f"{self.base_url}?{urlencode(params, doseq=True)}"

    async def _connect(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None

        async def handshake() -> ClientConnection:
            return await connect(self._url(), additional_headers=headers, max_size=2**24, open_timeout=5)

        def retrying(exc: Exception, wait_s: float) -> None:
            log.warning("Cannot reach Service B at %s (%s); retrying in %.1f s.", self.base_url, exc, wait_s)

        try:
            return await retry_call(
                handshake,
                policy=self.reconnect,
                deadline_s=None,
                should_retry=_reachable_later,
                max_retries=self.max_reconnects,
                on_retry=retrying,
                sleep=self.sleep,
            )
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            if isinstance(exc, InvalidStatus) and not _reachable_later(exc):
                status = exc.response.status_code
                raise ServiceError(status, "handshake_refused", f"Service B refused the WebSocket: {status}.") from exc
            raise BrokerUnavailable(f"Cannot reach Service B at {self.base_url}: {exc}.") from exc

    async def __aenter__(self) -> Listener:
        self._ws = await self._connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while not self._closed:
            if self._ready:
                frame = self._ready.popleft()
                self.last_id = position_after(frame)  # as each is yielded: a resume repeats nothing unseen
                return frame
            if self._ws is None:
                self._ws = await self._connect()
            try:
                raw = await self._ws.recv()
            except ConnectionClosed as exc:
                self._ws = None
                self._ready.clear()  # they come again: a group redelivers them, a broadcast resumes before them
                if self._closed:
                    break
                rcvd = exc.rcvd
                if rcvd is not None and rcvd.code in _FINAL_CLOSE_CODES:
                    raise ServiceError(rcvd.code, "closed", rcvd.reason or "Service B closed the connection.") from exc
                self.reconnects += 1
                log.warning("Service B closed the connection (%s); reconnecting.", rcvd or "no close frame")
                continue
            frame = orjson.loads(raw)
            if isinstance(frame, list):
                self._ready.extend(m for m in frame if isinstance(m, dict))
                continue
            if not isinstance(frame, dict):
                continue
            if "id" in frame and "type" in frame:
                self.last_id = position_after(frame)
                return frame
            self.events.append(frame)  # subscribed / history_lost / error frames
            if frame.get("event") == "history_lost" or "error" in frame:
                log.warning("Service B: %s", frame.get("detail"))
        raise StopAsyncIteration

    async def ack(self, frame: Mapping[str, Any]) -> None:
        """Acknowledge a frame's message (a no-op in broadcast mode)."""
        if self.broadcast or self._ws is None:
            return
        with contextlib.suppress(ConnectionClosed):  # not acked: the group redelivers it
            await self._ws.send(orjson.dumps({"ack": frame["id"]}).decode())

    async def aclose(self) -> None:
        self._closed = True
        if self._ws is not None:
            await self._ws.close()
            self._ws = None


def _reachable_later(exc: Exception) -> bool:
    """Whether a failed handshake may work if tried again: not a 4xx (a refusal)."""
    if isinstance(exc, InvalidStatus):
        return not 400 <= exc.response.status_code < 500
    return isinstance(exc, (OSError, InvalidHandshake, TimeoutError))
