"""The A/B law against the AIMD law on the closed-loop plant (sim/qos_plant.py), over many RNG seeds.

Issue 16's goals per run: the seed's share of slow tokens over the judged part of the run within
the budget, and throughput >= 0.8 x the best fixed rate that meets the budget on the same draw
(the realized oracle). The numbers for 20 seeds are in docs/qos.md ("Plant model").
"""

from __future__ import annotations

import statistics
from dataclasses import replace

import pytest

from sim.qos_plant import BUDGET, CAP, PLANTS, RunResult, run
from throttle.controller import ControllerConfig

#: The law before session 43 made the signed bound and the hold its defaults: the tests that measure an older
#: rule's trade-off measure it in the law of its day (docs/qos.md "Holding where the seed's own share binds").
BEFORE_SESSION_43 = {"ab_signed_excess_bound": False, "ab_hold_without_excess": False}

SEEDS = range(6)


def runs(law: str, plant: str) -> list[RunResult]:
    return [run(PLANTS[plant], ControllerConfig(cap_bytes_per_second=CAP, law=law), seed) for seed in SEEDS]


@pytest.fixture(scope="module")
def ab() -> dict[str, list[RunResult]]:
    return {name: runs("ab", name) for name in PLANTS}


@pytest.fixture(scope="module")
def aimd() -> dict[str, list[RunResult]]:
    return {name: runs("aimd", name) for name in PLANTS}


def test_the_ab_law_keeps_nearly_every_run_within_the_budget_and_none_far_over_it(ab):
    # The law aims at 0.95 x the budget. Over 660 runs of this model 3-4 % end just over it, the
    # worst at 1.04 x (docs/qos.md "Raises near the budget"): here at most one in 20, none past 1.05 x.
    shares = {(r.plant, r.rng_seed): round(r.realized_share / BUDGET, 3) for rs in ab.values() for r in rs}
    over = {run: share for run, share in shares.items() if share > 1.0}
    assert len(over) <= len(shares) // 20, over
    assert max(shares.values()) <= 1.05, over


@pytest.mark.parametrize("plant", ["steady", "low-rate", "load-change", "saturating"])
def test_the_ab_law_moves_at_least_0_8_of_the_oracle_in_nearly_every_run(ab, plant):
    ratios = [r.realized_throughput_ratio for r in ab[plant]]
    assert sum(x >= 0.8 for x in ratios) >= len(ratios) - 1, ratios
    assert min(ratios) >= 0.6, ratios


def test_on_bursty_load_and_near_the_slo_the_ab_law_stays_safe_at_a_known_cost(ab):
    # Bursty: the median run moves >= 0.75 x the oracle. Near the SLO (the seed alone uses 70-90 %
    # of the budget, 32 tokens per decode step) the headroom is a few slow steps a second and the
    # law spends part of it on its margin: about 0.6 x the oracle, within the budget (docs/qos.md).
    assert statistics.median(r.realized_throughput_ratio for r in ab["bursty"]) >= 0.75
    assert min(r.realized_throughput_ratio for r in ab["near-slo"]) >= 0.4


def test_the_aimd_law_breaks_the_budget_in_most_runs_on_the_same_plants(aimd, ab):
    over = [r for rs in aimd.values() for r in rs if r.realized_share > BUDGET]
    total = sum(len(rs) for rs in aimd.values())
    assert len(over) >= total // 2
    # It moves more bytes because it takes budget it does not have: on every plant its median run
    # is over the budget, where the A/B law's median run is within it and its worst at most 5 % over.
    for name in PLANTS:
        assert statistics.median(r.realized_share for r in aimd[name]) > BUDGET >= statistics.median(
            r.realized_share for r in ab[name]), name
        assert max(r.realized_share for r in ab[name]) <= 1.05 * BUDGET, name


def test_plant_docstring_example():
    import doctest

    import sim.qos_plant

    assert doctest.testmod(sim.qos_plant).failed == 0


