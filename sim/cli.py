"""`rfork simulate`: a fleet scale-out in simulation, every decision made by the real planner.

    rfork simulate --model deepseek-v3 --instances 128 --strategy swarm --json out/sim.json --plot out/sim.png
    rfork simulate sweep --instances 1,8,32,128 --strategies direct,cascade,swarm --json out/sweep.json --plot out/sweep.png
    rfork simulate validate out/testbed-fleet.json --json out/validate.json

A scenario comes from ``--scenario FILE.yaml`` (any ``sim.scenario.Scenario``
field), then the flags, which win. Bad input is one line on stderr and exit 2;
a simulation too large for this machine's memory is refused before it starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from rfork_api.units import UnitError, format_bytes, parse_rate, parse_size

ACTIONS = ("run", "sweep", "validate", "faults")


class UsageError(ValueError):
    """A flag's value is wrong; the message names the flag."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Simulate N new instances forking a model from S seeds (links simulated, the real "
                     "planner deciding): `run` one scenario, `sweep` over N and strategies, `validate` "
                     "against a `rfork testbed --clients N --json` record, `faults` over random draws of "
                     "the scenario's kills, each against the same scale-out without them.")
    p.add_argument("action", nargs="?", default="run", help="run (default), sweep, validate or faults")
    p.add_argument("testbed_json", nargs="*", help="validate: the JSON `rfork testbed --clients N --json` wrote "
                                                   "(several runs of one scale-out: compared at their median)")
    p.add_argument("--scenario", help="YAML (or JSON) file of scenario fields; flags override it")
    p.add_argument("--model", help="deepseek-v3 (default), llama-3.1-70b, qwen2.5-7b, a testbed preset, size:256MiB")
    p.add_argument("--instances", help="new instances N (sweep: a list, default 1,8,32,128)")
    p.add_argument("--seeds", help="serving seeds S (default 1)")
    p.add_argument("--strategy", help="direct: every instance reads from the seeds; cascade: each instance copies "
                                      "from one source and finished instances become sources; swarm (default): "
                                      "loading instances serve the chunks they have landed; stream: loading instances follow each "
                                      "other's landed maps, one stream per stripe (the scheduler's --stream-stripes)")
    p.add_argument("--strategies", help="sweep: a list (default direct,cascade,swarm,stream)")
    p.add_argument("--chunk-size", help="planner chunk size (default 64MiB)")
    p.add_argument("--max-assignment-bytes", help="largest merged assignment (default 256MiB; 0 = no merging)")
    p.add_argument("--merge-seconds", help="also merge up to this much link time at each job's measured rate "
                                           "(the planner's merge_seconds; default 0 = bytes cap only)")
    p.add_argument("--client-in-flight", help="reads each instance keeps in flight (default 8)")
    p.add_argument("--link-rate", help="every NIC: seeds' egress, instances' ingress and egress (default 50GB/s)")
    p.add_argument("--seed-rate", help="a seed's egress (overrides --link-rate)")
    p.add_argument("--ingress", help="an instance's ingress (overrides --link-rate)")
    p.add_argument("--egress", help="an instance's egress (overrides --link-rate)")
    p.add_argument("--peer-rate", help="upload cap a loading instance offers (rfork fork --peer-rate)")
    p.add_argument("--seed-qos", help="constant (default) or serving: a QoS throttle moves seeds' rate every second")
    p.add_argument("--cascade-fanout", help="cascade: instances one source copies to at once (default 1)")
    p.add_argument("--scheduler-shards", help="scheduler processes the rank's instances are split over, each its "
                                              "own swarm (default 1)")
    p.add_argument("--peers-per-decision", help="peers a decision samples (default 8)")
    p.add_argument("--kill-seeds", help="seeds killed at random times during the scale-out")
    p.add_argument("--kill-peers", help="fraction of the new instances killed at random times (0.05 = 5%%)")
    p.add_argument("--fault-window", help="kills happen in [0, this) seconds (default 2)")
    p.add_argument("--random-seed", help="the simulation's random seed (default 1; faults: the first draw's)")
    p.add_argument("--draws", help="faults: random draws of the kills, seeds --random-seed onwards (default 16)")
    p.add_argument("--growth-goal", help="faults: the time-to-all growth a draw may have, e.g. 0.25 (default)")
    p.add_argument("--link-latency", help="validate: control-plane round trip in seconds (default 0.003)")
    p.add_argument("--no-single-fork", action="store_true",
                   help="skip simulating one instance alone (single_fork_seconds) for comparison")
    p.add_argument("--json", dest="json_path", help="write the result here")
    p.add_argument("--plot", dest="plot_path", help="write a PNG here (matplotlib)")


