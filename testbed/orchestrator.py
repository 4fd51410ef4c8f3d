"""`rfork testbed`: a local fleet forks a model end to end, and we check every byte.

Starts a scheduler, N seed stand-ins (real torch weights registered with a real
TransferEngine) and one agent per seed as separate processes on loopback, then
forks each rank into this process through the scheduler, optionally SIGKILLs a
seed part-way, verifies the result against an independent regeneration of the
weights, and optionally times SGLang R-Fork's own way (one batch read from one
seed) for comparison.

``--clients N`` is a scale-out instead (testbed.scale_out): N fork clients, each
its own process with its own TransferEngine, start at once and feed each other
the chunks they have landed (``--client-rate`` caps each one's upload,
``--no-peers`` reads everything from the seeds); each checks its own bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, replace

from rfork_api.logs import add_log_arguments, quiet_mooncake_by_default
from rfork_api.units import UnitError, format_bytes, format_rate, parse_rate, parse_size
from testbed.presets import ARCHITECTURES, DEFAULT_PRESET

log = logging.getLogger("rfork.testbed")


@dataclass(frozen=True)
class TestbedOptions:
    __test__ = False  # not a pytest class, despite the name
    seeds: int = 3
    model: str | None = DEFAULT_PRESET
    size_bytes: int | None = None
    dtype: str = "bfloat16"
    tp_size: int = 1
    seed_rates: tuple[float | None, ...] = ()
    chunk_size: int | None = None
    kill_seed_at: float | None = None
    kill_seed_index: int = 0
    compare_baseline: bool = False
    load_rps: float = 0.0
    throttle: str = "off"
    """Every agent's serving-QoS throttle (adaptive needs slo_itl_seconds and --seed-rate caps)."""
    slo_itl_seconds: float | None = None
    include_zero_byte: bool = False
    rng_seed: int = 1234
    json_path: str | None = None
    progress: bool = True
    log_dir: str | None = None
    client_metrics_port: int | None = None
    """Serve the in-process fork client's metrics on 127.0.0.1:PORT while the testbed runs (0 = any free port)."""
    device: str = "cpu"
    """Where the client forks into and verifies (cpu, cuda, cuda:N); also the seeds' unless ``seed_device``."""
    seed_device: str | None = None
    """Where the seed stand-ins hold their weights and decode; None = ``device``."""
    clients: int | None = None
    """A scale-out of this many client processes (testbed.scale_out); None = one fork in this process."""
    client_rate: float | None = None
    """Each scale-out client's upload cap as a peer, bytes/s (None = unlimited)."""
    peers: bool = True
    """Scale-out clients feed each other; False: every byte from the seeds."""
    scheduler_args: tuple[str, ...] = ()
    """Extra ``rfork scheduler`` flags (``--stream-stripes 0``: peers without streams)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=3, help="number of seed instances (default 3)")
    p.add_argument("--model", default=None, help=f"model preset: {', '.join(ARCHITECTURES)} (default {DEFAULT_PRESET})")
    p.add_argument("--size", default=None, help="instead of --model: a Llama-shaped model of about this size, e.g. 600MiB")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--tp-size", type=int, default=1, help="tensor-parallel size; every rank is forked")
    p.add_argument("--seed-rate", default=None, metavar="RATE[,RATE...]",
                   help="per-seed rate caps, e.g. 100MB/s, 1Gbps or 100MB/s,100MB/s,25MB/s; 0 pauses that seed "
                        "(default unlimited)")
    p.add_argument("--chunk-size", default=None, help="chunk size, e.g. 16MiB (default: the scheduler's, 64MiB)")
    p.add_argument("--kill-seed-at", type=float, default=None, metavar="FRACTION",
                   help="SIGKILL one seed process when this fraction of bytes has landed (0 < F < 1)")
    p.add_argument("--kill-seed", type=int, default=0, metavar="INDEX", help="which seed --kill-seed-at kills (default 0)")
    p.add_argument("--compare-baseline", action="store_true",
                   help="also time SGLang R-Fork's way: one batch read of every tensor from one seed, uncapped "
                        "(set against a capped fork at that seed's cap)")
    p.add_argument("--load-rps", type=float, default=0.0,
                   help="open-loop request arrivals per second on each seed stand-in, decoded on the CPU (default 0)")
    p.add_argument("--throttle", default="off", choices=["adaptive", "fixed", "off"],
                   help="every agent's serving-QoS throttle (adaptive needs --slo-itl and --seed-rate)")
    p.add_argument("--slo-itl", type=float, default=None, metavar="SECONDS",
                   help="the agents' inter-token latency SLO, e.g. 0.04")
    p.add_argument("--include-zero-byte", action="store_true", help="add a zero-byte tensor to the model")
    p.add_argument("--rng-seed", type=int, default=1234)
    p.add_argument("--json", dest="json_path", metavar="PATH", help="write the result as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-dir", default=None, help="where process logs go (default: a temp dir)")
    add_log_arguments(p, default="warning")
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda or cuda:N: seeds hold their weights and decode there, the client "
                        "forks into that device's memory and verifies there")
    p.add_argument("--seed-device", default=None,
                   help="put the seeds on another device than the client, e.g. --device cuda:0 --seed-device cuda:1")
    p.add_argument("--clients", type=int, default=None, metavar="N",
                   help="a scale-out: N fork clients, each its own process and TransferEngine, start at once and "
                        "serve each other the chunks they have landed; each verifies its own bytes "
                        "(default: one fork in this process)")
    p.add_argument("--client-rate", default=None, metavar="RATE",
                   help="with --clients: each client's upload cap as a peer (its --peer-rate), e.g. 50MB/s "
                        "(default unlimited)")
    p.add_argument("--no-peers", action="store_true",
                   help="with --clients: no client serves another, every byte comes from the seeds")
    p.add_argument("--client-metrics-port", type=int, default=None, metavar="PORT",
                   help="serve the in-process fork client's Prometheus metrics at http://127.0.0.1:PORT/metrics "
                        "while the testbed runs (0 picks a free port; off by default)")


def options_from_args(args: argparse.Namespace) -> TestbedOptions:
    """Validate CLI input; raises UnitError/ValueError with a message for the user."""
    if args.seeds < 1:
        raise ValueError("--seeds must be at least 1")
    if args.tp_size < 1:
        raise ValueError("--tp-size must be at least 1")
    if args.model and args.size:
        raise ValueError("give --model or --size, not both")
    rates: tuple[float | None, ...] = ()
    if args.seed_rate:
        rates = tuple(parse_rate(r) for r in args.seed_rate.split(","))
        if len(rates) not in (1, args.seeds):
            raise ValueError(f"--seed-rate has {len(rates)} values; give 1 (for every seed) or {args.seeds}")
    if not (0 <= args.load_rps < float("inf")):
        raise ValueError(f"--load-rps must be a number of requests/s >= 0, got {args.load_rps}")
    throttle, slo_itl = getattr(args, "throttle", "off"), getattr(args, "slo_itl", None)
    if slo_itl is not None and not (0 < slo_itl < float("inf")):
        raise ValueError(f"--slo-itl must be a number of seconds > 0, got {slo_itl}")
    if throttle == "adaptive" and (slo_itl is None or not rates or None in rates):
        raise ValueError("--throttle adaptive needs --slo-itl and a --seed-rate cap for every seed")
    if throttle == "fixed" and (not rates or None in rates):
        raise ValueError("--throttle fixed paces at --seed-rate; give one")
    if throttle != "off" and 0 in rates:
        raise ValueError(f"--seed-rate 0 pauses a seed, so --throttle {throttle} has nothing to pace there")
    if rates and all(r == 0 for r in rates):
        raise ValueError("--seed-rate pauses every seed (0), so nothing could be forked; give one a rate > 0")
    if args.kill_seed_at is not None:
        if not 0 < args.kill_seed_at < 1:
            raise ValueError("--kill-seed-at must be a fraction strictly between 0 and 1, e.g. 0.5")
        if args.seeds < 2:
            raise ValueError("--kill-seed-at needs at least 2 seeds: the fork must finish from another one")
    client_metrics_port = getattr(args, "client_metrics_port", None)
    if client_metrics_port is not None and not 0 <= client_metrics_port <= 65535:
        raise ValueError(f"--client-metrics-port must be between 0 and 65535, got {client_metrics_port}")
    if not 0 <= args.kill_seed < args.seeds:
        raise ValueError(f"--kill-seed must be between 0 and {args.seeds - 1}")
    from rfork_agent.devices import check_device  # DeviceError is a ValueError
    device = check_device(getattr(args, "device", "cpu"))
    seed_device = getattr(args, "seed_device", None)
    if seed_device is not None:
        check_device(seed_device)
    clients, client_rate = getattr(args, "clients", None), getattr(args, "client_rate", None)
    no_peers = getattr(args, "no_peers", False)
    rate = None
    if client_rate is not None:
        from rfork_agent.fork import parse_peer_settings
        settings = parse_peer_settings(client_rate, flag="--client-rate")
        if not settings.serve:
            raise ValueError("--client-rate 0 serves nothing; use --no-peers for that")
        rate = settings.rate
    if clients is None and (client_rate is not None or no_peers):
        raise ValueError("--client-rate and --no-peers shape a scale-out; give --clients N")
    if clients is not None:
        if clients < 1:
            raise ValueError(f"--clients must be at least 1, got {clients}")
        if args.tp_size != 1:
            raise ValueError("--clients forks rank 0 into each client; use --tp-size 1")
        if args.compare_baseline or client_metrics_port is not None:
            raise ValueError("--compare-baseline and --client-metrics-port time or watch the in-process fork; "
                             "drop them with --clients")
    return TestbedOptions(
        seeds=args.seeds,
        model=None if args.size else (args.model or DEFAULT_PRESET),
        size_bytes=parse_size(args.size) if args.size else None,
        dtype=args.dtype, tp_size=args.tp_size, seed_rates=rates,
        chunk_size=parse_size(args.chunk_size) if args.chunk_size else None,
        kill_seed_at=args.kill_seed_at, kill_seed_index=args.kill_seed,
        compare_baseline=args.compare_baseline, load_rps=args.load_rps,
        throttle=throttle, slo_itl_seconds=slo_itl,
        include_zero_byte=args.include_zero_byte, rng_seed=args.rng_seed,
        json_path=args.json_path, progress=not args.no_progress, log_dir=args.log_dir,
        client_metrics_port=client_metrics_port, device=device, seed_device=seed_device,
        clients=clients, client_rate=rate, peers=not no_peers,
    )


def main(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args)
    except (UnitError, ValueError) as exc:
        print(f"rfork testbed: error: {exc}", file=sys.stderr)
        return 2
    from testbed.fleet import FleetError
    from rfork_agent.fork import ForkError

    if options.log_dir is None:
        import tempfile
        options = replace(options, log_dir=tempfile.mkdtemp(prefix="rfork-testbed-"))
    _send_native_stderr_to(os.path.join(options.log_dir, "client.log"))
    try:
        result = run_testbed(options)
    except (FleetError, ForkError) as exc:
        print(f"rfork testbed: error: {exc}", file=sys.stderr)
        return 1
    if options.clients is not None:
        print_scale_out_summary(result)
    else:
        print_summary(result)
    if options.json_path:
        os.makedirs(os.path.dirname(os.path.abspath(options.json_path)), exist_ok=True)
        with open(options.json_path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {options.json_path}")
    return 0 if result["verified"] else 1


def run_testbed(options: TestbedOptions) -> dict:
    """Start the fleet, fork every rank, verify, and return the result record."""
    quiet_mooncake_by_default()  # glog chatter on stderr, here and in the fleet's processes
    from metrics.definitions import ClientMetrics, serve_metrics
    from prometheus_client import CollectorRegistry
    from testbed.fleet import FleetSpec

    spec = FleetSpec(
        seeds=options.seeds, preset=options.model, size_bytes=options.size_bytes, dtype=options.dtype,
        tp_size=options.tp_size, rng_seed=options.rng_seed, seed_rates=options.seed_rates,
        load_rps=options.load_rps, include_zero_byte=options.include_zero_byte, log_dir=options.log_dir,
        device=options.seed_device or options.device, scheduler_args=options.scheduler_args,
        agent_args=("--throttle", options.throttle)
        + (() if options.slo_itl_seconds is None else ("--slo-itl", str(options.slo_itl_seconds))),
    )
    # One client registry for the whole run (every rank), so a scrape sees one client.
    client_metrics = ClientMetrics(CollectorRegistry())
    metrics_server = None
    if options.client_metrics_port is not None:
        metrics_server = serve_metrics(client_metrics.registry, options.client_metrics_port)
        print(f"rfork testbed: client metrics at http://127.0.0.1:{metrics_server.port}/metrics",
              file=sys.stderr, flush=True)
    try:
        if options.clients is not None:
            return _run_scale_out(options, spec)
        return _run_fleet(options, spec, client_metrics)
    finally:
        if metrics_server is not None:
            metrics_server.close()


def _run_scale_out(options: TestbedOptions, spec) -> dict:
    """``options.clients`` client processes fork rank 0 at once; each verifies its own bytes."""
    from testbed.fleet import Fleet
    from testbed.scale_out import ScaleOutOptions, run_scale_out

    started = time.perf_counter()
    with Fleet(spec) as fleet:
        startup_seconds = time.perf_counter() - started
        kill = None
        if options.kill_seed_at is not None:
            kill = (options.kill_seed_index, options.kill_seed_at)
        result = run_scale_out(fleet, ScaleOutOptions(
            clients=options.clients, peers=options.peers, client_rate=options.client_rate,
            chunk_size=options.chunk_size, device=options.device, kill_seed=kill))
        result.update({
            "model": options.model or f"llama-shaped {format_bytes(options.size_bytes or 0)}",
            "dtype": options.dtype, "chunk_size_bytes": options.chunk_size, "device": options.device,
            "seed_device": spec.device, "kill_seed_at": options.kill_seed_at,
            "startup_seconds": startup_seconds, "log_dir": str(fleet.log_dir),
        })
        return result


def _run_fleet(options: TestbedOptions, spec, client_metrics) -> dict:
    """Start the fleet, fork every rank into ``client_metrics``'s client, verify."""
    import torch

    from rfork_agent.fork import ForkClient, ForkOptions, register_tensors, single_seed_read
    from rfork_agent.destination import allocate_like
    from rfork_agent.transport import MooncakeTransport
    from testbed.fleet import Fleet

    if options.device.startswith("cuda:"):  # cuda:N becomes current; plain cuda is already cuda:0
        torch.cuda.set_device(torch.device(options.device))
    started = time.perf_counter()
    with Fleet(spec) as fleet:
        startup_seconds = time.perf_counter() - started
        identity = fleet.identity()
        transport = MooncakeTransport(protocol=spec.protocol, local_ip="127.0.0.1")
        ranks = []
        total_bytes_all = 0
        for rank in range(options.tp_size):
            seed_manifest_session, seed_manifest = seed_te_info(fleet.seeds[0].url, rank)
            tensors, buffer = allocate_like(seed_manifest, torch, device=options.device)
            register_tensors(transport, tensors)
            _warm_up(transport, fleet, rank, tensors)
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            total_bytes_all += total
            killer = _Killer(fleet, options, total) if rank == 0 else None
            bar = _progress_bar(options, total, f"rank {rank}")

            def on_progress(p, bar=bar, killer=killer) -> None:
                if bar is not None:
                    bar.update(p.bytes_done - bar.n)
                    bar.set_postfix_str(
                        " ".join(f"{s}={format_bytes(b)}" for s, b in sorted(p.bytes_by_seed.items()))
                        + (f" retried={p.retried_chunks}" if p.retried_chunks else "")
                    )
                if killer is not None:
                    killer.check(p.bytes_done)

            client = ForkClient(fleet.scheduler_url, transport, progress=on_progress,
                                metrics=client_metrics, options=ForkOptions())
            try:
                fork = asyncio.run(client.fork(identity, rank, tensors, chunk_size_bytes=options.chunk_size))
            finally:
                if bar is not None:
                    bar.close()
            verify_started = time.perf_counter()
            mismatched = verify_rank(spec, rank, tensors, device=options.device)
            verify_seconds = time.perf_counter() - verify_started
            record = {
                "rank": rank, "bytes": fork.bytes_total, "transfer_seconds": fork.transfer_seconds,
                "verified": not mismatched, "mismatched_tensors": mismatched[:10],
                "verify_seconds": verify_seconds, "bytes_by_seed": fork.bytes_by_seed,
                "retried_chunks": fork.retried_chunks, "failed_seeds": fork.failed_seeds,
                "chunks": fork.chunks_total, "job_id": fork.job_id,
                "kill_at_bytes": killer.killed_at_bytes if killer else None,
            }
            if options.compare_baseline:
                survivor = next(s for s in fleet.seeds if not s.killed)
                session, manifest = seed_te_info(survivor.url, rank)
                buffer.zero_()
                record["baseline_seconds"] = single_seed_read(transport, session, manifest, tensors)
                record["baseline_seed"] = survivor.seed_id
                record["baseline_verified"] = not verify_rank(spec, rank, tensors, device=options.device)
            ranks.append(record)

        by_seed: dict[str, int] = {}
        for r in ranks:
            for seed_id, b in r["bytes_by_seed"].items():
                by_seed[seed_id] = by_seed.get(seed_id, 0) + b
        transfer_seconds = sum(r["transfer_seconds"] for r in ranks)
        result = {
            "model": options.model or f"llama-shaped {format_bytes(options.size_bytes or 0)}",
            "dtype": options.dtype, "tp_size": options.tp_size, "chunk_size_bytes": options.chunk_size,
            "device": options.device, "seed_device": spec.device,
            "bytes": total_bytes_all,
            "transfer_seconds": transfer_seconds,
            "aggregate_bytes_per_second": total_bytes_all / transfer_seconds if transfer_seconds else None,
            "verified": all(r["verified"] for r in ranks),
            "retried_chunks": sum(r["retried_chunks"] for r in ranks),
            "seeds": [
                {"id": s.seed_id, "bytes": by_seed.get(s.seed_id, 0),
                 "rate_cap_bytes_per_second": s.rate_cap, "killed": s.killed}
                for s in fleet.seeds
            ],
            "kill_seed_at": options.kill_seed_at,
            "startup_seconds": startup_seconds,
            "ranks": ranks,
            "log_dir": str(fleet.log_dir),
        }
        if options.compare_baseline:
            result["baseline_seconds"] = sum(r["baseline_seconds"] for r in ranks)
            result["baseline_verified"] = all(r["baseline_verified"] for r in ranks)
            result["ratio_to_baseline"] = transfer_seconds / result["baseline_seconds"]
            result["baseline_at_cap_seconds"] = baseline_at_cap_seconds(result)
        if options.kill_seed_at is not None and all(s.rate_cap for s in fleet.seeds):
            result["ideal_seconds"] = ideal_kill_seconds(
                total_bytes_all, options.kill_seed_at, [s.rate_cap for s in fleet.seeds], options.kill_seed_index
            )
        return result


