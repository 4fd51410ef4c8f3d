"""Routing requests to deciders and merging their answers (scheduler/partition.py): pure, by tables."""

from __future__ import annotations

import json
import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from scheduler.partition import (MERGE_FLEET, MERGE_HEALTH, MERGE_METRICS, MERGE_ONE, Route, decider_of_job,
                                 job_id_for, merge_fleet, merge_health, merge_metrics, route)

ALL3 = (0, 1, 2)


@pytest.mark.parametrize("method, path, body, deciders, want", [
    # one decider: everything to it, whatever the request
    ("POST", "/v1/jobs", b'{"rank": 7}', 1, Route((0,), None)),
    ("POST", "/v1/seeds/s/heartbeat", b"{}", 1, Route((0,), None)),
    ("GET", "/metrics", b"", 1, Route((0,), None)),
    # a new job: its rank's decider
    ("POST", "/v1/jobs", b'{"identity": {}, "rank": 0}', 3, Route((0,), None)),
    ("POST", "/v1/jobs", b'{"identity": {}, "rank": 4}', 3, Route((1,), None)),
    ("POST", "/v1/jobs", b'{"rank": 4095}', 3, Route((0,), None)),
    # a body no decider would accept goes to decider 0, which answers it as any would (422)
    ("POST", "/v1/jobs", b"{not json", 3, Route((0,), None)),
    ("POST", "/v1/jobs", b"[1, 2]", 3, Route((0,), None)),
    ("POST", "/v1/jobs", b'{"rank": "2"}', 3, Route((0,), None)),
    ("POST", "/v1/jobs", b'{"rank": -1}', 3, Route((0,), None)),
    ("POST", "/v1/jobs", b'{"rank": true}', 3, Route((0,), None)),
    # a job's calls: the decider its id names
    ("POST", "/v1/jobs/0123456789ab-2/work", b"{}", 3, Route((2,), None)),
    ("POST", "/v1/jobs/0123456789ab-1/withdraw", b"", 3, Route((1,), None)),
    ("POST", "/v1/jobs/0123456789ab-1/settled", b"{}", 3, Route((1,), None)),
    ("GET", "/v1/jobs/0123456789ab-2", b"", 3, Route((2,), None)),
    ("DELETE", "/v1/jobs/0123456789ab-2", b"", 3, Route((2,), None)),
    ("POST", "/v1/jobs/0123456789ab/work", b"{}", 3, Route((0,), None)),  # made by no decider: 404 from 0
    ("POST", "/v1/jobs/0123456789ab-7/work", b"{}", 3, Route((0,), None)),  # no decider 7 here
    ("POST", "/v1/jobs/nope/work", b"{}", 3, Route((0,), None)),
    # the seeds' calls: every decider, one answer
    ("PUT", "/v1/seeds/seed-a", b"{}", 3, Route(ALL3, MERGE_ONE)),
    ("POST", "/v1/seeds/seed-a/heartbeat", b"{}", 3, Route(ALL3, MERGE_ONE)),
    ("DELETE", "/v1/seeds/seed-a", b"", 3, Route(ALL3, MERGE_ONE)),
    ("GET", "/v1/seeds", b"", 3, Route((0,), None)),  # every decider holds every seed
    # what every decider counts a part of
    ("GET", "/metrics", b"", 3, Route(ALL3, MERGE_METRICS)),
    ("GET", "/v1/fleet", b"", 3, Route(ALL3, MERGE_FLEET)),
    ("GET", "/health", b"", 3, Route(ALL3, MERGE_HEALTH)),
    ("GET", "/docs", b"", 3, Route((0,), None)),
    ("GET", "/no/such/route", b"", 3, Route((0,), None)),
])
def test_route(method, path, body, deciders, want):
    assert route(method, path, body, deciders) == want


@pytest.mark.parametrize("index, deciders", [(0, 1), (0, 2), (1, 2), (7, 8), (63, 64)])
def test_a_deciders_job_ids_route_back_to_it(index, deciders):
    job_id = job_id_for("0123456789ab", index, deciders)
    assert decider_of_job(job_id, deciders) == index
    assert route("POST", f"/v1/jobs/{job_id}/work", b"{}", deciders).deciders == (index,)


