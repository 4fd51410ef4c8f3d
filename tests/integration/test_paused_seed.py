"""`--rate-cap 0` pauses a seed: its agent grants nothing, the scheduler plans nothing on it, and a job
still runs from the other seeds (issue #12 item 5).

The scheduler runs in-process over ASGI with a fake clock; the end-to-end case
is a real fleet (processes, TransferEngine over TCP) started as `rfork testbed` does.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry

from metrics.definitions import AgentMetrics
from rfork_agent.agent import AgentConfig, AgentState, Denied
from scheduler.service import SchedulerConfig, create_app

IDENTITY = {"model": "m", "revision": "main", "dtype": "bfloat16", "tp_size": 1}
MANIFEST = {"a": [1 << 20, 8192, 2], "b": [2 << 20, 4096, 1]}


def registration(cap: float | None, session: str) -> dict:
    return {"identity": IDENTITY, "agent_url": "http://127.0.0.1:9", "rate_cap_bytes_per_second": cap,
            "ranks": [{"rank": 0, "session_id": session, "manifest": MANIFEST}]}


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://scheduler") as client:
            return await client.request(method, path, **kwargs)
    return asyncio.run(go())


@pytest.fixture
def scheduler():
    return create_app(SchedulerConfig(), registry=CollectorRegistry(), clock=lambda: 1000.0, run_reaper=False)


def test_a_paused_seed_registers_but_gets_no_work_and_the_job_runs_from_the_others(scheduler):
    assert call(scheduler, "PUT", "/v1/seeds/paused", json=registration(0.0, "127.0.0.1:1")).status_code == 200
    assert call(scheduler, "PUT", "/v1/seeds/open", json=registration(None, "127.0.0.1:2")).status_code == 200
    listed = {s["seed_id"]: s["rate_cap_bytes_per_second"] for s in call(scheduler, "GET", "/v1/seeds").json()}
    assert listed == {"paused": 0.0, "open": None}  # visible to operators, as paused

    job = call(scheduler, "POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": MANIFEST,
                                                    "chunk_size_bytes": 4096}).json()
    assert job["seed_ids"] == ["open"]
    work = f"/v1/jobs/{job['job_id']}/work"
    seeds_used, state = set(), "running"
    for _ in range(50):
        out = call(scheduler, "POST", work, json={"max_assignments": 64}).json()
        state = out["state"]
        if state != "running":
            break
        seeds_used |= {a["seed_id"] for a in out["assignments"]}
        reports = [{"assignment_id": a["assignment_id"], "ok": True, "seconds": 0.01} for a in out["assignments"]]
        call(scheduler, "POST", work, json={"max_assignments": 0, "reports": reports})
    assert state == "done" and seeds_used == {"open"}


def test_a_model_served_only_by_paused_seeds_is_refused_saying_so(scheduler):
    call(scheduler, "PUT", "/v1/seeds/paused", json=registration(0.0, "127.0.0.1:1"))
    response = call(scheduler, "POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": MANIFEST})
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert detail["error"] == "unknown_model" and "paused: --rate-cap 0" in detail["message"]


def test_a_paused_agent_grants_no_lease_and_says_why():
    config = AgentConfig(seed_id="seed-0", sglang_url="http://127.0.0.1:30000",
                         scheduler_url="http://127.0.0.1:8700", rate_cap=0.0)
    state = AgentState(config, AgentMetrics(CollectorRegistry()), clock=lambda: 0.0)
    assert state.allowed_rate == 0.0 and state.heartbeat_body(0.0).allowed_rate_bytes_per_second == 0.0
    denied = state.reserve(4096, wait_seconds=5.0, now=0.0)
    assert isinstance(denied, Denied) and denied.status == 429
    assert "paused by its operator (--rate-cap 0)" in denied.message
    state.set_allowed_rate(100e6, now=1.0)  # the QoS seam cannot lift an operator's pause
    assert state.allowed_rate == 0.0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_fork_with_one_paused_seed_reads_everything_from_the_other(tmp_path):
    from testbed.orchestrator import TestbedOptions, run_testbed

    result = run_testbed(TestbedOptions(seeds=2, model="tiny", seed_rates=(0.0, None), progress=False,
                                        log_dir=str(tmp_path)))
    assert result["verified"]
    by_seed = {s["id"]: s["bytes"] for s in result["seeds"]}
    assert by_seed["seed-0"] == 0 and by_seed["seed-1"] >= result["bytes"], by_seed
