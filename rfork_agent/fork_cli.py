"""`rfork fork`: fork one rank's weights from the fleet into this process.

Outside SGLang (where the plugin forks straight into the model's parameters),
the destination is a buffer laid out like a seed's manifest; ``--output`` writes
it to disk as a raw file plus an index.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time

from rfork_api.auth import AuthConfigError, load_token
from rfork_api.logs import add_log_arguments
from rfork_agent.destination import allocate_like, write_dump  # noqa: F401 - allocate_like: kept importable from here
from rfork_api.units import UnitError, format_bytes, format_rate, parse_size

log = logging.getLogger("rfork.fork")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", required=True, help="rfork scheduler URL, e.g. http://127.0.0.1:8700")
    p.add_argument("--like-seed", required=True, metavar="URL",
                   help="an SGLang seed (or stand-in) whose manifest gives the destination layout and identity")
    p.add_argument("--rank", type=int, default=0, help="tensor-parallel rank to fork (default 0)")
    p.add_argument("--model", help="model identity override (default: the seed's model_path)")
    p.add_argument("--revision", help="revision override (default: the seed's, or 'main')")
    p.add_argument("--dtype", help="dtype override (default: the seed's)")
    p.add_argument("--tp-size", type=int, help="tp size override (default: the seed's)")
    p.add_argument("--chunk-size", default=None, help="chunk size, e.g. 64MiB (default: the scheduler's)")
    p.add_argument("--fallback-seed", action="store_true",
                   help="if the scheduler is unreachable, read everything from --like-seed in one batch "
                        "(SGLang R-Fork's single-seed path)")
    p.add_argument("--protocol", default=os.environ.get("MOONCAKE_PROTOCOL", "tcp"), choices=["tcp", "rdma"])
    p.add_argument("--local-ip", default="127.0.0.1")
    p.add_argument("--device", default="cpu",
                   help="where the destination buffer lives: cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--output", metavar="DIR", help="write rank<R>.bin and rank<R>.index.json here")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON")
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve this client's Prometheus metrics at http://HOST:PORT/metrics while it runs "
                        "(0 picks a free port; off by default)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address --metrics-port binds (default 127.0.0.1)")
    p.add_argument("--metrics-linger", type=float, default=0.0, metavar="SECONDS",
                   help="keep serving metrics this long after the fork ends, so a last scrape sees the final "
                        "values (default 0)")
    p.add_argument("--token-file", default=None,
                   help="file holding the fleet's shared bearer token (default $RFORK_TOKEN_FILE, else $RFORK_TOKEN)")
    p.add_argument("--no-progress", action="store_true")
    add_log_arguments(p)


def main(args: argparse.Namespace) -> int:
    try:
        chunk_size = parse_size(args.chunk_size) if args.chunk_size else None
    except UnitError as exc:
        print(f"rfork fork: error: --chunk-size: {exc}", file=sys.stderr)
        return 2
    if args.rank < 0:
        print("rfork fork: error: --rank must be >= 0", file=sys.stderr)
        return 2
    try:
        args.token = load_token(args.token_file)
    except AuthConfigError as exc:
        print(f"rfork fork: error: --token-file: {exc}", file=sys.stderr)
        return 2
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        print(f"rfork fork: error: --metrics-port must be between 0 and 65535, got {args.metrics_port}",
              file=sys.stderr)
        return 2
    if args.metrics_linger < 0:
        print("rfork fork: error: --metrics-linger must be >= 0 seconds", file=sys.stderr)
        return 2
    from rfork_agent.devices import DeviceError, check_device
    try:
        check_device(args.device)
    except DeviceError as exc:
        print(f"rfork fork: error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_fork(args, chunk_size))
    except Exception as exc:  # noqa: BLE001 - CLI boundary: one clear line, not a traceback
        from rfork_agent.fork import ForkError
        from rfork_agent import clients
        if isinstance(exc, (ForkError, clients.ClientError)):
            print(f"rfork fork: error: {exc}", file=sys.stderr)
            return 1
        raise


async def _fork(args: argparse.Namespace, chunk_size: int | None) -> int:
    import httpx
    import torch
    from prometheus_client import CollectorRegistry

    from metrics.definitions import ClientMetrics, serve_metrics
    from rfork_agent import clients
    from rfork_agent.fork import ForkClient, ForkError, register_tensors, single_seed_read
    from rfork_api.seed_info import fetch_server_info, fetch_transfer_engine_info
    from rfork_agent.transport import MooncakeTransport

    async with httpx.AsyncClient(timeout=10) as http:
        info = await fetch_server_info(http, args.like_seed)
        session_id, seed_manifest = await fetch_transfer_engine_info(http, args.like_seed, args.rank)
    identity = {
        "model": args.model or info.get("model_path"),
        "revision": args.revision or info.get("revision") or "main",
        "dtype": args.dtype or str(info.get("dtype")),
        "tp_size": args.tp_size or int(info.get("tp_size", 1)),
    }
    tensors, buffer = allocate_like(seed_manifest, torch, device=args.device)
    transport = MooncakeTransport(protocol=args.protocol, local_ip=args.local_ip)
    register_tensors(transport, tensors)
    total = sum(t.numel() * t.element_size() for t in tensors.values())

    bar = None
    if not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"fork rank {args.rank}")

    def on_progress(p) -> None:
        if bar is not None:
            bar.update(p.bytes_done - bar.n)
            bar.set_postfix_str(f"retried={p.retried_chunks} failed_seeds={len(p.failed_seeds)}")

    metrics = ClientMetrics(CollectorRegistry())
    metrics_server = None
    if args.metrics_port is not None:
        try:
            metrics_server = serve_metrics(metrics.registry, args.metrics_port, args.metrics_host)
        except OSError as exc:
            raise ForkError(f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}") from exc
        print(f"rfork fork: metrics at http://{args.metrics_host}:{metrics_server.port}/metrics",
              file=sys.stderr, flush=True)

    started = time.perf_counter()
    try:
        result = await ForkClient(args.scheduler, transport, progress=on_progress, metrics=metrics,
                                  token=args.token).fork(
            identity, args.rank, tensors, chunk_size_bytes=chunk_size
        )
        summary = {
            "mode": "rfork", "job_id": result.job_id, "bytes": result.bytes_total,
            "transfer_seconds": result.transfer_seconds, "bytes_by_seed": result.bytes_by_seed,
            "retried_chunks": result.retried_chunks, "failed_seeds": result.failed_seeds,
        }
    except clients.SchedulerUnreachable as exc:
        if not args.fallback_seed:
            raise ForkError(f"{exc} (pass --fallback-seed to read from --like-seed alone)") from exc
        log.warning("scheduler unreachable (%s); falling back to one batch read from %s", exc, args.like_seed)
        seconds = single_seed_read(transport, session_id, seed_manifest, tensors)
        summary = {"mode": "single-seed-fallback", "bytes": total, "transfer_seconds": seconds}
    finally:
        if bar is not None:
            bar.close()
        if metrics_server is not None:
            await asyncio.sleep(args.metrics_linger)
            metrics_server.close()
    summary["wall_seconds"] = time.perf_counter() - started
    rate = summary["bytes"] / summary["transfer_seconds"] if summary["transfer_seconds"] else None
    print(f"forked {format_bytes(summary['bytes'])} in {summary['transfer_seconds']:.2f} s ({format_rate(rate)})")
    if args.output:
        write_dump(args.output, args.rank, tensors, buffer)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0
