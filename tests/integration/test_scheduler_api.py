"""The scheduler's HTTP layer in-process (httpx over ASGI), with a fake clock.

Covers the wire contract's bad inputs and the metrics the service keeps. The
real-process, real-TransferEngine paths are in test_fork_e2e.py.
"""

from __future__ import annotations


import pytest
from prometheus_client import CollectorRegistry

from rfork_api.auth import GrantClaims, grant_key, verify_grant
from scheduler.service import SchedulerConfig, create_app
from tests.integration.scheduler_fakes import IDENTITY, MANIFEST, FakeClock, call, registration  # noqa: F401

@pytest.fixture
def service():
    clock, registry = FakeClock(), CollectorRegistry()
    app = create_app(SchedulerConfig(max_body_bytes=64 * 1024), registry=registry, clock=clock, run_reaper=False)
    return app, clock, registry


@pytest.mark.parametrize("path, body, field", [
    ("/v1/jobs", {"identity": {**IDENTITY, "tp_size": True}, "rank": 0, "manifest": MANIFEST}, "tp_size"),
    ("/v1/jobs", {"identity": IDENTITY, "rank": False, "manifest": MANIFEST}, "rank"),
    ("/v1/jobs", {"identity": IDENTITY, "rank": 0, "manifest": MANIFEST, "chunk_size_bytes": True}, "chunk_size_bytes"),
    ("/v1/jobs", {"identity": IDENTITY, "rank": "0", "manifest": MANIFEST}, "rank"),
    ("/v1/jobs", {"identity": IDENTITY, "rank": 0.0, "manifest": MANIFEST}, "rank"),
    ("/v1/seeds/s0/heartbeat", {"in_flight_leases": True}, "in_flight_leases"),
])
def test_booleans_strings_and_floats_are_not_integers(service, path, body, field):
    app, _, _ = service
    call(app, "PUT", "/v1/seeds/s0", json=registration())
    r = call(app, "POST", path, json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]["message"]


def test_report_ok_must_be_a_real_boolean(service):
    app, _, _ = service
    call(app, "PUT", "/v1/seeds/s0", json=registration())
    job = call(app, "POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": MANIFEST}).json()
    r = call(app, "POST", f"/v1/jobs/{job['job_id']}/work",
             json={"reports": [{"assignment_id": "a1", "ok": 1}]})
    assert r.status_code == 422 and "ok" in r.json()["detail"]["message"]


def test_oversized_body_is_413_before_parsing(service):
    app, _, _ = service
    huge = {f"t{i}": [i * 4096, 1, 1] for i in range(5000)}  # ~100 KiB > the 64 KiB limit here
    r = call(app, "POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": huge})
    assert r.status_code == 413
    assert r.json()["detail"]["error"] == "body_too_large" and "--max-body-bytes" in r.json()["detail"]["message"]


def test_oversized_chunked_body_is_413(service):
    app, _, _ = service

    async def chunks():
        for _ in range(100):
            yield b"x" * 4096

    r = call(app, "POST", "/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_unknown_model_says_what_is_registered_and_how_to_fix(service):
    app, _, _ = service
    call(app, "PUT", "/v1/seeds/s0", json=registration())
    r = call(app, "POST", "/v1/jobs", json={"identity": {**IDENTITY, "model": "other"}, "rank": 0, "manifest": MANIFEST})
    assert r.status_code == 404
    message = r.json()["detail"]["message"]
    assert "registered: m@main bfloat16 tp=1" in message and "Start a seed" in message


def test_seed_only_tensor_mismatch_names_it_and_says_how_to_fix(service):
    app, _, _ = service
    call(app, "PUT", "/v1/seeds/s0", json=registration(manifest={**MANIFEST, "draft.w": [3 << 20, 16, 2]}))
    r = call(app, "POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": MANIFEST})
    assert r.status_code == 409
    message = r.json()["detail"]["message"]
    assert "'draft.w'" in message and "exact model and parallelism" in message


