"""The serving-QoS benchmark's arithmetic, kept pure: intervals, the oracle's bisection, judging, summaries.

Nothing here does I/O or reads a clock; ``bench/qos_bench.py`` measures and calls these.

**Why the share of slow tokens gets a block interval, not a binomial one.** A
decode step emits one token for every running request, and every one of them
gets the same inter-token latency: a prefill or a transfer that stalls one step
puts the whole batch (32-128 tokens) over the SLO at once, and the queue a slow
step leaves slows the next ones too. The tokens are not independent trials, so
a Wilson interval over them is far too narrow (with a batch of 64, about
sqrt(64) = 8x when whole steps are slow). The interval the bench reports treats
each second of a phase as one observation: ``over_i`` slow tokens of ``n_i``,
the share the ratio estimator ``sum(over) / sum(n)``, its variance from how the
seconds differ (the cluster-robust variance of a ratio, as survey sampling uses
for clustered samples), and a Student t quantile for the number of seconds.
One second holds tens of steps, longer than the correlation a stall leaves in
the queue, so seconds are close to independent. The Wilson interval over tokens
is reported beside it (``naive_token_interval``) so the design effect is visible,
and bounds the block interval from inside: it is never narrower than Wilson's.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable

# Two-sided 95 % Student t quantiles by degrees of freedom (1..30); above 30 the normal's 1.96 is within 4 %.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (a table, then 1.96).

        >>> t_quantile_975(1), t_quantile_975(30), t_quantile_975(1000)
        (12.706, 2.042, 1.96)
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def wilson_interval(successes: float, trials: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson's score interval for a binomial share (``successes`` of ``trials``, independent).

        >>> lo, hi = wilson_interval(10, 1000); round(lo, 4), round(hi, 4)
        (0.0054, 0.0183)
        >>> wilson_interval(0, 0)
        (0.0, 1.0)
    """
    if trials <= 0:
        return 0.0, 1.0
    p = min(max(successes / trials, 0.0), 1.0)
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class ShareEstimate:
    """The share of tokens over a threshold in a phase, with a 95 % interval over its seconds."""

    share: float
    low: float
    high: float
    tokens: float
    blocks: int
    """Seconds (blocks) the interval was computed over."""
    naive_low: float
    naive_high: float
    """Wilson's interval over tokens as if independent: narrower than the truth (see the module docstring)."""

    @property
    def design_effect(self) -> float:
        """How much wider the block interval is than the naive one, squared (1 = tokens independent)."""
        naive = self.naive_high - self.naive_low
        return ((self.high - self.low) / naive) ** 2 if naive > 0 else math.nan

    def as_dict(self) -> dict:
        return {"share": self.share, "ci95": [self.low, self.high], "tokens": self.tokens, "blocks": self.blocks,
                "naive_token_interval": [self.naive_low, self.naive_high], "design_effect": self.design_effect}


def ratio_estimate(blocks: list[tuple[float, float]], centre: float | None = None) -> tuple[float, float]:
    """``sum(num) / sum(den)`` over ``blocks`` of (num, den), one per second, and that ratio's variance from
    how the seconds differ (the cluster-robust variance of a ratio; see the module). Blocks with ``den``
    <= 0 are skipped; NaN for both with fewer than two left. ``centre``: measure the spread around this
    instead of the ratio (:func:`block_share_interval`'s point estimate from elsewhere).

        >>> r, var = ratio_estimate([(1, 100), (0, 100), (3, 100), (0, 100)]); round(r, 4), round(var * 1e6, 2)
        (0.01, 50.0)
        >>> ratio_estimate([(1, 100)])
        (nan, nan)
    """
    good = [(num, den) for num, den in blocks if den > 0]
    m = len(good)
    if m < 2:
        return math.nan, math.nan
    total = sum(den for _, den in good)
    ratio = sum(num for num, _ in good) / total
    around = ratio if centre is None else centre
    mean_den = total / m
    return ratio, sum((num - around * den) ** 2 for num, den in good) / (m * (m - 1) * mean_den * mean_den)


