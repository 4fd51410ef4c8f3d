"""bench/qos_stats.py, qos_plants.py, qos_battery.py and the bench's flag checks: the pure parts, table-tested."""

from __future__ import annotations

import argparse
import doctest
import math
import random
import re
import time
from dataclasses import replace

import pytest

from bench import qos_battery, qos_bench, qos_plants, qos_rejudge, qos_stats
from bench.qos_stats import Check, Probe, block_share_interval, bracket, next_probe, oracle_from, summarize


@pytest.mark.parametrize("module", [qos_stats, qos_plants, qos_battery, qos_bench, qos_rejudge])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


# --------------------------------------------------------------------------- intervals


@pytest.mark.parametrize("k, n, low, high", [
    (10, 1000, 0.0054, 0.0183),
    (0, 1000, 0.0, 0.0038),
    (1000, 1000, 0.9962, 1.0),
    (5, 10, 0.2366, 0.7634),
])
def test_wilson_interval(k, n, low, high):
    lo, hi = qos_stats.wilson_interval(k, n)
    assert (round(lo, 4), round(hi, 4)) == (low, high)


@pytest.mark.parametrize("df, t", [(1, 12.706), (2, 4.303), (10, 2.228), (30, 2.042), (31, 1.96), (10_000, 1.96)])
def test_t_quantile(df, t):
    assert qos_stats.t_quantile_975(df) == t


def test_t_quantile_refuses_no_degrees_of_freedom():
    with pytest.raises(ValueError, match="degrees of freedom must be >= 1"):
        qos_stats.t_quantile_975(0)


@pytest.mark.parametrize("blocks, share, blocks_used", [
    ([(0, 100)] * 10, 0.0, 10),
    ([(1, 100)] * 10, 0.01, 10),
    ([(2, 100), (0, 0), (0, 100)], 0.01, 2),   # a second without tokens is skipped
    ([(3, 300)], 0.01, 1),
])
def test_block_share(blocks, share, blocks_used):
    e = block_share_interval(blocks)
    assert e.share == pytest.approx(share) and e.blocks == blocks_used
    assert e.low <= e.share <= e.high


def test_identical_seconds_give_the_binomial_interval_and_one_second_says_nothing():
    """Seconds that agree exactly have no spread, but the interval is never narrower than Wilson's."""
    e = block_share_interval([(1, 100)] * 10)
    assert (e.low, e.high) == (e.naive_low, e.naive_high) and e.low < 0.01 < e.high
    none_slow = block_share_interval([(0, 500)] * 30)
    assert none_slow.low == 0.0 and none_slow.high == pytest.approx(qos_stats.wilson_interval(0, 15000)[1])
    one = block_share_interval([(3, 300)])
    assert (one.low, one.high) == (0.0, 1.0)


def test_whole_slow_steps_widen_the_interval_beyond_the_binomial_one():
    """A batch of 64 tokens shares one step's latency: slow tokens come 64 at a time, so the tokens are not
    independent, and the interval over seconds must be much wider than Wilson's over tokens."""
    rng = random.Random(7)
    blocks = []
    for _ in range(60):  # 60 s of 50 steps x 64 tokens; 1 % of steps are slow, all 64 tokens of each
        slow_steps = sum(rng.random() < 0.01 for _ in range(50))
        blocks.append((64 * slow_steps, 64 * 50))
    e = block_share_interval(blocks)
    assert e.design_effect > 10, e
    assert e.naive_high - e.naive_low < (e.high - e.low) / 3
    assert e.low < 0.01 < e.high


def test_independent_tokens_give_about_the_binomial_interval():
    rng = random.Random(3)
    blocks = [(sum(rng.random() < 0.01 for _ in range(2000)), 2000) for _ in range(60)]
    e = block_share_interval(blocks)
    assert 0.5 < e.design_effect < 2.0, e


def test_share_estimate_is_the_window_share_with_the_blocks_half_width():
    from throttle.histogram import WindowHistogram

    w = WindowHistogram((0.01, 0.02, math.inf), (900.0, 990.0, 1000.0))  # 1 % above 0.02
    e = qos_bench.share_estimate(w, 0.02, [(2, 250), (0, 250), (4, 250), (4, 250)])
    assert e.share == pytest.approx(0.01) and e.blocks == 4
    around = block_share_interval([(2, 250), (0, 250), (4, 250), (4, 250)], share=0.01)
    assert (e.low, e.high) == (around.low, around.high) and e.low < 0.01 < e.high
    assert qos_bench.share_estimate(None, 0.02, []) is None


def test_seconds_that_all_read_zero_do_not_make_a_nonzero_share_certain():
    """The blocks' edges only approximate the phase's: if they all read 0 % while the whole window reads 1 %,
    the interval must still have width (the spread is measured around the window's share)."""
    e = block_share_interval([(0, 500)] * 5, share=0.01)
    assert e.share == 0.01 and e.high > 0.01 and e.low < 0.01


# --------------------------------------------------------------------------- the oracle's bisection


@pytest.mark.parametrize("probes, expected", [
    ([], (None, None)),
    ([Probe(100, True)], (100, None)),
    ([Probe(100, False)], (None, 100)),
    ([Probe(100, False), Probe(25, True), Probe(50, False)], (25, 50)),
    ([Probe(100, False), Probe(25, True), Probe(50, True), Probe(70, False)], (50, 70)),
    # Noise: a lower rate missed after a higher one met; the bracket keeps the highest that met.
    ([Probe(100, False), Probe(50, True), Probe(25, False)], (50, 100)),
])
def test_bracket(probes, expected):
    assert bracket(probes) == expected


@pytest.mark.parametrize("probes, expected", [
    ([], 100.0),
    ([Probe(100, True)], None),                                   # the cap meets: done
    ([Probe(100, False)], 25.0),                                  # sqrt(6.25 x 100)
    ([Probe(100, False), Probe(25, False)], 12.5),
    ([Probe(100, False), Probe(25, True)], 50.0),
    ([Probe(100, False), Probe(25, True), Probe(50, True), Probe(70.7, True), Probe(84.1, False)], None),  # 5 probes
    ([Probe(100, False), Probe(80, True), Probe(90, False)], None),  # 90 / 80 <= 1.2
    ([Probe(100, False), Probe(7.0, False)], 6.25),               # within tolerance of the floor: the floor itself
    ([Probe(100, False), Probe(7.0, False), Probe(6.25, False)], None),
])
def test_next_probe(probes, expected):
    got = next_probe(probes, 100.0, 6.25, 1.2, 5 if len(probes) < 5 else 5)
    assert got == (pytest.approx(expected, rel=1e-3) if expected else None)


@pytest.mark.parametrize("true_oracle", [3.0, 6.5, 11.0, 30.0, 47.0, 64.0, 99.0, 150.0])
def test_bisection_brackets_the_true_oracle(true_oracle):
    """A plant where every rate up to ``true_oracle`` meets the budget: bisection ends with it bracketed."""
    cap, floor, tolerance = 100.0, 6.25, 1.2
    probes: list[Probe] = []
    while (rate := next_probe(probes, cap, floor, tolerance, 8)) is not None:
        probes.append(Probe(rate, rate <= true_oracle))
    oracle, (low, high) = oracle_from(probes)
    assert len(probes) <= 8
    if true_oracle >= cap:
        assert oracle == cap and len(probes) == 1
    elif true_oracle < floor:
        assert oracle is None and any(p.rate == floor for p in probes)
    else:
        assert low <= true_oracle < high and high / low <= tolerance


