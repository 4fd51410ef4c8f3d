"""The scheduler's HTTP layer: parse, call the pure core, map typed errors.

All state lives in one ``SchedulerState`` guarded by a lock; handlers hold it
only for pure operations (no awaits inside). An APScheduler job drops seeds
whose heartbeats stopped and jobs whose client went silent.

    >>> app = create_app(SchedulerConfig())
    >>> uvicorn.run(app, host="127.0.0.1", port=8700)
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import math
import threading
import time
import uuid
from array import array
from collections import OrderedDict, deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from prometheus_client import CollectorRegistry

from metrics.definitions import FAILURE_REASONS, SchedulerMetrics
from rfork_api.auth import GrantClaims, grant_key, sign_grant
from rfork_api.http import DEFAULT_MAX_BODY_BYTES, add_plain_route, error_responses, install, service_app, validated_body
from scheduler import api_models as wire
from scheduler.chunking import DEFAULT_CHUNK_SIZE, ChunkPlan, plan_chunks, validate_chunk_size
from scheduler.errors import InvalidLandedMap, InvalidResume, UnknownJob, UnknownLayout, UnknownModel, UnknownSeed, clip
from scheduler.fleet import AdmissionConfig, FleetAdmission, fleet_summary
from scheduler.intake import Intake, decode_job_request, decode_registration
from scheduler.liveness import LoopWatch, NoWatch
from scheduler.front_protocol import REPLICA_SCOPE_KEY
from scheduler.partition import job_id_for
from scheduler.state_metrics import SchedulerStateCollector
from rfork_api.manifest import Manifest, ManifestTable, layout_digest, match_manifests
from scheduler.planner import DONE, PEER, RUNNING, Job, PlannerConfig, Report, SourceView, stripe_start
from scheduler.stream_swarm import FAILED as STREAM_FAILED, StreamReport, StreamSwarm, paced_report_seconds
from scheduler.swarm import GroupKey, PeerOffer, Swarm, group_key, layout_group
from scheduler.layouts import LayoutCache
from rfork_api.landed import plan_digest

log = logging.getLogger("rfork.scheduler")

SILENT_JOB_DECISION_SECONDS = 5.0
"""The reaper decides for a running job whose client has not asked this long, at most this often
(half the planner's default ``no_seed_grace_seconds``: a silent job still fails in time)."""

GC_THRESHOLDS = (20_000, 20, 10)
"""The serving scheduler's garbage-collector thresholds (Python's default: 700, 10, 10). Its heap holds
every job's chunk state (a 1024-member scale-out: millions of objects) and its decisions allocate
fast, so by default young collections ran every few requests and a full one scanned the whole heap.
In-process, a 1024-member scale-out's /work calls (one 2-core machine, 2 runs each): 205 young, 19
middle and one full collection, 0.22-0.58 s in all, the full one a 0.15-0.39 s stall of every request;
with ``tune_gc`` 7 young ones, 0.05-0.10 s, 7-14 ms each on average (50,000: 3 of 35-50 ms). Garbage
cycles are rare here; they wait a little longer to be freed."""

PLAN_CACHE_SIZE = 64
"""Chunk plans kept (groups: model identity, rank, manifest, chunk size). A TP8 model is 8 groups; a
plan of 45,000 tensors is a few MB."""


def _decision(call: str):
    """Count the thread CPU a ``SchedulerState`` method takes as ``call`` (what deciding costs,
    apart from the HTTP protocol around it: ``rfork bench scheduler`` reports both)."""
    def wrap(method):
        @functools.wraps(method)
        def timed(self, *args, **kwargs):
            started = time.thread_time()
            try:
                return method(self, *args, **kwargs)
            finally:
                self.metrics.decision_cpu_by_call[call].inc(time.thread_time() - started)
        return timed
    return wrap


@dataclass(frozen=True)
class SchedulerConfig:
    heartbeat_interval_seconds: float = 1.0
    heartbeat_timeout_seconds: float = 5.0
    """Seeds silent this long are dropped and their chunks move elsewhere. Time the scheduler's
    own event loop was stalled (and so could not have heard a heartbeat) does not count."""
    loop_watch_interval_seconds: float = 0.1
    """How often the event loop reports that it runs (a late report measures a stall)."""
    client_timeout_seconds: float = 30.0
    """Jobs whose client has not asked for work this long are abandoned."""
    default_chunk_size: int = DEFAULT_CHUNK_SIZE
    min_chunk_size: int = 4096
    finished_job_ttl_seconds: float = 300.0
    """Finished jobs stay queryable this long (their metric series go at once)."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """Larger request bodies get 413 before they are parsed."""
    token: str | None = field(default=None, repr=False)
    """Shared bearer token (None = auth off). Also derives the lease-grant signing key."""
    grant_ttl_seconds: float = 300.0
    """A lease grant is valid this long after its assignment was handed out."""
    peer_read_deadline_seconds: float = 30.0
    """A read from a peer whose reader went away without reporting it may still be on the wire this
    long: the peer's withdraw waits for it (a client's read times out well before)."""
    long_poll_recheck_seconds: float = 0.05
    """A long-polling /work call looks for work again at most this often. Every report is a change
    that may create work, and each would wake every waiting call: at fleet scale (hundreds of
    waiting clients, thousands of reports a second) that is a planner decision per waiter per
    report. With this bound, N waiting calls cost at most N / this decisions a second, as the
    simulator's clients (``idle_poll_seconds``) do. 0 = on every change."""
    max_peers_per_decision: int = 16
    """Peers offered to one /work decision, sampled afresh each time (a swarm's few parents)."""
    stream_stripes: int = 8
    """Streams (scheduler/stream_swarm.py): a peer whose client registers a landed map follows other
    members' maps, one stream per stripe of this many, instead of a decision per chunk. 0 = off."""
    stream_fanout: int = 8
    """Children a member relays its home stripe to."""
    stream_min_members: int = 16
    """A group streams once this many of its jobs registered maps (fewer feed each other per chunk)."""
    stream_reports_per_second: float = 256.0
    """Streaming members are told to report at most every members / this seconds (``WorkReply.
    stream_report_seconds``; their own second below 256 members, 4 s at 1,024), so that their reports
    cost this process about this many /work calls a second whatever N is. At most a third of
    ``client_timeout_seconds``. 0 = each client's own interval."""
    intake_workers: int = 2
    """Job requests and registrations decoded and planned at once, off the event loop (more wait)."""
    process_pool_min_body_bytes: int = 1 << 20
    """Bodies at least this long are decoded in a worker process, smaller ones in a thread."""
    inline_max_body_bytes: int = 32 << 10
    """Bodies shorter than this are decoded on the event loop (under a millisecond: a job sent by
    reference, a small registration), without the hop to a thread."""
    layout_wait_seconds: float = 5.0
    """A job sent by reference to a layout not held waits this long at most for a manifest of that
    layout that may be on its way (a creation in progress, or one a client was just told to send
    whole: a scale-out's first members arrive together), then gets ``409 unknown_layout``."""
    layout_cache_tensors: int = 2_000_000
    """Tensors of the manifest layouts kept for jobs that send their manifest by reference
    (scheduler/layouts.py; ~150 bytes each); 0 = none (every job sends its manifest whole)."""
    planner: PlannerConfig = PlannerConfig()
    admission: AdmissionConfig = AdmissionConfig()
    """Fleet-wide limit on concurrent forks per seed (scheduler/fleet.py); none by default."""
    deciders: int = 1
    """Deciding processes, each owning the ranks ``r % deciders == decider_index`` (scheduler/partition.py)."""
    decider_index: int = 0


