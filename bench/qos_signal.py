"""How much each signal says about the transfer's effect on a seed, from a `rfork bench qos` result.

The A/B law (docs/qos.md) judges the transfer by counting tokens over the ITL SLO with the transfer
on and off. Where the seed alone uses most of the budget that count is thin: at ~140 decode steps a
second and 0.7 % of tokens over the SLO a seed has about one slow step a second, and bounding what
the transfer adds to within a quarter of a 1 % budget takes tens of seconds at each rate. The mean
ITL (every token, from the histogram's ``_sum``) is far less noisy. It says what the transfer adds
over the SLO only through a model of the effect's shape; this module tests one on measured data:

* **scale**: the transfer stretches every decode step by the same factor ``1 + s``. Then
  ``s = mean_on / mean_off - 1`` and the share over the SLO ``T`` with the transfer on is the
  seed's own share over ``T / (1 + s)``: the excess is ``F_off(T / (1 + s)) - F_off(T)``, with
  ``F_off`` the off seconds' share of tokens over a bound, read from the bounds from ``T / 2`` to
  ``T`` that the bench records every second (``itl_tokens_above``), log-linear between them.

A transfer that causes rare stalls instead (a few steps much slower, the rest untouched) moves
the mean little and the tail a lot: the scale model's excess then falls short of the measured one,
and :func:`compare` shows it (``z`` of the difference).

For every fixed rate of the oracle's sweep, against the seconds with no transfer (the watch
phases before each run): the excess measured by counting, the excess the scale model predicts,
and the seconds each needs (on and off alike) for its standard error to reach a quarter of the
budget. Standard errors come from the spread between seconds (ratio estimators), so clustered
slow tokens (one slow step slows the whole batch) count as what they are.

    python -m bench.qos_signal RESULT.json [RESULT.json ...]

Pure: :func:`groups`, :func:`compare` and :func:`predicted_excess` take dicts and numbers; only
:func:`main` reads files.

    >>> round(predicted_excess({0.01: 0.2, 0.02: 0.01}, 0.02, 0.0), 6)
    0.0
    >>> round(predicted_excess({0.01: 0.2, 0.02: 0.01}, 0.02, 1.0), 6)   # T / 2 = 0.01: all of F(0.01)
    0.19
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

from bench.kept_results import WATCH_PHASE, table_tool
from bench.qos_stats import ratio_estimate

__all__ = ["Seconds", "SignalComparison", "groups", "compare", "predicted_excess", "main"]


@dataclass(frozen=True)
class Seconds:
    """One seed's seconds of one kind: no transfer, or the transfer at one fixed rate."""

    rate: float
    #: Per second: tokens, tokens above each tail bound, and the summed ITL (mean x tokens).
    tokens: tuple[float, ...]
    above: tuple[tuple[float, ...], ...]
    latency: tuple[float, ...]

    @property
    def seconds(self) -> int:
        return len(self.tokens)


def _ratio(num: tuple[float, ...], den: tuple[float, ...]) -> tuple[float, float]:
    """``bench.qos_stats.ratio_estimate`` per second: the ratio and one second's variance (SE^2 = var / seconds),
    so that on and off pools of different lengths, and the seconds a target error needs, follow from it."""
    ratio, variance = ratio_estimate(list(zip(num, den)))
    return ratio, variance * len(den)


def predicted_excess(off_survival: dict[float, float], slo: float, scale: float) -> float:
    """What stretching every step by ``1 + scale`` adds to the share over ``slo``: ``F(slo / (1 + scale)) - F(slo)``.

    ``off_survival`` maps bounds (``slo`` among them) to the share of tokens over each with no
    transfer; between bounds ``log F`` is linear in ``log bound``. A point under the lowest bound
    is NaN (the bench records bounds down to half the SLO: a stretch past x2 is not read).
    A scale <= 0 adds nothing (the transfer does not speed the seed up).
    """
    if scale <= 0:
        return 0.0
    x = slo / (1.0 + scale)
    bounds = sorted(off_survival)
    if x < bounds[0]:
        return math.nan
    f_slo = off_survival[slo]
    for lo, hi in zip(bounds, bounds[1:]):
        if lo <= x <= hi:
            f_lo, f_hi = off_survival[lo], off_survival[hi]
            if f_lo <= 0 or f_hi <= 0:
                f_x = f_lo + (f_hi - f_lo) * (x - lo) / (hi - lo)
            else:
                w = math.log(x / lo) / math.log(hi / lo)
                f_x = math.exp(math.log(f_lo) + w * (math.log(f_hi) - math.log(f_lo)))
            return max(f_x - f_slo, 0.0)
    return 0.0