@pytest.mark.parametrize("floor, probes_spent, within", [
    (6.25, 5, 1.19),   # the cap and four log-scale halvings of [cap/16, cap] (before session 31)
    (1.0, 6, 1.16),    # the default since: [cap/100, cap] (the law's yield floor), with one probe more
])
def test_the_default_probes_bracket_the_oracle_within_a_fifth(floor, probes_spent, within):
    for true_oracle in (57.0, 13.0, 1.4):
        probes: list[Probe] = []
        while (rate := next_probe(probes, 100.0, floor, 1.2, probes_spent)) is not None:
            probes.append(Probe(rate, rate <= true_oracle))
        low, high = bracket(probes)
        if true_oracle >= floor:
            assert low <= true_oracle < high and high / low <= within


# --------------------------------------------------------------------------- judging and summaries


@pytest.mark.parametrize("value, target, met", [
    (0.009, "<= 0.01", True), (0.01, "<= 0.01", True), (0.0101, "<= 0.01", False),
    (0.8, ">= 0.8", True), (0.79, ">= 0.8", False), (None, ">= 0.8", None), (math.nan, "<= 1", None),
])
def test_check(value, target, met):
    assert Check(value, target).met() is met


def test_a_missing_time_is_a_miss_where_it_means_the_event_never_came():
    assert Check(None, "<= 1", missing_is_a_miss=True).met() is False
    assert Check(None, "<= 1").met() is None


RUN = {"throttled_share_above_slo": 0.008, "throttled_ttft_share_above_slo": None,
       "throughput_throttled_bytes_per_second": 90e6, "spike_cut_seconds": 0.6, "idle_to_cap_seconds": 2.5,
       "itl_p99_throttled_seconds": 0.02, "slo_itl_seconds": 0.021, "itl_p99_baseline_seconds": 0.018,
       "itl_p99_unthrottled_seconds": 0.03, "throughput_idle_bytes_per_second": 199e6,
       "cap_aggregate_bytes_per_second": 200e6, "spike_reaction_seconds": 1.2, "recovery_seconds": 3.0}


@pytest.mark.parametrize("change, check, met", [
    ({}, "throttled_share_above_slo", True),
    ({"throttled_share_above_slo": 0.012}, "throttled_share_above_slo", False),
    ({"throttled_ttft_share_above_slo": 0.02}, "throttled_ttft_share_above_slo", False),
    ({}, "throttled_ttft_share_above_slo", None),                       # no TTFT SLO: not judged
    ({"throughput_throttled_bytes_per_second": 79e6}, "throttled_vs_oracle", False),
    ({"spike_cut_seconds": 1.3}, "spike_cut_seconds", False),
    ({"spike_cut_seconds": None}, "spike_cut_seconds", False),          # never cut in the window: a miss
    ({"idle_to_cap_seconds": None}, "idle_to_cap_seconds", False),
    ({"recovery_seconds": None}, "recovery_seconds", False),
    ({"idle_to_cap_seconds": 5.5}, "idle_to_cap_seconds", False),
    ({}, "idle_vs_cap", True),
    ({}, "seed_alone_share_above_slo", None),                          # no agent read the seed alone
    ({"throttled_seed_alone_share_per_seed": [0.004, None, 0.009]}, "seed_alone_share_above_slo", True),
    ({"throttled_seed_alone_share_per_seed": [0.004, 0.013]}, "seed_alone_share_above_slo", False),
])
def test_judge_run(change, check, met):
    checks = qos_stats.judge_run({**RUN, **change}, 0.01, 100e6, 100e6)
    assert checks[check]["met"] is met


def test_judge_run_without_an_oracle_cannot_judge_throughput():
    checks = qos_stats.judge_run(RUN, 0.01, 100e6, None)
    assert checks["throttled_vs_oracle"] == {"value": None, "target": ">= 0.8", "met": None, "issue_target": True}


def test_the_seeds_alone_over_the_budget_are_the_host_not_a_goal():
    checks = qos_stats.judge_run({**RUN, "throttled_share_above_slo": 0.014, "seed_speed_vs_calibration": 0.95,
                                  "throttled_seed_alone_share_per_seed": [0.006, 0.013]}, 0.01, 100e6, 100e6)
    assert checks["seed_alone_share_above_slo"] == {"value": 0.013, "target": "<= 0.01", "met": False,
                                                    "issue_target": False}
    assert not qos_stats.all_met(checks) and not qos_stats.host_held(checks)


@pytest.mark.parametrize("runs, expected", [
    # (share over the SLO, slowest seed's speed vs calibration, the most a seed alone read) a run
    ([(0.008, 0.95, 0.005)] * 5, (5, 5, 5, 5)),
    ([(0.008, 0.95, 0.005), (0.012, 0.95, 0.005), (0.012, 0.85, 0.005), (0.012, 0.95, 0.011), (0.008, 0.8, 0.02)],
     (5, 2, 2, 1)),                     # run 5 met every goal on a host that did not hold: in the first count only
    ([(0.008, None, None)], (1, 1, 1, 1)),            # nothing to judge the host by: it held
])
def test_tally_counts_runs_that_met_every_goal_and_those_where_the_host_held(runs, expected):
    checks = [qos_stats.judge_run({**RUN, "throttled_share_above_slo": share, "seed_speed_vs_calibration": speed,
                                   "throttled_seed_alone_share_per_seed": [alone]}, 0.01, 100e6, 100e6)
              for share, speed, alone in runs]
    t = qos_stats.tally(checks)
    assert (t["runs"], t["met_every_goal"], t["host_held"], t["host_held_met_every_goal"]) == expected


def test_a_goal_missed_in_one_run_of_five_is_missed():
    runs = [qos_stats.judge_run({**RUN, "throttled_share_above_slo": s}, 0.01, 100e6, 100e6)
            for s in (0.005, 0.007, 0.011, 0.006, 0.009)]
    summary = summarize(runs)["throttled_share_above_slo"]
    assert (summary["min"], summary["median"], summary["max"]) == (0.005, 0.007, 0.011)
    assert (summary["met_runs"], summary["judged_runs"], summary["every_run"]) == (4, 5, False)
    assert summarize(runs)["spike_cut_seconds"]["every_run"] is True
    assert not all(qos_stats.all_met(c) for c in runs)


# --------------------------------------------------------------------------- plants, battery, flags


def test_load_change_plant_changes_mid_phase_and_others_do_not():
    assert qos_plants.get_plant("steady").schedule(30.0) == [(0.0, qos_plants.Load(concurrency=64))]
    change = qos_plants.get_plant("load-change").schedule(30.0)
    assert [(t, load.concurrency) for t, load in change] == [(0.0, 32), (15.0, 96)]


@pytest.mark.parametrize("text, says", [
    ("", "no plant named"), ("steady,steady", "named twice"), ("steady,spiky", "unknown plant 'spiky'"),
])
def test_parse_plants_refuses(text, says):
    with pytest.raises(qos_plants.PlantError, match=says):
        qos_plants.parse_plants(text)


def test_every_plant_is_on_the_cpu_but_the_gpu_one():
    assert {n for n, p in qos_plants.PLANTS.items() if p.device != "cpu"} == {"gpu-decode"}
    assert set(qos_plants.CPU_PLANTS) == set(qos_plants.PLANTS) - {"gpu-decode"}


