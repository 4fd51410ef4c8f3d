"""A design study for issue #15's CPU goal: per-stripe streams down f-ary trees (not built yet).

Today every chunk a peer serves is one scheduler decision: the scheduler hands a reader the chunks
a peer reported landed, so the decisions grow with N x chunks (docs/benchmarks.md, "What the CPU goal
needs"). In the design studied here the scheduler decides once per instance, giving it a parent per
stripe, and again only when a relay dies. A reader learns which chunks its parent has landed from a
landed bitmap in the parent's registered memory (a one-sided read, like the chunks). That bitmap is
the parent's report that a chunk landed.

- The model's chunks are split into ``stripes`` contiguous ranges, each flowing down its own tree,
  built by the scheduler's own :class:`scheduler.streams.StripeTrees` as the instances join (in
  order, all at t = 0): each instance relays its home stripe to up to ``fanout`` children and is a
  leaf in the others, so it uploads about one model, and the seeds send each stripe once.
- A stream reads up to ``batch`` chunks at a time, in order, of what its parent has landed beyond its
  own progress. It waits for the parent's next landing, then polls its bitmap (``poll_seconds``).
- A relay that dies orphans its streams. Each orphan is one decision, measured:
  :meth:`~scheduler.streams.StripeTrees.reparent` (a live relay of the stripe with a free slot, as far
  along and not below it; else the emptiest such member of 16 sampled; else the nearest such
  ancestor; else the seeds).
- The CPU counted is what the scheduler would run: creating each job with the real planner's ``Job``
  (manifest, chunk plan and state, as in ``rfork simulate``), choosing parents, and re-parenting.
  The study leaves out seeds' QoS throttling, HTTP costs, and chunk-level read failures.

Links are ``sim.network``'s fluid model, the same as ``rfork simulate``'s.

    python -m sim.stream_study --instances 1024
    python -m sim.stream_study --instances 128 --seeds 4 --kill-seeds 2 --kill-peers 0.05 --json out/study.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass

import simpy

from rfork_api.manifest import parse_manifest
from scheduler.chunking import plan_chunks
from scheduler.planner import Job, PlannerConfig
from scheduler.streams import SEEDS, StripeTrees
from sim.network import LinkDown, Network
from sim.presets import UnknownPreset, rank_manifest


@dataclass(frozen=True)
class StudyConfig:
    instances: int = 1024
    stripes: int = 8
    fanout: int = 8
    batch_chunks: int = 8
    seeds: int = 1
    model: str = "deepseek-v3"
    chunk_size: int = 64 << 20
    link_bytes_per_second: float = 50e9
    read_latency_seconds: float = 20e-6
    poll_seconds: float = 10e-6
    """One read of the parent's landed bitmap."""
    detect_seconds: float = 5e-3
    """From a relay's death to its readers asking for a new parent (a failed read)."""
    kill_seeds: int = 0
    kill_peers_fraction: float = 0.0
    fault_window_seconds: float = 2.0
    rng_seed: int = 1

    def check(self) -> None:
        for name in ("instances", "stripes", "fanout", "batch_chunks", "seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.kill_seeds < self.seeds:
            raise ValueError(f"--kill-seeds must be in [0, seeds): one seed must live, got {self.kill_seeds} of {self.seeds}")
        if not 0.0 <= self.kill_peers_fraction < 1.0:
            raise ValueError(f"--kill-peers must be in [0, 1), got {self.kill_peers_fraction}")
        if self.link_bytes_per_second <= 0:
            raise ValueError(f"--link-rate must be > 0, got {self.link_bytes_per_second}")


@dataclass(frozen=True)
class StudyResult:
    config: StudyConfig
    time_to_all_seconds: float
    single_fork_seconds: float
    """The model over one link: the lower bound for any N."""
    instances_completed: int
    instances_killed: int
    seed_bytes_over_model: float
    scheduler_cpu_seconds: float
    scheduler_decisions: int
    """One per instance (its parents), plus one per orphaned stream."""

    @property
    def time_to_all_over_single_fork(self) -> float:
        return self.time_to_all_seconds / self.single_fork_seconds

    @property
    def scheduler_cpu_share(self) -> float:
        return self.scheduler_cpu_seconds / self.time_to_all_seconds if self.time_to_all_seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "time_to_all_over_single_fork": self.time_to_all_over_single_fork,
                "scheduler_cpu_share": self.scheduler_cpu_share}