def block_share_interval(blocks: list[tuple[float, float]], share: float | None = None) -> ShareEstimate | None:
    """Share of slow tokens over ``blocks`` of (slow tokens, tokens), one per second, with a 95 % interval.

    Ratio estimator with the cluster-robust variance (see the module docstring); blocks
    without tokens are skipped. None when no block has a token. ``share``: the point
    estimate from elsewhere (the phase's whole window, whose edges the blocks only
    approximate); the interval is then centred on it and the blocks' spread is
    measured around it, so blocks that all read 0 % do not make a 1 % share certain.

        >>> e = block_share_interval([(1, 100), (0, 100), (3, 100), (0, 100)])
        >>> round(e.share, 4), round(e.low, 4), round(e.high, 4)
        (0.01, 0.0, 0.0325)
        >>> block_share_interval([(0, 0)]) is None
        True
        >>> e = block_share_interval([(0, 100)] * 4, share=0.01); round(e.low, 4), round(e.high, 4)
        (0.0, 0.0284)
    """
    good = [(over, n) for over, n in blocks if n > 0]
    if not good:
        return None
    over_total = sum(o for o, _ in good)
    tokens = sum(n for _, n in good)
    if share is None:
        share = over_total / tokens
    m = len(good)
    naive_low, naive_high = wilson_interval(share * tokens, tokens)
    if m < 2:
        return ShareEstimate(share, 0.0, 1.0, tokens, m, naive_low, naive_high)
    _, variance = ratio_estimate(good, centre=share)
    half = t_quantile_975(m - 1) * math.sqrt(variance)
    # Never narrower than the binomial interval: independent tokens are the best case, and seconds that
    # happen to agree (all 0 %, say) must not make the share look certain.
    low, high = min(max(0.0, share - half), naive_low), max(min(1.0, share + half), naive_high)
    return ShareEstimate(share, low, high, tokens, m, naive_low, naive_high)


# --------------------------------------------------------------------------- the oracle's bisection


@dataclass(frozen=True)
class Probe:
    """One fixed per-seed rate held for a probe: did every seed keep its share of slow tokens within budget?"""

    rate: float
    met: bool


def bracket(probes: list[Probe]) -> tuple[float | None, float | None]:
    """(highest probed rate that met the budget, lowest probed rate above it that missed); None: none yet.

    A noisy measurement can make a lower rate miss while a higher one met; the
    bracket then keeps the highest rate that met and the lowest miss above it,
    and bisection goes on between them.

        >>> bracket([Probe(100, False), Probe(25, True), Probe(50, False)])
        (25, 50)
        >>> bracket([Probe(100, False), Probe(50, True), Probe(25, False)])
        (50, 100)
    """
    met = [p.rate for p in probes if p.met]
    low = max(met) if met else None
    missed = [p.rate for p in probes if not p.met and (low is None or p.rate > low)]
    return low, (min(missed) if missed else None)


def next_probe(probes: list[Probe], cap: float, floor: float, tolerance: float, max_probes: int) -> float | None:
    """The next fixed per-seed rate to probe, or None when the oracle is found (or the probes are spent).

    The first probe is the cap (the throttle off). Then bisection on a log
    scale between the highest rate that met and the lowest that missed,
    starting from [``floor``, cap]: rates span decades (a seed near its SLO
    leaves a few MB/s, an idle one the whole link), and a geometric midpoint
    halves the ratio's logarithm each step. It stops when high / low <=
    ``tolerance``; if nothing met yet and the bracket has shrunk to the floor,
    the floor itself is probed (and if it misses, no fixed rate >= floor meets).

        >>> next_probe([], 100.0, 6.25, 1.2, 5)
        100.0
        >>> next_probe([Probe(100, True)], 100.0, 6.25, 1.2, 5) is None   # the cap meets: the oracle is the cap
        True
        >>> next_probe([Probe(100, False)], 100.0, 6.25, 1.2, 5)          # sqrt(6.25 * 100)
        25.0
        >>> next_probe([Probe(100, False), Probe(25, True)], 100.0, 6.25, 1.2, 5)
        50.0
    """
    if not probes:
        return cap
    if len(probes) >= max_probes:
        return None
    low, high = bracket(probes)
    if high is None:
        return None  # the cap met
    if low is None:
        if high <= floor * tolerance:
            return None if any(p.rate <= floor for p in probes) else floor
        return math.sqrt(floor * high)
    if high / low <= tolerance:
        return None
    return math.sqrt(low * high)


