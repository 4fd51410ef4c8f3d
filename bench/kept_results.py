"""`rfork bench qos --json` results as the tools that read them again take them: plain, or gzipped as
bench/results keeps them (they hold every second of every run).

Used by ``python -m bench.qos_signal``, ``python -m bench.qos_phase_shares`` and ``python -m bench.qos_rejudge``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from typing import Callable

__all__ = ["THROTTLED_PHASE", "WATCH_PHASE", "add_results_argument", "print_tables", "read_result", "table_tool"]

#: The time series' ``phase`` of a run's seconds, the run's number after it: the watch with no transfer before
#: run K (``baseline-K``) and its throttled phase (``throttled-K``). `rfork bench qos` writes them.
WATCH_PHASE = "baseline-"
THROTTLED_PHASE = "throttled-"


def add_results_argument(parser: argparse.ArgumentParser) -> None:
    """The positional ``RESULT.json ...`` both tools take."""
    parser.add_argument("results", nargs="+", metavar="RESULT.json",
                        help="`rfork bench qos --json` results (.json or .json.gz)")


def read_result(path: str) -> dict:
    """The result at ``path`` (``.gz``: gzipped). OSError or ValueError (bad JSON, or not an object) as is."""
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
        result = json.load(f)
    if not isinstance(result, dict):
        raise ValueError(f"a JSON {type(result).__name__}, not a `rfork bench qos --json` result")
    return result


def print_tables(paths: list[str], table_of: Callable[[dict], str]) -> int:
    """Print ``table_of(result)`` for each result at ``paths`` under a line naming it and its ITL SLO.

    Returns 0, or 2 at the first result that cannot be read or lacks what ``table_of`` needs (a
    ValueError it raises, or a missing field), after one line on stderr saying which and why.
    """
    for path in paths:
        try:
            result = read_result(path)
            table = table_of(result)
            slo_ms = result["slo_itl_seconds"] * 1000
        except (OSError, ValueError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 2
        except (KeyError, IndexError, TypeError) as exc:
            print(f"{path}: not a `rfork bench qos --json` result this tool can read "
                  f"({type(exc).__name__}: {exc})", file=sys.stderr)
            return 2
        print(f"{path} (SLO {slo_ms:g} ms)\n{table}\n")
    return 0


def table_tool(argv: list[str] | None, prog: str, doc: str, table_of: Callable[[dict, argparse.Namespace], str],
               add_options: Callable[[argparse.ArgumentParser], None] | None = None,
               check: Callable[[argparse.Namespace], str | None] | None = None) -> int:
    """The command line of a tool that prints one table per kept result: ``RESULT.json ...`` and the tool's
    own options (``add_options``; ``check`` returns what is wrong with them, a usage error, or None);
    ``doc``'s first paragraph is its description. Returns :func:`print_tables`'s exit code."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    add_results_argument(parser)
    if add_options is not None:
        add_options(parser)
    args = parser.parse_args(argv)
    problem = check(args) if check is not None else None
    if problem:
        parser.error(problem)
    return print_tables(args.results, lambda result: table_of(result, args))
