"""scheduler.fleet: fork admission under a per-seed limit, and seeds' SLO states. Pure: tables, no I/O."""

from __future__ import annotations

import doctest
import random
from types import SimpleNamespace

import pytest

import scheduler.fleet as fleet_module
from scheduler.fleet import AdmissionConfig, FleetAdmission, JobDemand, admit, slo_state


def job(job_id: str, created: float, *candidates: str, rank: int = 0, holding=()) -> JobDemand:
    return JobDemand(job_id, rank, created, tuple(candidates), frozenset(holding))


def held(admission) -> dict[str, list[str]]:
    return {j: sorted(s) for j, s in admission.holdings.items()}


LIMIT1, LIMIT2 = AdmissionConfig(1), AdmissionConfig(2)


@pytest.mark.parametrize("config, demands, rates, holdings, queued", [
    # No limit: every candidate, nobody waits.
    (AdmissionConfig(), [job("a", 1, "s0", "s1"), job("b", 2, "s0", "s1")], {},
     {"a": ["s0", "s1"], "b": ["s0", "s1"]}, ()),
    # Limit 1, two seeds, three forks arriving together: one seed each for the first two, the third waits.
    (LIMIT1, [job("a", 1, "s0", "s1"), job("b", 2, "s0", "s1"), job("c", 3, "s0", "s1")], {},
     {"a": ["s1"], "b": ["s0"]}, ("c",)),
    # Queue order is creation time; ties keep the order given (the service lists jobs as created).
    (LIMIT1, [job("late", 9, "s0"), job("early", 1, "s0")], {}, {"early": ["s0"]}, ("late",)),
    (LIMIT1, [job("z", 1, "s0"), job("a", 1, "s0")], {}, {"z": ["s0"]}, ("a",)),
    # Alone, a fork takes every seed with a free slot (idle slots serve someone).
    (LIMIT1, [job("a", 1, "s0", "s1", "s2")], {}, {"a": ["s0", "s1", "s2"]}, ()),
    # No preemption: a newcomer waits rather than take a seed a running fork holds.
    (LIMIT1, [job("a", 1, "s0", "s1", holding=("s0", "s1")), job("b", 2, "s0", "s1")], {},
     {"a": ["s0", "s1"]}, ("b",)),
    # Waiting forks get free slots before running forks top up.
    (LIMIT1, [job("a", 1, "s0", "s1", holding=("s0",)), job("b", 2, "s0", "s1")], {},
     {"a": ["s0"], "b": ["s1"]}, ()),
    # A held seed that left (no longer a candidate) frees its slot for the queue.
    (LIMIT1, [job("a", 1, "s1", holding=("s0",)), job("b", 2, "s0")], {}, {"a": ["s1"], "b": ["s0"]}, ()),
    # A fork whose only seed it excluded (not a candidate) waits for one that is busy...
    (LIMIT1, [job("a", 1, "s1", holding=("s0",)), job("b", 2, "s1", holding=("s1",))], {},
     {"b": ["s1"]}, ("a",)),
    # ...and one with no candidate at all is neither held nor queued: the planner decides.
    (LIMIT1, [job("a", 1)], {}, {}, ()),
    # Slots are per (seed, rank): rank 1 of a seed is free while its rank 0 is busy.
    (LIMIT1, [job("a0", 1, "s0", rank=0), job("a1", 1, "s0", rank=1), job("b0", 2, "s0", rank=0)], {},
     {"a0": ["s0"], "a1": ["s0"]}, ("b0",)),
    # Limit 2: two forks per seed.
    (LIMIT2, [job("a", 1, "s0"), job("b", 2, "s0"), job("c", 3, "s0")], {}, {"a": ["s0"], "b": ["s0"]}, ("c",)),
    # Tie-break: most free slots first...
    (LIMIT2, [job("a", 1, "s0", holding=("s0",)), job("b", 2, "s0", "s1"), job("c", 3, "s0", "s1")], {},
     {"a": ["s0"], "b": ["s0", "s1"], "c": ["s1"]}, ()),
    # ...then the higher allowed rate (None = uncapped = highest)...
    (LIMIT1, [job("a", 1, "s0", "s1", "s2"), job("b", 2, "s0", "s1", "s2"), job("c", 3, "s0", "s1", "s2")],
     {"s0": 1e6, "s1": None, "s2": 5e6}, {"a": ["s1"], "b": ["s2"], "c": ["s0"]}, ()),
    # ...then the seed id.
    (LIMIT1, [job("a", 1, "s0", "s1"), job("b", 2, "s0", "s1")], {"s0": 1e6, "s1": 1e6},
     {"a": ["s1"], "b": ["s0"]}, ()),
])
def test_admission_table(config, demands, rates, holdings, queued):
    admission = admit(config, demands, rates)
    assert held(admission) == holdings
    assert admission.queued == queued