def oracle_from(probes: list[Probe]) -> tuple[float | None, tuple[float | None, float | None]]:
    """(the best probed fixed rate that met the budget, the bracket it lies in).

        >>> oracle_from([Probe(100, False), Probe(25, True), Probe(50, False), Probe(35.4, True)])
        (35.4, (35.4, 50))
    """
    low, high = bracket(probes)
    return low, (low, high)


def next_run_probe(shared: float | None, shared_missed: float | None, probes: list[Probe], floor: float,
                   max_probes: int, tolerance: float = 1.2) -> float | None:
    """The next fixed rate to probe beside one run, or None when the run's oracle is known (or probes are spent).

    The oracle measured before the runs (``shared``; ``shared_missed``, the lowest rate that missed
    then) holds only while the seeds do what they did then, and the bench's seeds drifted toward their
    SLO between its oracle and its runs (docs/benchmarks.md, v11). So each run probes the shared oracle
    again, in its own minutes. If it still meets, the rate that missed before the runs is tried (the
    seeds may have eased); if it misses, the geometric midpoint between it and the floor, and so on down
    to the floor, as :func:`next_probe` does.

        >>> next_run_probe(100.0, None, [], 6.25, 2)
        100.0
        >>> next_run_probe(100.0, None, [Probe(100.0, True)], 6.25, 2) is None      # the cap still meets
        True
        >>> next_run_probe(12.5, 14.9, [Probe(12.5, True)], 6.25, 2)                # meets: the miss above it
        14.9
        >>> next_run_probe(100.0, None, [Probe(100.0, False)], 6.25, 2)             # misses: sqrt(6.25 * 100)
        25.0
        >>> next_run_probe(100.0, None, [Probe(100.0, False), Probe(7.0, False)], 6.25, 3)   # the floor last
        6.25
        >>> next_run_probe(None, 6.25, [], 6.25, 2) is None                         # no oracle to check
        True
    """
    if shared is None or len(probes) >= max_probes:
        return None
    if not probes:
        return shared
    low, high = bracket(probes)
    probed = {p.rate for p in probes}
    if low is not None:
        if high is None and shared_missed is not None and low < shared_missed and shared_missed not in probed:
            return shared_missed
        return None
    below = min(probed)
    if below <= floor * tolerance:
        return None if below <= floor else floor
    return math.sqrt(floor * below)


# --------------------------------------------------------------------------- judging and summaries

# Issue #16's goals (each in every run) and, as context, issue #3's: what :func:`judge_run` judges by, and what
# ``bench.qos_bench`` records as a result's ``targets``.
TARGETS = {
    "throttled_share_above_slo_max": "the budget",
    "throttled_vs_oracle_min": 0.8,
    "spike_cut_max_seconds": 1.0,
    "idle_cap_fraction": 0.95,
    "idle_to_cap_max_seconds": 5.0,
    "unthrottled_vs_baseline_min": 1.5,
    "throttled_vs_baseline_max": 1.15,
    "spike_reaction_max_seconds": 3.0,
    "recovery_max_seconds": 20.0,
    "recovery_fraction_of_cap": 0.9,
    # Context: the host checks (qos_stats.HOST_CHECKS). The slowest and the fastest seed's tokens/s before a run
    # against their calibration's; outside these the run's host is not the plant the SLO and the oracle were
    # measured on (faster: the SLO is loose and the oracle low).
    "host_speed_min_fraction": 0.9,
    "host_speed_max_fraction": 1.25,
}


