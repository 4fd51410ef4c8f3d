"""The scheduler's fork admission and GET /v1/fleet, in-process (httpx over ASGI) with a fake clock."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from scheduler.fleet import AdmissionConfig
from scheduler.service import SchedulerConfig, create_app
from tests.integration.scheduler_fakes import IDENTITY, MANIFEST, FakeClock, call, registration

pytestmark = pytest.mark.timeout(60)

QOS_OVER = {"throttle": "adaptive", "slo_itl_seconds": 0.04, "observed_itl_p99_seconds": 0.055,
            "latency_impact_ratio": 1.9}


def scheduler(limit: int | None):
    clock = FakeClock()
    app = create_app(SchedulerConfig(admission=AdmissionConfig(limit), client_timeout_seconds=30.0),
                     registry=CollectorRegistry(), clock=clock, run_reaper=False)
    return app, clock


def new_job(app) -> str:
    r = call(app, "POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": MANIFEST,
                                            "chunk_size_bytes": 4096})
    assert r.status_code == 201, r.text
    return r.json()["job_id"]


def work(app, job_id: str, reports=()) -> dict:
    r = call(app, "POST", f"/v1/jobs/{job_id}/work", json={"max_assignments": 64, "reports": list(reports)})
    assert r.status_code == 200, r.text
    return r.json()


def finish(app, job_id: str, outstanding: list[dict]) -> None:
    """Report every assignment handed out so far, and then each new one, landed until the job is done."""
    for _ in range(100):
        body = work(app, job_id, [{"assignment_id": a["assignment_id"], "ok": True, "seconds": 0.01}
                                  for a in outstanding])
        if body["state"] != "running":
            break
        outstanding = body["assignments"]
    assert body["state"] == "done", body


def test_with_a_limit_extra_forks_queue_visibly_and_run_when_a_slot_frees():
    app, clock = scheduler(limit=1)
    call(app, "PUT", "/v1/seeds/s0", json=registration())
    first, second = new_job(app), new_job(app)
    got_first = work(app, first)
    assert got_first["assignments"] and got_first["queued"] is None
    outstanding = got_first["assignments"]
    waiting = work(app, second)
    assert waiting["state"] == "running" and waiting["assignments"] == [] and waiting["queued"] == 1
    assert waiting["retry_after_seconds"] == 0.5  # a queued client polls gently

    fleet = call(app, "GET", "/v1/fleet").json()
    assert fleet["max_forks_per_seed"] == 1
    assert fleet["forks"] == {"active": 1, "queued": 1}
    [seed] = fleet["seeds"]
    assert seed["seed_id"] == "s0" and seed["active_forks"] == 1 and seed["free_fork_slots"] == 0
    assert fleet["queued"] == [{"job_id": second, "position": 1, "identity": IDENTITY, "rank": 0,
                                "age_seconds": 0.0}]

    # A queued job is not failed for "no seed" however long it waits (its seed is busy, not gone),
    # as long as its client keeps polling.
    state = app.state.scheduler
    for _ in range(6):
        clock.now += 4
        assert call(app, "POST", "/v1/seeds/s0/heartbeat", json={}).status_code == 200
        state.reap()
        assert work(app, second)["queued"] == 1
        outstanding += work(app, first)["assignments"]  # the first fork's client is alive too (slow reads)
    finish(app, first, outstanding)
    admitted = work(app, second)
    assert admitted["queued"] is None and admitted["assignments"]
    assert {a["seed_id"] for a in admitted["assignments"]} == {"s0"}
    fleet = call(app, "GET", "/v1/fleet").json()
    assert fleet["forks"] == {"active": 1, "queued": 0} and fleet["queued"] == []


def test_without_a_limit_nothing_queues():
    app, _ = scheduler(limit=None)
    call(app, "PUT", "/v1/seeds/s0", json=registration())
    jobs = [new_job(app) for _ in range(3)]
    for job_id in jobs:
        body = work(app, job_id)
        assert body["assignments"] and body["queued"] is None
    fleet = call(app, "GET", "/v1/fleet").json()
    assert fleet["max_forks_per_seed"] is None and fleet["forks"] == {"active": 3, "queued": 0}
    assert fleet["seeds"][0]["active_forks"] == 3 and fleet["seeds"][0]["free_fork_slots"] is None


def test_fleet_shows_each_seeds_slo_state_and_allowed_rate_from_heartbeats():
    app, _ = scheduler(limit=2)
    for seed_id in ("s0", "s1", "s2"):
        assert call(app, "PUT", f"/v1/seeds/{seed_id}", json=registration()).status_code == 200
    beats = {
        "s0": {"allowed_rate_bytes_per_second": 5e8, "qos": QOS_OVER},
        "s1": {"allowed_rate_bytes_per_second": 2e9,
               "qos": {"throttle": "fixed", "slo_itl_seconds": 0.04, "observed_itl_p99_seconds": 0.02}},
        "s2": {"allowed_rate_bytes_per_second": None},  # an agent that does not report QoS
    }
    for seed_id, beat in beats.items():
        r = call(app, "POST", f"/v1/seeds/{seed_id}/heartbeat", json=beat)
        assert r.status_code == 200, r.text
    seeds = {s["seed_id"]: s for s in call(app, "GET", "/v1/fleet").json()["seeds"]}
    assert seeds["s0"]["slo"] == {"state": "over", **QOS_OVER}
    assert seeds["s0"]["allowed_rate_bytes_per_second"] == 5e8
    assert seeds["s1"]["slo"]["state"] == "within" and seeds["s1"]["slo"]["latency_impact_ratio"] is None
    assert seeds["s2"]["slo"]["state"] == "unknown" and seeds["s2"]["allowed_rate_bytes_per_second"] is None
    assert all(s["active_forks"] == 0 and s["free_fork_slots"] == 2 for s in seeds.values())


@pytest.mark.parametrize("qos, field", [
    ({"throttle": "turbo"}, "qos.throttle"),
    ({"throttle": "fixed", "slo_itl_seconds": -1}, "qos.slo_itl_seconds"),
    ({"throttle": "fixed", "observed_itl_p99_seconds": "0.1"}, "qos.observed_itl_p99_seconds"),
    ({"throttle": "fixed", "extra": 1}, "qos.extra"),
])
def test_a_malformed_qos_report_is_422_naming_the_field(qos, field):
    app, _ = scheduler(limit=None)
    call(app, "PUT", "/v1/seeds/s0", json=registration())
    r = call(app, "POST", "/v1/seeds/s0/heartbeat", json={"qos": qos})
    assert r.status_code == 422 and field in r.json()["detail"]["message"], r.text
