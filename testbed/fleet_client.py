"""One fork client of a testbed scale-out (`rfork testbed --clients N`), as its own process.

The orchestrator starts N of these at once. Each sets up its destination
memory and its own TransferEngine, says it is ready, and waits for ``go`` on
stdin so that every fork starts together (setting up torch and TransferEngine
takes seconds and must not count). It then forks through the scheduler with
the ``ForkClient`` that `rfork fork` uses, offering its landed chunks to the
other clients (``--peer-rate``, ``--peer-max-in-flight``; ``--no-peers``
serves nobody), keeps serving until ``stop`` (or stdin closes), withdraws and
waits for the reads from it, and only then checks its own memory against the
digests of an independent regeneration of the weights (``--expected-digests``).

It talks to the orchestrator in JSON lines on stdout (``ClientEvent``):
``ready``, ``progress`` (job id and bytes landed, a few per second), ``forked``
(or ``failed`` then ``fell_back``), and ``result``. Everything else goes to
stderr, i.e. its log.

``--fail-at F`` is the chaos harness's fault: when F of the bytes have
landed, the fork fails on purpose and the client does what a failed SGLang
load does, withdraw as a peer, wait for the reads from it, then let a fallback
rewrite its memory: it zeroes the buffer (so a reader that was not waited for
would get wrong bytes and fail its own check) and reads every tensor from
``--like-seed`` in one batch.

    python -m testbed.fleet_client --scheduler URL --like-seed URL --identity '{...}' \\
        --expected-digests rank0.json --chunk-size 4MiB --peer-rate 50MB/s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import threading
import time

from rfork_api.logs import add_log_arguments, setup_logging_from_args
from rfork_api.models import ModelIdentity
from rfork_api.units import UnitError, parse_size

log = logging.getLogger("rfork.testbed.client")

PROGRESS_INTERVAL_SECONDS = 0.1
"""How often a client reports its progress to the orchestrator (the fault triggers read it)."""


class InjectedFault(Exception):
    """``--fail-at``: the fork fails on purpose here, as a real failure would."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", required=True)
    p.add_argument("--like-seed", required=True, metavar="URL",
                   help="a seed stand-in: the destination layout, and where a fallback reads from")
    p.add_argument("--identity", required=True, help="the model identity as JSON (what the agents registered)")
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--chunk-size", default=None)
    p.add_argument("--client-id", default="client-0")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--peer-rate", default="unlimited")
    p.add_argument("--peer-max-in-flight", type=int, default=8)
    p.add_argument("--expected-digests", required=True, metavar="PATH",
                   help="JSON {tensor name: BLAKE2b-256 hex} of the weights every seed holds")
    p.add_argument("--fail-at", type=float, default=None, metavar="FRACTION",
                   help="fail the fork on purpose when this fraction has landed, then fall back")
    p.add_argument("--device", default="cpu")
    p.add_argument("--token-file", default=None)
    add_log_arguments(p, default="warning")


def emit(event: str, **fields) -> None:
    """One JSON line on stdout for the orchestrator."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class _Commands:
    """Lines from the orchestrator on stdin (``go``, ``stop``), as awaitable events. EOF means stop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.go, self.stop = asyncio.Event(), asyncio.Event()
        self._loop = loop
        threading.Thread(target=self._read, daemon=True, name="commands").start()

    def _read(self) -> None:
        for line in sys.stdin:
            word = line.strip()
            if word == "go":
                self._loop.call_soon_threadsafe(self.go.set)
            elif word == "stop":
                break
        # stop (or the orchestrator went away): a stop also releases a client still waiting to start
        self._loop.call_soon_threadsafe(self.stop.set)
        self._loop.call_soon_threadsafe(self.go.set)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.fleet_client", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging_from_args(args)
    from rfork_agent.fork import parse_peer_settings
    from rfork_api.auth import load_token

    try:
        args.peers = parse_peer_settings(args.peer_rate, args.peer_max_in_flight, args.no_peers)
        args.chunk_size_bytes = parse_size(args.chunk_size) if args.chunk_size else None
    except (ValueError, UnitError) as exc:
        print(f"fleet client: error: {exc}", file=sys.stderr)
        return 2
    args.token = load_token(args.token_file)
    args.identity = ModelIdentity.model_validate_json(args.identity)

    import torch

    from rfork_agent.destination import allocate_like
    from rfork_agent.fork import register_tensors
    from rfork_agent.transport import MooncakeTransport
    from testbed.orchestrator import seed_te_info

    seed_session, seed_manifest = seed_te_info(args.like_seed, args.rank)
    tensors, buffer = allocate_like(seed_manifest, torch, device=args.device)
    transport = MooncakeTransport(protocol="tcp", local_ip="127.0.0.1")
    register_tensors(transport, tensors)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    emit("ready", session_id=transport.session_id, bytes=total)
    return asyncio.run(_run(args, transport, tensors, buffer, total, seed_session, seed_manifest))


