"""Peers through the scheduler's HTTP API in-process (httpx over ASGI), with a fake clock.

Two or more clients fork the same weights; each offers its landed chunks (a
``peer`` offer in its job request). The real service, planner and swarm decide;
the tests play the clients and report reads as landed or failed.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from prometheus_client import CollectorRegistry

from rfork_api import models as m
from scheduler.service import SchedulerConfig, create_app

KiB = 1024
IDENTITY = {"model": "m", "revision": "main", "dtype": "bfloat16", "tp_size": 1}
CHUNK = 4 * KiB
N_CHUNKS = 8


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def manifest(base: int) -> dict:
    return {"w": [base, N_CHUNKS * CHUNK, 1]}


class Fleet:
    def __init__(self, **config) -> None:
        self.clock, self.registry = FakeClock(), CollectorRegistry()
        self.app = create_app(SchedulerConfig(**config), registry=self.registry, clock=self.clock, run_reaper=False)
        self.loop = asyncio.new_event_loop()
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://scheduler")

    def call(self, method: str, path: str, **kwargs) -> httpx.Response:
        return self.loop.run_until_complete(self.http.request(method, path, **kwargs))

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()

    def seed(self, rate=None) -> None:
        r = self.call("PUT", "/v1/seeds/seed-0", json={
            "identity": IDENTITY, "agent_url": "http://127.0.0.1:9", "rate_cap_bytes_per_second": rate,
            "ranks": [{"rank": 0, "session_id": "seed:1", "manifest": manifest(1 << 40)}]})
        assert r.status_code == 200, r.text

    def job(self, k: int, peer: dict | None = None) -> str:
        body = {"identity": IDENTITY, "rank": 0, "manifest": manifest((k + 1) << 30), "chunk_size_bytes": CHUNK}
        if peer is not None:
            body["peer"] = peer
        r = self.call("POST", "/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        return r.json()["job_id"]

    def work(self, job_id: str, reports=(), max_assignments=8, **extra) -> m.WorkReply:
        r = self.call("POST", f"/v1/jobs/{job_id}/work",
                      json={"max_assignments": max_assignments, "reports": list(reports), **extra})
        assert r.status_code == 200, r.text
        return m.WorkReply.model_validate(r.json())

    def metric(self, name: str, **labels) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture
def fleet():
    f = Fleet()
    yield f
    f.close()


def landed(assignments) -> list[dict]:
    return [{"assignment_id": a.assignment_id, "ok": True, "seconds": 0.01} for a in assignments]


def run_to_done(fleet: Fleet, job_id: str, first: m.WorkReply) -> m.WorkReply:
    reply = first
    while reply.state == "running":
        reply = fleet.work(job_id, landed(reply.assignments))
    return reply


def test_a_second_client_reads_what_the_first_landed_from_it_not_from_the_seed(fleet):
    fleet.seed()
    a = fleet.job(0, peer={"session_id": "client-a:1"})
    done = run_to_done(fleet, a, fleet.work(a))
    assert done.state == "done" and done.progress.bytes_from_seeds == N_CHUNKS * CHUNK
    b = fleet.job(1, peer={"session_id": "client-b:1"})
    reply = fleet.work(b)
    assert reply.assignments and all(x.source_kind == "peer" and x.seed_id == f"peer:{a}" for x in reply.assignments)
    assert all(x.session_id == "client-a:1" and x.agent_url == "" and not x.grant for x in reply.assignments)
    # Reads resolve to the peer's own memory (its job manifest), not the seed's.
    assert all((1 << 30) <= r.src_ptr < (2 << 30) and (2 << 30) <= r.dst_ptr < (3 << 30)
               for x in reply.assignments for r in x.reads)
    done_b = run_to_done(fleet, b, reply)
    assert done_b.progress.bytes_from_peers == N_CHUNKS * CHUNK and done_b.progress.bytes_from_seeds == 0
    assert fleet.metric("rfork_scheduler_bytes_landed_total", kind="peer") == N_CHUNKS * CHUNK
    assert fleet.metric("rfork_scheduler_bytes_landed_total", kind="seed") == N_CHUNKS * CHUNK


def test_a_client_without_a_peer_offer_is_never_a_source(fleet):
    fleet.seed()
    a = fleet.job(0)  # no offer
    run_to_done(fleet, a, fleet.work(a))
    b = fleet.job(1, peer={"session_id": "client-b:1"})
    assert {x.source_kind for x in fleet.work(b).assignments} == {"seed"}


def test_withdraw_stops_new_reads_and_counts_those_still_on_the_wire(fleet):
    fleet.seed()
    a = fleet.job(0, peer={"session_id": "client-a:1"})
    run_to_done(fleet, a, fleet.work(a))
    b = fleet.job(1, peer={"session_id": "client-b:1"})
    reads = fleet.work(b, max_assignments=2).assignments
    assert reads and all(x.source_kind == "peer" for x in reads)
    w = fleet.call("POST", f"/v1/jobs/{a}/withdraw")
    assert w.status_code == 200 and m.WithdrawReply.model_validate(w.json()).reads_in_flight == len(reads)
    later = fleet.work(b, landed(reads))  # the reads in flight land; nothing new comes from a
    assert all(x.source_kind == "seed" for x in later.assignments)
    w = fleet.call("POST", f"/v1/jobs/{a}/withdraw")
    assert w.json()["reads_in_flight"] == 0  # now a may free or rewrite its memory


@pytest.mark.parametrize("end", ["DELETE", "abandoned"])
def test_a_deleted_readers_settle_call_frees_the_peers_withdraw_at_once(fleet, end):
    """A reader's job ends while its reads from a peer are on the wire (its client was cancelled, or
    abandoned): they count on the peer until the read deadline, unless the reader's client says they
    ended. Only the reader's own job id settles them."""
    fleet.seed()
    a = fleet.job(0, peer={"session_id": "client-a:1"})
    run_to_done(fleet, a, fleet.work(a))
    b = fleet.job(1, peer={"session_id": "client-b:1"})
    reads = fleet.work(b, max_assignments=3).assignments
    assert len(reads) == 3 and all(x.source_kind == "peer" for x in reads)
    if end == "DELETE":
        assert fleet.call("DELETE", f"/v1/jobs/{b}").status_code == 204
    else:  # b's client falls silent past the client timeout; a's keeps polling
        fleet.clock.now += 31
        fleet.work(a, max_assignments=0)
        fleet.app.state.scheduler.reap()
        assert fleet.call("GET", f"/v1/jobs/{b}").json()["state"] == "failed"
    ids = [x.assignment_id for x in reads]

    def settle(job_id: str, assignment_ids: list[str]) -> httpx.Response:
        return fleet.call("POST", f"/v1/jobs/{job_id}/settled", json={"assignment_ids": assignment_ids})

    assert fleet.call("POST", f"/v1/jobs/{a}/withdraw").json()["reads_in_flight"] == 3
    other = settle(a, ids)  # not a's reads: nothing settles
    assert other.status_code == 200 and m.ReadsSettledReply.model_validate(other.json()).settled == 0
    first = settle(b, ids[:2])
    assert first.status_code == 200 and first.json() == {"job_id": b, "settled": 2, "streams_settled": 0}
    assert fleet.call("POST", f"/v1/jobs/{a}/withdraw").json()["reads_in_flight"] == 1
    assert settle(b, ids).json()["settled"] == 1  # settled already: counted once
    assert fleet.call("POST", f"/v1/jobs/{a}/withdraw").json()["reads_in_flight"] == 0