@pytest.mark.parametrize("cpus, plants, per, gpu, expected, warned", [
    (list(range(16)), ["a", "b", "c", "d"], 3, "g",
     {"a": [0, 1, 2], "b": [3, 4, 5], "c": [6, 7, 8], "d": [9, 10, 11], "g": [12, 13, 14, 15]}, False),
    (list(range(16)), ["a"], 6, "g", {"a": [0, 1, 2, 3, 4, 5], "g": [6, 7, 8, 9, 10, 11, 12, 13, 14, 15]}, False),
    (list(range(16)), ["a", "a-b"], 3, ["g", "g-b"],
     {"a": [0, 1, 2], "a-b": [3, 4, 5], "g": [6, 7, 8, 9, 10], "g-b": [11, 12, 13, 14, 15]}, False),
    ([0, 1], [], 3, "g", {"g": [0, 1]}, True),     # a host too small for one plant: shared, and said
    ([0, 1], ["a", "b"], 1, None, {"a": [0], "b": [1]}, False),
    ([0, 1], ["a", "b"], 2, None, {"a": [0, 1], "b": [0, 1]}, True),
])
def test_assign_cores(cpus, plants, per, gpu, expected, warned):
    cores, warnings = qos_battery.assign_cores(cpus, plants, per, gpu)
    assert cores == expected and bool(warnings) is warned
    cpu_slices = [set(cores[p]) for p in plants]
    if not warned:  # disjoint CPU plants
        assert sum(len(s) for s in cpu_slices) == len(set().union(*cpu_slices))


@pytest.mark.parametrize("cpus, plants, per, gpu, left", [
    (list(range(16)), ["a", "b", "c", "d"], 4, "g", 0),
    (list(range(16)), ["a", "b"], 6, "g", 4),            # v21 and v22: two CPU plants with controls beside it
    (list(range(16)), ["a", "a-b"], 6, ["g", "g-b"], 4),
])
def test_the_battery_refuses_a_gpu_plant_with_fewer_cpus_than_a_cpu_plant(cpus, plants, per, gpu, left):
    with pytest.raises(qos_battery.BatteryError, match=f"needs {per} CPUs an arm of its own.* {left} are left"):
        qos_battery.assign_cores(cpus, plants, per, gpu)


def test_the_benchs_buckets_include_sglangs():
    from testbed.decode import ITL_BUCKETS

    assert qos_bench.SGLANG_ITL_BUCKETS == ITL_BUCKETS
    assert set(ITL_BUCKETS) <= set(qos_bench.FINE_ITL_BUCKETS)


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    qos_bench.add_arguments(p)
    return p.parse_args(list(argv))


def test_quick_and_flags_set_the_options():
    options, plant = qos_bench.options_from_args(_args("--plant", "bursty", "--quick", "--oracle-probe-seconds",
                                                       "7", "--cpus", "0", "--concurrency", "16"))
    assert plant.name == "bursty" and options.oracle_probe_seconds == 7 and options.size_bytes == 64 * 2**20
    assert options.load == qos_plants.Load(concurrency=16) and options.seed_cpus == (0,)
    full, _ = qos_bench.options_from_args(_args())
    assert full.oracle_probe_seconds >= 30 and full.oracle_max_probes >= 6
    assert full.baseline_seconds == 30 and full.baseline_block_seconds == 3 and options.baseline_block_seconds is None
    assert qos_bench.options_from_args(_args("--baseline-seconds", "60"))[0].baseline_seconds == 60
    assert qos_bench.options_from_args(_args("--oracle-floor-fraction", "0.01"))[0].oracle_floor_fraction == 0.01
    # By default the oracle is sought down to the law's lowest rate: its yield floor, or cap/16 where it
    # does not go under its floor.
    assert full.oracle_floor_fraction is None and full.oracle_floor_bytes_per_second == 0.01 * full.cap
    no_yield, _ = qos_bench.options_from_args(_args("--throttle-tuning", "yield_floor_fraction=0"))
    assert no_yield.oracle_floor_bytes_per_second == full.cap / 16
    aimd, _ = qos_bench.options_from_args(_args("--throttle-tuning", "law=aimd"))
    assert aimd.oracle_floor_bytes_per_second == full.cap / 16
    assert qos_bench._options_dict(full)["oracle_floor_fraction"] == 0.01
    # --control: the CPUs in halves, the law fleet's seeds on the first, the control's on the second (on
    # one CPU both wrap onto it).
    controlled, _ = qos_bench.options_from_args(_args("--control", "--seeds", "1", "--cpus", "0"))
    assert controlled.control and controlled.seed_cpus == controlled.control_seed_cpus == (0,)
    assert not full.control and full.control_seed_cpus == ()
    # The process itself (clients, observer, scheduler, agents) on the CPUs after the seeds', all of them
    # where there are no more; not confined without --cpus.
    assert options.process_cpus == (0,) and controlled.process_cpus == (0,) and full.process_cpus == ()


def test_law_across_runs_probes_no_run_oracle_even_with_quick():
    # A run's own oracle holds the agents at fixed rates, which would restart the law the runs keep.
    options, _ = qos_bench.options_from_args(_args("--runs", "3", "--law-across-runs", "--quick"))
    assert options.law_across_runs and options.run_oracle_probes == 0
    quick, _ = qos_bench.options_from_args(_args("--runs", "3", "--quick"))
    assert not quick.law_across_runs and quick.run_oracle_probes == 1


def test_alternating_runs_ask_the_agents_for_each_arms_law_and_summarize_each_arm():
    options, _ = qos_bench.options_from_args(_args("--runs", "4", "--alternate-tuning", "ab_pool_own_share=true"))
    assert options.alternate_tuning == "ab_pool_own_share=true"
    assert [qos_bench.law_arm(k, options.alternate_tuning) for k in (1, 2, 3)] == [
        ("a", ""), ("b", "ab_pool_own_share=true"), ("a", "")]
    # The result as _snapshot leaves it: each arm's runs, summary and tally, and the lines main prints.
    check = lambda value, met: {"throttled_vs_oracle": {"value": value, "target": ">= 0.8", "met": met,  # noqa: E731
                                                        "issue_target": True}}
    runs = [{"run": k, "law_arm": arm, "throttle_tuning": tuning, "checks": check(value, met)}
            for k, value, met in ((1, 0.6, False), (2, 0.9, True), (3, 0.85, True))
            for arm, tuning in [qos_bench.law_arm(k, options.alternate_tuning)]]
    out = {"arms": qos_bench.arms_of(runs)}
    assert out["arms"]["a"]["runs"] == [1, 3] and out["arms"]["b"]["runs"] == [2]
    assert out["arms"]["b"]["throttle_tuning"] == "ab_pool_own_share=true"
    assert out["arms"]["a"]["tally"]["met_every_goal"] == 1
    assert out["arms"]["b"]["summary"]["throttled_vs_oracle"]["median"] == 0.9
    lines = qos_bench.arm_lines(out)
    assert lines[0].startswith("a: the agents' start config; b: ab_pool_own_share=true")
    assert lines[2].split() == ["throttled_vs_oracle", "0.725", "1/2", "0.9", "1/1"]
    # Without the flag: no arm, no tuning sent, no lines.
    unarmed = [{"run": 1, "checks": check(0.6, False)}]
    assert qos_bench.law_arm(1, None) == (None, None) and qos_bench.arms_of(unarmed) == {}
    assert qos_bench.arm_lines({"runs": runs[:1]}) == []


def _host(speed_met: bool | None, alone_met: bool | None = True, goal_met: bool = True) -> dict:
    """A run's checks: one goal, and the two host checks (None: could not be judged)."""
    def check(met, issue_target):
        return {"value": 1.0, "target": ">= 0.9", "met": met, "issue_target": issue_target}
    return {"throttled_vs_oracle": check(goal_met, True), "seed_speed_vs_calibration": check(speed_met, False),
            "seed_alone_share_above_slo": check(alone_met, False)}


HELD, SLOW, ALONE_OVER, UNJUDGED = _host(True), _host(False), _host(True, False), _host(None, None)