def main(args: argparse.Namespace) -> int:
    from sim.engine import SimulationTooLarge
    from sim.presets import UnknownPreset
    from sim.scenario import ScenarioError
    from sim.validate import TestbedRecordError

    try:
        if args.action not in ACTIONS:
            raise UsageError(f"unknown action {args.action!r}; choose from {', '.join(ACTIONS)}")
        if args.action == "validate":
            return _validate(args)
        if args.testbed_json:
            raise UsageError(f"unexpected argument {args.testbed_json[0]!r} (only `validate` takes a file)")
        if args.action == "faults":
            return _faults(args)
        return _sweep(args) if args.action == "sweep" else _run(args)
    except (UsageError, ScenarioError, UnitError, UnknownPreset, SimulationTooLarge, TestbedRecordError) as exc:
        print(f"rfork simulate: error: {exc}", file=sys.stderr)
        return 2


# -- scenario from file and flags ----------------------------------------------
def _int_flag(value: str, flag: str, minimum: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"{flag} must be a whole number, got {value!r}") from None
    if n < minimum:
        raise UsageError(f"{flag} must be >= {minimum}, got {n}")
    return n


def _float_flag(value: str, flag: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"{flag} must be a number, got {value!r}") from None


def _rate_flag(value: str, flag: str) -> float:
    try:
        rate = parse_rate(value)
    except UnitError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    if rate is None or rate <= 0:
        raise UsageError(f"{flag} must be a rate above zero (e.g. 50GB/s or 400Gbit/s), got {value!r}")
    return float(rate)


