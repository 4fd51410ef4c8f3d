"""rfork's HTTP clients against a real socket server that drops kept-alive connections.

The race they close was seen on an H200 host: SGLang's uvicorn closes a connection idle for 5 s just as
the agent's 5 s identity check writes a request on it, and ~1 in 350 of the agent's scrapes failed with
"Server disconnected without sending a response". The seed's client resends such a GET; every client
stops reusing a connection idle for ``KEEPALIVE_REUSE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from rfork_api.clients import KEEPALIVE_REUSE_SECONDS, SchedulerClient, blocking_http_client
from rfork_api.seed_info import seed_http_client


class DroppingServer:
    """HTTP/1.1 on loopback. Answers every request with keep-alive, except that a connection's
    ``drop_at``-th request (1-based) is met by closing the connection unanswered, as a server whose
    keep-alive timer fires as the request arrives does."""

    def __init__(self, drop_at: int | None, body: bytes = b"ok") -> None:
        self.drop_at = drop_at
        self.body = body
        self.connections = 0
        self.requests: list[tuple[int, str]] = []  # (connection, method) of each answered request
        self.dropped = 0

    async def __aenter__(self) -> "DroppingServer":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection, served = self.connections, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method = head.split(b" ", 1)[0].decode()
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                served += 1
                if served == self.drop_at:
                    self.dropped += 1
                    return
                self.requests.append((connection, method))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\ncontent-type: application/json\r\n\r\n%s"
                             % (len(self.body), self.body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def test_a_get_the_server_drops_unanswered_is_sent_again_on_a_new_connection():
    async def go():
        async with DroppingServer(drop_at=2) as server, seed_http_client(timeout=5) as http:
            assert (await http.get(f"{server.url}/metrics")).text == "ok"
            assert (await http.get(f"{server.url}/metrics")).text == "ok"  # dropped on connection 1, answered on 2
        assert server.dropped == 1
        assert server.requests == [(1, "GET"), (2, "GET")]

    asyncio.run(go())


def test_a_plain_httpx_client_fails_the_same_get():
    async def go():
        # The control: without the resend, the dropped request is the caller's failure (the agent's lost tick).
        async with DroppingServer(drop_at=2) as server, httpx.AsyncClient(timeout=5) as http:
            await http.get(f"{server.url}/metrics")
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(f"{server.url}/metrics")

    asyncio.run(go())


def test_a_post_is_not_sent_twice():
    async def go():
        async with DroppingServer(drop_at=2) as server, seed_http_client(timeout=5) as http:
            await http.get(f"{server.url}/health")
            with pytest.raises(httpx.RemoteProtocolError):
                await http.post(f"{server.url}/load", json={"rps": 1})
        assert server.requests == [(1, "GET")]

    asyncio.run(go())


def test_a_second_drop_is_the_callers_failure():
    async def go():
        # Every connection drops its first request: the resend fails too, and says so.
        async with DroppingServer(drop_at=1) as server, seed_http_client(timeout=5) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(f"{server.url}/metrics")
        assert server.dropped == 2

    asyncio.run(go())


@pytest.mark.parametrize("idle_seconds, connections", [(0.0, 1), (1.5, 2)])
def test_a_connection_idle_past_the_limit_is_not_reused(idle_seconds, connections):
    async def go():
        async with DroppingServer(drop_at=None) as server, seed_http_client(timeout=5, keepalive_seconds=1.0) as http:
            await http.get(f"{server.url}/health")
            await asyncio.sleep(idle_seconds)
            await http.get(f"{server.url}/health")
        assert server.connections == connections

    asyncio.run(go())


@pytest.mark.parametrize("idle_seconds, connections", [(0.0, 1), (KEEPALIVE_REUSE_SECONDS + 0.5, 2)])
def test_the_scheduler_client_does_not_reuse_a_connection_idle_past_the_limit(idle_seconds, connections):
    async def go():
        health = b'{"status": "ok", "seeds": 0, "jobs": 0}'
        async with DroppingServer(drop_at=None, body=health) as server, SchedulerClient(server.url) as scheduler:
            assert (await scheduler.health()).status == "ok"
            await asyncio.sleep(idle_seconds)
            assert (await scheduler.health()).status == "ok"
        assert server.connections == connections

    asyncio.run(go())


@pytest.mark.parametrize("idle_seconds, connections", [(0.0, 1), (KEEPALIVE_REUSE_SECONDS + 0.5, 2)])
def test_the_blocking_client_does_not_reuse_a_connection_idle_past_the_limit(idle_seconds, connections):
    # bench.qos_bench's Observer and testbed.sglang_pieces use it (sync httpx): the Observer polls the seeds
    # and agents and drives their loads and throttles.
    # With httpx's own 5 s it raced uvicorn's 5 s: a miniature battery under load lost its control fleet's
    # idle phase to "Server disconnected without sending a response".
    def two_calls(url: str) -> None:
        with blocking_http_client(5.0) as http:
            http.get(f"{url}/health")
            time.sleep(idle_seconds)
            http.get(f"{url}/health")

    async def go():
        async with DroppingServer(drop_at=None) as server:
            await asyncio.to_thread(two_calls, server.url)
        assert server.connections == connections

    asyncio.run(go())