@pytest.mark.parametrize("done, runs, extra, another", [
    ([], 5, 0, True),
    ([HELD] * 4, 5, 0, True),
    ([HELD] * 5, 5, 0, False),
    ([HELD, SLOW, HELD, HELD, HELD], 5, 0, False),         # the flag off: five runs, whatever the host did
    ([HELD] * 5, 5, 2, False),                            # every host held: no extra run
    ([HELD, SLOW, HELD, HELD, HELD], 5, 2, True),          # one replaced ...
    ([HELD, SLOW, HELD, HELD, HELD, HELD], 5, 2, False),   # ... and five held
    ([HELD, SLOW, ALONE_OVER, HELD, HELD, HELD], 5, 2, True),
    ([HELD, SLOW, ALONE_OVER, HELD, HELD, SLOW, HELD], 5, 2, False),   # the extra runs are spent
    ([UNJUDGED] * 5, 5, 2, False),                        # a check that could not be judged is no miss
])
def test_extra_runs_replace_only_runs_where_the_host_missed(done, runs, extra, another):
    assert qos_stats.wants_another_run(done, runs, extra) is another


def test_where_the_host_held_summarizes_the_first_runs_that_held_and_every_run_is_kept():
    runs = [{"run": k, "checks": checks} for k, checks in enumerate(
        [HELD, SLOW, _host(True, True, goal_met=False), ALONE_OVER, HELD, HELD, HELD], start=1)]
    held = qos_stats.where_host_held(runs, 4)
    assert held["runs"] == [1, 3, 5, 6] and held["met_every_goal"] == 3 and not held["every_run_met_every_goal"]
    assert held["summary"]["throttled_vs_oracle"]["runs"] == 4
    # Short of held runs (the deadline came first): what there was.
    assert qos_stats.where_host_held(runs[:4], 4)["runs"] == [1, 3]
    assert qos_stats.where_host_held([{"run": 1, "checks": SLOW}], 1) == {
        "runs": [], "summary": {}, "met_every_goal": 0, "every_run_met_every_goal": False}
    options, _ = qos_bench.options_from_args(_args("--runs", "5", "--extra-runs-where-host-missed", "2",
                                                   "--host-speed-min", "0.8"))
    assert options.extra_runs_where_host_missed == 2 and options.host_speed_min_fraction == 0.8
    # The bound is the result's target, so a kept result is re-judged (bench.qos_rejudge) as it was run.
    targets = qos_bench.targets_of(options)
    assert targets["host_speed_min_fraction"] == 0.8 and qos_bench.TARGETS["host_speed_min_fraction"] == 0.9
    checks = qos_stats.judge_run({"seed_speed_vs_calibration": 0.85}, 0.01, 100e6, None,
                                 **qos_stats.target_arguments(targets))
    assert checks["seed_speed_vs_calibration"]["met"] is True
    assert qos_stats.judge_run({"seed_speed_vs_calibration": 0.85}, 0.01, 100e6, None)[
        "seed_speed_vs_calibration"]["met"] is False
    # Two-sided: the fastest seed too, from the same watch (v36's seeds ran 1.4-1.7x their calibration).
    fast = {"seed_speed_vs_calibration": 1.0, "seed_speed_vs_calibration_per_seed": [1.0, 1.4]}
    assert not qos_stats.host_held(qos_stats.judge_run(fast, 0.01, 100e6, None))
    assert qos_stats.host_held(qos_stats.judge_run(fast, 0.01, 100e6, None, host_speed_max=1.5))
    assert targets["host_speed_max_fraction"] == qos_bench.TARGETS["host_speed_max_fraction"] == 1.25
    assert qos_bench.options_from_args(_args())[0].extra_runs_where_host_missed == 0
    lines: list[str] = []
    qos_bench.print_checks({"runs": runs, "summary": summarize([r["checks"] for r in runs]), "where_host_held": held},
                           say=lines.append)
    assert lines[0] == "where the host held (runs 1, 3, 5, 6): every goal met in 3 of 4; all 7 runs below"


def test_the_control_fleet_runs_on_its_own_device_where_given():
    from bench.qos_plants import get_plant

    same, plant = qos_bench.options_from_args(_args("--control"))
    assert same.control_device is None and same.control_fleet_device == "cpu"
    assert qos_bench._fleet_spec(same, plant, control=True).device == "cpu"
    # As on a host with two GPUs (cuda:1 beside cuda), here with the CPU's names: the control's spec and clients.
    other = replace(same, device="cuda", control_device="cuda:1")
    assert qos_bench._fleet_spec(other, get_plant("gpu-decode"), control=True).device == "cuda:1"
    assert qos_bench._fleet_spec(other, get_plant("gpu-decode")).device == "cuda"
    assert qos_bench._options_dict(other)["control_device"] == "cuda:1"


@pytest.mark.skipif(len(qos_bench.usable_cpus()) < 2, reason="needs two CPUs this process may use")
def test_the_process_runs_on_the_cpus_after_the_seeds():
    a, b = qos_bench.usable_cpus()[:2]
    alone, _ = qos_bench.options_from_args(_args("--seeds", "1", "--cpus", f"{a},{b}"))
    assert alone.seed_cpus == (a,) and alone.process_cpus == (b,)
    # --control, one seed a fleet on two CPUs: a CPU a fleet, the rest of each fleet on its own seed's CPU.
    controlled, _ = qos_bench.options_from_args(_args("--control", "--seeds", "1", "--cpus", f"{a},{b}"))
    assert (controlled.seed_cpus, controlled.control_seed_cpus) == ((a,), (b,))
    assert controlled.process_cpus == tuple(sorted((a, b)))