@dataclass(frozen=True)
class SignalComparison:
    """One seed at one fixed rate: the transfer's excess over the SLO counted, and by the scale model."""

    seed: int
    rate: float
    seconds_on: int
    seconds_off: int
    share_off: float
    share_on: float
    #: Measured by counting tokens over the SLO: share_on - share_off, and its standard error.
    excess: float
    excess_se: float
    #: mean_on / mean_off - 1 and its standard error.
    scale: float
    scale_se: float
    #: The scale model's excess, and its standard error (from scale_se only).
    predicted: float
    predicted_se: float
    #: Seconds on and off each signal needs for a standard error of ``target_se``.
    seconds_counting: float
    seconds_scale: float

    @property
    def z(self) -> float:
        """How many standard errors the measured excess is over the predicted one."""
        se = math.hypot(self.excess_se, self.predicted_se)
        return (self.excess - self.predicted) / se if se > 0 else math.nan


def groups(result: dict, seed: int, settle_seconds: int = 2) -> tuple[Seconds, list[Seconds], list[float], float]:
    """(the seconds with no transfer, one :class:`Seconds` per fixed rate of the sweep, the tail bounds, the SLO).

    No transfer: the watch phases (``baseline-K``). Fixed rates: the oracle's probes, without each
    probe's first ``settle_seconds`` (the rate was just set). Seconds without the tail counts (before
    the SLO was chosen) or without tokens are skipped. A plant whose load changes mid-probe
    (``load-change``) keeps only each probe's seconds before the change: its watch phases run the
    first load only, and the other would be compared with it.
    """
    bounds = [float(b) for b in result.get("itl_tail_bounds_seconds") or []]
    if not bounds:
        raise ValueError("the result has no itl_tail_bounds_seconds: it predates per-second tail counts "
                         "(rerun `rfork bench qos` at this version)")
    # An SLO between bounds is judged at the largest bound under it (as throttle.histogram.fraction_above does).
    slo = max((b for b in bounds if b <= float(result["slo_itl_seconds"])), default=None)
    if slo is None:
        raise ValueError(f"no tail bound is at or under the SLO {result['slo_itl_seconds']} s")
    plant = result.get("plant") or {}
    last_second = math.inf
    if plant.get("changed_load"):
        probe_seconds = float((result.get("options") or {}).get("oracle_probe_seconds") or 0.0)
        last_second = math.floor(float(plant.get("change_at_fraction", 0.5)) * probe_seconds)
    off: list[dict] = []
    by_rate: dict[float, list[dict]] = {}
    previous: tuple[str, float | None] | None = None
    run_length = 0
    for sample in result["time_series"]:
        rate = sample["rates"][seed]
        key = (sample["phase"], rate)
        run_length = run_length + 1 if key == previous else 1
        previous = key
        tails = sample.get("itl_tokens_above") or []
        means = sample.get("itl_mean_seconds") or []
        if seed >= len(tails) or tails[seed] is None or means[seed] is None or sample["itl_tokens"][seed] <= 0:
            continue
        if sample["phase"].startswith(WATCH_PHASE):
            off.append(sample)
        elif sample["phase"] == "oracle" and rate and settle_seconds < run_length <= last_second:
            by_rate.setdefault(float(rate), []).append(sample)

    def pack(rate: float, samples: list[dict]) -> Seconds:
        return Seconds(rate, tuple(s["itl_tokens"][seed] for s in samples),
                       tuple(tuple(s["itl_tokens_above"][seed]) for s in samples),
                       tuple(s["itl_mean_seconds"][seed] * s["itl_tokens"][seed] for s in samples))

    return pack(0.0, off), [pack(r, s) for r, s in sorted(by_rate.items(), reverse=True)], bounds, slo


