"""Helpers for the scheduler API tests: an in-process app called over httpx's ASGI transport,
a fake clock, a seed registration body, whether a process still runs."""

from __future__ import annotations

import asyncio

import httpx

IDENTITY = {"model": "m", "revision": "main", "dtype": "bfloat16", "tp_size": 1}
MANIFEST = {"a": [1 << 20, 8192, 2], "b": [2 << 20, 4096, 1]}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def registration(session: str = "127.0.0.1:1", manifest=None) -> dict:
    return {"identity": IDENTITY, "agent_url": "http://127.0.0.1:9", "rate_cap_bytes_per_second": None,
            "ranks": [{"rank": 0, "session_id": session, "manifest": manifest or MANIFEST}]}


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://scheduler") as client:
            return await client.request(method, path, **kwargs)
    return asyncio.run(go())


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited and not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
