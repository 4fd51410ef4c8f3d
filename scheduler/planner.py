"""The fork planner: which seed reads which chunk, now. Pure: no I/O, no clock.

A ``Job`` is a state machine over chunks (pending -> live -> done). The service
calls ``next_assignments(seeds, now, n)`` when a client asks for work and
``apply(report, now)`` for each finished read; everything the client needs
(reads with resolved pointers, cancellations, progress) comes back from those.

    >>> job = Job("j1", client_manifest, plan_chunks(client_manifest, 64 << 20), PlannerConfig(), now=0.0)
    >>> batch = job.next_assignments([SeedView("seed-0", "127.0.0.1:1", "http://a", seed_manifest, 1e8)], 0.0, 8)
    >>> job.apply(Report(batch[0].assignment_id, ok=True), now=1.0)
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from scheduler.chunking import Chunk
from scheduler.manifest import Manifest


@dataclass(frozen=True)
class PlannerConfig:
    pipeline_seconds: float = 0.5
    """Keep about this much of a seed's allowed rate in flight per job."""
    max_in_flight_per_seed: int = 4
    seed_failure_threshold: int = 3
    """Consecutive failed reads after which a seed is excluded from the job. Three, not two:
    a seed with 5% transient read errors must not be lost (measured in `rfork chaos`)."""
    no_seed_grace_seconds: float = 10.0
    """With no live seed at all, wait this long (a seed may come back) before failing."""
    max_attempts_per_chunk: int = 8
    endgame: bool = True
    endgame_speedup: float = 2.0
    """Duplicate an in-flight chunk only if another seed would land it this many times sooner."""
    max_live_per_chunk: int = 2
    max_assignment_bytes: int = 256 << 20
    """Hand a seed several consecutive pending chunks as ONE assignment (one lease, one read,
    one report) up to this many bytes, when its in-flight budget (allowed rate x
    ``pipeline_seconds``) is more than ``max_in_flight_per_seed`` chunks (uncapped: always),
    and no more than its share of what is pending. Per-assignment overhead (HTTP lease and
    report) is what separates a fork from an uncapped seed from SGLang's single batch read;
    capped seeds keep one chunk per assignment, so pacing stays fine-grained. 0 turns
    merging off."""


@dataclass(frozen=True)
class SeedView:
    """What the planner needs to know about one seed rank right now."""

    seed_id: str
    session_id: str
    agent_url: str
    manifest: Manifest
    allowed_rate: float | None
    """Bytes/s the seed's agent lets through now; None = uncapped, 0 = paused."""
    incarnation: str = ""
    """Which life of this seed (its agent process and its TransferEngine session) the view
    describes. It changes when the agent or the seed restarts and registers again; an exclusion
    holds for the incarnation that failed, so a restarted seed is eligible again."""


@dataclass(frozen=True)
class Read:
    dst_ptr: int
    src_ptr: int
    length: int


@dataclass
class Assignment:
    assignment_id: str
    chunk_id: int
    seed_id: str
    session_id: str
    agent_url: str
    nbytes: int
    attempt: int
    assigned_at: float
    reads: list[Read]
    grant: str = ""
    chunk_ids: tuple[int, ...] = ()
    """Every chunk this assignment reads (``chunk_id`` is the first)."""
    incarnation: str = ""
    """The seed's incarnation when this was handed out (``SeedView.incarnation``)."""


@dataclass(frozen=True)
class Report:
    assignment_id: str
    ok: bool
    reason: str | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class _ChunkState:
    chunk: Chunk
    done: bool = False
    live: dict[str, Assignment] = field(default_factory=dict)
    failed_on: set[str] = field(default_factory=set)
    attempts: int = 0


RUNNING, DONE, FAILED = "running", "done", "failed"


