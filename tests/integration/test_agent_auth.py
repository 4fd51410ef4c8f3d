"""The agent with a token: bearer auth on its API, and leases only for the scheduler's signed grants."""

from __future__ import annotations

import time

import httpx
import pytest

from rfork_api.auth import GrantClaims, grant_key, sign_grant
from tests.integration.agent_fakes import registered, wait_until

pytestmark = pytest.mark.timeout(60)

TOKEN = "agent-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def grant(assignment: str = "j1-a1", nbytes: int = 4096, seed: str = "seed-0", rank: int = 0,
          expires_in: float = 60.0, token: str = TOKEN) -> str:
    return sign_grant(grant_key(token), GrantClaims("j1", assignment, seed, rank, nbytes, time.time() + expires_in))


def lease(url: str, g: str, assignment: str = "j1-a1", nbytes: int = 4096, headers=AUTH) -> httpx.Response:
    return httpx.post(f"{url}/v1/leases", headers=headers, timeout=10, json={
        "job_id": "j1", "assignment_id": assignment, "rank": 0, "bytes": nbytes, "grant": g, "wait_seconds": 1.0})


@pytest.fixture
def secured_agent(fleet):
    seed, scheduler, agent, _ = fleet(token=TOKEN)
    wait_until(registered(scheduler), what="registration")
    return agent, scheduler


def test_the_agent_sends_the_token_to_the_scheduler_and_requires_it(secured_agent):
    agent, _ = secured_agent
    assert httpx.get(f"{agent.url}/v1/status", timeout=5).status_code == 401
    assert httpx.get(f"{agent.url}/v1/status", headers=AUTH, timeout=5).status_code == 200
    assert httpx.get(f"{agent.url}/health", timeout=5).status_code == 200
    assert httpx.get(f"{agent.url}/metrics", timeout=5).status_code == 200
    assert lease(agent.url, grant(), headers={}).status_code == 401
    # Switching how clients read the seed is an operator's call: the token, like the throttle's.
    pieces = {"read_piece_bytes": 2**20}
    assert httpx.put(f"{agent.url}/v1/read-pieces", json=pieces, timeout=5).status_code == 401
    assert httpx.get(f"{agent.url}/v1/read-pieces", timeout=5).status_code == 401
    assert httpx.put(f"{agent.url}/v1/read-pieces", json=pieces, headers=AUTH, timeout=5).status_code == 200


def test_a_lease_needs_a_valid_grant_for_exactly_this_read(secured_agent):
    agent, _ = secured_agent
    refused = {
        "no grant": lease(agent.url, ""),
        "another fleet's": lease(agent.url, grant(token="other")),
        "other bytes": lease(agent.url, grant(nbytes=8192)),
        "other seed": lease(agent.url, grant(seed="seed-9")),
        "expired": lease(agent.url, grant(expires_in=-1)),
    }
    for why, r in refused.items():
        assert r.status_code == 403 and r.json()["detail"]["error"] == "invalid_grant", (why, r.text)
    ok = lease(agent.url, grant())
    assert ok.status_code == 200, ok.text


def test_a_grant_buys_one_lease_not_two(secured_agent):
    agent, _ = secured_agent
    g = grant("j1-a7")
    assert lease(agent.url, g, "j1-a7").status_code == 200
    replay = lease(agent.url, g, "j1-a7")
    assert replay.status_code == 403 and "already had its lease" in replay.json()["detail"]["message"]
