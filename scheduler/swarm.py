"""Peers: clients that fork the same weights serve each other the chunks they have landed.

Pure bookkeeping, no I/O: the service calls it under its lock with ``now``.

- Jobs of the same identity, rank, manifest shape and chunk size form a *group*
  (their chunk ids mean the same bytes). A job whose client offered a peer
  session (``PeerOffer``) is a *peer*: a source for every other member, for the
  chunks it holds (``Job.done_chunks``, which only ever grows while it serves).
- Each member gets a stripe start (``stripe_start``) so concurrent jobs take
  different chunks from the seeds first; ``covered`` tells a job's planner which
  chunks a peer already holds or is fetching, so the seeds serve each chunk of
  a scale-out about once.
- A peer's upload is limited by its offer: reads in flight from it across all
  readers (``max_in_flight``) and bytes/s (a token bucket kept here, because a
  peer has no agent to grant leases).
- Safety: a peer's memory must not change while a read from it may be on the
  wire. Every assignment from a peer is *outstanding* until its reader reports
  it; a reader that went away without reporting holds it until a deadline.
  ``withdraw`` stops new reads from the peer and returns how many are still
  outstanding: the client frees or rewrites its memory only once that is 0.

    >>> swarm = Swarm(read_deadline_seconds=30.0)
    >>> start = stripe_start(num_chunks, swarm.next_index(key))
    >>> job = Job(job_id, manifest, chunks, PlannerConfig(), now=0.0, start=start)
    >>> swarm.join(job, key, PeerOffer("127.0.0.1:15000", rate=None, max_in_flight=8), now=0.0)
    >>> peers = swarm.sources_for(job.job_id, now=0.0)       # SourceViews of the other peers
    >>> covered = swarm.covered_for(job.job_id)               # what they hold or fetch
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Collection, Hashable, Iterable

from rfork_api.manifest import Manifest
from scheduler.planner import PEER, Assignment, Job, SourceView
from throttle.token_bucket import TokenBucket

GroupKey = Hashable


def group_key(identity: Hashable, rank: int, manifest: Manifest, chunk_size: int) -> GroupKey:
    """Jobs with this key read the same bytes under the same chunk ids: they can feed each other.

    The manifest's names and shapes count, not its pointers (each client has its own memory).
    """
    digest = hashlib.sha256()
    for name, spec in manifest.items():
        digest.update(f"{name}\0{spec.numel}\0{spec.element_size}\n".encode())
    return identity, rank, chunk_size, digest.hexdigest()


@dataclass(frozen=True)
class PeerOffer:
    """What a client offers as a source: its TransferEngine session and its upload limits."""

    session_id: str
    rate: float | None = None
    """Upload bytes/s; None = uncapped."""
    max_in_flight: int = 8
    """Reads from it at once, across every reader."""


@dataclass
class _Member:
    job: Job
    key: GroupKey
    offer: PeerOffer | None
    bucket: TokenBucket | None
    withdrawn: bool = False
    outstanding: dict[str, float] = field(default_factory=dict)
    """Assignment id of a read FROM this peer -> its deadline (inf while its reader is alive)."""

    @property
    def serving(self) -> bool:
        return self.offer is not None and not self.withdrawn


class Swarm:
    """Every group of jobs that can feed each other, and the reads between them."""

    def __init__(self, read_deadline_seconds: float = 30.0, burst_seconds: float = 0.5) -> None:
        self.read_deadline_seconds = read_deadline_seconds
        """How long a read from a peer may still be on the wire after its reader went silent."""
        self.burst_seconds = burst_seconds
        self._members: dict[str, _Member] = {}
        self._groups: dict[GroupKey, list[str]] = {}
        self._joined: dict[GroupKey, int] = {}
        self._reader_of: dict[str, str] = {}
        """Outstanding assignment id -> the peer (job id) it reads from."""
        self._readers_outstanding: dict[str, set[str]] = {}
        """Reader job id -> its outstanding assignment ids (reads from peers not reported yet)."""

    # -- membership -------------------------------------------------------
    def next_index(self, key: GroupKey) -> int:
        """The index the next job of this group gets: create its ``Job`` with ``start=stripe_start(n, index)``."""
        return self._joined.get(key, 0)

    def join(self, job: Job, key: GroupKey, offer: PeerOffer | None, now: float) -> None:
        """Add a job to its group (a peer source for the others if ``offer`` is given)."""
        bucket = None
        if offer is not None and offer.rate is not None:
            bucket = TokenBucket(rate=offer.rate, burst=max(offer.rate * self.burst_seconds, 1.0), now=now)
        self._members[job.job_id] = _Member(job, key, offer, bucket)
        self._groups.setdefault(key, []).append(job.job_id)
        self._joined[key] = self._joined.get(key, 0) + 1

    def leave(self, job_id: str, now: float) -> list[Job]:
        """The job is gone (deleted, abandoned, failed); returns the jobs that were reading from it.

        Its outstanding reads keep their deadline: a client that left without
        withdrawing may have freed its memory, so those reads fail and are retried.
        """
        member = self._members.pop(job_id, None)
        if member is None:
            return []
        group = self._groups.get(member.key, [])
        if job_id in group:
            group.remove(job_id)
        if not group:
            self._groups.pop(member.key, None)
            self._joined.pop(member.key, None)
        for assignment_id in member.outstanding:
            self._reader_of.pop(assignment_id, None)
        self.reader_gone(job_id, now)
        return [self._members[j].job for j in group if j in self._members]

    def is_member(self, job_id: str) -> bool:
        return job_id in self._members

    # -- what a job's planner sees ----------------------------------------
    def sources_for(self, job_id: str, now: float) -> list[SourceView]:
        """The peers ``job_id`` may read from now."""
        me = self._members.get(job_id)
        if me is None:
            return []
        out = []
        for other_id in self._groups.get(me.key, ()):
            other = self._members[other_id]
            if other_id == job_id or not other.serving or not other.job.done_chunks:
                continue
            offer = other.offer
            assert offer is not None
            out.append(SourceView(
                other.job.peer_id, offer.session_id, "", other.job.client_manifest, offer.rate, kind=PEER,
                holds=other.job.done_chunks,
                free_slots=max(offer.max_in_flight - len(other.outstanding), 0),
                budget_bytes=None if other.bucket is None else other.bucket.available(now)))
        return out

    def covered_for(self, job_id: str) -> "Covered":
        me = self._members.get(job_id)
        members = [] if me is None else [self._members[j] for j in self._groups.get(me.key, ()) if j != job_id]
        return Covered([m for m in members if m.serving])

    # -- reads between peers ----------------------------------------------
    def assigned(self, assignments: Iterable[Assignment], reader_job_id: str, now: float) -> None:
        """Book reads from peers: outstanding on the peer, charged to its upload bucket."""
        for a in assignments:
            if a.source_kind != PEER:
                continue
            peer_job_id = a.seed_id.removeprefix("peer:")
            peer = self._members.get(peer_job_id)
            if peer is None:
                continue
            peer.outstanding[a.assignment_id] = math.inf
            self._reader_of[a.assignment_id] = peer_job_id
            self._readers_outstanding.setdefault(reader_job_id, set()).add(a.assignment_id)
            if peer.bucket is not None:
                peer.bucket.reserve(a.nbytes, now, max_wait=math.inf)

    def settled(self, assignment_id: str) -> None:
        """The reader reported this read (landed or failed): it is off the wire."""
        peer_job_id = self._reader_of.pop(assignment_id, None)
        if peer_job_id is not None and peer_job_id in self._members:
            self._members[peer_job_id].outstanding.pop(assignment_id, None)

    def reader_gone(self, reader_job_id: str, now: float) -> None:
        """The reader will never report: its reads from peers may still be on the wire until a deadline."""
        for assignment_id in self._readers_outstanding.pop(reader_job_id, set()):
            peer_job_id = self._reader_of.get(assignment_id)
            if peer_job_id is not None and peer_job_id in self._members:
                outstanding = self._members[peer_job_id].outstanding
                if assignment_id in outstanding:
                    outstanding[assignment_id] = now + self.read_deadline_seconds

    def withdraw(self, job_id: str, now: float) -> int:
        """Stop serving from ``job_id``; returns the reads from it that may still be on the wire."""
        member = self._members.get(job_id)
        if member is None:
            return 0
        member.withdrawn = True
        for assignment_id, deadline in list(member.outstanding.items()):
            if deadline <= now:
                del member.outstanding[assignment_id]
                self._reader_of.pop(assignment_id, None)
        return len(member.outstanding)

    # -- views ---------------------------------------------------------------
    def peers_serving(self) -> int:
        return sum(1 for m in self._members.values() if m.serving and m.job.done_chunks)

    def group_of(self, job_id: str) -> list[Job]:
        me = self._members.get(job_id)
        return [] if me is None else [self._members[j].job for j in self._groups.get(me.key, ())]


class Covered:
    """For a chunk id, the peers (source ids) that hold it or are fetching it: read lazily.

    Computed on demand from the other members' chunk states, O(members) per chunk
    the planner asks about, instead of a map kept for every chunk of every group.
    """

    def __init__(self, members: Collection[_Member]) -> None:
        self._members = members

    def get(self, chunk_id: int, default=None) -> list[str] | None:
        out = []
        for m in self._members:
            state = m.job.chunks[chunk_id]
            if state.done or state.live:
                out.append(m.job.peer_id)
        return out or default