async def _run(args, transport, tensors: dict, buffer, total: int, seed_session: str,
               seed_manifest: dict) -> int:
    from rfork_agent.fork import ForkClient, ForkError, single_seed_read

    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, main_task.cancel)
    commands = _Commands(loop)
    await commands.go.wait()
    if commands.stop.is_set():
        emit("result", id=args.client_id, error="stopped before it started", verified=None)
        return 1

    last_emit = 0.0

    def on_progress(p) -> None:
        nonlocal last_emit
        now = time.monotonic()
        if now - last_emit >= PROGRESS_INTERVAL_SECONDS or p.bytes_done >= p.bytes_total:
            last_emit = now
            emit("progress", job_id=client.job_id, bytes_done=p.bytes_done, bytes_total=p.bytes_total)
        if args.fail_at is not None and p.bytes_done >= args.fail_at * p.bytes_total:
            raise InjectedFault(f"--fail-at {args.fail_at}: failing on purpose with {p.bytes_done} of "
                                f"{p.bytes_total} bytes landed")

    client = ForkClient(args.scheduler, transport, progress=on_progress, token=args.token)
    record: dict = {"id": args.client_id, "fell_back": False}
    started = time.time()
    try:
        result = await client.fork(args.identity, args.rank, tensors, chunk_size_bytes=args.chunk_size_bytes,
                                   peer=client.peer_offer(args.peers), keep_serving=True)
    except (ForkError, InjectedFault) as exc:
        # fork() withdrew and waited for the reads from us before it raised: the memory is ours again.
        withdrawal = client.withdrawal
        record.update(error=f"{type(exc).__name__}: {exc}", job_id=client.job_id,
                      withdraw_confirmed=None if withdrawal is None else withdrawal.confirmed,
                      withdraw_seconds=None if withdrawal is None else withdrawal.seconds)
        emit("failed", **record)
        buffer.zero_()
        seconds = await asyncio.to_thread(single_seed_read, transport, seed_session, seed_manifest, tensors)
        record.update(fell_back=True, fallback_seconds=seconds, transfer_seconds=None,
                      bytes_from_seeds=total, bytes_from_peers=0)
        emit("fell_back", at=time.time(), started_at=started, **record)
    else:
        record.update(job_id=result.job_id, transfer_seconds=result.transfer_seconds,
                      bytes_from_seeds=result.bytes_from_seeds, bytes_from_peers=result.bytes_from_peers,
                      bytes_by_seed=result.bytes_by_seed, retried_chunks=result.retried_chunks,
                      failed_seeds=result.failed_seeds)
        emit("forked", at=time.time(), started_at=started, **record)
        try:
            await client.serve(stop=commands.stop)
        finally:
            await client.stop_serving()
        withdrawal = client.withdrawal
        if withdrawal is not None:
            record.update(withdraw_confirmed=withdrawal.confirmed, withdraw_seconds=withdrawal.seconds)
    # Read only now: the orchestrator regenerates the weights while the clients start.
    with open(args.expected_digests) as f:
        expected = json.load(f)
    mismatched = await asyncio.to_thread(_mismatched, tensors, expected)
    record.update(verified=not mismatched, mismatched_tensors=mismatched[:10])
    emit("result", **record)
    return 0 if not mismatched else 1


def _mismatched(tensors: dict, expected: dict) -> list[str]:
    """Tensors whose bytes differ from the expected digests (or that are missing on either side)."""
    from testbed.weights import digests

    got = digests(tensors)
    return sorted(name for name in set(got) | set(expected) if got.get(name) != expected.get(name))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit(130)
