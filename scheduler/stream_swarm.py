"""Streams in the scheduler: which parent each member of a swarm follows for each stripe.

Pure bookkeeping, no I/O: the service calls it under its lock with ``now``, and the
simulator calls the same code (so its CPU accounting is the service's).

A job whose client registered a landed map (rfork_api/landed.py) and offers itself as a
peer *streams*: for each stripe of the chunk plan (contiguous ranges,
:func:`stripe_ranges`), :class:`~scheduler.streams.StripeTrees` gives it a parent, another
member or the seeds. A member parent means a *stream*: the client follows that parent's
landed map and reads the stripe's chunks as they land there, with no scheduler decision
per chunk; the job's planner withholds those chunks (``Job.stream_chunks``). The seeds
as parent mean the planner serves the stripe, per chunk, under the seeds' leases, as for
any job. So the per-chunk decisions of a scale-out are about one model copy (the
stripes' roots), whatever N is, and each member costs one join and a few reports.

Every change of a member's parent in a stripe (a join's placement, an adoption, a
re-parent, an endgame move to a finished member: :meth:`StreamSwarm.report`) ends its
old stream and starts a new one, each under a new ``stream_id``: the client is told to
stop the old one (``take``: ``ended``) and start the new one.

Safety (docs/fleet.md, "Safety"): a reader reads the parent's memory one-sided, so the
parent cannot see it. Every stream counts against its parent as a reader until its
client reports it finished (landed all, stopped, or failed); a reader that goes away
without reporting keeps counting until ``read_deadline_seconds`` after it left. A parent
that withdraws leaves the trees at once (its children are re-parented) and frees its
memory only once ``withdraw`` counts no stream (and no chunk read) from it. Use::

    streams = StreamSwarm(stripes=8, fanout=8)
    streams.join(job, group, LandedMapRef(session, ptr, num_chunks, num_tensors), now)
    started, ended = streams.take(job.job_id)      # StreamAssignments to follow, stream ids to stop
    streams.report(job.job_id, [StreamReport(stream_id, landed=[...], state=DONE)], now)
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Sequence

from rfork_api.landed import LandedMapRef
from rfork_api.models import STREAM_FAILURE_REASONS
from scheduler.planner import DONE as JOB_DONE, Job
from scheduler.streams import SEEDS, StripeTrees

__all__ = ["StreamSwarm", "StreamAssignment", "StreamReport", "stripe_ranges", "paced_report_seconds", "RUNNING",
           "DONE", "ENDED", "FAILED", "STREAM_FAILURES"]

GroupKey = Hashable

RUNNING, DONE, ENDED, FAILED = "running", "done", "ended", "failed"
"""A stream's state in a client's report: still reading; every chunk landed; stopped as told
(``take``'s ``ended``); failed (``reason`` one of :data:`STREAM_FAILURES`)."""
STREAM_FAILURES = STREAM_FAILURE_REASONS

ENDGAME_MIN_LEFT_FRACTION = 1 / 8
"""A stream moves to a finished member (the endgame, :meth:`StreamSwarm.report`) only while at least
this share of its stripe is left to read: less is over before a move pays for its round trip."""


def stripe_ranges(num_chunks: int, stripes: int) -> list[range]:
    """``stripes`` contiguous chunk ranges, as even as they go (fewer when there are fewer chunks).

        >>> stripe_ranges(10, 4)
        [range(0, 3), range(3, 6), range(6, 8), range(8, 10)]
    """
    stripes = max(min(stripes, num_chunks), 1)
    base, extra = divmod(num_chunks, stripes)
    out, start = [], 0
    for s in range(stripes):
        end = start + base + (s < extra)
        out.append(range(start, end))
        start = end
    return out


def paced_report_seconds(streaming_members: float, reports_per_second: float, ceiling_seconds: float) -> float:
    """How often, at most, each streaming member should report what its streams landed, so that
    ``streaming_members`` report about ``reports_per_second`` times a second together.

    A member's report is a ``/work`` call for the process that decides its group, and while its
    streams run nothing else needs one: left at a client's own second, N members cost N calls a
    second whatever the links (a 1024-member scale-out on slow links: ~1,000 calls a second for as
    long as it runs). 0 when no pacing is needed or asked (``reports_per_second`` <= 0): the client
    keeps its own interval, which is also the floor (it waits the longer of the two). Never more than
    ``ceiling_seconds``, which keeps a member well inside the scheduler's client timeout.

        >>> paced_report_seconds(1024, 256, 10.0), paced_report_seconds(100, 256, 10.0)
        (4.0, 0.390625)
        >>> paced_report_seconds(8192, 256, 10.0), paced_report_seconds(8192, 0, 10.0)
        (10.0, 0.0)
    """
    if reports_per_second <= 0 or streaming_members <= 0:
        return 0.0
    return min(streaming_members / reports_per_second, ceiling_seconds)


@dataclass(frozen=True)
class StreamAssignment:
    """Follow ``parent_map`` and read chunks ``[first_chunk, end_chunk)`` as they land there."""

    stream_id: str
    stripe: int
    first_chunk: int
    end_chunk: int
    parent_job_id: str
    parent_map: LandedMapRef
    max_rate: float | None = None
    """Bytes/s to read it at, at most: its share of the parent's upload cap (None: uncapped). The share
    moves as streams from the parent come and go (``take_rates``)."""


@dataclass(frozen=True)
class StreamReport:
    """What a client says about one of its streams (sent with its next ``/work`` call)."""

    stream_id: str
    landed: Sequence[int] = ()
    """Chunk ids this stream landed since its last report (ignored for ``DONE``: all of them)."""
    state: str = RUNNING
    reason: str | None = None
    """For ``FAILED``: one of :data:`STREAM_FAILURES`."""
    error: str | None = None


@dataclass
class _Stream:
    stream_id: str
    reader: str
    """The reading job's id."""
    stripe: int
    parent: str
    chunks: range = range(0)
    deadline: float = math.inf
    """While the reader is alive, inf; once it left without reporting the stream, when a read of
    it can no longer be on the wire."""
    landed: list[int] = field(default_factory=list)
    """Chunks it reported landed so far (marked in the job when it ends: one set operation)."""
    nbytes: int = 0
    rate: float | None = None
    """Its share of the parent's upload cap, as last told."""


@dataclass
class _Member:
    job: Job
    key: GroupKey
    landed_map: LandedMapRef
    ranges: list[range]
    upload_rate: float | None = None
    """Its upload cap (its peer offer's rate; None: uncapped), shared by the streams read from it."""
    streams: dict[int, _Stream] = field(default_factory=dict)
    """Stripe -> the stream this member reads it by now (absent: the seeds serve it, or done)."""
    started: list[StreamAssignment] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    """What the client has not been told yet: streams to start, stream ids to stop."""
    rates: dict[str, float] = field(default_factory=dict)
    """New shares of their parents' caps for running streams, not told yet."""
    readers: dict[str, _Stream] = field(default_factory=dict)
    """Streams that read from this member, not yet reported finished by their readers."""
    reading: dict[str, _Stream] = field(default_factory=dict)
    """Streams this member reads (or was told to stop and has not confirmed), not yet finished."""
    in_trees: bool = True
    finished: bool = False
    """Its job has every chunk (it serves on): a parent for the endgame's moves."""


class StreamSwarm:
    """The stripe trees of every group of streaming jobs, and the streams between them."""

    def __init__(self, stripes: int = 8, fanout: int = 8, candidates: int = 16,
                 read_deadline_seconds: float = 30.0, rng: random.Random | None = None,
                 min_members: int = 1) -> None:
        if stripes < 1 or fanout < 1 or min_members < 1:
            raise ValueError(f"stream stripes, fanout and min_members must be >= 1, got {stripes}, {fanout} and "
                             f"{min_members}")
        self.stripes, self.fanout, self.candidates = stripes, fanout, candidates
        self.min_members = min_members
        """A group streams once this many members have registered maps: a few instances feed each other
        as well per chunk (the scheduler's cost does not matter there, and every upload is used at once),
        and members join the trees in the order they came."""
        self._waiting: dict[GroupKey, dict[str, tuple[Job, LandedMapRef, float | None]]] = {}
        self.read_deadline_seconds = read_deadline_seconds
        self._rng = rng or random.Random(0)
        self._trees: dict[GroupKey, StripeTrees] = {}
        self._members: dict[str, _Member] = {}
        self._group_size: dict[GroupKey, int] = {}
        self._gone: dict[str, _Member] = {}
        """Members that left with streams still reading from them (counted until reported or expired)."""
        self._by_id: dict[str, _Stream] = {}
        """Every stream some parent still counts, by id."""
        self._ids = 0
        self._lost: list[str] = []
        self._finished: dict[GroupKey, deque[str]] = {}
        """Per group, its members that have every chunk, in the order they finished (the endgame's parents;
        those gone or withdrawn are dropped when met)."""
        self.decisions = 0
        """Parent choices made (joins' placements, re-parents, endgame moves): the scheduler's per-member work."""
        self.endgame_moves = 0
        """Streams moved to a finished member's idle upload (:meth:`report`)."""

    # -- membership -------------------------------------------------------
    def is_member(self, job_id: str) -> bool:
        return job_id in self._members

    def join(self, job: Job, key: GroupKey, landed_map: LandedMapRef, now: float,
             upload_rate: float | None = None) -> None:
        """Add a streaming job to its group's trees (or, while the group has fewer than ``min_members``,
        to those waiting to join them); its streams wait in ``take``."""
        if landed_map.num_chunks != len(job.chunks):
            raise ValueError(f"the landed map has {landed_map.num_chunks} chunks, the job {len(job.chunks)}: "
                             "it is not of this job's chunk plan")
        waiting = self._waiting.setdefault(key, {})
        if job.job_id in self._members or job.job_id in waiting:
            return  # already joined (a repeated registration of the same map)
        waiting[job.job_id] = (job, landed_map, upload_rate)
        if key not in self._trees and len(waiting) < self.min_members:
            return
        del self._waiting[key]
        for waited, ref, rate in waiting.values():
            self._join_trees(waited, key, ref, now, rate)

    def _join_trees(self, job: Job, key: GroupKey, landed_map: LandedMapRef, now: float,
                    upload_rate: float | None) -> None:
        ranges = stripe_ranges(len(job.chunks), self.stripes)
        trees = self._trees.get(key)
        if trees is None:
            trees = self._trees[key] = StripeTrees(len(ranges), self.fanout, self.candidates, self._rng,
                                                   stripe_chunks=[len(r) for r in ranges])
        self._members[job.job_id] = _Member(job, key, landed_map, ranges, upload_rate)
        self._group_size[key] = self._group_size.get(key, 0) + 1
        self.decisions += 1
        withheld: dict[str, list[range]] = {}
        for moved, stripe, parent in trees.join(job.job_id):
            self._apply(self._members[moved], stripe, parent, now, withheld)
        for moved, ranges in withheld.items():  # one set operation per member, not one per stripe
            self._members[moved].job.stream_chunks(ranges)

    def leave(self, job_id: str, now: float) -> None:
        """The job is gone (finished serving, failed, abandoned): its children read elsewhere, and its
        own streams count against their parents until the read deadline (it may not have stopped them)."""
        member = self._members.pop(job_id, None)
        if member is None:
            self._stop_waiting(job_id)
            return
        if member.in_trees:
            self._leave_trees(member, now)
        for stream in member.reading.values():
            stream.deadline = min(stream.deadline, now + self.read_deadline_seconds)
        member.streams.clear()
        member.started.clear()
        member.ended.clear()
        if member.readers:
            self._gone[job_id] = member
        left = self._group_size[member.key] = self._group_size[member.key] - 1
        if not left:
            del self._group_size[member.key]
            self._trees.pop(member.key, None)
            self._finished.pop(member.key, None)

    def settle(self, reader_job_id: str, stream_ids: Iterable[str]) -> int:
        """``reader_job_id``'s client says these streams of its stopped (its job may be gone: ``leave``
        left them counting on their parents until the deadline). Returns how many it settled; another
        reader's streams, or streams settled already, are ignored."""
        settled = 0
        for stream_id in stream_ids:
            stream = self._by_id.get(stream_id)
            if stream is not None and stream.reader == reader_job_id:
                self._finish(stream_id)
                settled += 1
        return settled

    def withdraw(self, job_id: str, now: float) -> int:
        """The member stops serving: no new stream from it; returns its streams not yet reported ended."""
        member = self._members.get(job_id) or self._gone.get(job_id)
        if member is None:
            self._stop_waiting(job_id)  # nobody streams from a member still waiting
            return 0
        if member.in_trees:
            self._leave_trees(member, now)
        return self.readers_of(job_id, now)

    def _stop_waiting(self, job_id: str) -> None:
        for key, waiting in list(self._waiting.items()):
            if waiting.pop(job_id, None) is not None and not waiting:
                del self._waiting[key]

    def readers_of(self, job_id: str, now: float) -> int:
        """Streams from this member that may still be reading its memory."""
        member = self._members.get(job_id) or self._gone.get(job_id)
        if member is None:
            return 0
        for stream_id in [s for s, stream in member.readers.items() if stream.deadline <= now]:
            self._finish(stream_id)
        if not member.readers:
            self._gone.pop(job_id, None)
        return len(member.readers)

    def streaming_members(self) -> float:
        """About how many members read by streams now: the streams their parents count, over the
        stripes (a loading member reads each stripe by one stream, unless the seeds serve it). O(1)."""
        return len(self._by_id) / self.stripes

    # -- the client's side ------------------------------------------------
    def take(self, job_id: str) -> tuple[list[StreamAssignment], list[str]]:
        """Streams the client should start and the stream ids it should stop, each told once."""
        member = self._members.get(job_id)
        if member is None:
            return [], []
        if not member.finished and member.job.state == JOB_DONE:
            self._note_finished(member)  # (its last chunk may have come from the seeds, not a stream)
        if not (member.started or member.ended):
            return [], []
        started, ended = member.started, member.ended
        member.started, member.ended = [], []
        return started, ended

    def take_rates(self, job_id: str) -> dict[str, float]:
        """New rates (bytes/s) for the job's running streams, each told once."""
        member = self._members.get(job_id)
        if member is None or not member.rates:
            return {}
        rates, member.rates = member.rates, {}
        return rates

    def take_lost(self) -> list[str]:
        """Members whose followers' reads failed since the last call (taken out of the trees): the
        caller stops offering them as peers for single chunks too (scheduler/swarm.py ``withdraw``),
        or readers would wait on what a dead member covered until its client times out."""
        lost, self._lost = self._lost, []
        return lost

    def report(self, job_id: str, reports: Iterable[StreamReport], now: float) -> None:
        """Apply a client's stream reports: chunks landed, streams finished or failed."""
        member = self._members.get(job_id)
        for r in reports:
            stream = self._by_id.get(r.stream_id)
            if stream is None or stream.reader != job_id:
                continue  # finished already, or not this job's: nothing to learn
            job = None if member is None else member.job
            # Done means every chunk of it landed: the ids (clients leave them out) add nothing the
            # stream's range does not say, and a whole stripe's worth would be walked for nothing.
            if r.landed and job is not None and r.state != DONE:
                ids = r.landed
                first, end = stream.chunks.start, stream.chunks.stop
                if min(ids) < first or max(ids) >= end:
                    ids = [c for c in ids if first <= c < end]  # not its chunks: ignored
                nbytes = job.chunk_bytes(ids)
                stream.landed.extend(ids)
                stream.nbytes += nbytes
                job.stream_progress(nbytes, len(ids))
            if r.state == RUNNING:
                continue
            self._finish(r.stream_id)
            if job is None:
                continue
            job.stream_progress(-stream.nbytes, -len(stream.landed))
            source = f"peer:{stream.parent}"
            # Done: every chunk of it is here (some may have come another way first).
            job.landed_by_stream(stream.chunks if r.state == DONE else stream.landed, source, now)
            if member.streams.get(stream.stripe) is not stream:
                continue  # an old stream (already replaced): only its count goes
            del member.streams[stream.stripe]
            if r.state == FAILED:
                self._failed(member, stream, r, now)
            elif r.state in (DONE, ENDED) and member.job.done_in(member.ranges[stream.stripe]) < len(
                    member.ranges[stream.stripe]):
                # Stopped short (a stop we did not ask for): the seeds serve the rest.
                member.job.unstream_chunks([member.ranges[stream.stripe]], now)
        if member is None or not member.in_trees:
            return
        if member.job.state == JOB_DONE:
            if not member.finished:
                self._note_finished(member)
        elif self._finished.get(member.key):
            self._endgame(member, now)

    def _note_finished(self, member: _Member) -> None:
        member.finished = True
        if member.in_trees:
            self._finished.setdefault(member.key, deque()).append(member.job.job_id)

    def _endgame(self, member: _Member, now: float) -> None:
        """Move this member's slow streams to members that have finished and have upload to spare.

        Late in a scale-out most members have every chunk and their uploads fall idle as their
        readers finish, while a subtree that lost its relay early (a member killed) still reads a
        stripe from scratch at a share of some member's upload, a chain behind: in the fault
        simulation's worst draw those members finished 0.3 s after the rest (docs/benchmarks.md).
        A finished member feeds a stream from its whole stripe at once, so each of this member's
        streams with at least ``ENDGAME_MIN_LEFT_FRACTION`` of its stripe left moves, with its
        subtree, to the finished member whose upload the fewest streams share, if the stream's
        share grows there (or stays the same but no longer trails a parent that is still loading).
        Decided at the member's own call, on the progress it just reported: O(stripes x candidates).
        """
        trees = self._trees.get(member.key)
        if trees is None:
            return
        job_id = member.job.job_id
        for stripe, stream in list(member.streams.items()):
            chunks = member.ranges[stripe]
            left = len(chunks) - member.job.done_in(chunks) - len(stream.landed)
            if left < len(chunks) * ENDGAME_MIN_LEFT_FRACTION:
                continue
            parent = self._members.get(stream.parent)
            if parent is None or not parent.in_trees:
                continue  # its parent is leaving: the re-parent decides (its reads will fail)
            target = self._idle_finished(member.key, job_id, stripe, trees)
            if target is None:
                continue  # none with upload to spare (that is not fed by this member in this stripe)
            shared_now, shared_there = len(parent.readers), len(target.readers) + 1
            if shared_there < shared_now or (shared_there == shared_now and not parent.finished):
                trees.move(job_id, stripe, target.job.job_id)
                self.decisions += 1
                self.endgame_moves += 1
                self._apply(member, stripe, target.job.job_id, now)

    def _idle_finished(self, key: GroupKey, reader: str, stripe: int, trees: StripeTrees) -> _Member | None:
        """Of the group's next ``4 x candidates`` finished members still serving (in turn: those looked at
        go to the back, so busy ones do not hide idle ones behind them for long), the one whose upload the
        fewest streams share (fewer than ``fanout``), not ``reader`` nor fed by it in ``stripe``."""
        finished = self._finished[key]
        best, looked = None, []
        while finished and len(looked) < 4 * self.candidates:
            job_id = finished.popleft()
            member = self._members.get(job_id)
            if member is None or not member.in_trees:
                continue  # gone or withdrawn: it serves nobody (dropped)
            looked.append(job_id)
            if job_id != reader and len(member.readers) < self.fanout and (
                    best is None or len(member.readers) < len(best.readers)) and not trees.is_below(
                    job_id, reader, stripe):
                best = member
                if not member.readers:
                    break
        finished.extend(looked)
        return best

    # -- internals ----------------------------------------------------------
    def _failed(self, member: _Member, stream: _Stream, report: StreamReport, now: float) -> None:
        parent = self._members.get(stream.parent)
        trees = self._trees[member.key]
        if report.reason in ("parent_lost", "not_the_same_plan") and parent is not None and parent.in_trees:
            # Reads from it fail (or it is not what it claims): it relays no more; all its
            # children move (this member among them). It may still be loading: its own streams go on.
            self._leave_trees(parent, now)
            self._lost.append(stream.parent)
            if trees.parent(member.job.job_id, stream.stripe) != stream.parent:
                return
        self._reparent(member, stream.stripe, now)

    def _leave_trees(self, member: _Member, now: float) -> None:
        member.in_trees = False
        trees = self._trees.get(member.key)
        if trees is None:
            return
        for child, stripe in trees.leave(member.job.job_id):
            orphan = self._members.get(child)
            if orphan is not None:
                self._reparent(orphan, stripe, now)

    def _reparent(self, member: _Member, stripe: int, now: float) -> None:
        trees = self._trees[member.key]
        members = self._members

        def progress(job_id: str, s: int) -> int:
            m = members.get(job_id)
            if m is None:
                return -1
            running = m.streams.get(s)
            return m.job.done_in(m.ranges[s]) + (len(running.landed) if running is not None else 0)

        self.decisions += 1

        def upload_load(job_id: str) -> int:
            m = members.get(job_id)
            return len(m.readers) if m is not None else 0

        _, _, parent = trees.reparent(member.job.job_id, stripe, progress, upload_load)
        self._apply(member, stripe, parent, now)

    def _apply(self, member: _Member, stripe: int, parent: str | None, now: float,
               withheld: dict[str, list[range]] | None = None) -> None:
        """``member`` reads ``stripe`` from ``parent`` now (``SEEDS``: its planner, from the seeds).
        With ``withheld``, the chunks a new stream brings are collected there for the caller to
        withhold from the planner at once."""
        chunks = member.ranges[stripe]
        old = member.streams.pop(stripe, None)
        if old is not None:
            if old.parent == parent:
                member.streams[stripe] = old  # the same parent: the stream goes on
                return
            untold = [a for a in member.started if a.stream_id == old.stream_id]
            if untold:  # the client never heard of it: nothing to stop
                member.started.remove(untold[0])
                self._finish(old.stream_id)
            else:  # told to stop, the client confirms it; only then does the parent stop counting it
                member.ended.append(old.stream_id)
        job = member.job
        if parent is SEEDS or job.done_in(chunks) == len(chunks) or job.state != "running":
            job.unstream_chunks([chunks], now)
            return
        parent_member = self._members[parent]
        self._ids += 1
        stream = _Stream(f"{member.job.job_id}.s{stripe}.{self._ids}", member.job.job_id, stripe, parent, chunks)
        member.streams[stripe] = stream
        member.reading[stream.stream_id] = stream
        parent_member.readers[stream.stream_id] = stream
        self._by_id[stream.stream_id] = stream
        if withheld is None:
            job.stream_chunks([chunks])
        else:
            withheld.setdefault(job.job_id, []).append(chunks)
        member.started.append(StreamAssignment(stream.stream_id, stripe, chunks.start, chunks.stop, parent,
                                               parent_member.landed_map))
        self._share_upload(parent_member)

    def _share_upload(self, parent: _Member) -> None:
        """Split a capped member's upload evenly over the streams that read from it now. It cannot pace
        reads it does not see: each reader paces itself to its share, told with its stream or, for a
        running one, with its client's next /work reply (until then the old shares hold)."""
        if parent.upload_rate is None or not parent.readers:
            return
        share = parent.upload_rate / len(parent.readers)
        for stream in parent.readers.values():
            if stream.rate == share:
                continue
            stream.rate = share
            reader = self._members.get(stream.reader)
            if reader is None:
                continue
            for k, a in enumerate(reader.started):
                if a.stream_id == stream.stream_id:  # not told yet: it starts at its share
                    reader.started[k] = dataclasses.replace(a, max_rate=share)
                    break
            else:
                reader.rates[stream.stream_id] = share

    def _finish(self, stream_id: str) -> None:
        """The stream reads no more: its parent stops counting it."""
        stream = self._by_id.pop(stream_id, None)
        if stream is None:
            return
        reader = self._members.get(stream.reader) or self._gone.get(stream.reader)
        if reader is not None:
            reader.reading.pop(stream_id, None)
        parent = self._members.get(stream.parent) or self._gone.get(stream.parent)
        if parent is not None:
            parent.readers.pop(stream_id, None)
            if not parent.readers and stream.parent in self._gone:
                del self._gone[stream.parent]
            elif parent.in_trees:
                self._share_upload(parent)  # the others' shares grow