def run(config: StudyConfig) -> StudyResult:
    config.check()
    cpu = time.thread_time
    rng = random.Random(config.rng_seed)
    env = simpy.Environment()
    net = Network(env)
    manifest = parse_manifest(rank_manifest(config.model))
    chunks = plan_chunks(manifest, config.chunk_size)
    sizes = [c.nbytes for c in chunks]
    n, f, link = config.instances, config.stripes, config.link_bytes_per_second
    bounds = [s * len(chunks) // f for s in range(f + 1)]
    seed_nodes = [net.add_node(f"seed-{k}", link, link) for k in range(config.seeds)]
    seed_alive = [True] * config.seeds
    nodes = [net.add_node(f"i{i}", link, link) for i in range(n)]
    landed = [[0] * f for _ in range(n)]  # chunks landed per instance and stripe: streams land in order
    landing: list[list[simpy.Event | None]] = [[None] * f for _ in range(n)]
    alive = [True] * n
    finished: list[float | None] = [None] * n
    cpu_seconds, decisions = 0.0, 0
    planner = PlannerConfig()
    trees = StripeTrees(f, config.fanout)
    for i in range(n):
        started = cpu()
        Job(f"i{i}", manifest, chunks, planner, 0.0)  # what the scheduler keeps per job
        trees.join(i)
        cpu_seconds += cpu() - started
        decisions += 1

    def next_landing(p: int, s: int) -> simpy.Event:
        event = landing[p][s]
        if event is None or event.triggered:
            event = landing[p][s] = env.event()
        return event

    def reparent(i: int, s: int) -> None:
        nonlocal cpu_seconds, decisions
        started = cpu()
        trees.reparent(i, s, lambda member, stripe: landed[member][stripe])
        cpu_seconds += cpu() - started
        decisions += 1

    def seed_for(i: int, s: int):
        k = (i + s) % config.seeds
        return seed_nodes[k if seed_alive[k] else seed_alive.index(True)]

    def stream(i: int, s: int):
        total = bounds[s + 1] - bounds[s]
        while landed[i][s] < total:
            p = trees.parent(i, s)
            if p is not SEEDS and not alive[p]:
                yield env.timeout(config.detect_seconds)
                reparent(i, s)
                continue
            ahead = total if p is SEEDS else landed[p][s]
            if ahead <= landed[i][s]:
                yield next_landing(p, s)
                yield env.timeout(config.poll_seconds)
                continue
            take = min(config.batch_chunks, ahead - landed[i][s])
            first = bounds[s] + landed[i][s]
            try:
                yield env.timeout(config.read_latency_seconds)
                yield net.transfer(nodes[p] if p is not SEEDS else seed_for(i, s), nodes[i], sum(sizes[first:first + take]))
            except LinkDown:
                if not alive[i]:
                    return
                yield env.timeout(config.detect_seconds)
                if p is not SEEDS:
                    reparent(i, s)
                continue
            landed[i][s] += take
            event = landing[i][s]
            if event is not None and not event.triggered:
                event.succeed()

    def instance(i: int):
        yield env.all_of([env.process(stream(i, s)) for s in range(f)])
        if alive[i]:
            finished[i] = env.now

    def faults():
        nonlocal cpu_seconds
        victims = rng.sample(range(n), int(round(config.kill_peers_fraction * n)))
        events = [(rng.uniform(0, config.fault_window_seconds), "peer", v) for v in victims]
        events += [(rng.uniform(0, config.fault_window_seconds), "seed", k)
                   for k in rng.sample(range(config.seeds), config.kill_seeds)]
        for at, kind, who in sorted(events):
            yield env.timeout(max(at - env.now, 0.0))
            if kind == "peer":
                alive[who] = False
                net.kill(nodes[who])
                started = cpu()
                trees.leave(who)  # the scheduler learns it left; its orphans ask for parents when reads fail
                cpu_seconds += cpu() - started
                for event in landing[who]:  # its readers waiting on its next landing find it dead
                    if event is not None and not event.triggered:
                        event.succeed()
            else:
                seed_alive[who] = False
                net.kill(seed_nodes[who])

    processes = [env.process(instance(i)) for i in range(n)]
    env.process(faults())
    env.run(env.all_of(processes))
    model = sum(sizes)
    done = [t for i, t in enumerate(finished) if alive[i] and t is not None]
    killed = n - sum(alive)
    return StudyResult(config, max(done) if len(done) == n - killed else math.inf, model / link, len(done), killed,
                       sum(s.bytes_sent for s in seed_nodes) / model, cpu_seconds, decisions)


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - exercised through run() in tests
    from rfork_api.units import UnitError, parse_rate, parse_size

    p = argparse.ArgumentParser(prog="python -m sim.stream_study", description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=1024)
    p.add_argument("--stripes", type=int, default=8)
    p.add_argument("--fanout", type=int, default=8)
    p.add_argument("--batch-chunks", type=int, default=8, help="chunks per read from a parent (default 8)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--model", default="deepseek-v3")
    p.add_argument("--chunk-size", default="64MiB")
    p.add_argument("--link-rate", default="50GB/s")
    p.add_argument("--kill-seeds", type=int, default=0)
    p.add_argument("--kill-peers", type=float, default=0.0, help="fraction of instances killed (default 0)")
    p.add_argument("--fault-window", type=float, default=2.0)
    p.add_argument("--rng-seed", type=int, default=1)
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    try:
        link = parse_rate(args.link_rate)
        if not link:
            raise ValueError(f"--link-rate must be a finite rate > 0, got {args.link_rate!r}")
        config = StudyConfig(instances=args.instances, stripes=args.stripes, fanout=args.fanout,
                             batch_chunks=args.batch_chunks, seeds=args.seeds, model=args.model,
                             chunk_size=parse_size(args.chunk_size), link_bytes_per_second=link,
                             kill_seeds=args.kill_seeds, kill_peers_fraction=args.kill_peers,
                             fault_window_seconds=args.fault_window, rng_seed=args.rng_seed)
        result = run(config)
    except (ValueError, UnitError, UnknownPreset) as exc:
        print(f"python -m sim.stream_study: {exc}", file=sys.stderr)
        return 2
    print(f"{config.instances} instances, {config.stripes} stripes, fanout {config.fanout}: time-to-all "
          f"{result.time_to_all_seconds:.2f} s = {result.time_to_all_over_single_fork:.2f}x one fork "
          f"({result.single_fork_seconds:.2f} s); {result.instances_completed} completed, "
          f"{result.instances_killed} killed; seeds sent {result.seed_bytes_over_model:.2f} model copies; "
          f"scheduler {result.scheduler_decisions} decisions, {result.scheduler_cpu_seconds:.3f} s CPU = "
          f"{result.scheduler_cpu_share:.3f} of a core")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result.to_json(), fh, indent=2)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
