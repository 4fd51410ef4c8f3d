"""Where the slow tokens fell around each throttled phase of a `rfork bench qos` result.

Two questions about the A/B law's evidence (docs/qos.md "The law's low-rate evidence"), read from
the per-second time series the bench records:

* **Does a fork change the seed's own share?** Per run and seed: the share of tokens over the SLO
  in the watch before the throttled phase (no transfer), in the phase's off windows (the law's rate
  0) and in the rest of the phase (the transfer allowed). A fork that slowed the seed whether or not
  a chunk was being read would show as off windows above the watch.
* **Are the law's transfer-on seconds busier than its seed-alone ones at the same rate?** Below
  ``--low-rate-mb`` a whole chunk is not read every second: the law counts a second with a read
  as transfer-on and one without as the seed alone. If the seed's own slow spells made reads run
  longer (into more seconds), the on seconds would be the busier ones and the law would blame the
  seed's own slow tokens on the transfer. The law's pools are read back from the agents' reasons
  (:func:`throttle.attribution.parse_evidence_summary`): a second whose on pool grew was counted
  transfer-on ("read"); one whose off pool grew with the transfer allowed, the seed alone ("no read").

Standard errors come from the spread between seconds (:func:`bench.qos_stats.ratio_estimate`).

    python -m bench.qos_phase_shares RESULT.json [RESULT.json ...] [--low-rate-mb 15]

Pure: :func:`phase_blocks` and :func:`law_split_blocks` take the result dict; only :func:`main` reads files.
"""

from __future__ import annotations

import argparse
import math
import sys

from bench.kept_results import THROTTLED_PHASE, WATCH_PHASE, table_tool
from bench.qos_stats import ratio_estimate
from throttle.attribution import PooledCounts, parse_evidence_summary

__all__ = ["PHASE_KINDS", "SPLIT_KINDS", "phase_blocks", "law_split_blocks", "format_share", "main"]

#: The three parts of a run: the watch before the throttled phase, its off windows, the rest of it.
PHASE_KINDS = ("watch", "off windows", "allowed")
#: The law's own split of the allowed seconds below the low rate, and its off windows.
SPLIT_KINDS = ("read", "no read", "off window")

Block = tuple[float, float]  # (slow tokens, tokens) of one second


def _runs(result: dict) -> list[int]:
    return sorted({int(s["phase"][len(THROTTLED_PHASE):]) for s in result["time_series"]
                   if s["phase"].startswith(THROTTLED_PHASE)})


def _block(second: dict, seed: int) -> Block:
    tokens = second["itl_tokens"][seed]
    return tokens * second["itl_fraction_above_slo"][seed], tokens


def phase_blocks(result: dict, seed: int) -> dict[int, dict[str, list[Block]]]:
    """Per run, the seconds of each of :data:`PHASE_KINDS` for ``seed``.

        >>> sec = lambda phase, rate, frac: {"phase": phase, "rates": [rate], "itl_tokens": [1000.0],
        ...                                  "itl_fraction_above_slo": [frac]}
        >>> r = {"time_series": [sec("baseline-1", 0.0, 0.004), sec("throttled-1", 5e6, 0.01),
        ...                      sec("throttled-1", 0.0, 0.006)]}
        >>> phase_blocks(r, 0)
        {1: {'watch': [(4.0, 1000.0)], 'off windows': [(6.0, 1000.0)], 'allowed': [(10.0, 1000.0)]}}
    """
    out: dict[int, dict[str, list[Block]]] = {}
    for run in _runs(result):
        kinds: dict[str, list[Block]] = {kind: [] for kind in PHASE_KINDS}
        for second in result["time_series"]:
            if second["phase"] == f"{WATCH_PHASE}{run}":
                kinds["watch"].append(_block(second, seed))
            elif second["phase"] == f"{THROTTLED_PHASE}{run}":
                kinds["off windows" if second["rates"][seed] == 0 else "allowed"].append(_block(second, seed))
        out[run] = kinds
    return out