@dataclass(frozen=True)
class Check:
    value: float | None
    target: str
    """``"<= 0.01"`` or ``">= 0.8"``."""
    issue_target: bool = True
    """An issue #16 goal (judged in every run); False: context kept from earlier issues."""
    missing_is_a_miss: bool = False
    """No value means the event never came within its window (a rate never cut, never back at the cap): a
    miss. Otherwise no value means there is nothing to judge (no TTFT SLO, no oracle): ``met`` is None."""

    def met(self) -> bool | None:
        """Whether ``value`` meets ``target``; None when there is nothing to judge."""
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return False if self.missing_is_a_miss else None
        op, bound = self.target.split()
        return self.value >= float(bound) if op == ">=" else self.value <= float(bound)

    def as_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "met": self.met(), "issue_target": self.issue_target}


#: A result's ``targets`` (:data:`TARGETS`) -> the :func:`judge_run` keyword each sets.
_TARGET_ARGUMENTS = {"spike_cut_max_seconds": "spike_cut_max_seconds", "idle_cap_fraction": "idle_cap_fraction",
                     "idle_to_cap_max_seconds": "idle_max_seconds", "host_speed_min_fraction": "host_speed_min",
                     "host_speed_max_fraction": "host_speed_max"}


def target_arguments(targets: dict) -> dict:
    """:func:`judge_run`'s keyword arguments from a result's ``targets``; one it does not give keeps its default.

        >>> target_arguments({"spike_cut_max_seconds": 1.0, "idle_to_cap_max_seconds": 5.0, "recovery_max_seconds": 20})
        {'spike_cut_max_seconds': 1.0, 'idle_max_seconds': 5.0}
    """
    return {argument: targets[key] for key, argument in _TARGET_ARGUMENTS.items() if key in targets}