def test_a_queue_drains_as_forks_finish():
    tracker = FleetAdmission(LIMIT1)
    jobs = {name: SimpleNamespace(job=SimpleNamespace(job_id=name, created_at=t, excluded={}), identity="m", rank=0)
            for t, name in enumerate(["a", "b", "c"])}
    seeds = [SimpleNamespace(seed_id="s0", identity="m", ranks={0: None}, allowed_rate=None)]
    first = tracker.update(jobs.values(), seeds)
    assert held(first) == {"a": ["s0"]} and first.queued == ("b", "c")
    assert first.position("c") == 2 and first.position("a") is None
    assert tracker.seed_ids_for("a") == {"s0"} and tracker.seed_ids_for("b") is None
    del jobs["a"]  # done
    second = tracker.update(jobs.values(), seeds)
    assert held(second) == {"b": ["s0"]} and second.queued == ("c",)
    # The seed leaves: b holds nothing but has no candidate either; c is not queued behind a ghost.
    third = tracker.update(jobs.values(), [])
    assert held(third) == {} and third.queued == ()
    assert tracker.seed_ids_for("b") == frozenset()  # the planner decides (waits, then fails)


def test_free_slots_and_active_forks_per_seed():
    admission = admit(LIMIT2, [job("a0", 1, "s0", rank=0), job("a1", 1, "s0", rank=1), job("b0", 2, "s0", rank=0)],
                      {})
    assert admission.active_forks("s0") == 2           # rank 0 serves two forks
    assert admission.free_slots("s0", [0, 1]) == 0     # a new TP-2 instance needs both ranks: no room
    assert admission.free_slots("s0", [1]) == 1
    assert admit(AdmissionConfig(), [job("a", 1, "s0")], {}).free_slots("s0", [0]) is None  # no limit


@pytest.mark.parametrize("trial", range(30))
def test_admission_invariants_on_random_fleets(trial):
    """Whatever the history: no slot over the limit, only candidates held, and nobody waits
    while one of its candidates has a free slot."""
    rng = random.Random(trial)
    limit = rng.randint(1, 3)
    seeds = [f"s{i}" for i in range(rng.randint(1, 5))]
    holdings: dict[str, frozenset[str]] = {}
    jobs: dict[str, JobDemand] = {}
    for step in range(25):
        if rng.random() < 0.6:
            name = f"j{step}"
            jobs[name] = job(name, step, *rng.sample(seeds, rng.randint(0, len(seeds))), rank=rng.randint(0, 1))
        if jobs and rng.random() < 0.3:
            del jobs[rng.choice(sorted(jobs))]
        demands = [JobDemand(d.job_id, d.rank, d.created_at, d.candidates, holdings.get(d.job_id, frozenset()))
                   for d in jobs.values()]
        admission = admit(AdmissionConfig(limit), demands, {})
        used: dict[tuple[str, int], int] = {}
        for d in demands:
            mine = admission.holdings.get(d.job_id, frozenset())
            assert mine <= set(d.candidates)
            assert d.holding & set(d.candidates) <= mine, "a fork lost a seed it held"
            for s in mine:
                used[(s, d.rank)] = used.get((s, d.rank), 0) + 1
        assert all(n <= limit for n in used.values()), used
        for job_id in admission.queued:
            d = jobs[job_id]
            assert all(used.get((s, d.rank), 0) >= limit for s in d.candidates)
        assert set(admission.queued).isdisjoint(admission.holdings)
        holdings = dict(admission.holdings)


@pytest.mark.parametrize("bad", [0, -1, True])
def test_the_limit_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="max_forks_per_seed must be an integer >= 1"):
        AdmissionConfig(bad)


@pytest.mark.parametrize("qos, state", [
    (None, "unknown"),
    (dict(throttle="off", slo_itl_seconds=0.04, observed_itl_p99_seconds=0.5), "not_watched"),
    (dict(throttle="fixed", slo_itl_seconds=None, observed_itl_p99_seconds=0.02), "no_slo"),
    (dict(throttle="adaptive", slo_itl_seconds=0.04, observed_itl_p99_seconds=None), "no_data"),
    (dict(throttle="adaptive", slo_itl_seconds=0.04, observed_itl_p99_seconds=0.04), "within"),
    (dict(throttle="fixed", slo_itl_seconds=0.04, observed_itl_p99_seconds=0.041), "over"),
])
def test_slo_state_table(qos, state):
    assert slo_state(None if qos is None else SimpleNamespace(**qos)) == state


def test_doctests():
    assert doctest.testmod(fleet_module).failed == 0