def test_a_throttled_phase_from_the_floor_on_a_seed_with_headroom_climbs_faster_within_the_budget():
    # The H200 battery's throttled phases: 25 s, judged from the floor, on a seed the transfer barely
    # touches (the best fixed rate is the cap). Raises that scale with the headroom (x2 far under the
    # budget) move more of the oracle than x1.25 raises did, and every run stays within the budget.
    from dataclasses import replace

    from sim.qos_plant import HEADROOM_CLEAN

    phase = replace(HEADROOM_CLEAN, seconds=25, warmup_seconds=0)
    new = [run(phase, ControllerConfig(cap_bytes_per_second=CAP), seed) for seed in SEEDS]
    old = [run(phase, ControllerConfig(cap_bytes_per_second=CAP, ab_fast_raise_factor=1.25, max_raise_factor=1.25),
               seed) for seed in SEEDS]
    assert max(r.realized_share for r in new) <= BUDGET
    assert statistics.median(r.realized_throughput_ratio for r in new) >= 1.3 * statistics.median(
        r.realized_throughput_ratio for r in old)


def test_whole_chunks_move_in_whole_chunks_and_a_slow_rate_leaves_seconds_without_reads():
    # At the floor (5 MB/s) an 8 MiB chunk is paid for every ~1.7 s: some seconds read a chunk, the
    # others read nothing (the agent reports those as the seed alone); the average is the rate.
    from sim.qos_plant import HEADROOM_CLEAN
    plant = replace(HEADROOM_CLEAN, seconds=20, warmup_seconds=0)
    chunk = 8 * 2**20
    config = ControllerConfig(cap_bytes_per_second=CAP, ab_start_cap_fraction=0.0)
    r = run(plant, config, rng_seed=3, chunk_bytes=chunk)
    assert all(moved % chunk == 0 for moved in r.rates)
    assert 0 in r.rates[:4] and any(r.rates[:4])
    fluid = run(plant, config, rng_seed=3)
    assert fluid.rates[0] == config.floor_bytes_per_second


def test_a_spilled_lease_is_reported_as_a_transfer_interval_that_moves_nothing():
    # bursty-spill: a chunk granted in a busy second (batch >= 16) holds its lease into the next,
    # which the law sees as a transfer interval; the plain bursty plant never does.
    from sim.qos_plant import BURSTY_SPILL
    import throttle.controller as controller

    seen: list[tuple[bool, float]] = []
    real = controller.decide

    def spy(state, observation, config, slo, now):
        seen.append((observation.transfer_active, observation.running))
        return real(state, observation, config, slo, now)

    config = ControllerConfig(cap_bytes_per_second=CAP, ab_start_cap_fraction=0.0)
    for plant in (PLANTS["bursty"], BURSTY_SPILL):
        seen.clear()
        import sim.qos_plant as qos_plant
        qos_plant.decide, restore = spy, qos_plant.decide
        try:
            r = run(replace(plant, seconds=60, warmup_seconds=0), config, rng_seed=1, chunk_bytes=8 * 2**20)
        finally:
            qos_plant.decide = restore
        held = sum(1 for (active, _), moved in zip(seen, r.rates) if active and moved == 0)
        assert (held > 0) == (plant is BURSTY_SPILL), (plant.name, held)


def test_the_seeds_own_bad_seconds_are_rare_whatever_the_rate_and_leave_the_rest_of_the_draw_alone():
    import random

    from sim.qos_plant import H200_CPU, H200_CPU_SPIKES, _draw

    plain = _draw(replace(H200_CPU, seconds=800), random.Random(7))[1]
    spiky = _draw(replace(H200_CPU_SPIKES, seconds=800), random.Random(7))[1]
    bad = [k for k, s in enumerate(spiky) if s.own_spike_share > 0]
    assert 3 <= len(bad) <= 25  # one every 80 s on average
    for k, (a, b) in enumerate(zip(plain, spiky)):
        assert (a.uniforms, a.jitter) == (b.uniforms, b.jitter)
        if k in bad:  # at least 12 % of the steps slow, with the transfer off or at the cap
            assert b.slow_tokens(0.0) >= 0.12 * b.tokens - b.batch and b.slow_tokens(CAP) >= b.slow_tokens(0.0)
        else:
            assert b.slow_tokens(CAP) == a.slow_tokens(CAP)


