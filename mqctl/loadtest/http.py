"""A minimal HTTP/1.1 client for the load generator: one keep-alive connection, one request at a time.

    origin = Origin.parse("http://127.0.0.1:8002")
    connection = HttpConnection(origin, headers={"Authorization": "Bearer t"})
    response = await connection.request("POST", "/messages", body, content_type="application/json")
    await connection.aclose()

``mqctl loadtest`` gives each worker one of these. A shared ``httpx.AsyncClient`` scans its
whole pool on every request (encode/httpx#3215), which held 50 workers to 25-300 requests/s
on a 2-core machine; and h11, the parser under httpx, costs about 160 µs per request and
response there, CPU taken from the very services being measured. This client writes a request
with a ``Content-Length`` body and reads a response framed by ``Content-Length``, by
``Transfer-Encoding: chunked`` or by the connection's close, over asyncio streams, for http and
https (pass one ``ssl.SSLContext`` to every connection; see ``Origin.ssl_context``).

A request that fails closes the connection and raises; the next request opens a new one.
Nothing is retried, so a POST is never sent twice. The exceptions are the standard library's:
``OSError`` when the connection cannot be opened (``ConnectionRefusedError``, ``socket.gaierror``,
``ssl.SSLError``), ``ConnectionResetError`` when it drops before the response is complete,
``ConnectionAbortedError`` when the answer is not HTTP/1.1, and ``TimeoutError`` when
``timeout_s`` passes (from opening the connection to the end of the response).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from mqctl.core.errors import ConfigError

_MAX_HEAD_BYTES = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
_HEX_DIGITS = b"0123456789abcdefABCDEF"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: scheme, host, port, and a path prefix put before every request's path."""

    scheme: str
    host: str
    port: int
    base_path: str = ""

    @classmethod
    def parse(cls, url: str) -> Origin:
        """An origin from ``http://host[:port][/prefix]`` or ``https://...``."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"Cannot use {url!r} as an HTTP URL; expected http://host[:port] or https://host[:port].")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise ConfigError(f"The port in {url!r} is not a number from 0 to 65535.") from exc
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A default client context for https (build it once and share it), None for http."""
        return ssl.create_default_context() if self.scheme == "https" else None


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    """Header names lower-cased, values as sent; in order, repeats kept."""
    body: bytes


class HttpConnection:
    """One keep-alive HTTP/1.1 connection to ``origin``, opened on the first request and
    reopened after a failure or a ``Connection: close``. Not for concurrent requests."""

    def __init__(
        self,
        origin: Origin,
        *,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if origin.scheme == "https" and ssl_context is None:
            ssl_context = origin.ssl_context()
        self.origin = origin
        self.timeout_s = timeout_s
        self._ssl = ssl_context
        lines = [f"Host: {origin.host_header}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self._fixed_head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.connects = 0
        """How many times a connection was opened (1 while keep-alive holds)."""

    @property
    def is_open(self) -> bool:
        return self._writer is not None and not self._writer.is_closing() and not self._reader_at_eof()

    def _reader_at_eof(self) -> bool:
        return self._reader is not None and self._reader.at_eof()

    async def open(self) -> None:
        """Open the connection now (the first request would otherwise); no-op if it is open."""
        if self.is_open:
            return
        self._close_now()
        async with asyncio.timeout(self.timeout_s):
            await self._open()

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        server_hostname = self.origin.host if self._ssl is not None else None
        self._reader, self._writer = await asyncio.open_connection(
            self.origin.host, self.origin.port, ssl=self._ssl, server_hostname=server_hostname, limit=_MAX_HEAD_BYTES
        )
        self.connects += 1
        return self._reader, self._writer

    async def request(
        self, method: str, path: str, body: bytes | None = None, *, content_type: str | None = None
    ) -> HttpResponse:
        """Send one request and read its whole response. ``body`` goes with a ``Content-Length``."""
        head = f"{method} {self.origin.base_path}{path} HTTP/1.1\r\n".encode("latin-1") + self._fixed_head
        if content_type is not None:
            head += b"Content-Type: " + content_type.encode("latin-1") + b"\r\n"
        if body is not None:
            head += b"Content-Length: %d\r\n" % len(body)
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = self._reader, self._writer
                if reader is None or writer is None or not self.is_open:
                    # never opened, failed before, or the server closed it while idle (keep-alive timeout)
                    self._close_now()
                    reader, writer = await self._open()
                writer.write(head + b"\r\n" + body if body else head + b"\r\n")
                await writer.drain()
                response, keep_alive = await _read_response(reader, method)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
            self._close_now()
            raise ConnectionResetError(
                f"{self.origin.host_header} closed the connection before the response to {method} {path} was complete."
            ) from exc
        except asyncio.LimitOverrunError as exc:
            self._close_now()
            raise ConnectionAbortedError(f"A line of the response is over {_MAX_HEAD_BYTES} bytes.") from exc
        except BaseException:
            self._close_now()
            raise
        if not keep_alive:
            self._close_now()
        return response

    def _close_now(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def aclose(self) -> None:
        writer = self._writer
        self._close_now()
        if writer is not None:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _read_response(reader: asyncio.StreamReader, method: str) -> tuple[HttpResponse, bool]:
    """Read one response; also say whether the connection may carry another request."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise ConnectionAbortedError(f"The answer is not HTTP/1.1: its first line is {lines[0][:80]!r}.")
        status = int(code)
        if status >= 200 or status == 101:
            break  # 1xx are interim responses: the real one follows
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise ConnectionAbortedError(f"The response has a malformed header line {line[:80]!r}.")
        headers.append((name.lower(), value.strip()))
    connection = {t.strip() for k, v in headers if k == b"connection" for t in v.lower().split(b",")}
    keep_alive = b"close" not in connection and (version == b"HTTP/1.1" or b"keep-alive" in connection)
    codings = [t.strip() for k, v in headers if k == b"transfer-encoding" for t in v.lower().split(b",")]
    lengths = {v for k, v in headers if k == b"content-length"}
    if method == "HEAD" or status in _NO_BODY_STATUSES or status < 200:
        body = b""
    elif codings:
        if codings[-1] != b"chunked":
            body, keep_alive = await reader.read(), False  # framed by the close
        else:
            body = await _read_chunked(reader)
    elif lengths:
        if len(lengths) != 1 or not (length := lengths.pop()).isdigit():
            raise ConnectionAbortedError(f"The response has an invalid Content-Length {sorted(lengths)!r}.")
        body = await reader.readexactly(int(length))
    else:
        body, keep_alive = await reader.read(), False
    return HttpResponse(status, headers, body), keep_alive


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        size_field = line.split(b";", 1)[0].strip()
        if not size_field or size_field.strip(_HEX_DIGITS):
            raise ConnectionAbortedError(f"The response has an invalid chunk size line {line[:80]!r}.")
        size = int(size_field, 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers, ignored
            return b"".join(chunks)
        chunk = await reader.readexactly(size + 2)
        if chunk[-2:] != b"\r\n":
            raise ConnectionAbortedError("A chunk of the response does not end with CRLF.")
        chunks.append(chunk[:-2])
