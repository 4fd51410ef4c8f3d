"""Deciding processes partitioned by rank (``rfork scheduler --front-ends N --deciders K``): pure.

One deciding process holds every job of every group (model identity, rank, manifest, chunk size).
A tensor-parallel fleet is one group per rank, and groups never feed each other, so K deciding
processes can each own the ranks ``r`` with ``r % K == index`` (a TP8 fleet with K = 8: one rank
each) and decide in parallel. The front ends route each request (:func:`route`):

- ``POST /v1/jobs``: the decider of the body's ``rank``; the decider makes a job id that names it
  (:func:`job_id_for`), so
- ``/v1/jobs/{job_id}...``: the decider the id names (an id it does not name: decider 0, which
  answers ``404 unknown_job`` as for any unknown id);
- the seeds' calls (register, heartbeat, deregister): every decider (each plans its ranks' reads
  from every seed), answered with decider 0's reply when all agree, else the first error;
- ``GET /metrics``, ``/v1/fleet``, ``/health``: every decider, their answers merged
  (:func:`merge_metrics`, :func:`merge_fleet`, :func:`merge_health`);
- anything else (``GET /v1/seeds``, the API docs): decider 0 (every decider holds every seed).

    >>> route("POST", "/v1/jobs", b'{"rank": 5, "identity": {}}', 4)
    Route(deciders=(1,), merge=None)
    >>> route("POST", "/v1/jobs/3f9a0c1b2d4e-2/work", b"{}", 4)
    Route(deciders=(2,), merge=None)
    >>> route("POST", "/v1/seeds/s0/heartbeat", b"{}", 3).deciders
    (0, 1, 2)
"""

from __future__ import annotations

import json
import math
import re
from typing import NamedTuple, Sequence

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

MAX_DECIDERS = 64

JOBS = "/v1/jobs"
_JOB_PATH = re.compile(r"/v1/jobs/([^/]+)(?:/.*)?")
_JOB_ID_DECIDER = re.compile(r"[0-9a-f]+-([0-9]{1,2})")
_SEED_PATH = re.compile(r"/v1/seeds/[^/]+(?:/heartbeat)?")

MERGE_ONE = "one"
"""Every decider must answer 2xx; the reply is decider 0's (the seeds' registrations and heartbeats)."""
MERGE_METRICS = "metrics"
MERGE_FLEET = "fleet"
MERGE_HEALTH = "health"

REPLICATED_FAMILIES = frozenset({
    "rfork_scheduler_seeds_registered",
    "rfork_scheduler_seeds_dropped",
    "rfork_scheduler_seed_allowed_rate_bytes_per_second",
})
"""Metric families every decider holds the same value of (each keeps every seed): merged by taking
decider 0's, not by summing. Every other family counts what one decider's own jobs did: summed."""


class Route(NamedTuple):
    deciders: tuple[int, ...]
    merge: str | None
    """None: one decider answers; else how the answers of all of ``deciders`` are merged."""


def decider_of_rank(rank: int, deciders: int) -> int:
    return rank % deciders


def job_id_for(uuid_hex: str, index: int, deciders: int) -> str:
    """A new job's id: ``uuid_hex`` as it is with one decider, else with ``-<index>`` so the front
    ends route its calls without a lookup.

    >>> job_id_for("3f9a0c1b2d4e", 0, 1), job_id_for("3f9a0c1b2d4e", 7, 8)
    ('3f9a0c1b2d4e', '3f9a0c1b2d4e-7')
    """
    return uuid_hex if deciders <= 1 else f"{uuid_hex}-{index}"


def decider_of_job(job_id: str, deciders: int) -> int:
    """The decider a job id names; 0 for an id no decider of these made (it answers 404).

    >>> decider_of_job("3f9a0c1b2d4e-7", 8), decider_of_job("3f9a0c1b2d4e-9", 8), decider_of_job("nope", 8)
    (7, 0, 0)
    """
    match = _JOB_ID_DECIDER.fullmatch(job_id)
    if match is None:
        return 0
    index = int(match.group(1))
    return index if index < deciders else 0