def test_confirming_spikes_brings_a_seed_with_its_own_bad_seconds_back_to_the_rate():
    # The plant model's case for ab_confirm_spikes (docs/qos.md "Spikes"): the cap is safe, and one bad
    # second of the seed's own in 80 s no longer holds the law down for the evidence horizon.
    from sim.qos_plant import H200_CPU_SPIKES

    plant = replace(H200_CPU_SPIKES, seconds=80, warmup_seconds=0)

    def mean_ratio(confirm: bool) -> float:
        law = ControllerConfig(cap_bytes_per_second=CAP, ab_confirm_spikes=confirm, **BEFORE_SESSION_43)
        results = [run(plant, law, seed, seed_alone_seconds=15, chunk_bytes=8388608) for seed in range(20)]
        return statistics.mean(min(r.realized_throughput_ratio, 2.0) for r in results)

    # In the law of its day; today's (the signed bound, the hold) recovers in part by itself: 0.87 -> 0.92.
    assert mean_ratio(True) > mean_ratio(False) + 0.05


def test_the_h100_bursty_plant_alternates_busy_and_quiet_seconds_and_its_oracle_is_the_cap():
    # v15's bursty seeds (96 requests on 1.5 s, off 1.5 s): busy seconds at batch 96, quiet ones at
    # a sixth of the tokens with three times the seed's own share; the transfer adds <= 0.2 % at the
    # cap, so the best fixed rate is the cap on every draw.
    import random

    from sim.qos_plant import H100_BURSTY, oracle_rate

    phase = replace(H100_BURSTY, seconds=80, warmup_seconds=0)  # the bench's throttled phase
    for seed in range(5):
        segments = phase.segments(random.Random(seed), phase.seconds)
        assert [s.batch for s in segments[:4]] == [96, 64, 96, 64]
        busy, quiet = segments[0], segments[1]
        assert quiet.own_share == pytest.approx(3 * busy.own_share) and 0.003 <= busy.own_share <= 0.006
        assert oracle_rate(phase, segments) == pytest.approx(CAP)


def test_under_the_floor_a_gpu_seed_whose_floor_is_over_the_budget_keeps_it():
    # v17's and v18's GPU seeds (sim/qos_plant.py h100-gpu): the floor itself costs more than the budget
    # leaves on most draws, so the law at the floor misses it; going under the floor on clear evidence
    # (yield_floor_fraction) keeps it, at 0.4-0.8x the oracle (under the floor too; docs/qos.md "Under the floor").
    from sim.qos_plant import H100_GPU

    phase = replace(H100_GPU, seconds=80, warmup_seconds=0)

    def within(yield_floor: float) -> int:
        law = ControllerConfig(cap_bytes_per_second=CAP, yield_floor_fraction=yield_floor)
        results = [run(phase, law, seed, seed_alone_seconds=15, chunk_bytes=8388608) for seed in range(10)]
        return sum(r.realized_share <= BUDGET for r in results)

    assert within(0.0) <= 3 and within(0.01) >= 8


def test_the_drifted_plant_leaves_the_transfer_a_sliver_and_the_law_keeps_the_budget_there():
    # v20's CPU seeds in the runs they missed (sim/qos_plant.py h200-drifted): the seed alone at 0.75-0.9 %,
    # the transfer +0-0.2 % at the cap, so the oracle is the cap wherever the two add to <= the budget and
    # under it elsewhere. The law keeps the budget there; 0.8x the oracle is past it on most draws
    # (docs/qos.md "Where no law can meet both goals").
    import random

    from sim.qos_plant import H200_DRIFTED, oracle_rate

    phase = replace(H200_DRIFTED, seconds=80, warmup_seconds=0)
    for seed in range(10):
        (segment,) = phase.segments(random.Random(seed), phase.seconds)
        assert 0.0075 <= segment.own_share <= 0.009 and 0 <= segment.effect_at_cap <= 0.002
        at_cap = segment.own_share + segment.effect_at_cap <= BUDGET
        assert (oracle_rate(phase, [segment]) == pytest.approx(CAP)) == at_cap
    law = ControllerConfig(cap_bytes_per_second=CAP)
    results = [run(phase, law, seed, seed_alone_seconds=15, chunk_bytes=8388608) for seed in range(10)]
    assert sum(r.realized_share <= BUDGET for r in results) >= 9