def test_retry_counter_counts_requeued_chunks_only(service):
    app, clock, registry = service
    call(app, "PUT", "/v1/seeds/s0", json=registration("127.0.0.1:1"))
    call(app, "PUT", "/v1/seeds/s1", json=registration("127.0.0.1:2"))
    job = call(app, "POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": MANIFEST,
                                              "chunk_size_bytes": 8192}).json()
    work = f"/v1/jobs/{job['job_id']}/work"
    out = call(app, "POST", work, json={"max_assignments": 8}).json()["assignments"]
    assert len(out) == 3
    failed = out[0]
    r = call(app, "POST", work, json={"max_assignments": 0, "reports": [
        {"assignment_id": failed["assignment_id"], "ok": False, "reason": "read_failed", "error": "boom"}]})
    assert r.status_code == 200
    retries = registry.get_sample_value("rfork_scheduler_chunk_retries_total", {"reason": "read_failed"})
    failures = registry.get_sample_value("rfork_scheduler_chunk_failures_total",
                                         {"seed": failed["seed_id"], "reason": "read_failed"})
    assert (retries, failures) == (1.0, 1.0)
    # A stale report for the same assignment: neither a retry nor a new failure of a live chunk.
    call(app, "POST", work, json={"max_assignments": 0, "reports": [
        {"assignment_id": failed["assignment_id"], "ok": False, "reason": "read_failed", "error": "boom"}]})
    assert registry.get_sample_value("rfork_scheduler_chunk_retries_total", {"reason": "read_failed"}) == 1.0


def test_seed_dropped_then_re_registered_gets_work_again(service):
    app, clock, registry = service
    call(app, "PUT", "/v1/seeds/s0", json=registration())
    job = call(app, "POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": MANIFEST,
                                              "chunk_size_bytes": 8192}).json()
    work = f"/v1/jobs/{job['job_id']}/work"
    first = call(app, "POST", work, json={"max_assignments": 8}).json()
    assert {a["seed_id"] for a in first["assignments"]} == {"s0"}
    clock.now += 6  # past the 5 s heartbeat timeout
    app.state.scheduler.reap()
    assert registry.get_sample_value("rfork_scheduler_chunk_retries_total", {"reason": "seed_lost"}) >= 1
    call(app, "PUT", "/v1/seeds/s0", json=registration())  # the agent re-registers (same memory)
    again = call(app, "POST", work, json={"max_assignments": 8}).json()
    assert again["state"] == "running"
    assert {a["seed_id"] for a in again["assignments"]} == {"s0"}
    assert "s0" not in again["progress"]["failed_seeds"]


@pytest.mark.parametrize("instance_after, eligible", [
    ("agent-2", True),    # the agent process restarted
    ("agent-1", False),   # the same agent registering again: its failures still count
])
def test_a_seed_excluded_while_its_agent_was_down_is_used_again_once_a_new_agent_registers(
        service, instance_after, eligible):
    app, _, _ = service
    # Capped at four 4 KiB chunks per half second: one chunk per assignment, four in flight.
    capped, manifest = {"rate_cap_bytes_per_second": 32768.0}, {"w": [1 << 20, 32 * 4096, 1]}
    call(app, "PUT", "/v1/seeds/s0", json={**registration("127.0.0.1:1", manifest), **capped,
                                           "agent_instance_id": "agent-1"})
    call(app, "PUT", "/v1/seeds/s1", json={**registration("127.0.0.1:2", manifest), **capped,
                                           "agent_instance_id": "agent-9"})
    job = call(app, "POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": manifest,
                                              "chunk_size_bytes": 4096}).json()
    work = f"/v1/jobs/{job['job_id']}/work"
    out = call(app, "POST", work, json={"max_assignments": 16}).json()["assignments"]
    unreachable = [{"assignment_id": a["assignment_id"], "ok": False, "reason": "agent_unreachable",
                    "error": "connection refused"} for a in out if a["seed_id"] == "s0"]
    assert len(unreachable) >= 3
    r = call(app, "POST", work, json={"max_assignments": 0, "reports": unreachable}).json()
    assert r["progress"]["failed_seeds"]["s0"].startswith("agent_unreachable")
    # Same memory, same session: only the agent behind it may have changed.
    call(app, "PUT", "/v1/seeds/s0", json={**registration("127.0.0.1:1", manifest), **capped,
                                           "agent_instance_id": instance_after})
    again = call(app, "POST", work, json={"max_assignments": 16}).json()
    assert again["state"] == "running"
    assert any(a["seed_id"] == "s0" for a in again["assignments"]) is eligible