@dataclass
class SeedRecord:
    seed_id: str
    identity: wire.ModelIdentity
    agent_url: str
    rate_cap: float | None
    ranks: dict[int, tuple[str, Manifest]]
    """rank -> (TransferEngine session, manifest)."""
    registered_at: float
    last_heartbeat: float
    allowed_rate: float | None
    agent_incarnation: str = ""
    """The agent process behind this registration (``agent_instance_id``, or one per registration)."""
    stalled_at_heartbeat: float = 0.0
    """``LoopWatch.stalled`` when the last heartbeat (or the registration) arrived."""
    shapes_digests: dict[int, bytes] = field(default_factory=dict)
    """rank -> ``ManifestTable.shapes_digest`` of its manifest: a job whose manifest has the same
    digest matches without a tensor-by-tensor comparison."""
    available_bytes: float = 0.0
    in_flight_leases: int = 0
    qos: wire.SeedQos | None = None

    def view(self, rank: int) -> SourceView:
        session_id, manifest = self.ranks[rank]
        # A new agent process or a new TransferEngine session (a restarted seed) is a new incarnation.
        return SourceView(self.seed_id, session_id, self.agent_url, manifest, self.allowed_rate,
                          incarnation=f"{self.agent_incarnation}/{session_id}")


@dataclass
class JobRecord:
    job: Job
    identity: wire.ModelIdentity
    rank: int
    last_poll: float
    group: GroupKey | None = None
    """The jobs that can feed each other (same weights, rank, manifest shape, chunk size)."""
    last_reaper_decision: float = -math.inf
    """When the reaper last made a decision for this job while its client was silent."""
    last_progress_wall: float = 0.0
    """Unix time the job last landed bytes (its creation until the first chunk lands): alert rules
    compare it with Prometheus's time(), so wall time, not the scheduler's clock."""


@dataclass
class ScaleOut:
    """The jobs of one group created while one of them still ran: told as one log line each way.
    A line per job was 2,000 lines a 1024-member scale-out (4-5 % of the deciding process's CPU in a
    profile); each job's own lines are at DEBUG (``--log-level debug``), its failure still a WARNING."""

    started: float
    model: str
    rank: int
    jobs: int = 0
    done: int = 0