def test_v25s_near_slo_plant_the_law_keeps_the_budget_and_climbs_to_the_cap_late():
    # v25's near-slo seeds (sim/qos_plant.py h100-near-slo): 12,000 tokens/s at 64 requests, the seed alone at
    # 0.5-0.9 %, the transfer +0-0.1 % at the cap, so the oracle is the cap on every draw. The law keeps the
    # budget; its shortfall is the climb: at the floor one second's share reads +-0.7 %, so the excess it
    # reads there is mostly noise, extrapolated 20x (docs/qos.md "v25's near-slo in the plant model").
    # Measured on seeds 0-9: within the budget 10, >= 0.8x 2 (0.08-0.88x). A law that climbs sooner here
    # without losing the budget elsewhere should loosen the second assertion.
    import random

    from sim.qos_plant import H100_NEAR_SLO, oracle_rate

    phase = replace(H100_NEAR_SLO, seconds=80, warmup_seconds=0)
    for seed in range(10):
        (segment,) = phase.segments(random.Random(seed), phase.seconds)
        assert 0.005 <= segment.own_share <= 0.009 and 0 <= segment.effect_at_cap <= 0.001
        assert oracle_rate(phase, [segment]) == pytest.approx(CAP)
    law = ControllerConfig(cap_bytes_per_second=CAP)
    results = [run(phase, law, seed, seed_alone_seconds=15, chunk_bytes=8388608) for seed in range(10)]
    assert sum(r.realized_share <= BUDGET for r in results) >= 9
    assert sum(r.throughput_ratio >= 0.8 for r in results) <= 5


def test_on_the_noisy_gpu_plant_the_oracle_rate_itself_meets_the_budget_in_about_half_the_phases():
    # v21's GPU plant (sim/qos_plant.py h100-gpu-noisy): seconds far noisier than the batch explains. The best
    # fixed rate by the expected share is, in an 80 s phase, within the budget by luck about half the time,
    # as the bench's control (that rate, in the same seconds) was in 1 of 5 runs; the law sits at its aim
    # (0.95 of the budget) and keeps the budget in most phases, not all (docs/qos.md).
    import random

    from sim.qos_plant import H100_GPU_NOISY, _draw, oracle_rate

    phase = replace(H100_GPU_NOISY, seconds=80, warmup_seconds=0)
    law = ControllerConfig(cap_bytes_per_second=CAP)
    fixed_met = law_met = 0
    for seed in range(20):
        segments, seconds = _draw(phase, random.Random(seed))
        rate = oracle_rate(phase, segments)
        assert 0 < rate < CAP  # the transfer at the cap is over the budget on every draw
        fixed_met += sum(s.slow_tokens(rate) for s in seconds) / sum(s.tokens for s in seconds) <= BUDGET
        law_met += run(phase, law, seed, seed_alone_seconds=15, chunk_bytes=8388608).realized_share <= BUDGET
    assert 4 <= fixed_met <= 12 and law_met >= 12 and law_met > fixed_met   # measured: 8 and 15 of 20


