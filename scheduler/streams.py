"""Stripe trees: which parent each member of a swarm streams each stripe of the chunks from.

Pure: no clock, no I/O; the scheduler's side of the stream data path (docs/fleet.md,
"Streams"), used so far by the design study (``sim/stream_study.py``), whose CPU
accounting is then this code's. The chunks of a (model, rank) are split into
``stripes`` contiguous ranges; each stripe flows from the seeds down its own tree of
members. A member is *interior* in one stripe, its home (the members' join order,
round robin), with up to ``fanout`` children there, and a leaf in every other: with
``fanout`` = ``stripes`` every member uploads about one model, and the seeds send each
stripe once, to its root (SplitStream's layout).

Members join one at a time, as their jobs arrive; the trees are built as they come:

- in its home stripe a member takes the next heap position: the k-th interior of a stripe
  hangs below interior (k - 1) // fanout, taking a leaf's slot there if it must (the leaf
  moves below the new interior), so trees stay ``log_fanout(N / stripes)`` deep;
- in every other stripe it is a leaf below the earliest-joined live interior with a free
  slot, or, when every interior is full, the least loaded of the latest ones (the stripe's
  next interior takes that surplus over); while the stripe has no interior yet (fewer
  members than stripes), below the first member the seeds feed it to, else the seeds;
- a member that becomes its home stripe's first interior takes the seeds as its parent
  there and *adopts* the members that had been given the seeds for that stripe (there
  was nobody else), up to ``fanout``: in a burst of joins the seeds still send each
  stripe once.

A member that leaves (its reads fail, it withdrew) orphans its children; each orphaned
stream is one :meth:`StripeTrees.reparent` decision, the orphans that relay the stripe
first (so the leaves then find their subtrees fed again), the stripe's own interiors before
leaves that had taken orphans of their own. An orphan that relays the stripe
to children of its own goes to the seeds, for ``extra_roots`` such orphans per stripe:
every member's upload is in use, so below any member the orphan's whole subtree would
share that member's upload with its own children and trail the swarm, while the seeds'
upload is idle once the first copy is out. When the member that left was itself fed by
the seeds (a stripe's root, or an extra root), its first relaying orphan takes its place
there without counting as an extra root: the stripe keeps the relays the seeds fed. An extra
root costs the seeds what it lacks of the stripe, a replacement what the seeds had sent the
dead relay and it lacks (``progress`` of the dead; unknown: what it lacks); given the stripes'
sizes, all of them together at most half a model, of which extra roots leave one stripe's worth
for replacements. Otherwise the first live interior of the stripe with a free slot (of the
``candidates`` earliest) whose upload is not in full use already (``fanout`` streams over all
stripes: an extra root relays two) and that is fed: neither below the orphan (a
cycle) nor below a dead member (another orphan's stalled subtree); else, of
``candidates`` members sampled at random, the such one whose upload the fewest streams
share (the scheduler's count; without it, the fewest children in the stripe); else the
nearest such ancestor of the old parent; else the seeds. How far along a candidate is does
not decide: the scheduler knows it from reports up to a second old, and an orphan that
had just reported looked ahead of every other member, so every orphan of a death went to
the old parent's nearest ancestor, the stripe's root, whose upload then fed the whole
stripe over 14 streams instead of 8. A join or a re-parent costs
O(fanout + candidates x depth), whatever N; a leave O(N / stripes). :meth:`StripeTrees.move` puts a
member (and its subtree) below a parent the caller knows holds the whole stripe already: the scheduler's
endgame (scheduler/stream_swarm.py) moves slow streams to finished members that way.

    >>> trees = StripeTrees(stripes=2, fanout=2)
    >>> [trees.join(m) for m in "abc"]       # each join: (member, stripe, new parent) moves
    [[('a', 0, None), ('a', 1, None)], [('b', 0, 'a'), ('b', 1, None), ('a', 1, 'b')], [('c', 0, 'a'), ('c', 1, 'b')]]
    >>> trees.parent("a", 1), trees.leave("a")
    ('b', [('b', 0), ('c', 0)])
    >>> [trees.reparent(m, s, progress=lambda member, stripe: 0) for m, s in [("b", 0), ("c", 0)]]
    [('b', 0, None), ('c', 0, 'b')]
"""

from __future__ import annotations

import random
from collections import deque
from itertools import islice
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

