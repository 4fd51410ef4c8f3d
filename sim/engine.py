"""One simulated scale-out: N new instances fork one rank from S seeds, the real planner deciding.

Every scheduling decision is made by the code that ships: ``scheduler.planner.Job``
(chunk and source choice, merging, retries, exclusions, endgame) and
``scheduler.swarm.Swarm`` (peers, coverage, upload budgets, withdraw). What is
simulated is everything around it: links (``sim.network``), the latency of
the control plane (a ``/work`` call, an agent lease), seeds whose serving load
moves their allowed rate, and faults. The CPU the planner and swarm spend is
measured with ``time.thread_time`` (CPU this thread ran, so other processes on a
loaded machine do not inflate it) around the real calls, job creation included,
so the result says whether one scheduler process keeps up.

    >>> result = simulate(Scenario(model="qwen2.5-7b", instances=4, strategy="swarm"))
    >>> result.instances_completed
    4
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import simpy

from rfork_api.landed import LandedMapRef
from rfork_api.manifest import parse_manifest
from rfork_api.units import format_bytes
from scheduler.chunking import plan_chunks
from scheduler.planner import DONE, FAILED, PEER, Job, PlannerConfig, Report, SourceView, stripe_start
from scheduler.stream_swarm import (DONE as STREAM_DONE, ENDED, FAILED as STREAM_FAILED, StreamReport, StreamSwarm,
                                    paced_report_seconds)
from scheduler.swarm import PeerOffer, Swarm, group_key
from sim.network import LinkDown, Network, Node
from sim.presets import rank_manifest
from sim.scenario import Scenario
from throttle.token_bucket import TokenBucket, default_burst

cpu_clock = time.thread_time
"""The scheduler's CPU: what the real planner and swarm calls cost, not the wall time they took."""

BYTES_PER_CHUNK_STATE = 520
"""Measured memory per chunk per job, for the N x chunks check: peak RSS of DeepSeek-V3 swarms (1,348
chunks a rank), 1024 less 128 instances, over their 896 x 1,348 chunks: 509 bytes without merges, 363
with ``--merge-seconds 0.4`` (reads and in-flight maps, landed sets and masks, the swarm's counts)."""


PARENT_LOST_DETECT_SECONDS = 0.005
"""``stream``: from a parent's death to its follower's failed read (a read of a dead peer fails at once
over RDMA; 0.06 s was measured over TCP on loopback, testbed chaos ``peer-kill-mid-fork``)."""


class SimulationTooLarge(ValueError):
    """The scenario would not fit in memory; the message says how big and what to change."""


@dataclass
class _Seed:
    seed_id: str
    node: Node
    allowed_rate: float
    registered: bool = True
    bucket: TokenBucket | None = None
    """A capped seed's agent bucket: a lease waits on it, then the read runs at the NIC's rate."""
    in_flight: int = 0
    copying_to: set[int] = field(default_factory=set)
    """Cascade: the instances this source is admitted to copy the model to now."""


@dataclass
class _Instance:
    index: int
    job: Job
    node: Node
    started_at: float
    finished_at: float | None = None
    killed_at: float | None = None
    process: simpy.Process | None = None
    source: str | None = None
    """Cascade: the one source (seed or finished instance) this instance copies from now."""
    admitted: simpy.Event | None = None
    landed: bytearray = field(default_factory=bytearray)
    """``stream``: its landed map (a byte per chunk, set once the chunk is in its memory)."""
    landing: simpy.Event | None = None
    """``stream``: fired when it lands chunks (its followers wait on it)."""
    stream_landed: dict[str, list[int]] = field(default_factory=dict)
    """``stream``: chunks each of its streams landed, not reported yet."""
    stream_rates: dict[str, float] = field(default_factory=dict)
    """``stream``: its streams' shares of their parents' upload caps, as last told."""