@dataclass
class SchedulerState:
    config: SchedulerConfig
    metrics: SchedulerMetrics
    clock: Callable[[], float]
    wall_clock: Callable[[], float] = time.time
    """Grant expiry is wall-clock time: agents check it on another host."""
    seeds: dict[str, SeedRecord] = field(default_factory=dict)
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    registrations: int = 0
    loop_watch: LoopWatch = field(default_factory=NoWatch)
    """Stalls of the event loop, not counted as seed silence (a NoWatch when nothing ticks it)."""
    swarm: Swarm = field(init=False)
    streams: StreamSwarm | None = field(init=False)
    plan_digests: dict[GroupKey, str] = field(default_factory=dict)
    """Group -> hex digest of its chunk plan (what a streaming client checks its own plan against)."""
    scale_outs: dict[GroupKey, ScaleOut] = field(default_factory=dict)
    """Group -> its current scale-out (from its first job while none was running)."""
    maybe_running: dict[GroupKey, deque[str]] = field(default_factory=dict)
    """Group -> its jobs in creation order, those ended pruned from the front as found (``_group_running``)."""
    layouts: LayoutCache = field(init=False)
    """Layouts of the manifests sent whole: later jobs may send theirs by reference."""
    plans: OrderedDict[GroupKey, ChunkPlan] = field(default_factory=OrderedDict)
    """Group -> its chunk plan, the most recently used last (at most ``PLAN_CACHE_SIZE``): a group's
    jobs have the same chunks by definition, so a 1024-instance scale-out plans them once, and its
    jobs share the plan's read index."""

    def __post_init__(self) -> None:
        self.layouts = LayoutCache(self.config.layout_cache_tensors)
        self.swarm = Swarm(read_deadline_seconds=self.config.peer_read_deadline_seconds,
                           max_peers_per_decision=self.config.max_peers_per_decision)
        self.streams = None if self.config.stream_stripes <= 0 else StreamSwarm(
            self.config.stream_stripes, self.config.stream_fanout,
            read_deadline_seconds=self.config.peer_read_deadline_seconds, min_members=self.config.stream_min_members)
        self.metrics.registry.register(SchedulerStateCollector(self))

    @functools.cached_property
    def admission(self) -> FleetAdmission:
        return FleetAdmission(self.config.admission)

    @functools.cached_property
    def grant_key(self) -> bytes | None:
        return grant_key(self.config.token) if self.config.token else None  # same test as the auth middleware

    # -- seeds -------------------------------------------------------------
    def register(self, seed_id: str, body: wire.SeedRegistration, tables: dict[int, ManifestTable]) -> None:
        """Add or replace a seed. CPU-heavy for big manifests: call it off the event loop."""
        ranks = {r.rank: (r.session_id, tables[r.rank].to_manifest()) for r in body.ranks}
        now = self.clock()
        with self.lock:
            previous = self.seeds.get(seed_id)
            self.registrations += 1
            self.seeds[seed_id] = SeedRecord(
                seed_id, body.identity, body.agent_url, body.rate_cap_bytes_per_second, ranks,
                registered_at=now, last_heartbeat=now, allowed_rate=body.rate_cap_bytes_per_second,
                agent_incarnation=body.agent_instance_id or f"registration-{self.registrations}",
                stalled_at_heartbeat=self.loop_watch.stalled(now),
                shapes_digests={rank: table.shapes_digest for rank, table in tables.items()},
            )
            if previous is not None and previous.ranks != ranks:
                # Same id, new memory (a restarted seed): running jobs hold stale pointers.
                for record in self.jobs.values():
                    record.job.seed_lost(seed_id, "seed re-registered with new memory", now)
        log.info("seed %s %s: %s ranks %s, cap %s", seed_id, "re-registered" if previous else "registered",
                 body.identity.model, sorted(ranks), body.rate_cap_bytes_per_second)

    def heartbeat(self, seed_id: str, body: wire.Heartbeat) -> None:
        with self.lock:
            seed = self.seeds.get(seed_id)
            if seed is None:
                raise UnknownSeed(f"seed {seed_id!r} is not registered (dropped after missed heartbeats?); re-register it")
            seed.last_heartbeat = self.clock()
            seed.stalled_at_heartbeat = self.loop_watch.stalled(seed.last_heartbeat)
            seed.allowed_rate = body.allowed_rate_bytes_per_second
            seed.available_bytes = body.available_bytes
            seed.in_flight_leases = body.in_flight_leases
            seed.qos = body.qos

    def remove_seed(self, seed_id: str, reason: str) -> bool:
        with self.lock:
            return self._remove_seed(seed_id, reason)

    def _remove_seed(self, seed_id: str, reason: str) -> bool:
        if self.seeds.pop(seed_id, None) is None:
            return False
        now = self.clock()
        for record in self.jobs.values():
            self._counting_retries(record.job, "seed_lost", lambda job=record.job: job.seed_lost(seed_id, reason, now))
        log.warning("seed %s removed: %s", seed_id, reason)
        return True

    def matching(self, identity: wire.ModelIdentity, rank: int) -> list[SeedRecord]:
        """Seeds that may serve this identity and rank. A seed paused by its operator (rate cap 0)
        is left out, as if absent: jobs run from the others, or fail as with no seed at all."""
        return [s for s in self.seeds.values() if s.identity == identity and rank in s.ranks and s.rate_cap != 0]

    # -- jobs --------------------------------------------------------------
    @_decision("create_job")
    def create_job(self, body: wire.JobRequest, sent: ManifestTable | array) -> JobRecord:
        """Match the client's manifest with the seeds', plan chunks, add the job.

        ``sent`` is ``decode_job_request``'s: the manifest sent whole, or the pointers of one
        sent by layout (``UnknownLayout`` when no manifest of that layout was sent whole).
        CPU-heavy for big manifests: call it off the event loop. The lock is held only to
        read the registry and to add the job, so heartbeats and /work go on meanwhile.
        """
        chunk_size = self.config.default_chunk_size if body.chunk_size_bytes is None else body.chunk_size_bytes
        validate_chunk_size(chunk_size, minimum=self.config.min_chunk_size)
        manifest, shapes_digest = self._manifest(body, sent)
        with self.lock:
            seeds = self.matching(body.identity, body.rank)
            if not seeds:
                known = sorted({f"{clip(s.identity.model, quote=False)}@{clip(s.identity.revision, quote=False)} "
                                f"{s.identity.dtype} tp={s.identity.tp_size}"
                                + (" (paused: --rate-cap 0)" if s.rate_cap == 0 else "") for s in self.seeds.values()})
                raise UnknownModel(
                    f"no live seed serves {clip(body.identity.model, quote=False)}@"
                    f"{clip(body.identity.revision, quote=False)} "
                    f"{body.identity.dtype} tp={body.identity.tp_size} rank {body.rank}; "
                    f"registered: {', '.join(known) or 'none'}. Start a seed (and its rfork agent) for "
                    "this exact identity, or fix the client's model/revision/dtype/tp_size to match one above"
                )
            seed_manifests = [(s.seed_id, s.ranks[body.rank][1], s.shapes_digests.get(body.rank)) for s in seeds]
        for seed_id, seed_manifest, digest in seed_manifests:
            if digest != shapes_digest:  # they differ somewhere: name the first difference
                match_manifests(manifest, seed_manifest, seed_id)
        group = group_key(body.identity, body.rank, manifest, chunk_size)  # same bytes under the same chunk ids
        chunks = self._plan(group, manifest, chunk_size)
        now = self.clock()
        job_id = job_id_for(uuid.uuid4().hex[:12], self.config.decider_index, self.config.deciders)
        with self.lock:
            start = stripe_start(len(chunks), self.swarm.next_index(group))
        job = Job(job_id, manifest, chunks, self.config.planner, now, start=start)
        if body.resume is not None:
            self._resume(job, body, len(chunks), now)
        with self.lock:
            record = JobRecord(job, body.identity, body.rank, last_poll=self.clock(), group=group,
                               last_progress_wall=self.wall_clock())
            self.jobs[job_id] = record
            offer = None if body.peer is None else PeerOffer(
                body.peer.session_id, body.peer.upload_rate_bytes_per_second, body.peer.max_in_flight)
            self.swarm.join(job, group, offer, now)
            scale_out = self.scale_outs.get(group)
            began = scale_out is None
            if began:
                scale_out = self.scale_outs[group] = ScaleOut(now, body.identity.model, body.rank)
            scale_out.jobs += 1
            self.maybe_running.setdefault(group, deque()).append(job_id)
        if began or log.isEnabledFor(logging.DEBUG):
            what = (f"{job.bytes_total} bytes in {len(chunks)} chunks of <= {chunk_size}, "
                    f"seeds {[s.seed_id for s in seeds]}")
            if began:
                log.info("scale-out of %s rank %d: began with job %s (%s)", body.identity.model, body.rank, job_id,
                         what)
            log.debug("job %s: %s rank %d, %s", job_id, body.identity.model, body.rank, what)
        return record

    def holds_layout(self, digest: str) -> bool:
        with self.lock:
            return digest in self.layouts

    def planned(self, body: wire.JobRequest) -> bool:
        """Whether a job request sends its manifest by reference to a layout whose chunk plan (at its
        chunk size) is held: then creating the job is cheap (a copy of the pointers, the job's queue),
        with no manifest to check and nothing to plan, and needs no thread."""
        if body.layout is None:
            return False
        chunk_size = self.config.default_chunk_size if body.chunk_size_bytes is None else body.chunk_size_bytes
        with self.lock:
            return layout_group(body.identity, body.rank, body.layout.digest, chunk_size) in self.plans

    def _manifest(self, body: wire.JobRequest, sent: ManifestTable | array) -> tuple[Manifest, bytes]:
        """(the job's manifest, its shapes digest); a manifest sent whole leaves its layout here."""
        if isinstance(sent, ManifestTable):
            manifest = sent.to_manifest()
            layout_digest(manifest)  # computed here, off the lock (the manifest keeps it)
            with self.lock:
                self.layouts.add(manifest, sent.shapes_digest)
            return manifest, sent.shapes_digest
        with self.lock:
            layout = self.layouts.get(body.layout.digest)
        if layout is None:
            raise UnknownLayout(
                f"this scheduler holds no manifest of layout {body.layout.digest[:12]}… (none was sent whole "
                "yet, or it restarted or evicted it): send the manifest whole (JobRequest.manifest)")
        return layout.manifest(sent), layout.shapes_digest

    def _plan(self, group: GroupKey, manifest: Manifest, chunk_size: int) -> ChunkPlan:
        """The group's chunk plan: planned by its first job, shared by the others (read-only to them)."""
        with self.lock:
            plan = self.plans.get(group)
            if plan is not None:
                self.plans.move_to_end(group)
                return plan
        plan = plan_chunks(manifest, chunk_size, minimum=self.config.min_chunk_size)  # outside the lock: CPU
        digest = plan_digest(plan).hex() if self.streams is not None else ""
        with self.lock:
            self.plans[group] = plan
            self.plan_digests[group] = digest
            while len(self.plans) > PLAN_CACHE_SIZE:
                dropped, _ = self.plans.popitem(last=False)
                self.plan_digests.pop(dropped, None)
        return plan

    def _resume(self, job: Job, body: wire.JobRequest, num_chunks: int, now: float) -> None:
        resume = body.resume
        if body.chunk_size_bytes is None:
            raise InvalidResume("a resumed job must repeat its chunk_size_bytes: chunk ids only mean "
                                "something under the same chunk plan")
        bad = [c for c in resume.chunks_done if not 0 <= c < num_chunks]
        if bad:
            raise InvalidResume(f"chunks_done has ids outside 0..{num_chunks - 1} (e.g. {clip(bad[0])}): the manifest "
                                "or chunk size differs from the job being resumed")
        job.resume(resume.chunks_done, now)
        log.info("job %s resumes job %s: %d of %d chunks already landed", job.job_id, resume.previous_job_id,
                 job.chunks_done, num_chunks)

    def _counting_retries(self, job: Job, reason: str, change: Callable[[], None]) -> None:
        """Run ``change`` and count the chunks it re-queued as retries. A failure whose chunk is
        still live elsewhere (an endgame duplicate) or already done re-queues nothing."""
        before = job.retried_chunks
        change()
        if job.retried_chunks > before:
            self.metrics.chunk_retries_total.labels(reason=reason).inc(job.retried_chunks - before)

    def sign_grants(self, job_id: str, assignments: list, rank: int) -> None:
        """Bind each assignment to a lease the seed's agent will verify (no-op with auth off)."""
        if self.grant_key is None:
            return
        expires = self.wall_clock() + self.config.grant_ttl_seconds
        for a in assignments:
            a.grant = sign_grant(self.grant_key, GrantClaims(
                job_id=job_id, assignment_id=a.assignment_id, seed_id=a.seed_id, rank=rank,
                bytes=a.nbytes, expires_at=expires))

    def stream_plan(self, record: JobRecord, offered_peer: bool) -> wire.StreamPlan | None:
        """What a new job's client needs to stream (None: it does not: streams off, or it serves nobody)."""
        if self.streams is None or not offered_peer or record.group is None:
            return None
        with self.lock:
            digest = self.plan_digests.get(record.group)
        if not digest:
            return None
        return wire.StreamPlan(stripes=min(self.config.stream_stripes, len(record.job.chunks)), plan_digest=digest)

    def _join_streams(self, record: JobRecord, landed_map: wire.LandedMapInfo, now: float) -> None:
        job = record.job
        streams = self.streams
        if streams is None or streams.is_member(job.job_id) or job.state != RUNNING:
            return  # streams off (the client forks without), joined already, or nothing left to read
        offer = self.swarm.serving_offer(job.job_id)
        if offer is None:
            raise InvalidLandedMap(f"job {job.job_id} offered no peer session: a member of streams serves its "
                                   "landed chunks; create the job with a peer offer to stream")
        if (landed_map.num_chunks, landed_map.num_tensors) != (len(job.chunks), len(job.client_manifest)):
            raise InvalidLandedMap(
                f"the landed map has {landed_map.num_chunks} chunks of {landed_map.num_tensors} tensors, the job "
                f"{len(job.chunks)} of {len(job.client_manifest)}: register a map of the job's chunk plan "
                "(rfork_api.chunking.plan_chunks at JobCreated.chunk_size_bytes)")
        streams.join(job, record.group, landed_map.ref(), now, upload_rate=offer.rate)

    @_decision("work")
    def work(self, job_id: str, body: wire.WorkRequest) -> wire.WorkReply:
        with self.lock:
            record = self._job(job_id)
            job, now = record.job, self.clock()
            record.last_poll = now
            # Progress counts what running streams reported too (their chunks are marked when they
            # end): a streaming member's progress is its reports, every few seconds, not its streams' ends.
            before = (job.bytes_reported, dict(job.bytes_by_seed), job.state, dict(job.bytes_by_kind))
            streams = self.streams
            if body.landed_map is not None:
                self._join_streams(record, body.landed_map, now)
            if body.streams and streams is not None:
                moves = streams.endgame_moves
                streams.report(job_id, [StreamReport(r.stream_id, r.landed, r.state, r.reason, r.error)
                                        for r in body.streams], now)
                if streams.endgame_moves > moves:
                    self.metrics.stream_endgame_moves_total.inc(streams.endgame_moves - moves)
                for lost in streams.take_lost():
                    self.swarm.withdraw(lost, now)  # its followers cannot read it: nobody else should
                    log.warning("job %s: streams from it failed (%s's report); it serves no more", lost, job_id)
                for r in body.streams:
                    if r.state == STREAM_FAILED:
                        self.metrics.stream_failures_total.labels(reason=r.reason or "parent_lost").inc()
                        log.info("job %s: stream %s failed (%s): %s", job_id, r.stream_id, r.reason, r.error)
            # A job that ended learns nothing from reports; its client's last ones (the assignments it
            # held, read or not) only settle its reads, and fail no source. Nor does an assignment
            # the client never read (NOT_READ: cancelled by us, or by the client's end).
            running = job.state == RUNNING
            for r in body.reports:
                a = job.assignments.get(r.assignment_id)
                reason = r.reason if r.reason in FAILURE_REASONS else "read_failed"
                report = Report(r.assignment_id, r.ok, r.reason, r.error, r.seconds)
                self._counting_retries(job, reason, lambda report=report: job.apply(report, now))
                self.swarm.settled(r.assignment_id)  # off the wire: its peer may free its memory
                if a is not None and not r.ok and running and r.reason != wire.NOT_READ:
                    # Peers are counted as one label value: one per client would grow without bound.
                    source = PEER if a.source_kind == PEER else a.seed_id
                    self.metrics.chunk_failures_total.labels(seed=source, reason=reason).inc()
            self._admit()
            excluded = dict(job.excluded)
            if job.streamed_mask and not job.pending and not job.live:
                views, assignments = [], []  # every chunk left comes by a stream: no source to ask
            elif streams is not None and streams.is_member(job_id):
                # A streaming member reads per chunk only the stripes whose parent is the seeds (a
                # root, or a stripe whose relays were lost): from the seeds, as the trees decided.
                # Single-chunk reads from peers would compete with their streams' upload.
                views = self._views(record)
                assignments = [] if views is None else job.next_assignments(views, now, body.max_assignments)
            else:
                views = self._views(record)
                assignments = [] if views is None else job.next_assignments(
                    views + self.swarm.sources_for(job_id, now), now, body.max_assignments,
                    covered=self.swarm.covered_for(job_id))
            for seed_id in excluded.keys() - job.excluded.keys():
                log.info("job %s: seed %s restarted (a new agent or seed process registered) after it was "
                         "excluded (%s); using it again", job_id, seed_id, excluded[seed_id])
            self.swarm.assigned(assignments, job_id, now)
            self.sign_grants(job_id, [a for a in assignments if a.source_kind != PEER], record.rank)
            for seed_id, n in job.bytes_by_seed.items():
                delta = n - before[1].get(seed_id, 0)
                if delta and not seed_id.startswith("peer:"):
                    self.metrics.seed_bytes_assigned_total.labels(seed=seed_id).inc(delta)
            for kind, n in job.bytes_by_kind.items():
                if n > before[3].get(kind, 0):
                    self.metrics.bytes_landed_by_kind_total.labels(kind=kind).inc(n - before[3].get(kind, 0))
            if job.bytes_reported > before[0] and job.state == RUNNING:
                record.last_progress_wall = self.wall_clock()
            if before[2] == RUNNING and job.state != RUNNING:
                self._finished(record, job.state)
            started, ended = ([], []) if streams is None else streams.take(job_id)
            rates = {} if streams is None else streams.take_rates(job_id)
            if started:
                self.metrics.streams_started_total.inc(len(started))
            return wire.WorkReply(
                state=job.state, error=job.error, assignments=[_wire_assignment(a) for a in assignments],
                cancel=job.take_cancellations(), streams=[_wire_stream(a) for a in started], end_streams=ended,
                stream_rates=rates,
                retry_after_seconds=0.0 if assignments else 0.5 if views is None else 0.05,
                progress=_wire_progress(job), queued=self.admission.last.position(job_id),
                chunks_waiting=len(job.pending) if job.state == RUNNING else 0,
                stream_report_seconds=self._paced_report_seconds())

    def _paced_report_seconds(self) -> float:
        """What each reply tells a streaming member: report at most this often (0: its own interval)."""
        if self.streams is None:
            return 0.0
        return paced_report_seconds(self.streams.streaming_members(), self.config.stream_reports_per_second,
                                    self.config.client_timeout_seconds / 3)

    def stream_pacing(self) -> tuple[float, float]:
        """(members streaming now, the report interval they are asked for); the caller holds the lock."""
        return (0.0 if self.streams is None else self.streams.streaming_members()), self._paced_report_seconds()

    def _admit(self) -> None:
        """Recompute fork admission (only with a limit: scheduler/fleet.py)."""
        if self.config.admission.max_forks_per_seed is not None:
            self.admission.update([r for r in self.jobs.values() if r.job.state == RUNNING], self.seeds.values())

    def _views(self, record: JobRecord) -> list[SourceView] | None:
        """The seeds a job may read from now; None while it waits in the queue for a fork slot."""
        matching = self.matching(record.identity, record.rank)
        if self.config.admission.max_forks_per_seed is None:
            return [s.view(record.rank) for s in matching]
        allowed = self.admission.seed_ids_for(record.job.job_id)
        if allowed is None:
            return None
        # No admitted seed and not queued: none matches, or the job excluded them all; the planner decides.
        return [s.view(record.rank) for s in matching if not allowed or s.seed_id in allowed]

    def fleet(self) -> dict:
        with self.lock:
            running = [r for r in self.jobs.values() if r.job.state == RUNNING]
            admission = self.admission.update(running, self.seeds.values())  # no limit: every matching seed
            seeds = list(self.seeds.values())
            return fleet_summary(admission, seeds, running, {s.seed_id: s.qos for s in seeds}, self.clock())

    def withdraw(self, job_id: str) -> int:
        """The job's client stops serving as a peer; returns reads from it that may still be on the wire."""
        with self.lock:
            record = self._job(job_id)
            now = self.clock()
            record.last_poll = now
            was_member = self.swarm.is_member(job_id)
            in_flight = self.swarm.withdraw(job_id, now)
            if self.streams is not None:
                in_flight += self.streams.withdraw(job_id, now)
        if was_member and in_flight:
            log.info("job %s withdrew as a peer; %d reads from it still on the wire", job_id, in_flight)
        return in_flight

    def _leave_swarm(self, record: JobRecord, why: str, now: float) -> None:
        """The job's client is gone or stopped serving: its readers read elsewhere."""
        job = record.job
        readers = self.swarm.leave(job.job_id, now)
        if self.streams is not None:
            self.streams.leave(job.job_id, now)
        for reader in readers:
            self._counting_retries(reader, "seed_lost", lambda reader=reader: reader.seed_lost(job.peer_id, why, now))
        if record.group is not None and not self._group_running(record.group):
            self._end_scale_out(record.group, now)

    def _group_running(self, group: GroupKey) -> bool:
        """Whether a job of ``group`` is still running. Asked at every job's end: a scan of every job
        made a scale-out's ends quadratic (1024 members: 0.5 M steps; a TP8 fleet of 1024, 8 groups in
        one process: 33 M). A job never runs again once ended, so the group's queue drops ended jobs
        from its front as it finds them, each once: O(1) amortized."""
        queue = self.maybe_running.get(group)
        while queue:
            record = self.jobs.get(queue[0])
            if record is not None and record.job.state == RUNNING:
                return True
            queue.popleft()
        self.maybe_running.pop(group, None)
        return False

    def _end_scale_out(self, group: GroupKey, now: float) -> None:
        scale_out = self.scale_outs.pop(group, None)
        if scale_out is not None:
            self.metrics.scale_out_seconds.observe(now - scale_out.started)
            log.info("scale-out of %s rank %d: ended after %.1f s, %d of its %d jobs done", scale_out.model,
                     scale_out.rank, now - scale_out.started, scale_out.done, scale_out.jobs)

    def job_status(self, job_id: str) -> wire.JobStatus:
        with self.lock:
            record = self._job(job_id)
            return wire.JobStatus(job_id=job_id, state=record.job.state, error=record.job.error,
                                  progress=_wire_progress(record.job))

    def seed_list(self) -> wire.SeedList:
        now = self.clock()
        with self.lock:
            return wire.SeedList([
                wire.SeedSummary(
                    seed_id=s.seed_id, identity=s.identity, agent_url=s.agent_url, ranks=sorted(s.ranks),
                    rate_cap_bytes_per_second=s.rate_cap, allowed_rate_bytes_per_second=s.allowed_rate,
                    in_flight_leases=s.in_flight_leases, seconds_since_heartbeat=now - s.last_heartbeat)
                for s in self.seeds.values()])

    def health(self) -> wire.SchedulerHealth:
        return wire.SchedulerHealth(status="ok", seeds=len(self.seeds), jobs=len(self.jobs))

    def settle_reads(self, job_id: str, body: wire.ReadsSettled) -> wire.ReadsSettledReply:
        """A client's reads that are off the wire, said after its job was deleted (or any time)."""
        with self.lock:
            settled = self.swarm.settle_reads(job_id, body.assignment_ids)
            streams = 0 if self.streams is None else self.streams.settle(job_id, body.stream_ids)
        if settled or streams:
            log.info("job %s: %d read%s from peers and %d stream%s settled by its client", clip(job_id),
                     settled, "" if settled == 1 else "s", streams, "" if streams == 1 else "s")
        return wire.ReadsSettledReply(job_id=job_id, settled=settled, streams_settled=streams)

    def cancel_job(self, job_id: str, why: str = "cancelled by the client") -> None:
        with self.lock:
            record = self._job(job_id)
            if record.job.state == RUNNING:
                record.job.cancel(self.clock(), why)
                self._finished(record, "cancelled")
            elif self.swarm.is_member(job_id):
                self._leave_swarm(record, "peer finished serving", self.clock())
            del self.jobs[job_id]

    def _job(self, job_id: str) -> JobRecord:
        record = self.jobs.get(job_id)
        if record is None:
            raise UnknownJob(f"no fork job {clip(job_id)} (finished long ago, abandoned, or never created)")
        return record

    def live_by_seed(self) -> dict[str, int]:
        """Assignments in flight per seed, over all jobs (a scan of every job's chunks: the
        metrics collector calls it once a scrape). Call with the lock held."""
        live: dict[str, int] = {}
        for rec in self.jobs.values():
            for seed_id, n in rec.job.live_by_seed().items():
                live[seed_id] = live.get(seed_id, 0) + n
        return live

    def _finished(self, record: JobRecord, outcome: str) -> None:
        job = record.job
        self.metrics.jobs_finished_total.labels(outcome=outcome).inc()
        if outcome == DONE and (scale_out := self.scale_outs.get(record.group)) is not None:
            scale_out.done += 1
        if outcome == DONE and job.finished_at is not None:
            self.metrics.fork_duration.observe(job.finished_at - job.created_at)
        now = self.clock()
        self.swarm.reader_gone(job.job_id, now)  # reads it never reported may still be on the wire
        if outcome != DONE:
            self._leave_swarm(record, f"peer's job {outcome}", now)
        elif record.group is not None and not self._group_running(record.group):
            self._end_scale_out(record.group, now)  # a done job stays a peer while its client polls
        log.log(logging.DEBUG if outcome == DONE else logging.WARNING, "job %s %s%s", job.job_id, outcome,
                f": {job.error}" if job.error else "")

    # -- reaper ------------------------------------------------------------
    @_decision("reap")
    def reap(self) -> None:
        """Drop silent seeds and abandoned jobs; forget long-finished jobs."""
        now = self.clock()
        with self.lock:
            for seed_id, seed in list(self.seeds.items()):
                silent = self.loop_watch.silence(seed.last_heartbeat, seed.stalled_at_heartbeat, now)
                if silent > self.config.heartbeat_timeout_seconds:
                    self._remove_seed(seed_id, f"seed_lost: no heartbeat for {silent:.1f} s")
                    self.metrics.seeds_dropped_total.inc()
            self._admit()
            for job_id, record in list(self.jobs.items()):
                job = record.job
                if job.state == RUNNING:
                    # Let the planner notice 'no seeds at all' even if the client stopped asking
                    # (not while the job waits for a fork slot: its seeds are busy, not gone), for
                    # jobs silent a while, at most that often: a client that asks has its own
                    # decisions, and one per running job per second was a quarter of a 1024-member
                    # scale-out's CPU.
                    if now - max(record.last_poll, record.last_reaper_decision) >= SILENT_JOB_DECISION_SECONDS:
                        record.last_reaper_decision = now
                        views = self._views(record)
                        if views is not None:
                            job.check_sources(views, now, lambda job_id=job_id: self.swarm.sources_for(job_id, now))
                    if job.state != RUNNING:
                        self._finished(record, job.state)
                    elif now - record.last_poll > self.config.client_timeout_seconds:
                        job.cancel(now, f"client silent for {now - record.last_poll:.0f} s")
                        self._finished(record, "abandoned")
                elif self.swarm.is_member(job_id):
                    if job.state == DONE and now - record.last_poll > self.config.client_timeout_seconds:
                        self._leave_swarm(record, f"peer silent for {now - record.last_poll:.0f} s", now)
                elif job.finished_at is not None and now - job.finished_at > self.config.finished_job_ttl_seconds:
                    del self.jobs[job_id]


