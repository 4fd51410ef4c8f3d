"""Which CPUs slow a pinned seed's decode: the host's topology, and each neighbour's effect, measured.

The QoS battery pins every plant's seeds to CPUs of their own and runs the plants side by side. A
seed's speed still moved 0.7-1.1x between its calibration and its runs on the GPU hosts (v12, v17,
v20), with no stolen time and an unchanged load. Two ways a neighbour on *another* CPU slows it: a
hyperthread sibling shares its core, and every CPU on the socket shares its last-level cache and
memory bandwidth. This measures both on the host it runs on::

    python -m bench.cpu_neighbours [--victim 0] [--seconds 2] [--json out.json]

It prints the topology the kernel reports (thread siblings, cores, L3 groups), then a one-thread
decode-like workload (a batch-64 matmul over 32 MiB of fp32 weights, as a seed stand-in's layer pass)
on the victim CPU: alone, beside the same workload on each other CPU in turn, beside it on every
other CPU, and beside memory copies (as a fork's TCP transfer makes) on every other CPU.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def parse_cpu_list(text: str) -> frozenset[int]:
    """The CPUs of a kernel CPU list ("0-3,8,10-11").

        >>> sorted(parse_cpu_list("0-2,8,10-11"))
        [0, 1, 2, 8, 10, 11]
        >>> sorted(parse_cpu_list("5"))
        [5]
    """
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        out.update(range(int(low), int(high or low) + 1))
    return frozenset(out)


def thread_siblings(cpus: list[int]) -> dict[int, frozenset[int]]:
    """Per CPU, the CPUs that share its core as the kernel reports it (itself alone where it does not say)."""
    out = {}
    for cpu in cpus:
        text = _read(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"))
        try:
            out[cpu] = parse_cpu_list(text) if text else frozenset({cpu})
        except ValueError:
            out[cpu] = frozenset({cpu})
    return out


def topology(cpus: list[int]) -> dict[int, dict[str, str | None]]:
    """Per CPU: its thread siblings, core and package ids, and the CPUs sharing its last-level cache."""
    out = {}
    for cpu in cpus:
        base = Path(f"/sys/devices/system/cpu/cpu{cpu}")
        caches = sorted(base.glob("cache/index*"))
        llc = caches[-1] if caches else None
        out[cpu] = {
            "thread_siblings": _read(base / "topology/thread_siblings_list"),
            "core_id": _read(base / "topology/core_id"),
            "package_id": _read(base / "topology/physical_package_id"),
            "llc_shared_cpus": _read(llc / "shared_cpu_list") if llc else None,
            "llc_size": _read(llc / "size") if llc else None,
        }
    return out


def _decode_work(cpu: int, seconds: float, ready, go, result) -> None:
    os.sched_setaffinity(0, {cpu})
    import torch
    torch.set_num_threads(1)
    weights = torch.randn(2048, 4096)
    batch = torch.randn(64, 2048)
    batch @ weights  # warm up
    ready.put(cpu)
    go.wait()
    if result is not None:
        time.sleep(NEIGHBOURS_LEAD_SECONDS)  # the neighbours are running by then
    steps, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        batch @ weights
        steps += 1
    if result is not None:
        result.put(steps / seconds)


def _copy_work(cpu: int, seconds: float, ready, go, result) -> None:
    os.sched_setaffinity(0, {cpu})
    import torch
    torch.set_num_threads(1)
    src, dst = torch.empty(64 << 20, dtype=torch.uint8), torch.empty(64 << 20, dtype=torch.uint8)
    src.fill_(1)
    dst.copy_(src)  # warm up: both buffers paged in
    ready.put(cpu)
    go.wait()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        dst.copy_(src)


#: The victim starts this long after its neighbours, and they stop this long after it (all of its
#: measurement sees them busy).
NEIGHBOURS_LEAD_SECONDS = 0.25


def measure(victim: int, neighbours: list[int], kind: str, seconds: float) -> float:
    """The victim's decode steps/s while ``kind`` ("decode" or "copy") work runs on ``neighbours``.

    Every process imports torch and warms up first; all start together once every one is ready, so a slow
    import does not shorten the overlap.
    """
    ctx = mp.get_context("spawn")
    ready, go, result = ctx.Queue(), ctx.Event(), ctx.Queue()
    work = _decode_work if kind == "decode" else _copy_work
    busy = seconds + 4 * NEIGHBOURS_LEAD_SECONDS
    procs = [ctx.Process(target=work, args=(cpu, busy, ready, go, None), daemon=True) for cpu in neighbours]
    procs.append(ctx.Process(target=_decode_work, args=(victim, seconds, ready, go, result), daemon=True))
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        go.set()
        rate = result.get(timeout=seconds + 60)
    except BaseException:  # Ctrl-C, or a process that never got ready: nothing keeps running
        for p in procs:
            p.kill()
        raise
    for p in procs:
        p.join(timeout=busy + 30)
        if p.is_alive():
            p.kill()
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_neighbours", description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=int, default=0, help="the CPU the measured workload runs on (default 0)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement (default 2)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if args.victim not in cpus:
        print(f"cpu_neighbours: --victim {args.victim} is not a CPU this process may use ({cpus})", file=sys.stderr)
        return 2
    if args.seconds <= 0:
        print(f"cpu_neighbours: --seconds must be positive, got {args.seconds}", file=sys.stderr)
        return 2
    try:
        return _report(args, cpus)
    except KeyboardInterrupt:
        print("cpu_neighbours: interrupted; every measuring process was stopped", file=sys.stderr)
        return 130


def _report(args: argparse.Namespace, cpus: list[int]) -> int:
    topo = topology(cpus)
    print(f"{len(cpus)} CPUs; victim {args.victim}")
    for cpu, t in topo.items():
        print(f"  cpu {cpu:3d}: siblings {t['thread_siblings']}, core {t['core_id']}, package {t['package_id']}, "
              f"LLC {t['llc_size']} shared by {t['llc_shared_cpus']}")
    others = [c for c in cpus if c != args.victim]
    alone = [measure(args.victim, [], "decode", args.seconds) for _ in range(3)]
    base = sorted(alone)[1]
    print(f"alone: {', '.join(f'{a:.1f}' for a in alone)} steps/s (median {base:.1f})")
    per_neighbour = {}
    for cpu in others:
        rate = measure(args.victim, [cpu], "decode", args.seconds)
        per_neighbour[cpu] = rate / base
        print(f"  decode on cpu {cpu:3d}: {rate / base:.3f}x alone")
    every_decode = measure(args.victim, others, "decode", args.seconds) / base
    every_copy = measure(args.victim, others, "copy", args.seconds) / base
    again = measure(args.victim, [], "decode", args.seconds) / base
    print(f"decode on every other CPU: {every_decode:.3f}x alone; copies on every other CPU: {every_copy:.3f}x; "
          f"alone again: {again:.3f}x")
    if args.json:
        args.json.write_text(json.dumps({
            "victim": args.victim, "topology": topo, "alone_steps_per_second": alone,
            "decode_neighbour_vs_alone": per_neighbour, "decode_every_other_vs_alone": every_decode,
            "copy_every_other_vs_alone": every_copy, "alone_again_vs_alone": again,
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