# -- auth and resume -----------------------------------------------------------

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def secured():
    clock, registry = FakeClock(), CollectorRegistry()
    app = create_app(SchedulerConfig(token=TOKEN), registry=registry, clock=clock, run_reaper=False)
    app.state.scheduler.wall_clock = lambda: 5000.0
    return app


@pytest.mark.parametrize("headers, status", [
    ({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": TOKEN}, 401), (AUTH, 200),
])
def test_the_api_needs_the_bearer_token(secured, headers, status):
    r = call(secured, "GET", "/v1/seeds", headers=headers)
    assert r.status_code == status
    if status == 401:
        assert r.json()["detail"]["error"] == "unauthorized" and TOKEN not in r.text
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_health_and_metrics_stay_open_for_probes_and_prometheus(secured):
    assert call(secured, "GET", "/health").status_code == 200
    assert call(secured, "GET", "/metrics").status_code == 200


def test_assignments_carry_a_grant_bound_to_job_assignment_seed_rank_and_bytes(secured):
    call(secured, "PUT", "/v1/seeds/s0", json=registration(), headers=AUTH)
    job = call(secured, "POST", "/v1/jobs", headers=AUTH,
               json={"identity": IDENTITY, "rank": 0, "manifest": MANIFEST, "chunk_size_bytes": 8192}).json()
    [a, *_] = call(secured, "POST", f"/v1/jobs/{job['job_id']}/work", headers=AUTH,
                   json={"max_assignments": 8}).json()["assignments"]
    expected = GrantClaims(job["job_id"], a["assignment_id"], "s0", 0, a["bytes"], expires_at=0)
    claims = verify_grant(grant_key(TOKEN), a["grant"], expected, now=5000.0)
    assert claims.expires_at == 5000.0 + 300.0


def test_a_resumed_job_keeps_what_landed_and_reads_the_rest(service):
    app, _, _ = service
    call(app, "PUT", "/v1/seeds/s0", json=registration())
    body = {"identity": IDENTITY, "rank": 0, "manifest": MANIFEST, "chunk_size_bytes": 8192}
    job = call(app, "POST", "/v1/jobs", json={**body, "resume": {"previous_job_id": "lost1", "chunks_done": [0, 2]}})
    assert job.status_code == 201, job.text
    job = job.json()
    out = call(app, "POST", f"/v1/jobs/{job['job_id']}/work", json={"max_assignments": 8}).json()
    assert [a["chunk_id"] for a in out["assignments"]] == [1]
    assert out["progress"]["bytes_resumed"] == 8192 + 4096 and out["progress"]["chunks_done"] == 2


@pytest.mark.parametrize("extra, needle", [
    ({"resume": {"previous_job_id": "x", "chunks_done": [0, 7]}, "chunk_size_bytes": 8192}, "outside 0..2"),
    ({"resume": {"previous_job_id": "x", "chunks_done": [0]}}, "repeat its chunk_size_bytes"),
    ({"resume": {"previous_job_id": "x", "chunks_done": [True]}, "chunk_size_bytes": 8192}, "chunks_done"),
])
def test_a_resume_that_does_not_fit_the_plan_is_422(service, extra, needle):
    app, _, _ = service
    call(app, "PUT", "/v1/seeds/s0", json=registration())
    r = call(app, "POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": MANIFEST, **extra})
    assert r.status_code == 422 and needle in r.json()["detail"]["message"], r.text


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/v1/jobs/nope/work", {"max_assignments": 1}),
    ("GET", "/v1/jobs/nope", None),
    ("DELETE", "/v1/jobs/nope", None),
])
def test_unknown_job_ids_are_404_naming_the_id(service, method, path, body):
    app, _, _ = service
    r = call(app, method, path, json=body) if body is not None else call(app, method, path)
    assert r.status_code == 404
    assert r.json()["detail"]["error"] == "unknown_job" and "'nope'" in r.json()["detail"]["message"]