@dataclass
class Result:
    scenario: Scenario
    time_to_all_seconds: float
    completion_seconds: list[float]
    instances_completed: int
    instances_killed: int
    instances_failed: int
    model_bytes_per_instance: int
    seed_bytes_served: float
    peer_bytes_served: float
    chunks_per_instance: int
    assignments: int
    work_calls: int
    lease_calls: int
    scheduler_cpu_seconds: float
    """The busiest scheduler process's CPU (with one shard: the scheduler's)."""
    scheduler_cpu_seconds_by_shard: list[float]
    decision_cpu_seconds: list[float] = field(repr=False, default_factory=list)
    failures: list[str] = field(default_factory=list)
    single_fork_seconds: float | None = None
    streams: int = 0
    """``stream``: streams handed out (joins' placements and re-parents)."""
    stream_failures: int = 0
    stream_endgame_moves: int = 0
    """``stream``: streams moved late to finished members' idle uploads (scheduler/stream_swarm.py)."""

    @property
    def scheduler_cpu_share(self) -> float:
        return self.scheduler_cpu_seconds / self.time_to_all_seconds if self.time_to_all_seconds > 0 else 0.0

    def to_json(self) -> dict:
        decisions = sorted(self.decision_cpu_seconds)

        def pct(q: float) -> float:
            return decisions[min(len(decisions) - 1, int(q * len(decisions)))] if decisions else 0.0

        t = self.time_to_all_seconds
        return {
            "scenario": self.scenario.to_json(),
            "time_to_all_seconds": t,
            "single_fork_seconds": self.single_fork_seconds,
            "time_to_all_over_single_fork": (t / self.single_fork_seconds) if self.single_fork_seconds else None,
            "completion_seconds": self.completion_seconds,
            "instances_completed": self.instances_completed,
            "instances_killed": self.instances_killed,
            "instances_failed": self.instances_failed,
            "model_bytes_per_instance": self.model_bytes_per_instance,
            "seed_bytes_served": self.seed_bytes_served,
            "seed_bytes_over_model": self.seed_bytes_served / self.model_bytes_per_instance,
            "peer_bytes_served": self.peer_bytes_served,
            "chunks_per_instance": self.chunks_per_instance,
            "scheduler": {
                "assignments": self.assignments,
                "streams": self.streams,
                "stream_failures": self.stream_failures,
                "stream_endgame_moves": self.stream_endgame_moves,
                "work_calls": self.work_calls,
                "lease_calls": self.lease_calls,
                "processes": len(self.scheduler_cpu_seconds_by_shard),
                "cpu_seconds": self.scheduler_cpu_seconds,
                "cpu_seconds_all_processes": sum(self.scheduler_cpu_seconds_by_shard),
                "cpu_share": self.scheduler_cpu_share,
                "work_calls_per_second": self.work_calls / t if t else 0.0,
                "assignments_per_second": self.assignments / t if t else 0.0,
                "cpu_per_work_call_seconds": {"mean": sum(decisions) / len(decisions) if decisions else 0.0,
                                              "p50": pct(0.5), "p99": pct(0.99)},
            },
            "scheduler_cpu_share": self.scheduler_cpu_share,
            "failures": self.failures[:20],
        }


