"""The fleet benchmark: a scale-out of N new instances at once, with and without peers (issue #14).

Each run is one `rfork testbed --clients N` (fresh processes every time): one
seed capped at ``--seed-rate``, N fork clients, each its own process with its
own TransferEngine, each uploading to the others at most ``--client-rate``.
With peers, clients read from each other the chunks they have landed; without
(``--no-peers``), every client reads the whole model from the seed. For each N
it records the time from the common start to the last client done
(``time_to_all_seconds``), the bytes the seed served, and whether every client
checked its bytes.

The targets, at the largest N: with peers, time-to-all <= 1.5 x a single fork
from that seed (the N = 1 run) and the seed serves <= 1.5 x the model bytes;
every client verified.

    rfork bench fleet --json bench/results/fleet.json --plot bench/results/fleet.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from rfork_api.units import UnitError, format_bytes, format_rate, parse_rate, parse_size

TIME_TARGET = 1.5
"""Time-to-all with peers at the largest N, as a multiple of one fork from the same seed."""
SEED_BYTES_TARGET = 1.5
"""Bytes the seed serves with peers at the largest N, as a multiple of the model."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="256MiB", help="model size (default 256MiB)")
    p.add_argument("--chunk-size", default="4MiB", help="chunk size (default 4MiB)")
    p.add_argument("--seed-rate", default="50MB/s", help="the one seed's cap (default 50MB/s)")
    p.add_argument("--client-rate", default="50MB/s",
                   help="each client's upload cap as a peer (default 50MB/s; 'unlimited' for none)")
    p.add_argument("--clients", default="1,2,4,8", metavar="N[,N...]", help="fleet sizes (default 1,2,4,8)")
    p.add_argument("--repeat", type=int, default=1, help="runs per point; the median time-to-all is kept")
    p.add_argument("--scheduler-arg", action="append", default=[], metavar="ARG",
                   help="extra flag for `rfork scheduler` (repeat; --scheduler-arg=--stream-stripes=0: peers per chunk)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: seed's and clients' memory")
    p.add_argument("--json", dest="json_path", default=None, metavar="PATH")
    p.add_argument("--plot", dest="plot_path", default=None, metavar="PATH.png")


def run(args: argparse.Namespace) -> int:
    from rfork_agent.devices import DeviceError, check_device

    try:
        values = {}
        for flag, parse, text in (("--size", parse_size, args.size), ("--chunk-size", parse_size, args.chunk_size),
                                  ("--seed-rate", parse_rate, args.seed_rate),
                                  ("--client-rate", parse_rate, args.client_rate)):
            try:
                values[flag] = parse(text)
            except UnitError as exc:
                raise UnitError(f"{flag}: {exc}") from None
        size, chunk, seed_rate, client_rate = values.values()
        check_device(args.device)
    except (UnitError, DeviceError) as exc:
        print(f"rfork bench fleet: error: {exc}", file=sys.stderr)
        return 2
    try:
        counts = sorted({int(n) for n in args.clients.split(",")})
    except ValueError:
        print(f"rfork bench fleet: error: --clients must be whole numbers like 1,2,4,8, got {args.clients!r}",
              file=sys.stderr)
        return 2
    if not seed_rate or client_rate == 0 or not counts or counts[0] < 1 or args.repeat < 1:
        print("rfork bench fleet: error: --seed-rate must be a rate > 0 (the benchmark is network-bound by it), "
              "--client-rate > 0 or unlimited, --clients >= 1 and --repeat >= 1", file=sys.stderr)
        return 2
    runs = []
    for peers in (True, False):
        for n in counts:
            record = measure(n, peers, size, chunk, seed_rate, client_rate, args.device, args.repeat,
                             tuple(args.scheduler_arg))
            runs.append(record)
            print(f"{'peers' if peers else 'direct':6} N={n:<3} time to all {record['time_to_all_seconds']:7.2f} s   "
                  f"seed served {record['seed_bytes_served'] / record['model_bytes']:5.2f} x model   "
                  f"{'all verified' if record['verified'] else 'NOT ALL VERIFIED'}"
                  + (f"   streams {record['streams']['started']} ({record['streams']['failed']} failed)"
                     if peers and record.get("streams") else ""), flush=True)
            if args.json_path:  # after every point: a run cut short (a time limit, Ctrl-C) keeps what it measured
                _write_report(args.json_path, summarize(runs, size=size, chunk=chunk, seed_rate=seed_rate,
                                                        client_rate=client_rate, device=args.device,
                                                        planned=len(counts) * 2))
    report = summarize(runs, size=size, chunk=chunk, seed_rate=seed_rate, client_rate=client_rate,
                       device=args.device)
    for line in report["lines"]:
        print(line)
    if args.json_path:
        _write_report(args.json_path, report)
        print(f"wrote {args.json_path}")
    if args.plot_path:
        plot(report, args.plot_path)
        print(f"wrote {args.plot_path}")
    return 0 if report["met"] else 1