def _warm_up(transport, fleet, rank: int, tensors: dict) -> None:
    """Open this process's TransferEngine connection to every seed with one small read.

    The timed fork and the baseline (SGLang's single batch read, timed after it)
    then both run on established connections; otherwise the baseline would
    inherit the connection the fork paid for. The bytes read land where the
    fork writes them again.
    """
    name, tensor = min(((n, t) for n, t in tensors.items() if t.numel()), key=lambda nt: nt[1].numel())
    nbytes = tensor.numel() * tensor.element_size()
    for seed in fleet.seeds:
        session, manifest = seed_te_info(seed.url, rank)
        transport.read_sync(session, [tensor.data_ptr()], [manifest[name][0]], [nbytes])


def ideal_kill_seconds(total: int, fraction: float, caps: list[float], killed: int) -> float:
    """Bytes before the kill at the sum of caps, the rest at the survivors' sum."""
    before = total * fraction
    return before / sum(caps) + (total - before) / (sum(caps) - caps[killed])


class _Killer:
    """SIGKILLs one seed once a fraction of the bytes has landed."""

    def __init__(self, fleet, options: TestbedOptions, total: int) -> None:
        self.fleet, self.options, self.total = fleet, options, total
        self.killed_at_bytes: int | None = None

    def check(self, bytes_done: int) -> None:
        f = self.options.kill_seed_at
        if f is None or self.killed_at_bytes is not None or bytes_done < f * self.total:
            return
        self.fleet.kill_seed(self.options.kill_seed_index)
        self.killed_at_bytes = bytes_done


