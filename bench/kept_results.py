"""`rfork bench qos --json` results as the tools that read them again take them: plain, or gzipped as
bench/results keeps them (they hold every second of every run).

Used by ``python -m bench.qos_signal`` and ``python -m bench.qos_rejudge``.
"""

from __future__ import annotations

import argparse
import gzip
import json

__all__ = ["add_results_argument", "read_result"]


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
