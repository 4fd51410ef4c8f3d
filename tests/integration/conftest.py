"""Fixtures shared by the integration tests (helpers they use live in agent_fakes.py)."""

from __future__ import annotations

import socket
import time

import pytest

from rfork_agent.agent import AgentConfig, create_app
from tests.integration.agent_fakes import FakeSeed, RecordingScheduler, Served, _socket


@pytest.fixture
def fleet():
    """Factory: start (seed, scheduler, agent) with config overrides; stops everything after."""
    started: list[Served] = []

    def start(seed: FakeSeed | None = None, scheduler: RecordingScheduler | None = None,
              scheduler_sock: socket.socket | None = None, clock=time.monotonic, **overrides):
        seed = seed or FakeSeed()
        scheduler = scheduler or RecordingScheduler()
        seed_server = Served(seed.app())
        started.append(seed_server)
        if scheduler_sock is None:
            scheduler_server = Served(scheduler.app())
            started.append(scheduler_server)
            scheduler_url = scheduler_server.url
        else:
            scheduler_url = f"http://127.0.0.1:{scheduler_sock.getsockname()[1]}"
        agent_sock = _socket()
        config = AgentConfig(**{
            "seed_id": "seed-0", "sglang_url": seed_server.url, "scheduler_url": scheduler_url,
            "port": agent_sock.getsockname()[1], "heartbeat_interval": 0.1, "liveness_interval_seconds": 0.1,
            **overrides,
        })
        app = create_app(config, clock=clock)
        agent_server = Served(app, agent_sock)
        started.insert(0, agent_server)  # stopped first, so it can deregister
        return seed, scheduler, agent_server, app

    yield start
    for server in started:
        server.stop()