def verify_rank(spec, rank: int, tensors: dict, device: str = "cpu") -> list[str]:
    """Names of tensors whose bytes differ from an independent regeneration (compared on ``device``)."""
    from testbed.verify import expected_tensors

    expected = expected_tensors(spec, rank, device=device)
    bad = [name for name in expected if name not in tensors]
    for name, tensor in tensors.items():
        want = expected.get(name)
        if want is None or not _same_bytes(tensor, want):
            bad.append(name)
    return bad


def _same_bytes(a, b) -> bool:
    import torch

    if a.numel() * a.element_size() != b.numel() * b.element_size():
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().view(torch.uint8).flatten(), b.contiguous().view(torch.uint8).flatten())


def seed_te_info(url: str, rank: int) -> tuple[str, dict]:
    """(TransferEngine session, manifest) a seed (or stand-in) at ``url`` serves for ``rank`` (blocking)."""
    import httpx

    from rfork_api.seed_info import fetch_transfer_engine_info

    async def go():
        async with httpx.AsyncClient(timeout=10) as http:
            return await fetch_transfer_engine_info(http, url, rank)

    return asyncio.run(go())


def _progress_bar(options: TestbedOptions, total: int, desc: str):
    if not options.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"fork {desc}",
                dynamic_ncols=True, file=sys.stderr)


