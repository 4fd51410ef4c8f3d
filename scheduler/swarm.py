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

import itertools
import operator
import math
import random
from dataclasses import dataclass, field
from typing import AbstractSet, Collection, Hashable, Iterable, Sequence

from rfork_api.manifest import Manifest, layout_digest
from scheduler.planner import ANY_ELIGIBLE_PEER, PEER, Assignment, ChunkSet, Job, SourceView, bits_of
from throttle.token_bucket import TokenBucket

GroupKey = Hashable


def group_key(identity: Hashable, rank: int, manifest: Manifest, chunk_size: int) -> GroupKey:
    """Jobs with this key read the same bytes under the same chunk ids: they can feed each other.

    The manifest's names, shapes and ORDER count, not its pointers (each client has its own
    memory): chunks are planned in manifest order, so two clients listing the same tensors in
    another order give the same chunk id to different bytes, and a peer would be asked for a
    chunk it has not landed. (``ManifestTable.shapes_digest`` is order-blind: it says whether
    two manifests match, not whether their chunk plans do.) The manifest's ``layout_digest``,
    hashed at C speed once per manifest: a job creation in a 1024-instance scale-out must
    stay cheap.
    """
    return layout_group(identity, rank, layout_digest(manifest), chunk_size)


def layout_group(identity: Hashable, rank: int, layout: str, chunk_size: int) -> GroupKey:
    """``group_key`` of a manifest whose ``layout_digest`` is ``layout``."""
    return identity, rank, chunk_size, layout


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
    _view: SourceView | None = None
    """The view as built last; whatever changes ``outstanding`` (``Swarm.assigned``, ``settled``,
    ``withdraw``) drops it, since its free slots move with it."""

    def view(self, now: float) -> SourceView:
        """This peer as a source now. Built once and reused until its reads outstanding change
        (a capped peer's budget moves with time, so its view is built afresh each time)."""
        if self._view is not None and self.bucket is None:
            return self._view
        offer = self.offer
        assert offer is not None
        self._view = SourceView(
            self.job.peer_id, offer.session_id, "", self.job.client_manifest, offer.rate, kind=PEER,
            holds=self.job.done_chunks, free_slots=max(offer.max_in_flight - len(self.outstanding), 0),
            budget_bytes=None if self.bucket is None else self.bucket.available(now))
        return self._view

    @property
    def serving(self) -> bool:
        return self.offer is not None and not self.withdrawn


