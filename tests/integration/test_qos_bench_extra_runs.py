"""`python -m bench.qos_bench --extra-runs-where-host-missed` end to end, in miniature. With `--host-speed-max`
far under any speed a seed reaches (every seed "faster" than its calibration allows), every run's host misses:
the one run asked for is followed by the one extra run allowed, both are in the result, and none is summarized
as a run where the host held."""

from __future__ import annotations

import pytest

from bench.qos_stats import host_held
from tests.integration.quick_qos_bench import quick_qos_bench

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def test_a_run_where_the_host_missed_is_reported_and_followed_by_another(tmp_path):
    stdout, result = quick_qos_bench(tmp_path, "--runs", "1", "--extra-runs-where-host-missed", "1",
                                     "--host-speed-min", "0.001", "--host-speed-max", "0.01")
    assert result["options"]["extra_runs_where_host_missed"] == 1
    assert result["targets"]["host_speed_min_fraction"] == 0.001
    assert result["targets"]["host_speed_max_fraction"] == 0.01
    runs = result["runs"]
    assert [r["run"] for r in runs] == [1, 2]
    assert all(r["checks"]["seed_fastest_speed_vs_calibration"] == {
        "value": max(r["seed_speed_vs_calibration_per_seed"]), "target": "<= 0.01", "met": False,
        "issue_target": False} and r["checks"]["seed_speed_vs_calibration"]["met"] for r in runs)
    assert not any(host_held(r["checks"]) for r in runs)
    assert "run 1/1: " in stdout and "(the host missed: seed_fastest_speed_vs_calibration" in stdout
    assert "run 2: an extra run, the host missed in 1 of 1 (--extra-runs-where-host-missed)" in stdout
    assert result["tally"]["runs"] == 2 and result["tally"]["host_held"] == 0
    assert result["where_host_held"] == {"runs": [], "summary": {}, "met_every_goal": 0,
                                         "every_run_met_every_goal": False}
    assert "the host held in none of the 2 runs" in stdout
    # The extra runs are spent: no third.
    assert "runs_skipped" not in result
