"""How often a *fixed* rate meets issue #16's per-run goals when its oracle is the bench's: a calibration of
the goals, not of a law.

`rfork bench qos` judges a run's throughput against an oracle it probes first (the highest fixed rate whose
30 s probe kept every seed within the budget, by log bisection from the cap down to the floor) and the run's
share over its own 80 s. Both are samples of a noisy seed, and the oracle is the best of its probes (it is
biased upward: a probe that was lucky sets it). So even the cheapest fixed rate that meets the throughput
goal, F x the oracle with F just over 0.8 (``rfork bench qos --fixed-fraction-of-oracle``, v41), misses the
share goal in some runs on a plant whose oracle sits under the cap, and "every goal in 5 consecutive runs"
happens with that probability to the fifth.

This module replays exactly that on the simulated plants (``sim.qos_plant``): per draw, the plant's
parameters, the bench's probes on fresh seconds of each seed, then an 80 s run at F x the oracle on fresh
seconds, judged on the worst seed. Pure and seeded, no I/O.

    >>> from sim.qos_plant import PLANTS
    >>> run = fixed_reference_run(PLANTS["steady"], rng_seed=0, fraction_of_oracle=0.82)
    >>> run.oracle_bytes_per_second <= 100e6, run.rate_bytes_per_second == 0.82 * run.oracle_bytes_per_second
    (True, True)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from bench.qos_stats import TARGETS, Probe, next_probe, oracle_from
from sim.qos_plant import BUDGET, CAP, NAMED_PLANTS, PLANTS, Plant, draw_seconds, run_second_fork
from throttle.controller import ControllerConfig

__all__ = ["FixedReferenceRun", "FeasibilitySummary", "LawRun", "bench_oracle", "fixed_reference_run", "law_run",
           "summarize_runs",
           "PROBE_SECONDS", "RUN_SECONDS", "SEEDS", "FLOOR_FRACTION", "MAX_PROBES", "TOLERANCE"]

#: The bench's defaults (``QosBenchOptions``): seconds a probe holds its rate, seconds of a throttled phase,
#: seeds a plant runs, the law's yield floor where bisection stops, probes including the cap's, and the
#: bracket at which bisection stops.
PROBE_SECONDS = 30
RUN_SECONDS = 80
SEEDS = 2
FLOOR_FRACTION = 0.01
MAX_PROBES = 6
TOLERANCE = 1.2


def _worst_share(plant: Plant, segments: list, rate: float, seconds: int, seeds: int, rng: random.Random) -> float:
    """The worst seed's share over ``seconds`` fresh seconds each, the transfer at ``rate``. The window is the
    middle of the plant's run, as the bench's probes and throttled phases put a plant's load change in the
    middle of each (``Plant.schedule``); a plant without one is the same anywhere."""
    start = max(0, int(plant.seconds / 2 - seconds / 2))
    worst = 0.0
    for _ in range(seeds):
        drawn = draw_seconds(plant, segments, seconds, rng, start)
        tokens = sum(s.tokens for s in drawn)
        worst = max(worst, sum(s.slow_tokens(rate) for s in drawn) / tokens if tokens else 0.0)
    return worst


def bench_oracle(plant: Plant, segments: list, rng: random.Random, *, budget: float = BUDGET,
                 probe_seconds: int = PROBE_SECONDS, seeds: int = SEEDS, floor_fraction: float = FLOOR_FRACTION,
                 max_probes: int = MAX_PROBES, tolerance: float = TOLERANCE) -> float | None:
    """The oracle as the bench finds it (``bench.qos_stats.next_probe``, ``oracle_from``): None where no probe met."""
    probes: list[Probe] = []
    while (rate := next_probe(probes, CAP, floor_fraction * CAP, tolerance, max_probes)) is not None:
        probes.append(Probe(rate, _worst_share(plant, segments, rate, probe_seconds, seeds, rng) <= budget))
    return oracle_from(probes)[0]


@dataclass(frozen=True)
class FixedReferenceRun:
    plant: str
    rng_seed: int
    #: The bench's oracle on this draw (None: no probe met the budget, so no fixed rate is judged).
    oracle_bytes_per_second: float | None
    rate_bytes_per_second: float | None
    #: The worst seed's share over the run at that rate.
    share: float | None
    budget: float = BUDGET

    @property
    def within_budget(self) -> bool | None:
        return None if self.share is None else self.share <= self.budget

    @property
    def oracle_under_cap(self) -> bool:
        return self.oracle_bytes_per_second is None or self.oracle_bytes_per_second < CAP


def _probe_rng(rng_seed: int) -> random.Random:
    """The oracle's probes draw from a stream of their own: a run's seconds (the fixed rate's here, the law's in
    :func:`law_run`, which draws them as ``sim.qos_plant`` does from ``rng_seed``) are never a probe's."""
    return random.Random(f"bench-oracle-{rng_seed}")


