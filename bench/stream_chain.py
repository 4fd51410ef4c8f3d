"""A chain of stream readers over real TransferEngines: how far behind its parent each hop lands.

    python -m bench.stream_chain [--hops 3] [--size 256MiB] [--chunk-size 4MiB] [--land-rate 200MB/s] [--json PATH]

One process is the chain's head: it lands a model's chunks into its own memory at
``--land-rate`` (as a fork landing them would), marking each in its landed map
(rfork_agent/landed.py). ``--hops`` processes follow, each with its own
TransferEngine: hop 1 follows the head's map, hop k follows hop k - 1's, all at
once, as the streams of one stripe tree do (docs/fleet.md, "Streams"). Each
hop checks its bytes. The report is when each hop had the whole model, after
the head started landing: with streams a hop should finish about one read batch
after its parent, whatever the depth, rather than a whole model behind.
Over TCP on loopback here, RDMA in production: the same TransferEngine calls.
``--device cuda`` keeps every member's weights in GPU memory (the maps stay in host
memory): the head then waits for its GPU copies before it marks a chunk.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

from rfork_api.units import UnitError, format_bytes, format_rate, parse_rate, parse_size

PATTERN_MOD = 251


def _model(size: int, tensors: int) -> list[int]:
    base = size // tensors
    return [base] * (tensors - 1) + [size - base * (tensors - 1)]


def _member(args: argparse.Namespace) -> int:
    """One process of the chain (``--role head`` or ``follower``): JSON lines on stdout, orders on stdin."""
    import asyncio

    import torch

    from rfork_agent.landed import FollowOptions, LandedMap, follow
    from rfork_agent.transport import MooncakeTransport
    from rfork_api.chunking import plan_chunks
    from rfork_api.landed import LandedMapRef, Stream
    from rfork_api.manifest import parse_manifest

    sizes = _model(args.size, args.tensors)
    weights = torch.zeros(args.size, dtype=torch.uint8, device=args.device)
    base, starts = weights.data_ptr(), [sum(sizes[:i]) for i in range(len(sizes))]
    manifest = parse_manifest({f"t{i}": [base + starts[i], n, 1] for i, n in enumerate(sizes)})
    plan = plan_chunks(manifest, args.chunk_size)
    transport = MooncakeTransport(protocol="tcp", local_ip="127.0.0.1")
    transport.register(base, args.size)
    landed = LandedMap(transport, plan, manifest)
    print(json.dumps({"session_id": transport.session_id, "map": landed.ptr, "chunks": len(plan),
                      "tensors": len(sizes)}), flush=True)
    order = json.loads(sys.stdin.readline())  # {"go": wall time} or {"parent": ref, "go": ...}
    # byte i is i % 251, built in bytes (an int64 arange of the model would be 8x its size per process)
    full = torch.arange(PATTERN_MOD, dtype=torch.uint8, device=args.device).repeat(
        args.size // PATTERN_MOD + 1)[:args.size]
    on_gpu = weights.is_cuda
    while time.time() < order["go"]:
        time.sleep(0.0005)
    started = time.time()
    if args.role == "head":
        landed_bytes = 0
        for c, chunk in enumerate(plan):
            for name, offset, length in chunk.segments:
                at = starts[int(name[1:])] + offset
                weights[at:at + length] = full[at:at + length]
                landed_bytes += length
            if on_gpu:
                torch.cuda.synchronize()  # a GPU copy is queued, not done: the map may say so only once it is
            landed.mark([c])
            if args.land_rate:  # pace: chunk c is in place no sooner than its bytes at the rate
                ahead = started + landed_bytes / args.land_rate - time.time()
                if ahead > 0:
                    time.sleep(ahead)
        print(json.dumps({"done_at": time.time(), "started_at": started, "verified": True}), flush=True)
    else:
        p = order["parent"]
        stream = Stream(LandedMapRef(p["session_id"], p["map"], p["chunks"], p["tensors"]), 0, len(plan))
        asyncio.run(follow(transport, stream, plan, manifest, landed, FollowOptions(batch_chunks=args.batch_chunks)))
        done = time.time()
        print(json.dumps({"done_at": done, "started_at": started, "verified": bool(torch.equal(weights, full))}),
              flush=True)
    sys.stdin.read()  # serve our map and chunks to the next hop until the coordinator closes stdin
    landed.close()
    return 0


def run(args: argparse.Namespace) -> dict:
    common = ["--size", str(args.size), "--chunk-size", str(args.chunk_size), "--tensors", str(args.tensors),
              "--device", args.device,
              "--batch-chunks", str(args.batch_chunks), "--land-rate", str(args.land_rate or 0)]
    roles = ["head"] + ["follower"] * args.hops
    logs = [tempfile.TemporaryFile(mode="w+") for _ in roles]  # TransferEngine's chatter; shown if one fails
    procs = [subprocess.Popen([sys.executable, "-m", "bench.stream_chain", "--role", role, *common],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
             for role, log in zip(roles, logs)]
    try:
        refs = []
        for p in procs:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError("a chain member exited before it was ready (is mooncake-transfer-engine installed?)")
            refs.append(json.loads(line))
        go = time.time() + 1.0  # every member starts at the same wall time
        for i, p in enumerate(procs):
            p.stdin.write(json.dumps({"go": go, **({"parent": refs[i - 1]} if i else {})}) + "\n")
            p.stdin.flush()
        results = [json.loads(p.stdout.readline() or "{}") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    p.stdin.close()
                except OSError:
                    pass
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    for i, r in enumerate(results):
        if "done_at" not in r:
            logs[i].seek(0)
            tail = [line for line in logs[i].read().splitlines() if not line.startswith(("I", "W"))][-5:]
            code = procs[i].returncode
            raise RuntimeError(f"chain member {i} ({roles[i]}) ended without a result (exit {code}"
                               f"{', killed: out of memory?' if code == -9 else ''}): " + " | ".join(tail))
    start = results[0]["started_at"]
    head_seconds = results[0]["done_at"] - start
    hops = []
    for k, r in enumerate(results[1:], start=1):
        seconds = r["done_at"] - start
        hops.append({"hop": k, "seconds_after_head_started": seconds,
                     "seconds_behind_parent": r["done_at"] - results[k - 1]["done_at"],
                     "verified": r["verified"]})
    return {"device": args.device, "size_bytes": args.size, "chunk_size_bytes": args.chunk_size,
            "chunks": refs[0]["chunks"],
            "tensors": refs[0]["tensors"], "batch_chunks": args.batch_chunks, "land_rate_bytes_per_second":
            args.land_rate or None, "head_landing_seconds": head_seconds, "hops": hops,
            "every_hop_verified": all(h["verified"] for h in hops)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stream_chain", description=__doc__.split("\n\n")[0])
    p.add_argument("--hops", type=int, default=3, help="followers in the chain (default 3)")
    p.add_argument("--size", default="256MiB", help="model size (default 256MiB)")
    p.add_argument("--chunk-size", default="4MiB", help="chunk size (default 4MiB)")
    p.add_argument("--tensors", type=int, default=64, help="tensors the model is split into (default 64)")
    p.add_argument("--batch-chunks", type=int, default=8, help="chunks per read from a parent (default 8)")
    p.add_argument("--land-rate", default="200MB/s",
                   help="how fast the head lands the model (default 200MB/s; 'unlimited' for memcpy speed)")
    p.add_argument("--device", default="cpu",
                   help="where every member holds its weights: cpu (default) or cuda[:N] (the landed maps stay in "
                        "host memory)")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--role", choices=["head", "follower"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.size, args.chunk_size = parse_size(args.size), parse_size(args.chunk_size)
        args.land_rate = parse_rate(args.land_rate) or 0.0  # unlimited (None) and 0: land at memory speed
    except UnitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.role:
        return _member(args)
    from rfork_agent.devices import DeviceError, check_device

    try:
        check_device(args.device)
    except DeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not 1 <= args.hops <= 32 or args.tensors < 1 or args.batch_chunks < 1 or args.size < args.tensors:
        print("error: --hops must be 1-32, --tensors and --batch-chunks >= 1, --size >= --tensors bytes",
              file=sys.stderr)
        return 2
    try:
        result = run(args)
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rate = f" at {format_rate(result['land_rate_bytes_per_second'])}" if result["land_rate_bytes_per_second"] else ""
    print(f"head landed {format_bytes(result['size_bytes'])} ({result['device']}) in {result['chunks']} chunks{rate} in "
          f"{result['head_landing_seconds']:.2f} s")
    for h in result["hops"]:
        print(f"  hop {h['hop']}: whole model {h['seconds_after_head_started']:.2f} s after the head started, "
              f"{h['seconds_behind_parent'] * 1000:.0f} ms behind its parent; bytes "
              f"{'verified' if h['verified'] else 'DIFFER'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return 0 if result["every_hop_verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