@pytest.mark.parametrize("body", [{}, {"assignment_ids": [], "stream_ids": []}, {"assignment_ids": ["x" * 65]},
                                  {"assignment_ids": "a1"}, {"assignment_ids": ["a"] * 100_001},
                                  {"stream_ids": ["s"] * 4097}])
def test_a_bad_settle_body_is_422_naming_the_field(fleet, body):
    r = fleet.call("POST", "/v1/jobs/anything/settled", json=body)
    assert r.status_code == 422 and ("assignment_ids" in r.text or "stream_ids" in r.text), r.text


def test_settling_reads_of_an_unknown_job_settles_nothing(fleet):
    r = fleet.call("POST", "/v1/jobs/nope/settled", json={"assignment_ids": ["a-1"]})
    assert r.status_code == 200 and r.json() == {"job_id": "nope", "settled": 0, "streams_settled": 0}


def test_a_peer_that_failed_reads_is_excluded_and_its_chunks_come_from_the_seed(fleet):
    fleet.seed()
    a = fleet.job(0, peer={"session_id": "client-a:1"})
    run_to_done(fleet, a, fleet.work(a))
    b = fleet.job(1, peer={"session_id": "client-b:1"})
    reply = fleet.work(b)
    failures = 0
    while any(x.source_kind == "peer" for x in reply.assignments):  # the peer died: its reads fail
        outcome = [{"assignment_id": x.assignment_id, "ok": False, "reason": "read_failed", "error": "refused"}
                   if x.source_kind == "peer" else {"assignment_id": x.assignment_id, "ok": True}
                   for x in reply.assignments]
        failures += sum(1 for x in reply.assignments if x.source_kind == "peer")
        reply = fleet.work(b, outcome)
    assert failures >= 3 and f"peer:{a}" in fleet.app.state.scheduler.jobs[b].job.excluded
    done = run_to_done(fleet, b, reply)
    assert done.state == "done" and done.progress.failed_seeds.get(f"peer:{a}", "").startswith("read_failed")
    assert fleet.metric("rfork_scheduler_chunk_failures_total", seed="peer", reason="read_failed") >= 3


