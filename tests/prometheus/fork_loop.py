"""Fork one model over and over until SIGTERM (a test helper: sustained fork traffic on a testbed).

    python -m tests.prometheus.fork_loop SCHEDULER_URL SEED_URL [--cpu N] [--nice N] [--chunk-size BYTES]

Prints one JSON line per finished fork ({"fork": n, "seconds": s}); forks into the same registered
buffer each time. ``--cpu`` pins this process (and the TransferEngine threads it starts) to one CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("scheduler")
    p.add_argument("seed_url")
    p.add_argument("--cpu", type=int, default=None)
    p.add_argument("--nice", type=int, default=0)
    p.add_argument("--chunk-size", type=int, default=16 << 20)
    args = p.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})  # before TransferEngine starts its threads: they inherit it
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)

    import httpx
    import torch

    from rfork_agent.fork import ForkClient, register_tensors
    from rfork_agent.fork_cli import allocate_like
    from rfork_agent.transport import MooncakeTransport
    from testbed.orchestrator import seed_te_info

    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    identity = httpx.get(f"{args.scheduler}/v1/seeds", timeout=10).json()[0]["identity"]
    transport = MooncakeTransport(protocol="tcp", local_ip="127.0.0.1")
    _, manifest = seed_te_info(args.seed_url, 0)
    tensors, _buffer = allocate_like(manifest, torch)
    register_tensors(transport, tensors)
    n = 0
    while not stop:
        started = time.monotonic()
        asyncio.run(ForkClient(args.scheduler, transport).fork(identity, 0, tensors, chunk_size_bytes=args.chunk_size))
        n += 1
        print(json.dumps({"fork": n, "seconds": round(time.monotonic() - started, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
