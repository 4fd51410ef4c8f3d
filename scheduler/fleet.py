"""Fleet-wide fork admission and the fleet summary (``GET /v1/fleet``). No I/O, no clock.

A scale-out of N instances starts N forks per seed rank at once. Each seed's
agent already paces the bytes all of them read together, so every extra fork
makes each one slower; and a fork that finishes sooner makes its instance a
seed sooner. An optional limit, ``max_forks_per_seed``, bounds how many fork
jobs may read from one seed rank at the same time, fleet-wide; jobs beyond
it wait in a queue (still polling, with no assignments) until a slot frees.

Admission (:func:`admit`) is recomputed from the scheduler's state whenever a
client asks for work; only what each job holds is remembered between calls:

1. A job keeps the seeds it holds while they stay registered and it has not
   excluded them (failed reads); a seed that leaves frees its slots.
2. Waiting jobs, oldest first, get one seed each: the candidate seed with
   the most free slots (then the highest allowed rate, then its id).
3. Slots still free are dealt round-robin, oldest job first, to running jobs
   that can use them (a seed whose slots would otherwise stay idle).

A job never loses a seed to a newcomer (no preemption: that would cancel
reads already paid for). A slot is one (seed, rank): an instance of TP size 8
runs 8 jobs, one per rank, and they take one slot of each of their seeds'
ranks, so the limit reads as "new instances forking from one seed at once".

A job whose candidates are all excluded or gone is neither held nor queued:
the planner decides its fate as without a limit (it fails or waits for a
seed to come back).

    >>> a = admit(AdmissionConfig(max_forks_per_seed=1),
    ...           [JobDemand("j1", 0, 1.0, ("s0", "s1")), JobDemand("j2", 0, 2.0, ("s0",))], {})
    >>> sorted(a.holdings["j1"]), a.queued
    (['s1'], ())
    >>> sorted(a.holdings["j2"])
    ['s0']
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Protocol, Sequence

log = logging.getLogger("rfork.scheduler")


@dataclass(frozen=True)
class AdmissionConfig:
    max_forks_per_seed: int | None = None
    """Fork jobs that may read from one seed rank at once, fleet-wide; more wait in a queue. None = no limit."""

    def __post_init__(self) -> None:
        if self.max_forks_per_seed is not None and (
                isinstance(self.max_forks_per_seed, bool) or self.max_forks_per_seed < 1):
            raise ValueError(f"max_forks_per_seed must be an integer >= 1 (or None for no limit), "
                             f"got {self.max_forks_per_seed!r}")


@dataclass(frozen=True)
class JobDemand:
    """What admission needs to know about one running job."""

    job_id: str
    rank: int
    created_at: float
    """Queue order; jobs created at the same time keep the order they are given in (creation order)."""
    candidates: tuple[str, ...]
    """Seeds that serve this job's identity and rank and that the job has not excluded."""
    holding: frozenset[str] = frozenset()
    """Seeds admitted on an earlier call."""


@dataclass(frozen=True)
class Admission:
    holdings: dict[str, frozenset[str]]
    """Job id -> the seeds it may read from now (running jobs with candidates only)."""
    queued: tuple[str, ...]
    """Jobs waiting for a slot, oldest first."""
    forks_by_slot: dict[tuple[str, int], int] = field(default_factory=dict)
    """(seed id, rank) -> jobs holding it."""
    limit: int | None = None

    def position(self, job_id: str) -> int | None:
        """1-based place in the queue; None when the job is not waiting."""
        try:
            return self.queued.index(job_id) + 1
        except ValueError:
            return None

    def active_forks(self, seed_id: str) -> int:
        """Jobs reading from the seed's busiest rank: the number of instances forking from it."""
        return max((n for (s, _), n in self.forks_by_slot.items() if s == seed_id), default=0)

    def free_slots(self, seed_id: str, ranks: Iterable[int]) -> int | None:
        """Forks the seed can still take on every rank; None = no limit."""
        if self.limit is None:
            return None
        return min((self.limit - self.forks_by_slot.get((seed_id, r), 0) for r in ranks), default=0)


def _rate_key(rate: float | None) -> float:
    return math.inf if rate is None else rate