@pytest.mark.parametrize("argv, says", [
    (["--plant", "spiky"], "unknown plant 'spiky'"),
    (["--runs", "0"], "--runs must be at least 1"),
    (["--extra-runs-where-host-missed", "-1"], "--extra-runs-where-host-missed must be 0 or more runs"),
    (["--host-speed-min", "0"], "--host-speed-min must be a fraction of the calibration's speed > 0"),
    (["--host-speed-min", "nan"], "--host-speed-min must be a fraction of the calibration's speed > 0"),
    (["--host-speed-max", "0.8"], "--host-speed-max must be a fraction of the calibration's speed >= --host-speed-min"),
    (["--host-speed-max", "inf"], "--host-speed-max must be a fraction of the calibration's speed >= --host-speed-min"),
    (["--concurrency", "0"], "--concurrency must be at least 1"),
    (["--oracle-floor-fraction", "0"], "--oracle-floor-fraction must be in (0, 1) of the cap"),
    (["--oracle-probe-seconds", "0"], "--oracle-probe-seconds must be seconds > 0"),
    (["--watch-seconds", "-1"], "--watch-seconds must be seconds > 0"),
    (["--baseline-seconds", "nan"], "--baseline-seconds must be seconds > 0"),
    (["--run-oracle-probes", "-1"], "--run-oracle-probes must be 0 or more"),
    (["--cpus", "0,x"], "--cpus must be CPU numbers"),
    (["--cpus", "100000"], "this process may use CPUs"),
    (["--cap", "0"], "needs a link rate > 0"),
    (["--throttle-tuning", "plan_seconds=-1"], "--throttle-tuning: ControllerConfig.plan_seconds must be"),
    (["--throttle-tuning", "no_such=1"], "--throttle-tuning: 'no_such=1' is not FIELD=VALUE"),
    (["--alternate-tuning", "ab_pool_own_share=true"], "--alternate-tuning alternates runs: give --runs 2 or more"),
    (["--runs", "2", "--alternate-tuning", " "], "--alternate-tuning needs FIELD=VALUE,..."),
    (["--runs", "2", "--alternate-tuning", "ab_pool_own_share=maybe"],
     "--alternate-tuning: ab_pool_own_share='maybe' is not true or false"),
    (["--runs", "2", "--law-across-runs", "--alternate-tuning", "ab_pool_own_share=true"],
     "--law-across-runs keeps one law through the runs; --alternate-tuning switches it every run"),
    (["--law-across-runs", "--run-oracle-probes", "2"], "--law-across-runs: a run's own oracle probes fixed rates"),
    (["--fixed-fraction-of-oracle", "0"], "--fixed-fraction-of-oracle must be a fraction of the oracle's rate > 0"),
    (["--fixed-fraction-of-oracle", "nan"], "--fixed-fraction-of-oracle must be a fraction of the oracle's rate > 0"),
    (["--fixed-fraction-of-oracle", "0.8", "--law-across-runs"],
     "--fixed-fraction-of-oracle holds a fixed rate instead of the law; --law-across-runs is about the law"),
    (["--fixed-fraction-of-oracle", "0.8", "--control"], "; --control is about the law: give one of them"),
    (["--fixed-fraction-of-oracle", "0.8", "--throttle-tuning", "plan_seconds=20"], "; --throttle-tuning is about"),
    (["--control-device", "cpu"], "--control-device is the control fleet's: add --control"),
    (["--control", "--control-device", "cuda:1"], "the control runs the law's plant, on cpu's kind of device"),
    (["--control", "--control-device", "tpu"], "--device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
])
def test_bad_flags_are_one_line(argv, says, capsys):
    assert qos_bench.run(_args(*argv)) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_the_gpu_plant_without_cuda_is_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert qos_bench.run(_args("--plant", "gpu-decode")) == 2
    err = capsys.readouterr().err
    assert "--plant gpu-decode needs --device cuda" in err and len(err.strip().splitlines()) == 1
    assert qos_battery.main(["--out", "unused", "--gpu"]) == 2
    err = capsys.readouterr().err
    assert "--gpu" in err and "CUDA" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, says", [
    (["--plants", "steady,gpu-decode"], "add the GPU one with --gpu"),
    (["--plants", "steady", "--runs", "0"], "--runs must be at least 1"),
    (["--plants", "steady", "--cores-per-plant", "0"], "--cores-per-plant must be at least 1"),
    (["--plants", "steady", "--deadline-seconds", "0"], "--deadline-seconds must be > 0"),
    (["--plants", "steady", "--port-base", "80"], "--port-base must be 1024.."),
    (["--plants", "steady", "--compare", "no_such_field=1"], "--compare: --throttle-tuning: 'no_such_field=1' is not"),
    (["--plants", "steady", "--compare", "plan_seconds=0"], "--compare: --throttle-tuning: "),
    (["--plants", "steady", "--compare", " "], "--compare: give FIELD=VALUE"),
    (["--plants", "steady", "--compare", "plan_seconds=30", "--", "--throttle-tuning", "plan_seconds=5"],
     "do not also pass --throttle-tuning after --"),
    # The flags after -- are read by the bench's own parser: its abbreviations and = forms count too.
    (["--plants", "steady", "--compare", "plan_seconds=30", "--", "--throttle-tun=plan_seconds=5"],
     "do not also pass --throttle-tuning after --"),
    (["--plants", "steady", "--", "--no-such-flag"], "the flags after -- : unrecognized arguments: --no-such-flag"),
    (["--plants", "steady", "--estimate", "--", "--runs"], "the flags after -- : argument --runs: expected one"),
])
def test_battery_bad_flags_are_one_line(argv, says, capsys, tmp_path):
    assert qos_battery.main(["--out", str(tmp_path)] + argv) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


def test_the_battery_fits_its_default_deadline():
    """The battery's per-plant invocation (a 30 s baseline, 5 runs of 15 s watching the seed alone and an 80 s
    throttled phase, 30 s probes) fits the 900 s deadline (the bench's, 5 s under it)."""
    options = qos_bench.QosBenchOptions(throttled_measure_seconds=80.0)
    deadline = qos_battery.build_parser().get_default("deadline_seconds")
    assert qos_bench.estimate_seconds(options, 5) < deadline - 5


@pytest.mark.parametrize("line, mooncake", [
    ("E1202 01:35:23.551600 22325 tcp_transport_session_impl.h:651] ClientSession: READ rejected by server", True),
    ("WARNING: Logging before InitGoogleLogging() is written to STDERR", True),
    ("[steady]   run 1/5: every goal met", False),
    ("Traceback (most recent call last):", False),
])
def test_the_battery_keeps_mooncakes_own_lines_off_the_terminal(line, mooncake):
    assert bool(qos_battery._GLOG_LINE.match(line)) is mooncake


# The seed alone: 10 % of tokens above 25 ms, 1.2 % above 30 ms, 0.6 % above 35 ms, 0.1 % above 40 ms.
BASELINE = ((0.025, 0.03, 0.035, 0.04, math.inf), (9000.0, 9880.0, 9940.0, 9990.0, 10000.0))


@pytest.mark.parametrize("plant, slo", [
    ("steady", 0.035),      # the largest bound <= 1.15 x p99 (34.2 ms) with <= 0.75 % above: 35 ms (1.03x)
    ("near-slo", 0.035),    # the tightest bound with <= 0.9 % above: 35 ms (30 ms has 1.2 %)
])
def test_the_plants_slo_rules(plant, slo):
    from throttle.histogram import WindowHistogram

    got, how = qos_bench.slo_for_plant(WindowHistogram(*BASELINE), 0.01, qos_plants.get_plant(plant))
    assert got == slo and how


def test_near_slo_takes_the_tightest_bound_the_seed_alone_still_meets():
    from throttle.histogram import WindowHistogram

    # Above 25 ms 2 %, 30 ms 0.7 %, 32 ms 0.4 %, 34 ms 0.1 %; p99 28.8 ms, so 1.15 x p99 = 33.2 ms.
    w = WindowHistogram((0.025, 0.03, 0.032, 0.034, math.inf), (9800.0, 9930.0, 9960.0, 9990.0, 10000.0))
    assert qos_bench.slo_for_plant(w, 0.01, qos_plants.get_plant("steady"))[0] == 0.032   # largest <= 33.2 ms
    assert qos_bench.slo_for_plant(w, 0.01, qos_plants.get_plant("near-slo"))[0] == 0.03  # the seed uses 70 %
    # A tighter budget: 30 ms leaves no room under 90 % of 0.5 %; 32 ms (0.4 %) is the tightest left.
    assert qos_bench.slo_for_plant(w, 0.005, qos_plants.get_plant("near-slo"))[0] == 0.032


def test_a_plant_whose_load_changes_gets_an_slo_the_seed_alone_meets_at_every_load():
    from throttle.histogram import WindowHistogram, fraction_above, pool

    b = (0.015, 0.017, 0.019, 0.021, 0.023, math.inf)
    # Light: 1 % over 15 ms, 0.5 % over 17 ms. Heavy (a third of the tokens): 2 % over 17 ms, 1.2 % over 19 ms,
    # 0.6 % over 21 ms.
    light = WindowHistogram(b, (29700.0, 29850.0, 29940.0, 29985.0, 30000.0, 30000.0))
    heavy = WindowHistogram(b, (9700.0, 9800.0, 9880.0, 9940.0, 9990.0, 10000.0))
    plant = qos_plants.get_plant("load-change")
    slo, how = qos_bench.slo_for_loads([light, heavy], 0.01, plant)
    assert slo == 0.021 and "17 ms, 21 ms" in how
    for w in (light, heavy):
        assert fraction_above(w, slo).fraction <= 0.0075
    # What choosing from the loads pooled gives: a bound the heavy load alone is over the budget at.
    pooled, _ = qos_bench.slo_for_plant(pool([light, heavy]), 0.01, plant)
    assert pooled < slo and fraction_above(heavy, pooled).fraction > 0.01