def test_a_huge_manifest_count_is_refused_with_the_limit_named():
    from scheduler.errors import InvalidManifest
    from rfork_api.manifest import MAX_TENSORS, parse_manifest

    with pytest.raises(InvalidManifest, match=f"at most {MAX_TENSORS}"):
        parse_manifest({f"t{i}": [4096 * i, 1, 1] for i in range(MAX_TENSORS + 1)})


def test_a_stall_of_the_scheduler_itself_does_not_drop_seeds(service):
    """Heartbeats sent while the scheduler's loop stalled wait in a socket: the seed is not silent."""
    from scheduler.liveness import LoopWatch

    app, clock, registry = service
    state = app.state.scheduler
    state.loop_watch = LoopWatch(interval=0.1, now=clock.now)
    call(app, "PUT", "/v1/seeds/s0", json=registration())
    clock.now += 0.1
    state.loop_watch.tick(clock.now)
    clock.now += 6.0  # the loop stalls for 6 s, past the 5 s heartbeat timeout; the reaper thread runs
    state.reap()
    assert "s0" in state.seeds
    state.loop_watch.tick(clock.now)  # the loop runs again: the waiting heartbeat comes next
    state.reap()
    assert "s0" in state.seeds
    call(app, "POST", "/v1/seeds/s0/heartbeat", json={})
    for _ in range(52):  # then 5.2 s of a loop that runs, and no heartbeat: dropped
        clock.now += 0.1
        state.loop_watch.tick(clock.now)
    state.reap()
    assert "s0" not in state.seeds
    assert registry.get_sample_value("rfork_scheduler_seeds_dropped_total") == 1.0


def test_request_latency_is_observed_by_route_template_and_status_class(service):
    app, _, registry = service

    def count(route: str, status: str) -> float:
        return registry.get_sample_value("rfork_scheduler_api_request_duration_seconds_count",
                                         {"route": route, "status": status}) or 0.0

    assert call(app, "PUT", "/v1/seeds/s0", json=registration()).status_code == 200
    assert call(app, "GET", "/v1/seeds").status_code == 200
    assert call(app, "DELETE", "/v1/seeds/nobody").status_code == 404
    assert call(app, "POST", "/v1/seeds/s0/heartbeat", json={"in_flight_leases": "many"}).status_code == 422
    assert call(app, "GET", "/no/such/endpoint").status_code == 404
    assert count("PUT /v1/seeds/{seed_id}", "2xx") == 1  # the template, not the seed's id
    assert count("GET /v1/seeds", "2xx") == 1
    assert count("DELETE /v1/seeds/{seed_id}", "4xx") == 1
    assert count("POST /v1/seeds/{seed_id}/heartbeat", "4xx") == 1
    assert count("GET unmatched", "4xx") == 1


def test_a_request_that_raises_is_observed_as_5xx(service, monkeypatch):
    app, _, registry = service
    import asyncio

    import httpx

    monkeypatch.setattr(app.state.scheduler, "seed_list", lambda: 1 / 0)

    async def go():  # the server answers 500 and re-raises, as under uvicorn: keep the answer
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://scheduler") as client:
            return await client.get("/v1/seeds")

    assert asyncio.run(go()).status_code == 500
    assert registry.get_sample_value("rfork_scheduler_api_request_duration_seconds_count",
                                     {"route": "GET /v1/seeds", "status": "5xx"}) == 1