def test_where_the_oracle_is_the_floor_going_under_it_sooner_trades_one_goal_for_the_other():
    # v22's GPU plant (sim/qos_plant.py h100-gpu-floor): the seed alone at 0.3-0.8 %, a concave cost, so the best
    # fixed rate is about the floor (5 % of the cap). Going under the floor on weaker evidence (yield_floor_z 0,
    # not 3) keeps the budget in more phases and reaches 0.8x the oracle in fewer, not more of both
    # (docs/qos.md "The floor as the oracle"; measured on 20 draws: 15 / 16 / 12 at 3, 18 / 12 / 10 at 0).
    import random

    from sim.qos_plant import H100_GPU_FLOOR, _draw, oracle_rate

    phase = replace(H100_GPU_FLOOR, seconds=80, warmup_seconds=0)
    floor = ControllerConfig(cap_bytes_per_second=CAP).floor_bytes_per_second
    oracles = sorted(oracle_rate(phase, _draw(phase, random.Random(seed))[0]) for seed in range(20))
    assert 0 < oracles[0] and oracles[-1] <= 2 * floor and oracles[0] <= floor <= oracles[-1]
    tallies = {}
    for z in (3.0, 0.0):
        law = ControllerConfig(cap_bytes_per_second=CAP, yield_floor_z=z, **BEFORE_SESSION_43)
        results = [run(phase, law, seed, seed_alone_seconds=15, chunk_bytes=8388608) for seed in range(20)]
        within = [r.realized_share <= BUDGET for r in results]
        fast = [r.throughput_ratio >= 0.8 for r in results]
        tallies[z] = (sum(within), sum(fast), sum(w and f for w, f in zip(within, fast)))
    assert tallies[0.0][0] > tallies[3.0][0] and tallies[0.0][1] < tallies[3.0][1]
    assert tallies[0.0][2] <= tallies[3.0][2]


@pytest.mark.parametrize("settle, at_least_08x, at_most_08x", [
    (10.0, 20, 30),   # the default: the new load's first seconds left out of the attribution (measured 27)
    (0.0, 0, 19),     # attributed: the seed's own slow first seconds read as the transfer's cost (17)
])
def test_a_new_loads_own_slow_first_seconds_do_not_hold_the_law_down(settle, at_least_08x, at_most_08x):
    # v21's load-change seeds (sim/qos_plant.py h100-load-change): 32 then 96 requests, the new load's first
    # 4-10 s 1-4 % slow on their own; the transfer +0-0.2 % at the cap, so the oracle is the cap.
    from sim.qos_plant import H100_LOAD_CHANGE

    phase = replace(H100_LOAD_CHANGE, seconds=80, warmup_seconds=0)
    law = ControllerConfig(cap_bytes_per_second=CAP, ab_settle_seconds=settle)
    results = [run(phase, law, seed, seed_alone_seconds=15, chunk_bytes=8388608) for seed in range(30)]
    assert all(r.realized_share <= BUDGET for r in results)
    assert at_least_08x <= sum(r.throughput_ratio >= 0.8 for r in results) <= at_most_08x


def test_the_seeds_own_episodes_last_their_seconds_and_one_second_spikes_draw_as_before():
    # h200-cpu-episodes (v21's near-slo seed: ~3 s at 4-6 % on its own, under the law's spike rule): each
    # episode marks own_spike_seconds consecutive seconds; with 1 s the draw is the one the spike plants had.
    import random

    from sim.qos_plant import H200_CPU_EPISODES, H200_CPU_SPIKES, _draw

    episodes = replace(H200_CPU_EPISODES, seconds=600, warmup_seconds=0)
    _, seconds = _draw(episodes, random.Random(7))
    marked = [s.own_spike_share > 0 for s in seconds]
    starts = [i for i, m in enumerate(marked) if m and (i == 0 or not marked[i - 1])]
    assert starts and all(all(marked[i:i + 3]) for i in starts if i + 3 <= len(marked))
    assert {s.own_spike_share for s in seconds} == {0.0, 0.04}
    one = replace(H200_CPU_SPIKES, seconds=600, warmup_seconds=0)
    longer = replace(one, own_spike_seconds=3)
    (_, single), (_, triple) = _draw(one, random.Random(7)), _draw(longer, random.Random(7))
    single_starts = [i for i, s in enumerate(single) if s.own_spike_share > 0]
    # The same starts: a 3 s episode begins wherever the 1 s spike was drawn.
    assert all(triple[i].own_spike_share > 0 for i in single_starts)
    assert sum(s.own_spike_share > 0 for s in triple) > len(single_starts)