def test_a_baseline_measured_one_load_at_a_time_reports_as_one_phase():
    from throttle.histogram import WindowHistogram, observations

    b = (0.02, math.inf)

    def part(start, n, slow, busy, steal=math.nan):
        w = WindowHistogram(b, (n - slow, n), 0.01 * n)
        return qos_bench.PhaseResult("part", start, start + 10.0, 1000, w, [0.0, 0.0], [w, None], cpu_busy=busy,
                                     cpu_steal=steal, per_seed_ttft=[None, None])

    merged = qos_bench.merge_phases("A baseline", [part(0.0, 1000.0, 10.0, 0.5), part(11.0, 3000.0, 60.0, 0.9)])
    assert merged.name == "A baseline" and (merged.start, merged.end, merged.seconds) == (0.0, 21.0, 20.0)
    assert merged.bytes == 2000 and observations(merged.itl) == 4000.0 and merged.itl.sum == 40.0
    assert merged.per_seed[1] is None and merged.per_seed_ttft == [None, None]
    assert merged.fraction_above(0.02) == 70.0 / 4000.0 and merged.cpu_busy == pytest.approx(0.7)
    assert math.isnan(merged.cpu_steal)  # not measured (off Linux): unknown, not 0
    # Stolen time weighs by seconds like the busy share; a part without it does not count as none stolen.
    stolen = qos_bench.merge_phases("A", [part(0.0, 10.0, 0.0, 0.5, 0.01), part(11.0, 10.0, 0.0, 0.5, 0.04),
                                          part(22.0, 10.0, 0.0, 0.5)])
    assert stolen.cpu_steal == pytest.approx(0.025)
    one = part(0.0, 10.0, 0.0, 0.1)
    assert qos_bench.merge_phases("x", [one]) is one
    assert merged.blocks == []  # parts measured whole keep no windows
    # Parts read in windows: the merged phase holds each seed's windows of every part, in order (the
    # baseline's per-seed interval is computed over them).
    first, second = part(0.0, 1000.0, 10.0, 0.5), part(11.0, 3000.0, 60.0, 0.9)
    first.blocks, second.blocks = [[first.itl], []], [[second.itl], [second.itl]]
    windowed = qos_bench.merge_phases("A baseline", [first, second])
    assert windowed.blocks == [[first.itl, second.itl], [second.itl]]
    assert qos_bench.slow_and_tokens(windowed.blocks[0], 0.02) == [(10.0, 1000.0), (60.0, 3000.0)]


def test_no_bound_leaving_the_transfer_room_is_a_bench_error():
    from throttle.histogram import WindowHistogram

    w = WindowHistogram((0.025, 0.03, math.inf), (5000.0, 8000.0, 10000.0))  # 20 % above every bound
    with pytest.raises(qos_bench.QosBenchError, match="lower the seeds' load"):
        qos_bench.choose_slo(w, 0.01)


