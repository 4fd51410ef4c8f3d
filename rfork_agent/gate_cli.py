"""`rfork gate`: may a rollout step proceed? One line on stdout and an exit status.

    rfork gate --prometheus http://prometheus:9090 --slo-itl 0.04 [--max-impact 1.5] [--window 1m] [--at UNIX_SECONDS]

Exit 0: proceed (every judged value is within its bound). 1: hold (the seeds'
ITL p99 is over the SLO, or forks slow a seed more than ``--max-impact``).
2: cannot tell (Prometheus unreachable or not Prometheus, no series, no
tokens served in the window, or a bad flag) — the line says what to fix.
The queries are rfork_agent.gate's, the same ones the Argo Rollouts and
Flagger templates in deploy/kubernetes/gates/ run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from rfork_agent.gate import GateConfig, GateInputError, PrometheusClient, Verdict, run_gate

PROMETHEUS_ENV = "RFORK_PROMETHEUS_URL"
AT_SKEW_SECONDS = 5.0
"""``--at`` may be this far ahead of this machine's clock (Prometheus's may run a little ahead)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prometheus", default=None, metavar="URL",
                   help=f"Prometheus's root URL, e.g. http://prometheus:9090 (default ${PROMETHEUS_ENV})")
    # Plain strings, checked in main: argparse's own type errors print usage over two lines.
    p.add_argument("--slo-itl", default=None, metavar="SECONDS",
                   help="hold when the worst seed's inter-token latency p99 is above this, e.g. 0.04")
    p.add_argument("--max-impact", default=None, metavar="RATIO",
                   help="hold when forks make a seed's ITL p99 more than RATIO x its no-fork baseline, e.g. 1.5")
    p.add_argument("--window", default="1m", help="how far back to judge, a Prometheus duration (default 1m)")
    p.add_argument("--at", default=None, metavar="UNIX_SECONDS",
                   help="judge the window ending at this time, seconds since the epoch (default now): "
                        "to replay a past step's decision, or to judge the window another tool measured")
    p.add_argument("--timeout", default="10", metavar="SECONDS", help="per-query HTTP timeout (default 10)")
    p.add_argument("--log-level", default="WARNING", help=argparse.SUPPRESS)


def _number(flag: str, raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise GateInputError(f"{flag} {raw!r} is not a number") from None


def main(args: argparse.Namespace) -> int:
    try:
        url = args.prometheus or os.environ.get(PROMETHEUS_ENV) or None
        if url is None:
            raise GateInputError(f"give --prometheus URL (or set ${PROMETHEUS_ENV}), e.g. http://prometheus:9090")
        timeout = _number("--timeout", args.timeout)
        if not (math.isfinite(timeout) and timeout > 0):
            raise GateInputError(f"--timeout must be a number of seconds > 0, got {args.timeout}")
        at = _number("--at", args.at)
        if at is not None and not (math.isfinite(at) and 0 < at <= time.time() + AT_SKEW_SECONDS):
            raise GateInputError(f"--at must be a time in the past, in seconds since the epoch, got {args.at}")
        config = GateConfig(slo_itl_seconds=_number("--slo-itl", args.slo_itl),
                            max_impact=_number("--max-impact", args.max_impact), window=args.window)
        with PrometheusClient(url, timeout=timeout) as prometheus:
            decision = run_gate(config, prometheus, at)
    except GateInputError as exc:
        print(f"cannot tell: {exc}", file=sys.stdout)
        return int(Verdict.CANNOT_TELL)
    print(decision.line(), file=sys.stdout)
    return int(decision.verdict)
