"""`rfork simulate` (#15): the fleet simulator driven by the real planner and swarm, at small N.

Every run here uses the real ``scheduler.planner`` and ``scheduler.swarm`` on a
small model (the testbed's qwen2.5-0.5b shapes, 16 MiB chunks: 60 chunks), so
each takes a second or two; the CLI runs in-process through ``rfork``'s entry point.
"""

from __future__ import annotations

import json

import pytest

from rfork_agent import cli
from sim.engine import SimulationTooLarge, check_fits, simulate
from sim.scenario import Faults, Scenario, ScenarioError
from sim.validate import scenario_from_testbed, simulate_testbed

SMALL = dict(model="qwen2.5-0.5b", chunk_size=16 * 2**20, seed_egress=1e9, instance_ingress=1e9,
             instance_egress=1e9)
"""About 1 GB over 1 GB/s links: a fork takes about a second, long next to the control plane's latency."""


def small(**fields) -> Scenario:
    return Scenario(**{**SMALL, **fields})


# -- bad input -----------------------------------------------------------------
@pytest.mark.parametrize("fields, says", [
    ({"model": "gpt-17"}, "unknown model preset 'gpt-17'"),
    ({"seed_egress": "-5GB/s"}, "negative"),
    ({"instance_ingress": 0}, "instance_ingress must be a finite number > 0"),
    ({"instances": 0}, "instances must be an integer >= 1, got 0"),
    ({"instancs": 8}, "unknown scenario field(s) instancs"),
    ({"strategy": "gossip"}, "strategy must be one of direct, cascade, swarm"),
    ({"seeds": 2, "faults": {"kill_seeds": 2}}, "must leave at least one of the 2 seeds alive"),
    ({"faults": {"kill_peer": 0.1}}, "unknown faults field(s) kill_peer"),
])
def test_bad_scenarios_are_refused_naming_the_field(fields, says):
    with pytest.raises(ScenarioError) as err:
        Scenario.from_mapping(fields)
    assert says in str(err.value)


def test_a_simulation_too_large_for_memory_is_refused_before_it_starts():
    check_fits(small(instances=1024))  # fits
    with pytest.raises(SimulationTooLarge) as err:
        check_fits(small(instances=1024), available_bytes=10 * 2**20)
    assert "1024 instances x 90 chunks" in str(err.value) and "--chunk-size" in str(err.value)


# -- what a scale-out does ---------------------------------------------------------
def test_direct_reads_n_copies_from_the_seeds():
    r = simulate(small(instances=4, strategy="direct"))
    assert r.instances_completed == 4 and r.seed_bytes_served == 4 * r.model_bytes_per_instance
    assert r.peer_bytes_served == 0
    assert r.time_to_all_seconds == pytest.approx(4 * r.single_fork_seconds, rel=0.1)  # the seed's NIC, shared


def test_a_swarm_takes_about_one_copy_from_the_seeds_and_finishes_near_one_forks_time():
    r = simulate(small(instances=8, strategy="swarm"))
    assert r.instances_completed == 8 and not r.failures
    assert r.seed_bytes_served <= 1.5 * r.model_bytes_per_instance
    assert r.time_to_all_seconds <= 2 * r.single_fork_seconds


def test_cascade_doubles_the_sources_each_round():
    r = simulate(small(instances=7, strategy="cascade"))  # 1 seed -> 2 -> 4 -> 8 sources: three rounds
    assert r.instances_completed == 7
    assert r.time_to_all_seconds == pytest.approx(3 * r.single_fork_seconds, rel=0.15)
    assert r.seed_bytes_served == 3 * r.model_bytes_per_instance  # the seed copies once per round


@pytest.mark.parametrize("strategy", ["swarm", "cascade", "direct"])
def test_killed_seeds_and_peers_leave_every_survivor_complete(strategy):
    r = simulate(small(instances=8, seeds=3, strategy=strategy,
                       faults=Faults(kill_seeds=2, kill_peers_fraction=0.25, window_seconds=0.2)))
    assert r.instances_killed >= 1
    assert r.instances_completed + r.instances_killed == 8 and r.instances_failed == 0, r.failures
    assert r.time_to_all_seconds < float("inf")


def test_scheduler_shards_split_the_cpu_and_each_reads_from_the_seeds():
    one = simulate(small(instances=8), with_single_fork=False)
    two = simulate(small(instances=8, scheduler_shards=2), with_single_fork=False)
    assert two.instances_completed == 8
    assert two.seed_bytes_served > 1.5 * two.model_bytes_per_instance  # each shard's swarm takes its own copy
    assert len(two.scheduler_cpu_seconds_by_shard) == 2 and one.scheduler_cpu_seconds > 0


