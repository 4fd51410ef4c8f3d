"""A peer whose job FAILED at the scheduler still has readers on the wire: its withdraw must count them.

Found by the client side of issue #14. A client whose job fails is told so by
``/work``; before its fallback (SGLang's own read, which rewrites the memory,
or post_load_weights, which may change it in place) it withdraws and waits
for ``reads_in_flight == 0``. The scheduler answers 0 at once because the
failure already removed the job from the swarm (``Swarm.leave`` drops the
member and the reads booked on it), though another client's read from that
memory is still on the wire and unreported. Same in-process harness as
test_swarm_api (the real app over httpx's ASGI transport, a fake clock).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry

from rfork_api import models as m
from scheduler.service import SchedulerConfig, create_app

KiB = 1024
IDENTITY = {"model": "m", "revision": "main", "dtype": "bfloat16", "tp_size": 1}
CHUNK = 4 * KiB
N_CHUNKS = 8


class _Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def call():
    app = create_app(SchedulerConfig(), registry=CollectorRegistry(), clock=_Clock(), run_reaper=False)
    loop = asyncio.new_event_loop()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://scheduler")

    def request(method: str, path: str, **kwargs) -> httpx.Response:
        return loop.run_until_complete(http.request(method, path, **kwargs))

    yield request
    loop.run_until_complete(http.aclose())
    loop.close()


def _job(call, k: int) -> str:
    r = call("POST", "/v1/jobs", json={"identity": IDENTITY, "rank": 0, "chunk_size_bytes": CHUNK,
                                       "manifest": {"w": [(k + 1) << 30, N_CHUNKS * CHUNK, 1]},
                                       "peer": {"session_id": f"client-{k}:1"}})
    assert r.status_code == 201, r.text
    return r.json()["job_id"]


def _work(call, job_id: str, reports=(), max_assignments: int = 8) -> m.WorkReply:
    r = call("POST", f"/v1/jobs/{job_id}/work", json={"max_assignments": max_assignments, "reports": list(reports)})
    assert r.status_code == 200, r.text
    return m.WorkReply.model_validate(r.json())


def test_a_failed_peers_withdraw_counts_the_reads_still_on_the_wire(call):
    r = call("PUT", "/v1/seeds/seed-0", json={
        "identity": IDENTITY, "agent_url": "http://127.0.0.1:9", "rate_cap_bytes_per_second": 16384.0,
        "ranks": [{"rank": 0, "session_id": "seed:1", "manifest": {"w": [1 << 40, N_CHUNKS * CHUNK, 1]}}]})
    assert r.status_code == 200, r.text
    a = _job(call, 0)
    first = _work(call, a, max_assignments=2)
    reply = _work(call, a, [{"assignment_id": x.assignment_id, "ok": True} for x in first.assignments],
                  max_assignments=0)
    assert reply.progress.chunks_done >= 2
    b = _job(call, 1)
    from_a = [x for x in _work(call, b).assignments if x.seed_id == f"peer:{a}"]
    assert from_a  # on the wire, not reported yet
    # a's own reads from the seed keep failing: the seed is excluded for a, and a's job fails.
    reply = _work(call, a)
    while reply.state == "running":
        reply = _work(call, a, [{"assignment_id": x.assignment_id, "ok": False, "reason": "read_failed",
                                 "error": "refused"} for x in reply.assignments])
    assert reply.state == "failed"
    w = call("POST", f"/v1/jobs/{a}/withdraw")
    assert w.status_code == 200
    assert w.json()["reads_in_flight"] == len(from_a)  # b's reads from a's memory are still on the wire
