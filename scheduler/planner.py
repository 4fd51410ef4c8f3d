"""The fork planner: which source reads which chunk, now. Pure: no I/O, no clock.

A ``Job`` is a state machine over chunks (pending -> live -> done). The service
calls ``next_assignments(sources, now, n)`` when a client asks for work and
``apply(report, now)`` for each finished read; everything the client needs
(reads with resolved pointers, cancellations, progress) comes back from those.

A source is a serving *seed* (behind its agent's leases and QoS throttle) or a
*peer*: another client forking the same identity, rank and manifest, which
serves the chunks it has landed (``holds``). One step decides source and chunk
for both: peers first (they serve no traffic), then seeds for chunks no
eligible peer holds or is fetching (``covered``), so the seeds carry about one
model copy however many clients fork at once, and each job walks its chunks
from its own ``start`` offset so concurrent jobs fetch different chunks from
the seeds and then feed each other.

    >>> job = Job("j1", client_manifest, plan_chunks(client_manifest, 64 << 20), PlannerConfig(), now=0.0)
    >>> batch = job.next_assignments([SourceView("seed-0", "127.0.0.1:1", "http://a", seed_manifest, 1e8)], 0.0, 8)
    >>> job.apply(Report(batch[0].assignment_id, ok=True), now=1.0)
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import AbstractSet, Callable, Collection, Iterable, Iterator, Literal, Protocol, Sequence

from scheduler.chunking import Chunk, PointerTable, Read, ReadIndex, chunk_reads, read_index
from rfork_api.manifest import Manifest


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
    merge_seconds: float = 0.0
    """Size merged assignments by link time as well: up to what the source delivered to this
    job per read (its observed rate; a peer not read from yet: the best rate this job has
    seen) in this many seconds, when that is more than ``max_assignment_bytes``, capped at
    ``max_merged_bytes``. At 50 GB/s a 64 MiB chunk is 1.3 ms on the wire, so one decision
    per few chunks is a scheduler core per ~100 instances; a decision per ~0.1 s of link
    time is ~100x fewer. The share-of-pending cap still shrinks merges near the end. A
    job's first reads (nothing observed yet) stay at ``max_assignment_bytes``, so a swarm's
    first chunks land, and become servable by peers, early. 0: bytes cap only."""
    max_merged_bytes: int = 16 << 30
    """The largest assignment ``merge_seconds`` may size (a read's timeout grows with its bytes)."""


SEED, PEER = "seed", "peer"


class Coverage(Protocol):
    """Chunk id -> the peers (source ids) that hold it or are fetching it; a dict works.

    ``ANY_ELIGIBLE_PEER`` means "a peer this job may read from covers it" when the
    caller knows that without naming the peer (a count over peers this job has not
    excluded), even if none of them is among this decision's sources yet.

    A caller that also keeps the set of chunk ids NO eligible peer covers may offer
    it as an ``uncovered`` attribute (a swarm does); the seeds then find their next
    chunk by a set intersection instead of walking the job's queue past covered ones.
    """

    def get(self, chunk_id: int, default: None = None) -> Collection[str] | None: ...


class _AnyEligiblePeer(frozenset):
    def __repr__(self) -> str:
        return "ANY_ELIGIBLE_PEER"


ANY_ELIGIBLE_PEER: Collection[str] = _AnyEligiblePeer()


@dataclass(frozen=True)
class SourceView:
    """What the planner needs to know about one source of a rank right now: a seed or a peer."""

    source_id: str
    session_id: str
    agent_url: str
    """The seed's agent (leases); empty for a peer, whose budget the scheduler keeps."""
    manifest: Manifest
    allowed_rate: float | None
    """Bytes/s the source lets through now; None = uncapped, 0 = paused."""
    kind: Literal["seed", "peer"] = SEED
    holds: AbstractSet[int] | None = None
    """Chunk ids the source can serve; None = every chunk (a seed)."""
    free_slots: int | None = None
    """Reads it may still take on across ALL jobs (a peer's in-flight limit); None = no such limit."""
    budget_bytes: float | None = None
    """A peer's upload bucket balance: while positive it may be given a read (which books its
    full size, possibly into debt, so the long-run rate is exact); None = no such limit."""

    def can_serve(self, chunk_id: int) -> bool:
        return self.holds is None or chunk_id in self.holds
    incarnation: str = ""
    """Which life of this source (a seed's agent process and TransferEngine session) the view
    describes. It changes when the agent or the seed restarts and registers again; an exclusion
    holds for the incarnation that failed, so a restarted seed is eligible again."""


@dataclass
class Assignment:
    assignment_id: str
    chunk_id: int
    seed_id: str
    """The source read from: a seed's id, or a peer's (``peer:<job id>``)."""
    session_id: str
    agent_url: str
    nbytes: int
    attempt: int
    assigned_at: float
    reads: list[Read]
    """The copies to make; emptied once the assignment is reported (``Job.apply``)."""
    grant: str = ""
    chunk_ids: tuple[int, ...] = ()
    """Every chunk this assignment reads (``chunk_id`` is the first)."""
    source_kind: str = SEED
    incarnation: str = ""
    """The source's incarnation when this was handed out (``SourceView.incarnation``)."""


@dataclass(frozen=True)
class Report:
    assignment_id: str
    ok: bool
    reason: str | None = None
    error: str | None = None
    seconds: float = 0.0


_NO_FAILURES: frozenset[str] = frozenset()


class _ChunkState:
    """One chunk of one job, read from the job's tables when asked for (``Job.chunks[c]``).

    A job keeps no object per chunk: a 1024-instance scale-out of a 1,348-chunk rank would
    hold 1.4 million, and every full pass of Python's garbage collector walks them all (about a
    quarter of the scheduler's CPU there). Only ``done`` may be set through this view."""

    __slots__ = ("_job", "chunk_id")

    def __init__(self, job: "Job", chunk_id: int) -> None:
        self._job, self.chunk_id = job, chunk_id

    @property
    def chunk(self) -> Chunk:
        return self._job._plan[self.chunk_id]

    @property
    def done(self) -> bool:
        return self.chunk_id in self._job.done_chunks

    @done.setter
    def done(self, value: bool) -> None:
        if value:
            self._job.done_chunks.add(self.chunk_id)
        else:
            self._job.done_chunks.discard(self.chunk_id)

    @property
    def live(self) -> dict[str, Assignment]:
        """Its assignments in flight (a copy)."""
        return dict(self._job._holders(self.chunk_id))

    @property
    def failed_on(self) -> AbstractSet[str]:
        """Sources whose read of it failed."""
        return frozenset(self._job._failed_on.get(self.chunk_id, ()))

    @property
    def attempts(self) -> int:
        return self._job._attempts.get(self.chunk_id, 0)


class _ChunkStates(Sequence[_ChunkState]):
    """``Job.chunks``: each chunk's state, built on demand (see ``_ChunkState``)."""

    __slots__ = ("_job",)

    def __init__(self, job: "Job") -> None:
        self._job = job

    def __len__(self) -> int:
        return len(self._job._plan)

    def __getitem__(self, chunk_id):  # type: ignore[override]
        if isinstance(chunk_id, slice):
            return [_ChunkState(self._job, c) for c in range(len(self._job._plan))[chunk_id]]
        if chunk_id < 0:
            chunk_id += len(self._job._plan)
        if not 0 <= chunk_id < len(self._job._plan):
            raise IndexError(f"chunk {chunk_id} out of range")
        return _ChunkState(self._job, chunk_id)


RUNNING, DONE, FAILED = "running", "done", "failed"

SEED_SCAN_WINDOW = 512
"""Pending chunks a seed looks through for one no peer covers, per assignment, when the caller
offers no ``uncovered`` set: bounds the work per decision (thousands of chunks per rank) while
striping keeps concurrent jobs apart."""

FRONT_WINDOW = 4
"""Pending chunks at the queue's front (retries, then this job's stripe) a source is matched
against one by one; past them a source's chunk is found by set intersection, in C."""


def bits_of(chunk_ids: Iterable[int]) -> int:
    """The bitmask of these chunk ids (distinct). A contiguous run (a stripe, a range) costs O(1).

        >>> bits_of([3, 4, 5]) == bits_of(range(3, 6)) == 0b111000
        True
    """
    if isinstance(chunk_ids, range) and chunk_ids.step == 1:
        return ((1 << len(chunk_ids)) - 1) << chunk_ids.start if len(chunk_ids) else 0
    if isinstance(chunk_ids, (set, frozenset, list, tuple)) and len(chunk_ids) > 8:
        low, high = min(chunk_ids), max(chunk_ids)
        if high - low + 1 == len(chunk_ids):
            return ((1 << len(chunk_ids)) - 1) << low
    mask = 0
    for chunk_id in chunk_ids:
        mask |= 1 << chunk_id
    return mask


class ChunkSet(set):
    """A set of chunk ids that also keeps them as one integer bitmask (bit ``c`` = chunk ``c``).

    A job's landed chunks (what it serves as a peer), the chunks a swarm's peers leave to the
    seeds, the chunks a source failed: the planner intersects these with what a job has
    pending on every decision, and an AND of two ~1,400-bit integers costs about a hundred
    nanoseconds where a set intersection walks hundreds of entries. Every mutation keeps
    ``mask`` current, so it stays a drop-in ``set`` for every other use.
    """

    __slots__ = ("mask",)

    def __init__(self, chunk_ids: Iterable[int] = ()) -> None:
        super().__init__(chunk_ids)
        self.mask = bits_of(chunk_ids) if isinstance(chunk_ids, range) else bits_of(self)

    def _remask(self) -> None:
        self.mask = bits_of(self)

    def add(self, chunk_id: int) -> None:
        if chunk_id not in self:
            set.add(self, chunk_id)
            self.mask |= 1 << chunk_id

    def add_new(self, chunk_ids: Collection[int], mask: int | None = None) -> None:
        """Add chunk ids none of which is in the set yet (an assignment's landed chunks): one
        update of the set and of the mask (``bits_of(chunk_ids)``, if the caller has it) for all."""
        set.update(self, chunk_ids)
        self.mask |= bits_of(chunk_ids) if mask is None else mask

    def discard_all(self, chunk_ids: Collection[int]) -> None:
        """``discard`` each of these chunk ids (what a new assignment covers), in one call."""
        set.difference_update(self, chunk_ids)
        self.mask &= ~bits_of(chunk_ids)

    def discard(self, chunk_id: int) -> None:
        if chunk_id in self:
            set.discard(self, chunk_id)
            self.mask &= ~(1 << chunk_id)

    def remove(self, chunk_id: int) -> None:
        set.remove(self, chunk_id)
        self.mask &= ~(1 << chunk_id)

    def pop(self) -> int:
        chunk_id = set.pop(self)
        self.mask &= ~(1 << chunk_id)
        return chunk_id

    def clear(self) -> None:
        set.clear(self)
        self.mask = 0

    def _updated(name: str):  # the rarely used in-place operations: recompute the mask after them
        base = getattr(set, name)

        def method(self, *others):
            result = base(self, *others)
            if result is not NotImplemented:
                self._remask()
            return result
        method.__name__ = name
        return method

    update = _updated("update")
    difference_update = _updated("difference_update")
    intersection_update = _updated("intersection_update")
    symmetric_difference_update = _updated("symmetric_difference_update")
    __ior__ = _updated("__ior__")
    __iand__ = _updated("__iand__")
    __isub__ = _updated("__isub__")
    __ixor__ = _updated("__ixor__")
    del _updated


def lowest_chunks(mask: int) -> Iterator[int]:
    """The chunk ids in ``mask``, lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class PendingQueue:
    """Chunk ids waiting for a source, in order: O(1) membership and removal, retries at the front.

    Removal marks an entry stale instead of searching the deque; stale entries are
    dropped as iteration meets them at the front, and the deque is rebuilt when
    they outnumber the live ones. So handing out a chunk costs O(1) amortised,
    not O(pending) (a rank of a large model has tens of thousands of chunks).
    """

    def __init__(self, chunk_ids: Collection[int] = (), sizes: list[int] | None = None,
                 mask: int | None = None, nbytes: int | None = None) -> None:
        ids = list(chunk_ids)
        tokens = range(1, len(ids) + 1)
        self._entries: deque[tuple[int, int]] = deque(zip(ids, tokens))
        self._token: dict[int, int] = dict(zip(ids, tokens))
        self._next = len(ids)
        self._in_token_order = True
        """Whether the entries are in the order of ``_token`` (only ``appendleft`` and re-adding a
        chunk still queued break it): then the live entries are ``_token.items()`` as they are."""
        self._sizes = sizes
        if nbytes is None:
            nbytes = sum([sizes[c] for c in self._token]) if sizes is not None else 0
        self.nbytes = nbytes
        """Bytes pending, when built with ``sizes`` (chunk id -> bytes): a merge's share in O(1).
        A caller that knows it (every chunk pending) passes it in, with ``mask``."""
        self.mask = bits_of(self._token) if mask is None else mask
        """The pending ids as a bitmask (see ``ChunkSet``); a caller that knows it passes it in."""

    def ids(self) -> AbstractSet[int]:
        """The pending chunk ids as a set view (for intersections; do not mutate the queue meanwhile)."""
        return self._token.keys()

    def __len__(self) -> int:
        return len(self._token)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._token

    def __bool__(self) -> bool:
        return bool(self._token)

    def __iter__(self) -> Iterator[int]:
        # Iterates the deque itself (no copy: O(1) to find the first live entry). Callers
        # may remove() while iterating (it only marks), but stop iterating before append*.
        self._drop_stale_front()
        token = self._token
        for c, t in self._entries:
            if token.get(c) == t:
                yield c

    def _new_token(self, chunk_id: int) -> int:
        self.mask |= 1 << chunk_id
        self._next += 1
        self._token[chunk_id] = self._next
        return self._next

    def _count_in(self, chunk_id: int) -> None:
        if self._sizes is not None and chunk_id not in self._token:
            self.nbytes += self._sizes[chunk_id]

    def append(self, chunk_id: int) -> None:
        if chunk_id in self._token:
            self._in_token_order = False
        self._count_in(chunk_id)
        self._entries.append((chunk_id, self._new_token(chunk_id)))

    def appendleft(self, chunk_id: int) -> None:
        self._in_token_order = False
        self._count_in(chunk_id)
        self._entries.appendleft((chunk_id, self._new_token(chunk_id)))

    def remove(self, chunk_id: int) -> None:
        del self._token[chunk_id]
        self.mask &= ~(1 << chunk_id)
        if self._sizes is not None:
            self.nbytes -= self._sizes[chunk_id]
        if len(self._entries) > 2 * len(self._token) + 64:
            self._compact()

    def discard(self, chunk_id: int) -> None:
        if chunk_id in self._token:
            self.remove(chunk_id)

    def remove_all(self, chunk_ids: Collection[int], mask: int | None = None) -> None:
        """``remove`` each of these (all pending, distinct), at once, at C speed (a stream withholds a
        stripe of a fresh job). ``mask``: their ``bits_of``, if the caller has it."""
        token = self._token
        if self._in_token_order and 2 * len(chunk_ids) > len(token):
            # Most of the queue goes (a stream takes all but the seeds' stripe): rebuild from the few
            # kept, in their (token) order, instead of popping the many.
            self._keep_only(token.keys() - set(chunk_ids))
        else:
            deque(map(token.pop, chunk_ids), maxlen=0)
            if len(self._entries) > 2 * len(token) + 64:
                if self._in_token_order:  # the live entries, in order, at C speed; the stale ones freed now
                    self._entries = deque(token.items())
                else:
                    self._compact()
        self.mask &= ~(bits_of(chunk_ids) if mask is None else mask)
        if self._sizes is not None:
            self.nbytes -= sum(map(self._sizes.__getitem__, chunk_ids))

    def remove_ranges(self, ranges: Sequence[range], outside: Sequence[range]) -> None:
        """Remove every queued chunk of ``ranges`` (``outside``: the plan's other chunks). When most of
        the queue goes, it is rebuilt from what is queued ``outside``, in order: the Python work is
        for the chunks kept, not those removed."""
        token = self._token
        gone = 0
        for r in ranges:
            gone |= bits_of(r)
        gone &= self.mask
        if not gone:
            return
        if self._in_token_order and 2 * gone.bit_count() > len(token):
            kept = self._keep_only(filter(token.__contains__, itertools.chain.from_iterable(outside)))
            self.mask &= ~gone
            if self._sizes is not None:
                self.nbytes = sum(map(self._sizes.__getitem__, kept))
            return
        self.remove_all(list(filter(token.__contains__, itertools.chain.from_iterable(ranges))), gone)

    def _keep_only(self, kept: Iterable[int]) -> list[int]:
        """Rebuild the queue from ``kept`` (queued ids), in their token order, which is the queue's
        (call only while ``_in_token_order``); returns them in that order."""
        token = self._token
        ordered = sorted(kept, key=token.__getitem__)
        self._token = token = dict(zip(ordered, map(token.__getitem__, ordered)))
        self._entries = deque(token.items())
        return ordered

    def _compact(self) -> None:
        """Drop the stale entries."""
        token = self._token
        self._entries = deque((c, t) for c, t in self._entries if token.get(c) == t)
        self._in_token_order = list(token.values()) == [t for _, t in self._entries]

    def _drop_stale_front(self) -> None:
        entries, token = self._entries, self._token
        while entries and token.get(entries[0][0]) != entries[0][1]:
            entries.popleft()


def _complement(ranges: Sequence[range], n: int) -> list[range]:
    """The chunks of ``range(n)`` outside ``ranges`` (contiguous, step 1), as ranges.

        >>> _complement([range(5, 8), range(0, 2)], 10)
        [range(2, 5), range(8, 10)]
    """
    out, at = [], 0
    for r in sorted(ranges, key=lambda r: r.start):
        if r.start > at:
            out.append(range(at, r.start))
        at = max(at, r.stop)
    if at < n:
        out.append(range(at, n))
    return out


def _pointer_table(manifest: Manifest) -> PointerTable:
    if isinstance(manifest, Manifest):
        return manifest.pointer_table()
    names = list(manifest)  # a plain mapping of TensorSpec (tests): the same table, built once
    return dict(zip(names, range(len(names)))), [manifest[name].ptr for name in names]


def _reads(chunk_ids: list[int], index: ReadIndex, client: Manifest, theirs: Manifest) -> list[Read]:
    """The copies of these chunks from ``theirs`` into ``client``: :func:`rfork_api.chunking.chunk_reads`."""
    return chunk_reads(chunk_ids, index, _pointer_table(client), _pointer_table(theirs))


def striped_order(num_chunks: int, start: int) -> list[int]:
    """``range(num_chunks)`` rotated to begin at ``start``: where this job reads from the seeds first."""
    start = start % num_chunks if num_chunks else 0
    return [*range(start, num_chunks), *range(start)]


def stripe_start(num_chunks: int, member_index: int) -> int:
    """The start offset of the ``member_index``-th job of a group: golden-ratio spacing keeps
    any number of concurrent jobs evenly spread over the chunks without knowing how many will come."""
    golden = 0.6180339887498949
    return int(((member_index * golden) % 1.0) * num_chunks)


class Job:
    """One rank's fork: chunk states, per-source failures, progress.

    A chunk's state lives in tables, not an object per chunk: landed is ``done_chunks``,
    waiting is ``pending``, and the rarer states (in flight, failed somewhere, attempted) are
    dicts holding only the chunks in them. ``chunks[c]`` reads them back as one view."""

    def __init__(self, job_id: str, client_manifest: Manifest, chunks: list[Chunk],
                 config: PlannerConfig, now: float, start: int = 0) -> None:
        self.job_id = job_id
        self._peer_id = f"peer:{job_id}"
        self.client_manifest = client_manifest
        self.config = config
        self._plan = chunks
        self._read_index = read_index(chunks)
        self._sizes = self._read_index.sizes
        """Chunk id -> bytes (the plan's, shared: read only)."""
        self._bytes_before = self._read_index.bytes_before
        self.chunks = _ChunkStates(self)
        self.bytes_total = self._bytes_before[-1]
        self._start = start
        self._pending: PendingQueue | None = None
        """Built on first use (``pending``): a member of streams withholds most of its chunks
        (``stream_chunks``) before its first decision, and its queue then holds only the rest;
        queueing every chunk at creation was most of a scale-out member's creation."""
        self.done_chunks: set[int] = ChunkSet()
        """Landed chunks: what this job, as a peer, can serve to others."""
        self._live_on: dict[int, Assignment | dict[str, Assignment]] = {}
        """Chunk id -> its assignment in flight, for the chunks that have any; a dict of them
        (id -> assignment) for a chunk read twice at once (an endgame duplicate). One object per
        chunk in flight is not built: a merged assignment is stored under each of its chunks."""
        self._failed_on: dict[int, set[str]] = {}
        """Chunk id -> the sources whose read of it failed, for the chunks that have any."""
        self._attempts: dict[int, int] = {}
        """Chunk id -> reads of it that failed, for the chunks that have any."""
        self.assignments: dict[str, Assignment] = {}
        self.live: dict[str, Assignment] = {}
        """Assignments in flight (at least one of their chunks not landed yet)."""
        self._live_count: dict[str, int] = {}
        self.excluded: dict[str, str] = {}
        """Sources that failed this job's reads: not used again by this job unless they restart."""
        self.excluded_incarnation: dict[str, str] = {}
        """The incarnation each excluded source had when it was excluded."""
        self.incarnation: dict[str, str] = {}
        """Each source's latest incarnation this job has seen."""
        self.readmissions: dict[str, int] = {}
        """How often each source came back (a new incarnation) after an exclusion."""
        self.lost: dict[str, str] = {}
        """Sources that left while this job ran (eligible again if they return)."""
        self.last_failure: dict[str, str] = {}
        """Each source's last failed read in this job, excluded or not: what the user sees."""
        self.consecutive_failures: dict[str, int] = {}
        self._failed_chunks: dict[str, ChunkSet] = {}
        """Source id -> chunks whose read from it failed (each chunk's ``failed_on``, by source)."""
        self._decisions = 0
        """Calls of ``next_assignments`` so far: what the endgame outlook's cache is valid for."""
        self._outlook: tuple[tuple, tuple[dict[str, float], float, int]] | None = None
        self.observed_rate: dict[str, float] = {}
        self._best_rate = 0.0
        self._reads_at_once = 1
        self._found: tuple[str, int] | None = None
        """(source id, pending chunks it can serve) found by the current choice, for its merge."""
        """Reads this job may have in flight after the current decision (live + asked for)."""
        """The highest observed rate of any peer this job read from: a fresh peer's estimate."""
        self.bytes_by_seed: dict[str, int] = {}
        """Bytes landed per source id (seeds and peers)."""
        self.bytes_by_kind: dict[str, int] = {SEED: 0, PEER: 0}
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
        self.bytes_streaming = self.chunks_streaming = 0
        """Bytes and chunks running streams reported landed, not yet in ``done_chunks`` (a stream's
        chunks are marked landed when it ends: one set operation, not one per report)."""
        self.streamed_mask = 0
        """Chunks this job reads by a stream from a parent peer (``stream_chunks``), as a bitmask: not
        handed to a source here, and not re-queued when a read of one fails; ``unstream_chunks``
        gives them back."""
        self.on_cover: Callable[[int, int], None] | None = None
        """Told ``(chunk_id, +1)`` when a chunk becomes held-or-fetching here and ``(chunk_id, -1)``
        when it stops (a failed read re-queued it): how a swarm counts who covers what."""
        self.on_cover_all: Callable[[Sequence[int]], None] | None = None
        """Optional, beside ``on_cover``: told ``chunk_ids`` (distinct) when they ALL become covered
        here at once (a new assignment of chunks nobody here covered): ``on_cover(c, +1)`` for
        each, in one call. Without it, ``on_cover`` is called per chunk."""
        self.state = RUNNING if chunks else DONE
        if not chunks:
            self.finished_at = now

    @property
    def pending(self) -> PendingQueue:
        """The chunks waiting for a source, in this job's striped order (retries first)."""
        queue = self._pending
        if queue is None:
            queue = self._pending = self._first_queue()
        return queue

    def _first_queue(self) -> PendingQueue:
        n = len(self._plan)
        everything = (1 << n) - 1
        gone = self.streamed_mask | self.done_chunks.mask
        if not gone:
            return PendingQueue(striped_order(n, self._start), sizes=self._sizes, mask=everything,
                                nbytes=self.bytes_total)
        kept = list(lowest_chunks(everything & ~gone))
        at = bisect.bisect_left(kept, self._start % n)  # the striped order: from start, then wrap around
        order = kept[at:] + kept[:at]
        return PendingQueue(order, sizes=self._sizes, mask=everything & ~gone,
                            nbytes=sum(map(self._sizes.__getitem__, order)))

    def resume(self, chunks_done: list[int], now: float) -> None:
        """Mark chunks the client already holds (it re-created the job after a scheduler restart).

        Chunk ids are stable: the same manifest and chunk size give the same plan.
        """
        for chunk_id in sorted(set(chunks_done)):
            nbytes = self._sizes[chunk_id]
            if chunk_id in self.done_chunks:
                continue
            covering = chunk_id in self._live_on
            self.done_chunks.add(chunk_id)
            self.pending.discard(chunk_id)
            if not covering and self.on_cover is not None:
                self.on_cover(chunk_id, +1)
            self.bytes_done += nbytes
            self.bytes_resumed += nbytes
            self.chunks_done += 1
        if self.chunks and self.chunks_done == len(self.chunks):
            self.state, self.finished_at = DONE, now

    # -- streams -----------------------------------------------------------
    def stream_chunks(self, ranges: Sequence[range]) -> None:
        """The chunks of ``ranges`` come by streams from parents (scheduler/stream_swarm.py): withhold them.

        A read of one already in flight carries on (if it lands first, the stream skips it);
        if it fails, the chunk is not re-queued: the stream brings it. Bitmask operations,
        and Python work only for the chunks kept: a join in a 1024-instance scale-out
        withholds 7 of 8 stripes of every job.
        """
        want = 0
        for r in ranges:
            want |= bits_of(r)
        fresh = want & ~self.done_chunks.mask & ~self.streamed_mask
        if not fresh:
            return
        self.streamed_mask |= fresh
        if self._pending is not None:  # else it is built without them
            self._pending.remove_ranges(ranges, _complement(ranges, len(self._plan)))

    def unstream_chunks(self, ranges: Sequence[range], now: float) -> None:
        """The streams that were to bring these chunks ended (a parent left, a stripe went back to
        the seeds): the ones not landed and not in flight are pending again, at the front, in order."""
        want = 0
        for r in ranges:
            want |= bits_of(r)
        mine = self.streamed_mask & want
        if not mine:
            return
        self.streamed_mask &= ~mine
        back = [c for c in lowest_chunks(mine & ~self.done_chunks.mask)
                if c not in self._live_on and c not in self.pending]
        for chunk_id in reversed(back):
            self.pending.appendleft(chunk_id)
        if back:
            # The no-seed grace counts from when the work became the seeds' again.
            self.last_seed_seen_at = max(self.last_seed_seen_at, now)

    def is_streamed(self, chunk_id: int) -> bool:
        return bool(self.streamed_mask >> chunk_id & 1)

    def streamed_chunks(self) -> list[int]:
        """The chunks withheld for streams (landed or not)."""
        return list(lowest_chunks(self.streamed_mask))

    def landed_by_stream(self, chunk_ids: Iterable[int], source_id: str, now: float) -> int:
        """The client read these chunks by a stream from ``source_id`` (a peer); returns the bytes
        newly landed. A chunk already landed counts once. Set operations at C speed, as for
        ``stream_chunks``: every chunk of a scale-out but the seeds' copy lands this way."""
        if self.state != RUNNING:
            return 0
        whole = isinstance(chunk_ids, range) and chunk_ids.step == 1
        if whole and not self.done_chunks.mask & bits_of(chunk_ids):
            landed = set(chunk_ids)  # a stream's whole stripe, none of it here yet: the common case
        else:
            landed = set(chunk_ids).difference(self.done_chunks)
            whole = False
        if not landed:
            return 0
        on_cover, on_cover_all = self.on_cover, self.on_cover_all
        if on_cover is not None:
            newly_covering = landed - self._live_on.keys() if self._live_on else landed  # in flight: covered
            if on_cover_all is not None:
                on_cover_all(chunk_ids if whole and len(newly_covering) == len(landed) else list(newly_covering))
            else:
                for chunk_id in newly_covering:
                    on_cover(chunk_id, +1)
        landed_mask = bits_of(chunk_ids) if whole else bits_of(landed)
        self.done_chunks.add_new(landed, landed_mask)
        queued_mask = landed_mask & self.pending.mask
        if queued_mask:
            self.pending.remove_all([c for c in landed if c in self.pending], queued_mask)
        nbytes = self.chunk_bytes(chunk_ids if whole else landed)
        self.bytes_done += nbytes
        self.chunks_done += len(landed)
        self.bytes_by_seed[source_id] = self.bytes_by_seed.get(source_id, 0) + nbytes
        self.bytes_by_kind[PEER] = self.bytes_by_kind.get(PEER, 0) + nbytes
        if self.chunks_done == len(self._plan):
            self.state, self.finished_at = DONE, now
        return nbytes

    @property
    def bytes_reported(self) -> int:
        """Bytes landed as the client reported them: marked (``bytes_done``) and reported by running
        streams (marked when they end). A job's progress, on the wire and in the metrics."""
        return self.bytes_done + self.bytes_streaming

    def stream_progress(self, nbytes: int, nchunks: int) -> None:
        """Running streams landed (or, negative, handed over to ``landed_by_stream``) this much."""
        self.bytes_streaming += nbytes
        self.chunks_streaming += nchunks

    def chunk_bytes(self, chunk_ids: Iterable[int]) -> int:
        if isinstance(chunk_ids, range) and chunk_ids.step == 1:
            return self._bytes_before[max(chunk_ids.stop, chunk_ids.start)] - self._bytes_before[chunk_ids.start]
        return sum(map(self._sizes.__getitem__, chunk_ids))

    def done_in(self, chunks: range) -> int:
        """Chunks of the contiguous range ``chunks`` landed here (an AND of bitmasks)."""
        width = chunks.stop - chunks.start
        return ((self.done_chunks.mask >> chunks.start) & ((1 << width) - 1)).bit_count()

    # -- handing out work --------------------------------------------------
    def next_assignments(self, sources: list[SourceView], now: float, max_assignments: int,
                         covered: Coverage | None = None) -> list[Assignment]:
        """Up to ``max_assignments`` new reads, each from the source best placed to serve it.

        ``covered`` maps a chunk id to the peers (source ids) that hold it or are
        fetching it now; a seed is not asked for a chunk an eligible peer covers,
        so concurrent jobs take each chunk from the seeds about once.
        """
        if self.state != RUNNING or (not self.pending and not self.live and self.streamed_mask):
            return []  # (every chunk left comes by a stream: nothing for a source, and no seed needed)
        eligible = self._eligible(sources)
        if not self._sees_a_source(eligible, now):
            self._fail_if_no_sources(eligible, sources, now)
            return []
        self._decisions += 1
        peer_ids = frozenset(s.source_id for s in eligible if s.kind == PEER)
        self._reads_at_once = len(self.live) + max_assignments
        free, budget, rates = {}, {}, {}
        live_count, observed, cap = self._live_count, self.observed_rate, self.config.max_in_flight_per_seed
        for s in eligible:
            sid = s.source_id
            if s.allowed_rate is None:  # the common case, inline (_free and _rate of an uncapped source)
                n = cap - live_count.get(sid, 0)
                free[sid] = n if s.free_slots is None else min(n, s.free_slots)
                rates[sid] = observed.get(sid) or math.inf
            else:
                free[sid], rates[sid] = self._free(s), self._rate(s)
            budget[sid] = s.budget_bytes
        out: list[Assignment] = []
        # Peers first (they serve no traffic), then most free budget, then the faster source; on a
        # tie, the first in ``eligible``. A heap of those keys (negated: smallest first): a source
        # that finds nothing leaves it, one given a read goes back with one slot less.
        # A source that cannot find anything while chunks are pending is set aside at once, by the
        # checks ``_choose`` and ``_pending_for`` would make (O(1) each: an AND of bitmasks): a
        # peer holding no pending chunk, a seed when peers cover every pending chunk and none of
        # its reads failed. Pending only shrinks during a decision, so it finds nothing later in
        # it either, unless pending runs out: then the endgame may use it, and those not asked
        # yet in the heap's order go back in. A source whose bucket is in debt finds nothing at
        # all. About half the work calls of a swarm hand out nothing; each asked every source.
        pending_mask = self.pending.mask
        uncovered = getattr(covered, "uncovered", None)
        uncovered_mask = uncovered.mask if isinstance(uncovered, ChunkSet) else None
        failed_chunks = self._failed_chunks
        queue, aside = [], []
        for i, s in enumerate(eligible):
            sid = s.source_id
            if free[sid] <= 0 or (budget[sid] is not None and budget[sid] <= 0):
                continue
            key = (-(s.kind == PEER), -free[sid], -rates[sid], i)
            if pending_mask:
                holds = s.holds
                if holds is None:
                    if s.kind == SEED and uncovered_mask is not None and not pending_mask & uncovered_mask \
                            and not failed_chunks.get(sid):
                        aside.append(key)
                        continue
                elif isinstance(holds, ChunkSet) and not pending_mask & holds.mask:
                    aside.append(key)
                    continue
            queue.append(key)
        heapq.heapify(queue)
        while len(out) < max_assignments and queue:
            key = heapq.heappop(queue)
            peer_first, _, minus_rate, i = key
            source = eligible[i]
            sid = source.source_id
            chunk_ids = self._choose(source, eligible, peer_ids, covered, budget[sid], rates, now)
            if not chunk_ids:
                free[sid] = 0
                continue
            a = self._assign(chunk_ids, source, now)
            if aside and not self.pending:
                for set_aside in aside:  # the ones the heap would still have asked: now for the endgame
                    if set_aside > key:
                        heapq.heappush(queue, set_aside)
                aside = []
            out.append(a)
            free[sid] -= 1
            if free[sid] > 0:
                heapq.heappush(queue, (peer_first, -free[sid], minus_rate, i))
            if budget[sid] is not None:
                budget[sid] -= a.nbytes
        return out

    @property
    def peer_id(self) -> str:
        """This job's id as a source for other jobs."""
        return self._peer_id

    def _choose(self, source: SourceView, eligible: list[SourceView], peer_ids: frozenset[str],
                covered: Coverage | None, budget: float | None, rates: dict[str, float], now: float) -> list[int]:
        if budget is not None and budget <= 0:
            return []  # its bucket is in debt: the reads already given to it come first
        self._found = None
        holds = source.holds
        if isinstance(holds, ChunkSet) and self.pending and not self.pending.mask & holds.mask:
            return []  # a peer holding nothing this job waits for (most sampled peers, late in a scale-out)
        chunk_id = self._pending_for(source, eligible, peer_ids, covered)
        if chunk_id is not None:
            chunk_ids = [chunk_id, *self._more_pending_for(source, eligible, chunk_id, budget, peer_ids, covered)]
            if self.config.merge_seconds > 0 and len(chunk_ids) > 2:
                chunk_ids.sort()  # gathered across gaps: in order, so a tensor's consecutive chunks are one read
            return chunk_ids
        if self.pending:
            # Nothing is duplicated before the true end. A seed: what is left is covered by peers.
            # A peer: while chunks wait, every byte through this job's ingress should be a new one
            # (measured: duplicates of merged peer reads were a third of a swarm's assignments).
            return []
        chunk_id = self._endgame_for(source, rates, now)
        return [] if chunk_id is None else [chunk_id]

    def check_sources(self, sources: list[SourceView], now: float,
                      more: Callable[[], list[SourceView]] | None = None) -> None:
        """What a decision that hands out nothing does, for a job whose client is silent: fail it once
        no source is left past the no-seed grace, as ``next_assignments(sources, now, 0)`` would, but
        without building its queue of pending chunks (a silent job's first decision would: ~0.3 ms a
        1,300-chunk job, for every member of a scale-out created before its client's first call).
        ``more`` gives further sources (a swarm's peers), asked only when no seed is eligible."""
        if self.state != RUNNING:
            return
        eligible = self._eligible(sources)
        if more is not None and not any(s.kind == SEED for s in eligible):
            sources = sources + more()
            eligible = self._eligible(sources)
        if not self._sees_a_source(eligible, now) and not (self.streamed_mask and not self.live and not self.pending):
            self._fail_if_no_sources(eligible, sources, now)  # (every chunk left by a stream: none needed)

    def _eligible(self, sources: list[SourceView]) -> list[SourceView]:
        """The sources this job may read from: not excluded (a restarted one readmitted first), not itself."""
        self._readmit_restarted(sources)
        excluded, peer_id = self.excluded, self._peer_id
        return [s for s in sources if s.source_id not in excluded and s.source_id != peer_id]

    def _sees_a_source(self, eligible: list[SourceView], now: float) -> bool:
        """Whether a seed, or a peer holding a chunk still needed, can serve this job; if so, the
        no-seed grace starts again and the seeds lost before are forgotten."""
        if not (any(s.kind == SEED for s in eligible) or any(self._holds_something_needed(s) for s in eligible)):
            return False
        self.last_seed_seen_at = now
        if self.lost:
            for s in eligible:
                self.lost.pop(s.source_id, None)
        return True

    def _holds_something_needed(self, peer: SourceView) -> bool:
        holds = peer.holds or ()
        if len(holds) > len(self.done_chunks):
            return True  # it holds more than we do: something we lack
        return any(c not in self.done_chunks for c in holds)

    def _covered_by_peer(self, chunk_id: int, peer_ids: frozenset[str],
                         covered: Coverage | None) -> bool:
        if covered is None:
            return False
        by = covered.get(chunk_id)
        if by is ANY_ELIGIBLE_PEER:
            return True
        return bool(by) and any(p in by for p in peer_ids)

    def _pending_for(self, source: SourceView, eligible: list[SourceView], peer_ids: frozenset[str],
                     covered: Coverage | None) -> int | None:
        """The next pending chunk for ``source``, taken off the queue.

        A peer takes the first it holds. A seed takes the first no eligible peer
        covers (within a bounded window); one it failed only if no other source
        can take it. The queue's front is matched chunk by chunk (retries first,
        then this job's stripe); past it, a peer's chunk is the lowest pending one
        it holds and a seed's the lowest pending one no peer covers, found by set
        intersection (C speed, no walk past thousands of covered chunks).
        """
        holds = source.holds
        uncovered = getattr(covered, "uncovered", None) if source.kind == SEED else None
        by_set = holds is not None or uncovered is not None
        window = FRONT_WINDOW if by_set else (SEED_SCAN_WINDOW if source.kind == SEED else len(self._plan))
        fallback = None
        seen = 0
        for chunk_id in self.pending:
            seen += 1
            if seen > window:
                break
            if holds is not None and chunk_id not in holds:
                continue
            failed_on = self._failed_on.get(chunk_id, _NO_FAILURES)
            if source.source_id not in failed_on:
                if uncovered is not None:
                    if chunk_id not in uncovered:
                        continue  # a peer holds it or will soon: not the seeds' job
                elif source.kind == SEED and self._covered_by_peer(chunk_id, peer_ids, covered):
                    continue
                self.pending.remove(chunk_id)
                return chunk_id
            if fallback is None and all(s.source_id in failed_on or not s.can_serve(chunk_id)
                                        for s in eligible):
                fallback = chunk_id
        if by_set and seen > window:
            wanted = source.holds if source.holds is not None else uncovered
            assert wanted is not None
            found = self._pending_among(source.source_id, wanted)
            if found:
                lowest = found & -found  # the lowest: merged runs grow upward from it
                chunk_id = lowest.bit_length() - 1
                self.pending.remove(chunk_id)
                self._found = (source.source_id, found ^ lowest)  # what a link-time merge gathers from next
                return chunk_id
        if fallback is not None:
            self.pending.remove(fallback)
        return fallback

    def _more_pending_for(self, source: SourceView, eligible: list[SourceView], first: int,
                          budget: float | None, peer_ids: frozenset[str] = frozenset(),
                          covered: Coverage | None = None) -> list[int]:
        """Further pending chunks to merge into the assignment that starts with ``first``."""
        sizes = self._sizes
        first_bytes = sizes[first]
        limit = max(self.config.max_assignment_bytes, self._link_time_bytes(source))
        if self.config.max_assignment_bytes <= 0 or limit <= first_bytes or not self.pending:
            return []
        if source.allowed_rate is not None:
            # A capped source merges only once its in-flight budget outgrows max_in_flight_per_seed
            # chunks: bigger assignments instead of more of them, the same bytes in flight.
            limit = min(limit, source.allowed_rate * self.config.pipeline_seconds / self.config.max_in_flight_per_seed)
        if budget is not None:
            limit = min(limit, max(budget, first_bytes))
        # Never more than this source's share of what is left, so the others get work too
        # (the queue keeps its byte count: O(1) per assignment). Sized by link time, the share
        # is over the reads this job will have in flight, when fewer than its sources: its
        # client reads no more at once, and sources it does not read from need no share (split
        # over 9 sampled sources, the last ~40 chunks of a 32-instance swarm took a third of
        # its decisions).
        sharers = len(eligible)
        if self.config.merge_seconds > 0:
            sharers = max(1, min(sharers, self._reads_at_once))
        limit = min(limit, (first_bytes + self.pending.nbytes) / sharers)
        taken, total = [], first_bytes
        # A seed merges the next chunks in queue order; a peer the run of chunk ids after
        # ``first`` that it holds (the queue's front may be chunks it does not have). In a
        # swarm (an ``uncovered`` set) a seed merges the run after ``first`` too: the queue's
        # front is then mostly chunks peers cover, and runs keep what peers hold in long runs.
        holds = source.holds
        by_run = holds is not None or getattr(covered, "uncovered", None) is not None
        # Only a holds set without a mask is asked chunk by chunk; a ChunkSet's run is cut at
        # its first chunk the source lacks by the mask (the loop would break there).
        ask_holds = holds is not None and not isinstance(holds, ChunkSet)
        following = self._pending_run_after(first, None if ask_holds else holds) if by_run else self.pending
        failed_on, sid = self._failed_on, source.source_id
        for chunk_id in following:
            if (failed_on and sid in failed_on.get(chunk_id, _NO_FAILURES)) or (ask_holds and chunk_id not in holds):
                if holds is None:
                    continue
                break
            nbytes = sizes[chunk_id]
            if total + nbytes > limit:
                break
            if source.kind == SEED and self._covered_by_peer(chunk_id, peer_ids, covered):
                break  # a peer serves the rest of this run
            taken.append(chunk_id)
            total += nbytes
        if by_run and self.config.merge_seconds > 0 and limit - total >= first_bytes:
            total = self._fill_from_elsewhere(source, covered, first, taken, total, limit)
        self.pending.remove_all(taken)
        return taken

    def _fill_from_elsewhere(self, source: SourceView, covered: Coverage | None, first: int,
                             taken: list[int], total: int, limit: float) -> int:
        """Sized by link time, an assignment whose run ended early takes further chunks the source
        can serve from anywhere in the job (lowest ids first): a peer's landed chunks come in runs
        of a few, so runs alone kept merges at a fifth of the link-time size and the decisions
        five times as many. Reads stay per tensor; a tensor's chunks still merge into one read
        where they are consecutive. One set intersection (C speed) and a partial sort."""
        if self._found is not None and self._found[0] == source.source_id:
            found = self._found[1]  # this decision's intersection, from _pending_for: not computed twice
        else:
            wanted = source.holds if source.holds is not None else getattr(covered, "uncovered", None)
            if wanted is None:
                return total
            found = self._pending_among(source.source_id, wanted) & ~(1 << first)
        for chunk_id in taken:
            found &= ~(1 << chunk_id)
        if not found:
            return total
        sizes = self._sizes
        room = int((limit - total) // max(sizes[first], 1)) + 1
        # The lowest ids first; when there are many, only the ``room`` lowest are looked at.
        lowest = lowest_chunks(found)
        for chunk_id in (lowest if found.bit_count() <= 4 * room else itertools.islice(lowest, room)):
            nbytes = sizes[chunk_id]
            if total + nbytes > limit:
                break
            taken.append(chunk_id)
            total += nbytes
        return total

    def _pending_among(self, source_id: str, wanted: AbstractSet[int]) -> int:
        """The pending chunks in ``wanted`` whose read from ``source_id`` has not failed, as a bitmask."""
        found = self.pending.mask & (wanted.mask if isinstance(wanted, ChunkSet) else bits_of(wanted))
        failed = self._failed_chunks.get(source_id)
        if failed:
            found &= ~failed.mask
        return found

    def _link_time_bytes(self, source: SourceView) -> float:
        """Bytes ``source`` delivers to this job in ``merge_seconds`` at the rate it measured (0: none).

        O(1) in the chunks: the rate is per source, the best one over the sources this job read.
        """
        seconds = self.config.merge_seconds
        if seconds <= 0:
            return 0.0
        rate = self.observed_rate.get(source.source_id)
        if rate is None and source.kind == PEER and self._best_rate > 0:
            rate = self._best_rate  # peers are alike: what this job's ingress took from the best one
        if not rate:
            return 0.0
        return min(rate * seconds, float(self.config.max_merged_bytes))

    def _pending_run_after(self, first: int, holds: AbstractSet[int] | None = None) -> range:
        """The pending chunk ids right after ``first``, up to the first one not pending (or, with a
        ``ChunkSet`` ``holds``, not in it): the trailing ones of a shifted mask, O(1) per run."""
        run = self.pending.mask >> (first + 1)
        if isinstance(holds, ChunkSet):
            run &= holds.mask >> (first + 1)
        return range(first + 1, first + (run ^ (run + 1)).bit_length())

    def _free(self, source: SourceView) -> int:
        free = self._depth(source) - self._live_count.get(source.source_id, 0)
        if source.free_slots is not None:
            free = min(free, source.free_slots)
        return free

    def _depth(self, source: SourceView) -> int:
        cap = self.config.max_in_flight_per_seed
        if source.allowed_rate is None:
            return cap
        if source.allowed_rate <= 0:
            return 0
        typical = max(self.bytes_total / max(len(self._plan), 1), 1)
        return max(1, min(cap, math.ceil(source.allowed_rate * self.config.pipeline_seconds / typical)))

    def _rate(self, source: SourceView) -> float:
        """Best estimate of bytes/s this source delivers to this job."""
        observed = self.observed_rate.get(source.source_id)
        allowed = math.inf if source.allowed_rate is None else source.allowed_rate
        return min(observed, allowed) if observed else allowed

    def _endgame_for(self, source: SourceView, rates: dict[str, float], now: float) -> int | None:
        """Duplicate the in-flight chunk whose current source would land it last, if this one is much sooner."""
        if not self.config.endgame or not self.live:
            return None
        my_rate = rates[source.source_id]
        if source.allowed_rate is None and source.source_id not in self.observed_rate:
            # Uncapped and never read from by this job: not infinitely fast, but no faster than the
            # best source this job has measured (its own ingress bounds every read). Assuming
            # infinity had every fresh peer duplicate whatever was in flight.
            if not self.observed_rate:
                return None
            my_rate = max(self.observed_rate.values())
        if my_rate <= 0:
            return None
        mine_queued = self._live_count.get(source.source_id, 0) + 1
        remaining, slowest, smallest = self._in_flight_outlook(rates, now)
        speedup = self.config.endgame_speedup
        if slowest <= mine_queued * smallest / my_rate * speedup:
            return None  # nothing in flight is slow enough to be worth a second read (the usual case)
        best, best_gain = None, 0.0
        # Only chunks in flight can be duplicated: scan the live assignments, not every chunk.
        for chunk_id in sorted({c for a in self.live.values() for c in a.chunk_ids}):
            live = self._holders(chunk_id)
            if chunk_id in self.done_chunks or not live or len(live) >= self.config.max_live_per_chunk:
                continue
            if not source.can_serve(chunk_id) or source.source_id in self._failed_on.get(chunk_id, _NO_FAILURES) \
                    or any(a.seed_id == source.source_id for a in live.values()):
                continue
            holder = next(iter(live))
            left = remaining[holder] if holder in remaining else math.inf
            mine = mine_queued * self._sizes[chunk_id] / my_rate
            if mine * speedup < left and left - mine > best_gain:
                best, best_gain = chunk_id, left - mine
        return best

    def _in_flight_outlook(self, rates: dict[str, float], now: float) -> tuple[dict[str, float], float, int]:
        """Seconds until each live assignment lands (bytes its source must read first, its own and
        those assigned at or before it, over that source's rate, less the time already spent), the
        largest of them, and the smallest chunk in flight. Kept within one decision (``rates`` is
        that decision's) until the live set changes: every source a decision finds nothing for
        asks, and the answer is the same. (Not keyed on ``id(rates)``: a later decision's dict
        may sit at a freed one's address.)"""
        key = (self._decisions, now, self._ids, len(self.live))
        if self._outlook is not None and self._outlook[0] == key:
            return self._outlook[1]
        ahead: dict[str, int] = {}
        by_source: dict[str, list[Assignment]] = {}
        for a in self.live.values():
            by_source.setdefault(a.seed_id, []).append(a)
        for theirs in by_source.values():
            theirs.sort(key=lambda a: a.assigned_at)
            total, i = 0, 0
            while i < len(theirs):  # assignments made at the same moment are all ahead of each other
                j = i
                while j < len(theirs) and theirs[j].assigned_at == theirs[i].assigned_at:
                    total += theirs[j].nbytes
                    j += 1
                for a in theirs[i:j]:
                    ahead[a.assignment_id] = total
                i = j
        remaining: dict[str, float] = {}
        for aid, a in self.live.items():
            # A holder missing from this decision's sources is not dead (a left or excluded source's
            # reads were re-queued already): peers are sampled per decision. Judge it by what this
            # job measured of it; with nothing measured there is no evidence it is slow.
            their_rate = rates.get(a.seed_id) or self.observed_rate.get(a.seed_id) or math.inf
            # A seed's reads wait on its agent's leases, one after another; a peer's run side by
            # side (its observed rate already is one read's share), so only its own bytes count.
            queued = a.nbytes if a.source_kind == PEER else ahead[aid]
            remaining[aid] = (math.inf if their_rate <= 0 else queued / their_rate) - (now - a.assigned_at)
        sizes = self._sizes
        smallest = min(sizes[c] for a in self.live.values() for c in a.chunk_ids)
        outlook = (remaining, max(remaining.values()), smallest)
        self._outlook = (key, outlook)
        return outlook

    def _assign(self, chunk_ids: list[int], source: SourceView, now: float) -> Assignment:
        sizes, attempts = self._sizes, self._attempts
        self._ids += 1
        reads = _reads(chunk_ids, self._read_index, self.client_manifest, source.manifest)
        # Ids carry the job id: a report from a lost job's assignment (the client
        # resumed after a scheduler restart) can never match one of this job's.
        a = Assignment(f"{self.job_id}-a{self._ids}", chunk_ids[0], source.source_id, source.session_id,
                       source.agent_url, sum(map(sizes.__getitem__, chunk_ids)),
                       (max(map(attempts.get, chunk_ids, itertools.repeat(0))) if attempts else 0) + 1, now, reads,
                       chunk_ids=tuple(chunk_ids), source_kind=source.kind, incarnation=source.incarnation)
        aid, on_cover, live_on, done = a.assignment_id, self.on_cover, self._live_on, self.done_chunks
        newly_covered: list[int] = []
        for chunk_id in chunk_ids:
            held = live_on.get(chunk_id)
            if held is None:
                if chunk_id not in done:
                    newly_covered.append(chunk_id)
                live_on[chunk_id] = a
            elif type(held) is dict:
                held[aid] = a
            else:
                live_on[chunk_id] = {held.assignment_id: held, aid: a}
        if on_cover is not None and newly_covered:
            if self.on_cover_all is not None:
                self.on_cover_all(newly_covered)  # one call per assignment, not one per chunk
            else:
                for chunk_id in newly_covered:
                    on_cover(chunk_id, +1)
        self.assignments[a.assignment_id] = a
        self._set_live(a)
        return a

    def _set_live(self, a: Assignment) -> None:
        if a.assignment_id not in self.live:
            self.live[a.assignment_id] = a
            self._live_count[a.seed_id] = self._live_count.get(a.seed_id, 0) + 1

    def _unset_live(self, a: Assignment) -> None:
        if self.live.pop(a.assignment_id, None) is not None:
            left = self._live_count[a.seed_id] - 1
            if left:
                self._live_count[a.seed_id] = left
            else:
                del self._live_count[a.seed_id]

    def _drop_live_if_idle(self, a: Assignment) -> None:
        """An assignment stops counting as in flight once none of its chunks still waits on it."""
        live_on, aid = self._live_on, a.assignment_id
        for c in a.chunk_ids:
            held = live_on.get(c)
            if held is a or (type(held) is dict and aid in held):
                return
        self._unset_live(a)

    def _holders(self, chunk_id: int) -> dict[str, Assignment]:
        """A chunk's assignments in flight, by id (do not mutate)."""
        held = self._live_on.get(chunk_id)
        if held is None:
            return {}
        return held if type(held) is dict else {held.assignment_id: held}

    def _unlive(self, chunk_id: int, assignment_id: str) -> Assignment | None:
        """Take an assignment off a chunk's in-flight reads; returns it if it was there."""
        held = self._live_on.get(chunk_id)
        if held is None:
            return None
        if type(held) is dict:
            a = held.pop(assignment_id, None)
            if not held:
                del self._live_on[chunk_id]
            return a
        if held.assignment_id != assignment_id:
            return None
        del self._live_on[chunk_id]
        return held

    def covers(self, chunk_id: int) -> bool:
        """Whether this job holds the chunk or is fetching it (what a swarm counts for its peers)."""
        return chunk_id in self.done_chunks or chunk_id in self._live_on

    def covering_chunks(self) -> list[int]:
        """The chunks this job holds or is fetching, in order."""
        return sorted(self.done_chunks.union(self._live_on))

    def _covering(self, chunk_ids: Iterable[int]) -> dict[int, bool] | None:
        if self.on_cover is None:
            return None
        return {c: self.covers(c) for c in chunk_ids}

    def _cover_changes(self, chunk_ids: Iterable[int], before: dict[int, bool] | None) -> None:
        if before is None or self.on_cover is None:
            return
        for c, was in before.items():
            now_covering = self.covers(c)
            if now_covering != was:
                self.on_cover(c, +1 if now_covering else -1)

    # -- results -----------------------------------------------------------
    def apply(self, report: Report, now: float) -> None:
        a = self.assignments.get(report.assignment_id)
        if a is None:
            return  # unknown: nothing to learn
        # Reported: the client is done with its reads. The assignment is kept (a late or repeated
        # report must still match it), its reads are not: one per chunk per job, 1.4 million in a
        # 1024-instance scale-out, each an object Python's garbage collector would walk forever.
        a.reads = []
        if self.state != RUNNING:
            return  # after the end: nothing to learn
        if report.ok:
            self._unset_live(a)
            self._landed(a, report, now)
            return
        before = self._covering(a.chunk_ids)
        was_live = [c for c in a.chunk_ids if self._unlive(c, a.assignment_id) is not None]
        self._unset_live(a)
        if was_live:
            self._failed(a, was_live, report, now)
        self._cover_changes(a.chunk_ids, before)

    def _landed(self, a: Assignment, report: Report, now: float) -> None:
        self.consecutive_failures[a.seed_id] = 0
        if report.seconds > 0:
            sample = a.nbytes / report.seconds
            prev = self.observed_rate.get(a.seed_id)
            rate = self.observed_rate[a.seed_id] = sample if prev is None else 0.7 * prev + 0.3 * sample
            if a.source_kind == PEER and rate > self._best_rate:
                self._best_rate = rate
        aid, on_cover, pending = a.assignment_id, self.on_cover, self.pending
        live_on, done, sizes, pending_ids = self._live_on, self.done_chunks, self._sizes, self.pending.ids()
        landed: list[int] = []
        for chunk_id in a.chunk_ids:
            held = live_on.get(chunk_id)
            ours = live = None
            if held is None:
                pass
            elif type(held) is dict:
                ours = held.pop(aid, None)
                if held:
                    live = held
                else:
                    del live_on[chunk_id]
            elif held is a:
                ours = held
                del live_on[chunk_id]
            else:
                live = {held.assignment_id: held}  # another read of it; ours had been moved away
            if chunk_id in done:
                continue  # a duplicate landed second: same bytes, count them once
            if on_cover is not None and ours is None and live is None:
                on_cover(chunk_id, +1)  # it covered nothing a moment ago (its read had been moved away)
            landed.append(chunk_id)
            if chunk_id in pending_ids:
                pending.remove(chunk_id)
            if live is None:
                continue
            del live_on[chunk_id]
            for other_id, other in live.items():
                if len(other.chunk_ids) == 1:
                    self._cancel.append(other_id)
                # A merged assignment also reading other chunks carries on: its bytes for
                # this chunk are the same, and its other chunks still need them.
                self._drop_live_if_idle(other)
        done.add_new(landed)
        landed_bytes, landed_chunks = sum([sizes[c] for c in landed]), len(landed)
        self.bytes_done += landed_bytes
        self.chunks_done += landed_chunks
        self.bytes_by_seed[a.seed_id] = self.bytes_by_seed.get(a.seed_id, 0) + landed_bytes
        self.bytes_by_kind[a.source_kind] = self.bytes_by_kind.get(a.source_kind, 0) + landed_bytes
        if self.chunks_done == len(self._plan):
            self.state, self.finished_at = DONE, now

    def _failed(self, a: Assignment, chunk_ids: list[int], report: Report, now: float) -> None:
        failures = self.consecutive_failures.get(a.seed_id, 0)
        # 'seed_lost' means the read never started: the agent saw its seed down (it
        # deregisters it, and the registry drops it) or the client held off a source
        # whose previous read just failed. Neither is evidence against the source by
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
            self._failed_on.setdefault(chunk_id, set()).add(a.seed_id)
            self._failed_chunks.setdefault(a.seed_id, ChunkSet()).add(chunk_id)
            attempts = self._attempts.get(chunk_id, 0)
            if really_failed:
                attempts = self._attempts[chunk_id] = attempts + 1  # a read that never started is not an attempt
            if not self.covers(chunk_id) and not self.streamed_mask >> chunk_id & 1:
                self.pending.appendleft(chunk_id)  # retries go first: they gate completion
                self.retried_chunks += 1
            if attempts >= self.config.max_attempts_per_chunk:
                self._fail(now, f"chunk {chunk_id} failed {attempts} times; last: {report.reason}: {report.error}")
                return
        if failures >= self.config.seed_failure_threshold:
            self.exclude(a.seed_id, f"{report.reason or 'read_failed'}: {report.error or 'no detail'}", now,
                         incarnation=a.incarnation)

    def exclude(self, source_id: str, reason: str, now: float, incarnation: str | None = None) -> None:
        """Stop using a source's ``incarnation`` for this job (it failed our reads) and re-queue what it held.

        ``incarnation`` defaults to the latest one this job has seen for the source.
        """
        if source_id in self.excluded or self.state != RUNNING:
            return
        self.excluded_incarnation[source_id] = (self.incarnation.get(source_id, "") if incarnation is None
                                                else incarnation)
        self.excluded[source_id] = reason
        self._requeue_live(source_id)

    def _readmit_restarted(self, sources: list[SourceView]) -> None:
        """A source excluded in one incarnation and registered again in another is eligible again.

        Its failures (e.g. ``agent_unreachable`` while its agent restarted) were evidence
        against the incarnation that is gone. The same incarnation, however often it
        registers, stays excluded: a seed whose reads keep failing is still bad.
        """
        incarnation, excluded = self.incarnation, self.excluded
        for s in sources:
            incarnation[s.source_id] = s.incarnation
            if excluded and s.source_id in excluded and self.excluded_incarnation.get(s.source_id) != s.incarnation:
                del self.excluded[s.source_id]
                self.excluded_incarnation.pop(s.source_id, None)
                self.consecutive_failures[s.source_id] = 0
                self.readmissions[s.source_id] = self.readmissions.get(s.source_id, 0) + 1

    def seed_lost(self, source_id: str, reason: str, now: float) -> None:
        """The source left (missed heartbeats, deregistered, re-registered with new memory, a peer withdrew).

        Its in-flight chunks move elsewhere at once, but it is not excluded: it
        failed none of our reads, and if it comes back (re-registers) its new
        pointers are used for new assignments. The no-seed grace counts from
        this moment, when a source was last known alive.
        """
        if self.state != RUNNING:
            return
        self.lost[source_id] = reason
        self.last_seed_seen_at = max(self.last_seed_seen_at, now)
        self._requeue_live(source_id)

    def _requeue_live(self, source_id: str) -> None:
        requeue = []
        theirs = [a for a in self.live.values() if a.seed_id == source_id]
        touched = [c for a in theirs for c in a.chunk_ids]
        before = self._covering(touched)
        for a in theirs:
            for chunk_id in a.chunk_ids:
                if self._unlive(chunk_id, a.assignment_id) is not None and not self.covers(chunk_id) \
                        and chunk_id not in self.pending and not self.streamed_mask >> chunk_id & 1:
                    requeue.append(chunk_id)
            self._cancel.append(a.assignment_id)
            self._unset_live(a)
        for chunk_id in reversed(sorted(requeue)):  # at the front, in order
            self.pending.appendleft(chunk_id)
            self.retried_chunks += 1
        self._cover_changes(touched, before)

    def _fail_if_no_sources(self, eligible: list[SourceView], sources: list[SourceView], now: float) -> None:
        if sources and not eligible and any(s.source_id != self.peer_id for s in sources):
            # Every registered source is excluded; the seeds that left before are named too,
            # so the error accounts for every seed the job had, not only the last ones standing.
            self._fail(now, "no eligible seed left: " + self._exclusions() + self._losses())
        elif now - self.last_seed_seen_at > self.config.no_seed_grace_seconds:
            self._fail(now, f"no live seed for {now - self.last_seed_seen_at:.0f} s"
                       + self._losses()
                       + (f"; excluded: {self._exclusions()}" if self.excluded else ""))

    def _exclusions(self) -> str:
        return "; ".join(f"{seed} ({why})" for seed, why in sorted(self.excluded.items())) or "none registered"

    def _losses(self) -> str:
        """'; lost: <seed> (<why>); ...' for the seeds that left and are not excluded, or ''."""
        lost = [(seed, why) for seed, why in sorted(self.lost.items()) if seed not in self.excluded]
        return "; lost: " + "; ".join(f"{seed} ({why})" for seed, why in lost) if lost else ""

    def _fail(self, now: float, error: str) -> None:
        self.state, self.error, self.finished_at = FAILED, error, now
        for chunk_id in sorted(self._live_on):
            self._cancel.extend(self._holders(chunk_id))
            if chunk_id not in self.done_chunks and self.on_cover is not None:
                self.on_cover(chunk_id, -1)
        self._live_on.clear()
        self.live.clear()
        self._live_count.clear()

    def cancel(self, now: float, why: str) -> None:
        self._fail(now, why)

    # -- views -------------------------------------------------------------
    def take_cancellations(self) -> list[str]:
        out, self._cancel = list(dict.fromkeys(self._cancel)), []  # a merged assignment is listed once
        return out

    def live_by_seed(self) -> dict[str, int]:
        """Assignments in flight per source id."""
        return dict(self._live_count)

    def progress(self) -> dict:
        return {
            "bytes_done": self.bytes_reported, "bytes_total": self.bytes_total,
            "chunks_done": self.chunks_done + self.chunks_streaming, "chunks_total": len(self._plan),
            "retried_chunks": self.retried_chunks,
            # Every source that failed this job, worst state last: failed a read, left, excluded.
            "failed_seeds": {**self.last_failure, **self.lost, **self.excluded},
            "bytes_by_seed": dict(self.bytes_by_seed), "bytes_resumed": self.bytes_resumed,
            "bytes_from_seeds": self.bytes_by_kind.get(SEED, 0), "bytes_from_peers": self.bytes_by_kind.get(PEER, 0) + self.bytes_streaming,
        }