# -- manifests sent by reference (a layout's digest and the pointers) ---------------------


def _by_layout(manifest: dict, **extra) -> dict:
    from rfork_api.manifest import compact_manifest

    digest, pointers = compact_manifest(manifest)
    return {"identity": IDENTITY, "rank": 0, "layout": {"digest": digest, "pointers": pointers}, **extra}


def test_a_manifest_by_reference_needs_the_layout_sent_whole_once(service):
    app, _, _ = service
    call(app, "PUT", "/v1/seeds/s0", json=registration())
    r = call(app, "POST", "/v1/jobs", json=_by_layout(MANIFEST))
    assert r.status_code == 409, r.text
    assert r.json()["detail"]["error"] == "unknown_layout" and "send the manifest whole" in r.json()["detail"]["message"]
    whole = call(app, "POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": MANIFEST})
    assert whole.status_code == 201
    # Another client's memory, the same layout: created by reference, reading into ITS pointers.
    theirs = {name: [ptr + (40 << 30), numel, size] for name, (ptr, numel, size) in MANIFEST.items()}
    r = call(app, "POST", "/v1/jobs", json=_by_layout(theirs, chunk_size_bytes=4096))
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["total_bytes"] == whole.json()["total_bytes"]
    work = call(app, "POST", f"/v1/jobs/{job['job_id']}/work", json={"max_assignments": 1000}).json()
    destinations = {read["dst_ptr"] for a in work["assignments"] for read in a["reads"]}
    assert destinations and all(ptr >= 40 << 30 for ptr in destinations)
    assert {MANIFEST["a"][0] + (40 << 30), MANIFEST["b"][0] + (40 << 30)} <= destinations


@pytest.mark.parametrize("change, status, needle", [
    (lambda b: {**b, "layout": {**b["layout"], "pointers": "AAAAAAAAAAA="}}, 422, "holds 1 pointers"),
    (lambda b: {**b, "layout": {**b["layout"], "pointers": "%%%"}}, 422, "is not base64"),
    (lambda b: {**b, "layout": {**b["layout"], "pointers": "AAAA"}}, 422, "not a whole number"),
    (lambda b: {**b, "layout": {**b["layout"], "digest": "ab" * 31}}, 422, "layout.digest"),
    (lambda b: {**b, "manifest": MANIFEST}, 422, "not both"),
])
def test_bad_manifests_by_reference_are_4xx_saying_what_is_wrong(service, change, status, needle):
    app, _, _ = service
    call(app, "PUT", "/v1/seeds/s0", json=registration())
    assert call(app, "POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": MANIFEST}).status_code == 201
    r = call(app, "POST", "/v1/jobs", json=change(_by_layout(MANIFEST)))
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]["message"]


def test_the_client_sends_by_reference_and_whole_only_when_the_scheduler_lacks_the_layout_or_asked_to(service):
    import asyncio

    import httpx

    from rfork_api import models as m
    from rfork_api.clients import SchedulerClient

    app, _, _ = service
    call(app, "PUT", "/v1/seeds/s0", json=registration())
    sent: list[bytes] = []

    class Recording(httpx.ASGITransport):
        async def handle_async_request(self, request):
            sent.append(request.read())
            return await super().handle_async_request(request)

    async def create_three():
        async with SchedulerClient("http://scheduler", transport=Recording(app=app)) as scheduler:
            request = m.JobRequest(identity=m.ModelIdentity(**IDENTITY), rank=0, manifest=MANIFEST)
            first = await scheduler.create_job(request)
            second = await scheduler.create_job(request)
            # A caller that was told 409 itself (a load generator sending pre-built references) asks
            # for the manifest to go whole at once: by reference again would wait for nobody's.
            third = await scheduler.create_job(request, by_reference=False)
            return first, second, third

    first, second, third = asyncio.run(create_three())
    assert first.num_chunks == second.num_chunks == third.num_chunks and first.job_id != second.job_id
    # By reference (409: unknown), whole, then by reference (known now), then whole as asked.
    assert [b'"layout":{' in body for body in sent] == [True, False, True, False]
    assert b'"a":[' in sent[1] and b'"a":[' not in sent[2] and b'"a":[' in sent[3]