def law_split_blocks(result: dict, seed: int, low_rate: float) -> dict[str, list[Block]]:
    """The throttled phases' seconds as the law pooled them (:data:`SPLIT_KINDS`), where the transfer was
    allowed at most ``low_rate`` bytes/s (off windows: wherever the rate was). Each block is one
    sample's growth of the pool it fed; a sample that fed both pools, or where the law forgot
    evidence, is left out.

        >>> def sec(rate, on, off):
        ...     return {"phase": "throttled-1", "rates": [rate], "modes": ["hold" if rate else "probe_pause"],
        ...             "reasons": [f"on {on[0]:.2f}% of {on[1]} at 5e+06 B/s, off {off[0]:.2f}% of {off[1]}"]}
        >>> r = {"time_series": [sec(5e6, (1.0, 1000), (0.5, 2000)), sec(5e6, (1.0, 2000), (0.5, 2000)),
        ...                      sec(5e6, (1.0, 2000), (0.4, 3000)), sec(0.0, (1.0, 2000), (0.5, 4000))]}
        >>> law_split_blocks(r, 0, 10e6)
        {'read': [(10.0, 1000.0)], 'no read': [(2.0, 1000.0)], 'off window': [(8.0, 1000.0)]}
    """
    out: dict[str, list[Block]] = {kind: [] for kind in SPLIT_KINDS}
    previous: tuple[dict, PooledCounts] | None = None
    for second in result["time_series"]:
        pools = (parse_evidence_summary(second["reasons"][seed]) if second["phase"].startswith(THROTTLED_PHASE)
                 else None)
        if pools is None or pools.slow_off is None:
            previous = None
            continue
        if previous is not None and previous[0]["phase"] == second["phase"]:
            before, after = previous[1], pools
            assert before.slow_off is not None and after.slow_off is not None
            grew_on, grew_off = after.tokens_on - before.tokens_on, after.tokens_off - before.tokens_off
            rates = (previous[0]["rates"][seed], second["rates"][seed])
            if grew_on > 0 and grew_off == 0 and 0 < min(rates) and max(rates) <= low_rate:
                out["read"].append((after.slow_on - before.slow_on, grew_on))
            elif grew_off > 0 and grew_on == 0:
                if 0 in rates:
                    out["off window"].append((after.slow_off - before.slow_off, grew_off))
                elif max(rates) <= low_rate:
                    out["no read"].append((after.slow_off - before.slow_off, grew_off))
        previous = second, pools
    return out


def format_share(blocks: list[Block]) -> str:
    """``share ± standard error of tokens (seconds)``; ``-`` for fewer than two seconds.

        >>> format_share([(10.0, 1000.0), (0.0, 1000.0), (5.0, 1000.0)])
        '0.50% ± 0.29% of 3000 (3 s)'
        >>> format_share([(1.0, 100.0)])
        '-'
    """
    share, variance = ratio_estimate(blocks)
    if math.isnan(share):
        return "-"
    return (f"{share:.2%} ± {math.sqrt(variance):.2%} of {sum(tokens for _, tokens in blocks):.0f} "
            f"({len(blocks)} s)")


def _report(result: dict, low_rate: float) -> str:
    seeds = len(result["time_series"][0]["rates"]) if result["time_series"] else 0
    lines = ["| run | seed | " + " | ".join(PHASE_KINDS) + " |", "| --- | --- |" + " --- |" * len(PHASE_KINDS)]
    pooled: dict[int, dict[str, list[Block]]] = {}
    for seed in range(seeds):
        for run, kinds in phase_blocks(result, seed).items():
            lines.append(f"| {run} | {seed} | " + " | ".join(format_share(kinds[k]) for k in PHASE_KINDS) + " |")
            for kind in PHASE_KINDS:
                pooled.setdefault(seed, {}).setdefault(kind, []).extend(kinds[kind])
    for seed, kinds in pooled.items():
        lines.append(f"| all | {seed} | " + " | ".join(format_share(kinds[k]) for k in PHASE_KINDS) + " |")
    lines += ["", f"The law's own split, the transfer allowed at most {low_rate / 1e6:g} MB/s:", "",
              "| seed | " + " | ".join(SPLIT_KINDS) + " |", "| --- |" + " --- |" * len(SPLIT_KINDS)]
    for seed in range(seeds):
        split = law_split_blocks(result, seed, low_rate)
        lines.append(f"| {seed} | " + " | ".join(format_share(split[k]) for k in SPLIT_KINDS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--low-rate-mb", type=float, default=15.0,
                            help="the law's split covers seconds with the transfer allowed at most this "
                                 "(MB/s; default 15)")

    def check(args: argparse.Namespace) -> str | None:
        if args.low_rate_mb > 0 and math.isfinite(args.low_rate_mb):
            return None
        return f"--low-rate-mb must be a positive number of MB/s, got {args.low_rate_mb}"

    return table_tool(argv, "python -m bench.qos_phase_shares", __doc__ or "",
                      lambda result, args: _report(result, args.low_rate_mb * 1e6), options, check)


if __name__ == "__main__":
    sys.exit(main())
