"""Per-job series exist only while the job runs: done, cancelled, failed and abandoned jobs leave none.

The scheduler in-process (httpx over ASGI) with a fake clock; the same
property is checked against a real Prometheus in test_real_prometheus.py.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry

from metrics.definitions import catalog
from scheduler.service import SchedulerConfig, create_app

IDENTITY = {"model": "m", "revision": "main", "dtype": "bfloat16", "tp_size": 1}
MANIFEST = {"a": [1 << 20, 8192, 2], "b": [2 << 20, 4096, 1]}
PER_JOB_FAMILIES = [f.name for f in catalog() if "job_id" in f.labels]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def scheduler():
    clock, registry = FakeClock(), CollectorRegistry()
    app = create_app(SchedulerConfig(), registry=registry, clock=clock, run_reaper=False)

    def call(method: str, path: str, **kwargs) -> httpx.Response:
        async def go():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as client:
                return await client.request(method, path, **kwargs)
        return asyncio.run(go())

    for seed in ("seed-0", "seed-1"):
        r = call("PUT", f"/v1/seeds/{seed}", json={
            "identity": IDENTITY, "agent_url": "http://127.0.0.1:9", "rate_cap_bytes_per_second": None,
            "ranks": [{"rank": 0, "session_id": f"127.0.0.1:{seed[-1]}", "manifest": MANIFEST}]})
        assert r.status_code == 200, r.text
    return call, clock, registry, app


def job_series(registry: CollectorRegistry, job_id: str) -> list[str]:
    return [f"{s.name}{s.labels}" for metric in registry.collect() for s in metric.samples
            if s.labels.get("job_id") == job_id]


def new_job(call) -> str:
    r = call("POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": MANIFEST,
                                       "chunk_size_bytes": 4096})
    assert r.status_code == 201, r.text
    return r.json()["job_id"]


def test_a_running_job_has_every_per_job_series(scheduler):
    call, _, registry, _ = scheduler
    job_id = new_job(call)
    names = {s.split("{")[0] for s in job_series(registry, job_id)}
    assert names == set(PER_JOB_FAMILIES)


def test_a_done_job_leaves_no_series_even_when_its_client_polls_again(scheduler):
    call, _, registry, _ = scheduler
    job_id = new_job(call)
    state = "running"
    reports: list[dict] = []
    while state == "running":
        body = call("POST", f"/v1/jobs/{job_id}/work", json={"max_assignments": 64, "reports": reports}).json()
        reports = [{"assignment_id": a["assignment_id"], "ok": True, "seconds": 0.01} for a in body["assignments"]]
        state = body["state"]
    assert state == "done"
    assert job_series(registry, job_id) == []
    call("POST", f"/v1/jobs/{job_id}/work", json={"max_assignments": 8, "reports": []})  # a late poll
    assert job_series(registry, job_id) == []
    assert registry.get_sample_value("rfork_scheduler_jobs_finished_total", {"outcome": "done"}) == 1
    assert all(registry.get_sample_value("rfork_scheduler_assignments_in_flight", {"seed": s}) == 0
               for s in ("seed-0", "seed-1"))


def test_a_cancelled_job_leaves_no_series(scheduler):
    call, _, registry, _ = scheduler
    job_id = new_job(call)
    assert call("DELETE", f"/v1/jobs/{job_id}").status_code == 204
    assert job_series(registry, job_id) == []


def test_a_failed_job_leaves_no_series(scheduler):
    call, _, registry, _ = scheduler
    job_id = new_job(call)
    reports: list[dict] = []
    for _ in range(50):
        body = call("POST", f"/v1/jobs/{job_id}/work", json={"max_assignments": 64, "reports": reports}).json()
        if body["state"] != "running":
            break
        reports = [{"assignment_id": a["assignment_id"], "ok": False, "reason": "read_failed", "error": "boom",
                    "seconds": 0.01} for a in body["assignments"]]
    assert body["state"] == "failed"
    assert job_series(registry, job_id) == []


def test_an_abandoned_job_leaves_no_series(scheduler):
    call, clock, registry, app = scheduler
    job_id = new_job(call)
    clock.now += 3600
    for seed in ("seed-0", "seed-1"):  # keep the seeds, lose the client
        call("POST", f"/v1/seeds/{seed}/heartbeat", json={"allowed_rate_bytes_per_second": None,
                                                        "available_bytes": 0, "in_flight_leases": 0})
    app.state.scheduler.reap()
    assert job_series(registry, job_id) == []
    assert registry.get_sample_value("rfork_scheduler_jobs_finished_total", {"outcome": "abandoned"}) == 1