def judge_run(run: dict, budget: float, cap: float, oracle_throughput: float | None,
              spike_cut_max_seconds: float = TARGETS["spike_cut_max_seconds"],
              idle_cap_fraction: float = TARGETS["idle_cap_fraction"],
              idle_max_seconds: float = TARGETS["idle_to_cap_max_seconds"],
              shared_oracle_throughput: float | None = None,
              host_speed_min: float = TARGETS["host_speed_min_fraction"],
              host_speed_max: float = TARGETS["host_speed_max_fraction"], reactions_judged: bool = True) -> dict:
    """Issue #16's goals for one run (plus issue #3's as context), each as ``Check.as_dict()``.

    ``run`` holds the run's measurements under the names ``bench/qos_bench.py``
    writes. ``met`` is None where the check cannot be judged: no TTFT SLO, or
    no fixed rate met the budget (then there is no oracle to compare with). A
    time that never came within its window (None) is a miss. ``oracle_throughput``
    is the run's own oracle where it was probed beside the run; the shared one
    (``shared_oracle_throughput``, measured before the runs) is kept as context. ``reactions_judged``
    False: the run held a fixed rate (``rfork bench qos --fixed-fraction-of-oracle``), so the spike, idle
    and recovery times have nothing to judge (``met`` None), not a miss.

        >>> r = {"throttled_share_above_slo": 0.008, "throttled_ttft_share_above_slo": None,
        ...      "throughput_throttled_bytes_per_second": 90e6, "spike_cut_seconds": 0.6,
        ...      "idle_to_cap_seconds": 2.5, "itl_p99_throttled_seconds": 0.02, "slo_itl_seconds": 0.021,
        ...      "itl_p99_baseline_seconds": 0.018, "itl_p99_unthrottled_seconds": 0.03,
        ...      "throughput_idle_bytes_per_second": 199e6, "spike_reaction_seconds": 1.2, "recovery_seconds": 3.0}
        >>> c = judge_run(r, 0.01, 100e6, 100e6)
        >>> c["throttled_share_above_slo"]["met"], c["throttled_vs_oracle"]["value"], c["throttled_ttft_share_above_slo"]["met"]
        (True, 0.9, None)
        >>> fixed = {**r, "spike_cut_seconds": None, "idle_to_cap_seconds": None}
        >>> judge_run(fixed, 0.01, 100e6, 100e6)["spike_cut_seconds"]["met"]
        False
        >>> judge_run(fixed, 0.01, 100e6, 100e6, reactions_judged=False)["spike_cut_seconds"]["met"] is None
        True
    """
    def ratio(a, b):
        return a / b if a is not None and b else None

    checks = {
        "throttled_share_above_slo": Check(run.get("throttled_share_above_slo"), f"<= {budget:g}"),
        "throttled_ttft_share_above_slo": Check(run.get("throttled_ttft_share_above_slo"), f"<= {budget:g}"),
        "throttled_vs_oracle": Check(ratio(run.get("throughput_throttled_bytes_per_second"), oracle_throughput),
                                     f">= {TARGETS['throttled_vs_oracle_min']:g}"),
        "spike_cut_seconds": Check(run.get("spike_cut_seconds"), f"<= {spike_cut_max_seconds:g}",
                                   missing_is_a_miss=reactions_judged),
        "idle_to_cap_seconds": Check(run.get("idle_to_cap_seconds"), f"<= {idle_max_seconds:g}",
                                     missing_is_a_miss=reactions_judged),
        "throttled_vs_shared_oracle": Check(ratio(run.get("throughput_throttled_bytes_per_second"),
                                                  shared_oracle_throughput),
                                            f">= {TARGETS['throttled_vs_oracle_min']:g}", False),
        # Did the host keep the speed the SLO and the oracle were measured at? (the slowest seed's tokens/s
        # before the run over its calibration's)
        "seed_speed_vs_calibration": Check(run.get("seed_speed_vs_calibration"), f">= {host_speed_min:g}", False),
        # ... and did none run much faster? A seed faster than at its calibration sits further under the SLO
        # chosen there, and the oracle probed there is too low: both goals get easier than the plant's (v36's
        # seeds at 1.4-1.7x their calibration). The fastest seed's ratio, from the same watch.
        "seed_fastest_speed_vs_calibration": Check(_most(run.get("seed_speed_vs_calibration_per_seed")),
                                                   f"<= {host_speed_max:g}", False),
        # Did the seeds alone still leave the transfer room? (the most any seed's agent read of its seed's
        # own share over the SLO at the phase's end). Over the budget, no rate, not even 0, meets it.
        "seed_alone_share_above_slo": Check(_most(run.get("throttled_seed_alone_share_per_seed")),
                                            f"<= {budget:g}", False),
        # Issue #3's targets, kept as context for comparison with the earlier runs.
        "unthrottled_p99_vs_baseline": Check(ratio(run.get("itl_p99_unthrottled_seconds"),
                                                   run.get("itl_p99_baseline_seconds")),
                                             f">= {TARGETS['unthrottled_vs_baseline_min']:g}", False),
        "throttled_p99_vs_baseline": Check(ratio(run.get("itl_p99_throttled_seconds"),
                                                 run.get("itl_p99_baseline_seconds")),
                                           f"<= {TARGETS['throttled_vs_baseline_max']:g}", False),
        "throttled_p99_vs_slo": Check(ratio(run.get("itl_p99_throttled_seconds"), run.get("slo_itl_seconds")),
                                      "<= 1.0", False),
        "idle_vs_cap": Check(ratio(run.get("throughput_idle_bytes_per_second"),
                                   run.get("cap_aggregate_bytes_per_second")), f">= {idle_cap_fraction:g}", False),
        "spike_reaction_seconds": Check(run.get("spike_reaction_seconds"),
                                        f"<= {TARGETS['spike_reaction_max_seconds']:g}", False,
                                        missing_is_a_miss=reactions_judged),
        "recovery_seconds": Check(run.get("recovery_seconds"), f"<= {TARGETS['recovery_max_seconds']:g}", False,
                                  missing_is_a_miss=reactions_judged),
    }
    control = run.get("control")
    if control is not None:
        # Context (--control): the fixed rate of the law fleet's oracle, in the same seconds and under the
        # same SLO. The law's throughput is read against the control's only where the control met the
        # budget: where it did not, that rate was over the oracle of those minutes.
        checks["control_share_above_slo"] = Check(control.get("share_above_slo"), f"<= {budget:g}", False)
        checks["throttled_vs_control"] = Check(
            ratio(run.get("throughput_throttled_bytes_per_second"), control.get("throughput_bytes_per_second"))
            if control.get("met_budget") else None, f">= {TARGETS['throttled_vs_oracle_min']:g}", False)
        # The law's share against what the oracle's rate did in the same seconds: within the budget, or, where
        # that rate missed the budget too, no more slow tokens than it had (0 or less: no worse).
        law_share, control_share = run.get("throttled_share_above_slo"), control.get("share_above_slo")
        checks["throttled_share_vs_control"] = Check(
            None if law_share is None or control_share is None else law_share - max(budget, control_share),
            "<= 0", False)
    return {name: c.as_dict() for name, c in checks.items()}