__all__ = ["EXTRA_ROOTS_PER_STRIPE", "SEEDS", "Move", "StripeTrees"]

SEEDS = None
"""The parent of a stripe's root: the seeds (their agents' leases)."""

EXTRA_ROOTS_PER_STRIPE = 3
"""Orphaned relays the seeds take on per stripe. In the fleet simulation (128 members, 2 of 4 seeds
and 5 % of the members killed; docs/benchmarks.md), 64 random draws at first: 0 / 1 / 2 / 3 per
stripe grew time-to-all by at most 50.1 / 31.1 / 26.3 / 33.5 % (12 / 4 / 4 / 3 draws over 25 %).
With the rules as they are now (replacements' cost, the reserve, busy uploads skipped), 256 draws:
2 / 3 / 4 per stripe, 3 / 0 / 0 draws over 25 %, at most +31.8 / +22.8 / +22.8 %, the seeds serving
at most 1.42 / 1.46 / 1.46 model copies (the half-model budget binds before a fourth)."""

REPLACEMENT_RESERVE_STRIPES = 1
"""Stripes' worth of the seeds' budget for orphaned relays that only replacements may spend."""

Member = Hashable
Move = tuple[Member, int, "Member | None"]
"""(member, stripe, its new parent there; ``SEEDS`` for the seeds)."""
Progress = Callable[[Member, int], int]
"""Chunks of a stripe a member has landed (the scheduler knows them from the members' progress reports;
a member that left may still be asked, negative: not known)."""
UploadLoad = Callable[[Member], int]
"""Streams reading from a member now, in every stripe (the scheduler counts them)."""


@dataclass
class _Node:
    index: int
    home: int
    parents: list
    children: list[set] = field(default_factory=list)
    alive: bool = True


