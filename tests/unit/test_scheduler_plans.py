"""scheduler/service.py: the jobs of one group share one chunk plan (planned once per group, bounded)."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry

from metrics.definitions import SchedulerMetrics
from scheduler import service as service_module
from scheduler.intake import decode_job_request, decode_registration
from scheduler.planner import SourceView
from scheduler.service import SchedulerConfig, SchedulerState

IDENTITY = {"model": "m", "revision": "main", "dtype": "bf16", "tp_size": 1}
TENSORS = {"a": (3 << 20, 1), "b": (5 << 20, 1), "c": (1 << 20, 2)}


def manifest(base: int) -> dict:
    out, ptr = {}, base
    for name, (numel, size) in TENSORS.items():
        out[name] = [ptr, numel, size]
        ptr += numel * size + 4096
    return out


def state_with_a_seed() -> SchedulerState:
    state = SchedulerState(SchedulerConfig(), SchedulerMetrics(CollectorRegistry()), clock=lambda: 0.0)
    body = json.dumps({"identity": IDENTITY, "agent_url": "http://127.0.0.1:1",
                       "ranks": [{"rank": 0, "session_id": "127.0.0.1:2", "manifest": manifest(1 << 30)}]})
    state.register("seed-0", *decode_registration(body.encode()))
    return state


def job(state: SchedulerState, base: int, chunk_size: int = 4 << 20):
    body = json.dumps({"identity": IDENTITY, "rank": 0, "manifest": manifest(base), "chunk_size_bytes": chunk_size})
    return state.create_job(*decode_job_request(body.encode()))


def test_the_jobs_of_a_group_share_its_chunk_plan_and_each_reads_its_own_memory():
    state = state_with_a_seed()
    first, second = job(state, 1 << 40), job(state, 2 << 40)
    assert first.group == second.group and len(state.plans) == 1
    assert first.job._plan is second.job._plan is state.plans[first.group]
    # One plan, each job's own pointers: a read lands in its own client's memory.
    seed = state.seeds["seed-0"]
    sources = [SourceView("seed-0", "127.0.0.1:2", seed.agent_url, seed.ranks[0][1], None)]
    for record, base in ((first, 1 << 40), (second, 2 << 40)):
        reads = [r for a in record.job.next_assignments(sources, 0.0, 8) for r in a.reads]
        assert reads and all(base <= r.dst_ptr < base + (1 << 30) for r in reads)
        assert all(1 << 30 <= r.src_ptr < 2 << 30 for r in reads)
    other = job(state, 3 << 40, chunk_size=2 << 20)  # another chunk size: another group, another plan
    assert other.group != first.group and len(state.plans) == 2 and other.job._plan is not first.job._plan


def test_the_plan_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(service_module, "PLAN_CACHE_SIZE", 2)
    state = state_with_a_seed()
    groups = [job(state, (k + 1) << 40, chunk_size=(1 << 20) << k).group for k in range(3)]
    assert list(state.plans) == groups[1:]  # the least recently used went first


def test_a_scale_out_is_logged_once_as_it_begins_and_once_as_it_ends_its_jobs_at_debug(caplog):
    from rfork_api import models as wire

    state = state_with_a_seed()
    with caplog.at_level("DEBUG", logger="rfork.scheduler"):
        records = [job(state, (k + 1) << 40) for k in range(3)]
        for record in records:
            reply = state.work(record.job.job_id, wire.WorkRequest(max_assignments=1000))
            reports = [wire.ChunkReport(assignment_id=a.assignment_id, ok=True, seconds=0.01) for a in reply.assignments]
            assert state.work(record.job.job_id, wire.WorkRequest(max_assignments=0, reports=reports)).state == "done"
    info = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert len(info) == 2, info  # not a line per job: a 1024-member scale-out would log 2,000
    assert info[0].startswith(f"scale-out of m rank 0: began with job {records[0].job.job_id} (")
    assert info[1] == "scale-out of m rank 0: ended after 0.0 s, 3 of its 3 jobs done"
    debug = [r.getMessage() for r in caplog.records if r.levelname == "DEBUG"]
    assert all(any(m.startswith(f"job {r.job.job_id}") for m in debug) for r in records)
    # The next job of the group begins another scale-out.
    caplog.clear()
    with caplog.at_level("INFO", logger="rfork.scheduler"):
        later = job(state, 9 << 40)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"scale-out of m rank 0: began with job {later.job.job_id}"]