def _exposition(seeds: int, jobs: int, retries: float, latency: float, allowed: float) -> str:
    registry = CollectorRegistry()
    Gauge("rfork_scheduler_seeds_registered", "seeds", registry=registry).set(seeds)
    Gauge("rfork_scheduler_seed_allowed_rate_bytes_per_second", "rate", ["seed"], registry=registry).labels(
        seed="s0").set(allowed)
    Counter("rfork_scheduler_seeds_dropped_total", "dropped", registry=registry).inc(1)
    Gauge("rfork_scheduler_jobs_active", "jobs", registry=registry).set(jobs)
    Counter("rfork_scheduler_chunk_retries_total", "retries", ["reason"], registry=registry).labels(
        reason="read_failed").inc(retries)
    Histogram("rfork_scheduler_api_request_duration_seconds", "latency", ["route"], buckets=(0.1, 1.0),
              registry=registry).labels(route="POST /v1/jobs").observe(latency)
    return generate_latest(registry).decode()


def _samples(families) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_metrics_of_the_deciders_add_up_but_the_seeds_are_counted_once():
    merged = _samples(merge_metrics([_exposition(2, 3, 1, 0.05, 5e7), _exposition(2, 4, 2, 0.5, 5e7)]))
    assert merged[("rfork_scheduler_seeds_registered", ())] == 2  # every decider holds both seeds
    assert merged[("rfork_scheduler_seeds_dropped_total", ())] == 1  # each dropped the same seed
    assert merged[("rfork_scheduler_seed_allowed_rate_bytes_per_second", (("seed", "s0"),))] == 5e7
    assert merged[("rfork_scheduler_jobs_active", ())] == 7
    assert merged[("rfork_scheduler_chunk_retries_total", (("reason", "read_failed"),))] == 3
    route_ = (("route", "POST /v1/jobs"),)
    assert merged[("rfork_scheduler_api_request_duration_seconds_count", route_)] == 2
    assert merged[("rfork_scheduler_api_request_duration_seconds_bucket", (("le", "0.1"), *route_))] == 1
    assert merged[("rfork_scheduler_api_request_duration_seconds_sum", route_)] == pytest.approx(0.55)


def test_merged_metrics_render_as_one_valid_exposition():
    registry = CollectorRegistry(auto_describe=False)
    families = merge_metrics([_exposition(1, 1, 1, 0.05, math.nan), _exposition(1, 2, 0, 0.2, math.nan)])
    registry.register(type("Families", (), {"collect": lambda self: families})())
    text = generate_latest(registry).decode()
    assert text.count("# TYPE rfork_scheduler_jobs_active gauge") == 1
    assert "rfork_scheduler_jobs_active 3.0" in text
    assert 'rfork_scheduler_seed_allowed_rate_bytes_per_second{seed="s0"} NaN' in text
    assert "rfork_scheduler_chunk_retries_total{reason=\"read_failed\"} 1.0" in text


def test_health_counts_every_deciders_jobs_and_the_seeds_once():
    merged = json.loads(merge_health([b'{"status":"ok","seeds":3,"jobs":1}', b'{"status":"ok","seeds":3,"jobs":5}']))
    assert merged == {"status": "ok", "seeds": 3, "jobs": 6}


def _fleet(active: int, free: int | None, forks: int, queued: list[dict]) -> bytes:
    return json.dumps({
        "max_forks_per_seed": None if free is None else 4,
        "seeds": [{"seed_id": "s0", "identity": {}, "ranks": [0, 1], "allowed_rate_bytes_per_second": None,
                   "rate_cap_bytes_per_second": None, "slo": {"state": "ok"}, "active_forks": active,
                   "free_fork_slots": free}],
        "forks": {"active": forks, "queued": len(queued)},
        "queued": queued}).encode()


def test_fleet_takes_each_seeds_busiest_rank_and_lists_every_queue():
    q0 = {"job_id": "a-0", "position": 1, "identity": {}, "rank": 0, "age_seconds": 2.0}
    q1 = {"job_id": "b-1", "position": 1, "identity": {}, "rank": 1, "age_seconds": 5.0}
    merged = json.loads(merge_fleet([_fleet(4, 0, 4, [q0]), _fleet(3, 1, 3, [q1])]))
    [seed] = merged["seeds"]
    assert (seed["active_forks"], seed["free_fork_slots"]) == (4, 0)  # rank 0 is full
    assert merged["forks"] == {"active": 7, "queued": 2}
    assert [q["job_id"] for q in merged["queued"]] == ["b-1", "a-0"]  # first in their queues, oldest first
    unlimited = json.loads(merge_fleet([_fleet(1, None, 1, []), _fleet(2, None, 2, [])]))
    assert unlimited["seeds"][0]["free_fork_slots"] is None and unlimited["seeds"][0]["active_forks"] == 2