def test_the_running_gauge_misses_the_requests_a_step_finished_and_the_rest_of_the_draw_stays():
    # The bench's seeds at 64 in flight with 128-token outputs read 64 in 40 of 60 scrapes, 61-63 in the rest
    # (testbed.decode publishes after a step, the finished requests' replacements still queued).
    import random

    from sim.qos_plant import H200_CPU, _draw, _observation

    phase = replace(H200_CPU, seconds=600, warmup_seconds=0)
    _, seconds = _draw(phase, random.Random(3))
    running = [_observation(s, 0.0).running for s in seconds]
    assert 0.55 <= sum(r == 64 for r in running) / len(running) <= 0.75
    assert min(running) >= 59 and max(running) == 64
    assert all(_observation(s, 0.0).running + _observation(s, 0.0).queued == 64 for s in seconds)
    _, steady_gauge = _draw(replace(phase, output_tokens_per_request=0.0), random.Random(3))
    assert {_observation(s, 0.0).running for s in steady_gauge} == {64}
    # Their own rng: the same steps and stalls with or without them.
    assert [(s.uniforms, s.jitter) for s in seconds] == [(s.uniforms, s.jitter) for s in steady_gauge]


@pytest.mark.parametrize("isolate, at_least_08x, at_most_08x", [
    (True, 6, 20),    # the default: a rise at the same load is first taken for the seed's own episode (7 of 20)
    (False, 0, 4),    # forgotten to at once: the episode is the law's evidence for the horizon (3 of 20)
])
def test_a_seeds_own_episodes_do_not_hold_the_law_down(isolate, at_least_08x, at_most_08x):
    # h200-cpu-episodes: 9,000 tokens/s at 64 requests, the seed alone at 0.2-0.8 %, 3 s at +4 % on its own
    # about once a minute; the transfer +0-0.2 % at the cap, so the oracle is the cap. Either way the
    # budget holds as often (17 of 20); only what the law does after an episode differs.
    from sim.qos_plant import H200_CPU_EPISODES

    phase = replace(H200_CPU_EPISODES, seconds=80, warmup_seconds=0)
    law = ControllerConfig(cap_bytes_per_second=CAP, ab_isolate_episodes=isolate)
    results = [run(phase, law, seed, seed_alone_seconds=15, chunk_bytes=8388608) for seed in range(20)]
    assert sum(r.realized_share <= BUDGET for r in results) >= 16
    assert at_least_08x <= sum(r.throughput_ratio >= 0.8 for r in results) <= at_most_08x


def test_a_second_fork_finds_the_law_where_the_first_left_it_unless_the_law_restarts():
    # Two forks from one seed 15 s apart, the second judged (docs/qos.md "A second fork"). On v25's near-slo
    # seeds the law that stays adaptive starts the second where the first climbed to (the cap); restarted,
    # as `rfork bench qos` restarts it each run, it climbs from the floor again. Measured on seeds 0-9: at
    # >= 0.8x the oracle 7 kept / 3 restarted, within the budget 10 / 10. Where the load tripled in the gap
    # (load-change) the kept law without ab_gap_seconds started at the old load's rate and spent the gap's
    # seconds alone as savings: within the budget 5 of 10 (up to 1.07x it); with it, 10 of 10.
    from sim.qos_plant import H100_NEAR_SLO, run_second_fork

    def second_forks(plant, law_restarts, **tuning):
        law = ControllerConfig(cap_bytes_per_second=CAP, **{**BEFORE_SESSION_43, **tuning})
        phase = replace(plant, seconds=80, warmup_seconds=0)
        return [run_second_fork(phase, law, seed, 15, law_restarts=law_restarts, seed_alone_seconds=15,
                                chunk_bytes=8388608) for seed in range(10)]

    kept, restarted = second_forks(H100_NEAR_SLO, False), second_forks(H100_NEAR_SLO, True)
    assert all(r.realized_share <= BUDGET for r in kept + restarted)
    assert sum(r.realized_throughput_ratio >= 0.8 for r in kept) >= 6
    assert sum(r.realized_throughput_ratio >= 0.8 for r in restarted) <= 4
    load_change = PLANTS["load-change"]
    assert sum(r.realized_share <= BUDGET for r in second_forks(load_change, True)) >= 9
    assert sum(r.realized_share <= BUDGET for r in second_forks(load_change, False)) >= 9
    assert sum(r.realized_share <= BUDGET for r in second_forks(load_change, False, ab_gap_seconds=0)) <= 6


