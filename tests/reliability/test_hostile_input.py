"""Hostile input, one table: each request or frame gets a clear 4xx or close code, both
services stay up, and a canary client of another topic loses nothing and is not held up."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.integration.conftest import Services, healthy
from tests.reliability.harness import Report, report_path
from tests.servers import RedisServer, wait_for

pytestmark = pytest.mark.timeout(60)


@dataclass
class Canary:
    """Publishes one message every 20 ms through A and receives them through B, in a thread."""

    a: str
    b: str
    sent: dict[int, float] = field(default_factory=dict)
    got: dict[int, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # reported by the last test, not lost in a thread
            self.errors.append(repr(exc))

    async def _main(self) -> None:
        async with aconnect(f"{self.b}?topic=canary&group=canary&auto_ack=true") as ws:
            receiving = asyncio.create_task(self._receive(ws))
            async with httpx.AsyncClient(base_url=self.a, timeout=10) as client:
                seq = 0
                while not self.stop.is_set():
                    self.sent[seq] = time.monotonic()
                    r = await client.post("/messages", json={"topic": "canary", "type": "tick", "content": seq})
                    if r.status_code != 202:
                        self.errors.append(f"canary publish {seq}: {r.status_code} {r.text}")
                    seq += 1
                    await asyncio.sleep(0.02)
            deadline = time.monotonic() + 10
            while len(self.got) < len(self.sent) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            receiving.cancel()

    async def _receive(self, ws: Any) -> None:
        async for raw in ws:
            frame = orjson.loads(raw)
            if frame.get("event") == "subscribed":
                self.ready.set()
            elif "id" in frame:
                self.got.setdefault(frame["content"], time.monotonic())


@dataclass
class System:
    a: str
    b: str
    b_http: str
    canary: Canary
    results: list[tuple[str, str, str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """A private Redis, serve-a and serve-b for the whole table, and the canary running meanwhile."""
    services = Services(tmp_path_factory.mktemp("hostile"))
    with RedisServer() as server:
        try:
            a, b = (
                services.start(command, "--broker", server.url, env={"MQCTL_POLL_INTERVAL_S": "0.5"})
                for command in ("serve-a", "serve-b")
            )
            canary = Canary(a.http, b.ws)
            thread = threading.Thread(target=canary.run, name="canary")
            thread.start()
            try:
                assert canary.ready.wait(10), canary.errors
                yield System(a.http, b.ws, b.http, canary)
            finally:
                canary.stop.set()
                thread.join(20)
        finally:
            services.stop_all()


# -- the inputs -----------------------------------------------------------------------


def post(s: System, body: bytes | str, *, path: str = "/messages", headers: dict[str, str] | None = None) -> Any:
    content = body.encode() if isinstance(body, str) else body
    return httpx.post(s.a + path, content=content, headers={"content-type": "application/json", **(headers or {})})


def dumps(value: Any) -> str:
    return json.dumps(value)


HTTP_CASES: list[tuple[str, Callable[[System], httpx.Response], int, str]] = [
    ("malformed JSON", lambda s: post(s, '{"type": "x", "content":'), 400, "invalid_request"),
    ("a JSON array, not an object", lambda s: post(s, "[1, 2, 3]"), 422, "invalid_request"),
    ("wrong type: type is a number", lambda s: post(s, dumps({"type": 5, "content": 1})), 422, "invalid_request"),
    ("missing field: no type", lambda s: post(s, dumps({"content": 1})), 422, "invalid_request"),
    ("empty string type", lambda s: post(s, dumps({"type": "", "content": 1})), 422, "invalid_request"),
    ("huge string type (100,000 chars)", lambda s: post(s, dumps({"type": "t" * 100_000})), 422, "invalid_request"),
    ("deep nesting (100,000 levels)", lambda s: post(s, "[" * 100_000 + "]" * 100_000), 400, "invalid_request"),
    ("invalid UTF-8", lambda s: post(s, b'{"type": "\xff\xfe", "content": 1}'), 400, "invalid_request"),
    ("lone surrogate escape", lambda s: post(s, '{"type": "\\ud800", "content": 1}'), 422, "invalid_request"),
    ("control characters in type", lambda s: post(s, dumps({"type": "a\u0000b\nc"})), 422, "invalid_request"),
    (
        "control characters in topic",
        lambda s: post(s, dumps({"type": "t", "topic": "a\u0007"})),
        422,
        "invalid_request",
    ),
    ("body of 6 MB", lambda s: post(s, dumps({"type": "t", "content": "x" * 6_000_000})), 413, "request_too_large"),
    (
        "body of 6 MB, chunked",
        lambda s: post(s, iter([b'{"type": "t", "content": "'] + [b"x" * 65536] * 96 + [b'"}'])),  # type: ignore[arg-type]
        413,
        "request_too_large",
    ),
    ("unknown field", lambda s: post(s, dumps({"type": "t", "content": 1, "colour": "red"})), 422, "invalid_request"),
    (
        "wrong content type",
        lambda s: post(s, dumps({"type": "t"}), headers={"content-type": "text/plain"}),
        415,
        "invalid_request",
    ),
    (
        "5,000 headers",
        lambda s: post(s, dumps({"type": "t"}), headers={f"x-h{i}": "v" for i in range(5000)}),
        431,
        "headers_too_large",
    ),
    (
        "one header of 200 KB",
        lambda s: post(s, dumps({"type": "t"}), headers={"x-big": "v" * 200_000}),
        431,
        "headers_too_large",
    ),
    (
        "Idempotency-Key of 10,000 chars",
        lambda s: post(s, dumps({"type": "t"}), headers={"idempotency-key": "k" * 10_000}),
        422,
        "invalid_request",
    ),
    (
        "batch of 1,001",
        lambda s: post(s, dumps({"messages": [{"type": "t"}] * 1001}), path="/messages/batch"),
        422,
        "invalid_request",
    ),
    ("empty batch", lambda s: post(s, dumps({"messages": []}), path="/messages/batch"), 422, "invalid_request"),
    ("NaN content", lambda s: post(s, '{"type": "t", "content": NaN}'), 422, "invalid_message"),
    (
        "a number of 5,000 digits",
        lambda s: post(s, '{"type": "t", "content": ' + "9" * 5000 + "}"),
        400,
        "invalid_request",
    ),
    ("GET on a POST endpoint", lambda s: httpx.get(s.a + "/messages"), 405, "method_not_allowed"),
    ("unknown path", lambda s: httpx.get(s.a + "/../../etc/passwd"), 404, "not_found"),
]


def ws_frames(url: str, *frames: str | bytes, want: int = 1, timeout_s: float = 5) -> tuple[list[dict], int | None]:
    """Connect, wait for 'subscribed' (or the refusal), send ``frames``, and return the next
    ``want`` frames and the close code if the server closed."""
    got: list[dict] = []
    try:
        with connect(url, open_timeout=timeout_s, max_size=None) as ws:
            first = orjson.loads(ws.recv(timeout=timeout_s))
            if first.get("event") != "subscribed":
                got.append(first)
                ws.recv(timeout=timeout_s)  # the close follows
            for frame in frames:
                ws.send(frame)
            while len(got) < want:
                got.append(orjson.loads(ws.recv(timeout=timeout_s)))
            ws.send('{"ack": "1-1"}')  # still open: it answers
            got.append(orjson.loads(ws.recv(timeout=timeout_s)))
    except ConnectionClosed as exc:
        return got, exc.rcvd.code if exc.rcvd else None
    return got, None


def frames_after_close(s: System) -> tuple[list[dict], int | None]:
    """A client that sends its close frame, then more frames on the same socket."""
    host, port = s.b.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET /ws?topic=hostile HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")

        def frame(opcode: int, payload: bytes) -> bytes:
            mask = os.urandom(4)
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked

        sock.sendall(frame(0x8, struct.pack("!H", 1000)) + frame(0x1, b'{"ack": "1-1"}') + frame(0x2, b"\x00"))
        data = b""
        with pytest.raises((TimeoutError, ConnectionError)):
            while chunk := sock.recv(4096):
                data += chunk
            raise ConnectionResetError  # the server closed the socket: what the test wants
    close = data.rfind(b"\x88")
    code = struct.unpack("!H", data[close + 2 : close + 4])[0] if close >= 0 and len(data) >= close + 4 else None
    return [], code


WS_CASES: list[tuple[str, Callable[[System], tuple[list[dict], int | None]], str | None, int | None]] = [
    ("binary frame", lambda s: ws_frames(f"{s.b}?topic=hostile", b"\x00\x01\x02"), "binary_frame", None),
    ("text frame that is not JSON", lambda s: ws_frames(f"{s.b}?topic=hostile", "ack please"), "invalid_json", None),
    (
        "frame nested 30,000 deep",
        lambda s: ws_frames(f"{s.b}?topic=hostile", "[" * 30_000 + "]" * 30_000),
        "invalid_json",
        None,
    ),
    ("unknown frame shape", lambda s: ws_frames(f"{s.b}?topic=hostile", '{"hello": 1}'), "unknown_frame", None),
    ("ack of a number", lambda s: ws_frames(f"{s.b}?topic=hostile", '{"ack": 5}'), "unknown_frame", None),
    ("ack of an unknown id", lambda s: ws_frames(f"{s.b}?topic=hostile", '{"ack": "1-0"}'), "unknown_id", None),
    ("frame over 64 KiB", lambda s: ws_frames(f"{s.b}?topic=hostile", "x" * 70_000), None, 1009),
    ("frames after close", frames_after_close, None, 1000),
    ("mode=sideways", lambda s: ws_frames(f"{s.b}?mode=sideways"), "invalid_parameter", 1008),
    ("last_id=banana", lambda s: ws_frames(f"{s.b}?mode=broadcast&last_id=banana"), "invalid_parameter", 1008),
    ("last_id in group mode", lambda s: ws_frames(f"{s.b}?last_id=1-0"), "invalid_parameter", 1008),
    ("topic with braces and spaces", lambda s: ws_frames(f"{s.b}?topic=%7Ba%20b%7D"), "invalid_parameter", 1008),
    ("topic of 5,000 chars", lambda s: ws_frames(f"{s.b}?topic={'t' * 5000}"), "invalid_parameter", 1008),
    ("group=NUL", lambda s: ws_frames(f"{s.b}?group=%00"), "invalid_parameter", 1008),
    ("auto_ack=perhaps", lambda s: ws_frames(f"{s.b}?auto_ack=perhaps"), "invalid_parameter", 1008),
    ("header filter without a name", lambda s: ws_frames(f"{s.b}?header=:v"), "invalid_parameter", 1008),
]


def services_up(s: System) -> bool:
    return healthy(s.a) and healthy(s.b_http)


@pytest.mark.parametrize(("name", "send", "status", "error"), HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_hostile_http_request(system: System, name: str, send: Callable[..., Any], status: int, error: str) -> None:
    """A hostile request to Service A gets its documented 4xx as JSON, and the service stays up."""
    response = send(system)
    system.results.append((f"HTTP: {name}", f"{response.status_code} {response.json().get('error')}", ""))
    assert (response.status_code, response.json()["error"]) == (status, error), response.text[:300]
    assert response.json()["detail"]
    assert services_up(system)


@pytest.mark.parametrize(("name", "send", "error", "close"), WS_CASES, ids=[c[0] for c in WS_CASES])
def test_hostile_websocket_input(
    system: System, name: str, send: Callable[..., Any], error: str | None, close: int | None
) -> None:
    """A hostile frame or query to Service B gets its error frame or close code, and the service stays up."""
    frames, code = send(system)
    errors = [f["error"] for f in frames if "error" in f]
    system.results.append(
        (f"WebSocket: {name}", errors[0] if errors else "-", f"close {code}" if code else "stays open")
    )
    if error is not None:
        assert errors and errors[0] == error, frames
    assert code == close, (frames, code)
    if close is None:
        assert errors[-1] == "unknown_id", "the connection did not answer after the bad input"
    assert services_up(system)


HANDSHAKE_CASES = [
    ("request line over 8 KiB", "t" * 10_000, {}),
    ("200 headers", "t", {f"x-h{i}": "v" for i in range(200)}),
]


@pytest.mark.parametrize(("name", "topic", "headers"), HANDSHAKE_CASES, ids=[c[0] for c in HANDSHAKE_CASES])
def test_websocket_handshake_too_large_gets_a_4xx_promptly(
    system: System, name: str, topic: str, headers: dict[str, str]
) -> None:
    """An upgrade request too large to parse is answered with a 4xx within the client's 3 s open
    timeout (uvicorn 0.54 built that answer and never sent it: the client hung until it gave up)."""
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{system.b}?topic={topic}", additional_headers=headers, open_timeout=3).close()
    status = refused.value.response.status_code
    system.results.append((f"WebSocket handshake: {name}", str(status), "refused"))
    assert 400 <= status < 500
    assert services_up(system)


def test_canary_lost_nothing_and_was_not_held_up(
    system: System, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Through the whole table, the canary client of another topic got every message, promptly."""
    canary = system.canary
    canary.stop.set()
    wait_for(lambda: len(canary.got) >= len(canary.sent) or bool(canary.errors), 15, "the canary to drain")
    lost = sorted(set(canary.sent) - set(canary.got))
    delays = sorted(canary.got[seq] - canary.sent[seq] for seq in canary.got if seq in canary.sent)
    Report(report_path(tmp_path), request.node.nodeid).record(
        "Bad input: hostile requests and frames",
        f"{len(system.results)} hostile inputs to serve-a and serve-b while a canary client ran",
        messages=len(canary.sent),
        lost=len(lost),
        duplicated=0,
        inputs=len(system.results),
        canary_delay_p50_s=round(delays[len(delays) // 2], 3) if delays else None,
        canary_delay_max_s=round(delays[-1], 3) if delays else None,
        answers={
            name: " ".join(p for p in (answer, code) if p not in ("", "-")) for name, answer, code in system.results
        },
    )
    assert not canary.errors, canary.errors
    assert not lost, lost[:20]
    assert delays[-1] < 3.0
