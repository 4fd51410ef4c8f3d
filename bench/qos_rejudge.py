"""Judge kept `rfork bench qos` results again with today's checks, from the runs' own measurements.

A check added after a battery ran (v21's ``throttled_share_vs_control``) has no entry in that
battery's JSON; every figure it reads does. This reads each result (``.json`` or the ``.json.gz``
kept in bench/results), judges every run with :func:`bench.qos_stats.judge_run` against the oracle
that run was judged by and the targets the result records, and prints a line a run and the plant's
tally (``qos_stats.tally``). A check whose verdict differs from the kept one is named: a judge that
changed is then seen, not silently applied. A result whose agents, scheduler and fork clients ran on
its seeds' CPUs (``qos_stats.cpu_layout_warning``: v21's and v22's GPU plant) says so in a line.

    python -m bench.qos_rejudge RESULT.json.gz [RESULT.json.gz ...]

Pure: :func:`rejudge` takes a result dict; only :func:`main` reads files.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.kept_results import add_results_argument, read_result
from bench.qos_stats import cpu_layout_warning, judge_run, met_where_the_control_met, tally, target_arguments

__all__ = ["rejudge", "main"]


class ResultError(ValueError):
    """A result without what judging needs; the message says what is missing."""


def rejudge(result: dict) -> tuple[list[dict], list[str]]:
    """(every run's checks judged now, the names of kept checks whose verdict changed, as ``run K: name``).

        >>> run = {"run": 1, "throttled_share_above_slo": 0.011, "throughput_throttled_bytes_per_second": 60e6,
        ...        "spike_cut_seconds": 0.2, "idle_to_cap_seconds": 1.0, "oracle_bytes_per_second": 50e6,
        ...        "control": {"share_above_slo": 0.014, "met_budget": False, "throughput_bytes_per_second": 50e6},
        ...        "checks": {"throttled_share_above_slo": {"met": False}}}
        >>> checks, changed = rejudge({"slo_budget": 0.01, "cap_bytes_per_second": 100e6, "runs": [run]})
        >>> checks[0]["throttled_share_vs_control"]["met"], met_where_the_control_met(checks[0]), changed
        (True, True, [])
    """
    needed = ("slo_budget", "cap_bytes_per_second", "runs")
    missing = [k for k in needed if not isinstance(result, dict) or k not in result]
    if missing:
        raise ResultError(f"no {', '.join(missing)}: not a `rfork bench qos --json` result")
    budget, cap, runs = result["slo_budget"], result["cap_bytes_per_second"], result["runs"]
    targets = result.get("targets") or {}
    judged, changed = [], []
    # A fixed-rate reference (`--fixed-fraction-of-oracle`) timed no reactions: nothing to judge there.
    reactions_judged = not (result.get("law") or {}).get("fixed_fraction_of_oracle")
    for run in runs:
        checks = judge_run(run, budget, cap, run.get("oracle_bytes_per_second"),
                           shared_oracle_throughput=run.get("shared_oracle_bytes_per_second"),
                           reactions_judged=reactions_judged, **target_arguments(targets))
        kept = run.get("checks") or {}
        changed += [f"run {run.get('run')}: {name}" for name in kept
                    if name in checks and kept[name].get("met") != checks[name]["met"]]
        judged.append(checks)
    return judged, changed


def _run_line(run: dict, checks: dict) -> str:
    """``run 2: every goal met; against the control: met (share 0.22% under its bar)``."""
    missed = [name for name, c in checks.items() if c["issue_target"] and c["met"] is False]
    line = f"  run {run.get('run')}: " + ("every goal met" if not missed else "MISSED " + ", ".join(missed))
    against = met_where_the_control_met(checks)
    if against is not None:
        line += f"; against the control: {'met' if against else 'MISSED'}"
        over = checks["throttled_share_vs_control"]["value"]
        if over is not None:
            line += f" (share {abs(over):.2%} {'over' if over > 0 else 'under'} its bar)"
    return line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.qos_rejudge", description=__doc__.split("\n\n")[0])
    add_results_argument(p)
    args = p.parse_args(argv)
    for path in args.results:
        try:
            result = read_result(path)
            judged, changed = rejudge(result)
        except (OSError, ValueError) as exc:
            print(f"python -m bench.qos_rejudge: {path}: {exc}", file=sys.stderr)
            return 2
        plant = result.get("plant")
        print(f"{path} ({plant.get('name', '?') if isinstance(plant, dict) else plant}, {len(judged)} runs)")
        options = result.get("options") if isinstance(result.get("options"), dict) else {}
        layout = cpu_layout_warning(options.get("seed_cpus"), options.get("control_seed_cpus"),
                                    options.get("process_cpus"))
        if layout:
            print(f"  layout: {layout}")
        for run, checks in zip(result["runs"], judged):
            print(_run_line(run, checks))
        print(f"  tally: {json.dumps(tally(judged))}")
        if changed:
            print(f"  verdicts that differ from the kept ones: {', '.join(changed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
