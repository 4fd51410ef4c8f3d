"""Kept `rfork bench qos` runs, across batteries and sessions, by the law they ran and the plant.

Issue #16's goal is every goal in every one of 5 consecutive runs a plant; the bench judges it where the
host held (its seeds at their calibration's speed, within the budget on their own: ``qos_stats.HOST_CHECKS``).
One battery rarely gives a plant five such runs, so this tool pools the results kept in bench/results by the
law's fingerprint (``law`` in each result: `rfork bench qos` writes it since session 44; older results are
``unrecorded``) and, per plant, counts the runs, those where the host held, those that met every goal, and the
longest streak of consecutive held runs that met every goal, in the order the files are given. Each run is
judged with today's checks (``qos_rejudge.rejudge``), so a host check added after a battery ran (the upper speed
bound, ``seed_fastest_speed_vs_calibration``) applies to it too. Beside the issue's count it counts the held
runs whose oracle sat under the cap, and their own longest streak: where the cap meets the budget a run tests
reaching and holding the cap, not finding the rate the budget allows, so a plant's streak can be met on a host
where its hard case never came up::

    python -m bench.qos_tally bench/results/h100-qos-v35-*.json.gz [--law FINGERPRINT ...] [--streak 5]

``--law current`` is this checkout's law with no tuning. The fingerprint reads the law's code without its comments
and docstrings (``qos_bench.law_code``), so only an edit to what the code does makes another law. ``--law`` given
more than once pools those laws as one (a refactor that changed the code, and so the fingerprint, but not what
the law does). Exit 0 where every plant shown has the streak, 1 where one has not, 2 on a file that cannot be
read.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from bench.kept_results import read_result
from bench.qos_rejudge import rejudge
from bench.qos_stats import all_met, host_held

#: The law of results written before `rfork bench qos` recorded it.
UNRECORDED = "unrecorded"


@dataclass(frozen=True)
class KeptRun:
    """One run of a kept result: where it came from, and how it was judged."""

    source: str
    run: int
    held: bool
    met: bool
    #: The run's oracle (the fixed rate it is judged against) sat under the cap, or no rate met the budget: the
    #: budget, not the cap, bounded what the run could move. False where the result does not say.
    under_cap: bool = False


@dataclass(frozen=True)
class PlantTally:
    """A plant's kept runs on one law."""

    law: str
    plant: str
    runs: int
    held: int
    held_met: int
    #: The longest run of consecutive held runs that met every goal (runs where the host missed are skipped,
    #: neither breaking nor extending it).
    streak: int
    #: Held runs whose oracle sat under the cap (:attr:`KeptRun.under_cap`), those of them that met every goal,
    #: and the longest streak among them alone (runs at the cap skipped, as runs where the host missed are).
    under_cap_held: int = 0
    under_cap_met: int = 0
    under_cap_streak: int = 0


def _oracle_under_cap(result: dict, run: dict) -> bool:
    """Whether ``run``'s oracle sat under the result's cap (None: no rate met the budget, so under it too).

    >>> _oracle_under_cap({"cap_bytes_per_second": 100e6}, {"oracle_rate_per_seed_bytes_per_second": 87e6})
    True
    >>> _oracle_under_cap({"cap_bytes_per_second": 100e6}, {"oracle_rate_per_seed_bytes_per_second": 100e6})
    False
    >>> _oracle_under_cap({"cap_bytes_per_second": 100e6}, {"oracle_rate_per_seed_bytes_per_second": None})
    True
    >>> _oracle_under_cap({}, {"oracle_rate_per_seed_bytes_per_second": 87e6})   # the cap not kept: unknown
    False
    """
    cap = result.get("cap_bytes_per_second")
    if cap is None or "oracle_rate_per_seed_bytes_per_second" not in run:
        return False
    oracle = run["oracle_rate_per_seed_bytes_per_second"]
    return oracle is None or float(oracle) < float(cap) * (1 - 1e-9)


def _longest_streak(runs: list[KeptRun]) -> int:
    streak = best = 0
    for r in runs:
        streak = streak + 1 if r.met else 0
        best = max(best, streak)
    return best


def kept_runs(source: str, result: dict, checks: list[dict] | None = None) -> tuple[str, str, list[KeptRun]]:
    """(law fingerprint, plant, its runs) of one `rfork bench qos --json` result, each run judged by ``checks``
    (one a run, in order; default: the checks the result kept). KeyError or TypeError where it is not one (a
    battery summary has no ``runs``).

    >>> ok = {"g": {"met": True, "issue_target": True}}
    >>> slow = dict(ok, seed_speed_vs_calibration={"met": False, "issue_target": False})
    >>> kept_runs("a.json", {"plant": {"name": "steady"}, "law": {"fingerprint": "f1"},
    ...                      "runs": [{"run": 1, "checks": ok}, {"run": 2, "checks": slow}]})
    ('f1', 'steady', [KeptRun(source='a.json', run=1, held=True, met=True, under_cap=False), KeptRun(source='a.json', run=2, held=False, met=True, under_cap=False)])
    """
    law = (result.get("law") or {}).get("fingerprint") or UNRECORDED
    if checks is None:
        checks = [r["checks"] for r in result["runs"]]
    runs = [KeptRun(source, int(r["run"]), host_held(c), all_met(c), _oracle_under_cap(result, r))
            for r, c in zip(result["runs"], checks)]
    return law, result["plant"]["name"], runs