def _size_flag(value: str, flag: str) -> int:
    try:
        return parse_size(value)
    except UnitError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _list_flag(value: str, flag: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise UsageError(f"{flag} must be a comma-separated list, got {value!r}")
    return items


def _load_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read --scenario {path}: {exc.strerror}") from None
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise UsageError(f"--scenario {path} is not valid YAML{line}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UsageError(f"--scenario {path} must hold a mapping of scenario fields, got {type(raw).__name__}")
    return raw


def scenario_fields(args: argparse.Namespace, sweep: bool = False) -> dict[str, Any]:
    """The scenario as a mapping: the file's fields, then each flag given."""
    fields: dict[str, Any] = _load_file(args.scenario) if args.scenario else {}
    if args.model is not None:
        fields["model"] = args.model
    if args.instances is not None and not sweep:
        fields["instances"] = _int_flag(args.instances, "--instances", 1)
    if args.seeds is not None:
        fields["seeds"] = _int_flag(args.seeds, "--seeds", 1)
    if args.strategy is not None:
        fields["strategy"] = args.strategy
    if args.chunk_size is not None:
        fields["chunk_size"] = _size_flag(args.chunk_size, "--chunk-size")
    if args.max_assignment_bytes is not None:
        fields["max_assignment_bytes"] = _size_flag(args.max_assignment_bytes, "--max-assignment-bytes")
    if args.merge_seconds is not None:
        fields["merge_seconds"] = _float_flag(args.merge_seconds, "--merge-seconds")
    if args.client_in_flight is not None:
        fields["client_max_in_flight"] = _int_flag(args.client_in_flight, "--client-in-flight", 1)
    if args.link_rate is not None:
        rate = _rate_flag(args.link_rate, "--link-rate")
        fields.update(seed_egress=rate, instance_ingress=rate, instance_egress=rate)
    for flag, name in (("seed_rate", "seed_egress"), ("ingress", "instance_ingress"), ("egress", "instance_egress"),
                       ("peer_rate", "peer_rate")):
        value = getattr(args, flag)
        if value is not None:
            fields[name] = _rate_flag(value, "--" + flag.replace("_", "-"))
    if args.seed_qos is not None:
        fields["seed_qos"] = args.seed_qos
    if args.cascade_fanout is not None:
        fields["cascade_fanout"] = _int_flag(args.cascade_fanout, "--cascade-fanout", 1)
    if args.scheduler_shards is not None:
        fields["scheduler_shards"] = _int_flag(args.scheduler_shards, "--scheduler-shards", 1)
    if args.peers_per_decision is not None:
        fields["max_peers_per_decision"] = _int_flag(args.peers_per_decision, "--peers-per-decision", 1)
    if args.random_seed is not None:
        fields["random_seed"] = _int_flag(args.random_seed, "--random-seed", 0)
    faults = dict(fields.get("faults") or {}) if isinstance(fields.get("faults", {}), dict) else fields["faults"]
    if args.kill_seeds is not None:
        faults["kill_seeds"] = _int_flag(args.kill_seeds, "--kill-seeds", 0)
    if args.kill_peers is not None:
        faults["kill_peers_fraction"] = _float_flag(args.kill_peers, "--kill-peers")
    if args.fault_window is not None:
        faults["window_seconds"] = _float_flag(args.fault_window, "--fault-window")
    if faults:
        fields["faults"] = faults
    return fields


# -- actions ---------------------------------------------------------------------
def _run(args: argparse.Namespace) -> int:
    from sim.engine import check_fits, simulate
    from sim.scenario import Scenario

    scenario = Scenario.from_mapping(scenario_fields(args))
    check_fits(scenario)
    result = simulate(scenario, with_single_fork=not args.no_single_fork).to_json()
    print(summary_line(result))
    _write(args, result, "run")
    return 0 if _all_survivors_done(result) else 1


def _sweep(args: argparse.Namespace) -> int:
    from sim.engine import check_fits, simulate
    from sim.scenario import STRATEGIES, Scenario, ScenarioError

    if args.strategy is not None:
        raise UsageError("sweep takes --strategies (a list), not --strategy")
    counts = [_int_flag(n, "--instances", 1) for n in _list_flag(args.instances or "1,8,32,128", "--instances")]
    strategies = _list_flag(args.strategies or ",".join(STRATEGIES), "--strategies")
    for name in strategies:
        if name not in STRATEGIES:
            raise UsageError(f"--strategies: unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    base = Scenario.from_mapping(scenario_fields(args, sweep=True))
    scenarios = [base.replace(instances=n, strategy=st) for st in strategies for n in sorted(set(counts))]
    try:
        for s in scenarios:
            s.__post_init__()  # a sweep point the base allows may still be invalid (kill_seeds vs seeds)
    except ScenarioError as exc:
        raise UsageError(f"sweep: {exc}") from None
    check_fits(max(scenarios, key=lambda s: s.instances))  # refused before any run starts
    single = None
    if not args.no_single_fork:
        single = simulate(base.replace(instances=1, strategy="direct", faults=base.faults.none(), slowdowns=()),
                          with_single_fork=False).time_to_all_seconds
    runs = []
    for s in scenarios:
        result = simulate(s, with_single_fork=False)
        result.single_fork_seconds = single
        runs.append(result.to_json())
        print(summary_line(runs[-1]), flush=True)
    sweep = {"kind": "rfork-simulate-sweep", "base_scenario": base.to_json(), "instances": sorted(set(counts)),
             "strategies": strategies, "single_fork_seconds": single, "runs": runs}
    _write(args, sweep, "sweep")
    return 0 if all(_all_survivors_done(r) for r in runs) else 1


def _fault_draw(scenario) -> dict:
    """One draw: the scale-out with its kills and the same one without them (a worker process's job)."""
    from sim.engine import simulate

    clean = simulate(scenario.replace(faults=scenario.faults.none(), slowdowns=()), with_single_fork=False)
    faulty = simulate(scenario, with_single_fork=False).to_json()
    return {"random_seed": scenario.random_seed, "clean_seconds": clean.time_to_all_seconds,
            "faults_seconds": faulty["time_to_all_seconds"],
            "growth": faulty["time_to_all_seconds"] / clean.time_to_all_seconds - 1,
            "completed": faulty["instances_completed"], "killed": faulty["instances_killed"],
            "failed": faulty["instances_failed"], "seed_copies": faulty["seed_bytes_over_model"],
            "every_survivor_completed": _all_survivors_done(faulty)}


def _ignore_sigint() -> None:
    # A worker of `faults`: Ctrl-C reaches the whole process group; the parent stops the pool.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def fault_draws_summary(draws: list[dict], growth_goal: float) -> dict:
    """Min / median / 90th percentile / max of the draws' growth and seed copies, and which draws
    missed the goal (pure).

        >>> s = fault_draws_summary([{"random_seed": k, "growth": g, "seed_copies": 1.0 + g,
        ...                           "every_survivor_completed": True} for k, g in enumerate([0.1, 0.3, 0.2])], 0.25)
        >>> s["growth"]["median"], s["over_goal"], s["every_survivor_completed_in_every_draw"]
        (0.2, [1], True)
    """
    def spread(values: list[float]) -> dict:
        ordered = sorted(values)
        return {"min": ordered[0], "median": ordered[len(ordered) // 2],
                "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], "max": ordered[-1],
                "mean": sum(ordered) / len(ordered)}

    return {"draws": len(draws), "growth_goal": growth_goal, "growth": spread([d["growth"] for d in draws]),
            "seed_copies": spread([d["seed_copies"] for d in draws]),
            "over_goal": [d["random_seed"] for d in draws if d["growth"] > growth_goal],
            "every_survivor_completed_in_every_draw": all(d["every_survivor_completed"] for d in draws)}


def _faults(args: argparse.Namespace) -> int:
    import multiprocessing

    from sim.engine import check_fits
    from sim.scenario import Scenario

    if args.plot_path:
        raise UsageError("faults writes no plot (--json keeps every draw)")
    base = Scenario.from_mapping(scenario_fields(args))
    if not base.faults.kill_seeds and not base.faults.kill_peers_fraction:
        raise UsageError("faults needs kills to draw: --kill-seeds N and/or --kill-peers FRACTION")
    draws = _int_flag(args.draws or "16", "--draws", 1)
    goal = _float_flag(args.growth_goal or "0.25", "--growth-goal")
    if goal < 0:
        raise UsageError(f"--growth-goal must be >= 0, got {args.growth_goal}")
    check_fits(base)
    scenarios = [base.replace(random_seed=base.random_seed + k) for k in range(draws)]
    runs = []
    # Pool's exit terminates the workers: on Ctrl-C the draws still running stop at once.
    with multiprocessing.Pool(min(draws, os.cpu_count() or 1), initializer=_ignore_sigint) as pool:
        for run in pool.imap(_fault_draw, scenarios):
            runs.append(run)
            print(f"draw {run['random_seed']:>4}: {run['faults_seconds']:.3f} s with the kills, "
                  f"{run['clean_seconds']:.3f} s without: {run['growth']:+.1%}; {run['completed']} completed, "
                  f"{run['killed']} killed; seeds served {run['seed_copies']:.2f}x the model", flush=True)
    summary = fault_draws_summary(runs, goal)
    g, c = summary["growth"], summary["seed_copies"]
    print(f"{draws} draws: growth min {g['min']:+.1%}, median {g['median']:+.1%}, p90 {g['p90']:+.1%}, "
          f"max {g['max']:+.1%}; {len(summary['over_goal'])} over {goal:.0%}"
          + (f" (draws {', '.join(map(str, summary['over_goal']))})" if summary["over_goal"] else "")
          + f"; seeds served {c['min']:.2f}-{c['max']:.2f}x the model; every survivor completed in "
          + ("every draw" if summary["every_survivor_completed_in_every_draw"] else "NOT every draw"))
    _write(args, {"kind": "rfork-simulate-faults", "scenario": base.to_json(), "summary": summary, "runs": runs},
           "faults")
    return 0 if summary["every_survivor_completed_in_every_draw"] else 1


def _validate(args: argparse.Namespace) -> int:
    from sim.validate import LOOPBACK_CONTROL_SECONDS, LOOPBACK_RATE, simulate_testbed

    if not args.testbed_json:
        raise UsageError("validate needs the testbed's JSON: rfork simulate validate PATH [PATH...]")
    records = [_testbed_record(path) for path in args.testbed_json]
    shapes = {(r.get("clients_count"), r.get("peers", True), r.get("model_bytes")) for r in records}
    if len(shapes) > 1:
        raise UsageError("validate's records must be runs of one scale-out (same clients, peers, model); got "
                         + ", ".join(f"N={n} peers={p} model={m}" for n, p, m in sorted(shapes, key=str)))
    timed = [r for r in records if isinstance(r.get("time_to_all_seconds"), (int, float))]
    # The median run by time-to-all (the upper one of an even count): one noisy run does not decide.
    record = sorted(timed, key=lambda r: r["time_to_all_seconds"])[len(timed) // 2] if timed else records[0]
    link = _rate_flag(args.link_rate, "--link-rate") if args.link_rate else LOOPBACK_RATE
    latency = _float_flag(args.link_latency, "--link-latency") if args.link_latency else LOOPBACK_CONTROL_SECONDS
    out = simulate_testbed(record, link_rate=link, control_latency_seconds=latency)
    out["measured"]["runs_time_to_all_seconds"] = sorted(r["time_to_all_seconds"] for r in timed)
    m, s = out["measured"], out["simulated"]
    ratio = out["time_to_all_ratio"]
    print(f"testbed {m['time_to_all_seconds']:.3f} s (median of {len(timed)}), simulated {s['time_to_all_seconds']:.3f} s"
          + (f" ({ratio:.2f}x; {'within' if out['within_20_percent'] else 'NOT within'} 20%)" if ratio else ""))
    _write(args, out, "validate")
    return 0


def _testbed_record(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(record, dict):
        raise UsageError(f"{path} must hold one testbed record (a JSON object)")
    return record


def _all_survivors_done(result: dict) -> bool:
    n = result["scenario"]["instances"]
    return result["instances_completed"] + result["instances_killed"] == n


def summary_line(r: dict) -> str:
    """One line per run: what a reader checks first."""
    s, sched = r["scenario"], r["scheduler"]
    single = r.get("single_fork_seconds")
    ratio = f" = {r['time_to_all_seconds'] / single:.2f}x one fork alone ({single:.2f} s)" if single else ""
    cpu = sched["cpu_per_work_call_seconds"]
    return (f"{s['strategy']:>7} {s['model']} N={s['instances']} S={s['seeds']}: time-to-all "
            f"{r['time_to_all_seconds']:.2f} s{ratio}; seeds served {r['seed_bytes_over_model']:.2f}x the model "
            f"({format_bytes(int(r['seed_bytes_served']))}), peers {format_bytes(int(r['peer_bytes_served']))}; "
            f"{r['instances_completed']}/{s['instances']} completed"
            + (f", {r['instances_killed']} killed" if r["instances_killed"] else "")
            + f"; scheduler {sched['work_calls_per_second']:,.0f} work calls/s, "
            f"{sched['assignments_per_second']:,.0f} assignments/s, CPU {r['scheduler_cpu_share']:.2f} of a core"
            + (f" in each of {sched['processes']} processes " if sched["processes"] > 1 else " ")
            + f"(per call p50 {cpu['p50'] * 1e6:.0f} us, p99 {cpu['p99'] * 1e6:.0f} us)")


def _write(args: argparse.Namespace, payload: dict, kind: str) -> None:
    if args.json_path:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_path)), exist_ok=True)
        with open(args.json_path, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1)
        print(f"wrote {args.json_path}")
    if args.plot_path:
        from sim import plots

        os.makedirs(os.path.dirname(os.path.abspath(args.plot_path)), exist_ok=True)
        {"run": plots.plot_run, "sweep": plots.plot_sweep, "validate": plots.plot_validation}[kind](
            payload, args.plot_path)
        print(f"wrote {args.plot_path}")
