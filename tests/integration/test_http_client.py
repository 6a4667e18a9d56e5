"""mqctl.loadtest.http against a tiny scripted server on loopback: keep-alive, framing, failures."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from mqctl.core.errors import ConfigError
from mqctl.loadtest.http import HttpConnection, Origin
from tests.servers import free_port

pytestmark = pytest.mark.timeout(20)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b'HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"id":"1"}\n'


class Server:
    """Serves each connection with ``handler``; notes the connections and the request heads."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        lines = head.split(b"\r\n")
        length = next((int(line[15:]) for line in lines if line.lower().startswith(b"content-length:")), 0)
        body = await reader.readexactly(length)
        self.bodies.append(body)
        return head


async def _start(handler_for: Callable[[Server], Handler], context: ssl.SSLContext | None = None) -> Server:
    server = Server(lambda r, w: handler_for(server)(r, w))
    server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=context)
    server.port = server.server.sockets[0].getsockname()[1]
    return server


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    started: list[Server] = []

    async def start(handler_for: Callable[[Server], Handler], context: ssl.SSLContext | None = None) -> Server:
        server = await _start(handler_for, context)
        started.append(server)
        return server

    yield start
    for server in started:
        assert server.server is not None
        server.server.close()
        await server.server.wait_closed()


def answering_once(response: bytes) -> Callable[[Server], Handler]:
    """A handler that answers the first request on a connection with ``response``, then ends it."""

    def handler_for(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(response)
            await writer.drain()

        return handler

    return handler_for


def answering(*responses: bytes) -> Callable[[Server], Handler]:
    """A handler that answers the n-th request on a connection with ``responses[n]`` (the last one repeats)."""

    def handler_for(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            n = 0
            while True:
                await server.read_request(reader)
                writer.write(responses[min(n, len(responses) - 1)])
                await writer.drain()
                n += 1

        return handler

    return handler_for


def connection(server: Server, **kwargs: object) -> HttpConnection:
    return HttpConnection(Origin.parse(f"http://127.0.0.1:{server.port}"), **kwargs)  # type: ignore[arg-type]


async def test_requests_reuse_one_keep_alive_connection(serve) -> None:
    """Several requests go over one connection, with Host, the fixed headers and a Content-Length body."""
    server = await serve(answering(OK))
    http = connection(server, headers={"Authorization": "Bearer s3cret"})
    for i in range(3):
        response = await http.request("POST", "/messages", b'{"n":%d}' % i, content_type="application/json")
        assert (response.status, response.body) == (202, b'{"id":"1"}\n')
        assert (b"content-type", b"application/json") in response.headers
    await http.request("GET", "/health")
    await http.aclose()
    assert server.connections == 1
    assert http.connects == 1
    first = server.heads[0].decode()
    assert first.startswith("POST /messages HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in first
    assert "Authorization: Bearer s3cret\r\n" in first
    assert "Content-Type: application/json\r\nContent-Length: 7\r\n" in first
    assert server.bodies[:3] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert server.heads[3].startswith(b"GET /health HTTP/1.1\r\n") and b"Content-Length" not in server.heads[3]


async def test_a_non_2xx_status_is_read_and_the_connection_kept(serve) -> None:
    """A 503 with a body is an answer, not a failure: its status and body come back, the connection stays."""
    unavailable = b'HTTP/1.1 503 Service Unavailable\r\ncontent-length: 20\r\n\r\n{"error":"no redis"}'
    server = await serve(answering(unavailable, OK))
    http = connection(server)
    first = await http.request("POST", "/messages", b"{}")
    second = await http.request("POST", "/messages", b"{}")
    await http.aclose()
    assert (first.status, first.body) == (503, b'{"error":"no redis"}')
    assert second.status == 202
    assert server.connections == 1


async def test_a_chunked_response_is_reassembled(serve) -> None:
    """A chunked body (with an extension and a trailer) is joined, and the connection is reused after it."""
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\ntrailer: x\r\n\r\n"
    )
    server = await serve(answering(chunked, OK))
    http = connection(server)
    assert (await http.request("GET", "/stream")).body == b"hello, world"
    assert (await http.request("GET", "/health")).status == 202
    await http.aclose()
    assert server.connections == 1


async def test_a_dropped_connection_raises_then_the_next_request_reconnects(serve) -> None:
    """A connection closed before the answer raises ConnectionResetError; the next request opens a new one."""

    def handler_for(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            if server.connections == 1:
                return  # close without answering
            writer.write(OK)
            await writer.drain()
            await reader.read()

        return handler

    server = await serve(handler_for)
    http = connection(server)
    with pytest.raises(ConnectionResetError, match="closed the connection"):
        await http.request("POST", "/messages", b"{}")
    assert (await http.request("POST", "/messages", b"{}")).status == 202
    await http.aclose()
    assert (server.connections, http.connects) == (2, 2)


async def test_a_body_cut_short_raises(serve) -> None:
    """A response that promises 100 bytes and closes after 10 raises ConnectionResetError, not a short body."""
    server = await serve(answering_once(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789"))
    http = connection(server)
    with pytest.raises(ConnectionResetError):
        await http.request("GET", "/health")
    assert not http.is_open
    await http.aclose()


async def test_a_connection_the_server_closed_while_idle_is_reopened_without_an_error(serve) -> None:
    """After the server's keep-alive timeout closed the idle connection, the next request opens another."""
    # Each connection is closed after one answer, as uvicorn does when it idles past its timeout.
    server = await serve(answering_once(OK))
    http = connection(server)
    assert (await http.request("GET", "/health")).status == 202
    for _ in range(100):  # until the close has arrived
        if not http.is_open:
            break
        await asyncio.sleep(0.01)
    assert (await http.request("GET", "/health")).status == 202
    await http.aclose()
    assert server.connections == 2


async def test_connection_close_and_http_1_0_are_honoured(serve) -> None:
    """``Connection: close`` ends the connection after its response; an HTTP/1.0 body without a
    length runs to the close."""
    close = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
    server = await serve(answering(close))
    http = connection(server)
    await http.request("GET", "/a")
    await http.request("GET", "/b")
    assert server.connections == 2

    old = await serve(answering_once(b"HTTP/1.0 200 OK\r\n\r\nto the end"))
    http10 = connection(old)
    assert (await http10.request("GET", "/")).body == b"to the end"
    assert not http10.is_open
    await http.aclose()
    await http10.aclose()


async def test_a_silent_server_times_out_and_the_connection_is_dropped(serve) -> None:
    """A server that never answers raises TimeoutError after timeout_s; it does not hang."""

    def silent(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            await reader.read()

        return handler

    server = await serve(silent)
    http = connection(server, timeout_s=0.2)
    with pytest.raises(TimeoutError):
        await http.request("POST", "/messages", b"{}")
    assert not http.is_open
    await http.aclose()


async def test_an_answer_that_is_not_http_raises(serve) -> None:
    """A first line that is not an HTTP/1.x status raises ConnectionAbortedError."""
    server = await serve(answering(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"))
    http = connection(server)
    with pytest.raises(ConnectionAbortedError, match="not HTTP"):
        await http.request("GET", "/health")
    await http.aclose()


async def test_an_unreachable_server_raises_an_os_error() -> None:
    """Nothing listening: the request raises ConnectionRefusedError at once."""
    http = HttpConnection(Origin.parse(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(ConnectionRefusedError):
        await http.request("GET", "/health")
    await http.aclose()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed key and certificate for 127.0.0.1, made with openssl."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), *subject],
        check=True,
        capture_output=True,
    )
    return key, cert


async def test_https_with_a_shared_context(serve, certificate: tuple[Path, Path]) -> None:
    """https: the connection verifies the server against the context it was given, and keeps alive."""
    key, cert = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = await serve(answering(OK), server_context)
    client_context = ssl.create_default_context(cafile=str(cert))
    origin = Origin.parse(f"https://127.0.0.1:{server.port}/prefix/")
    https = [HttpConnection(origin, ssl_context=client_context) for _ in range(2)]
    for http in https:
        for _ in range(2):
            assert (await http.request("POST", "/messages", b"{}")).status == 202
        await http.aclose()
    assert server.connections == 2
    assert server.heads[0].startswith(b"POST /prefix/messages HTTP/1.1\r\n")


def test_origin_parses_urls() -> None:
    """Origin takes default ports, keeps a path prefix, and names a URL it cannot use."""
    assert Origin.parse("http://example.com") == Origin("http", "example.com", 80, "")
    assert Origin.parse("https://example.com/api/") == Origin("https", "example.com", 443, "/api")
    assert Origin.parse("https://example.com:8443").host_header == "example.com:8443"
    assert Origin.parse("http://[::1]:8002").host_header == "[::1]:8002"
    assert Origin.parse("http://127.0.0.1").ssl_context() is None
    with pytest.raises(ConfigError, match="ws://x"):
        Origin.parse("ws://x")
