"""sim.goal_feasibility: a fixed rate at F x the bench's oracle, judged as a run is, on the simulated plants."""

from __future__ import annotations

import doctest

import pytest

import sim.goal_feasibility as feasibility
from sim.goal_feasibility import bench_oracle, fixed_reference_run, summarize_runs
from sim.qos_plant import BUDGET, CAP, HEADROOM_CLEAN, H100_GPU_KNEE, PLANTS, Plant, Segment


def test_doctests():
    assert doctest.testmod(feasibility).failed == 0


def test_where_the_cap_meets_the_budget_the_oracle_is_the_cap_and_the_fixed_rate_meets_it():
    runs = [fixed_reference_run(HEADROOM_CLEAN, seed, 0.82) for seed in range(10)]
    assert all(r.oracle_bytes_per_second == CAP and not r.oracle_under_cap for r in runs)
    assert all(r.rate_bytes_per_second == pytest.approx(0.82 * CAP) and r.within_budget for r in runs)
    summary = summarize_runs(runs)
    assert (summary.judged, summary.within_budget, summary.under_cap) == (10, 10, 0)
    assert summary.under_cap_rate is None and summary.five_in_a_row(summary.under_cap_rate) is None


def test_a_seed_over_the_budget_alone_leaves_no_oracle_and_no_run_to_judge():
    alone_over = Plant("alone-over", lambda rng, seconds: [Segment(0, 3000, 32, 3 * BUDGET, 0.01)])
    run = fixed_reference_run(alone_over, 0, 0.82)
    assert (run.oracle_bytes_per_second, run.rate_bytes_per_second, run.share, run.within_budget) == (
        None, None, None, None)
    assert summarize_runs([run]).judged == 0


@pytest.mark.parametrize("seed", range(5))
def test_the_same_draw_at_a_lower_fraction_is_never_worse(seed):
    # The probes and the run's seconds do not depend on the fraction: only the rate does, and the knee plant's
    # share rises with it.
    high = fixed_reference_run(H100_GPU_KNEE, seed, 0.82)
    low = fixed_reference_run(H100_GPU_KNEE, seed, 0.4)
    assert high.oracle_bytes_per_second == low.oracle_bytes_per_second < CAP
    assert low.share <= high.share


def test_a_draw_is_replayed_exactly():
    assert fixed_reference_run(PLANTS["near-slo"], 7, 0.82) == fixed_reference_run(PLANTS["near-slo"], 7, 0.82)


def test_the_bench_oracle_probes_the_cap_first_and_never_goes_under_the_floor():
    import random

    segments = PLANTS["near-slo"].segments(random.Random(3), 240.0)
    for seed in range(5):
        oracle = bench_oracle(PLANTS["near-slo"], segments, random.Random(seed))
        assert oracle is None or 0.01 * CAP <= oracle <= CAP
    # A plant the transfer never touches: the cap's probe meets, and bisection stops there.
    assert bench_oracle(HEADROOM_CLEAN, HEADROOM_CLEAN.segments(random.Random(0), 240.0), random.Random(0)) == CAP


@pytest.mark.parametrize("seed", range(3))
def test_the_law_is_judged_against_the_oracle_the_fixed_rate_had_on_the_same_draw(seed):
    from throttle.controller import ControllerConfig

    law = feasibility.law_run(H100_GPU_KNEE, seed, ControllerConfig(cap_bytes_per_second=CAP))
    fixed = fixed_reference_run(H100_GPU_KNEE, seed, 0.82)
    assert law.oracle_bytes_per_second == fixed.oracle_bytes_per_second < CAP
    assert 0 < law.throughput_bytes_per_second <= CAP and 0 <= law.share < 1


@pytest.mark.parametrize("throughput, share, oracle, within, throughput_met, both", [
    (50e6, 0.009, 60e6, True, True, True),
    (47e6, 0.009, 60e6, True, False, False),
    (50e6, 0.011, 60e6, False, True, False),
    (50e6, 0.009, None, True, None, None),
])
def test_a_law_run_meets_both_goals_only_within_the_budget_and_at_0_8x_the_oracle(
        throughput, share, oracle, within, throughput_met, both):
    run = feasibility.LawRun("p", 0, oracle, throughput, share)
    assert (run.within_budget, run.throughput_met, run.both_goals) == (within, throughput_met, both)