class StripeTrees:
    """The stripe trees of one swarm (one model, rank and chunk plan)."""

    def __init__(self, stripes: int, fanout: int, candidates: int = 16, rng: random.Random | None = None,
                 extra_roots: int = EXTRA_ROOTS_PER_STRIPE, stripe_chunks: Sequence[int] | None = None) -> None:
        if stripes < 1 or fanout < 1 or candidates < 1:
            raise ValueError(f"stripes, fanout and candidates must be >= 1, got {stripes}, {fanout}, {candidates}")
        if extra_roots < 0:
            raise ValueError(f"extra_roots must be >= 0, got {extra_roots}")
        if stripe_chunks is not None and (len(stripe_chunks) != stripes or min(stripe_chunks) < 0):
            raise ValueError(f"stripe_chunks must give each of the {stripes} stripes' chunk count, got {stripe_chunks}")
        self.stripes, self.fanout, self.candidates = stripes, fanout, candidates
        self.extra_roots = extra_roots
        self._extra_roots_used = [0] * stripes
        self._replaced: set = set()
        """(dead member, stripe) whose place a relaying orphan took on the seeds."""
        self._stripe_chunks = list(stripe_chunks) if stripe_chunks is not None else None
        self.extra_root_chunks_left = sum(stripe_chunks) // 2 if stripe_chunks is not None else None
        """What the seeds may still send to orphaned relays, in chunks: half a model over the trees' life
        (``stripe_chunks`` given), whatever the members' count, so that with the first copy and the reads
        retried after faults they serve under two (one model: up to 2.35 copies in the 1024-member fault
        runs, docs/benchmarks.md); None: only the per-stripe count bounds it."""
        self._nodes: dict[Member, _Node] = {}
        self._members: list = []  # every member that joined, for sampling (the dead are skipped as unusable)
        self._rng = rng if rng is not None else random.Random(0)
        self._joined = 0
        # Per stripe: its interiors in join order that may have a free slot (full or dead ones are
        # dropped when met), all its live interiors, and the members given the seeds for want of one.
        self._open: list[deque] = [deque() for _ in range(stripes)]
        self._interiors: list[list] = [[] for _ in range(stripes)]
        self._on_seeds: list[list] = [[] for _ in range(stripes)]
        self._is_open: set = set()
        self._over: list[deque] = [deque() for _ in range(stripes)]
        self._heap: list[list] = [[] for _ in range(stripes)]  # each stripe's relays in heap order

    def __len__(self) -> int:
        return sum(1 for n in self._nodes.values() if n.alive)

    def parent(self, member: Member, stripe: int) -> Member | None:
        return self._nodes[member].parents[stripe]

    def children(self, member: Member, stripe: int) -> set:
        return set(self._nodes[member].children[stripe])

    def home(self, member: Member) -> int:
        return self._nodes[member].home

    def join(self, member: Member) -> list[Move]:
        """Place a new member in every stripe; returns its parents and any adopted member's new parent."""
        if member in self._nodes:
            raise ValueError(f"member {member!r} has already joined these stripe trees")
        home = self._joined % self.stripes
        self._joined += 1
        node = self._nodes[member] = _Node(self._joined - 1, home, [SEEDS] * self.stripes,
                                           [set() for _ in range(self.stripes)])
        self._members.append(member)
        moves: list[Move] = []
        root_of_home = not self._interiors[home]
        displaced = None
        if root_of_home:
            self._heap[home] = [member]
        else:
            self._heap[home].append(member)
        for s in range(self.stripes):
            if s != home:
                parent = self._place(s)
            elif root_of_home:
                parent = SEEDS  # the first interior of its home stripe is that stripe's root
            else:
                parent, displaced = self._place_interior(s)
            self._attach(member, s, parent)
            moves.append((member, s, parent))
        if displaced is not None:  # it gave its slot to a relay and hangs below that relay instead
            self._move(displaced, home, member, moves)
        over = self._over[home]
        while over and not root_of_home and len(node.children[home]) < self.fanout:
            q = over[0]
            extra = [c for c in self._nodes[q].children[home] if self._nodes[c].home != home]
            if not self._nodes[q].alive or len(self._nodes[q].children[home]) <= self.fanout or not extra:
                over.popleft()
                continue
            self._move(max(extra, key=lambda c: self._nodes[c].index), home, member, moves)
        self._interiors[home].append(member)
        self._open[home].append(member)
        self._is_open.add((member, home))
        if root_of_home:
            # Adopt those the seeds fed this stripe to for want of an interior, and the members a
            # stand-in relayed it to, up to fanout: the stripe's relays are its own interiors again.
            waiting, self._on_seeds[home] = self._on_seeds[home], []
            for fed in waiting:
                fed_node = self._nodes[fed]
                if not fed_node.alive or fed_node.parents[home] is not SEEDS:
                    continue
                for other in [fed, *sorted(fed_node.children[home], key=lambda m: self._nodes[m].index)]:
                    if len(node.children[home]) >= self.fanout:
                        if other == fed:
                            self._on_seeds[home].append(fed)
                        break
                    self._move(other, home, member, moves)
        return moves

    def leave(self, member: Member) -> list[tuple[Member, int]]:
        """Take a member out (dead or withdrawn); returns its orphaned (child, stripe) streams to re-parent."""
        node = self._nodes.get(member)
        if node is None or not node.alive:
            return []
        node.alive = False
        orphans = []
        for s in range(self.stripes):
            for child in sorted(node.children[s], key=lambda m: self._orphan_order(m, s)):
                orphans.append((child, s))
            parent = node.parents[s]
            if parent is not SEEDS:
                self._nodes[parent].children[s].discard(member)
                self._reopen(parent, s)
        self._interiors[node.home].remove(member)
        return orphans

    def _orphan_order(self, member: Member, stripe: int) -> tuple:
        """Relays first: a leaf re-parented before them finds their subtrees unfed. Of the relays, the
        stripe's own interiors first: the first relay takes a dead root's place on the seeds, and an
        interior's upload is this stripe's, where a leaf that had taken orphans (its upload its home
        stripe's) made the whole stripe flow through one share of it (docs/benchmarks.md, draw 952)."""
        node = self._nodes[member]
        relays = bool(node.children[stripe])
        return (not relays, relays and node.home != stripe, node.index)

    def reparent(self, member: Member, stripe: int, progress: Progress,
                 upload_load: UploadLoad | None = None) -> Move:
        """A new parent in ``stripe`` for a member whose parent left (or whose reads from it failed).

        ``upload_load`` gives the streams reading from a member now (all stripes): with it, an orphan
        without a free slot goes where the upload is least shared; without it, to the member with
        the fewest children in this stripe."""
        node = self._nodes[member]
        old = self._detach(member, stripe)
        have = progress(member, stripe)

        def usable(q: Member) -> bool:
            """Alive and fed: not below the member (a cycle) nor below a dead member (an orphan not
            re-parented yet, or its subtree: orphans hung below each other's stalled subtrees made
            chains 7-8 deep after one relay died, each hop sharing an upload). Not its progress:
            see the module doc."""
            if q == member or not self._nodes[q].alive:
                return False
            up = self._nodes[q].parents[stripe]
            while up is not SEEDS:
                if up == member or not self._nodes[up].alive:
                    return False
                up = self._nodes[up].parents[stripe]
            return True

        # A relay whose parent the seeds fed takes its place there (once per such parent); other
        # relays are extra roots while the stripe has any left.
        replaces = (old is not SEEDS and not self._nodes[old].alive and self._nodes[old].parents[stripe] is SEEDS
                    and (old, stripe) not in self._replaced)
        if node.children[stripe] and (replaces or self._extra_roots_used[stripe] < self.extra_roots):
            # A relay: its subtree follows it (see the module doc). An extra root costs the seeds what
            # it lacks of the stripe; a replacement only what they had sent the dead relay and must
            # send again (the rest they were sending anyway). Charged what it lacked, a root that died
            # 0.2 s in cost 160 chunks (0.12 of a model) to replace where the seeds had sent it ~50, and
            # the half model was gone before a later death needed it (docs/benchmarks.md, 2026-12-04).
            cost = 0
            if self._stripe_chunks is not None:
                lacks = max(self._stripe_chunks[stripe] - have, 0)
                dead_had = progress(old, stripe) if replaces else -1
                cost = lacks if dead_had < 0 else min(max(dead_had - have, 0), lacks)
            # Extra roots leave the seeds a stripe's worth for replacements: a root that dies late
            # orphans its whole stripe, and the early deaths' extra roots had spent the budget.
            floor = 0 if replaces or self._stripe_chunks is None else (
                REPLACEMENT_RESERVE_STRIPES * max(self._stripe_chunks))
            if self.extra_root_chunks_left is None or cost + floor <= self.extra_root_chunks_left:
                if replaces:
                    self._replaced.add((old, stripe))
                else:
                    self._extra_roots_used[stripe] += 1
                if self.extra_root_chunks_left is not None:
                    self.extra_root_chunks_left -= cost
                self._attach(member, stripe, SEEDS)
                return (member, stripe, SEEDS)
        choice = SEEDS
        open_ = self._open[stripe]
        for q in islice(open_, self.candidates):
            # A free slot in its home stripe, and an upload not already shared by ``fanout`` streams
            # (an extra root relays a second stripe: its home slots are not all free upload).
            if len(self._nodes[q].children[stripe]) < self.fanout and usable(q) and (
                    upload_load is None or upload_load(q) < self.fanout):
                choice = q
                break
        else:
            # No free slot: every member's upload is in use (each relays its home stripe). The
            # orphan goes to the usable member with the fewest children in this stripe among a
            # random sample of all of them, mostly leaves here: its extra upload is one stream,
            # spread over the swarm rather than piled on the stripe's first relays. (Preferring
            # shallow members instead kept trees shallower but slowed the study's fault runs.)
            sample = self._rng.sample(self._members, min(self.candidates, len(self._members)))
            usable_members = [q for q in sample if usable(q)]
            if usable_members:
                # Fewest children, then the shallowest: orphans hung below orphans make chains,
                # each hop a read batch behind the one above it.
                # With the streams reading from each member known: the least shared upload, which
                # is what the orphan's subtree will flow at (children in this stripe miss the other
                # stripes' readers, and orphans hung there before).
                load = upload_load if upload_load is not None else (
                    lambda q: len(self._nodes[q].children[stripe]))
                choice = min(usable_members, key=lambda q: (load(q), self._depth(q, stripe)))
            else:
                up = old
                while up is not SEEDS and not usable(up):
                    up = self._nodes[up].parents[stripe]
                choice = up
        self._attach(member, stripe, choice)
        return (member, stripe, choice)

    def is_below(self, member: Member, ancestor: Member, stripe: int) -> bool:
        """Whether ``ancestor`` feeds ``member`` in ``stripe`` (is its parent, or its parent's, ...)."""
        up, hops = self._nodes[member].parents[stripe], 0
        while up is not SEEDS and hops <= len(self._nodes):  # (bounded: a cycle is a bug, never a hang)
            if up == ancestor:
                return True
            up, hops = self._nodes[up].parents[stripe], hops + 1
        return False

    def move(self, member: Member, stripe: int, parent: Member) -> Move:
        """``member`` (with its subtree) now reads ``stripe`` from ``parent``, a member that holds the
        whole stripe already (the caller knows: a finished member), so it needs no feed of its own."""
        target = self._nodes[parent]
        if parent == member or not target.alive or self.is_below(parent, member, stripe):
            raise ValueError(f"{parent!r} cannot feed {member!r} stripe {stripe}: it is the member, gone, "
                             "or below it there")
        self._detach(member, stripe)
        self._attach(member, stripe, parent)
        return (member, stripe, parent)

    # -- internals -------------------------------------------------------------------------
    def _depth(self, member: Member, stripe: int) -> int:
        depth, up = 0, self._nodes[member].parents[stripe]
        while up is not SEEDS:
            depth, up = depth + 1, self._nodes[up].parents[stripe]
        return depth

    def _place(self, stripe: int) -> Member | None:
        open_ = self._open[stripe]
        while open_:
            q = open_[0]
            node = self._nodes[q]
            if node.alive and len(node.children[stripe]) < self.fanout:
                return q
            open_.popleft()  # full or gone: a leave or re-parent that frees a slot puts it back
            self._is_open.discard((q, stripe))
        live = self._interiors[stripe]
        if live:
            # Every slot is taken (more members than this stripe has relays for, until its next
            # relay joins and takes the surplus over): the least loaded of the latest relays, at the
            # trees' edge, so the next relay still finds a leaf to displace near the root.
            q = min(live[-self.candidates:], key=lambda q: len(self._nodes[q].children[stripe]))
            self._over[stripe].append(q)
            return q
        # No interior yet (fewer members than stripes so far): the first member the seeds feed this
        # stripe to stands in as its relay, so the seeds still send it once.
        for q in self._on_seeds[stripe][:self.candidates]:
            node = self._nodes[q]
            if node.alive and node.parents[stripe] is SEEDS and len(node.children[stripe]) < self.fanout:
                return q
        return SEEDS

    def _place_interior(self, stripe: int) -> tuple[Member, Member | None]:
        """A parent for a new relay of ``stripe``, and the leaf it displaces there (None: a free slot).

        Relays sit at heap positions: the k-th relay of a stripe hangs below relay (k - 1) //
        fanout, so relays form a ``fanout``-ary tree ``log_fanout(N / stripes)`` deep. If that
        parent is full, the new relay takes a leaf's slot and the leaf hangs below the new relay.
        Without this, with ``fanout`` = ``stripes`` (every slot needed), each relay would fill with
        the next members, the next relay among them: a chain N / stripes deep.
        """
        heap = self._heap[stripe]
        parent = heap[(len(heap) - 1) // self.fanout]
        node = self._nodes[parent]
        if not node.alive:
            return self._place(stripe), None
        children = node.children[stripe]
        if len(children) < self.fanout:
            return parent, None
        leaves = [c for c in children if self._nodes[c].home != stripe]
        return parent, (max(leaves, key=lambda c: self._nodes[c].index) if leaves else None)

    def _move(self, member: Member, stripe: int, parent: Member, moves: list[Move]) -> None:
        old = self._nodes[member].parents[stripe]
        if old is not SEEDS:
            self._nodes[old].children[stripe].discard(member)
        self._attach(member, stripe, parent)
        moves.append((member, stripe, parent))

    def _detach(self, member: Member, stripe: int) -> Member | None:
        """Take ``member`` out of its parent's children in ``stripe`` (its slot reopens); returns that parent."""
        old = self._nodes[member].parents[stripe]
        if old is not SEEDS:
            self._nodes[old].children[stripe].discard(member)
            self._reopen(old, stripe)
        return old

    def _attach(self, member: Member, stripe: int, parent: Member | None) -> None:
        node = self._nodes[member]
        node.parents[stripe] = parent
        if parent is SEEDS:
            if stripe != node.home or self._interiors[stripe]:
                self._on_seeds[stripe].append(member)
        else:
            self._nodes[parent].children[stripe].add(member)

    def _reopen(self, member: Member, stripe: int) -> None:
        node = self._nodes[member]
        if node.alive and node.home == stripe and len(node.children[stripe]) < self.fanout \
                and (member, stripe) not in self._is_open:
            self._open[stripe].append(member)
            self._is_open.add((member, stripe))
