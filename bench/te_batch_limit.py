"""Measure how many segments one Mooncake TransferEngine batch may carry over TCP.

A seed process registers one buffer; for each segment size this process
bisects the largest batch (``batch_transfer_async_read`` of N segments) that
completes. After each attempt it sends single-segment reads to the same peer
until one works: a rejected batch cannot taint the next attempt, and the wait
is the second thing measured (how long the engine stays unusable).

    python -m bench.te_batch_limit --sizes 8,4096,65536 --json out/te-batch-limit.json

``rfork_agent.transport.MAX_SEGMENTS_PER_BATCH`` is set well below what this finds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time

SEED_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from rfork_agent.transport import MooncakeTransport
    n = int(sys.argv[1])
    weights = torch.ones(n, dtype=torch.uint8)
    t = MooncakeTransport(protocol="tcp", local_ip="127.0.0.1")
    t.register(weights.data_ptr(), n)
    print(json.dumps({"session_id": t.session_id, "ptr": weights.data_ptr()}), flush=True)
    sys.stdin.read()
""")


def _raw_batch(engine, session: str, dst: int, src: int, segments: int, size: int) -> bool:
    """One TE batch of ``segments`` reads of ``size`` bytes, spaced ``2*size`` apart; True if it completed."""
    stride = 2 * size
    dst_ptrs = [dst + i * stride for i in range(segments)]
    src_ptrs = [src + i * stride for i in range(segments)]
    handle = engine.batch_transfer_async_read(session, dst_ptrs, src_ptrs, [size] * segments)
    return bool(handle) and engine.get_batch_transfer_status([handle]) == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="8,4096,65536", help="segment sizes in bytes, comma-separated")
    parser.add_argument("--high", type=int, default=8192, help="largest batch to try")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    import torch

    from rfork_agent.transport import MooncakeTransport

    region = 2 * max(sizes) * args.high
    with open(os.devnull, "w") as devnull:
        seed = subprocess.Popen([sys.executable, "-c", SEED_SCRIPT, str(region)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=devnull, text=True)
    try:
        info = json.loads(seed.stdout.readline())
        dst = torch.zeros(region, dtype=torch.uint8)
        client = MooncakeTransport(protocol="tcp")
        client.register(dst.data_ptr(), region)
        session, dst_ptr, src_ptr = info["session_id"], dst.data_ptr(), info["ptr"]

        def settle(size: int) -> tuple[int, float]:
            """Single reads until one succeeds: (failed single reads, seconds until one worked)."""
            started, failed = time.monotonic(), 0
            while not _raw_batch(client.engine, session, dst_ptr, src_ptr, 1, size):
                failed += 1
                if time.monotonic() - started > 60:
                    raise SystemExit(f"single reads to {session} still fail 60 s after a rejected batch")
                time.sleep(0.01)
            return failed, time.monotonic() - started

        results = []
        for size in sizes:
            # One engine for every attempt: after a rejected batch, wait until a single
            # read works again (that wait is the second thing measured).
            recoveries = []

            def accepted(segments: int) -> bool:
                ok = _raw_batch(client.engine, session, dst_ptr, src_ptr, segments, size)
                failed, seconds = settle(size)
                if not ok:
                    recoveries.append((failed, seconds))
                print(f"  {size} B x {segments}: {'ok' if ok else 'rejected'}", file=sys.stderr, flush=True)
                return ok

            low, high = 1, args.high  # accepted(low) holds; find the largest accepted
            if accepted(high):
                low = high
            while high - low > 1:
                mid = (low + high) // 2
                if accepted(mid):
                    low = mid
                else:
                    high = mid
            row = {"segment_bytes": size, "largest_accepted_batch": low, "smallest_rejected_batch": high,
                   "after_a_rejected_batch": {
                       "single_reads_failed_max": max((f for f, _ in recoveries), default=0),
                       "seconds_until_a_read_works_max": round(max((s for _, s in recoveries), default=0.0), 3)}}
            print(json.dumps(row), flush=True)
            results.append(row)
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as out:
                json.dump(results, out, indent=1)
    finally:
        seed.kill()
        seed.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