def admit(config: AdmissionConfig, demands: Sequence[JobDemand], rates: Mapping[str, float | None]) -> Admission:
    """Which seeds each running job may read from now, and which jobs wait (see the module docstring).

    ``rates`` are the seeds' allowed byte rates (None = uncapped), a tie-break between seeds.
    """
    ordered = sorted(demands, key=lambda d: d.created_at)  # stable: ties keep creation order
    limit = config.max_forks_per_seed
    if limit is None:
        holdings = {d.job_id: frozenset(d.candidates) for d in ordered if d.candidates}
        return Admission(holdings, (), _count(ordered, holdings), None)

    held: dict[str, set[str]] = {d.job_id: set(d.holding) & set(d.candidates) for d in ordered}
    used: dict[tuple[str, int], int] = {}
    for d in ordered:
        for seed in held[d.job_id]:
            used[(seed, d.rank)] = used.get((seed, d.rank), 0) + 1

    def free(d: JobDemand) -> list[str]:
        return [s for s in d.candidates if s not in held[d.job_id] and used.get((s, d.rank), 0) < limit]

    def take(d: JobDemand, options: list[str]) -> None:
        best = max(options, key=lambda s: (limit - used.get((s, d.rank), 0), _rate_key(rates.get(s)), s))
        held[d.job_id].add(best)
        used[(best, d.rank)] = used.get((best, d.rank), 0) + 1

    # 2. Waiting jobs first, one seed each, oldest first.
    for d in ordered:
        if d.candidates and not held[d.job_id]:
            options = free(d)
            if options:
                take(d, options)
    # 3. Slots still free go round-robin to running jobs that can use them.
    changed = True
    while changed:
        changed = False
        for d in ordered:
            if held[d.job_id]:
                options = free(d)
                if options:
                    take(d, options)
                    changed = True

    holdings = {job: frozenset(seeds) for job, seeds in held.items() if seeds}
    queued = tuple(d.job_id for d in ordered if d.candidates and not held[d.job_id])
    return Admission(holdings, queued, used, limit)


def _count(ordered: Sequence[JobDemand], holdings: Mapping[str, frozenset[str]]) -> dict[tuple[str, int], int]:
    counts: dict[tuple[str, int], int] = {}
    for d in ordered:
        for seed in holdings.get(d.job_id, ()):
            counts[(seed, d.rank)] = counts.get((seed, d.rank), 0) + 1
    return counts


# --------------------------------------------------------------------------- seeds' SLO state

SLO_STATES = ("within", "over", "no_data", "no_slo", "not_watched", "unknown")
"""A seed's serving SLO as its agent last reported it:

* ``within`` / ``over``: observed ITL p99 (the agent's last 5 s window) vs the ITL SLO;
* ``no_data``: an SLO but no tokens observed (idle seed, or its /metrics unreadable);
* ``no_slo``: the agent watches the seed's latency but has no ITL SLO configured;
* ``not_watched``: the agent's throttle is ``off``, so it does not read the seed's latency;
* ``unknown``: the agent did not report (an agent older than this scheduler).
"""


class QosLike(Protocol):
    throttle: str
    slo_itl_seconds: float | None
    observed_itl_p99_seconds: float | None


def slo_state(qos: QosLike | None) -> str:
    """Classify one seed's last QoS report (see :data:`SLO_STATES`).

        >>> from types import SimpleNamespace as Q
        >>> slo_state(Q(throttle="adaptive", slo_itl_seconds=0.04, observed_itl_p99_seconds=0.05))
        'over'
    """
    if qos is None:
        return "unknown"
    if qos.throttle == "off":
        return "not_watched"
    if qos.slo_itl_seconds is None:
        return "no_slo"
    if qos.observed_itl_p99_seconds is None:
        return "no_data"
    return "over" if qos.observed_itl_p99_seconds > qos.slo_itl_seconds else "within"


# --------------------------------------------------------------------------- the service's view


class SeedLike(Protocol):
    seed_id: str
    identity: object
    ranks: Mapping[int, object]
    allowed_rate: float | None


class JobLike(Protocol):
    job: object  # planner.Job: job_id, created_at, excluded, state
    identity: object
    rank: int