def cpu_layout_warning(seed_cpus: Iterable[int] | None, control_seed_cpus: Iterable[int] | None,
                       process_cpus: Iterable[int] | None) -> str | None:
    """A line where the bench's CPUs are laid out otherwise than its design (the seeds on CPUs of their own,
    the control's seeds on others, the agents, scheduler and fork clients on the rest), else None. Takes the
    CPU lists of the bench's options, as its JSON keeps them.

    The fork clients work on every byte read, so with them on a seed's CPU the transfer's cost is partly CPU
    time taken from the seed, which a seed on a host of its own does not pay (v21's and v22's GPU plant,
    docs/benchmarks.md); with the law's and the control's seeds on one CPU, each fleet's load is the other's.

        >>> cpu_layout_warning([0, 1], [2, 3], [0, 1, 2, 3])
        "the agents, scheduler and fork clients share the seeds' CPUs 0, 1, 2, 3: give the bench more --cpus"
        >>> cpu_layout_warning([0], [0], [1])
        "the law's and the control's seeds share CPU 0: give the bench more --cpus"
        >>> cpu_layout_warning([0, 1], [3, 4], [2, 5]) is None
        True
    """
    seeds, control = set(seed_cpus or ()), set(control_seed_cpus or ())
    problems = []
    on_seeds = set(process_cpus or ()) & (seeds | control)
    if on_seeds:
        problems.append(f"the agents, scheduler and fork clients share the seeds' CPUs {_cpu_list(on_seeds)}")
    both = seeds & control
    if both:
        problems.append(f"the law's and the control's seeds share CPU{'s' if len(both) > 1 else ''} {_cpu_list(both)}")
    return "; ".join(problems) + ": give the bench more --cpus" if problems else None


def _cpu_list(cpus: set[int]) -> str:
    return ", ".join(map(str, sorted(cpus)))


def all_met(checks: dict) -> bool:
    """Every issue target that could be judged was met (a None ``met`` - nothing to judge - does not fail).

        >>> all_met({"a": {"met": True, "issue_target": True}, "b": {"met": None, "issue_target": True},
        ...          "c": {"met": False, "issue_target": False}})
        True
    """
    return all(c["met"] is not False for c in checks.values() if c["issue_target"])


#: The context checks that say whether the host still was the plant the SLO and the oracle were measured on.
HOST_CHECKS = ("seed_speed_vs_calibration", "seed_fastest_speed_vs_calibration", "seed_alone_share_above_slo")


def host_held(checks: dict) -> bool:
    """The run's host was the calibration's: no host check missed (one that could not be judged does not count).

        >>> host_held({"seed_speed_vs_calibration": {"met": True}, "seed_alone_share_above_slo": {"met": None}})
        True
        >>> host_held({"seed_speed_vs_calibration": {"met": True}, "seed_alone_share_above_slo": {"met": False}})
        False
    """
    return all(checks.get(name, {}).get("met") is not False for name in HOST_CHECKS)