def test_deleting_a_serving_peer_moves_its_readers_reads_elsewhere(fleet):
    fleet.seed()
    a = fleet.job(0, peer={"session_id": "client-a:1"})
    run_to_done(fleet, a, fleet.work(a))
    b = fleet.job(1, peer={"session_id": "client-b:1"})
    reads = fleet.work(b).assignments
    assert fleet.call("DELETE", f"/v1/jobs/{a}").status_code == 204
    reply = fleet.work(b)
    assert set(reply.cancel) == {x.assignment_id for x in reads}
    assert run_to_done(fleet, b, reply).state == "done"


def test_a_done_peer_silent_past_the_client_timeout_stops_serving():
    fleet = Fleet(client_timeout_seconds=5.0)
    try:
        fleet.seed()
        a = fleet.job(0, peer={"session_id": "client-a:1"})
        run_to_done(fleet, a, fleet.work(a))
        assert fleet.metric("rfork_scheduler_peers_serving") == 1
        fleet.clock.now += 6.0
        fleet.call("POST", "/v1/seeds/seed-0/heartbeat", json={})
        fleet.app.state.scheduler.reap()
        assert fleet.metric("rfork_scheduler_peers_serving") == 0
        b = fleet.job(1, peer={"session_id": "client-b:1"})
        assert {x.source_kind for x in fleet.work(b).assignments} == {"seed"}
    finally:
        fleet.close()


def test_a_scale_out_is_timed_from_its_first_job_to_its_last_done(fleet):
    fleet.seed()
    jobs = [fleet.job(k, peer={"session_id": f"c{k}:1"}) for k in range(3)]
    fleet.clock.now += 2.0
    for j in jobs:
        run_to_done(fleet, j, fleet.work(j))
    assert fleet.metric("rfork_scheduler_scale_out_seconds_count") == 1
    assert fleet.metric("rfork_scheduler_scale_out_seconds_sum") == pytest.approx(2.0)