def print_summary(result: dict) -> None:
    print()
    for line in summary_lines(result):
        print(line)


def summary_lines(result: dict) -> list[str]:
    """The human summary of a testbed result record, one line per string.

    The comparisons compare like with like: a capped fork is set against the
    ideal its caps allow, and against SGLang R-Fork's single-seed read *under
    the same seed's cap*; the baseline measured uncapped is shown for what it
    is (this host's loopback speed), with no ratio to a capped fork.
    """
    ok = "VERIFIED byte-exact" if result["verified"] else "NOT VERIFIED"
    rate = result["aggregate_bytes_per_second"]
    lines = [
        f"rfork testbed: {result['model']} ({result['dtype']}, tp={result['tp_size']}), "
        f"{format_bytes(result['bytes'])} from {len(result['seeds'])} seeds",
        f"  transfer {result['transfer_seconds']:.2f} s at {format_rate(rate)}; "
        f"retried chunks {result['retried_chunks']}; {ok}",
        f"  {'seed':8} {'cap':>12} {'bytes':>12} {'share':>6}  state",
    ]
    for s in result["seeds"]:
        share = s["bytes"] / result["bytes"] if result["bytes"] else 0
        state = "KILLED" if s["killed"] else "alive"
        lines.append(f"  {s['id']:8} {format_rate(s['rate_cap_bytes_per_second']):>12} "
                     f"{format_bytes(s['bytes']):>12} {share:6.1%}  {state}")
    transfer = result["transfer_seconds"]
    caps = [s["rate_cap_bytes_per_second"] for s in result["seeds"]]
    if "ideal_seconds" in result:
        lines.append(f"  ideal with these caps and the kill: {result['ideal_seconds']:.2f} s; "
                     f"rfork/ideal = {transfer / result['ideal_seconds']:.2f}")
    elif caps and all(caps):
        ideal = result["bytes"] / sum(caps)
        lines.append(f"  ideal with these caps (bytes / sum of caps): {ideal:.2f} s; "
                     f"rfork/ideal = {transfer / ideal:.2f}")
    if "baseline_seconds" in result:
        lines += _baseline_lines(result)
    lines.append(f"  process logs: {result['log_dir']}")
    return lines