CPU_FIELDS = ("cpu_seconds", "cpu_seconds_all_processes", "cpu_share", "cpu_per_work_call_seconds")


def decisions(result) -> dict:
    """A run's JSON less what the scheduler's CPU took (measured, so never the same twice)."""
    out = result.to_json()
    out.pop("scheduler_cpu_share")
    for name in CPU_FIELDS:
        out["scheduler"].pop(name)
    return out


@pytest.mark.parametrize("fields", [
    dict(instances=8, strategy="swarm"),
    dict(instances=8, strategy="swarm", merge_seconds=0.4, client_max_in_flight=2),
    dict(instances=8, seeds=3, strategy="swarm", faults=Faults(kill_seeds=1, kill_peers_fraction=0.25,
                                                                window_seconds=0.5)),
], ids=["swarm", "merged", "faults"])
def test_a_fixed_seed_gives_the_same_scale_out_every_run(fields):
    """The same scenario and random seed make the same decisions, run after run: simultaneous
    transfers end in a fixed order (links kept flows in sets of objects hashed by address, so
    equal completion times were broken by memory layout), and nothing the planner caches is
    keyed on an address. It is what lets a faster planner be checked decision for decision."""
    runs = [decisions(simulate(small(**fields), with_single_fork=False)) for _ in range(3)]
    assert runs[0]["instances_completed"] + runs[0]["instances_killed"] == 8
    assert runs[1] == runs[0] and runs[2] == runs[0]