def test_a_scale_out_whose_members_end_out_of_order_ends_with_its_last_running_member(fleet):
    fleet.seed()
    jobs = [fleet.job(k, peer={"session_id": f"c{k}:1"}) for k in range(4)]
    state = fleet.app.state.scheduler
    fleet.clock.now += 1.0
    run_to_done(fleet, jobs[3], fleet.work(jobs[3]))  # the newest first: the oldest still runs
    assert fleet.call("DELETE", f"/v1/jobs/{jobs[1]}").status_code == 204  # one cancelled
    fleet.clock.now += 1.0
    run_to_done(fleet, jobs[0], fleet.work(jobs[0]))
    assert fleet.metric("rfork_scheduler_scale_out_seconds_count") in (None, 0)  # jobs[2] still runs
    fleet.clock.now += 1.0
    run_to_done(fleet, jobs[2], fleet.work(jobs[2]))
    assert fleet.metric("rfork_scheduler_scale_out_seconds_count") == 1
    assert fleet.metric("rfork_scheduler_scale_out_seconds_sum") == pytest.approx(3.0)
    assert state.maybe_running == {}  # nothing kept for a group with no job running
    later = fleet.job(4, peer={"session_id": "c4:1"})  # the next scale-out of the group is timed anew
    fleet.clock.now += 0.5
    run_to_done(fleet, later, fleet.work(later))
    assert fleet.metric("rfork_scheduler_scale_out_seconds_count") == 2
    assert fleet.metric("rfork_scheduler_scale_out_seconds_sum") == pytest.approx(3.5)


def test_long_poll_returns_at_once_with_work_and_waits_without(fleet):
    fleet.seed()
    a = fleet.job(0, peer={"session_id": "client-a:1"})
    first = fleet.work(a, wait_seconds=5.0)
    assert first.assignments  # work was there: no wait
    done = run_to_done(fleet, a, first)
    assert done.state == "done"
    loop = fleet.loop
    started = loop.time()
    reply = fleet.work(a, max_assignments=8, wait_seconds=0.2)  # done: answers at once
    assert reply.state == "done" and loop.time() - started < 0.2


@pytest.mark.parametrize("peer, field", [
    ({"session_id": ""}, "session_id"),
    ({"session_id": "x", "upload_rate_bytes_per_second": 0}, "upload_rate_bytes_per_second"),
    ({"session_id": "x", "max_in_flight": 0}, "max_in_flight"),
    ({"session_id": "x", "bogus": 1}, "bogus"),
])
def test_bad_peer_offers_are_422_naming_the_field(fleet, peer, field):
    fleet.seed()
    r = fleet.call("POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "manifest": manifest(1 << 30),
                                             "peer": peer})
    assert r.status_code == 422 and field in r.json()["detail"]["message"]


def test_withdraw_of_an_unknown_job_is_404(fleet):
    r = fleet.call("POST", "/v1/jobs/nope/withdraw")
    assert r.status_code == 404 and r.json()["detail"]["error"] == "unknown_job"