def test_members_arriving_with_the_first_whole_manifest_wait_for_its_layout_instead_of_a_409(service):
    import asyncio
    import time

    import httpx

    app, _, _ = service
    big = {f"model.layers.{i}.weight": [(i + 1) << 20, 4096, 2] for i in range(900)}  # ~40 KB: decoded off the loop
    call(app, "PUT", "/v1/seeds/s0", json=registration(manifest=big))

    async def arrive_together(first_whole: dict, then_by_reference: dict):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://scheduler") as client:
            started = time.monotonic()
            whole, by_reference = await asyncio.gather(
                client.post("/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": first_whole}),
                client.post("/v1/jobs", json=_by_layout(then_by_reference)))
            return whole, by_reference, time.monotonic() - started

    whole, by_reference, _ = asyncio.run(arrive_together(big, big))
    assert whole.status_code == 201 and by_reference.status_code == 201, by_reference.text
    # The one in progress is of another layout: the 409 comes once it is done, not at the wait's bound.
    whole, by_reference, took = asyncio.run(arrive_together(big, {**big, "extra": [1 << 40, 1, 1]}))
    assert whole.status_code == 201 and by_reference.status_code == 409 and took < 4.0


def test_a_scale_outs_first_members_send_one_manifest_whole_between_them(service):
    import asyncio
    import time

    import httpx

    from rfork_api import models as m
    from rfork_api.clients import SchedulerClient

    app, _, _ = service
    call(app, "PUT", "/v1/seeds/s0", json=registration())
    whole_bodies = 0

    class Counting(httpx.ASGITransport):
        async def handle_async_request(self, request):
            nonlocal whole_bodies
            whole_bodies += b'"layout":{' not in request.read()
            return await super().handle_async_request(request)

    async def members(n: int):
        async with SchedulerClient("http://scheduler", transport=Counting(app=app)) as scheduler:
            requests = [m.JobRequest(identity=m.ModelIdentity(**IDENTITY), rank=0, manifest={
                name: [ptr + (k << 32), numel, size] for name, (ptr, numel, size) in MANIFEST.items()})
                for k in range(n)]
            return await asyncio.gather(*(scheduler.create_job(r) for r in requests))

    started = time.monotonic()
    created = asyncio.run(members(8))
    assert len({job.job_id for job in created}) == 8
    assert whole_bodies == 1  # the first was told to send it whole; the other seven waited for it
    assert time.monotonic() - started < 2.0  # woken when it was held, not at the wait's bound (5 s)


def test_a_silent_clients_job_still_fails_once_no_seed_is_left(service):
    """The reaper decides for a job whose client stopped asking (every 5 s at most): with its only
    seed gone, the job fails after the planner's no-seed grace (10 s), as a polling one would."""
    app, clock, _ = service
    call(app, "PUT", "/v1/seeds/s0", json=registration())
    job = call(app, "POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": MANIFEST,
                                              "chunk_size_bytes": 8192}).json()
    state = app.state.scheduler
    call(app, "DELETE", "/v1/seeds/s0")
    for second in range(1, 30):
        clock.now += 1
        state.reap()
        status = call(app, "GET", f"/v1/jobs/{job['job_id']}").json()
        if status["state"] != "running":
            break
    assert status["state"] == "failed" and "no live seed" in status["error"], status
    assert 10 < second <= 10 + 5 + 1  # the grace, then the reaper's next look