def _rank_of(body: bytes) -> int | None:
    try:
        rank = json.loads(body).get("rank")
    except (ValueError, AttributeError):
        return None  # not a JSON object: decider 0 answers the 422 as any decider would
    return rank if isinstance(rank, int) and not isinstance(rank, bool) and rank >= 0 else None


def route(method: str, path: str, body: bytes, deciders: int) -> Route:
    """Which deciders answer this request, and how their answers merge."""
    if deciders <= 1:
        return Route((0,), None)
    every = tuple(range(deciders))
    if path == JOBS:
        rank = _rank_of(body) if method == "POST" else None
        return Route((0 if rank is None else decider_of_rank(rank, deciders),), None)
    if match := _JOB_PATH.fullmatch(path):
        return Route((decider_of_job(match.group(1), deciders),), None)
    if method != "GET" and _SEED_PATH.fullmatch(path):
        return Route(every, MERGE_ONE)
    if method == "GET":
        merge = {"/metrics": MERGE_METRICS, "/v1/fleet": MERGE_FLEET, "/health": MERGE_HEALTH}.get(path)
        if merge is not None:
            return Route(every, merge)
    return Route((0,), None)


# --------------------------------------------------------------------------- merging answers


def merge_health(bodies: Sequence[bytes]) -> bytes:
    """``/health`` of all deciders: seeds as decider 0 holds them, jobs summed.

    >>> merge_health([b'{"status": "ok", "seeds": 2, "jobs": 3}', b'{"status": "ok", "seeds": 2, "jobs": 4}'])
    b'{"status":"ok","seeds":2,"jobs":7}'
    """
    answers = [json.loads(b) for b in bodies]
    merged = dict(answers[0])
    merged["jobs"] = sum(a["jobs"] for a in answers)
    return _json(merged)


def merge_fleet(bodies: Sequence[bytes]) -> bytes:
    """``/v1/fleet`` of all deciders. Each holds every seed but counts only its own ranks' forks:
    a seed's ``active_forks`` (its busiest rank's) is the largest, its ``free_fork_slots`` (on every
    rank) the smallest; forks add up; the queues (one per decider, each over its own ranks) are listed
    together, each fork at its position in its own."""
    answers = [json.loads(b) for b in bodies]
    merged = dict(answers[0])
    seeds = {s["seed_id"]: dict(s) for s in answers[0]["seeds"]}
    for answer in answers[1:]:
        for s in answer["seeds"]:
            row = seeds.setdefault(s["seed_id"], dict(s))
            row["active_forks"] = max(row["active_forks"], s["active_forks"])
            if row.get("free_fork_slots") is not None and s.get("free_fork_slots") is not None:
                row["free_fork_slots"] = min(row["free_fork_slots"], s["free_fork_slots"])
    merged["seeds"] = [seeds[k] for k in sorted(seeds)]
    merged["forks"] = {key: sum(a["forks"][key] for a in answers) for key in answers[0]["forks"]}
    merged["queued"] = sorted((q for a in answers for q in a["queued"]),
                              key=lambda q: (q["position"], -q["age_seconds"]))
    return _json(merged)


def _json(value) -> bytes:
    """As the services' JSON responses are written (Starlette's ``JSONResponse``)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def merge_metrics(texts: Sequence[str]) -> list[Metric]:
    """The deciders' ``/metrics`` as one exposition's families: a sample's values summed over the
    deciders (each counted only its own jobs), except for :data:`REPLICATED_FAMILIES` (decider 0's)
    and a counter's or histogram's ``_created`` (the earliest)."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple, float]] = {}
    for index, text in enumerate(texts):
        for family in text_string_to_metric_families(text):
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            replicated = family.name in REPLICATED_FAMILIES
            seen = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in seen:
                    seen[key] = sample.value
                elif sample.name.endswith("_created"):
                    seen[key] = min(seen[key], sample.value)
                elif not replicated:
                    seen[key] = _add(seen[key], sample.value)
    for name, family in merged.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(merged.values())


def _add(a: float, b: float) -> float:
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return a + b