def test_clients_listing_the_same_tensors_in_another_order_do_not_read_each_others_chunk_ids(fleet):
    """Chunk ids follow the client's manifest order: a peer that landed its chunk 0 (tensor a)
    must not be asked for another client's chunk 0 (tensor b), which it has not landed."""
    r = fleet.call("PUT", "/v1/seeds/seed-0", json={
        "identity": IDENTITY, "agent_url": "http://127.0.0.1:9", "rate_cap_bytes_per_second": None,
        "ranks": [{"rank": 0, "session_id": "seed:1",
                   "manifest": {"a": [1 << 40, 2 * CHUNK, 1], "b": [(1 << 40) + (1 << 20), 2 * CHUNK, 1]}}]})
    assert r.status_code == 200, r.text

    def job(order: list[str], base: int) -> str:
        body = {"identity": IDENTITY, "rank": 0, "chunk_size_bytes": CHUNK, "peer": {"session_id": f"c{base}:1"},
                "manifest": {name: [(base << 30) + i * (1 << 20), 2 * CHUNK, 1] for i, name in enumerate(order)}}
        r = fleet.call("POST", "/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        return r.json()["job_id"]

    a = job(["a", "b"], 1)
    first = fleet.work(a, max_assignments=1)
    assert first.assignments[0].chunk_ids[0] == 0
    fleet.work(a, landed(first.assignments), max_assignments=0)  # a holds its chunk 0: tensor a only
    b = job(["b", "a"], 2)
    for x in fleet.work(b).assignments:
        assert x.source_kind == "seed", f"{x.seed_id} asked for chunk {x.chunk_ids} of another chunk plan"


@pytest.mark.parametrize("recheck", [0.05, 0.0])
def test_waiting_long_polls_look_again_at_most_once_per_recheck_however_many_reports_arrive(recheck):
    # Eight clients whose every chunk is already being read wait in /work; 48 others report their
    # reads one by one (each report is a change that wakes every waiting call). With the recheck bound
    # each waiter looks again about once per 50 ms of the burst; with 0, once per report.
    fleet = Fleet(long_poll_recheck_seconds=recheck)
    try:
        fleet.seed()
        waiting = [fleet.job(k) for k in range(8)]
        for j in waiting:
            assert sum(len(a.chunk_ids) for a in fleet.work(j, max_assignments=64).assignments) == N_CHUNKS
        reporter = [fleet.job(8 + k) for k in range(48)]
        held = {j: fleet.work(j, max_assignments=64).assignments for j in reporter}
        scheduler = fleet.app.state.scheduler
        looks = {j: 0 for j in waiting}
        real_work = scheduler.work

        def counting(job_id, body):
            if job_id in looks:
                looks[job_id] += 1
            return real_work(job_id, body)

        scheduler.work = counting

        async def scenario() -> tuple[float, int]:
            polls = [asyncio.ensure_future(fleet.http.post(f"/v1/jobs/{j}/work",
                                                           json={"max_assignments": 8, "wait_seconds": 3.0}))
                     for j in waiting]
            await asyncio.sleep(0.05)   # every waiter is in its long poll
            started = asyncio.get_running_loop().time()
            # Reports made while every poll still waited: only those can wake a waiter. Beside a second
            # suite the burst outlasted the polls (2.2 s against 1 s), and the later reports woke nobody.
            while_waiting = 0
            for j, reads in held.items():
                for a in reads:
                    r = await fleet.http.post(f"/v1/jobs/{j}/work", json={"max_assignments": 0,
                                                                         "reports": landed([a])})
                    assert r.status_code == 200
                    while_waiting += not any(p.done() for p in polls)
                    await asyncio.sleep(0.002)   # reports arrive spread out, as from many clients
            burst = asyncio.get_running_loop().time() - started
            for r in await asyncio.gather(*polls):
                assert r.status_code == 200
            return burst, while_waiting

        burst, reports = fleet.loop.run_until_complete(scenario())
        assert sum(len(reads) for reads in held.values()) >= 48
        worst = max(looks.values())
        if recheck:
            # The call, one look per 50 ms of the burst (and one straddling its end), the deadline's.
            assert worst <= 4 + burst / recheck, (looks, burst)
        else:
            assert reports >= 24 and worst >= reports // 2, (looks, burst, reports)
    finally:
        fleet.close()


# --------------------------------------------------------------------------- streams


@pytest.fixture
def streaming():
    """A scheduler whose groups stream from their first member (the service's default waits for 16)."""
    f = Fleet(stream_min_members=1)
    yield f
    f.close()


def landed_map(k: int, num_chunks: int = N_CHUNKS, num_tensors: int = 1) -> dict:
    return {"session_id": f"client{k}:1", "ptr": (k + 1) << 20, "num_chunks": num_chunks, "num_tensors": num_tensors}


def created(fleet: Fleet, k: int, peer: dict | None) -> dict:
    body = {"identity": IDENTITY, "rank": 0, "manifest": manifest((k + 1) << 30), "chunk_size_bytes": CHUNK}
    if peer is not None:
        body["peer"] = peer
    r = fleet.call("POST", "/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_a_peer_is_told_the_plan_to_stream_and_a_client_serving_nobody_is_not(fleet):
    fleet.seed()
    streaming = created(fleet, 0, {"session_id": "client0:1"})
    assert streaming["streams"]["stripes"] == min(8, N_CHUNKS) and len(streaming["streams"]["plan_digest"]) == 32
    assert created(fleet, 1, None)["streams"] is None
    off = Fleet(stream_stripes=0)
    try:
        off.seed()
        assert created(off, 0, {"session_id": "client0:1"})["streams"] is None
    finally:
        off.close()


def test_streaming_members_get_streams_from_each_other_and_report_them_done(streaming):
    streaming.seed()
    jobs = [created(streaming, k, {"session_id": f"client{k}:1"})["job_id"] for k in range(3)]
    replies = [streaming.work(j, max_assignments=64, landed_map=landed_map(k)) for k, j in enumerate(jobs)]
    later = streaming.work(jobs[0], max_assignments=0)  # the first member is adopted as the others join
    streams = {j: [*r.streams] for j, r in zip(jobs, replies)}
    streams[jobs[0]] += later.streams
    assert all(s.parent_job_id != j for j, ss in streams.items() for s in ss)
    assert sum(len(ss) for ss in streams.values()) > 0
    assert streaming.metric("rfork_scheduler_streams_started_total") == sum(len(ss) for ss in streams.values())
    # The seed is asked for each chunk about once, not three times.
    seed_chunks = [c for r in replies for a in r.assignments if a.source_kind == "seed" for c in a.chunk_ids]
    assert len(seed_chunks) <= N_CHUNKS + 2, seed_chunks
    # The first member lands what it read from the seed; a member that reports every streamed chunk
    # landed, and reads the rest (from the seed or, per chunk, from the first member), is done.
    streaming.work(jobs[0], reports=landed(replies[0].assignments), max_assignments=0)
    j = jobs[2]
    rest = streaming.work(j, reports=landed(replies[2].assignments), max_assignments=64)
    reply = streaming.work(j, reports=landed(rest.assignments), streams=[
        {"stream_id": s.stream_id, "landed": list(range(s.first_chunk, s.end_chunk)), "state": "done"}
        for s in streams[j]])
    assert reply.state == m.JobState.DONE, reply.progress
    assert reply.progress.bytes_from_peers >= sum((s.end_chunk - s.first_chunk) * CHUNK for s in streams[j])


@pytest.mark.parametrize("rate, client_timeout", [(0.5, 30.0), (0.0, 30.0), (0.001, 3.0)])
def test_streaming_members_are_paced_to_the_schedulers_report_rate(rate, client_timeout):
    """Each reply says how often, at most, to report streams: members / --stream-reports-per-second
    (so a scale-out's reports cost the scheduler about that many calls a second), 0 with pacing off,
    and never more than a third of the client timeout. A done stream needs no ids and lands whole."""
    f = Fleet(stream_min_members=1, stream_stripes=8, stream_reports_per_second=rate,
              client_timeout_seconds=client_timeout)
    try:
        f.seed()
        jobs = [created(f, k, {"session_id": f"client{k}:1"})["job_id"] for k in range(4)]
        replies = [f.work(j, max_assignments=0, landed_map=landed_map(k)) for k, j in enumerate(jobs)]
        streams = {j: [*r.streams] for j, r in zip(jobs, replies)}
        for j in jobs[:-1]:  # the first ones were adopted as the others joined
            streams[j] += f.work(j, max_assignments=0).streams
        running = sum(len(ss) for ss in streams.values())
        assert running >= 8
        expected = 0.0 if not rate else min(running / 8 / rate, client_timeout / 3)
        reply = f.work(jobs[0], max_assignments=0)
        assert reply.stream_report_seconds == pytest.approx(expected)
        # Operators see it as Prometheus gauges (the fleet dashboard's panel).
        assert f.metric("rfork_scheduler_streaming_members") == pytest.approx(running / 8)
        assert f.metric("rfork_scheduler_stream_report_interval_seconds") == pytest.approx(expected)
        last = jobs[-1]
        done = f.work(last, max_assignments=0, streams=[{"stream_id": s.stream_id, "state": "done"}
                                                        for s in streams[last]])
        assert done.progress.bytes_from_peers == sum((s.end_chunk - s.first_chunk) * CHUNK for s in streams[last])
        if rate and client_timeout == 30.0:  # its streams ended: fewer members stream, a shorter interval
            assert done.stream_report_seconds == pytest.approx((running - len(streams[last])) / 8 / rate)
    finally:
        f.close()


def test_a_streaming_members_progress_reports_count_as_progress(streaming):
    """Its streams' chunks are marked when they end; until then what they landed, as reported, is the
    job's progress: its landed bytes and last progress move with each report, not at the end alone
    (a long fork by streams would otherwise look stalled)."""
    streaming.seed()
    jobs = [created(streaming, k, {"session_id": f"client{k}:1"})["job_id"] for k in range(3)]
    replies = [streaming.work(j, max_assignments=0, landed_map=landed_map(k)) for k, j in enumerate(jobs)]
    j, streams = jobs[-1], replies[-1].streams
    assert streams
    wall = streaming.metric("rfork_scheduler_job_last_progress_timestamp_seconds", job_id=j)
    assert streaming.metric("rfork_scheduler_job_landed_bytes", job_id=j) == 0
    time.sleep(0.01)  # the wall clock stamps progress
    s = streams[0]
    reply = streaming.work(j, max_assignments=0, streams=[{"stream_id": s.stream_id, "landed": [s.first_chunk]}])
    assert reply.progress.bytes_done == CHUNK
    assert streaming.metric("rfork_scheduler_job_landed_bytes", job_id=j) == CHUNK
    assert streaming.metric("rfork_scheduler_job_last_progress_timestamp_seconds", job_id=j) > wall


def test_a_withdrawing_parent_waits_for_its_stream_readers_to_confirm(streaming):
    streaming.seed()
    a = created(streaming, 0, {"session_id": "client0:1"})["job_id"]
    b = created(streaming, 1, {"session_id": "client1:1"})["job_id"]
    streaming.work(a, max_assignments=0, landed_map=landed_map(0))
    got = streaming.work(b, max_assignments=0, landed_map=landed_map(1))
    from_a = [s for s in got.streams if s.parent_job_id == a]
    assert from_a
    assert streaming.call("POST", f"/v1/jobs/{a}/withdraw").json()["reads_in_flight"] == len(from_a)
    told = streaming.work(b, max_assignments=0)
    assert set(told.end_streams) >= {s.stream_id for s in from_a}
    streaming.work(b, max_assignments=0, streams=[{"stream_id": s, "state": "ended"} for s in told.end_streams])
    assert streaming.call("POST", f"/v1/jobs/{a}/withdraw").json()["reads_in_flight"] == 0


def test_a_deleted_members_settle_call_frees_its_parents_withdraw_at_once(streaming):
    """A member cancelled while it streams from a parent: its job is deleted, so its streams would count
    on the parent until the read deadline; its client stops them and says so (only its own job id can)."""
    streaming.seed()
    a = created(streaming, 0, {"session_id": "client0:1"})["job_id"]
    b = created(streaming, 1, {"session_id": "client1:1"})["job_id"]
    streaming.work(a, max_assignments=0, landed_map=landed_map(0))
    from_a = [s.stream_id for s in streaming.work(b, max_assignments=0, landed_map=landed_map(1)).streams
              if s.parent_job_id == a]
    assert from_a
    assert streaming.call("DELETE", f"/v1/jobs/{b}").status_code == 204
    assert streaming.call("POST", f"/v1/jobs/{a}/withdraw").json()["reads_in_flight"] == len(from_a)
    other = streaming.call("POST", f"/v1/jobs/{a}/settled", json={"stream_ids": from_a})
    assert other.json()["streams_settled"] == 0
    reply = streaming.call("POST", f"/v1/jobs/{b}/settled", json={"stream_ids": from_a})
    assert reply.json() == {"job_id": b, "settled": 0, "streams_settled": len(from_a)}
    assert streaming.call("POST", f"/v1/jobs/{a}/withdraw").json()["reads_in_flight"] == 0


def test_a_failed_stream_is_counted_and_re_parented(streaming):
    streaming.seed()
    jobs = [created(streaming, k, {"session_id": f"client{k}:1"})["job_id"] for k in range(3)]
    replies = [streaming.work(j, max_assignments=0, landed_map=landed_map(k)) for k, j in enumerate(jobs)]
    reader, stream = next((j, s) for j, r in zip(jobs, replies) for s in r.streams)
    reply = streaming.work(reader, max_assignments=64, streams=[
        {"stream_id": stream.stream_id, "state": "failed", "reason": "parent_lost", "error": "read failed"}])
    assert streaming.metric("rfork_scheduler_stream_failures_total", reason="parent_lost") == 1
    moved = [s for s in reply.streams if s.stripe == stream.stripe]
    from_seed = {c for a in reply.assignments for c in a.chunk_ids}
    # The stripe comes from another member, or back from the seed.
    assert (moved and moved[0].parent_job_id != stream.parent_job_id) or \
        set(range(stream.first_chunk, stream.end_chunk)) <= from_seed


def test_late_in_a_scale_out_a_slow_stream_moves_to_a_finished_member_and_is_counted():
    """Two stripes, fanout 4, six members (docs/fleet.md, "The endgame"): the fourth finishes by its streams
    with nobody reading from it; the fifth then reports a stream from the first member, which three more
    streams share, one chunk of four in: it is told to stop it and read the stripe from the fourth."""
    fleet = Fleet(stream_min_members=1, stream_stripes=2, stream_fanout=4)
    try:
        fleet.seed()
        jobs = [created(fleet, k, {"session_id": f"client{k}:1"})["job_id"] for k in range(6)]
        told = {j: {} for j in jobs}
        for k, j in enumerate(jobs):
            told[j].update({s.stripe: s for s in fleet.work(j, max_assignments=0, landed_map=landed_map(k)).streams})
        for j in jobs:  # adoptions as later members joined
            told[j].update({s.stripe: s for s in fleet.work(j, max_assignments=0).streams})
        finished, slow = jobs[3], told[jobs[4]][0]
        assert {s.parent_job_id for s in told[finished].values()} == {jobs[0], jobs[1]}
        assert slow.parent_job_id == jobs[0]
        done = fleet.work(finished, max_assignments=0, streams=[
            {"stream_id": s.stream_id, "landed": list(range(s.first_chunk, s.end_chunk)), "state": "done"}
            for s in told[finished].values()])
        assert done.state == m.JobState.DONE
        reply = fleet.work(jobs[4], max_assignments=0, streams=[{"stream_id": slow.stream_id, "landed": [slow.first_chunk]}])
        assert reply.end_streams == [slow.stream_id]
        assert [(s.stripe, s.parent_job_id, s.first_chunk, s.end_chunk) for s in reply.streams] == [
            (0, finished, slow.first_chunk, slow.end_chunk)]
        assert reply.streams[0].parent_map.session_id == "client3:1"
        assert fleet.metric("rfork_scheduler_stream_endgame_moves_total") == 1
    finally:
        fleet.close()


@pytest.mark.parametrize("extra, status, words", [
    ({"landed_map": landed_map(0, num_chunks=N_CHUNKS + 1)}, 422, "chunks"),
    ({"landed_map": {**landed_map(0), "ptr": 0}}, 422, "ptr"),
    ({"streams": [{"stream_id": "x", "state": "failed", "reason": "bored"}]}, 422, "reason"),
])
def test_bad_landed_maps_and_stream_reports_are_422(streaming, extra, status, words):
    streaming.seed()
    j = created(streaming, 0, {"session_id": "client0:1"})["job_id"]
    r = streaming.call("POST", f"/v1/jobs/{j}/work", json={"max_assignments": 0, **extra})
    assert r.status_code == status, r.text
    assert words in r.text


def test_a_landed_map_from_a_client_serving_nobody_is_422(streaming):
    streaming.seed()
    j = created(streaming, 0, None)["job_id"]
    r = streaming.call("POST", f"/v1/jobs/{j}/work", json={"max_assignments": 0, "landed_map": landed_map(0)})
    assert r.status_code == 422 and "peer offer" in r.text, r.text


def test_a_group_streams_once_enough_members_registered_maps():
    f = Fleet(stream_min_members=3)
    try:
        f.seed()
        jobs = [created(f, k, {"session_id": f"client{k}:1"})["job_id"] for k in range(3)]
        first = [f.work(j, max_assignments=64, landed_map=landed_map(k)) for k, j in enumerate(jobs[:2])]
        assert all(not r.streams for r in first)  # two members: they feed each other per chunk
        assert any(a.source_kind == "seed" for r in first for a in r.assignments)
        third = f.work(jobs[2], max_assignments=0, landed_map=landed_map(2))
        later = [f.work(j, max_assignments=0) for j in jobs[:2]]
        assert third.streams or any(r.streams for r in later), "the third map starts the group's streams"
        assert f.metric("rfork_scheduler_streams_started_total") > 0
    finally:
        f.close()