def wants_another_run(runs_checks: list[dict], runs: int, extra_runs: int) -> bool:
    """Whether to start another run: until ``runs`` are done, then, up to ``extra_runs`` more, while fewer than
    ``runs`` of them had the host hold (:func:`host_held`; ``--extra-runs-where-host-missed``).

    A run whose seeds had drifted off the plant the SLO and the oracle were measured on (one slower than
    ``--host-speed-min``, 0.9, or faster than ``--host-speed-max``, 1.25, of its calibration, or alone over the
    budget) judges the host, not the law: it is reported with the others and another run follows it, so the
    plant still gets ``runs`` runs on the host it was measured on. These checks are read outside the law's reach
    (the watch before the run; the off windows).

        >>> ok, slow = {"seed_speed_vs_calibration": {"met": True}}, {"seed_speed_vs_calibration": {"met": False}}
        >>> [wants_another_run(done, 2, 1) for done in ([], [ok], [ok, ok], [ok, slow], [ok, slow, ok])]
        [True, True, False, True, False]
        >>> wants_another_run([slow, slow, slow], 2, 1), wants_another_run([ok, slow], 2, 0)
        (False, False)
    """
    done = len(runs_checks)
    if done < runs:
        return True
    return sum(host_held(c) for c in runs_checks) < runs and done < runs + extra_runs


def where_host_held(runs: list[dict], first: int) -> dict | None:
    """The first ``first`` runs where the host held (``runs[]`` entries with ``run`` and ``checks``): their
    numbers, the summary of their checks (:func:`summarize`) and whether each met every goal; None where
    every run's host held (nothing to set apart).

        >>> ok = {"g": {"value": 1.0, "target": ">= 0.8", "met": True, "issue_target": True}}
        >>> slow = dict(ok, seed_speed_vs_calibration={"value": 0.7, "target": ">= 0.9", "met": False,
        ...                                             "issue_target": False})
        >>> held = where_host_held([{"run": 1, "checks": ok}, {"run": 2, "checks": slow}, {"run": 3, "checks": ok}], 2)
        >>> held["runs"], held["met_every_goal"], held["every_run_met_every_goal"], held["summary"]["g"]["met_runs"]
        ([1, 3], 2, True, 2)
        >>> where_host_held([{"run": 1, "checks": ok}], 1) is None
        True
    """
    if all(host_held(r["checks"]) for r in runs):
        return None
    kept = [r for r in runs if host_held(r["checks"])][:first]
    met = sum(all_met(r["checks"]) for r in kept)
    return {"runs": [r["run"] for r in kept], "summary": summarize([r["checks"] for r in kept]),
            "met_every_goal": met, "every_run_met_every_goal": bool(kept) and met == len(kept)}


#: With ``--control``, the goals read against the oracle's rate in the same seconds in place of the share and
#: throughput goals (``met_where_the_control_met``).
CONTROL_GOALS = ("throttled_share_vs_control", "throttled_vs_control")
_GOALS_THE_CONTROL_REPLACES = ("throttled_share_above_slo", "throttled_vs_oracle")


def met_where_the_control_met(checks: dict) -> bool | None:
    """Every goal, with the share and throughput goals read against the control (``--control``) instead:
    the share within the budget or no worse than the oracle's fixed rate in the same seconds, and the
    throughput >= 0.8x that rate's where it met the budget. None: the run had no control.

    The oracle is measured minutes before the runs; where the seeds have since drifted, no fixed rate may
    meet the budget, or the oracle's may now be over it. This says whether the law did as well as that
    rate did in the seconds it was judged in (context: the issue's bar is the goals as they are).

        >>> goal = lambda met, issue=True: {"met": met, "issue_target": issue}
        >>> checks = {"throttled_share_above_slo": goal(False), "throttled_vs_oracle": goal(True),
        ...           "spike_cut_seconds": goal(True), "throttled_share_vs_control": goal(True, False),
        ...           "throttled_vs_control": goal(None, False)}
        >>> met_where_the_control_met(checks)     # over the budget, but under the control's share
        True
        >>> met_where_the_control_met({**checks, "spike_cut_seconds": goal(False)})
        False
        >>> met_where_the_control_met({"throttled_share_above_slo": goal(True)}) is None
        True
    """
    if any(name not in checks for name in CONTROL_GOALS):
        return None
    kept = [c for name, c in checks.items() if c["issue_target"] and name not in _GOALS_THE_CONTROL_REPLACES]
    return all(c["met"] is not False for c in kept + [checks[name] for name in CONTROL_GOALS])