def test_the_battery_estimates_without_starting_anything(capsys, tmp_path):
    out = tmp_path / "never-created"
    assert qos_battery.main(["--out", str(out), "--plants", "steady,bursty", "--estimate", "--deadline-seconds",
                             "300", "--throttled-seconds", "10", "--", "--oracle-probes", "4", "--watch-seconds", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["steady", "bursty"]
    assert "2 of 5 runs fit the 300 s deadline" in lines[0] and not out.exists()
    # Where the cap meets the budget the oracle is one probe, not four: ~3 probes of ~36 s sooner.
    whole, at_cap = (float(x) for x in re.findall(r"about (\d+) s", lines[0]))
    assert 80 < whole - at_cap < 130


def _blocks(bounds, per_block):
    """Consecutive windows of one seed: ``per_block`` is [(tokens, [tokens above each finite bound]), ...]."""
    from throttle.histogram import WindowHistogram

    return [WindowHistogram(bounds, tuple(n - a for a in above) + (n,)) for n, above in per_block]


def test_the_slo_rule_holds_every_seed_not_the_seeds_pooled():
    from throttle.histogram import pool

    b = (0.02, 0.025, 0.03, math.inf)
    # Seed 0: 0.2 % over 20 ms in every window. Seed 1: 1.2 % over 20 ms, 0.5 % over 25 ms, 0.1 % over 30 ms.
    seed0 = _blocks(b, [(5000.0, [10.0, 5.0, 0.0])] * 10)
    seed1 = _blocks(b, [(5000.0, [60.0, 25.0, 5.0])] * 10)
    pooled = pool(seed0 + seed1)   # 0.7 % over 20 ms: under 0.75 %, with seed 1 alone over the whole budget
    assert qos_bench.choose_slo(pooled, 0.01, max_ratio=10.0)[0] == 0.03
    assert qos_bench.choose_slo(pooled, 0.01, max_ratio=10.0, tightest=True)[0] == 0.02
    slo, how = qos_bench.choose_slo(pooled, 0.01, max_ratio=10.0, tightest=True, per_seed_blocks=[seed0, seed1])
    assert slo == 0.025 and "every seed alone (10 windows a seed" in how and "0.10%, 0.50%" in how


def test_the_slo_rule_takes_the_upper_end_of_each_seeds_interval():
    from throttle.histogram import pool

    b = (0.02, 0.025, 0.03, math.inf)
    # 0.6 % over 20 ms on average, both seeds alike: steady windows, or on/off windows of 0 % and 1.2 %.
    steady = _blocks(b, [(5000.0, [30.0, 10.0, 0.0])] * 10)
    swinging = _blocks(b, [(5000.0, [0.0, 0.0, 0.0]), (5000.0, [60.0, 20.0, 0.0])] * 5)
    tightest = dict(max_ratio=10.0, tightest=True, max_base_share=0.75)
    assert qos_bench.choose_slo(pool(steady * 2), 0.01, per_seed_blocks=[steady, steady], **tightest)[0] == 0.02
    # Swinging, the same 0.6 % is uncertain (its 95 % interval reaches ~1.0 %): the next bound up, 0.2 %.
    assert qos_bench.seed_alone_high(swinging, 0.02) > 0.0075 > qos_bench.seed_alone_high(swinging, 0.025)
    assert qos_bench.choose_slo(pool(swinging * 2), 0.01, per_seed_blocks=[swinging, swinging], **tightest)[0] == 0.025
    # One window tells nothing: no bound is known to leave room, and the error says what to do.
    with pytest.raises(qos_bench.QosBenchError, match="lengthen the baseline"):
        qos_bench.choose_slo(pool(steady[:1]), 0.01, per_seed_blocks=[steady[:1]], **tightest)


def test_a_load_change_plant_takes_each_loads_blocks():
    from throttle.histogram import pool

    b = (0.02, 0.025, 0.03, math.inf)
    light = _blocks(b, [(5000.0, [20.0, 5.0, 0.0])] * 10)     # 0.4 % over 20 ms
    heavy = _blocks(b, [(5000.0, [100.0, 30.0, 5.0])] * 10)   # 0.6 % over 25 ms, 0.1 % over 30 ms
    plant = qos_plants.get_plant("load-change")
    windows = [pool(light * 2), pool(heavy * 2)]
    slo, how = qos_bench.slo_for_loads(windows, 0.01, plant, [[light, light], [heavy, heavy]])
    assert slo == 0.025 and how.startswith("the highest of each load's own choice (20 ms, 25 ms)")


def test_a_measured_phase_cut_into_windows_adds_up_to_the_whole(monkeypatch):
    from types import SimpleNamespace

    from throttle.histogram import CumulativeHistogram, observations, pool

    bounds = (0.02, math.inf)

    class Scripted(qos_bench.Observer):
        """Scrapes a counter that grows by 100 tokens (1 over 20 ms) a scrape, per seed; records load changes."""

        def __init__(self):
            super().__init__(SimpleNamespace(seeds=[object(), object()]), time.monotonic(), say=lambda line: None)
            self.scrapes, self.events = 0, []

        def scrape(self):
            self.scrapes += 1
            n = 100.0 * self.scrapes
            self.events.append(("scrape", round(self.now(), 2)))
            return [(CumulativeHistogram(bounds, (n - n / 100, n)), None)] * 2

        def set_load(self, load):
            self.events.append(("load", load.concurrency))

    observer = Scripted()
    schedule = [(0.0, qos_plants.Load(concurrency=8)), (0.2, qos_plants.Load(concurrency=16))]
    result = observer.measure("A baseline", 0.4, schedule=schedule, block_seconds=0.1)
    observer.http.close()
    # Scrapes at 0, 0.1, 0.2, 0.3 and 0.4 s; the load changes at 0.2 s, after that second's scrape.
    assert [e[0] for e in observer.events] == ["scrape", "scrape", "scrape", "load", "scrape", "scrape"]
    assert len(result.blocks) == 2 and [len(b) for b in result.blocks] == [4, 4]
    for seed, blocks in enumerate(result.blocks):
        assert [observations(w) for w in blocks] == [100.0] * 4
        assert pool(blocks).cumulative == result.per_seed[seed].cumulative
    # Without block_seconds, nothing more is scraped and no windows are kept.
    assert observer.measure("C", 0.05).blocks == []


@pytest.mark.parametrize("shared, shared_missed, true_oracle, max_probes, probed, oracle", [
    (100.0, None, 150.0, 2, [100.0], 100.0),            # the cap still meets: one probe
    (100.0, None, 30.0, 2, [100.0, 25.0], 25.0),         # the seeds drifted: the midpoint to the floor met
    (100.0, None, 10.0, 2, [100.0, 25.0], None),         # drifted further: two misses, the oracle is under 25
    (100.0, None, 10.0, 4, [100.0, 25.0, 12.5, 8.84], 8.84),
    (100.0, None, 1.0, 5, [100.0, 25.0, 12.5, 8.84, 7.43], None),
    (12.5, 14.9, 20.0, 2, [12.5, 14.9], 14.9),           # eased: the rate that missed before the runs met
    (12.5, 14.9, 13.0, 2, [12.5, 14.9], 12.5),
    (12.5, 14.9, 13.0, 1, [12.5], 12.5),
])
def test_each_run_probes_its_own_oracle_from_the_shared_one(shared, shared_missed, true_oracle, max_probes,
                                                            probed, oracle):
    probes = []
    while (rate := qos_stats.next_run_probe(shared, shared_missed, probes, 6.25, max_probes)) is not None:
        probes.append(Probe(rate, rate <= true_oracle))
    assert [round(p.rate, 2) for p in probes] == probed
    got, _ = oracle_from(probes)
    assert (None if got is None else round(got, 2)) == oracle


def test_the_cpu_times_split_out_what_the_hypervisor_stole():
    now = qos_bench._cpu_times()
    if now is None:
        pytest.skip("no /proc/stat here")
    assert 0 <= now.steal <= now.busy <= now.total
    later = qos_bench.CpuTimes(now.busy + 30, now.total + 100, now.steal + 5)
    assert qos_bench._cpu_share(now, later, "busy") == pytest.approx(0.3)
    assert qos_bench._cpu_share(now, later, "steal") == pytest.approx(0.05)
    assert math.isnan(qos_bench._cpu_share(now, now, "steal")) and math.isnan(qos_bench._cpu_share(None, later, "steal"))


class _ScriptedObserver:
    """Stands in for ``Observer``: records what it was told, and measures by sleeping."""

    def __init__(self, fail: bool = False, late_seconds: float = 0.0):
        self.told: list[tuple] = []
        self.phase = self.slo = None
        self.tail_bounds = ()
        self.fail = fail
        self.late_seconds = late_seconds  # how late its measure gets going (a thread scheduled late)

    def now(self):
        import time

        return time.monotonic()

    def set_load(self, load):
        self.told.append(("load", load))

    def put_throttle(self, **body):
        self.told.append(("throttle", body))

    def measure(self, name, seconds, schedule=None, block_seconds=None, start_at=None):
        import time

        time.sleep(self.late_seconds)
        if start_at is not None:
            time.sleep(max(start_at - time.monotonic(), 0.0))
        start = time.monotonic()
        time.sleep(max((start if start_at is None else start_at) + seconds - time.monotonic(), 0.0))
        if self.fail:
            raise RuntimeError("the seeds stopped answering")
        return qos_bench.PhaseResult(name, start, time.monotonic(), 0, None, [])

    def landed(self):
        return 42


def test_a_controlled_observer_drives_both_fleets_as_one_but_the_law():
    law, control = _ScriptedObserver(), _ScriptedObserver()
    both = qos_bench.ControlledObserver(law, control)
    both.set_load("64 in flight")
    both.phase, both.slo, both.tail_bounds = "baseline", 0.02, (0.015, 0.02)
    assert (control.phase, control.slo, control.tail_bounds) == ("baseline", 0.02, (0.015, 0.02)) == (
        law.phase, law.slo, law.tail_bounds)
    both.put_throttle(mode="adaptive", slo_itl_seconds=0.02)  # no control rate yet: mirrored
    both.control_throttle = {"mode": "fixed", "rate_bytes_per_second": 40e6}
    both.put_throttle(mode="fixed", rate_bytes_per_second=0.0)
    both.put_throttle(mode="adaptive", slo_itl_seconds=0.02)
    both.put_throttle(mode="off")
    assert law.told == [("load", "64 in flight"), ("throttle", {"mode": "adaptive", "slo_itl_seconds": 0.02}),
                        ("throttle", {"mode": "fixed", "rate_bytes_per_second": 0.0}),
                        ("throttle", {"mode": "adaptive", "slo_itl_seconds": 0.02}), ("throttle", {"mode": "off"})]
    assert control.told == law.told[:3] + [("throttle", {"mode": "fixed", "rate_bytes_per_second": 40e6}),
                                           ("throttle", {"mode": "off"})]
    assert both.landed() == 42 and both.control_throttle["rate_bytes_per_second"] == 40e6
    # A phase is measured on both over the same seconds (the control's in a thread), kept by its name.
    phase = both.measure("C throttled (run 1)", 0.3)
    twin = both.control_phases["C throttled (run 1)"]
    assert twin.name == phase.name and abs(twin.start - phase.start) < 0.1 and abs(twin.end - phase.end) < 0.1


def test_a_control_fleet_measured_late_still_ends_its_phase_with_the_law_fleets():
    # Both phases are timed from one start instant, so a control thread that got going 0.2 s late (a
    # loaded machine) loses those 0.2 s at the start only; it does not run 0.2 s past the law's end.
    both = qos_bench.ControlledObserver(_ScriptedObserver(), _ScriptedObserver(late_seconds=0.2))
    phase = both.measure("C throttled (run 1)", 0.4)
    twin = both.control_phases["C throttled (run 1)"]
    assert twin.start - phase.start > 0.1 and abs(twin.end - phase.end) < 0.1


def test_a_control_fleet_that_fails_to_measure_fails_the_phase_with_its_reason():
    both = qos_bench.ControlledObserver(_ScriptedObserver(), _ScriptedObserver(fail=True))
    with pytest.raises(qos_bench.QosBenchError, match="control fleet's 'C throttled' failed: the seeds stopped"):
        both.measure("C throttled", 0.05)


@pytest.mark.parametrize("control, throughput_check, share_check", [
    (None, None, None),  # no control fleet: no control checks
    ({"share_above_slo": 0.006, "met_budget": True, "throughput_bytes_per_second": 100e6}, (0.9, True), True),
    ({"share_above_slo": 0.004, "met_budget": True, "throughput_bytes_per_second": 200e6}, (0.45, False), True),
    # The control's rate missed the budget in these seconds: it was over their oracle, the law is not read
    # against it.
    ({"share_above_slo": 0.013, "met_budget": False, "throughput_bytes_per_second": 200e6}, (None, None), False),
])
def test_a_run_is_read_beside_its_control_as_context(control, throughput_check, share_check):
    from bench.qos_stats import judge_run

    run = {"throttled_share_above_slo": 0.008, "throughput_throttled_bytes_per_second": 90e6,
           "spike_cut_seconds": 0.5, "idle_to_cap_seconds": 1.0, "control": control}
    checks = judge_run(run, 0.01, 100e6, 100e6)
    if control is None:
        assert "control_share_above_slo" not in checks and "throttled_vs_control" not in checks
        return
    assert (checks["throttled_vs_control"]["value"], checks["throttled_vs_control"]["met"]) == throughput_check
    assert checks["control_share_above_slo"]["met"] is share_check
    assert not checks["throttled_vs_control"]["issue_target"] and not checks["control_share_above_slo"]["issue_target"]


@pytest.mark.parametrize("law_share, control, bar_value, met_vs_control", [
    # (the law's share, the control's (share, met budget, MB/s)) -> law share less max(budget, control's share),
    # whether the run met every goal read against the control (the law moved 90 MB/s)
    (0.008, (0.006, True, 100e6), -0.002, True),
    (0.008, (0.004, True, 200e6), -0.002, False),     # 0.45x the control's throughput where it met the budget
    (0.012, (0.006, True, 100e6), 0.002, False),      # over the budget where the oracle's rate met it
    (0.012, (0.015, False, 200e6), -0.003, True),     # the oracle's rate missed worse: not read for throughput
    (0.016, (0.015, False, 40e6), 0.001, False),      # both missed, the law more
    (None, (0.006, True, 100e6), None, True),         # no share measured: nothing to judge
])
def test_a_run_is_judged_against_what_the_control_did_in_the_same_seconds(law_share, control, bar_value,
                                                                          met_vs_control):
    share, met_budget, throughput = control
    run = {"throttled_share_above_slo": law_share, "throughput_throttled_bytes_per_second": 90e6,
           "spike_cut_seconds": 0.5, "idle_to_cap_seconds": 1.0,
           "control": {"share_above_slo": share, "met_budget": met_budget, "throughput_bytes_per_second": throughput}}
    checks = qos_stats.judge_run(run, 0.01, 100e6, 100e6)
    value = checks["throttled_share_vs_control"]["value"]
    assert value == bar_value if bar_value is None else value == pytest.approx(bar_value)
    assert not checks["throttled_share_vs_control"]["issue_target"]
    assert qos_stats.met_where_the_control_met(checks) is met_vs_control
    # The spike and idle goals are the law's alone: a miss there is a miss against the control too.
    slow_cut = qos_stats.judge_run({**run, "spike_cut_seconds": 1.5}, 0.01, 100e6, 100e6)
    assert qos_stats.met_where_the_control_met(slow_cut) is False
    assert qos_stats.tally([checks, slow_cut])["with_control"] == 2
    assert qos_stats.tally([checks, slow_cut])["met_where_the_control_met"] == int(met_vs_control)


def test_a_run_without_a_control_is_not_counted_against_one():
    checks = qos_stats.judge_run({**RUN, "control": None}, 0.01, 100e6, 100e6)
    assert qos_stats.met_where_the_control_met(checks) is None
    assert qos_stats.tally([checks])["with_control"] == 0


def test_rejudge_reads_kept_results_and_names_verdicts_that_changed(tmp_path, capsys):
    import gzip
    import json

    run = {**RUN, "run": 1, "throttled_share_above_slo": 0.012, "oracle_bytes_per_second": 100e6,
           "control": {"share_above_slo": 0.014, "met_budget": False, "throughput_bytes_per_second": 80e6},
           # Kept from a judge that read the share as met: the rejudge must say so, not apply it silently.
           "checks": {"throttled_share_above_slo": {"met": True}}}
    result = {"plant": {"name": "gpu-decode"}, "slo_budget": 0.01, "cap_bytes_per_second": 100e6, "runs": [run]}
    path = tmp_path / "qos-gpu-decode.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(result, f)
    assert qos_rejudge.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "(gpu-decode, 1 runs)" in out
    assert "run 1: MISSED throttled_share_above_slo; against the control: met (share 0.20% under its bar)" in out
    assert '"met_where_the_control_met": 1' in out
    assert "verdicts that differ from the kept ones: run 1: throttled_share_above_slo" in out
    assert "layout:" not in out   # no CPU lists kept: nothing to say


@pytest.mark.parametrize("options, says", [
    # v22's GPU plant: both fleets' seeds on its 4 CPUs, the agents and fork clients on all of them.
    ({"seed_cpus": [12, 13], "control_seed_cpus": [14, 15], "process_cpus": [12, 13, 14, 15]},
     "  layout: the agents, scheduler and fork clients share the seeds' CPUs 12, 13, 14, 15: give the bench more --cpus"),
    ({"seed_cpus": [0, 1], "control_seed_cpus": [3, 4], "process_cpus": [2, 5]}, None),   # its CPU plants
    ({"seed_cpus": [0, 1], "process_cpus": [0, 1]}, "share the seeds' CPUs 0, 1"),       # no control, 2 CPUs
])
def test_rejudge_says_where_the_agents_ran_on_the_seeds_cpus(tmp_path, capsys, options, says):
    import json

    result = {"options": options, "plant": {"name": "gpu-decode"}, "slo_budget": 0.01, "cap_bytes_per_second": 100e6,
              "runs": [{**RUN, "run": 1, "oracle_bytes_per_second": 100e6}]}
    path = tmp_path / "qos.json"
    path.write_text(json.dumps(result))
    assert qos_rejudge.main([str(path)]) == 0
    out = capsys.readouterr().out
    if says is None:
        assert "layout:" not in out
    else:
        assert says in out and out.count("layout:") == 1


@pytest.mark.parametrize("content, message", [
    ("[1]", "a JSON list, not a `rfork bench qos --json` result"),
    ("{}", "no slo_budget, cap_bytes_per_second, runs: not a `rfork bench qos --json` result"),
    ('{"slo_budget": 0.01, "runs": []}', "no cap_bytes_per_second"),
    ("not json", "Expecting value"),
])
def test_rejudge_of_what_is_not_a_result_is_one_line_and_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert qos_rejudge.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("python -m bench.qos_rejudge: ")
    assert qos_rejudge.main([str(tmp_path / "missing.json")]) == 2


# --------------------------------------------------------------------------- the battery's CPUs


@pytest.mark.parametrize("siblings_of, expected", [
    # No SMT: nothing shared.
    (lambda c: {c}, []),
    # Threads 8 apart share a core (a common x86 numbering): steady 0-2, bursty 3-5, near-slo 6-8, gpu-decode 9-15.
    (lambda c: {c, (c + 8) % 16}, [
        "CPUs of steady and near-slo share cores (0/8): each plant's load moves the other's seeds' speed",
        "CPUs of steady and gpu-decode share cores (1/9, 2/10): each plant's load moves the other's seeds' speed",
        "CPUs of bursty and gpu-decode share cores (3/11, 4/12, 5/13): each plant's load moves the other's seeds' speed",
        "CPUs of near-slo and gpu-decode share cores (6/14, 7/15): each plant's load moves the other's seeds' speed",
    ]),
])
def test_the_battery_warns_where_plants_share_cores(siblings_of, expected):
    cores, _ = qos_battery.assign_cores(list(range(16)), ["steady", "bursty", "near-slo"], 3, "gpu-decode")
    siblings = {c: frozenset(siblings_of(c)) for c in range(16)}
    assert qos_battery.shared_core_warnings(cores, siblings) == expected