def compare(off: Seconds, on: Seconds, bounds: list[float], slo: float, seed: int,
            target_se: float = 0.0025) -> SignalComparison:
    """Counting against the scale model for one fixed rate (see the module)."""
    k = bounds.index(slo)

    def share(s: Seconds, j: int) -> tuple[float, float]:
        return _ratio(tuple(a[j] for a in s.above), s.tokens)

    p_off, v_off = share(off, k)
    p_on, v_on = share(on, k)
    m_off, vm_off = _ratio(off.latency, off.tokens)
    m_on, vm_on = _ratio(on.latency, on.tokens)
    scale = m_on / m_off - 1.0
    # One second's relative variance of each mean: the ratio's error from the seconds each pool has, and
    # (summed) per second on and off alike for the seconds a target error needs.
    rel_on, rel_off = vm_on / (m_on * m_on), vm_off / (m_off * m_off)
    rel = rel_on + rel_off
    scale_se = (1.0 + scale) * math.sqrt(rel_on / on.seconds + rel_off / off.seconds)
    survival = {b: share(off, j)[0] for j, b in enumerate(bounds)}
    predicted = predicted_excess(survival, slo, scale)
    # The prediction's slope in s, numerically, over one standard error either side (one-sided at s <= 0,
    # where the model is flat by definition: the transfer does not speed the seed up).
    step = max(scale_se, 1e-4)
    lo, hi = max(scale - step, 0.0), max(scale, 0.0) + step
    slope = (predicted_excess(survival, slo, hi) - predicted_excess(survival, slo, lo)) / (hi - lo)
    predicted_se = abs(slope) * scale_se
    counting_var = v_on + v_off
    scale_var = slope * slope * (1.0 + scale) ** 2 * rel
    return SignalComparison(
        seed, on.rate, on.seconds, off.seconds, p_off, p_on, p_on - p_off,
        math.sqrt(v_on / on.seconds + v_off / off.seconds), scale, scale_se, predicted, predicted_se,
        counting_var / target_se ** 2, scale_var / target_se ** 2)


def rows(result: dict, target_se: float = 0.0025) -> list[SignalComparison]:
    out: list[SignalComparison] = []
    series = result.get("time_series") or []
    for seed in range(len(series[0]["rates"]) if series else 0):
        off, probes, bounds, slo = groups(result, seed)
        if off.seconds < 2:
            continue
        out.extend(compare(off, on, bounds, slo, seed, target_se) for on in probes if on.seconds >= 2)
    return out


def format_rows(comparisons: list[SignalComparison]) -> str:
    head = ("| seed | rate MB/s | s on/off | share off | excess counted | scale s | excess by scale | z | "
            "s for SE 0.25 %: counting / scale |")
    lines = [head, "|" + " --- |" * 9]
    for c in comparisons:
        lines.append(
            f"| {c.seed} | {c.rate / 1e6:.1f} | {c.seconds_on}/{c.seconds_off} | {c.share_off:.2%} | "
            f"{c.excess:+.2%} ± {c.excess_se:.2%} | {c.scale:+.1%} ± {c.scale_se:.1%} | "
            f"{c.predicted:+.2%} ± {c.predicted_se:.2%} | {c.z:+.1f} | "
            f"{c.seconds_counting:.0f} / {c.seconds_scale:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--target-se", type=float, default=0.0025,
                            help="the standard error the 'seconds' columns aim at (default 0.0025: a quarter of 1 %%)")

    return table_tool(argv, "python -m bench.qos_signal", __doc__ or "",
                      lambda result, args: format_rows(rows(result, args.target_se)), options)


if __name__ == "__main__":
    sys.exit(main())