def tally(runs_checks: list[dict]) -> dict:
    """How many runs met every goal, over all runs and over those where the host held (``host_held``),
    and, for runs with a control fleet, how many met every goal read against it (``met_where_the_control_met``).

    The issue's bar is every run; this says how many of the misses came in minutes when the seeds alone
    had drifted off the plant the SLO and the oracle were measured on (read as context, not an excuse).

        >>> def run(goal, speed=None):
        ...     speed = {} if speed is None else {"seed_speed_vs_calibration": {"met": speed, "issue_target": False}}
        ...     return {"g": {"met": goal, "issue_target": True}, **speed}
        >>> ok, slow, miss = run(True, True), run(False, False), run(False)
        >>> tally([ok, slow, miss])
        {'runs': 3, 'met_every_goal': 1, 'host_held': 2, 'host_held_met_every_goal': 1, 'with_control': 0, 'met_where_the_control_met': 0}
    """
    held = [c for c in runs_checks if host_held(c)]
    against_control = [v for v in map(met_where_the_control_met, runs_checks) if v is not None]
    return {"runs": len(runs_checks), "met_every_goal": sum(all_met(c) for c in runs_checks),
            "host_held": len(held), "host_held_met_every_goal": sum(all_met(c) for c in held),
            "with_control": len(against_control), "met_where_the_control_met": sum(against_control)}


def summarize(runs_checks: list[dict]) -> dict:
    """Per check over runs: min / median / max of the values, and in how many runs it was met.

        >>> s = summarize([{"x": {"value": 1.0, "target": ">= 0.8", "met": True, "issue_target": True}},
        ...                {"x": {"value": 0.5, "target": ">= 0.8", "met": False, "issue_target": True}},
        ...                {"x": {"value": None, "target": ">= 0.8", "met": None, "issue_target": True}}])
        >>> s["x"]["min"], s["x"]["median"], s["x"]["max"], s["x"]["met_runs"], s["x"]["judged_runs"], s["x"]["every_run"]
        (0.5, 0.75, 1.0, 1, 2, False)
        >>> summarize([{"ttft": {"value": None, "target": "<= 0.01", "met": None, "issue_target": True}}])["ttft"]["every_run"] is None
        True
    """
    names: list[str] = []
    for checks in runs_checks:
        names += [n for n in checks if n not in names]
    out = {}
    for name in names:
        entries = [c[name] for c in runs_checks if name in c]
        values = [e["value"] for e in entries if e["value"] is not None and not _nan(e["value"])]
        judged = [e["met"] for e in entries if e["met"] is not None]
        out[name] = {
            "target": entries[0]["target"], "issue_target": entries[0]["issue_target"],
            "min": min(values) if values else None,
            "median": statistics.median(values) if values else None,
            "max": max(values) if values else None,
            "values": [e["value"] for e in entries],
            "runs": len(entries), "judged_runs": len(judged), "met_runs": sum(judged),
            # The issue's bar: met in every run where it could be judged; None: judged in no run.
            "every_run": all(judged) if judged else None,
        }
    return out


def _most(values: list | None) -> float | None:
    """The largest of ``values`` that is a number (None: none is)."""
    numbers = [v for v in values or () if v is not None and not _nan(v)]
    return max(numbers) if numbers else None


def _nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)