def test_a_lull_between_two_forks_no_longer_costs_the_law_what_it_learnt():
    # The second fork 35 s after the first, the seed idle for the gap's first 12 s (as after each of `rfork
    # bench qos`'s runs), the law staying adaptive. A load back after idle forgot the evidence; now a load of
    # the batch it had before is a lull and the evidence comes back (docs/qos.md "A lull"). Seeds 0-9 of
    # v25's near-slo seeds: at >= 0.8x the oracle 8 with the rule, 2 without; within the budget 10 / 10.
    from sim.qos_plant import H100_NEAR_SLO, run_second_fork

    def second_forks(**tuning):
        law = ControllerConfig(cap_bytes_per_second=CAP, **tuning)
        phase = replace(H100_NEAR_SLO, seconds=80, warmup_seconds=0)
        return [run_second_fork(phase, law, seed, 35, law_restarts=False, seed_alone_seconds=15,
                                chunk_bytes=8388608, idle_seconds=12) for seed in range(10)]

    kept, forgotten = second_forks(), second_forks(ab_keep_evidence_over_lulls=False)
    assert all(r.realized_share <= BUDGET for r in kept + forgotten)
    assert sum(r.realized_throughput_ratio >= 0.8 for r in kept) >= 6
    assert sum(r.realized_throughput_ratio >= 0.8 for r in forgotten) <= 4


def test_a_load_ramping_up_after_the_benchs_gap_no_longer_holds_the_next_fork_at_the_floor():
    # The bench's gap between runs, each load back after idle slow for its first 11 s (+6 %: v29 near-slo's watch
    # before run 2 read ~7 % for 11 s, the seeds' steady share 0.3-0.5 %). Those seconds were the seed alone in
    # the off pool, and held the second fork at the floor (ab_lull_ramp_seconds=0: 0.05-0.07x in all 10).
    from sim.qos_plant import H100_NEAR_SLO, run_second_fork

    def second_forks(**tuning):
        law = ControllerConfig(cap_bytes_per_second=CAP, **tuning)
        phase = replace(H100_NEAR_SLO, seconds=80, warmup_seconds=0)
        return [run_second_fork(phase, law, seed, 35, law_restarts=False, seed_alone_seconds=15, chunk_bytes=8388608,
                                idle_seconds=10, spike_seconds=4, return_transient=(11, 0.06)) for seed in range(10)]

    # The ramp rule's case alone: without ab_own_spell_over_z too (it forgets the ramp once the load reads as the
    # seed again).
    ramp_left_out, ramp_attributed = second_forks(), second_forks(ab_lull_ramp_seconds=0, ab_own_spell_over_z=0)
    assert all(r.realized_share <= BUDGET for r in ramp_left_out + ramp_attributed)
    assert sum(r.realized_throughput_ratio >= 0.8 for r in ramp_left_out) >= 6
    assert max(r.realized_throughput_ratio for r in ramp_attributed) < 0.2


def test_a_fork_after_the_benchs_gap_between_runs_restarts_its_error_budget():
    # The bench's gap between two runs: the seeds idle (10 s), the load back for a 4 s spike with the fork still
    # reading, idle again (its recovery), then loaded with no fork until the next. The reads of the spike came
    # after an idle spell of 10 s; counted in seconds, that spacing was "the fork's own" and hid the next gap
    # (21 s < 2 x 11 s), and the next fork spent the gap as savings: steady seeds 0-9 within the budget 7 of 10
    # with the lull rule off (up to 1.05x it). The spacing is now counted in loaded intervals.
    from sim.qos_plant import run_second_fork

    for keep in (True, False):
        law = ControllerConfig(cap_bytes_per_second=CAP, ab_keep_evidence_over_lulls=keep)
        phase = replace(PLANTS["steady"], seconds=80, warmup_seconds=0)
        second = [run_second_fork(phase, law, seed, 35, law_restarts=False, seed_alone_seconds=15,
                                  chunk_bytes=8388608, idle_seconds=10, spike_seconds=4) for seed in range(10)]
        assert sum(r.realized_share <= BUDGET for r in second) >= 9, keep


