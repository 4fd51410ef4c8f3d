"""`rfork bench fork|qos|fleet|scheduler ...`: the benchmarks, reachable from the rfork command."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    from bench import fork_bench

    fork_bench.add_arguments(sub.add_parser("fork", help="issue #2 numbers: multi-seed striping, caps, seed kill"))
    from bench import qos_bench

    qos_bench.add_arguments(sub.add_parser("qos", help="issues #3 and #16: the serving-latency throttle on a plant "
                                                       "(--plant), K runs against the best fixed rate (bisected)"))
    from bench import fleet_bench

    fleet_bench.add_arguments(sub.add_parser("fleet", help="issue #14 numbers: N new instances at once, with and "
                                                           "without peers: time to all and seed bytes served"))
    from bench import scheduler_bench

    scheduler_bench.add_arguments(sub.add_parser("scheduler", help="issue #15 numbers: one real scheduler process's "
                                                                   "work requests/s, assignments/s, latency and CPU "
                                                                   "under many concurrent fake jobs and seeds"))


def main(args: argparse.Namespace) -> int:
    if args.bench == "fork":
        from bench import fork_bench

        return fork_bench.run(args)
    if args.bench == "qos":
        from bench import qos_bench

        return qos_bench.run(args)
    if args.bench == "fleet":
        from bench import fleet_bench

        return fleet_bench.run(args)
    if args.bench == "scheduler":
        from bench import scheduler_bench

        return scheduler_bench.run(args)
    raise SystemExit(f"unknown benchmark {args.bench!r}")