# -- the command -------------------------------------------------------------------
def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = cli.main(argv)
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("argv, says", [
    (["--instances", "0"], "--instances must be >= 1, got 0"),
    (["--instances", "many"], "--instances must be a whole number, got 'many'"),
    (["--model", "gpt-17"], "unknown model preset 'gpt-17'"),
    (["--link-rate=-5GB/s"], "--link-rate: "),
    (["--seed-rate", "2Gb/s"], "ambiguous"),
    (["--chunk-size", "64Mbit"], "unknown unit"),
    (["--strategy", "gossip"], "strategy must be one of"),
    (["--scenario", "/nonexistent/scenario.yaml"], "cannot read --scenario"),
    (["--instances", "10000000", "--model", "deepseek-v3"], "needs about"),
    (["sweep", "--strategies", "direct,gossip"], "unknown strategy 'gossip'"),
    (["sweep", "--strategy", "swarm"], "sweep takes --strategies"),
    (["validate"], "validate needs the testbed's JSON"),
    (["explode"], "unknown action 'explode'"),
    (["faults", "--instances", "8"], "faults needs kills to draw"),
    (["faults", "--kill-peers", "0.1", "--draws", "0"], "--draws must be >= 1, got 0"),
    (["faults", "--kill-peers", "0.1", "--growth-goal=-1"], "--growth-goal must be >= 0"),
    (["faults", "--kill-peers", "0.1", "--plot", "x.png"], "faults writes no plot"),
])
def test_bad_flags_are_one_line_and_exit_2(argv, says, capsys):
    rc, _, err = run(["simulate", *argv], capsys)
    assert rc == 2 and "Traceback" not in err and says in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_a_scenario_file_with_an_unknown_field_is_one_line(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("model: qwen2.5-0.5b\ninstances: 4\nwarp_drive: true\n")
    rc, _, err = run(["simulate", "--scenario", str(path)], capsys)
    assert rc == 2 and "unknown scenario field(s) warp_drive" in err and len(err.strip().splitlines()) == 1


def test_run_writes_the_json_fields_and_a_plot(tmp_path, capsys):
    scenario = tmp_path / "s.yaml"
    scenario.write_text("model: qwen2.5-0.5b\nchunk_size: 16MiB\nseed_egress: 1GB/s\n")
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    rc, stdout, err = run(["simulate", "--scenario", str(scenario), "--instances", "4", "--link-rate", "1GB/s",
                           "--json", str(out), "--plot", str(png)], capsys)
    assert rc == 0, err
    r = json.loads(out.read_text())
    for field in ("time_to_all_seconds", "single_fork_seconds", "seed_bytes_served", "model_bytes_per_instance",
                  "instances_completed", "scheduler_cpu_share", "completion_seconds", "peer_bytes_served"):
        assert field in r, field
    assert r["instances_completed"] == 4 and r["scenario"]["model"] == "qwen2.5-0.5b"
    assert {"assignments_per_second", "work_calls_per_second", "cpu_per_work_call_seconds"} <= set(r["scheduler"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "swarm qwen2.5-0.5b N=4" in stdout


def test_sweep_runs_every_strategy_at_every_n(tmp_path, capsys):
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    rc, _, err = run(["simulate", "sweep", "--model", "qwen2.5-0.5b", "--chunk-size", "16MiB", "--link-rate", "1GB/s", "--instances", "1,4",
                      "--json", str(out), "--plot", str(png)], capsys)
    assert rc == 0, err
    sweep = json.loads(out.read_text())
    points = sorted((r["scenario"]["strategy"], r["scenario"]["instances"]) for r in sweep["runs"])
    assert points == [(s, n) for s in ("cascade", "direct", "stream", "swarm") for n in (1, 4)]
    assert sweep["single_fork_seconds"] > 0 and png.stat().st_size > 10_000


# -- validation against the testbed -------------------------------------------------
TESTBED_RECORD = {  # the fields `rfork testbed --clients N --json` writes (testbed.scale_out)
    "clients_count": 4, "peers": True, "client_rate_bytes_per_second": 50e6, "model_bytes": 256 * 2**20,
    "model": "llama-shaped 256.00 MiB", "chunk_size_bytes": 16 * 2**20, "time_to_all_seconds": 8.0,
    "seed_bytes_served": 300 * 2**20, "seeds": [{"id": "seed-0", "rate_cap_bytes_per_second": 50e6}],
    "clients": [{"id": i, "fork_seconds": 7.0 + i / 4} for i in range(4)],
}


def test_a_testbed_record_becomes_the_same_scale_out_in_simulation():
    s = scenario_from_testbed(TESTBED_RECORD)
    assert (s.instances, s.seeds, s.strategy, s.chunk_size) == (4, 1, "swarm", 16 * 2**20)
    # The caps pace the sources (the agent's lease bucket, the swarm's peer bucket); reads run at the link.
    assert s.seed_rate_cap == 50e6 and s.peer_rate == 50e6 and s.model.startswith("size:")
    assert s.seed_egress == s.instance_egress == 1.5e9
    out = simulate_testbed(TESTBED_RECORD)
    assert out["measured"]["time_to_all_seconds"] == 8.0
    assert out["simulated"]["instances_completed"] == 4
    assert out["time_to_all_ratio"] == pytest.approx(out["simulated"]["time_to_all_seconds"] / 8.0)


def test_validate_compares_the_median_of_several_runs(tmp_path, capsys):
    paths = []
    for i, t in enumerate((9.0, 8.0, 30.0)):  # one slow outlier must not decide
        path = tmp_path / f"run-{i}.json"
        path.write_text(json.dumps({**TESTBED_RECORD, "time_to_all_seconds": t}))
        paths.append(str(path))
    out = tmp_path / "v.json"
    rc, stdout, err = run(["simulate", "validate", *paths, "--json", str(out)], capsys)
    assert rc == 0, err
    v = json.loads(out.read_text())
    assert v["measured"]["time_to_all_seconds"] == 9.0
    assert v["measured"]["runs_time_to_all_seconds"] == [8.0, 9.0, 30.0]
    assert "median of 3" in stdout


def test_validate_refuses_runs_of_different_scale_outs(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(TESTBED_RECORD))
    b.write_text(json.dumps({**TESTBED_RECORD, "peers": False}))
    rc, _, err = run(["simulate", "validate", str(a), str(b)], capsys)
    assert rc == 2 and "runs of one scale-out" in err and len(err.strip().splitlines()) == 1, err


CAPPED = dict(model="size:64MiB", chunk_size=4 * 2**20, seed_egress=1.5e9, instance_ingress=1.5e9,
              instance_egress=1.5e9, seed_rate_cap=50e6, peer_rate=50e6, control_latency_seconds=0.003,
              max_assignment_bytes=256 * 2**20, client_max_in_flight=16, max_peers_per_decision=16)
"""The testbed's scale-out in small: seed and peers capped at 50 MB/s by buckets, loopback-fast reads."""


def test_a_capped_seed_paces_leases_and_reads_at_the_link_rate():
    alone = simulate(Scenario(**CAPPED, instances=1), with_single_fork=False)
    model_seconds = alone.model_bytes_per_instance / 50e6
    # The agent's bucket sets the pace (its burst lets the first quarter second through at once) ...
    assert 0.8 * model_seconds < alone.time_to_all_seconds < 1.05 * model_seconds
    # ... and every chunk lands as soon as its lease is granted, so with peers paced the same way
    # the swarm finishes about when the seed has sent one copy (the testbed measured 1.14x one
    # fork at N = 8; a fluid 50 MB/s NIC shared by every read in flight simulated 1.43x).
    swarm = simulate(Scenario(**CAPPED, instances=8), with_single_fork=False)
    assert swarm.instances_completed == 8
    assert swarm.time_to_all_seconds < 1.25 * alone.time_to_all_seconds


def test_link_time_merges_cut_the_decisions_of_a_fast_swarm(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc, _, err = run(["simulate", "--model", "qwen2.5-0.5b", "--chunk-size", "16MiB", "--link-rate", "1GB/s",
                      "--instances", "8", "--merge-seconds", "0.2", "--client-in-flight", "2", "--no-single-fork",
                      "--json", str(out)], capsys)
    assert rc == 0, err
    merged = json.loads(out.read_text())
    assert merged["scenario"]["merge_seconds"] == 0.2 and merged["scenario"]["client_max_in_flight"] == 2
    assert merged["instances_completed"] == 8
    plain = simulate(small(instances=8, client_max_in_flight=2), with_single_fork=False)
    assert merged["scheduler"]["assignments"] < plain.assignments


@pytest.mark.parametrize("argv, says", [
    (["--merge-seconds", "soon"], "--merge-seconds must be a number"),
    (["--merge-seconds", "-1"], "merge_seconds must be a finite number >= 0"),
    (["--client-in-flight", "0"], "--client-in-flight must be >= 1"),
])
def test_bad_merge_flags_are_one_line(argv, says, capsys):
    rc, _, err = run(["simulate", *argv], capsys)
    assert rc == 2 and says in err and len(err.strip().splitlines()) == 1, err


# -- stream: the service's stream core in the simulation ------------------------------


def test_stream_strategy_feeds_everyone_from_one_seed_copy_with_few_decisions():
    from sim.engine import simulate
    from sim.scenario import Scenario

    # 4 MiB chunks: 35 per stripe, so a stripe flows down its tree a read batch (8 chunks) at a time.
    r = simulate(Scenario(model="qwen2.5-0.5b", instances=24, strategy="stream", chunk_size=4 << 20,
                          seed_egress=1e9, instance_ingress=1e9, instance_egress=1e9)).to_json()
    assert r["instances_completed"] == 24 and not r["failures"]
    assert r["seed_bytes_over_model"] < 1.05, r["seed_bytes_over_model"]
    assert r["scheduler"]["streams"] >= 24 * 7 * 0.9  # about one per member and stripe but its own
    # Per-chunk decisions are about the seeds' copy alone, not one per chunk per instance.
    assert r["scheduler"]["assignments"] < r["chunks_per_instance"] * 2
    assert r["time_to_all_over_single_fork"] < 2.0


def test_stream_strategy_survives_killed_seeds_and_relays():
    from sim.engine import simulate
    from sim.scenario import Faults, Scenario

    r = simulate(Scenario(model="qwen2.5-0.5b", instances=24, seeds=4, strategy="stream", chunk_size=16 << 20,
                          seed_egress=1e9, instance_ingress=1e9, instance_egress=1e9, random_seed=3,
                          faults=Faults(kill_seeds=2, kill_peers_fraction=0.1, window_seconds=0.5)),
                 with_single_fork=False).to_json()
    assert r["instances_killed"] == 2
    assert r["instances_completed"] == 22 and not r["failures"], r["failures"]
    assert r["scheduler"]["stream_failures"] > 0


def test_paced_stream_reports_cost_fewer_calls_and_the_same_time_to_all():
    """The scheduler's pacing (members / stream_reports_per_second, here 24 / 6 = 4 s against the
    clients' own second) leaves the streams' progress reports out of a fork shorter than that: fewer
    /work calls, the same transfer."""
    from sim.engine import simulate
    from sim.scenario import Scenario

    def run(rate: float) -> dict:
        return simulate(Scenario(model="qwen2.5-0.5b", instances=24, strategy="stream", chunk_size=16 << 20,
                                 stream_min_members=1, seed_egress=2.5e8, instance_ingress=2.5e8,
                                 instance_egress=2.5e8, stream_reports_per_second=rate), with_single_fork=False).to_json()

    own, paced = run(0.0), run(6.0)
    assert own["instances_completed"] == paced["instances_completed"] == 24
    assert own["time_to_all_seconds"] > 8  # ~10 reports a member at its own second, ~3 paced
    # (The roots' per-chunk calls for the seeds' stripes are the same either way: 858 -> 730 calls.)
    assert paced["scheduler"]["work_calls"] < 0.9 * own["scheduler"]["work_calls"], (own["scheduler"], paced["scheduler"])
    assert paced["time_to_all_seconds"] == pytest.approx(own["time_to_all_seconds"], rel=0.05)


@pytest.mark.parametrize("field, value", [("stream_stripes", 0), ("stream_fanout", 0), ("stream_report_seconds", 0),
                                          ("stream_reports_per_second", -1), ("stream_report_max_seconds", 0)])
def test_bad_stream_fields_are_scenario_errors(field, value):
    from sim.scenario import Scenario, ScenarioError

    with pytest.raises(ScenarioError, match=field):
        Scenario(strategy="stream", **{field: value})


def test_faults_draws_the_kills_and_compares_each_draw_with_the_same_scale_out_without_them(tmp_path, capsys):
    out = tmp_path / "f.json"
    rc, stdout, err = run(["simulate", "faults", "--model", "qwen2.5-0.5b", "--instances", "24", "--seeds", "4",
                           "--strategy", "stream", "--chunk-size", "16MiB", "--link-rate", "1GB/s",
                           "--kill-seeds", "2", "--kill-peers", "0.1", "--fault-window", "0.5", "--draws", "3",
                           "--random-seed", "3", "--growth-goal", "0", "--json", str(out)], capsys)
    assert rc == 0, err
    r = json.loads(out.read_text())
    assert [d["random_seed"] for d in r["runs"]] == [3, 4, 5]
    for d in r["runs"]:
        assert d["every_survivor_completed"] and d["completed"] + d["killed"] == 24
        assert d["growth"] == pytest.approx(d["faults_seconds"] / d["clean_seconds"] - 1)
    s = r["summary"]
    assert s["draws"] == 3 and s["every_survivor_completed_in_every_draw"]
    assert s["growth"]["min"] <= s["growth"]["median"] <= s["growth"]["max"]
    assert s["over_goal"] == [d["random_seed"] for d in r["runs"] if d["growth"] > 0]
    assert "3 draws: growth min" in stdout and "every survivor completed in every draw" in stdout


def test_the_endgame_moves_slow_streams_to_finished_members_and_shortens_fault_draws(monkeypatch):
    """Draws 1-8 of a small scale-out with kills (deterministic): with the endgame every survivor completes
    as without it, the simulation counts its moves, and time-to-all is shorter summed over the draws (it
    is in 6 of these 8; the 128-member study is docs/benchmarks.md, "The endgame")."""
    import scheduler.stream_swarm as stream_swarm
    from sim.engine import simulate
    from sim.scenario import Scenario

    def draws() -> list[dict]:
        return [simulate(Scenario.from_mapping({
            "model": "qwen2.5-0.5b", "instances": 24, "seeds": 4, "strategy": "stream", "chunk_size": "16MiB",
            "instance_ingress": "1GB/s", "instance_egress": "1GB/s", "seed_egress": "1GB/s", "stream_min_members": 1,
            "faults": {"kill_seeds": 2, "kill_peers_fraction": 0.1, "window_seconds": 0.5}, "random_seed": k}),
            with_single_fork=False).to_json() for k in range(1, 9)]

    with_endgame = draws()
    monkeypatch.setattr(stream_swarm, "ENDGAME_MIN_LEFT_FRACTION", 2.0)  # no stream ever has that much left
    without = draws()
    for runs in (with_endgame, without):
        assert all(r["instances_completed"] + r["instances_killed"] == 24 and not r["failures"] for r in runs)
    assert all(r["scheduler"]["stream_endgame_moves"] > 0 for r in with_endgame)
    assert all(r["scheduler"]["stream_endgame_moves"] == 0 for r in without)
    assert sum(r["time_to_all_seconds"] for r in with_endgame) < 0.97 * sum(r["time_to_all_seconds"] for r in without)


def test_sim_cli_doctests():
    import doctest

    import sim.cli

    assert doctest.testmod(sim.cli).failed == 0
