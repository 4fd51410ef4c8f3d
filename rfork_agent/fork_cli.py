"""`rfork fork`: fork one rank's weights from the fleet into this process.

Outside SGLang (where the plugin forks straight into the model's parameters),
the destination is a buffer laid out like a seed's manifest; ``--output`` writes
it to disk as a raw file plus an index.

While it forks, the client serves the chunks it has landed to other clients of
the same weights (``--peer-rate``, ``--peer-max-in-flight``; ``--no-peers``
serves nobody), and ``--serve-seconds`` keeps serving after the fork is done.
Before the buffer is freed or rewritten (the process exits, a fallback read
rewrites it, Ctrl-C) it withdraws and waits until no read from it is on the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

from rfork_api.auth import AuthConfigError, load_token
from rfork_api.logs import add_log_arguments
from rfork_agent.destination import allocate_like, write_dump  # noqa: F401 - allocate_like: kept importable from here
from rfork_api.units import UnitError, format_bytes, format_rate, parse_size

if TYPE_CHECKING:
    from rfork_api.models import ModelIdentity

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
    p.add_argument("--no-peers", action="store_true",
                   help="serve no chunk to other clients (still read from peers the scheduler offers)")
    p.add_argument("--peer-rate", default="unlimited", metavar="RATE",
                   help="most other clients may read from this one: bytes/s (100MB/s, 2GiB/s) or bits/s (10Gbps); "
                        "0 serves nobody, like --no-peers; unlimited (default) = no cap")
    p.add_argument("--peer-max-in-flight", type=int, default=8, metavar="N",
                   help="reads other clients may have on this one at once (default 8)")
    p.add_argument("--serve-seconds", type=float, default=0.0, metavar="SECONDS",
                   help="after the fork is done, keep serving its chunks to other clients this long, then "
                        "withdraw (default 0)")
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
    from rfork_agent.fork import parse_peer_settings
    try:
        args.peers = parse_peer_settings(args.peer_rate, args.peer_max_in_flight, args.no_peers)
    except ValueError as exc:
        print(f"rfork fork: error: {exc}", file=sys.stderr)
        return 2
    if not 0 <= args.serve_seconds < float("inf"):
        print(f"rfork fork: error: --serve-seconds must be a number of seconds >= 0, got {args.serve_seconds}",
              file=sys.stderr)
        return 2
    if args.serve_seconds and not args.peers.serve:
        print("rfork fork: error: --serve-seconds serves chunks to other clients; drop it, or drop --no-peers "
              "(--peer-rate 0)", file=sys.stderr)
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
    interrupt = _Interrupt()
    try:
        return asyncio.run(_main(args, chunk_size, interrupt))
    except asyncio.CancelledError:
        # The signal landed after the fork's last await (while the result was being written).
        return interrupt.report()
    except Exception as exc:  # noqa: BLE001 - CLI boundary: one clear line, not a traceback
        from rfork_agent.fork import ForkError
        from rfork_api.errors import RforkApiError
        if isinstance(exc, (ForkError, RforkApiError)):
            print(f"rfork fork: error: {exc}", file=sys.stderr)
            return 1
        raise


class _Interrupt:
    """SIGINT and SIGTERM cancel the fork; its cleanup runs and one line says what it did.

    Cancelling the fork's task stops new reads, waits for the reads on the wire
    (TransferEngine cannot abort a read into our memory), releases the leases
    and cancels the job at the scheduler (``ForkClient.cancellation``). A second
    signal exits at once, leaving the rest to the agents' lease ttl and the
    scheduler's client timeout.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.client = None
        """The ForkClient, once there is one: what its cancellation cleaned up."""

    def install(self, task: asyncio.Task) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum, task)

    def _on_signal(self, signum: int, task: asyncio.Task) -> None:
        if self.signum is None:
            self.signum = signum
            task.cancel()
            return
        print(f"rfork fork: {signal.Signals(signum).name} again: exiting without waiting for the cleanup",
              file=sys.stderr, flush=True)
        os._exit(128 + signum)

    def report(self) -> int:
        """Print the one line and return the exit status (128 + the signal's number)."""
        assert self.signum is not None, "report() only after a signal"
        cancellation = getattr(self.client, "cancellation", None)
        withdrawal = getattr(self.client, "withdrawal", None)
        if cancellation is not None:
            what = cancellation.describe()
            if withdrawal is not None and not withdrawal.confirmed:
                what += f"; {withdrawal.describe()}"
        elif self.client is None:
            what = "no fork job had been created yet; nothing to clean up"
        elif withdrawal is not None:
            what = f"the fork had already ended; {withdrawal.describe()}"
        else:
            what = "the fork had already ended; nothing to clean up"
        print(f"rfork fork: interrupted by {signal.Signals(self.signum).name}; {what}", file=sys.stderr, flush=True)
        return 128 + self.signum


async def _main(args: argparse.Namespace, chunk_size: int | None, interrupt: _Interrupt) -> int:
    interrupt.install(asyncio.current_task())
    try:
        return await _fork(args, chunk_size, interrupt)
    except asyncio.CancelledError:
        if interrupt.signum is None:
            raise
        return interrupt.report()


