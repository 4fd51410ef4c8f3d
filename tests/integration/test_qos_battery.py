"""`python -m bench.qos_battery` end to end, in miniature: one plant, one run, the real fleet and agents,
in both arms of ``--compare`` (the plant as the agents default to, and ``steady-b`` with another tuning),
each with its control fleet (``-- --control``).

What is checked is the mechanics (the files, the JSON layout, an oracle probed and shared by the runs,
per-run checks and their min/median/max, the A/B table), not the goals: on a busy 2-core machine they are
not meaningful. Several runs are summarized by the same code (tests/unit/test_qos_bench_stats.py covers
``summarize``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.qos_battery import GOALS
from bench.qos_bench import RUN_FIELDS_AT_TOP, law_identity
from bench.qos_stats import cpu_layout_warning
from bench.qos_tally import kept_runs, tally

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def test_a_miniature_battery_writes_every_file_with_a_run_summary_and_an_oracle(tmp_path, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("battery-tmpdir")  # its TMPDIR: where the plants' logs go while it runs
    argv = [sys.executable, "-m", "bench.qos_battery", "--plants", "steady", "--runs", "1", "--out", str(tmp_path),
            "--cores-per-plant", "2", "--quick", "--deadline-seconds", "200", "--compare", "plan_seconds=30",
            "--", "--seeds", "1", "--concurrency", "8", "--oracle-probes", "2", "--oracle-probe-seconds", "2",
            "--throttled-seconds", "2", "--control"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=280,
                          env=dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=str(scratch)))
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]  # 1: a goal missed, expected here
    assert list(scratch.iterdir()) == []  # every plant ran through: no logs left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "qos-battery-series.png", "qos-battery.json", "qos-battery.png", "qos-steady-b.json", "qos-steady.json"
    ], done.stdout[-3000:]
    assert "[steady]   C throttled (run 1)" in done.stdout and "[steady-b]   C throttled (run 1)" in done.stdout
    assert "== qos battery: 2 plants x 1 runs" in done.stdout
    assert "== a: as the agents default; b: --throttle-tuning plan_seconds=30 ==" in done.stdout

    result = json.loads((tmp_path / "qos-steady.json").read_text())
    assert result["plant"]["name"] == "steady" and result["runs_completed"] == 1 and len(result["runs"]) == 1
    # The law each arm's agents ran, for bench.qos_tally to pool kept runs by: this checkout's, and b's tuning,
    # which restates a default (plan_seconds 30): the same law, the same fingerprint.
    arm_b = json.loads((tmp_path / "qos-steady-b.json").read_text())
    assert result["law"] == law_identity(None) and arm_b["law"] == law_identity("plan_seconds=30")
    assert arm_b["law"]["throttle_tuning"] == "plan_seconds=30"
    assert arm_b["law"]["fingerprint"] == result["law"]["fingerprint"]
    pooled = [kept_runs(str(tmp_path / name), json.loads((tmp_path / name).read_text()))
              for name in ("qos-steady.json", "qos-steady-b.json")]
    law = result["law"]["fingerprint"]
    assert [(t.law, t.plant, t.runs) for t in tally(pooled)] == [(law, "steady", 2)]   # b's plant is steady too
    # Where the CPUs were too few for the layout (on 2 CPUs, wrapped to the four a plant and its control get, the
    # two fleets' seeds share one), the result and the log say so.
    options = result["options"]
    layout = cpu_layout_warning(options["seed_cpus"], options["control_seed_cpus"], options["process_cpus"])
    assert result.get("cpu_layout_warning") == layout
    if len(os.sched_getaffinity(0)) < 4:
        shared = options["seed_cpus"][0]
        assert layout == f"the law's and the control's seeds share CPU {shared}: give the bench more --cpus"
    if layout:
        assert f"[steady] warning: {layout}" in done.stdout
    # One run's fields at the top, as before --runs: run 1's.
    assert set(RUN_FIELDS_AT_TOP) <= set(result) and result["checks"] == result["runs"][0]["checks"]
    oracle = result["oracle"]
    # The cap first; a second probe only if the cap missed the budget.
    assert oracle["shared_by_runs"] is True and 1 <= len(oracle["probes"]) <= 2 and oracle["probe_seconds"] == 2
    assert oracle["probes"][0]["rate_per_seed_bytes_per_second"] == result["cap_bytes_per_second"]
    assert (len(oracle["probes"]) == 1) == oracle["probes"][0]["met_slo"]
    # The forks were moving when the probe began: it waits for them to land bytes again after the drain.
    # A probe that moved next to nothing (2 s is about three forks of the 64 MiB model) is measured again.
    assert oracle["probes"][0]["delivered_fraction"] > 0.1 and oracle["probes"][0]["resumed_after_seconds"] > 0
    assert 1 <= oracle["probes"][0]["attempts"] <= 3
    # The seeds' speed in each probe against the calibration (a plant of one load), as the log says.
    for probe in oracle["probes"]:
        (probe_speed,) = probe["seed_speed_vs_calibration_per_seed"]
        assert probe_speed > 0
    assert "x their calibration's tokens/s in this probe (the transfer's cost included)" in done.stdout
    share = oracle["probes"][0]["share_above_slo_per_seed"][0]
    assert share["ci95"][0] <= share["share"] <= share["ci95"][1] and share["tokens"] > 0
    for run in result["runs"]:
        assert set(GOALS) <= set(run["checks"])
        # The shared oracle probed again beside the run (--quick: one probe), and the run judged against it.
        assert run["shared_oracle_bytes_per_second"] == result["oracle_bytes_per_second"]
        assert "throttled_vs_shared_oracle" in run["checks"]
        # The host's speed before the run against the calibration: the slowest seed's tokens/s ratio.
        (speed,) = run["seed_speed_vs_calibration_per_seed"]
        assert speed > 0 and run["seed_speed_vs_calibration"] == speed
        assert run["checks"]["seed_speed_vs_calibration"]["issue_target"] is False
        # The share of CPU time the hypervisor stole during the throttled phase, read from /proc/stat.
        assert 0 <= run["host_steal_share"] <= 1 and run["host_steal_share"] == run["cpu_steal_share"]["throttled"]
        if oracle["rate_per_seed_bytes_per_second"] is None:
            assert run["run_oracle"] is None and run["oracle_bytes_per_second"] is None
        else:
            (probe,) = run["run_oracle"]["probes"]
            assert probe["rate_per_seed_bytes_per_second"] == oracle["rate_per_seed_bytes_per_second"]
            assert run["run_oracle"]["shared_oracle_met"] is probe["met_slo"]
            assert run["oracle_bytes_per_second"] == (probe["throughput_bytes_per_second"] if probe["met_slo"] else None)
            assert any(s["phase"] == "oracle-1" for s in result["time_series"])
        assert run["throttled_tokens_per_second_per_seed"][0] > 50  # the closed loop decodes its batch of 8
        # The control fleet (--control): the law fleet's SLO, its oracle's rate, the same seconds.
        start, end = run["phases"]["C throttled (run 1)"]
        control = run["control"]
        assert control["slo_itl_seconds"] == run["slo_itl_seconds"] == result["slo_itl_seconds"]
        assert control["rate_per_seed_bytes_per_second"] == (oracle["rate_per_seed_bytes_per_second"] or 0.0)
        # Both phases are timed from one start instant; what is left between them is how late each thread
        # woke, scheduling jitter on a loaded machine (not a share of the phase: --quick's is 2 s).
        assert control["overlap_seconds"] >= (end - start) - 0.3 and control["phase"][0] < start + 0.3
        # Its agents held that fixed rate through the phase while the law fleet's ran the law.
        held = [s for s in result["control"]["time_series"] if start <= s["t"] <= end]
        assert held and all(s["modes"] == ["fixed"] and s["rates"] == [control["rate_per_seed_bytes_per_second"]]
                            for s in held)
        assert all(s["modes"] != ["fixed"] for s in result["time_series"] if start <= s["t"] <= end)
        assert control["share_above_slo"] is not None and control["met_budget"] == (control["share_above_slo"] <= 0.01)
        assert run["checks"]["control_share_above_slo"]["issue_target"] is False
        assert run["checks"]["throttled_vs_control"]["issue_target"] is False
        bar = run["checks"]["throttled_share_vs_control"]
        assert bar["issue_target"] is False and bar["value"] == pytest.approx(
            run["throttled_share_above_slo"] - max(0.01, control["share_above_slo"]))
        # The seed alone as its agent measured it: the last reading within the throttled phase.
        readings = [s["seed_alone_shares"][0] for s in result["time_series"]
                    if start <= s["t"] <= end + 0.1 and s["seed_alone_shares"][0] is not None]
        assert run["throttled_seed_alone_share_per_seed"] == [readings[-1] if readings else None]
        alone_check = run["checks"]["seed_alone_share_above_slo"]
        assert alone_check["value"] == run["throttled_seed_alone_share_per_seed"][0] and not alone_check["issue_target"]
    summary = result["summary"]["throttled_share_above_slo"]
    assert summary["runs"] == 1 and summary["min"] == summary["median"] == summary["max"]
    assert result["time_series"] and result["slo_itl_seconds"] > 0
    # The agent reads the seed alone in its seconds without chunk reads (the baseline's, at least).
    alone = [s["seed_alone_shares"][0] for s in result["time_series"] if s["seed_alone_shares"][0] is not None]
    assert alone and all(0 <= x <= 1 for x in alone)
    # Every second once the SLO is chosen: each seed's mean ITL and its tokens above the tail bounds
    # (half the SLO up to it), which bench.qos_signal reads.
    bounds = result["itl_tail_bounds_seconds"]
    assert bounds and max(bounds) <= result["slo_itl_seconds"] and min(bounds) >= result["slo_itl_seconds"] / 2
    tailed = [s for s in result["time_series"] if s["itl_tokens_above"][0] is not None and s["itl_tokens"][0] > 0]
    assert tailed and all(len(s["itl_tokens_above"][0]) == len(bounds) and s["itl_mean_seconds"][0] > 0
                          and s["itl_tokens_above"][0][0] <= s["itl_tokens"][0] for s in tailed)

    # The b arm: the same plant, its agents told the tuning, run beside arm a on the same host.
    b = json.loads((tmp_path / "qos-steady-b.json").read_text())
    assert b["plant"]["name"] == "steady" and b["runs_completed"] == 1
    assert b["options"]["throttle_tuning"] == "plan_seconds=30" and not result["options"].get("throttle_tuning")

    battery = json.loads((tmp_path / "qos-battery.json").read_text())
    assert battery["battery"]["compare"] == "plan_seconds=30"
    assert [row.split()[:2] for row in battery["compare_table"][1:3]] == [
        ["steady", "throttled_share_above_slo"], ["steady", "throttled_vs_oracle"]]
    assert done.returncode == max(battery["plants"][arm]["exit_code"] for arm in ("steady", "steady-b"))
    assert battery["plants"]["steady"]["summary"] == result["summary"]
    assert any(row.startswith("steady") for row in battery["table"])
    assert any(row.split()[1] == "control_share_above_slo" and row.endswith("(control)") for row in battery["table"])
    # The runs that met every goal, over all and where the host held (context: seed speed, the seeds alone).
    assert result["tally"]["runs"] == 1 and battery["plants"]["steady"]["tally"] == result["tally"]
    assert "runs that met every goal: " in done.stdout
    # Read against the control fleet too (every goal, the share and throughput against the oracle's rate).
    assert result["tally"]["with_control"] == 1
    assert "against the oracle's rate in the same seconds (--control: " in done.stdout
    assert battery["plants"]["steady"]["signal_table"][0].startswith("| seed | rate MB/s |")
    assert any("C throttled (run 1)" in line for line in battery["plants"]["steady"]["output"])
