"""Every QoS plant x K runs at once, on disjoint CPUs and ports: issue #16's battery in one command.

    python -m bench.qos_battery --plants steady,bursty,near-slo,load-change --runs 5 --out $OUT \\
        --cores-per-plant 3 [--gpu] [--deadline-seconds 450]

Each plant is one ``python -m bench.qos_bench`` process (its own fleet: two
seeds, their agents, a scheduler, two fork loops) confined to its own
``--cores-per-plant`` CPUs: the seeds one CPU each, the rest on the remaining
one(s); its scheduler and agents listen on free ports (``--port-base N``: plant i from
N + 100 i, for a host where only some ports may be used). With
``--gpu`` the ``gpu-decode`` plant runs beside them on the CPUs left over. Every
progress line is relayed prefixed with its plant. A plant that would not finish
its next run before ``--deadline-seconds`` skips it (its JSON says so); past the
deadline plus a grace period a plant is stopped (SIGTERM: its fleet shuts down)
and its JSON keeps what it had.

``--compare FIELD=VALUE,...`` runs every plant twice side by side, on CPUs of their own: as the
agents default to, and as ``<plant>-b`` with ``--throttle-tuning FIELD=VALUE,...`` (two laws on one
host at one time: batteries on different hosts have differed more than the laws did), and prints
each goal's medians and runs met for both.

Writes (at most 8 files, flat, for a device call that returns only a few; with ``--compare``, two
JSON files a plant):
``qos-<plant>.json`` per plant (bench/qos_bench.py's result: ``runs[]``,
``summary``, ``oracle``), ``qos-battery.json`` (every plant's summary and
progress lines, and the tail of the logs of a plant that failed), ``qos-battery.png`` (min/median/max of
each goal per plant against its target) and ``qos-battery-series.png`` (each
plant's allowed rates and share of slow tokens over time).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.cpu_neighbours import thread_siblings
from bench.qos_bench import EXIT_CODES
from bench.qos_plants import CPU_PLANTS, PlantError, parse_plants
from bench.qos_signal import format_rows, rows as signal_rows
from bench.qos_stats import CONTROL_GOALS, HOST_CHECKS, TARGETS

PORTS_PER_PLANT = 100
"""With ``--port-base``, plant i listens from port base + 100 i. Without it every plant takes free
ports: two batteries on one host (two CI runs) once collided on fixed ones."""
GOALS = ("throttled_share_above_slo", "throttled_vs_oracle", "spike_cut_seconds", "idle_to_cap_seconds")


class BatteryError(ValueError):
    """A flag the battery cannot run with; the message is the one line to print."""


def assign_cores(cpus: list[int], plants: list[str], cores_per_plant: int,
                 gpu_plant: str | list[str] | None = None) -> tuple[dict[str, list[int]], list[str]]:
    """CPUs for every plant: disjoint slices of ``cores_per_plant`` for the CPU plants, the rest for the GPU
    plant (split evenly between them where two arms of it run: ``--compare``).

    Too few CPUs: slices wrap around (plants then share CPUs) and a warning says so. The GPU plant gets
    at least ``cores_per_plant`` CPUs an arm, as a CPU plant does, or the battery refuses to run it beside
    CPU plants: its fleet is laid out the same way, its seeds on CPUs of their own and its agents,
    scheduler and fork clients on the others; with fewer those share the seeds' CPUs, and the fork
    clients' work on every byte read lands on the seeds. (v21 and v22 ran it so: its two fleets, law and
    control, on 4 CPUs beside two CPU plants with theirs.)

        >>> assign_cores(list(range(16)), ["steady", "bursty"], 3, "gpu-decode")[0]
        {'steady': [0, 1, 2], 'bursty': [3, 4, 5], 'gpu-decode': [6, 7, 8, 9, 10, 11, 12, 13, 14, 15]}
        >>> assign_cores(list(range(16)), ["steady", "steady-b"], 3, ["gpu-decode", "gpu-decode-b"])[0]["gpu-decode-b"]
        [11, 12, 13, 14, 15]
        >>> cores, warnings = assign_cores([0, 1], ["steady", "bursty"], 2); cores
        {'steady': [0, 1], 'bursty': [0, 1]}
        >>> assign_cores(list(range(16)), ["steady", "bursty"], 6, "gpu-decode")
        Traceback (most recent call last):
        ...
        bench.qos_battery.BatteryError: --gpu: gpu-decode needs 6 CPUs an arm of its own, as each CPU plant gets, and 4 are left after 2 CPU plants x 6: run fewer CPU plants beside it (--plants)
    """
    if cores_per_plant < 1:
        raise BatteryError(f"--cores-per-plant must be at least 1, got {cores_per_plant}")
    warnings = []
    out: dict[str, list[int]] = {}
    need = len(plants) * cores_per_plant
    if need > len(cpus):
        warnings.append(f"{len(plants)} plants x {cores_per_plant} CPUs need {need}, this process may use "
                        f"{len(cpus)}: plants share CPUs, so their latencies disturb each other")
    for i, name in enumerate(plants):
        out[name] = [cpus[(i * cores_per_plant + j) % len(cpus)] for j in range(cores_per_plant)]
    gpu_plants = [gpu_plant] if isinstance(gpu_plant, str) else list(gpu_plant or [])
    if gpu_plants:
        left = cpus[need:] if need < len(cpus) else []
        if len(left) < cores_per_plant * len(gpu_plants):
            if plants:
                raise BatteryError(f"--gpu: {gpu_plants[0]} needs {cores_per_plant} CPUs an arm of its own, as each "
                                   f"CPU plant gets, and {len(left)} are left after {len(plants)} CPU plants x "
                                   f"{cores_per_plant}: run fewer CPU plants beside it (--plants)")
            warnings.append(f"the GPU plant has {len(cpus)} CPUs, {cores_per_plant} an arm wanted: its agents and "
                            f"fork clients share its seeds' CPUs")
            left = list(cpus)
        share = max(len(left) // len(gpu_plants), 1)
        for i, name in enumerate(gpu_plants):
            last = i == len(gpu_plants) - 1
            out[name] = left[i * share:] if last else left[i * share:(i + 1) * share]
            out[name] = out[name] or left
    return out, warnings


def gpu_control_argv(gpu_count: int, control: bool, control_device: str | None) -> tuple[list[str], str | None]:
    """The GPU plant's ``--control-device`` flags, and a warning where its two fleets must share one GPU.

    With ``--control`` the GPU plant runs two fleets; on one GPU each fleet's transfer and decode load the
    other's seeds, so the control's share is not the oracle's rate alone. With a second GPU the control
    decodes there (``cuda:1``), unless the flags after ``--`` chose its device already.

        >>> gpu_control_argv(2, True, None)
        (['--control-device', 'cuda:1'], None)
        >>> gpu_control_argv(1, True, None)[1]
        "gpu-decode's law and control fleets decode on the one GPU: each sees the other's transfer"
        >>> gpu_control_argv(2, True, "cuda:0"), gpu_control_argv(2, False, None)
        (([], None), ([], None))
    """
    if not control or control_device is not None:
        return [], None
    if gpu_count >= 2:
        return ["--control-device", "cuda:1"], None
    return [], "gpu-decode's law and control fleets decode on the one GPU: each sees the other's transfer"


def shared_core_warnings(cores: dict[str, list[int]], siblings: dict[int, frozenset[int]]) -> list[str]:
    """A warning for every pair of plants whose CPUs share a core (hyperthreads, as the kernel reports them).

    A plant's seeds are calibrated once, then run beside whatever its neighbours do in each run; a
    neighbour on a sibling thread of a seed's core takes part of that core when it is busy, so the
    seed's speed moves with the neighbour's phases, not with the plant's transfer.

        >>> shared_core_warnings({"steady": [0, 1, 2], "bursty": [3, 4, 5]}, {c: frozenset({c}) for c in range(6)})
        []
        >>> sib = {c: frozenset({c, c ^ 1}) for c in range(6)}     # (0, 1), (2, 3), (4, 5) share cores
        >>> shared_core_warnings({"steady": [0, 1, 2], "bursty": [3, 4, 5]}, sib)
        ["CPUs of steady and bursty share cores (2/3): each plant's load moves the other's seeds' speed"]
    """
    owner = {cpu: name for name, cpus in cores.items() for cpu in cpus}
    order = {name: i for i, name in enumerate(cores)}
    shared: dict[tuple[str, str], list[str]] = {}
    for name, cpus in cores.items():
        for cpu in cpus:
            for other in sorted(siblings.get(cpu, frozenset()) - {cpu}):
                neighbour = owner.get(other)
                if neighbour is not None and neighbour != name and cpu < other:
                    pair = tuple(sorted((name, neighbour), key=order.__getitem__))
                    shared.setdefault(pair, []).append(f"{cpu}/{other}")
    return [f"CPUs of {a} and {b} share cores ({', '.join(pairs)}): each plant's load moves the other's seeds' speed"
            for (a, b), pairs in shared.items()]


def goal_table(plants: dict[str, dict]) -> list[str]:
    """One line per plant and goal: min / median / max over the runs, and in how many runs it was met.

        >>> rows = goal_table({"steady": {"summary": {"throttled_vs_oracle": {
        ...     "min": 0.8, "median": 0.9, "max": 1.1, "met_runs": 5, "judged_runs": 5, "target": ">= 0.8",
        ...     "every_run": True}}}})
        >>> rows[1].split()
        ['steady', 'throttled_vs_oracle', '0.8', '0.9', '1.1', '5/5', '>=', '0.8', 'PASS']
    """
    rows = [f"{'plant':12} {'goal':28} {'min':>8} {'median':>8} {'max':>8} {'met':>5}  target"]
    for name, plant in plants.items():
        summary = plant.get("summary") or {}
        if not summary:
            rows.append(f"{name:12} {'(no run completed)':28}")
            continue
        for goal in GOALS + ("throttled_ttft_share_above_slo", *HOST_CHECKS, "control_share_above_slo",
                             *CONTROL_GOALS):
            s = summary.get(goal)
            if s is None or (goal == "throttled_ttft_share_above_slo" and not s["judged_runs"]):
                continue

            def fmt(v):
                return "n/a" if v is None else f"{v:.3g}"
            verdict = ({True: "PASS", False: "MISS", None: "n/a"}[s["every_run"]] if s.get("issue_target", True)
                       else "(control)" if "control" in goal else "(host)")
            rows.append(f"{name:12} {goal:28} {fmt(s['min']):>8} {fmt(s['median']):>8} {fmt(s['max']):>8} "
                        f"{s['met_runs']}/{s['judged_runs']:<3} {s['target']}  {verdict}")
    return rows


def _first_held(entry: dict) -> tuple[int, int]:
    """A plant's runs where the host held, as ``--extra-runs-where-host-missed`` counts them: (runs, runs that
    met every goal): its first ``--runs`` such runs (``where_host_held``), or all its runs where every one held."""
    held = entry.get("where_host_held")
    if held:
        return len(held["runs"]), held["met_every_goal"]
    tally = entry.get("tally") or {}
    return tally.get("runs", 0), tally.get("met_every_goal", 0)


def held_runs_verdict(plants: dict[str, dict], runs: int) -> str | None:
    """With ``--extra-runs-where-host-missed``: whether every plant met every goal in ``runs`` runs where the
    host held (its first ``runs`` such runs; all its runs where every one held); None where no plant had a
    run the host missed. A plant short of ``runs`` held runs (the deadline came first) has not met it.

        >>> held = {"runs": [1, 3, 4], "met_every_goal": 3, "every_run_met_every_goal": True}
        >>> held_runs_verdict({"near-slo": {"where_host_held": held},
        ...                    "bursty": {"tally": {"runs": 3, "met_every_goal": 3}}}, 3)
        'every goal in 3 runs where the host held, every plant: MET'
        >>> held_runs_verdict({"near-slo": {"where_host_held": dict(held, runs=[1, 3], met_every_goal=2)}}, 3)
        'every goal in 3 runs where the host held, every plant: NOT MET (near-slo: 2 such runs)'
        >>> held_runs_verdict({"bursty": {"tally": {"runs": 3, "met_every_goal": 3}}}, 3) is None
        True
    """
    if not any(e.get("where_host_held") for e in plants.values()):
        return None
    short = []
    met = True
    for name, entry in plants.items():
        count, count_met = _first_held(entry)
        if count < runs:
            short.append(f"{name}: {count} such runs")
        met = met and count_met == count and count >= runs
    return (f"every goal in {runs} runs where the host held, every plant: " + ("MET" if met else "NOT MET")
            + (f" ({'; '.join(short)})" if short else ""))


def runs_line(plants: dict[str, dict]) -> str:
    """Runs that met every goal, over the battery and over the runs where the host held, and read against the
    control fleet where there was one (``qos_stats.tally``).

        >>> runs_line({"steady": {"tally": {"runs": 5, "met_every_goal": 3, "host_held": 4,
        ...                                 "host_held_met_every_goal": 3}}, "broken": {}})
        'runs that met every goal: 3 of 5; where the host held (seeds at 0.9-1.25x their calibration, alone within the budget): 3 of 4'
        >>> runs_line({"gpu-decode": {"tally": {"runs": 5, "met_every_goal": 2, "host_held": 3,
        ...            "host_held_met_every_goal": 1, "with_control": 5, "met_where_the_control_met": 5}}}).split("; ")[-1]
        "against the oracle's rate in the same seconds (--control: share within the budget or no worse, >= 0.8x its throughput where it met): 5 of 5"
        >>> near = {"tally": {"runs": 6, "met_every_goal": 4, "host_held": 5, "host_held_met_every_goal": 4},
        ...         "where_host_held": {"runs": [1, 2, 3, 5, 6], "met_every_goal": 4}}
        >>> runs_line({"near-slo": near,
        ...            "bursty": {"tally": {"runs": 5, "met_every_goal": 5, "host_held": 5}}}).split("; ")[-1]
        'the first runs where the host held, per plant (--extra-runs-where-host-missed): 9 of 10'
    """
    tallies = [e["tally"] for e in plants.values() if e.get("tally")]
    # The speed bounds the plants judged their hosts by (--host-speed-min/max; where a result does not say, the
    # defaults, which bench.qos_rejudge judges it by).
    judged = [e.get("targets") or {} for e in plants.values() if e.get("tally")]
    low, high = TARGETS["host_speed_min_fraction"], TARGETS["host_speed_max_fraction"]
    lows = sorted({t.get("host_speed_min_fraction", low) for t in judged}) or [low]
    highs = sorted({t.get("host_speed_max_fraction", high) for t in judged}) or [high]

    def total(key: str) -> int:
        return sum(t.get(key, 0) for t in tallies)
    line = (f"runs that met every goal: {total('met_every_goal')} of {total('runs')}; where the host held (seeds at "
            f"{'/'.join(f'{b:g}' for b in lows)}-{'/'.join(f'{b:g}' for b in highs)}x their calibration, alone "
            f"within the budget): "
            f"{total('host_held_met_every_goal')} of {total('host_held')}")
    if any(e.get("where_host_held") for e in plants.values()):
        firsts = [_first_held(e) for e in plants.values() if e.get("tally") or e.get("where_host_held")]
        line += (f"; the first runs where the host held, per plant (--extra-runs-where-host-missed): "
                 f"{sum(met for _, met in firsts)} of {sum(count for count, _ in firsts)}")
    if total("with_control"):
        line += (f"; against the oracle's rate in the same seconds (--control: share within the budget or no worse, "
                 f">= 0.8x its throughput where it met): {total('met_where_the_control_met')} of "
                 f"{total('with_control')}")
    return line


def compare_table(plants: dict[str, dict]) -> list[str]:
    """``--compare``: per plant run in both arms and goal, the median and the runs met of arm a and arm b.

        >>> entry = lambda median, met: {"summary": {"throttled_vs_oracle": {
        ...     "median": median, "met_runs": met, "judged_runs": 5}}}
        >>> rows = compare_table({"steady": entry(0.6, 1), "steady-b": entry(0.9, 4)})
        >>> rows[1].split()
        ['steady', 'throttled_vs_oracle', '0.6', '1/5', '0.9', '4/5']
    """
    rows = [f"{'plant':12} {'goal':28} {'a median':>9} {'a met':>6} {'b median':>9} {'b met':>6}"]
    for name, a in plants.items():
        b = plants.get(f"{name}-b")
        if name.endswith("-b") or b is None:
            continue
        for goal in GOALS + ("throttled_ttft_share_above_slo",):
            sa, sb = ((p.get("summary") or {}).get(goal) for p in (a, b))
            if not sa and not sb or goal == "throttled_ttft_share_above_slo" and not (
                    (sa or {}).get("judged_runs") or (sb or {}).get("judged_runs")):
                continue

            def cells(s):
                if not s:
                    return "n/a", "n/a"
                median = "n/a" if s.get("median") is None else f"{s['median']:.3g}"
                return median, f"{s['met_runs']}/{s['judged_runs']}"
            (ma, na), (mb, nb) = cells(sa), cells(sb)
            rows.append(f"{name:12} {goal:28} {ma:>9} {na:>6} {mb:>9} {nb:>6}")
    return rows


# Mooncake's own (glog) lines, e.g. "E1202 01:35:23.551600 22325 tcp_transport_session_impl.h:651] ...": reads cut
# off when a plant stops its fleet under running forks. Kept in qos-battery.json, not relayed to the terminal.
_GLOG_LINE = re.compile(r"^([EWIF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]|WARNING: Logging before InitGoogleLogging)")


def _relay(stream, sink: list[str]) -> None:
    for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        sink.append(line)
        if not _GLOG_LINE.match(line):
            print(line, flush=True)


def _log_tails(log_dir: Path, lines: int = 25) -> dict[str, str]:
    tails = {}
    for path in sorted(log_dir.glob("*.log")):
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        tails[path.name] = "\n".join(text[-lines:])
    return tails


def run_battery(args: argparse.Namespace) -> int:
    try:
        plants = [p.name for p in parse_plants(args.plants)]
    except PlantError as exc:
        print(f"bench.qos_battery: error: --plants: {exc}", file=sys.stderr)
        return 2
    if "gpu-decode" in plants:
        print("bench.qos_battery: error: --plants takes the CPU plants; add the GPU one with --gpu", file=sys.stderr)
        return 2
    if args.runs < 1:
        print(f"bench.qos_battery: error: --runs must be at least 1, got {args.runs}", file=sys.stderr)
        return 2
    gpu = "gpu-decode" if args.gpu else None
    try:
        bench = bench_flags(args)
    except ValueError as exc:
        print(f"bench.qos_battery: error: the flags after -- : {exc}", file=sys.stderr)
        return 2
    compare = getattr(args, "compare", None)
    if compare is not None:
        reason = tuning_error(compare) or (
            "--compare sets the b arm's --throttle-tuning; do not also pass --throttle-tuning after --"
            if bench.throttle_tuning is not None else None)
        if reason:
            print(f"bench.qos_battery: error: --compare: {reason}", file=sys.stderr)
            return 2
    if args.estimate:
        try:
            print("\n".join(estimate(args, plants + ([gpu] if gpu else []))))
        except ValueError as exc:
            print(f"bench.qos_battery: error: the flags after -- : {exc}", file=sys.stderr)
            return 2
        return 0
    gpu_argv: list[str] = []
    gpu_warning = None
    if gpu:
        from rfork_agent.devices import DeviceError, check_device
        try:
            check_device("cuda")
        except DeviceError as exc:
            print(f"bench.qos_battery: error: --gpu: {exc}", file=sys.stderr)
            return 2
        import torch

        gpu_argv, gpu_warning = gpu_control_argv(torch.cuda.device_count(), bench.control, bench.control_device)
    from bench.qos_bench import usable_cpus

    cpus = usable_cpus()
    # Each arm: (its name, the plant it runs, the b arm's tuning or None).
    arms = [(name, name, None) for name in plants] + ([(f"{n}-b", n, compare) for n in plants] if compare else [])
    gpu_arms = ([(gpu, gpu, None)] + ([(f"{gpu}-b", gpu, compare)] if compare else [])) if gpu else []
    try:
        # A plant run with a control fleet (-- --control) runs two fleets: twice the CPUs, halved by the bench.
        per_plant = args.cores_per_plant * (2 if bench.control else 1)
        cores, warnings = assign_cores(cpus, [a[0] for a in arms], per_plant,
                                       [a[0] for a in gpu_arms] or None)
    except BatteryError as exc:
        print(f"bench.qos_battery: error: {exc}", file=sys.stderr)
        return 2
    siblings = thread_siblings(cpus)
    warnings.extend(shared_core_warnings(cores, siblings))
    if compare and gpu:
        warnings.append("both arms of gpu-decode decode on the one GPU: each sees the other's load")
    if gpu_warning:
        warnings.append(gpu_warning)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="rfork-qos-battery-"))

    def interrupt(*_):
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM (a timeout, a cancelled job) both stop every plant, each of which stops its fleet:
    # the plants run in sessions of their own, so only this process can pass the signal on.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    for w in warnings:
        print(f"battery: warning: {w}", flush=True)
    started = time.monotonic()
    children: dict[str, subprocess.Popen] = {}
    output: dict[str, list[str]] = {}
    relays = []
    every = [a[0] for a in arms + gpu_arms]
    for i, (name, plant, tuning) in enumerate(arms + gpu_arms):
        cmd = [sys.executable, "-m", "bench.qos_bench", "--json", str(out / f"qos-{name}.json"),
               "--cpus", ",".join(map(str, cores[name])), *port_argv(args, i),
               "--log-dir", str(logs / name), "--tag-lines", "--deadline-seconds",
               str(max(args.deadline_seconds - 5.0, 1.0)), *plant_argv(plant, args),
               *(["--throttle-tuning", tuning] if tuning else []), *(gpu_argv if plant == gpu else [])]
        if tuning:
            cmd += ["--tag", name]
        print(f"battery: {name} on CPUs {cores[name]}: {' '.join(cmd[1:])}", flush=True)
        # Its own session: a Ctrl-C here reaches it once, through us, and it stops its own fleet.
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                 env=dict(os.environ, PYTHONUNBUFFERED="1"))
        children[name] = child
        output[name] = []
        relay = threading.Thread(target=_relay, args=(child.stdout, output[name]), daemon=True)
        relay.start()
        relays.append(relay)

    def stop_all(reason: str) -> None:
        for name, child in children.items():
            if child.poll() is None:
                print(f"battery: stopping {name} ({reason})", flush=True)
                child.send_signal(signal.SIGTERM)

    hard_stop = args.deadline_seconds + args.grace_seconds
    interrupted = False
    try:
        while any(c.poll() is None for c in children.values()):
            if time.monotonic() - started > hard_stop:
                stop_all(f"past the {hard_stop:.0f} s hard stop")
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        interrupted = True
        stop_all("interrupted")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the plants' own shutdown short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for name, child in children.items():
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()  # it did not stop its fleet in 30 s; its fleet's processes are told by their own timeouts
            child.wait()
    for relay in relays:
        relay.join(2)

    summary = {"plants": {}, "battery": {
        "plants": every, "runs": args.runs, "quick": args.quick, "cores": cores, "warnings": warnings,
        "wall_seconds": time.monotonic() - started, "deadline_seconds": args.deadline_seconds,
        "cpu_count": len(cpus), "interrupted": interrupted, "compare": compare,
        # The host's cores as the kernel reports them (CPU -> the CPUs sharing its core): whether plants shared cores.
        "thread_siblings": {cpu: sorted(group) for cpu, group in siblings.items()}}}
    for name in every:
        path = out / f"qos-{name}.json"
        code = children[name].returncode
        entry: dict = {"exit_code": code, "exit_meaning": EXIT_CODES.get(code, "killed" if code < 0 else "unknown")}
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            result = None
            entry["error"] = f"no result ({exc.__class__.__name__}); last lines: " + " | ".join(output[name][-5:])
        if result:
            entry.update({k: result.get(k) for k in (
                "summary", "every_run_met_every_goal", "tally", "where_host_held", "targets", "runs_completed",
                "runs_skipped", "slo_itl_seconds",
                "slo_choice", "load_description", "oracle_rate_per_seed_bytes_per_second", "oracle_bytes_per_second")})
            entry["oracle_bracket_per_seed_bytes_per_second"] = (result.get("oracle") or {}).get(
                "bracket_per_seed_bytes_per_second")
            try:
                # The transfer's effect at each probed rate, counted and by the scale model (bench.qos_signal).
                entry["signal_table"] = format_rows(signal_rows(result)).splitlines()
            except (ValueError, KeyError, ZeroDivisionError) as exc:
                entry["signal_table"] = [f"(none: {exc})"]
        entry["output"] = output[name]  # every progress line: each phase's latency, throughput and share
        entry["mooncake_log_lines"] = sum(1 for line in output[name] if _GLOG_LINE.match(line))
        if children[name].returncode not in (0, 1):
            entry["log_tails"] = _log_tails(logs / name)
        summary["plants"][name] = entry
    # The plants' logs (seeds, agents, scheduler) stay only where one failed on its own: their tails are
    # in the summary, the rest may tell why. A battery that ran through, or was stopped, leaves none.
    failed = [n for n, e in summary["plants"].items() if e["exit_code"] not in (0, 1)]
    if failed and not interrupted:
        summary["battery"]["logs_kept"] = str(logs)
        print(f"battery: {', '.join(failed)} failed; the plants' logs are in {logs}", flush=True)
    else:
        shutil.rmtree(logs, ignore_errors=True)
    summary["table"] = goal_table(summary["plants"])
    if compare:
        summary["compare_table"] = compare_table(summary["plants"])
    (out / "qos-battery.json").write_text(json.dumps(summary, indent=1, default=str))
    try:
        plot_goals(summary, str(out / "qos-battery.png"))
        plot_series({n: out / f"qos-{n}.json" for n in every}, str(out / "qos-battery-series.png"))
    except Exception as exc:  # noqa: BLE001 - a plot must not lose the numbers, which are written already
        print(f"battery: plot failed: {exc.__class__.__name__}: {exc}", flush=True)
    print(f"\n== qos battery: {len(every)} plants x {args.runs} runs in {time.monotonic() - started:.0f} s "
          f"(results in {out}) ==")
    print("\n".join(summary["table"]))
    for name, entry in summary["plants"].items():
        if entry.get("signal_table"):
            print(f"\n== {name}: the transfer's effect, counted and by the scale model (bench.qos_signal) ==")
            print("\n".join(entry["signal_table"]))
    if compare:
        print(f"\n== a: as the agents default; b: --throttle-tuning {compare} ==")
        print("\n".join(summary["compare_table"]))
    print(runs_line(summary["plants"]))
    every_met = all(e.get("every_run_met_every_goal") for e in summary["plants"].values())
    print("every goal in every run of every plant: " + ("MET" if every_met else "NOT MET"))
    held_verdict = held_runs_verdict(summary["plants"], args.runs)
    if held_verdict:
        print(held_verdict)
    return 130 if interrupted else (0 if every_met else 1)


def plot_goals(summary: dict, path: str) -> None:
    """Per goal, per plant: the runs' values (dots), min-max (bar) and the target (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plants = list(summary["plants"])
    fig, axes = plt.subplots(1, len(GOALS), figsize=(4.2 * len(GOALS), 4.2))
    for ax, goal in zip(axes, GOALS):
        target = None
        for x, name in enumerate(plants):
            s = (summary["plants"][name].get("summary") or {}).get(goal)
            if not s:
                continue
            target = s["target"]
            values = [v for v in s["values"] if v is not None]
            if values:
                ax.vlines(x, min(values), max(values), color="0.6", lw=6, alpha=0.5)
                ax.plot([x] * len(values), values, "o", color="C0" if s["every_run"] else "C3", ms=4)
        if target:
            ax.axhline(float(target.split()[1]), color="red", ls="--", lw=1, label=f"target {target}")
            ax.legend(fontsize=7, loc="best")
        ax.set_xticks(range(len(plants)), plants, rotation=30, fontsize=8)
        ax.set_title(goal.replace("_", " "), fontsize=9)
        if goal == "throttled_share_above_slo":
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=1))
    b = summary["battery"]
    fig.suptitle(f"rfork QoS battery: {b['runs']} runs per plant (blue: met in every run, red: not)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_series(paths: dict[str, Path], path: str) -> None:
    """One row per plant: allowed rate per seed, and the share of tokens over the SLO pooled over 4 s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.qos_bench import MB, pooled_share_above_slo

    results = {}
    for name, p in paths.items():
        try:
            results[name] = json.loads(Path(p).read_text())
        except (OSError, ValueError):
            continue
    if not results:
        return
    fig, axes = plt.subplots(len(results), 2, figsize=(16, 2.8 * len(results)), squeeze=False)
    for row, (name, r) in enumerate(results.items()):
        series = r.get("time_series") or []
        t = [s["t"] for s in series]
        ax_rate, ax_share = axes[row]
        for i in range(r.get("seeds") or 0):
            ax_rate.step(t, [(s["rates"][i] or 0) / MB for s in series], where="post", lw=0.8, label=f"seed-{i}")
            pooled = pooled_share_above_slo(series, i, 4.0)
            budget = r.get("slo_budget") or 0.01
            ax_share.plot(t, [None if f is None else min(f, 5 * budget) for f in pooled], lw=0.8)
        if r.get("oracle_rate_per_seed_bytes_per_second"):
            ax_rate.axhline(r["oracle_rate_per_seed_bytes_per_second"] / MB, color="green", ls="--", lw=1,
                            label="oracle")
        ax_share.axhline(r.get("slo_budget") or 0.01, color="red", ls="--", lw=1, label="budget")
        for k, run in enumerate(r.get("runs") or []):
            window = next((w for n, w in run.get("phases", {}).items() if n.startswith("C ")), None)
            if window:
                for ax in (ax_rate, ax_share):
                    ax.axvspan(*window, color="0.9", zorder=0)
        ax_rate.set_ylabel(f"{name}\nallowed MB/s a seed", fontsize=8)
        ax_share.set_ylabel("tokens over the SLO\n(4 s pooled)", fontsize=8)
        ax_share.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=1))
        ax_rate.legend(fontsize=6, loc="upper right")
    axes[-1][0].set_xlabel("seconds (grey: throttled phases)")
    axes[-1][1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.qos_battery", description=__doc__.splitlines()[0],
                                epilog="Arguments after -- go to every plant's bench.qos_bench, e.g. -- --seeds 1")
    p.add_argument("--plants", default=",".join(CPU_PLANTS), help=f"CPU plants (default {','.join(CPU_PLANTS)})")
    p.add_argument("--gpu", action="store_true", help="also run the gpu-decode plant (needs CUDA)")
    p.add_argument("--runs", type=int, default=5, help="runs per plant (default 5)")
    p.add_argument("--out", required=True, help="folder for the JSON and plots")
    p.add_argument("--cores-per-plant", type=int, default=3,
                   help="CPUs per CPU plant: one per seed, the rest for its agents, scheduler and fork clients "
                        "(default 3)")
    p.add_argument("--deadline-seconds", type=float, default=900.0,
                   help="plants start no run that would end after this many seconds (default 900: longer than "
                        "one 10-minute device call; bench/qos_battery.sh --detach runs it across calls)")
    p.add_argument("--grace-seconds", type=float, default=30.0,
                   help="after the deadline, this long before a plant still running is stopped (default 30)")
    p.add_argument("--throttled-seconds", type=float, default=80.0,
                   help="each run's measured throttled phase (default 80: a fork of minutes, judged over "
                        "150,000+ tokens per seed and run at 2000+ tokens/s; 5 runs, each after 15 s of the "
                        "seed alone, a 30 s baseline and a 5-probe oracle of 30 s probes fit 900 s)")
    p.add_argument("--port-base", type=int, default=None,
                   help="plant i's scheduler and agents listen from this port + 100 i (default: free ports)")
    p.add_argument("--quick", action="store_true", help="every plant with --quick: mechanics, not goals")
    p.add_argument("--compare", default=None, metavar="FIELD=VALUE,...",
                   help="also run every plant as <plant>-b with the agents' --throttle-tuning FIELD=VALUE,..., "
                        "side by side on CPUs of its own: two laws on one host at one time")
    p.add_argument("--estimate", action="store_true",
                   help="print how long each plant would take with these flags (and how many runs fit the "
                        "deadline), start nothing")
    return p


def tuning_error(tuning: str) -> str | None:
    """Why the agents would refuse ``--throttle-tuning tuning`` (None: they take it), said before any fleet starts.

        >>> tuning_error("plan_seconds=30"), tuning_error("plan_seconds=-1") is not None
        (None, True)
        >>> tuning_error("no_such_field=1").split(":")[0]
        '--throttle-tuning'
    """
    from throttle.controller import InvalidTuning, tuning_from_text

    if not tuning.strip():
        return "give FIELD=VALUE,... (the control law's fields, as rfork agent --throttle-tuning takes them)"
    try:
        tuning_from_text(tuning, 100e6)  # the cap is the agents' own; any valid one checks the rest
    except InvalidTuning as exc:
        return f"--throttle-tuning: {exc}"
    return None


def port_argv(args: argparse.Namespace, index: int) -> list[str]:
    """The ports plant ``index`` listens on: free ones, or ``--port-base`` + 100 x index up.

        >>> port_argv(argparse.Namespace(port_base=None), 2), port_argv(argparse.Namespace(port_base=30000), 2)
        ([], ['--port-base', '30200'])
    """
    return [] if args.port_base is None else ["--port-base", str(args.port_base + PORTS_PER_PLANT * index)]


def plant_argv(name: str, args: argparse.Namespace) -> list[str]:
    """The bench.qos_bench flags every plant gets from the battery's own flags (and those after --)."""
    argv = ["--plant", name, "--runs", str(args.runs)]
    argv += ["--quick"] if args.quick else ["--throttled-seconds", f"{args.throttled_seconds:g}"]
    return argv + args.bench_args


class _RaisingParser(argparse.ArgumentParser):
    """An argparse parser whose errors are a ValueError (the battery prints them as its one line)."""

    def error(self, message: str):  # type: ignore[override]
        raise ValueError(message)


def _bench_parser() -> argparse.ArgumentParser:
    from bench import qos_bench

    parser = _RaisingParser(prog="bench.qos_bench")
    qos_bench.add_arguments(parser)
    return parser


def bench_flags(args: argparse.Namespace, plant: str = "steady") -> argparse.Namespace:
    """The flags after ``--`` as bench.qos_bench reads them, abbreviations and ``--flag=value`` alike.

        >>> ns = argparse.Namespace(runs=5, quick=False, throttled_seconds=80.0,
        ...                         bench_args=["--control", "--oracle-probe-sec", "10"])
        >>> bench_flags(ns).control, bench_flags(ns).oracle_probe_seconds, bench_flags(ns).throttle_tuning
        (True, 10.0, None)
        >>> bench_flags(argparse.Namespace(runs=5, quick=True, bench_args=["--throttle-tuning=plan_seconds=10"])
        ...             ).throttle_tuning
        'plan_seconds=10'
    """
    return _bench_parser().parse_args(plant_argv(plant, args))


def estimate(args: argparse.Namespace, plants: list[str]) -> list[str]:
    """One line per plant: estimated seconds for its runs, and how many runs fit the deadline.

        >>> ns = argparse.Namespace(runs=5, quick=False, throttled_seconds=15.0, bench_args=[], deadline_seconds=450.0)
        >>> estimate(ns, ["steady"])[0].split(":")[0]
        'steady'
    """
    from bench import qos_bench

    lines = []
    for name in plants:
        bench_args = bench_flags(args, name)
        bench_args.device = "cpu"  # the estimate does not need the plant's device
        options, plant = qos_bench.options_from_args(bench_args)
        total = qos_bench.estimate_seconds(options, args.runs, loads=len(plant.loads()))
        per_run = qos_bench.estimate_run_seconds(options)
        fits = max(0, int((args.deadline_seconds - 5 - (total - args.runs * per_run)) // per_run))
        # Where the cap meets the budget the bisection ends at its first probe (v21's CPU plants: ~600 s, not ~865).
        at_cap = qos_bench.estimate_seconds(options, args.runs, loads=len(plant.loads()), oracle_probes=1)
        lines.append(f"{name}: about {total:.0f} s for {args.runs} runs ({total - args.runs * per_run:.0f} s to the "
                     f"oracle, {per_run:.0f} s a run); {min(fits, args.runs)} of {args.runs} runs fit the "
                     f"{args.deadline_seconds:.0f} s deadline; about {at_cap:.0f} s where the cap meets the budget "
                     f"(one oracle probe)")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    bench_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, bench_args = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    args.bench_args = bench_args
    if not (args.deadline_seconds > 0 and math.isfinite(args.deadline_seconds)):
        print(f"bench.qos_battery: error: --deadline-seconds must be > 0, got {args.deadline_seconds}", file=sys.stderr)
        return 2
    arms = 10 if args.compare is not None else 5  # every plant, and with --compare each twice
    if args.port_base is not None and not 1024 <= args.port_base <= 65535 - PORTS_PER_PLANT * arms:
        print(f"bench.qos_battery: error: --port-base must be 1024..{65535 - PORTS_PER_PLANT * arms} ({arms} "
              f"plants take {PORTS_PER_PLANT} ports each from it), got {args.port_base}", file=sys.stderr)
        return 2
    return run_battery(args)


if __name__ == "__main__":
    sys.exit(main())