def fixed_reference_run(plant: Plant, rng_seed: int, fraction_of_oracle: float, *, budget: float = BUDGET,
                        run_seconds: int = RUN_SECONDS, seeds: int = SEEDS, **oracle_options) -> FixedReferenceRun:
    """One draw: the plant's parameters, the bench's oracle, then a run at ``fraction_of_oracle`` x it."""
    rng = random.Random(rng_seed)
    segments = plant.segments(rng, plant.seconds)
    oracle = bench_oracle(plant, segments, _probe_rng(rng_seed), budget=budget, **oracle_options)
    if oracle is None:
        return FixedReferenceRun(plant.name, rng_seed, None, None, None, budget)
    rate = fraction_of_oracle * oracle
    return FixedReferenceRun(plant.name, rng_seed, oracle, rate,
                             _worst_share(plant, segments, rate, run_seconds, seeds, rng), budget)


#: The law's run as ``python -m sim.qos_plant --seconds 80 --warmup 0 --second-fork-after 16 --idle-in-gap 4
#: --spike-in-gap 4 --chunk-bytes 8388608`` runs it: the bench's 80 s phase, the next fork to a law that kept what
#: it learnt, after the idle, spike and recovery tests, reading whole 8 MiB chunks.
LAW_GAP_SECONDS = 16
LAW_IDLE_SECONDS = 4
LAW_SPIKE_SECONDS = 4
LAW_CHUNK_BYTES = 8 * 2**20


@dataclass(frozen=True)
class LawRun:
    plant: str
    rng_seed: int
    oracle_bytes_per_second: float | None
    throughput_bytes_per_second: float
    #: The seed's share over the judged fork (one seed: the sim's law runs one).
    share: float
    budget: float = BUDGET

    @property
    def within_budget(self) -> bool:
        return self.share <= self.budget

    @property
    def throughput_met(self) -> bool | None:
        """>= 0.8x the bench's oracle (issue #16's throughput goal); None where no probe met."""
        if self.oracle_bytes_per_second is None:
            return None
        return self.throughput_bytes_per_second >= TARGETS["throttled_vs_oracle_min"] * self.oracle_bytes_per_second

    @property
    def both_goals(self) -> bool | None:
        met = self.throughput_met
        return None if met is None else met and self.within_budget


def law_run(plant: Plant, rng_seed: int, config: ControllerConfig, *, budget: float = BUDGET,
            **oracle_options) -> LawRun:
    """The A/B law (``config``) on one draw, judged as the bench judges it: against the oracle
    :func:`fixed_reference_run` finds on the same draw (same parameters, same probes)."""
    segments = plant.segments(random.Random(rng_seed), plant.seconds)
    oracle = bench_oracle(plant, segments, _probe_rng(rng_seed), budget=budget, **oracle_options)
    bench_like = replace(plant, seconds=float(RUN_SECONDS), warmup_seconds=0.0)
    result = run_second_fork(bench_like, config, rng_seed, LAW_GAP_SECONDS, law_restarts=False, budget=budget,
                             chunk_bytes=LAW_CHUNK_BYTES, idle_seconds=LAW_IDLE_SECONDS,
                             spike_seconds=LAW_SPIKE_SECONDS)
    return LawRun(plant.name, rng_seed, oracle, result.throughput_bytes_per_second, result.realized_share, budget)


@dataclass(frozen=True)
class FeasibilitySummary:
    runs: int
    judged: int
    within_budget: int
    under_cap: int
    under_cap_within_budget: int

    @staticmethod
    def _rate(k: int, n: int) -> float | None:
        return k / n if n else None

    @property
    def within_budget_rate(self) -> float | None:
        return self._rate(self.within_budget, self.judged)

    @property
    def under_cap_rate(self) -> float | None:
        return self._rate(self.under_cap_within_budget, self.under_cap)

    def five_in_a_row(self, rate: float | None, streak: int = 5) -> float | None:
        """The chance that ``streak`` independent runs all meet, at a per-run ``rate``."""
        return None if rate is None else rate ** streak