def measure(n: int, peers: bool, size: int, chunk: int, seed_rate: float, client_rate: float | None,
            device: str, repeat: int, scheduler_args: tuple[str, ...] = ()) -> dict:
    """``repeat`` scale-outs of ``n`` clients (fresh fleet each); the median by time-to-all, with every run's time."""
    from testbed.orchestrator import TestbedOptions, run_testbed

    options = TestbedOptions(seeds=1, model=None, size_bytes=size, chunk_size=chunk, seed_rates=(seed_rate,),
                             clients=n, peers=peers, client_rate=client_rate if peers else None,
                             progress=False, device=device, scheduler_args=scheduler_args)
    results = [run_testbed(options) for _ in range(repeat)]
    results.sort(key=lambda r: r["time_to_all_seconds"] if r["time_to_all_seconds"] is not None else float("inf"))
    median = results[len(results) // 2]
    return {
        "clients": n, "peers": peers,
        "time_to_all_seconds": median["time_to_all_seconds"],
        "time_to_all_seconds_all": [r["time_to_all_seconds"] for r in results],
        "seed_bytes_served": median["seed_bytes_served"], "model_bytes": median["model_bytes"],
        "bytes_from_peers": median["bytes_from_peers"],
        "streams": median.get("streams"),
        "verified": all(r["verified"] for r in results),
        "clients_detail": median["clients"], "log_dir": median["log_dir"],
    }


def _write_report(path: str, report: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, path)


def summarize(runs: list[dict], *, size: int, chunk: int, seed_rate: float, client_rate: float | None,
              device: str, planned: int | None = None) -> dict:
    """Judge the runs against the issue's targets (pure: a function of the records).

    ``planned`` (the number of points the run set out to measure) marks a report
    written part-way: ``complete`` is false until every point is in.
    """
    by = {(r["peers"], r["clients"]): r for r in runs}
    counts = sorted({r["clients"] for r in runs})
    largest, single = counts[-1], by.get((True, 1)) or by.get((False, 1))
    peer_big, direct_big = by.get((True, largest)), by.get((False, largest))
    lines = [f"fleet scale-out: {format_bytes(size)} model, one seed at {format_rate(seed_rate)}, clients upload "
             f"at most {format_rate(client_rate)}, {format_bytes(chunk)} chunks, device {device}"]
    judged: dict = {"largest_clients": largest}
    met = all(r["verified"] for r in runs)
    if single is not None and peer_big is not None:
        base = single["time_to_all_seconds"]
        time_ratio = peer_big["time_to_all_seconds"] / base
        seed_ratio = peer_big["seed_bytes_served"] / peer_big["model_bytes"]
        judged.update(single_fork_seconds=base, peers_time_ratio=time_ratio, peers_seed_bytes_ratio=seed_ratio,
                      time_met=time_ratio <= TIME_TARGET, seed_bytes_met=seed_ratio <= SEED_BYTES_TARGET)
        met &= judged["time_met"] and judged["seed_bytes_met"]
        lines.append(f"  single fork from the seed: {base:.2f} s (ideal {size / seed_rate:.2f} s)")
        lines.append(f"  {'PASS' if judged['time_met'] else 'MISS'}  N={largest} with peers: time to all "
                     f"{peer_big['time_to_all_seconds']:.2f} s = {time_ratio:.2f} x a single fork "
                     f"[target <= {TIME_TARGET}x]")
        lines.append(f"  {'PASS' if judged['seed_bytes_met'] else 'MISS'}  N={largest} with peers: the seed served "
                     f"{seed_ratio:.2f} x the model [target <= {SEED_BYTES_TARGET}x]")
        if direct_big is not None:
            judged.update(direct_time_ratio=direct_big["time_to_all_seconds"] / base,
                          direct_seed_bytes_ratio=direct_big["seed_bytes_served"] / direct_big["model_bytes"])
            lines.append(f"        N={largest} direct from the seed: {direct_big['time_to_all_seconds']:.2f} s = "
                         f"{judged['direct_time_ratio']:.2f} x, seed served {judged['direct_seed_bytes_ratio']:.2f} x")
    lines.append(f"  {'PASS' if all(r['verified'] for r in runs) else 'MISS'}  every client of every run verified "
                 "byte-exact")
    complete = planned is None or len(runs) >= planned
    if not complete:
        lines.append(f"  (part-way: {len(runs)} of {planned} points measured)")
    met &= complete
    judged["met"] = met
    return {"complete": complete, "size_bytes": size, "chunk_size_bytes": chunk,
            "seed_rate_bytes_per_second": seed_rate, "client_rate_bytes_per_second": client_rate, "device": device,
            "targets": {"time_to_all_vs_single": TIME_TARGET, "seed_bytes_vs_model": SEED_BYTES_TARGET},
            "judgement": judged, "met": met, "runs": runs, "lines": lines}


def plot(report: dict, path: str) -> None:
    """Time-to-all and seed bytes served against N, with and without peers, beside the ideals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    size, rate = report["size_bytes"], report["seed_rate_bytes_per_second"]
    fig, (ax_time, ax_bytes) = plt.subplots(1, 2, figsize=(11, 4.2))
    for peers, style, label in ((True, "o-", "with peers"), (False, "s--", "direct from the seed")):
        points = sorted((r["clients"], r) for r in runs if r["peers"] is peers)
        if not points:
            continue
        ns = [n for n, _ in points]
        ax_time.plot(ns, [r["time_to_all_seconds"] for _, r in points], style, label=label)
        ax_bytes.plot(ns, [r["seed_bytes_served"] / r["model_bytes"] for _, r in points], style, label=label)
    ns = sorted({r["clients"] for r in runs})
    ax_time.plot(ns, [n * size / rate for n in ns], ":", color="grey", label="N x model / seed rate")
    ax_time.axhline(size / rate, linestyle=":", color="black", label="model / seed rate")
    single = report["judgement"].get("single_fork_seconds")
    if single:
        ax_time.axhline(TIME_TARGET * single, linestyle="-.", color="tab:red", alpha=0.6,
                        label=f"target: {TIME_TARGET} x a single fork")
    ax_bytes.axhline(SEED_BYTES_TARGET, linestyle="-.", color="tab:red", alpha=0.6,
                     label=f"target: {SEED_BYTES_TARGET} x the model")
    ax_time.set(xlabel="new instances at once (N)", ylabel="time to all (s)", xticks=ns,
                title="time until every instance has the model")
    ax_bytes.set(xlabel="new instances at once (N)", ylabel="bytes the seed served / model bytes", xticks=ns,
                 title="load on the serving seed")
    for ax in (ax_time, ax_bytes):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_ylim(bottom=0)
    fig.suptitle(f"rfork scale-out: {format_bytes(size)} model, one seed at {format_rate(rate)}, "
                 f"clients upload at most {format_rate(report['client_rate_bytes_per_second'])} "
                 f"({report['device']})", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet_bench", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