class FleetAdmission:
    """Admission across calls: remembers only what each job holds.

    The service calls :meth:`update` with its running jobs and registered
    seeds (under its lock) before planning, then plans each job over
    :meth:`seed_ids_for`. With no limit it is a pass-through.
    """

    def __init__(self, config: AdmissionConfig) -> None:
        self.config = config
        self.last = Admission({}, (), {}, config.max_forks_per_seed)
        self._holdings: dict[str, frozenset[str]] = {}

    def update(self, jobs: Iterable[JobLike], seeds: Iterable[SeedLike]) -> Admission:
        """Admit over ``jobs`` (running ones, in creation order) and ``seeds`` (registered)."""
        seeds = list(seeds)
        by_key: dict[tuple[object, int], tuple[str, ...]] = {}
        demands = []
        for record in jobs:
            job = record.job
            key = (record.identity, record.rank)
            if key not in by_key:
                by_key[key] = tuple(s.seed_id for s in seeds if s.identity == record.identity and record.rank in s.ranks)
            candidates = tuple(s for s in by_key[key] if s not in job.excluded)
            demands.append(JobDemand(job.job_id, record.rank, job.created_at, candidates,
                                     self._holdings.get(job.job_id, frozenset())))
        previous = set(self.last.queued)
        self.last = admit(self.config, demands, {s.seed_id: s.allowed_rate for s in seeds})
        self._holdings = dict(self.last.holdings)
        for job_id in self.last.queued:
            if job_id not in previous:
                log.info("job %s waits for a fork slot (queue position %d; every candidate seed already serves "
                         "--max-forks-per-seed %s forks)", job_id, self.last.position(job_id), self.config.max_forks_per_seed)
        for job_id in previous - set(self.last.queued):
            if job_id in self.last.holdings:
                log.info("job %s admitted: reads from %s", job_id, ", ".join(sorted(self.last.holdings[job_id])))
        return self.last

    def seed_ids_for(self, job_id: str) -> frozenset[str] | None:
        """Seeds the job may read from; None when it must wait (queued). A job admission does not
        know (no candidates at all) gets an empty set: the planner decides what that means."""
        if job_id in self.last.queued:
            return None
        return self.last.holdings.get(job_id, frozenset())


def fleet_summary(admission: Admission, seeds: Sequence[SeedLike], jobs: Sequence[JobLike],
                  qos: Mapping[str, QosLike | None], now: float) -> dict:
    """The body of ``GET /v1/fleet``: every seed with its SLO state, rates and forks; running and queued jobs."""
    seed_rows = []
    for s in sorted(seeds, key=lambda s: s.seed_id):
        q = qos.get(s.seed_id)
        seed_rows.append({
            "seed_id": s.seed_id,
            "identity": s.identity.model_dump() if hasattr(s.identity, "model_dump") else s.identity,
            "ranks": sorted(s.ranks),
            "allowed_rate_bytes_per_second": s.allowed_rate,
            "rate_cap_bytes_per_second": getattr(s, "rate_cap", None),
            "slo": {
                "state": slo_state(q),
                "throttle": None if q is None else q.throttle,
                "slo_itl_seconds": None if q is None else q.slo_itl_seconds,
                "observed_itl_p99_seconds": None if q is None else q.observed_itl_p99_seconds,
                "latency_impact_ratio": None if q is None else getattr(q, "latency_impact_ratio", None),
            },
            "active_forks": admission.active_forks(s.seed_id),
            "free_fork_slots": admission.free_slots(s.seed_id, s.ranks),
        })
    by_id = {r.job.job_id: r for r in jobs}
    queued = []
    for position, job_id in enumerate(admission.queued, start=1):
        record = by_id.get(job_id)
        if record is None:
            continue
        identity = record.identity.model_dump() if hasattr(record.identity, "model_dump") else record.identity
        queued.append({"job_id": job_id, "position": position, "identity": identity, "rank": record.rank,
                       "age_seconds": max(now - record.job.created_at, 0.0)})
    return {
        "max_forks_per_seed": admission.limit,
        "seeds": seed_rows,
        "forks": {"active": len(admission.holdings), "queued": len(queued)},
        "queued": queued,
    }