def tally(kept: list[tuple[str, str, list[KeptRun]]]) -> list[PlantTally]:
    """Per (law, plant), in the order first seen, the runs of ``kept`` (:func:`kept_runs`' tuples, in order).

    >>> def r(held, met, under_cap=False): return KeptRun("x", 1, held, met, under_cap)
    >>> [(t.law, t.runs, t.held, t.held_met, t.streak) for t in tally(
    ...     [("f1", "steady", [r(True, True), r(False, False), r(True, True)]),
    ...      ("f1", "steady", [r(True, False), r(True, True)]), ("f2", "steady", [r(True, True)])])]
    [('f1', 5, 4, 3, 2), ('f2', 1, 1, 1, 1)]
    >>> (t,) = tally([("f1", "near-slo", [r(True, True, True), r(True, True), r(True, False, True), r(True, True, True)])])
    >>> t.streak, (t.under_cap_held, t.under_cap_met, t.under_cap_streak)
    (2, (3, 2, 1))
    """
    grouped: dict[tuple[str, str], list[KeptRun]] = {}
    for law, plant, runs in kept:
        grouped.setdefault((law, plant), []).extend(runs)
    out = []
    for (law, plant), runs in grouped.items():
        held = [r for r in runs if r.held]
        bound = [r for r in held if r.under_cap]
        out.append(PlantTally(law, plant, len(runs), len(held), sum(r.met for r in held), _longest_streak(held),
                              len(bound), sum(r.met for r in bound), _longest_streak(bound)))
    return out


def table(tallies: list[PlantTally], streak: int) -> str:
    """The tallies as a Markdown table, with whether each plant has ``streak`` consecutive held runs met, then
    the same count over the held runs whose oracle sat under the cap."""
    lines = ["| law | plant | runs | host held | held, every goal met | longest streak | goal "
             "| held, oracle under the cap: every goal met | their longest streak |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in tallies:
        goal = "met" if t.streak >= streak else f"{streak - t.streak} more"
        lines.append(f"| {t.law} | `{t.plant}` | {t.runs} | {t.held} | {t.held_met} | {t.streak} | {goal} "
                     f"| {t.under_cap_met} of {t.under_cap_held} | {t.under_cap_streak} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.qos_tally", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", metavar="RESULT.json",
                        help="`rfork bench qos --json` results (.json or .json.gz), in the order they ran")
    parser.add_argument("--law", action="append", default=None, metavar="FINGERPRINT",
                        help="only this law's runs (`current`: this checkout's law with no tuning; "
                             f"`{UNRECORDED}`: results from before the law was recorded); more than once: those "
                             "laws pooled as one (the same law across a refactor)")
    parser.add_argument("--streak", type=int, default=5,
                        help="consecutive held runs meeting every goal that a plant needs (default 5: issue #16)")
    args = parser.parse_args(argv)
    if args.streak < 1:
        parser.error(f"--streak must be a whole number >= 1, got {args.streak}")
    laws = None
    if args.law:
        from bench.qos_bench import law_identity
        laws = [law_identity(None)["fingerprint"] if law == "current" else law for law in args.law]
    kept, unrecorded = [], 0
    for path in args.results:
        try:
            result = read_result(path)
        except (OSError, ValueError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 2
        if "runs" not in result:
            print(f"{path}: no runs[] (a battery's summary?): skipped", file=sys.stderr)
            continue
        try:
            law, plant, runs = kept_runs(path, result, rejudge(result)[0])
        except (KeyError, TypeError, ValueError) as exc:  # qos_rejudge.ResultError is a ValueError
            print(f"{path}: not a `rfork bench qos --json` result this tool can read ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
            return 2
        if laws is None or law in laws:
            kept.append(("+".join(laws) if laws else law, plant, runs))
            unrecorded += law == UNRECORDED
    if unrecorded:
        print(f"{unrecorded} result(s) from before the law was recorded: their runs are pooled as `{UNRECORDED}`, "
              "whatever law each ran", file=sys.stderr)
    tallies = tally(kept)
    if not tallies:
        which = "" if laws is None else " of law " + ", ".join(laws)
        print(f"no runs{which} in {len(args.results)} file(s)", file=sys.stderr)
        return 1
    print(table(tallies, args.streak))
    return 0 if all(t.streak >= args.streak for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main())