def print_scale_out_summary(result: dict) -> None:
    print()
    for line in scale_out_summary_lines(result):
        print(line)


def scale_out_summary_lines(result: dict) -> list[str]:
    """The human summary of a scale-out record (``--clients``), one line per string."""
    n, model = result["clients_count"], result["model_bytes"]
    how = ("clients feed each other" + (f", each uploading at most {format_rate(result['client_rate_bytes_per_second'])}"
                                        if result["client_rate_bytes_per_second"] else "")
           if result["peers"] else "every byte from the seeds (--no-peers)")
    verified = sum(1 for c in result["clients"] if c["verified"] is True)
    survivors = sum(1 for c in result["clients"] if not c["killed"])
    tta = result["time_to_all_seconds"]
    lines = [
        f"rfork testbed: scale-out of {n} client{'s' if n != 1 else ''}, {result['model']} "
        f"({format_bytes(model)}); {how}",
        f"  time to all: {'-' if tta is None else f'{tta:.2f} s'}; seeds served "
        f"{format_bytes(result['seed_bytes_served'])} = {result['seed_bytes_served_per_model']:.2f} x the model; "
        f"{verified} of {survivors} clients VERIFIED byte-exact",
        f"  {'client':10} {'fork s':>7} {'transfer s':>10} {'from seeds':>12} {'from peers':>12}  state",
    ]
    for c in result["clients"]:
        state = ("KILLED" if c["killed"] else "fell back, " if c["fell_back"] else "") + (
            "" if c["killed"] else "verified" if c["verified"] else "NOT VERIFIED")
        fork_s = "-" if c["fork_seconds"] is None else f"{c['fork_seconds']:.2f}"
        transfer_s = "-" if c["transfer_seconds"] is None else f"{c['transfer_seconds']:.2f}"
        lines.append(f"  {c['id']:10} {fork_s:>7} {transfer_s:>10} {format_bytes(c['bytes_from_seeds'] or 0):>12} "
                     f"{format_bytes(c['bytes_from_peers'] or 0):>12}  {state}")
    for s in result["seeds"]:
        lines.append(f"  {s['id']:10} cap {format_rate(s['rate_cap_bytes_per_second'])}, served "
                     f"{format_bytes(s['bytes_served'])}" + (" (KILLED)" if s["killed"] else ""))
    lines.append(f"  process logs: {result['log_dir']}")
    return lines