class Job:
    """One rank's fork: chunk states, per-seed failures, progress."""

    def __init__(self, job_id: str, client_manifest: Manifest, chunks: list[Chunk],
                 config: PlannerConfig, now: float) -> None:
        self.job_id = job_id
        self.client_manifest = client_manifest
        self.config = config
        self.chunks = [_ChunkState(c) for c in chunks]
        self.pending: deque[int] = deque(range(len(chunks)))
        self.assignments: dict[str, Assignment] = {}
        self.excluded: dict[str, str] = {}
        """Seeds that failed this job's reads: not used again by this job unless they restart."""
        self.excluded_incarnation: dict[str, str] = {}
        """The incarnation each excluded seed had when it was excluded."""
        self.incarnation: dict[str, str] = {}
        """Each seed's latest incarnation this job has seen."""
        self.readmissions: dict[str, int] = {}
        """How often each seed came back (a new incarnation) after an exclusion."""
        self.lost: dict[str, str] = {}
        """Seeds that left the registry while this job ran (eligible again if they return)."""
        self.last_failure: dict[str, str] = {}
        """Each seed's last failed read in this job, excluded or not: what the user sees."""
        self.consecutive_failures: dict[str, int] = {}
        self.observed_rate: dict[str, float] = {}
        self.bytes_by_seed: dict[str, int] = {}
        self.bytes_total = sum(c.nbytes for c in chunks)
        self.bytes_done = 0
        self.bytes_resumed = 0
        """Bytes the client already held when it re-created this job (not read again)."""
        self.chunks_done = 0
        self.retried_chunks = 0
        self.created_at = now
        self.finished_at: float | None = None
        self.last_seed_seen_at = now
        self.error: str | None = None
        self._cancel: list[str] = []
        self._ids = 0
        self.state = RUNNING if chunks else DONE
        if not chunks:
            self.finished_at = now

    def resume(self, chunks_done: list[int], now: float) -> None:
        """Mark chunks the client already holds (it re-created the job after a scheduler restart).

        Chunk ids are stable: the same manifest and chunk size give the same plan.
        """
        done = set(chunks_done)
        for chunk_id in sorted(done):
            state = self.chunks[chunk_id]
            if state.done:
                continue
            state.done = True
            self.bytes_done += state.chunk.nbytes
            self.bytes_resumed += state.chunk.nbytes
            self.chunks_done += 1
        # One pass, not a deque.remove per chunk: a resume may list thousands of chunks.
        self.pending = deque(c for c in self.pending if c not in done)
        if self.chunks and self.chunks_done == len(self.chunks):
            self.state, self.finished_at = DONE, now

    # -- handing out work --------------------------------------------------
    def next_assignments(self, seeds: list[SeedView], now: float, max_assignments: int) -> list[Assignment]:
        if self.state != RUNNING:
            return []
        self._readmit_restarted(seeds)
        eligible = [s for s in seeds if s.seed_id not in self.excluded]
        if not eligible:
            self._fail_if_no_seeds(seeds, now)
            return []
        self.last_seed_seen_at = now
        for s in eligible:
            self.lost.pop(s.seed_id, None)
        live = self.live_by_seed()
        free = {s.seed_id: self._depth(s) - live.get(s.seed_id, 0) for s in eligible}
        out: list[Assignment] = []
        while len(out) < max_assignments:
            candidates = [s for s in eligible if free[s.seed_id] > 0]
            if not candidates:
                break
            # Most free budget first: free slots, then the faster seed.
            seed = max(candidates, key=lambda s: (free[s.seed_id], self._rate(s)))
            chunk_id = self._pending_for(seed, eligible)
            if chunk_id is not None:
                chunk_ids = [chunk_id, *self._more_pending_for(seed, eligible, chunk_id)]
            else:
                chunk_id = self._endgame_for(seed, eligible, now)
                chunk_ids = [chunk_id]
            if chunk_id is None:
                free[seed.seed_id] = 0
                continue
            out.append(self._assign(chunk_ids, seed, now))
            free[seed.seed_id] -= 1
        return out

    def _readmit_restarted(self, seeds: list[SeedView]) -> None:
        """A seed excluded in one incarnation and registered again in another is eligible again.

        Its failures (e.g. ``agent_unreachable`` while its agent restarted) were evidence
        against the incarnation that is gone. The same incarnation, however often it
        registers, stays excluded: a seed whose reads keep failing is still bad.
        """
        for s in seeds:
            self.incarnation[s.seed_id] = s.incarnation
            if s.seed_id in self.excluded and self.excluded_incarnation.get(s.seed_id) != s.incarnation:
                del self.excluded[s.seed_id]
                self.excluded_incarnation.pop(s.seed_id, None)
                self.consecutive_failures[s.seed_id] = 0
                self.readmissions[s.seed_id] = self.readmissions.get(s.seed_id, 0) + 1

    def _more_pending_for(self, seed: SeedView, eligible: list[SeedView], first: int) -> list[int]:
        """Further pending chunks to merge into the assignment that starts with ``first``."""
        first_bytes = self.chunks[first].chunk.nbytes
        limit = self.config.max_assignment_bytes
        if limit <= first_bytes or not self.pending:
            return []
        if seed.allowed_rate is not None:
            # A capped seed merges only once its in-flight budget outgrows max_in_flight_per_seed
            # chunks: bigger assignments instead of more of them, the same bytes in flight.
            limit = min(limit, seed.allowed_rate * self.config.pipeline_seconds / self.config.max_in_flight_per_seed)
        # Never more than this seed's share of what is left, so the others get work too.
        # Summing stops once the share cannot bind: O(limit / chunk), not O(pending), per assignment.
        pending_bytes = first_bytes
        for chunk_id in self.pending:
            if pending_bytes >= limit * len(eligible):
                break
            pending_bytes += self.chunks[chunk_id].chunk.nbytes
        limit = min(limit, pending_bytes / len(eligible))
        taken, total = [], first_bytes
        for chunk_id in list(self.pending):
            state = self.chunks[chunk_id]
            if seed.seed_id in state.failed_on:
                continue
            if total + state.chunk.nbytes > limit:
                break
            self.pending.remove(chunk_id)
            taken.append(chunk_id)
            total += state.chunk.nbytes
        return taken

    def _depth(self, seed: SeedView) -> int:
        cap = self.config.max_in_flight_per_seed
        if seed.allowed_rate is None:
            return cap
        if seed.allowed_rate <= 0:
            return 0
        typical = max(self.bytes_total / max(len(self.chunks), 1), 1)
        return max(1, min(cap, math.ceil(seed.allowed_rate * self.config.pipeline_seconds / typical)))

    def _rate(self, seed: SeedView) -> float:
        """Best estimate of bytes/s this seed delivers to this job."""
        observed = self.observed_rate.get(seed.seed_id)
        allowed = math.inf if seed.allowed_rate is None else seed.allowed_rate
        return min(observed, allowed) if observed else allowed

    def _pending_for(self, seed: SeedView, eligible: list[SeedView]) -> int | None:
        """First pending chunk this seed has not failed; one it failed only if nobody else can take it."""
        fallback = None
        for chunk_id in self.pending:
            state = self.chunks[chunk_id]
            if seed.seed_id not in state.failed_on:
                self.pending.remove(chunk_id)
                return chunk_id
            if fallback is None and all(s.seed_id in state.failed_on for s in eligible):
                fallback = chunk_id
        if fallback is not None:
            self.pending.remove(fallback)
        return fallback

    def _endgame_for(self, seed: SeedView, eligible: list[SeedView], now: float) -> int | None:
        """Duplicate the in-flight chunk whose current seed would land it last, if this seed is much sooner."""
        if not self.config.endgame:
            return None
        rates = {s.seed_id: self._rate(s) for s in eligible}
        my_rate = rates[seed.seed_id]
        if my_rate <= 0:
            return None
        live = self._live_assignments()
        mine_queued = sum(1 for b in live.values() if b.seed_id == seed.seed_id) + 1
        best, best_gain = None, 0.0
        for chunk_id, state in enumerate(self.chunks):
            if state.done or not state.live or len(state.live) >= self.config.max_live_per_chunk:
                continue
            if seed.seed_id in state.failed_on or any(a.seed_id == seed.seed_id for a in state.live.values()):
                continue
            a = next(iter(state.live.values()))
            their_rate = rates.get(a.seed_id, 0.0)
            # Bytes the holder must read before this assignment lands: its own and those queued ahead.
            ahead = sum(b.nbytes for b in live.values() if b.seed_id == a.seed_id and b.assigned_at <= a.assigned_at)
            remaining = (math.inf if their_rate <= 0 else ahead / their_rate) - (now - a.assigned_at)
            mine = mine_queued * state.chunk.nbytes / my_rate
            if mine * self.config.endgame_speedup < remaining and remaining - mine > best_gain:
                best, best_gain = chunk_id, remaining - mine
        return best

    def _assign(self, chunk_ids: list[int], seed: SeedView, now: float) -> Assignment:
        states = [self.chunks[c] for c in chunk_ids]
        self._ids += 1
        client, theirs = self.client_manifest, seed.manifest
        reads = [
            Read(client[tensor].ptr + offset, theirs[tensor].ptr + offset, length)
            for state in states for tensor, offset, length in state.chunk.segments
        ]
        # Ids carry the job id: a report from a lost job's assignment (the client
        # resumed after a scheduler restart) can never match one of this job's.
        a = Assignment(f"{self.job_id}-a{self._ids}", chunk_ids[0], seed.seed_id, seed.session_id, seed.agent_url,
                       sum(state.chunk.nbytes for state in states), max(state.attempts for state in states) + 1,
                       now, reads, chunk_ids=tuple(chunk_ids), incarnation=seed.incarnation)
        for state in states:
            state.live[a.assignment_id] = a
        self.assignments[a.assignment_id] = a
        return a

    # -- results -----------------------------------------------------------
    def apply(self, report: Report, now: float) -> None:
        a = self.assignments.get(report.assignment_id)
        if a is None or self.state != RUNNING:
            return  # unknown or after the end: nothing to learn
        was_live = [c for c in a.chunk_ids if self.chunks[c].live.pop(a.assignment_id, None) is not None]
        if report.ok:
            self._landed(a, report, now)
        elif was_live:
            self._failed(a, was_live, report, now)

    def _landed(self, a: Assignment, report: Report, now: float) -> None:
        self.consecutive_failures[a.seed_id] = 0
        if report.seconds > 0:
            sample = a.nbytes / report.seconds
            prev = self.observed_rate.get(a.seed_id)
            self.observed_rate[a.seed_id] = sample if prev is None else 0.7 * prev + 0.3 * sample
        for chunk_id in a.chunk_ids:
            state = self.chunks[chunk_id]
            if state.done:
                continue  # a duplicate landed second: same bytes, count them once
            state.done = True
            if chunk_id in self.pending:
                self.pending.remove(chunk_id)
            self.bytes_done += state.chunk.nbytes
            self.chunks_done += 1
            self.bytes_by_seed[a.seed_id] = self.bytes_by_seed.get(a.seed_id, 0) + state.chunk.nbytes
            for other_id, other in list(state.live.items()):
                del state.live[other_id]
                if len(other.chunk_ids) == 1:
                    self._cancel.append(other_id)
                # A merged assignment also reading other chunks carries on: its bytes for
                # this chunk are the same, and its other chunks still need them.
        if self.chunks_done == len(self.chunks):
            self.state, self.finished_at = DONE, now

    def _failed(self, a: Assignment, chunk_ids: list[int], report: Report, now: float) -> None:
        failures = self.consecutive_failures.get(a.seed_id, 0)
        # 'seed_lost' means the read never started: the agent saw its seed down (it
        # deregisters it, and the registry drops it) or the client held off a seed
        # whose previous read just failed. Neither is evidence against the seed by
        # itself, so only reads that really failed count toward exclusion.
        really_failed = report.reason != "seed_lost"
        # A failure reported late from an incarnation that has since restarted says
        # nothing about the seed as it is now: the chunk is retried, the seed keeps its slate.
        current = self.incarnation.get(a.seed_id, a.incarnation) == a.incarnation
        if really_failed and current:
            failures += 1
        self.consecutive_failures[a.seed_id] = failures
        self.last_failure[a.seed_id] = f"{report.reason or 'read_failed'}: {report.error or 'no detail'}"
        for chunk_id in reversed(chunk_ids):  # appendleft: keep the chunks' order at the front
            state = self.chunks[chunk_id]
            state.failed_on.add(a.seed_id)
            if really_failed:
                state.attempts += 1  # a read that never started is not an attempt at this chunk
            if not state.done and not state.live:
                self.pending.appendleft(chunk_id)  # retries go first: they gate completion
                self.retried_chunks += 1
            if state.attempts >= self.config.max_attempts_per_chunk:
                self._fail(now, f"chunk {chunk_id} failed {state.attempts} times; last: {report.reason}: {report.error}")
                return
        if failures >= self.config.seed_failure_threshold:
            self.exclude(a.seed_id, f"{report.reason or 'read_failed'}: {report.error or 'no detail'}", now,
                         incarnation=a.incarnation)

    def exclude(self, seed_id: str, reason: str, now: float, incarnation: str | None = None) -> None:
        """Stop using a seed's ``incarnation`` for this job (it failed our reads) and re-queue what it held.

        ``incarnation`` defaults to the latest one this job has seen for the seed.
        """
        if seed_id in self.excluded or self.state != RUNNING:
            return
        self.excluded[seed_id] = reason
        self.excluded_incarnation[seed_id] = self.incarnation.get(seed_id, "") if incarnation is None else incarnation
        self._requeue_live(seed_id)

    def seed_lost(self, seed_id: str, reason: str, now: float) -> None:
        """The seed left the registry (missed heartbeats, deregistered, or re-registered with new memory).

        Its in-flight chunks move elsewhere at once, but it is not excluded: it
        failed none of our reads, and if it comes back (re-registers) its new
        pointers are used for new assignments. The no-seed grace counts from
        this moment, when a seed was last known alive.
        """
        if self.state != RUNNING:
            return
        self.lost[seed_id] = reason
        self.last_seed_seen_at = max(self.last_seed_seen_at, now)
        self._requeue_live(seed_id)

    def _requeue_live(self, seed_id: str) -> None:
        requeue = []
        for chunk_id, state in enumerate(self.chunks):
            for aid, a in list(state.live.items()):
                if a.seed_id == seed_id:
                    del state.live[aid]
                    self._cancel.append(aid)
                    if not state.done and not state.live and chunk_id not in self.pending:
                        requeue.append(chunk_id)
        for chunk_id in reversed(requeue):  # at the front, in order
            self.pending.appendleft(chunk_id)
            self.retried_chunks += 1

    def _fail_if_no_seeds(self, seeds: list[SeedView], now: float) -> None:
        if seeds:  # every live seed is excluded: no point waiting
            self._fail(now, "no eligible seed left: " + self._exclusions())
        elif now - self.last_seed_seen_at > self.config.no_seed_grace_seconds:
            gone = "; ".join(f"{seed} ({why})" for seed, why in sorted(self.lost.items()))
            self._fail(now, f"no live seed for {now - self.last_seed_seen_at:.0f} s"
                       + (f"; lost: {gone}" if gone else "")
                       + (f"; excluded: {self._exclusions()}" if self.excluded else ""))

    def _exclusions(self) -> str:
        return "; ".join(f"{seed} ({why})" for seed, why in sorted(self.excluded.items())) or "none registered"

    def _fail(self, now: float, error: str) -> None:
        self.state, self.error, self.finished_at = FAILED, error, now
        for state in self.chunks:
            self._cancel.extend(state.live)
            state.live.clear()

    def cancel(self, now: float, why: str) -> None:
        self._fail(now, why)

    # -- views -------------------------------------------------------------
    def take_cancellations(self) -> list[str]:
        out, self._cancel = list(dict.fromkeys(self._cancel)), []  # a merged assignment is listed once
        return out

    def _live_assignments(self) -> dict[str, Assignment]:
        return {aid: a for state in self.chunks for aid, a in state.live.items()}

    def live_by_seed(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for a in self._live_assignments().values():
            counts[a.seed_id] = counts.get(a.seed_id, 0) + 1
        return counts

    def progress(self) -> dict:
        return {
            "bytes_done": self.bytes_done, "bytes_total": self.bytes_total,
            "chunks_done": self.chunks_done, "chunks_total": len(self.chunks),
            "retried_chunks": self.retried_chunks,
            # Every seed that failed this job, worst state last: failed a read, left, excluded.
            "failed_seeds": {**self.last_failure, **self.lost, **self.excluded},
            "bytes_by_seed": dict(self.bytes_by_seed), "bytes_resumed": self.bytes_resumed,
        }