def summarize_runs(runs: list[FixedReferenceRun]) -> FeasibilitySummary:
    """Counts over ``runs``; draws where no probe met are not judged.

        >>> r = [FixedReferenceRun("p", 0, CAP, 0.8 * CAP, 0.005), FixedReferenceRun("p", 1, 40e6, 32e6, 0.012),
        ...      FixedReferenceRun("p", 2, 40e6, 32e6, 0.009), FixedReferenceRun("p", 3, None, None, None)]
        >>> s = summarize_runs(r)
        >>> s.judged, s.within_budget, s.under_cap, s.under_cap_within_budget, s.under_cap_rate
        (3, 2, 2, 1, 0.5)
        >>> s.five_in_a_row(s.under_cap_rate)
        0.03125
    """
    judged = [r for r in runs if r.share is not None]
    under = [r for r in judged if r.oracle_under_cap]
    return FeasibilitySummary(len(runs), len(judged), sum(bool(r.within_budget) for r in judged), len(under),
                              sum(bool(r.within_budget) for r in under))


def _text(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.2f}"


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - a report for docs; the functions are tested
    import argparse
    import sys

    from throttle.controller import InvalidTuning, tuning_from_text

    every = NAMED_PLANTS
    parser = argparse.ArgumentParser(
        prog="python -m sim.goal_feasibility",
        description="how often a fixed rate at F x the bench's oracle meets the share goal in a run, per plant; "
                    "with --law, beside the A/B law judged the same way")
    parser.add_argument("--plants", default=",".join(PLANTS), help=f"comma-separated, of: {', '.join(every)}")
    parser.add_argument("--runs", type=int, default=200, help="draws per plant (default 200)")
    parser.add_argument("--fraction", type=float, default=0.82,
                        help="the fixed rate as a fraction of the oracle (default 0.82: the throughput goal's edge)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--law", action="store_true",
                        help="also run the A/B law on each draw (the bench's kept-law 80 s fork, one seed) and "
                             "compare, on the draws whose oracle sits under the cap, its runs meeting both goals "
                             "with the fixed rate's runs within the budget (one seed too)")
    parser.add_argument("--tuning", action="append", default=[], metavar="FIELD=VALUE",
                        help="with --law: a ControllerConfig field for the law (repeatable)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.plants.split(",") if n.strip()]
    unknown = [n for n in names if n not in every]
    if unknown or not names:
        print(f"--plants: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(every)}", file=sys.stderr)
        return 2
    if args.runs < 1 or not 0 < args.fraction < 100:
        print("--runs must be at least 1 and --fraction a fraction of the oracle > 0", file=sys.stderr)
        return 2
    try:
        config = tuning_from_text(",".join(args.tuning), CAP)
    except InvalidTuning as exc:
        print(f"--tuning: {exc}", file=sys.stderr)
        return 2
    seeds = range(args.first_seed, args.first_seed + args.runs)
    if args.law:
        print(f"| plant | draws with the oracle under the cap | the law: within the budget | >= 0.8x the oracle | "
              f"both goals | a fixed {args.fraction:g}x: within the budget |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name in names:
            laws = [law_run(every[name], seed, config) for seed in seeds]
            fixed = {r.rng_seed: r for r in (fixed_reference_run(every[name], seed, args.fraction, seeds=1)
                                             for seed in seeds)}
            under = [r for r in laws if r.oracle_bytes_per_second is not None and r.oracle_bytes_per_second < CAP]
            n = len(under)

            def count(flags) -> str:
                k = sum(bool(f) for f in flags)
                return f"{k} ({_text(k / n if n else None)})"

            print(f"| `{name}` | {n} of {len(laws)} | {count(r.within_budget for r in under)} | "
                  f"{count(r.throughput_met for r in under)} | {count(r.both_goals for r in under)} | "
                  f"{count(fixed[r.rng_seed].within_budget for r in under)} |")
        return 0
    print(f"| plant | draws | oracle under the cap | within the budget at {args.fraction:g}x: all | "
          "five in a row | under the cap | five in a row |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        runs = [fixed_reference_run(every[name], seed, args.fraction) for seed in seeds]
        s = summarize_runs(runs)
        print(f"| `{name}` | {s.judged} of {s.runs} | {s.under_cap} | "
              f"{s.within_budget} ({_text(s.within_budget_rate)}) "
              f"| {_text(s.five_in_a_row(s.within_budget_rate))} | {s.under_cap_within_budget} of {s.under_cap} "
              f"({_text(s.under_cap_rate)}) | {_text(s.five_in_a_row(s.under_cap_rate))} |")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
