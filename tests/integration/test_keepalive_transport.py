"""bench/keepalive.py, the load generators' HTTP transport, against real servers on loopback.

A real scheduler app under uvicorn for the typed path (replies, errors, keep-alive), and a raw
asyncio server that answers as a server may but uvicorn does not (chunked bodies, ``connection:
close``, a body delimited by the close, silence, a connection dropped mid-reply).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from bench.keepalive import KeepAliveTransport
from rfork_api import models as m
from rfork_api.clients import SchedulerClient
from rfork_api.errors import SchedulerUnreachable, UnknownJob
from scheduler.service import SchedulerConfig, create_app

pytestmark = pytest.mark.timeout(60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scheduler_url():
    port = _free_port()
    config = uvicorn.Config(create_app(SchedulerConfig(), registry=CollectorRegistry(), run_reaper=False),
                            host="127.0.0.1", port=port, log_config=None, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the scheduler under uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_typed_replies_and_errors_over_kept_alive_connections(scheduler_url):
    async def scenario():
        transport = KeepAliveTransport(scheduler_url, max_connections=2)
        client = SchedulerClient(scheduler_url, transport=transport)
        try:
            healths = await asyncio.gather(*(client.health() for _ in range(20)))
            with pytest.raises(UnknownJob):
                await client.work("no-such-job", m.WorkRequest(max_assignments=1))
            return healths, len(transport._idle)
        finally:
            await client.aclose()

    healths, idle = asyncio.run(scenario())
    assert all(h.status == "ok" and h.jobs == 0 for h in healths)
    assert idle == 2  # 21 requests over at most two connections, both kept for the next


class RawServer:
    """Answers each request on a connection with the next of ``replies`` (bytes, or None: say
    nothing), then reads the next request; ``close_after`` closes after the reply."""

    def __init__(self, replies: list[bytes | None], close_after: bool = False) -> None:
        self.replies = replies
        self.close_after = close_after
        self.connections = 0
        self.url = ""

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def _serve(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                await reader.readexactly(length)
                reply = self.replies.pop(0)
                if reply is None:
                    await asyncio.sleep(3600)
                writer.write(reply)
                await writer.drain()
                if self.close_after:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.mark.parametrize("reply, body", [
    (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", b"hello"),
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n", b"hello"),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
])
def test_bodies_by_length_by_chunks_and_none(reply, body):
    async def scenario():
        async with RawServer([reply, reply]) as server:
            transport = KeepAliveTransport(server.url)
            async with httpx.AsyncClient(transport=transport, base_url=server.url) as http:
                first, second = await http.post("/x", content=b"1"), await http.post("/x", content=b"2")
            return first, second, server.connections

    first, second, connections = asyncio.run(scenario())
    assert first.content == second.content == body
    assert "transfer-encoding" not in first.headers
    assert connections == 1  # the second request went over the first one's connection


def test_a_reply_that_says_close_is_not_reused_and_a_body_may_end_with_the_close():
    async def scenario():
        replies = [b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                   b"HTTP/1.0 200 OK\r\n\r\nuntil the end"]
        async with RawServer(replies, close_after=True) as server:
            transport = KeepAliveTransport(server.url)
            async with httpx.AsyncClient(transport=transport, base_url=server.url) as http:
                first, second = await http.post("/x", content=b"1"), await http.post("/x", content=b"2")
            return first.content, second.content, server.connections, len(transport._idle)

    assert asyncio.run(scenario()) == (b"ok", b"until the end", 2, 0)


def test_silence_is_a_read_timeout_and_a_dead_port_a_connect_error_both_unreachable_for_the_client():
    async def scenario():
        async with RawServer([None]) as server:
            client = SchedulerClient(server.url, timeout=0.3, transport=KeepAliveTransport(server.url))
            started = time.monotonic()
            with pytest.raises(SchedulerUnreachable):
                await client.health()
            waited = time.monotonic() - started
        dead = f"http://127.0.0.1:{_free_port()}"
        client = SchedulerClient(dead, transport=KeepAliveTransport(dead))
        with pytest.raises(SchedulerUnreachable, match="cannot connect"):
            await client.health()
        return waited

    assert 0.25 < asyncio.run(scenario()) < 5


def test_a_connection_dropped_mid_reply_is_a_protocol_error_and_not_kept():
    async def scenario():
        async with RawServer([b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort"], close_after=True) as server:
            transport = KeepAliveTransport(server.url)
            async with httpx.AsyncClient(transport=transport, base_url=server.url) as http:
                with pytest.raises(httpx.RemoteProtocolError, match="mid-reply"):
                    await http.post("/x", content=b"1")
            return len(transport._idle)

    assert asyncio.run(scenario()) == 0


def test_an_idle_connection_the_server_may_have_closed_is_not_reused(monkeypatch):
    from bench import keepalive

    monkeypatch.setattr(keepalive, "IDLE_REUSE_SECONDS", 0.05)

    async def scenario():
        ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        async with RawServer([ok, ok]) as server:
            transport = KeepAliveTransport(server.url)
            async with httpx.AsyncClient(transport=transport, base_url=server.url) as http:
                await http.post("/x", content=b"1")
                await asyncio.sleep(0.1)
                await http.post("/x", content=b"2")
            return server.connections

    assert asyncio.run(scenario()) == 2


@pytest.mark.parametrize("url, connections, message", [
    ("https://127.0.0.1:1", 1, "plain http"),
    ("127.0.0.1:8700", 1, "plain http"),
    ("http://127.0.0.1:1", 0, "max_connections must be >= 1"),
])
def test_bad_settings_are_refused(url, connections, message):
    with pytest.raises(ValueError, match=message):
        KeepAliveTransport(url, max_connections=connections)