class _Arrivals:
    """Layouts on their way: job creations in progress whose manifest may come whole, and the
    layouts a client was just told to send whole (``409 unknown_layout``). A scale-out's first
    members arrive together, all by reference to a layout not held yet: the first is told to send
    its manifest whole, and the others wait for it (``wait``) instead of each sending theirs."""

    def __init__(self) -> None:
        self.count = 0
        """Creations in progress whose body may be a whole manifest."""
        self._asked: dict[str, float] = {}
        """Layout digest -> when a client was last told to send a manifest of it whole."""
        self._changed = _Changes()

    def begin(self) -> None:
        self.count += 1

    def end(self) -> None:
        self.count -= 1
        self._changed.notify()

    def settled(self) -> None:
        """A creation whose manifest came whole is done (its layout may be held now)."""
        self._changed.notify()

    async def wait(self, digest: str, held: Callable[[], bool], timeout: float) -> None:
        """Until ``held()``, or no manifest of ``digest`` may be on its way, or ``timeout`` seconds
        passed. Not held then: the caller answers 409, and its client sends the manifest whole."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        asked = self._asked.get(digest)
        while not held() and (self.count or (asked is not None and loop.time() - asked < timeout)) \
                and (left := deadline - loop.time()) > 0:
            await self._changed.wait(left)
        if not held():
            now = loop.time()
            for old in [d for d, at in self._asked.items() if now - at >= timeout]:
                del self._asked[old]
            self._asked[digest] = now


class _Changes:
    """Wakes long-polling /work calls when something that may create work happened."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()  # later waiters wait for the next change

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            pass