def baseline_at_cap_seconds(result: dict) -> float | None:
    """Least time SGLang R-Fork's single-seed read takes under the read seed's cap; None if uncapped.

    SGLang's read has no pacing of its own, so under a cap it moves at most
    the cap: bytes / cap per rank is its best case, a bound that favours it.
    """
    cap_of = {s["id"]: s["rate_cap_bytes_per_second"] for s in result["seeds"]}
    caps = [cap_of.get(r["baseline_seed"]) for r in result["ranks"]]
    if not caps or None in caps:
        return None
    return sum(r["bytes"] / cap for r, cap in zip(result["ranks"], caps))


def _baseline_lines(result: dict) -> list[str]:
    """SGLang R-Fork's way (one batch read from one seed) next to the fork, like with like."""
    transfer, measured = result["transfer_seconds"], result["baseline_seconds"]
    cap_of = {s["id"]: s["rate_cap_bytes_per_second"] for s in result["seeds"]}
    seeds = sorted({r["baseline_seed"] for r in result["ranks"]})
    caps = {cap_of.get(seed) for seed in seeds}
    read = f"one batch read of every tensor from {', '.join(seeds)}"
    if caps == {None}:
        return [f"  SGLang R-Fork baseline ({read}), uncapped like that seed in the fork: "
                f"{measured:.2f} s; rfork/baseline = {transfer / measured:.2f}"]
    lines = [f"  SGLang R-Fork baseline ({read}), uncapped: {measured:.2f} s "
             f"(no ratio: the fork ran under caps)"]
    at_cap = baseline_at_cap_seconds(result)
    if at_cap is not None:
        cap_text = ", ".join(format_rate(cap_of[seed]) for seed in seeds)
        lines.append(f"  SGLang R-Fork baseline under the same cap ({cap_text}): at least {at_cap:.2f} s "
                     f"(bytes / cap); rfork/baseline = {transfer / at_cap:.2f}")
    return lines


def _send_native_stderr_to(path: str) -> None:
    """TransferEngine's C++ logging writes to fd 2; send it to a log, keep Python's stderr on the terminal."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    terminal = os.dup(2)
    with open(path, "ab") as log_file:
        os.dup2(log_file.fileno(), 2)
    sys.stderr = os.fdopen(terminal, "w", buffering=1)