class Swarm:
    """Every group of jobs that can feed each other, and the reads between them."""

    def __init__(self, read_deadline_seconds: float = 30.0, burst_seconds: float = 0.5,
                 max_peers_per_decision: int = 16, rng: random.Random | None = None) -> None:
        self.read_deadline_seconds = read_deadline_seconds
        """How long a read from a peer may still be on the wire after its reader went silent."""
        self.burst_seconds = burst_seconds
        self.max_peers_per_decision = max_peers_per_decision
        """Peers offered to one decision: a random sample of the serving ones, as a swarm gives each
        peer a few parents, so a decision costs O(this) however large the group is."""
        self._rng = rng or random.Random(0)
        self._cover_count: dict[GroupKey, list[int]] = {}
        """Per group and chunk: serving peers that hold it or are fetching it."""
        self._uncovered: dict[GroupKey, ChunkSet] = {}
        """Per group: the chunks no serving peer holds or fetches (count 0): what the seeds serve."""
        self._serving: dict[GroupKey, list[str]] = {}
        self._members: dict[str, _Member] = {}
        self._groups: dict[GroupKey, list[str]] = {}
        self._joined: dict[GroupKey, int] = {}
        self._reader_of: dict[str, str] = {}
        """Outstanding assignment id -> the peer (job id) it reads from."""
        self._read_by: dict[str, str] = {}
        """Outstanding assignment id -> the job reading it (kept in step with ``_reader_of``): who may
        settle it after its job is gone (``settle_reads``)."""
        self._readers_outstanding: dict[str, set[str]] = {}
        """Reader job id -> its outstanding assignment ids (reads from peers not reported yet)."""
        self._departed: dict[str, _Member] = {}
        """Peers whose job ended (failed, cancelled, abandoned) with reads from them still outstanding:
        their client may still ask to withdraw, and must wait for those reads before reusing its memory."""

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
        counts = self._cover_count.get(key)
        if counts is None:  # (not setdefault: its default would be built, O(chunks), on every join)
            counts = self._cover_count[key] = [0] * len(job.chunks)
            self._uncovered[key] = ChunkSet(range(len(job.chunks)))
        uncovered = self._uncovered[key]
        if offer is not None:
            self._serving.setdefault(key, []).append(job.job_id)

            def on_cover(chunk_id: int, delta: int) -> None:
                n = counts[chunk_id] = counts[chunk_id] + delta
                if n == 0:
                    uncovered.add(chunk_id)
                elif n == delta:  # 0 -> 1
                    uncovered.discard(chunk_id)

            def on_cover_all(chunk_ids: Sequence[int]) -> None:
                # Each count goes up by one, so each chunk is covered now: none stays uncovered.
                if isinstance(chunk_ids, range):  # a stream's stripe: one slice update, at C speed
                    counts[chunk_ids.start:chunk_ids.stop] = map(
                        operator.add, counts[chunk_ids.start:chunk_ids.stop], itertools.repeat(1))
                    if uncovered.mask & bits_of(chunk_ids):
                        uncovered.discard_all(chunk_ids)
                    return
                for chunk_id in chunk_ids:
                    counts[chunk_id] += 1
                uncovered.discard_all(chunk_ids)

            job.on_cover, job.on_cover_all = on_cover, on_cover_all
            for chunk_id in job.covering_chunks():
                on_cover(chunk_id, +1)

    def _stop_serving(self, member: _Member) -> None:
        """It no longer covers anything for the others."""
        if member.offer is None or member.job.on_cover is None:
            return
        on_cover = member.job.on_cover
        for chunk_id in member.job.covering_chunks():
            on_cover(chunk_id, -1)
        member.job.on_cover = member.job.on_cover_all = None
        serving = self._serving.get(member.key, [])
        if member.job.job_id in serving:
            serving.remove(member.job.job_id)

    def leave(self, job_id: str, now: float) -> list[Job]:
        """The job is gone (deleted, abandoned, failed); returns the jobs that were reading from it.

        Its outstanding reads keep their deadline: a client that left without
        withdrawing may have freed its memory, so those reads fail and are retried.
        """
        member = self._members.pop(job_id, None)
        if member is None:
            return []
        self._stop_serving(member)
        member.withdrawn = True
        if member.outstanding:
            self._departed[job_id] = member  # its reads are still counted until reported or expired
        group = self._groups.get(member.key, [])
        if job_id in group:
            group.remove(job_id)
        if not group:
            for table in (self._groups, self._joined, self._cover_count, self._uncovered, self._serving):
                table.pop(member.key, None)
        self.reader_gone(job_id, now)
        return [self._members[j].job for j in group if j in self._members]

    def is_member(self, job_id: str) -> bool:
        return job_id in self._members

    def serving_offer(self, job_id: str) -> PeerOffer | None:
        """The job's peer offer while it serves (None: not a member, never offered, or withdrawn)."""
        member = self._members.get(job_id)
        return member.offer if member is not None and member.serving else None

    # -- what a job's planner sees ----------------------------------------
    def sources_for(self, job_id: str, now: float, complete_only: bool = False) -> list[SourceView]:
        """Up to ``max_peers_per_decision`` peers ``job_id`` may read from now, sampled at random
        among those serving (``complete_only``: only peers holding every chunk: a cascade)."""
        me = self._members.get(job_id)
        if me is None:
            return []
        serving = self._serving.get(me.key, [])
        limit = self.max_peers_per_decision
        # A fresh random pick every decision: over a few calls a job meets every peer, so a
        # chunk only one peer holds is found (a fixed subset could leave it out forever). The
        # pick is a window of the serving list at a random offset: O(window) list slicing in C,
        # where random.sample costs a random draw per peer.
        want = min(2 * limit, len(serving))
        at = self._rng.randrange(len(serving)) if serving else 0
        pool = serving[at:at + want]
        if len(pool) < want:
            pool += serving[:want - len(pool)]  # wrap around: every peer is as likely to be seen
        out = []
        members = self._members
        for other_id in pool:
            if other_id == job_id:
                continue
            other = members[other_id]
            held = other.job.done_chunks
            if not held or not other.serving:  # holds nothing yet, or not serving
                continue
            if complete_only and len(held) < len(other.job.chunks):
                continue
            out.append(other.view(now))
            if len(out) == limit:
                break
        return out

    def covered_for(self, job_id: str) -> "Covered":
        """What the other serving peers hold or fetch, for ``job_id``'s seeds' rarest-first."""
        me = self._members.get(job_id)
        if me is None:
            return Covered([0], [], exact=False)
        # Counts are O(1) per chunk but blind to which peer covers it; a job that excluded or
        # lost a peer discounts those peers, so a chunk only they cover is not withheld from
        # the seeds. (Seeds it lost do not matter here: they cover nothing.)
        unusable = {sid for sid in (*me.job.excluded, *me.job.lost) if sid.startswith("peer:")}
        bad = [m for j in self._serving.get(me.key, ()) if j != job_id
               and (m := self._members[j]).job.peer_id in unusable] if unusable else []
        return Covered(self._cover_count[me.key], bad, exact=bool(bad), own=me if me.serving else None,
                       uncovered=None if bad else self._uncovered[me.key])

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
            peer._view = None  # one free slot less
            self._reader_of[a.assignment_id] = peer_job_id
            self._read_by[a.assignment_id] = reader_job_id
            self._readers_outstanding.setdefault(reader_job_id, set()).add(a.assignment_id)
            if peer.bucket is not None:
                peer.bucket.reserve(a.nbytes, now, max_wait=math.inf)

    def settled(self, assignment_id: str) -> None:
        """The reader reported this read (landed or failed): it is off the wire."""
        peer_job_id = self._reader_of.pop(assignment_id, None)
        self._read_by.pop(assignment_id, None)
        peer = None if peer_job_id is None else self._members.get(peer_job_id) or self._departed.get(peer_job_id)
        if peer is not None:
            peer.outstanding.pop(assignment_id, None)
            peer._view = None  # a free slot more
            if not peer.outstanding:
                self._departed.pop(peer_job_id, None)

    def settle_reads(self, reader_job_id: str, assignment_ids: Iterable[str]) -> int:
        """``reader_job_id``'s client says these reads of its are off the wire (its job may be gone:
        ``reader_gone`` left them counting until the deadline). Returns how many it settled; ids of
        another reader's reads, or of reads settled already, are ignored."""
        settled = 0
        for assignment_id in assignment_ids:
            if self._read_by.get(assignment_id) == reader_job_id:
                self.settled(assignment_id)
                settled += 1
        return settled

    def reader_gone(self, reader_job_id: str, now: float) -> None:
        """The reader will never report: its reads from peers may still be on the wire until a deadline."""
        for assignment_id in self._readers_outstanding.pop(reader_job_id, set()):
            peer_job_id = self._reader_of.get(assignment_id)
            peer = None if peer_job_id is None else self._members.get(peer_job_id) or self._departed.get(peer_job_id)
            if peer is not None and assignment_id in peer.outstanding:
                peer.outstanding[assignment_id] = min(peer.outstanding[assignment_id],
                                                      now + self.read_deadline_seconds)

    def withdraw(self, job_id: str, now: float) -> int:
        """Stop serving from ``job_id``; returns the reads from it that may still be on the wire."""
        member = self._members.get(job_id) or self._departed.get(job_id)
        if member is None:
            return 0
        if not member.withdrawn:
            member.withdrawn = True
            self._stop_serving(member)
        for assignment_id, deadline in list(member.outstanding.items()):
            if deadline <= now:
                del member.outstanding[assignment_id]
                member._view = None
                self._reader_of.pop(assignment_id, None)
                self._read_by.pop(assignment_id, None)
        if not member.outstanding:
            self._departed.pop(job_id, None)
        return len(member.outstanding)

    # -- views ---------------------------------------------------------------
    def peers_serving(self) -> int:
        """Clients offering their chunks now (whether or not they hold any yet)."""
        return sum(len(ids) for ids in self._serving.values())

    def group_of(self, job_id: str) -> list[Job]:
        me = self._members.get(job_id)
        return [] if me is None else [self._members[j].job for j in self._groups.get(me.key, ())]


class Covered:
    """For a chunk id, whether serving peers hold it or are fetching it (the planner's ``covered``).

    Backed by per-chunk counts the planner keeps current through ``Job.on_cover``:
    O(1) per chunk asked. ``exact``: ``members`` are peers the job must not count
    (it excluded them, or they left it); each is discounted, O(those) per chunk.
    """

    def __init__(self, counts: list[int], members: Collection[_Member], exact: bool,
                 own: _Member | None = None, uncovered: AbstractSet[int] | None = None) -> None:
        self._counts = counts
        self._members = members
        self._exact = exact
        self._own = own
        self.uncovered = uncovered
        """Chunks no serving peer covers (the planner's fast path for seeds); None when exact."""

    def get(self, chunk_id: int, default=None) -> Collection[str] | None:
        n = self._counts[chunk_id]
        if n <= 0:
            return default  # nobody covers it: nothing to discount
        if self._exact:
            for m in self._members:
                if m.job.covers(chunk_id):
                    n -= 1
        if self._own is not None and self._own.job.covers(chunk_id):
            n -= 1  # our own fetch covers nothing for us
        return ANY_ELIGIBLE_PEER if n > 0 else default