class FleetSimulation:
    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        self.rng = random.Random(scenario.random_seed)
        self.env = simpy.Environment()
        self.net = Network(self.env)
        raw = rank_manifest(scenario.model)
        self.manifest = parse_manifest(raw)
        self.chunks = plan_chunks(self.manifest, scenario.chunk_size)
        self.model_bytes = sum(c.nbytes for c in self.chunks)
        self._sizes = [c.nbytes for c in self.chunks]
        self._check_memory()
        self.config = PlannerConfig(max_assignment_bytes=scenario.merge_bytes, merge_seconds=scenario.merge_seconds,
                                    max_merged_bytes=scenario.max_merged_bytes)
        # One scheduler process per shard of the (model, rank) group, each with its own swarm:
        # an instance's peers are the instances of its shard; every shard reads from the seeds.
        self.swarms = [Swarm(read_deadline_seconds=scenario.client_timeout_seconds,
                             max_peers_per_decision=scenario.max_peers_per_decision,
                             rng=random.Random(scenario.random_seed + 1 + k))
                       for k in range(scenario.scheduler_shards)]
        self.streams = [StreamSwarm(scenario.stream_stripes, scenario.stream_fanout,
                                    read_deadline_seconds=scenario.client_timeout_seconds,
                                    rng=random.Random(scenario.random_seed + 101 + k),
                                    min_members=scenario.stream_min_members)
                        for k in range(scenario.scheduler_shards)] if scenario.strategy == "stream" else []
        self.streams_started = self.stream_failures = 0
        self._seed_slots = scenario.seed_max_in_flight
        if scenario.strategy == "stream":
            # Every stripe's root reads its stripe from the seeds at once (the service has no
            # fleet-wide slot count; the planner's per job is the limit): with 8 slots, two roots
            # would take them all and the other stripes would wait, and their whole trees with them.
            self._seed_slots = max(self._seed_slots, scenario.stream_stripes * self.config.max_in_flight_per_seed)
        self.key = group_key(scenario.model, 0, self.manifest, scenario.chunk_size)
        cap = scenario.seed_rate_cap
        self.seeds = {f"seed-{i}": _Seed(f"seed-{i}", self.net.add_node(f"seed-{i}", scenario.seed_egress,
                                                                         scenario.seed_egress),
                                         scenario.seed_egress if cap is None else cap,
                                         bucket=None if cap is None else TokenBucket(cap, default_burst(cap), 0.0))
                      for i in range(scenario.seeds)}
        self.instances: list[_Instance] = []
        self.by_job: dict[str, _Instance] = {}
        self.cpu_by_shard = [0.0] * scenario.scheduler_shards
        """CPU of the real planner and swarm calls, per scheduler process."""
        self.decisions: list[float] = []
        self.assignments = self.work_calls = self.lease_calls = 0
        self.failures: list[str] = []
        self.waiting: list[_Instance] = []
        """Cascade: instances waiting for a source to copy from, first come first served."""

    def _check_memory(self) -> None:
        _check_memory(self.s.instances, len(self.chunks))

    # -- the run -------------------------------------------------------------
    def run(self) -> Result:
        s = self.s
        for i in range(s.instances):
            started = cpu_clock()
            swarm = self.swarms[i % s.scheduler_shards]
            start = stripe_start(len(self.chunks), swarm.next_index(self.key))
            job = Job(f"i{i}", self.manifest, self.chunks, self.config, 0.0, start=start)
            offer = PeerOffer(f"i{i}", s.peer_rate, s.peer_max_in_flight) if s.strategy in ("swarm", "stream") \
                else None
            swarm.join(job, self.key, offer, 0.0)
            if s.strategy == "stream":  # its client's first /work call sends its landed map
                self.streams[i % s.scheduler_shards].join(
                    job, self.key, LandedMapRef(f"i{i}", 4096, len(self.chunks), len(self.manifest)), 0.0,
                    upload_rate=s.peer_rate)
            self.cpu_by_shard[i % s.scheduler_shards] += cpu_clock() - started
            # A peer's upload cap is the swarm's bucket (the real scheduler's), not a slower NIC.
            node = self.net.add_node(f"i{i}", s.instance_egress, s.instance_ingress)
            inst = _Instance(i, job, node, started_at=0.0, landed=bytearray(len(self.chunks)))
            self.instances.append(inst)
            self.by_job[job.job_id] = inst
        if s.strategy == "cascade":
            self.waiting = list(self.instances)
            for inst in self.instances:
                inst.admitted = self.env.event()
            self._admit()
        for inst in self.instances:
            inst.process = self.env.process(
                self._stream_client(inst) if s.strategy == "stream" else self._client(inst))
        if s.seed_qos == "serving":
            for seed in self.seeds.values():
                self.env.process(self._serving_load(seed))
        self.env.process(self._faults())
        for slow in s.slowdowns:
            self.env.process(self._slowdown(slow))
        everyone = self.env.all_of([inst.process for inst in self.instances])
        self.env.run(until=self.env.any_of([everyone, self.env.timeout(s.max_simulated_seconds)]))
        return self._result()

    def _sources(self, inst: _Instance) -> tuple[list[SourceView], object]:
        s, now = self.s, self.env.now
        if s.strategy == "cascade":
            seed = self.seeds.get(inst.source or "")
            return ([] if seed is None or not seed.registered else [self._seed_view(seed)]), None
        views = [self._seed_view(seed) for seed in self.seeds.values() if seed.registered]
        if s.strategy == "direct":
            return views, None
        swarm = self._swarm(inst)
        return views + swarm.sources_for(inst.job.job_id, now), swarm.covered_for(inst.job.job_id)

    def _swarm(self, inst: _Instance) -> Swarm:
        return self.swarms[inst.index % self.s.scheduler_shards]

    def _seed_view(self, seed: _Seed) -> SourceView:
        return SourceView(seed.seed_id, seed.seed_id, f"http://{seed.seed_id}", self.manifest, seed.allowed_rate,
                          free_slots=max(self._seed_slots - seed.in_flight, 0))

    # -- cascade: each instance copies the whole model from one source ---------
    def _admit(self) -> None:
        """Give waiting instances a source with room (a seed, or an instance that finished):
        each source copies to ``cascade_fanout`` instances at a time, so (fanout 1) the
        number of sources doubles every round, as cascade deployments do."""
        fanout = self.s.cascade_fanout
        while self.waiting:
            free = [seed for seed in self.seeds.values()
                    if seed.registered and seed.node.alive and len(seed.copying_to) < fanout]
            if not free:
                return
            source = min(free, key=lambda seed: len(seed.copying_to))
            inst = self.waiting.pop(0)
            inst.source = source.seed_id
            source.copying_to.add(inst.index)
            assert inst.admitted is not None
            if not inst.admitted.triggered:
                inst.admitted.succeed()

    def _readmit(self, inst: _Instance) -> None:
        """Its source died: it waits (first in line) for another, keeping what it has landed."""
        inst.source = None
        inst.admitted = self.env.event()
        self.waiting.insert(0, inst)

    def _source_gone(self, inst: _Instance) -> bool:
        """Its source died or failed its reads (the job excluded it): copy from another."""
        seed = self.seeds.get(inst.source or "")
        return seed is None or not seed.registered or not seed.node.alive or seed.seed_id in inst.job.excluded

    def _release(self, inst: _Instance) -> None:
        source = self.seeds.get(inst.source or "")
        if source is not None:
            source.copying_to.discard(inst.index)
        inst.source = None

    def _become_source(self, inst: _Instance) -> None:
        """A finished cascade instance serves as a seed does (an SGLang seed with an agent beside it)."""
        seed_id = inst.job.peer_id
        self.seeds[seed_id] = _Seed(seed_id, inst.node, inst.node.egress)

    def _client(self, inst: _Instance):
        s, job = self.s, inst.job
        swarm, shard = self._swarm(inst), inst.index % s.scheduler_shards
        running: dict[str, simpy.Process] = {}
        reports: list[Report] = []
        try:
            while True:
                if inst.admitted is not None and not inst.admitted.triggered and not running and not reports:
                    yield inst.admitted  # cascade: no source to copy from yet
                started = cpu_clock()
                now = self.env.now
                reports = self._apply_reports(job, swarm, reports, now)
                if s.strategy == "cascade" and inst.source is not None and self._source_gone(inst):
                    self._release(inst)
                    self._readmit(inst)
                    self._admit()
                sources, covered = self._sources(inst)
                out = job.next_assignments(sources, now, s.client_max_in_flight - len(running), covered=covered)
                swarm.assigned(out, job.job_id, now)
                self._work_call_done(shard, out, started)
                if job.state == DONE:
                    inst.finished_at = self.env.now
                    if s.strategy == "cascade":
                        self._release(inst)
                        self._become_source(inst)
                        self._admit()
                    return
                if job.state == FAILED:
                    self.failures.append(f"{job.job_id}: {job.error}")
                    return
                yield self.env.timeout(s.control_latency_seconds)  # the /work round trip
                for a in out:
                    running[a.assignment_id] = self.env.process(self._read(inst, a))
                if not running:
                    yield self.env.timeout(s.idle_poll_seconds)
                    continue
                yield self.env.any_of(list(running.values()))
                for aid in [aid for aid, p in running.items() if p.triggered]:
                    reports.append(running.pop(aid).value)
        except simpy.Interrupt:
            return  # killed

    @staticmethod
    def _apply_reports(job: Job, swarm: Swarm, reports: list[Report], now: float) -> list[Report]:
        """The reads a /work call reports, applied as the service does; returns the (empty) next batch."""
        for r in reports:
            job.apply(r, now)
            swarm.settled(r.assignment_id)
        return []

    def _work_call_done(self, shard: int, out, started: float) -> None:
        """A /work call handed out ``out``: the seeds' slots it takes, and the CPU the call cost the
        scheduler since ``started`` (its planner, swarm and stream calls)."""
        for a in out:
            if a.source_kind != PEER:
                self.seeds[a.seed_id].in_flight += 1
        spent = cpu_clock() - started
        self.cpu_by_shard[shard] += spent
        self.decisions.append(spent)
        self.work_calls += 1
        self.assignments += len(out)

    def _read(self, inst: _Instance, a):
        if a.source_kind == PEER:
            src = self.by_job[a.seed_id.removeprefix("peer:")].node
        else:
            self.lease_calls += 1
            yield self.env.timeout(self.s.control_latency_seconds)  # the lease round trip to its agent
            seed = self.seeds[a.seed_id]
            src = seed.node
            if seed.bucket is not None:  # the agent grants the lease when its bucket has paid for it
                wait = seed.bucket.reserve(a.nbytes, self.env.now, math.inf).delay(self.env.now)
                if wait > 0:
                    yield self.env.timeout(wait)
        started = self.env.now
        try:
            yield self.env.timeout(self.s.read_latency_seconds)
            yield self.net.transfer(src, inst.node, a.nbytes)
        except LinkDown as exc:
            return Report(a.assignment_id, ok=False, reason="read_failed", error=str(exc))
        finally:
            if a.source_kind != PEER:
                self.seeds[a.seed_id].in_flight -= 1
        if self.s.strategy == "stream":
            self._mark(inst, a.chunk_ids)
        return Report(a.assignment_id, ok=True, seconds=self.env.now - started)

    # -- stream: members follow each other's landed maps -------------------------
    def _mark(self, inst: _Instance, chunk_ids) -> None:
        """Chunks are in ``inst``'s memory: its map says so, and its followers wake."""
        for c in chunk_ids:
            inst.landed[c] = 1
        event = inst.landing
        if event is not None and not event.triggered:
            event.succeed()

    def _next_landing(self, inst: _Instance) -> simpy.Event:
        if inst.landing is None or inst.landing.triggered:
            inst.landing = self.env.event()
        return inst.landing

    def _stream_client(self, inst: _Instance):
        """``rfork fork`` with streams: reports, the planner for the seeds' stripes, streams to follow."""
        s, job = self.s, inst.job
        shard = inst.index % s.scheduler_shards
        swarm, streams = self.swarms[shard], self.streams[shard]
        running: dict[str, simpy.Process] = {}
        following: dict[str, simpy.Process] = {}
        reports: list[Report] = []
        try:
            while True:
                news = self._stream_news(inst, following)
                started = cpu_clock()
                now = self.env.now
                reports = self._apply_reports(job, swarm, reports, now)
                if news:
                    streams.report(job.job_id, news, now)
                    for lost in streams.take_lost():
                        swarm.withdraw(lost, now)  # as the service does
                if job.streamed_mask and not job.pending and not job.live:
                    out = []  # the service's fast path: every chunk left comes by a stream
                elif streams.is_member(job.job_id):  # the seeds' stripes, from the seeds alone, as the service
                    seeds = [self._seed_view(seed) for seed in self.seeds.values() if seed.registered]
                    out = job.next_assignments(seeds, now, s.client_max_in_flight - len(running))
                else:  # its group is too small to stream yet: a swarm member, as the service does
                    sources, covered = self._sources(inst)
                    out = job.next_assignments(sources, now, s.client_max_in_flight - len(running), covered=covered)
                    swarm.assigned(out, job.job_id, now)
                begin, end = streams.take(job.job_id)
                inst.stream_rates.update(streams.take_rates(job.job_id))
                report_after = paced_report_seconds(streams.streaming_members(), s.stream_reports_per_second,
                                                    s.stream_report_max_seconds)  # as the service's reply says
                self._work_call_done(shard, out, started)
                self.streams_started += len(begin)
                self.stream_failures += sum(1 for r in news if r.state == STREAM_FAILED)
                if job.state == DONE:
                    inst.finished_at = self.env.now  # it serves on: its map stays readable
                    return
                if job.state == FAILED:
                    self.failures.append(f"{job.job_id}: {job.error}")
                    return
                yield self.env.timeout(s.control_latency_seconds)  # the /work round trip
                for stream_id in end:
                    process = following.get(stream_id)
                    if process is not None and process.is_alive:
                        process.interrupt("ended")
                for a in begin:
                    following[a.stream_id] = self.env.process(self._follow(inst, a))
                for a in out:
                    running[a.assignment_id] = self.env.process(self._read(inst, a))
                if not running and not following:
                    yield self.env.timeout(s.idle_poll_seconds)
                    continue
                if running or job.pending:  # reads to report, or chunks for a source: ask again soon
                    yield self.env.any_of([*running.values(), *following.values(),
                                           self.env.timeout(s.idle_poll_seconds)])
                else:  # streams alone: as rfork fork, a call when all ended, one failed, or to report
                    due = self.env.now + max(s.stream_report_seconds, report_after)
                    while following and self.env.now < due:
                        live = [p for p in following.values() if not p.triggered]
                        if not live or any(p.value[0] != STREAM_DONE for p in following.values() if p.triggered):
                            break
                        yield self.env.any_of([*live, self.env.timeout(due - self.env.now)])
                for aid in [aid for aid, p in running.items() if p.triggered]:
                    reports.append(running.pop(aid).value)
        except simpy.Interrupt:
            return  # killed

    def _stream_news(self, inst: _Instance, following: dict[str, simpy.Process]) -> list[StreamReport]:
        out = []
        for stream_id, process in list(following.items()):
            landed = inst.stream_landed.pop(stream_id, [])
            if process.triggered:
                del following[stream_id]
                state, reason = process.value
                # As rfork fork: a done stream's ids are left out (done means all of them).
                out.append(StreamReport(stream_id, [] if state == STREAM_DONE else landed, state, reason))
            elif landed:
                out.append(StreamReport(stream_id, landed))
        return out

    def _follow(self, inst: _Instance, a):
        """One stream: read the parent's landed chunks of ``a``'s range as its map shows them."""
        s = self.s
        parent = self.by_job[a.parent_job_id]
        sizes = self._sizes
        left = [c for c in range(a.first_chunk, a.end_chunk) if not inst.landed[c]]
        paced_until = self.env.now
        try:
            while True:
                left = [c for c in left if not inst.landed[c]]
                if not left:
                    return STREAM_DONE, None
                if parent.killed_at is not None:
                    yield self.env.timeout(PARENT_LOST_DETECT_SECONDS)
                    return STREAM_FAILED, "parent_lost"
                yield self.env.timeout(s.stream_poll_seconds)  # read the parent's landed map
                ready = [c for c in left if parent.landed[c]]
                if not ready:
                    yield self._next_landing(parent)
                    continue
                for i in range(0, len(ready), s.stream_batch_chunks):
                    batch = [c for c in ready[i:i + s.stream_batch_chunks] if not inst.landed[c]]
                    if not batch:
                        continue
                    nbytes = sum(sizes[c] for c in batch)
                    rate = inst.stream_rates.get(a.stream_id, a.max_rate)
                    if rate:  # paced as rfork fork's follow: its share of the parent's cap
                        if paced_until > self.env.now:
                            yield self.env.timeout(paced_until - self.env.now)
                        paced_until = max(paced_until, self.env.now) + nbytes / rate
                    yield self.env.timeout(s.read_latency_seconds)
                    yield self.net.transfer(parent.node, inst.node, nbytes)
                    self._mark(inst, batch)
                    inst.stream_landed.setdefault(a.stream_id, []).extend(batch)
        except LinkDown:
            yield self.env.timeout(PARENT_LOST_DETECT_SECONDS)
            return STREAM_FAILED, "parent_lost"
        except simpy.Interrupt:
            return ENDED, None

    # -- the world around the fork ---------------------------------------------
    def _serving_load(self, seed: _Seed):
        """A serving seed: its QoS throttle moves the allowed rate every second with the load."""
        s = self.s
        level = 1.0
        while True:
            level = min(1.0, max(s.seed_qos_floor, level + self.rng.uniform(-0.2, 0.2)))
            if seed.bucket is not None:  # the throttle moves the agent's lease rate
                seed.allowed_rate = (s.seed_rate_cap or s.seed_egress) * level
                seed.bucket.set_rate(seed.allowed_rate, self.env.now)
            else:
                seed.allowed_rate = s.seed_egress * level
                if seed.node.alive:
                    self.net.set_egress(seed.node, seed.allowed_rate)
            yield self.env.timeout(1.0)

    def _slowdown(self, slow):
        seed = self.seeds.get(slow.seed)
        if seed is None:
            return
        yield self.env.timeout(slow.at_seconds)
        normal = seed.node.egress
        self.net.set_egress(seed.node, normal * slow.factor)
        yield self.env.timeout(slow.duration_seconds)
        if seed.node.alive:
            self.net.set_egress(seed.node, normal)

    def _faults(self):
        s = self.s
        f = s.faults
        if not f.kill_seeds and not f.kill_peers_fraction:
            return
        # Kill times spread over the window where the scale-out is under way.
        horizon = f.window_seconds
        events = [(self.rng.uniform(0, horizon), "seed", sid)
                  for sid in self.rng.sample(sorted(self.seeds), min(f.kill_seeds, len(self.seeds)))]
        victims = self.rng.sample(self.instances, int(round(f.kill_peers_fraction * len(self.instances))))
        events += [(self.rng.uniform(0, horizon), "peer", inst.index) for inst in victims]
        for at, kind, who in sorted(events):
            yield self.env.timeout(max(at - self.env.now, 0.0))
            if kind == "seed":
                self.env.process(self._kill_seed(self.seeds[who]))
            else:
                self.env.process(self._kill_instance(self.instances[who]))

    def _kill_seed(self, seed: _Seed):
        self.net.kill(seed.node)
        yield self.env.timeout(self.s.heartbeat_timeout_seconds)  # the registry drops it
        seed.registered = False
        for inst in self.instances:  # each shard's scheduler hears of it and tells its jobs
            started = cpu_clock()
            inst.job.seed_lost(seed.seed_id, "seed_lost: no heartbeat", self.env.now)
            self.cpu_by_shard[inst.index % self.s.scheduler_shards] += cpu_clock() - started
        if self.s.strategy == "cascade":
            for inst in self.instances:
                if inst.source == seed.seed_id and inst.killed_at is None and inst.finished_at is None:
                    self._readmit(inst)
            seed.copying_to.clear()
            self._admit()

    def _kill_instance(self, inst: _Instance):
        if inst.finished_at is not None and self.s.strategy == "direct":
            return
        inst.killed_at = self.env.now
        self.net.kill(inst.node)
        if inst.process is not None and inst.process.is_alive:
            inst.process.interrupt("killed")
        if inst.landing is not None and not inst.landing.triggered:
            inst.landing.succeed()  # its followers waiting for its next landing find it dead
        if self.s.strategy == "cascade":
            if inst in self.waiting:
                self.waiting.remove(inst)
            self._release(inst)
            as_source = self.seeds.get(inst.job.peer_id)
            if as_source is not None:  # it had finished and was serving: lost like a seed
                yield from self._kill_seed(as_source)
                return
            self._admit()
        yield self.env.timeout(self.s.client_timeout_seconds)  # the scheduler abandons its job
        started = cpu_clock()
        for reader in self._swarm(inst).leave(inst.job.job_id, self.env.now):
            reader.seed_lost(inst.job.peer_id, "peer abandoned", self.env.now)
        if self.streams:
            self.streams[inst.index % self.s.scheduler_shards].leave(inst.job.job_id, self.env.now)
        self.cpu_by_shard[inst.index % self.s.scheduler_shards] += cpu_clock() - started

    def _result(self) -> Result:
        # Killed instances (before or after they finished) are not survivors; every survivor must finish.
        done = [i.finished_at for i in self.instances if i.finished_at is not None and i.killed_at is None]
        killed = sum(1 for i in self.instances if i.killed_at is not None)
        failed = sum(1 for i in self.instances if i.job.state == FAILED and i.killed_at is None)
        unfinished = len(self.instances) - len(done) - killed
        if unfinished > failed:
            self.failures.append(f"{unfinished - failed} instances still loading at the "
                                 f"{self.s.max_simulated_seconds} s limit")
        seed_bytes = sum(self.seeds[f"seed-{i}"].node.bytes_sent for i in range(self.s.seeds))  # not cascade's
        peer_bytes = sum(i.node.bytes_sent for i in self.instances)
        return Result(
            scenario=self.s,
            time_to_all_seconds=max(done) if done and not unfinished else math.inf,
            completion_seconds=sorted(done),
            instances_completed=len(done), instances_killed=killed, instances_failed=failed,
            model_bytes_per_instance=self.model_bytes, seed_bytes_served=seed_bytes, peer_bytes_served=peer_bytes,
            chunks_per_instance=len(self.chunks), assignments=self.assignments, work_calls=self.work_calls,
            lease_calls=self.lease_calls, scheduler_cpu_seconds=max(self.cpu_by_shard),
            scheduler_cpu_seconds_by_shard=list(self.cpu_by_shard), decision_cpu_seconds=self.decisions,
            failures=self.failures, streams=self.streams_started, stream_failures=self.stream_failures,
            stream_endgame_moves=sum(streams.endgame_moves for streams in self.streams),
        )


def _check_memory(instances: int, chunks: int, available: int | None = None) -> None:
    need = instances * chunks * BYTES_PER_CHUNK_STATE
    available = _available_memory() if available is None else available
    if available is not None and need > 0.6 * available:
        raise SimulationTooLarge(
            f"{instances} instances x {chunks} chunks needs about {format_bytes(need)}, more than 60% of the "
            f"{format_bytes(available)} available; use a larger --chunk-size or fewer instances")


def check_fits(scenario: Scenario, available_bytes: int | None = None) -> None:
    """Refuse (``SimulationTooLarge``) a scenario whose job state would not fit in memory, before it starts."""
    chunks = plan_chunks(parse_manifest(rank_manifest(scenario.model)), scenario.chunk_size)
    _check_memory(scenario.instances, len(chunks), available_bytes)


def simulate(scenario: Scenario, with_single_fork: bool = True) -> Result:
    """Run ``scenario``; with ``with_single_fork``, also one instance alone on the same links."""
    result = FleetSimulation(scenario).run()
    if with_single_fork:
        alone = scenario.replace(instances=1, faults=scenario.faults.none(), slowdowns=())
        result.single_fork_seconds = FleetSimulation(alone).run().time_to_all_seconds
    return result


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