def test_a_second_fork_after_the_seeds_own_spell_over_its_slo_leaves_the_floor():
    # v34 steady runs 3-4 on one law: the seeds over their SLO on their own (2.5 % worse) in the first fork's last
    # 60 s, the second fork 20 s later. Seeds 0-9: a mean of 0.74x the oracle with ab_own_spell_over_z, 0.24x
    # without (the spell held it at the floor, then the error budget repaid it); within the budget 10 / 10 both.
    from sim.qos_plant import run_second_fork

    def second_forks(**tuning):
        law = ControllerConfig(cap_bytes_per_second=CAP, **tuning)
        phase = replace(PLANTS["steady"], seconds=80, warmup_seconds=0)
        return [run_second_fork(phase, law, seed, 20, law_restarts=False, seed_alone_seconds=15, chunk_bytes=8388608,
                                spell_before=(60, 0.025)) for seed in range(10)]

    forgotten, kept = second_forks(), second_forks(ab_own_spell_over_z=0)
    assert all(r.realized_share <= BUDGET for r in forgotten + kept)
    assert sum(r.realized_throughput_ratio for r in forgotten) / 10 >= 0.6
    assert sum(r.realized_throughput_ratio for r in kept) / 10 <= 0.35


def test_a_watch_whose_bad_minutes_are_long_past_no_longer_holds_the_fork_at_the_floor():
    # The agent watched v25's near-slo seeds for 240 s before the fork, all but the last 60 s at 1 % worse (over
    # their SLO on their own). The off horizon (300 s) kept those minutes; the on intervals read the seed as it is,
    # far under them, and the off pool now shrinks to the on pool's span (docs/qos.md "A stale off pool"). Seeds
    # 0-9: a mean of 0.49x the oracle with the rule, 0.05x (the floor) without; within the budget 10 / 10.
    from sim.qos_plant import H100_NEAR_SLO

    def forks(**tuning):
        law = ControllerConfig(cap_bytes_per_second=CAP, **tuning)
        phase = replace(H100_NEAR_SLO, seconds=80, warmup_seconds=0)
        return [run(phase, law, seed, seed_alone_seconds=240, chunk_bytes=8388608, stale_watch_excess=0.01)
                for seed in range(10)]

    shrunk, whole = forks(), forks(ab_stale_off_z=0, ab_own_spell_over_z=0)   # the stale-off rule's case alone
    assert all(r.realized_share <= BUDGET for r in shrunk + whole)
    assert sum(r.realized_throughput_ratio for r in shrunk) / 10 >= 0.35
    assert sum(r.realized_throughput_ratio for r in whole) / 10 <= 0.15


def test_v38s_gpu_plant_has_a_step_a_plateau_and_a_knee_and_its_oracle_sits_at_the_knee():
    # v38's GPU plant (sim/qos_plant.py h100-gpu-knee): the oracle's fixed rates read, over ~0.28 % alone,
    # +0.55 % at 32 % of the cap, +0.50 % at 56 %, +0.65 % at 75 %, +1.09 % at 87 % and +2.2 % at the cap.
    # The drawn plant keeps that shape (a plateau: a third of the cap to three quarters costs ~0.1 point more),
    # and the best fixed rate is near the knee (0.57-0.82 of the cap over 20 draws: where the seed's own share
    # leaves less room the oracle slides down the flat plateau), never at the cap.
    import random

    from sim.qos_plant import H100_GPU_KNEE, _draw, oracle_rate

    oracles = []
    for seed in range(8):
        segments, _ = _draw(H100_GPU_KNEE, random.Random(seed))
        (segment,) = segments
        excess = {x: segment.share(x * CAP) - segment.own_share for x in (0.1, 0.32, 0.56, 0.75, 0.87, 1.0)}
        assert excess[0.1] < 0.002 and 0.0035 <= excess[0.32] <= 0.0065
        assert excess[0.75] - excess[0.32] < 0.002 < excess[0.87] - excess[0.75] + 0.0015
        assert 0.019 <= excess[1.0] <= 0.025 and excess[1.0] > 1.5 * excess[0.87]
        oracles.append(oracle_rate(H100_GPU_KNEE, segments) / CAP)
    assert 0.5 <= min(oracles) and max(oracles) <= 0.87 and statistics.median(oracles) >= 0.7