class RouteTiming:
    """Observe each HTTP request's latency by route template and status class.

    Plain ASGI: Starlette's ``@app.middleware("http")`` runs every request through
    an extra task and memory streams, which cost the scheduler about as much CPU as
    a small request itself. An exception that escapes the app (answered by the
    outermost error middleware) counts as 5xx. A seed's call that the front ends
    sent to every decider (``--deciders``) is timed by decider 0 alone.
    """

    def __init__(self, app, histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get(REPLICA_SCOPE_KEY):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.histogram.labels(route=f"{scope['method']} {path}", status=f"{status // 100}xx").observe(
                time.perf_counter() - started)


# -- the planner's dataclasses -> the wire (the one place each crosses) -------


def _wire_assignment(a) -> wire.Assignment:
    return wire.Assignment(
        assignment_id=a.assignment_id, chunk_id=a.chunk_id, chunk_ids=list(a.chunk_ids), seed_id=a.seed_id,
        session_id=a.session_id, agent_url=a.agent_url, bytes=a.nbytes, attempt=a.attempt, grant=a.grant,
        reads=[wire.ReadSpan(dst_ptr=r.dst_ptr, src_ptr=r.src_ptr, length=r.length) for r in a.reads],
        source_kind=a.source_kind)


def _wire_stream(a) -> wire.StreamAssignment:
    return wire.StreamAssignment(
        stream_id=a.stream_id, stripe=a.stripe, first_chunk=a.first_chunk, end_chunk=a.end_chunk,
        parent_job_id=a.parent_job_id, parent_map=wire.LandedMapInfo.of(a.parent_map),
        max_rate_bytes_per_second=a.max_rate)


def _wire_progress(job: Job) -> wire.Progress:
    return wire.Progress(**job.progress())


def tune_gc() -> None:
    """For a serving scheduler process, once its app is built: what start-up allocated (imports, the
    app) lives as long as the process, so collections never scan it again (``gc.freeze``), and
    ``GC_THRESHOLDS``."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def create_app(config: SchedulerConfig = SchedulerConfig(), registry: CollectorRegistry | None = None,
               clock: Callable[[], float] = time.monotonic, run_reaper: bool = True) -> FastAPI:
    registry = registry if registry is not None else CollectorRegistry()
    metrics = SchedulerMetrics(registry)
    if config.decider_index == 0:
        metrics.deciders.set(1)  # the scheduler's own process (--deciders: its supervisor counts the others)
    state = SchedulerState(config, metrics, clock)
    intake = Intake(config.process_pool_min_body_bytes, config.intake_workers, config.inline_max_body_bytes)

    async def watch_loop() -> None:
        while True:
            await asyncio.sleep(config.loop_watch_interval_seconds)
            late = state.loop_watch.tick(clock())
            if late >= 1.0:
                log.warning("the scheduler's event loop stalled for %.1f s; seeds' heartbeat silence does not "
                            "count it", late)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        reaper = watcher = None
        if run_reaper:  # a serving scheduler: also have the decoding processes ready before the first big body
            intake.start()
            state.loop_watch = LoopWatch(config.loop_watch_interval_seconds, clock())
            watcher = asyncio.create_task(watch_loop())
            reaper = BackgroundScheduler(daemon=True)
            reaper.add_job(state.reap, "interval", seconds=config.heartbeat_interval_seconds,
                           id="reaper", max_instances=1, coalesce=True)
            reaper.start()
        try:
            yield
        finally:
            if reaper is not None:
                reaper.shutdown(wait=False)
            if watcher is not None:
                watcher.cancel()
            intake.close()

    app = service_app(title="rfork scheduler", version="0.1.0", lifespan=lifespan, responses=error_responses())
    install(app, registry=registry, health=state.health, health_model=wire.SchedulerHealth, token=config.token,
            max_body_bytes=config.max_body_bytes, what="request body")
    app.state.scheduler = state
    app.state.intake = intake
    changes = _Changes()
    manifests_arriving = _Arrivals()

    app.add_middleware(RouteTiming, histogram=metrics.api_latency)

    # Bodies that may carry big manifests are read raw and decoded by the intake (off the
    # event loop); their documented schema is added to the OpenAPI document below.
    @app.put("/v1/seeds/{seed_id}", response_model=wire.RegistrationResponse,
             openapi_extra=_json_body("SeedRegistration"))
    async def register_seed(seed_id: wire.SeedId, request: Request):
        body, tables = await intake.decode(decode_registration, await request.body())
        await intake.in_thread(state.register, seed_id, body, tables)
        changes.notify()
        return wire.RegistrationResponse(
            seed_id=seed_id, heartbeat_interval_seconds=config.heartbeat_interval_seconds,
            heartbeat_timeout_seconds=config.heartbeat_timeout_seconds)

    @app.post("/v1/seeds/{seed_id}/heartbeat", response_model=wire.HeartbeatReply)
    async def heartbeat(seed_id: wire.SeedId, body: wire.Heartbeat):
        state.heartbeat(seed_id, body)
        changes.notify()
        return wire.HeartbeatReply()

    @app.delete("/v1/seeds/{seed_id}", status_code=204)
    async def deregister(seed_id: wire.SeedId):
        if not state.remove_seed(seed_id, "deregistered by its agent"):
            raise UnknownSeed(f"seed {seed_id!r} is not registered")
        return Response(status_code=204)

    @app.get("/v1/seeds", response_model=wire.SeedList)
    async def list_seeds():
        return state.seed_list()

    @app.get("/v1/fleet", response_model=wire.FleetSummary)
    async def fleet():
        return wire.FleetSummary.model_validate(state.fleet())

    @app.post("/v1/jobs", status_code=201, response_model=wire.JobCreated, openapi_extra=_json_body("JobRequest"))
    async def create_job(request: Request):
        """Documents the route; ``create_job_plain`` below serves it."""
        return await create_job_plain(request)

    async def create_job_plain(request: Request) -> Response:
        # Every member of a scale-out creates a job: served, like /work, without FastAPI's route
        # handling and without checking the reply against response_model (it is one already),
        # which cost more CPU than creating a job by reference to a held layout.
        raw = await request.body()
        sent = None
        whole = len(raw) >= config.inline_max_body_bytes  # most likely a manifest sent whole
        if whole:
            manifests_arriving.begin()
        try:
            body, sent = await intake.decode(decode_job_request, raw)
            if body.layout is not None:
                if whole:  # a big layout's pointers, not a manifest: none to wait for here
                    whole = False
                    manifests_arriving.end()
                # A scale-out's first members arrive together, by reference to a layout not held
                # yet: one is told to send its manifest whole, the others wait for it rather than
                # each sending theirs (_Arrivals).
                await manifests_arriving.wait(body.layout.digest, lambda: state.holds_layout(body.layout.digest),
                                              config.layout_wait_seconds)
            if state.planned(body):  # no manifest to check, nothing to plan
                record = state.create_job(body, sent)
            else:
                record = await intake.in_thread(state.create_job, body, sent)
        finally:
            if whole:
                manifests_arriving.end()
            elif isinstance(sent, ManifestTable):
                manifests_arriving.settled()  # a small manifest, sent whole: its layout may be held now
        job = record.job
        with state.lock:
            seed_ids = [s.seed_id for s in state.matching(record.identity, record.rank)]
        created = wire.JobCreated(
            job_id=job.job_id, total_bytes=job.bytes_total, num_chunks=len(job.chunks),
            chunk_size_bytes=config.default_chunk_size if body.chunk_size_bytes is None else body.chunk_size_bytes,
            seed_ids=seed_ids, streams=state.stream_plan(record, body.peer is not None))
        return Response(created.model_dump_json(), status_code=201, media_type="application/json")

    add_plain_route(app, "/v1/jobs", create_job_plain, methods=["POST"])
    app.state.create_job_plain = create_job_plain  # and creations, behind front ends (scheduler/front_ends.py)

    async def serve_work(job_id: str, body: wire.WorkRequest) -> Response:
        reply = state.work(job_id, body)
        if body.reports or body.streams or body.landed_map:
            changes.notify()  # chunks landed: peers hold more, other jobs may have work now
        # Long poll: a job with nothing to do now waits until something changes (a chunk lands
        # anywhere, a seed registers or reports budget) instead of asking again and again.
        loop = asyncio.get_running_loop()
        last_look = loop.time()
        deadline = last_look + body.wait_seconds
        cancels = list(reply.cancel)
        started, ended, rates = list(reply.streams), list(reply.end_streams), dict(reply.stream_rates)
        while (not reply.assignments and not started and not ended and reply.state == RUNNING
               and body.max_assignments > 0 and (left := deadline - loop.time()) > 0):
            await changes.wait(left)
            # Changes come in bursts (every report is one): look again at most every recheck.
            if (pause := min(last_look + config.long_poll_recheck_seconds, deadline) - loop.time()) > 0:
                await asyncio.sleep(pause)
            last_look = loop.time()
            reply = state.work(job_id, wire.WorkRequest(max_assignments=body.max_assignments))
            cancels += reply.cancel
            started += reply.streams
            ended += reply.end_streams
            rates.update(reply.stream_rates)
        reply.cancel, reply.streams, reply.end_streams, reply.stream_rates = cancels, started, ended, rates
        # Serialized once, here: returned as a model, FastAPI would dump it, validate the dump
        # against response_model and encode it again, the hottest route's largest cost after the
        # planner's (response_model still documents it).
        return Response(reply.model_dump_json(), media_type="application/json")

    @app.post("/v1/jobs/{job_id}/work", response_model=wire.WorkReply)
    async def work(job_id: str, body: wire.WorkRequest):
        """Documents the route; ``work_plain`` below serves it."""
        return await serve_work(job_id, body)

    async def work_plain(request: Request) -> Response:
        # The hottest route (every client, every second): served without FastAPI's dependency
        # solving and body handling, which cost as much CPU as the planner's decision.
        return await serve_work(request.path_params["job_id"],
                                validated_body(wire.WorkRequest, request, await request.body()))

    add_plain_route(app, "/v1/jobs/{job_id}/work", work_plain, methods=["POST"])
    app.state.work_plain = work_plain  # the deciding process behind front ends serves /work by it (scheduler/front_ends.py)

    @app.post("/v1/jobs/{job_id}/withdraw", response_model=wire.WithdrawReply)
    async def withdraw(job_id: str):
        in_flight = state.withdraw(job_id)
        changes.notify()
        return wire.WithdrawReply(job_id=job_id, reads_in_flight=in_flight)

    @app.post("/v1/jobs/{job_id}/settled", response_model=wire.ReadsSettledReply)
    async def settle_reads(job_id: str, body: wire.ReadsSettled):
        reply = state.settle_reads(job_id, body)
        changes.notify()  # a peer's withdraw may be waiting for exactly these
        return reply

    @app.get("/v1/jobs/{job_id}", response_model=wire.JobStatus)
    async def get_job(job_id: str):
        return state.job_status(job_id)

    @app.delete("/v1/jobs/{job_id}", status_code=204)
    async def delete_job(job_id: str):
        state.cancel_job(job_id)
        return Response(status_code=204)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (wire.JobRequest, wire.SeedRegistration):
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


def _json_body(model: str) -> dict:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}}}