async def preflight(args: argparse.Namespace) -> tuple["ModelIdentity", str, dict, bool]:
    """Check what a config mistake breaks, in well under 2 s, before paying for torch and TransferEngine.

    Returns (identity, seed session id, seed manifest, scheduler_reachable).
    Raises an ``RforkApiError`` or ``ForkError`` whose message says how to fix:
    the scheduler does not answer (unless ``--fallback-seed``), it refuses the
    token, the seed at ``--like-seed`` does not answer, or no live seed serves
    the identity and rank.
    """
    import httpx

    from rfork_api.auth import bearer_header
    from rfork_api.clients import SchedulerClient, seeds_serving
    from rfork_api.errors import SchedulerUnreachable
    from rfork_agent.fork import ForkError
    from rfork_api.models import ModelIdentity
    from rfork_api.seed_info import fetch_server_info, fetch_transfer_engine_info, seed_http_client

    # A short connect timeout: a dead host is reported at once. A scheduler that accepts the
    # connection but is slow to answer is alive, and gets the usual 10 s.
    timeout = httpx.Timeout(10.0, connect=_PREFLIGHT_CONNECT_SECONDS)

    async def like_seed() -> tuple[dict, str, dict]:
        async with seed_http_client(timeout) as http:
            info = await fetch_server_info(http, args.like_seed)
            return (info, *await fetch_transfer_engine_info(http, args.like_seed, args.rank))

    async with SchedulerClient(args.scheduler, timeout=timeout, headers=bearer_header(args.token)) as scheduler:
        seed, seeds = await asyncio.gather(like_seed(), scheduler.list_seeds(), return_exceptions=True)
    reachable = True
    if isinstance(seeds, SchedulerUnreachable):
        if not args.fallback_seed:
            raise ForkError(f"{seeds} (pass --fallback-seed to read from --like-seed alone)") from seeds
        reachable = False
    elif isinstance(seeds, BaseException):
        raise seeds
    if isinstance(seed, BaseException):
        raise seed
    info, session_id, seed_manifest = seed
    # The one identity rule (rfork_api.models): the seed agents and the SGLang plugin derive it the same way.
    identity = ModelIdentity.from_server_info(info, model=args.model, revision=args.revision, dtype=args.dtype,
                                              tp_size=args.tp_size)
    if reachable:
        seeds_serving(seeds, identity, args.rank)
    return identity, session_id, seed_manifest, reachable


_PREFLIGHT_CONNECT_SECONDS = 1.5


def _say_if_unconfirmed(client) -> None:
    """One line when a peer stopped waiting for reads from it without the scheduler's word."""
    withdrawal = getattr(client, "withdrawal", None)
    if withdrawal is not None and not withdrawal.confirmed:
        print(f"rfork fork: warning: {withdrawal.describe()}", file=sys.stderr, flush=True)


async def _fork(args: argparse.Namespace, chunk_size: int | None, interrupt: _Interrupt) -> int:
    from rfork_api.errors import SchedulerUnreachable

    identity, session_id, seed_manifest, scheduler_reachable = await preflight(args)

    # Only now the heavy part: torch, the destination buffer, TransferEngine.
    import torch
    from prometheus_client import CollectorRegistry

    from metrics.definitions import ClientMetrics, serve_metrics
    from rfork_agent.fork import ForkClient, ForkError, register_tensors, single_seed_read
    from rfork_agent.transport import MooncakeTransport

    tensors, buffer = allocate_like(seed_manifest, torch, device=args.device)
    transport = MooncakeTransport(protocol=args.protocol, local_ip=args.local_ip)
    register_tensors(transport, tensors)
    # The setup above blocks the event loop for seconds; a signal that came meanwhile lands
    # here, before a job exists.
    await asyncio.sleep(0)
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

    def fallback(why) -> dict:
        log.warning("scheduler unreachable (%s); falling back to one batch read from %s", why, args.like_seed)
        seconds = single_seed_read(transport, session_id, seed_manifest, tensors)
        return {"mode": "single-seed-fallback", "bytes": total, "transfer_seconds": seconds}

    started = time.perf_counter()
    try:
        if not scheduler_reachable:
            summary = fallback("no answer to the preflight check")
        else:
            client = interrupt.client = ForkClient(args.scheduler, transport, progress=on_progress,
                                                   metrics=metrics, token=args.token)
            try:
                # fork() withdraws (and waits for reads from us) before it returns or raises, unless
                # it is to keep serving; then stop_serving below does it.
                result = await client.fork(identity, args.rank, tensors, chunk_size_bytes=chunk_size,
                                           peer=client.peer_offer(args.peers),
                                           keep_serving=args.serve_seconds > 0)
            except SchedulerUnreachable as exc:
                _say_if_unconfirmed(client)
                if not args.fallback_seed:
                    raise ForkError(f"{exc} (pass --fallback-seed to read from --like-seed alone)") from exc
                summary = fallback(exc)
            except BaseException:
                _say_if_unconfirmed(client)
                raise
            else:
                if result.serving:
                    if bar is not None:
                        bar.close()
                        bar = None
                    print(f"rfork fork: forked; serving its chunks to other clients for {args.serve_seconds:g} s",
                          file=sys.stderr, flush=True)
                    try:
                        await client.serve(args.serve_seconds)
                    finally:
                        await client.stop_serving()
                        _say_if_unconfirmed(client)
                else:
                    _say_if_unconfirmed(client)
                summary = {
                    "mode": "rfork", "job_id": result.job_id, "bytes": result.bytes_total,
                    "transfer_seconds": result.transfer_seconds, "bytes_by_seed": result.bytes_by_seed,
                    "retried_chunks": result.retried_chunks, "failed_seeds": result.failed_seeds,
                    "bytes_from_seeds": result.bytes_from_seeds, "bytes_from_peers": result.bytes_from_peers,
                    "peer": args.peers.describe(), "serve_seconds": args.serve_seconds,
                }
    finally:
        if bar is not None:
            bar.close()
        if metrics_server is not None:
            if interrupt.signum is None:
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
