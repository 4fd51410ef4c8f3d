"""A lean HTTP/1.1 keep-alive transport for the load generators of ``rfork bench scheduler``.

A load generator must cost less than what it measures. ``httpx``'s own pool
(httpcore) costs a client ~1.9 ms of CPU per request on the 2-core bench
machine, ten times what the scheduler spends answering it: a 1024-member
scale-out's ~3,500 requests took one load-generator CPU 14 s, while the
simulated scale-out lasts 2.3 s, so the bench measured a trickle of lone
requests, not a scale-out. :class:`KeepAliveTransport` is what is left of a
transport when only the scheduler is talked to: plain HTTP/1.1 over asyncio
streams, kept-alive connections reused in turn, bodies by ``content-length``
(or chunked). ~0.18 ms a request with ``SchedulerClient`` on top, so the
members' requests keep their typed models and errors, as ``rfork fork``'s.

    >>> client = SchedulerClient(url, transport=KeepAliveTransport(url, max_connections=64))

Failures are httpx's (``ConnectError``, ``ReadTimeout``, ``RemoteProtocolError``), so
``SchedulerClient`` reports them as ``SchedulerUnreachable`` as it does for its own transport.
"""

from __future__ import annotations

import asyncio
import sys
import time
from urllib.parse import urlsplit

import httpx

IDLE_REUSE_SECONDS = 2.0
"""An idle connection older than this is closed, not reused: the server closes its idle ones
(uvicorn after 5 s), and a request written as it does so would fail with nothing to say whether
the server saw it."""

HEAD_LIMIT_BYTES = 64 * 1024


class _Connection:
    __slots__ = ("reader", "writer", "last_used")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.last_used = time.monotonic()

    def reusable(self, now: float) -> bool:
        return (now - self.last_used < IDLE_REUSE_SECONDS and not self.reader.at_eof()
                and not self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """At most ``max_connections`` HTTP/1.1 connections to the host of ``base_url``, each carrying one
    request at a time and kept for the next."""

    def __init__(self, base_url: str, max_connections: int = 64) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"KeepAliveTransport speaks plain http to one host; got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        async with self._slots:
            connection = await self._connection(request, timeouts.get("connect"))
            try:
                status, headers, body, keep = await _within(
                    timeouts.get("read"), self._exchange(connection, request), request)
            except BaseException:
                connection.close()  # a half-read reply: the connection cannot carry another
                raise
            if keep:
                connection.last_used = time.monotonic()
                self._idle.append(connection)
            else:
                connection.close()
        return httpx.Response(status, headers=headers, content=body, request=request)

    async def _connection(self, request: httpx.Request, timeout: float | None) -> _Connection:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable(now):
                return connection
            connection.close()
        try:
            reader, writer = await _within(timeout, asyncio.open_connection(self.host, self.port), request,
                                           httpx.ConnectTimeout)
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}", request=request) from exc
        return _Connection(reader, writer)

    async def _exchange(self, connection: _Connection, request: httpx.Request):
        body = request.content
        lines = [b"%s %s HTTP/1.1" % (request.method.encode(), request.url.raw_path)]
        lines += [b"%s: %s" % (name, value) for name, value in request.headers.raw
                  if name.lower() not in (b"content-length", b"transfer-encoding", b"connection")]
        lines.append(b"content-length: %d" % len(body))
        connection.writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        reader = connection.reader
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise httpx.RemoteProtocolError("a reply's head is over the stream limit", request=request) from exc
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise httpx.RemoteProtocolError(f"the server closed the connection: {exc}", request=request) from exc
        status_line, *header_lines = head[:-4].split(b"\r\n")
        try:
            version, code = status_line.split(b" ", 2)[:2]
            status = int(code)
        except ValueError as exc:
            raise httpx.RemoteProtocolError(f"not an HTTP status line: {status_line[:80]!r}", request=request) from exc
        headers = []
        length = None
        chunked = False
        keep = version == b"HTTP/1.1"
        for line in header_lines:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            headers.append((name, value))
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                keep = value.lower() != b"close"
        try:
            if chunked:
                content = await _read_chunked(reader)
                headers = [(k, v) for k, v in headers if k != b"transfer-encoding"]
            elif length is not None:
                content = await reader.readexactly(length)
            elif status in (204, 304) or request.method == "HEAD":
                content = b""
            else:
                content, keep = await reader.read(), False  # delimited by the close
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise httpx.RemoteProtocolError(f"the server closed the connection mid-reply: {exc}",
                                            request=request) from exc
        return status, headers, content, keep

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


if sys.version_info >= (3, 11):
    async def _within(seconds: float | None, awaitable, request: httpx.Request,
                      timeout_error: type[httpx.TimeoutException] = httpx.ReadTimeout):
        try:
            async with asyncio.timeout(seconds):
                return await awaitable
        except TimeoutError as exc:
            raise timeout_error(f"no reply within {seconds} s", request=request) from exc
else:  # pragma: no cover - Python 3.10
    async def _within(seconds: float | None, awaitable, request: httpx.Request,
                      timeout_error: type[httpx.TimeoutException] = httpx.ReadTimeout):
        try:
            return await asyncio.wait_for(awaitable, seconds)
        except asyncio.TimeoutError as exc:
            raise timeout_error(f"no reply within {seconds} s", request=request) from exc
