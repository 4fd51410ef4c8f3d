"""scheduler/streams.py: stripe trees built as members join, and re-parented as they leave."""

from __future__ import annotations

import copy
import doctest
import math
import random

import pytest

import scheduler.streams as streams
from scheduler.streams import SEEDS, StripeTrees


def burst(n: int, stripes: int, fanout: int) -> StripeTrees:
    trees = StripeTrees(stripes, fanout)
    for m in range(n):
        trees.join(m)
    return trees


def live(trees: StripeTrees, n: int) -> list[int]:
    return [m for m in range(n) if trees._nodes[m].alive]


def check_trees(trees: StripeTrees, members: list[int], extra_roots: int = 0) -> None:
    """Every live member reaches the seeds in every stripe through live members, without a cycle;
    each stripe is sent by the seeds once (and at most ``extra_roots`` more times: orphaned relays)."""
    for s in range(trees.stripes):
        roots = [m for m in members if trees.parent(m, s) is SEEDS]
        assert 1 <= len(roots) <= 1 + extra_roots, f"stripe {s}: the seeds feed {roots}"
        for m in members:
            seen, node = set(), m
            while trees.parent(node, s) is not SEEDS:
                assert node not in seen, f"stripe {s}: a cycle through {node}"
                seen.add(node)
                node = trees.parent(node, s)
                assert trees._nodes[node].alive, f"stripe {s}: {m} hangs below {node}, which left"
            for c in trees.children(m, s):
                assert trees.parent(c, s) == m


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9, 16, 64, 300])
@pytest.mark.parametrize("stripes, fanout", [(8, 8), (4, 4), (3, 2)])
def test_a_burst_of_joins_makes_one_tree_per_stripe_fed_once_by_the_seeds(n, stripes, fanout):
    trees = burst(n, stripes, fanout)
    check_trees(trees, list(range(n)))


@pytest.mark.parametrize("n", [8, 64, 512])
def test_trees_are_shallow_and_every_member_uploads_about_one_model(n):
    stripes = fanout = 8
    trees = burst(n, stripes, fanout)
    depth = 0
    for s in range(stripes):
        for m in range(n):
            d, node = 0, m
            while trees.parent(node, s) is not SEEDS:
                node, d = trees.parent(node, s), d + 1
            depth = max(depth, d)
    assert depth <= math.ceil(math.log(max(n / stripes, 1), fanout)) + 1
    # A member relays its home stripe to at most `fanout` children: one model's worth of upload
    # (fanout / stripes), and nothing of the other stripes.
    for m in range(n):
        per_stripe = [len(trees.children(m, s)) for s in range(stripes)]
        assert max(per_stripe) <= fanout
        assert sum(per_stripe) == per_stripe[trees.home(m)]


def test_fewer_members_than_stripes_still_take_each_stripe_once_from_the_seeds():
    trees = burst(2, 8, 8)
    assert [trees.parent(1, s) for s in range(8)] == [0, SEEDS, 0, 0, 0, 0, 0, 0]
    assert [trees.parent(0, s) for s in range(8)] == [SEEDS, 1, SEEDS, SEEDS, SEEDS, SEEDS, SEEDS, SEEDS]


def test_the_home_stripes_first_interior_adopts_what_a_stand_in_relayed():
    trees = StripeTrees(stripes=4, fanout=4)
    moves = [trees.join(m) for m in range(4)]
    # Member 3 roots stripe 3, which member 0 stood in for (relaying it to 1 and 2): all three move under 3.
    assert moves[3] == [(3, 0, 0), (3, 1, 1), (3, 2, 2), (3, 3, SEEDS), (0, 3, 3), (1, 3, 3), (2, 3, 3)]
    assert trees.children(0, 3) == set()


@pytest.mark.parametrize("rng_seed", range(6))
def test_members_leaving_at_random_are_re_parented_without_cycles_or_dead_parents(rng_seed):
    rng = random.Random(rng_seed)
    n, stripes, fanout = 200, 8, 8
    trees = burst(n, stripes, fanout)
    progress = {(m, s): rng.randrange(100) for m in range(n) for s in range(stripes)}
    decisions = 0
    for victim in rng.sample(range(n), 20):
        for child, s in trees.leave(victim):
            member, stripe, parent = trees.reparent(child, s, lambda m, st: progress[m, st])
            decisions += 1
            assert (member, stripe) == (child, s)
            assert parent is SEEDS or trees._nodes[parent].alive
    for s in range(stripes):  # the seeds feed a stripe to its root and to orphans nobody could take
        for m in live(trees, n):
            seen, node = set(), m
            while trees.parent(node, s) is not SEEDS:
                assert node not in seen
                seen.add(node)
                node = trees.parent(node, s)
                assert trees._nodes[node].alive
    assert decisions > 0


def test_a_root_that_leaves_is_replaced_from_below_without_extra_roots():
    trees = StripeTrees(4, 4, extra_roots=0)
    for m in range(16):
        trees.join(m)
    root = next(m for m in range(16) if trees.parent(m, 0) is SEEDS)
    orphans = trees.leave(root)
    moves = [trees.reparent(c, s, lambda m, st: 0) for c, s in orphans]
    stripe0 = [p for (c, s, p) in moves if s == 0]
    assert stripe0.count(SEEDS) == 1  # one orphan becomes the new root; the rest hang below it
    check_trees(trees, live(trees, 16))


@pytest.mark.parametrize("extra_roots", [1, 2, 3])
def test_orphaned_relays_are_fed_by_the_seeds_up_to_the_stripes_budget(extra_roots):
    """A relay whose parent left goes to the seeds (every member's upload is in use, the seeds' is
    idle after the first copy), at most ``extra_roots`` times per stripe; leaves and the relays
    past the budget hang below live members as before."""
    n, stripes, fanout = 64, 4, 4
    trees = StripeTrees(stripes, fanout, extra_roots=extra_roots)
    for m in range(n):
        trees.join(m)
    relaying = []  # stripe 0's orphans with children of their own, in order, and their new parents
    for victim in [0, 4, 8]:  # relays of stripe 0, one below another
        for child, s in trees.leave(victim):
            relays = bool(trees.children(child, s))
            _, _, parent = trees.reparent(child, s, lambda m, st: 0)
            if s == 0 and relays:
                relaying.append(parent)
    assert len(relaying) > extra_roots
    assert relaying[:extra_roots] == [SEEDS] * extra_roots  # the first ones, up to the budget
    assert trees._extra_roots_used == [extra_roots, 0, 0, 0]
    check_trees(trees, live(trees, n), extra_roots)


def test_leaving_twice_or_unknown_is_a_no_op_and_joining_twice_is_refused():
    trees = burst(3, 2, 2)
    assert trees.leave(0) and trees.leave(0) == [] and trees.leave("nobody") == []
    with pytest.raises(ValueError, match="member 1 has already joined"):
        trees.join(1)


@pytest.mark.parametrize("args", [(0, 8), (8, 0), (8, 8, 0)])
def test_bad_sizes_are_refused(args):
    with pytest.raises(ValueError, match="must be >= 1"):
        StripeTrees(*args)


def test_doctests():
    assert doctest.testmod(streams).failed == 0


def test_members_joining_after_others_left_still_make_valid_trees():
    rng = random.Random(5)
    trees = burst(64, 8, 8)
    for victim in rng.sample(range(64), 6):
        for child, s in trees.leave(victim):
            trees.reparent(child, s, lambda m, st: 0)
    for m in range(64, 96):  # a second wave, some of whose heap parents are gone
        trees.join(m)
    members = live(trees, 96)
    assert len(members) == 90 == len(trees)
    for s in range(trees.stripes):
        for m in members:
            seen, node = set(), m
            while trees.parent(node, s) is not SEEDS:
                assert node not in seen
                seen.add(node)
                node = trees.parent(node, s)
                assert trees._nodes[node].alive, f"stripe {s}: {m} hangs below {node}, which left"


def _relay_fed_by_a_member(trees: StripeTrees, n: int, stripe: int = 0):
    """A relay of ``stripe`` whose parent is a member fed by the seeds, with relays below it."""
    return next(m for m in range(n) if trees._nodes[m].home == stripe and trees.parent(m, stripe) is not SEEDS
                and trees.parent(trees.parent(m, stripe), stripe) is SEEDS
                and any(trees.children(c, stripe) for c in trees.children(m, stripe)))


def test_extra_roots_leave_a_stripes_worth_of_the_half_model_for_replacements():
    """With the stripes' sizes known, the seeds send orphaned relays at most half a model in all. An
    extra root costs what it lacks of its stripe, and stops a stripe's worth short of that budget:
    the rest is for a seeds-fed relay that dies later, whose stripe would otherwise lose its feed
    (an orphan over the line goes below a member)."""
    stripes, fanout, n = 4, 4, 256
    trees = StripeTrees(stripes, fanout, extra_roots=8, stripe_chunks=[10] * stripes)
    for m in range(n):
        trees.join(m)
    assert trees.extra_root_chunks_left == 20  # half of the 4 x 10 chunks
    assert streams.REPLACEMENT_RESERVE_STRIPES == 1  # 10 of them kept for replacements
    have = {}  # everyone has 1 of stripe 0's 10 chunks, but what ``have`` says
    progress = lambda m, st: have.get(m, 1) if st == 0 else 0  # noqa: E731
    victim = _relay_fed_by_a_member(trees, n)
    orphans = [c for c, s in trees.leave(victim) if s == 0]
    relays = [c for c in orphans if trees.children(c, 0)]
    moves = [trees.reparent(c, 0, progress) for c in orphans]
    assert len(relays) >= 2
    assert [p for c, _, p in moves if c in relays].count(SEEDS) == 1  # 9 + 10 fit in 20; 9 + 9 + 10 do not
    assert trees.extra_root_chunks_left == 11
    root = next(m for m in range(n) if trees.parent(m, 0) is SEEDS and trees._nodes[m].home == 0
                and trees._nodes[m].index == 0)
    have[root] = 10  # it had the whole stripe: its first relaying orphan lacks 9 the seeds had sent
    orphans = [c for c, s in trees.leave(root) if s == 0]
    first = trees.reparent(orphans[0], 0, progress)
    assert trees.children(orphans[0], 0) and first[2] is SEEDS, "the root's replacement may spend the reserve"
    assert trees.extra_root_chunks_left == 2
    for c in orphans[1:]:
        trees.reparent(c, 0, progress)
    check_trees(trees, live(trees, n), extra_roots=8)


def test_replacing_a_root_costs_what_the_seeds_had_sent_it_not_the_whole_stripe():
    """A root that dies early had little of its stripe: the seeds send its replacement the rest, which
    they were sending anyway. It cost the whole stripe before (less what the orphan had), and early
    deaths spent the half model that a later one needed."""
    trees = StripeTrees(4, 4, extra_roots=0, stripe_chunks=[100] * 4)
    for m in range(64):
        trees.join(m)
    root = next(m for m in range(64) if trees._nodes[m].home == 0 and trees.parent(m, 0) is SEEDS)
    progress = lambda m, st: {root: 8}.get(m, 2)  # noqa: E731 (its orphans trail it by 6 chunks)
    orphans = [c for c, s in trees.leave(root) if s == 0]
    assert trees.reparent(orphans[0], 0, progress)[2] is SEEDS
    assert trees.extra_root_chunks_left == 200 - 6
    unknown = StripeTrees(4, 4, extra_roots=0, stripe_chunks=[100] * 4)
    for m in range(64):
        unknown.join(m)
    orphans = [c for c, s in unknown.leave(root) if s == 0]
    unknown.reparent(orphans[0], 0, lambda m, st: -1 if m == root else 2)  # the dead's progress not known
    assert unknown.extra_root_chunks_left == 200 - 98


def test_an_orphan_skips_a_free_slot_whose_upload_is_already_in_full_use():
    """A relay with a free slot in its home stripe whose upload already feeds ``fanout`` streams (it
    is an extra root of another stripe too) is no free slot: a leaf orphaned early and hung there
    shared that upload for the rest of the fork and finished last (the fault runs' worst draw)."""
    trees = StripeTrees(4, 4, extra_roots=0)
    for m in range(24):
        trees.join(m)
    victim = next(m for m in range(24) if trees._nodes[m].home == 1 and trees.parent(m, 1) is not SEEDS
                  and trees.children(m, 1))
    orphaned = trees.leave(victim)
    orphans = [c for c, s in orphaned if s == 1 and not trees.children(c, 1)]
    assert orphans
    unconstrained = copy.deepcopy(trees)
    _, _, busy = unconstrained.reparent(orphans[0], 1, lambda m, st: 0, upload_load=lambda q: 1)
    assert busy is not SEEDS and len(unconstrained.children(busy, 1)) <= 4  # a free slot it took
    _, _, parent = trees.reparent(orphans[0], 1, lambda m, st: 0, upload_load=lambda q: 4 if q == busy else 1)
    assert parent not in (busy, SEEDS)
    for c, s in orphaned:
        if (c, s) != (orphans[0], 1):
            trees.reparent(c, s, lambda m, st: 0, upload_load=lambda q: 1)
    check_trees(trees, live(trees, 24))


def test_stripe_sizes_must_match_the_stripes():
    with pytest.raises(ValueError, match="stripe_chunks must give each of the 4 stripes"):
        StripeTrees(4, 4, stripe_chunks=[10, 10])


def test_an_orphan_never_hangs_below_another_orphan_not_yet_re_parented():
    """When a relay dies its orphans are re-parented one at a time; while they wait, their subtrees
    are stalled. A relaying orphan must not go below one (each hop shares an upload: such orphans
    made chains 7-8 deep in the fleet simulation's fault draws)."""
    n, stripes, fanout = 64, 4, 4
    for rng_seed in range(8):
        trees = StripeTrees(stripes, fanout, candidates=64, rng=random.Random(rng_seed), extra_roots=0)
        for m in range(n):
            trees.join(m)
        victim = next(m for m in range(n) if trees.parent(m, 0) is not SEEDS and len(trees.children(m, 0)) == fanout
                      and all(trees.children(c, 0) for c in trees.children(m, 0) if trees._nodes[c].home == 0))
        orphans = trees.leave(victim)
        waiting = {c for c, s in orphans if s == 0}
        for child, s in orphans:
            stalled = set()  # the orphans still waiting in this stripe, and everything below them
            frontier = list(waiting - {child}) if s == 0 else []
            while frontier:
                m = frontier.pop()
                stalled.add(m)
                frontier.extend(trees.children(m, s))
            trees._open[s].clear()  # no free slot: the sampled members decide
            # The stalled members look the least loaded (their readers' reads stopped): the trap.
            _, _, parent = trees.reparent(child, s, lambda m, st: 0,
                                          upload_load=lambda m: 0 if m in stalled else 8)
            assert parent not in stalled, f"seed {rng_seed}: {child} hung below {parent}, itself cut off"
            waiting.discard(child)
        check_trees(trees, live(trees, n))


@pytest.mark.parametrize("rng_seed", range(6))
def test_without_a_free_slot_an_orphan_goes_where_the_upload_is_least_shared(rng_seed):
    """No free slot: the orphan goes below the usable member whose upload the fewest streams read now
    (the scheduler's count over every stripe), the shallower of equals; not the one with the fewest
    children in this stripe, which misses the other stripes' readers."""
    rng = random.Random(rng_seed)
    n, stripes, fanout = 48, 4, 4
    trees = StripeTrees(stripes, fanout, candidates=n, rng=random.Random(rng_seed), extra_roots=0)
    for m in range(n):
        trees.join(m)
    loads = {m: rng.randrange(3, 12) for m in range(n)}
    victim = rng.choice([m for m in range(n) if trees.parent(m, 0) is not SEEDS and trees.children(m, 0)])
    orphan = min(c for c, s in trees.leave(victim) if s == 0)
    trees._open[0].clear()  # every slot taken: the sampled members decide

    def path(m):
        up, hops = [], trees.parent(m, 0)
        while hops is not SEEDS:
            up.append(hops)
            hops = trees.parent(hops, 0)
        return up

    usable = [m for m in range(n) if m != orphan and trees._nodes[m].alive
              and all(trees._nodes[u].alive and u != orphan for u in path(m))]
    _, _, parent = trees.reparent(orphan, 0, lambda m, st: 0, upload_load=loads.__getitem__)
    def key(m):
        return loads[m], len(path(m))

    assert parent in usable and key(parent) == min(map(key, usable))  # ties go to the sample's order


def test_an_orphan_ahead_in_stale_reports_still_goes_where_the_upload_is_free():
    """The scheduler knows progress from reports up to a second old, and an orphan has just reported
    (its stream failed). Compared by progress, every other member looked behind it, and each orphan of
    the death went to the old parent's nearest ancestor: the stripe's root, 14 streams on one upload in
    the fleet simulation's draw 18. Progress no longer decides; the least shared upload does."""
    n, stripes, fanout = 64, 4, 4
    trees = StripeTrees(stripes, fanout, candidates=n, rng=random.Random(3), extra_roots=0)
    for m in range(n):
        trees.join(m)
    victim = next(m for m in range(n) if trees._nodes[m].home == 0 and trees.parent(m, 0) is not SEEDS
                  and trees.children(m, 0) and not any(trees.children(c, 0) for c in trees.children(m, 0)))
    root = next(m for m in range(n) if trees._nodes[m].home == 0 and trees.parent(m, 0) is SEEDS)
    orphans = [c for c, s in trees.leave(victim) if s == 0]
    idle = next(m for m in range(n) if m not in orphans and m not in (victim, root) and trees._nodes[m].home != 0)
    reported = {m: 50 for m in orphans}  # the orphans' reports are fresh; everyone else's say 0
    for child in orphans:
        trees._open[0].clear()  # no free slot: the sampled members decide
        _, _, parent = trees.reparent(child, 0, lambda m, st: reported.get(m, 0),
                                      upload_load=lambda m: 0 if m == idle else 8)
        assert parent == idle, f"{child} went below {parent}, not the idle upload of {idle}"
    check_trees(trees, live(trees, n))


def test_a_leaving_relays_orphans_are_re_parented_relays_first():
    """The leaves after the relays: a leaf re-parented first would find every relay's subtree cut off."""
    trees = burst(64, 4, 4)
    victim = next(m for m in range(64) if trees._nodes[m].home == 0 and trees.parent(m, 0) is SEEDS)
    orphans = [c for c, s in trees.leave(victim) if s == 0]
    relays = [c for c in orphans if trees.children(c, 0)]
    assert relays and orphans[:len(relays)] == relays


def test_a_dead_root_is_replaced_by_one_relaying_orphan_outside_the_extra_roots():
    """A stripe's root dies: its first relaying orphan takes its place on the seeds, which costs no
    extra root; the next relaying orphan is an extra root while the stripe has one left."""
    for extra_roots, expected in ((0, 1), (1, 2)):
        trees = StripeTrees(4, 4, extra_roots=extra_roots, stripe_chunks=[100] * 4)
        for m in range(64):
            trees.join(m)
        root = next(m for m in range(64) if trees._nodes[m].home == 0 and trees.parent(m, 0) is SEEDS)
        orphans = [c for c, s in trees.leave(root) if s == 0]
        moves = [trees.reparent(c, 0, lambda m, st: 0) for c in orphans]
        assert [p for _, _, p in moves].count(SEEDS) == expected, (extra_roots, moves)
        assert moves[0][2] is SEEDS and trees.children(moves[0][0], 0)
        assert trees._extra_roots_used[0] == expected - 1
        check_trees(trees, live(trees, 64), extra_roots=extra_roots)


def test_a_dead_roots_place_goes_to_an_interior_of_its_stripe_before_a_leaf_that_took_orphans():
    """A leaf of the stripe that took an orphan relays it too, but its upload is its home stripe's:
    as the root it would pass the whole stripe through one share of that upload (the fault
    simulation's worst draw, docs/benchmarks.md). The stripe's own interior replaces the root."""
    trees = StripeTrees(stripes=2, fanout=2, extra_roots=0)
    for m in "abcdefgh":
        trees.join(m)
    assert (trees.parent("b", 0), trees.home("b"), trees.parent("c", 0), trees.home("c")) == ("a", 1, "a", 0)
    trees.move("d", 0, "b")  # b, a leaf of stripe 0 joined before c, now relays it to d
    orphans = [c for c, s in trees.leave("a") if s == 0]
    assert orphans == ["c", "b"]  # both relay; the interior first, though it joined later
    moves = [trees.reparent(c, 0, lambda m, st: 0) for c in orphans]
    assert moves[0] == ("c", 0, SEEDS) and moves[1][2] is not SEEDS
    check_trees(trees, [m for m in "bcdefgh"], extra_roots=0)


@pytest.mark.parametrize("budget, replaced", [(100, True), (50, False)])
def test_a_dead_extra_root_is_replaced_within_the_seeds_half_model(budget, replaced):
    """An extra root dies: its first relaying orphan replaces it on the seeds, once, if what it lacks of
    the stripe fits in what the seeds may still send orphaned relays; else it goes below a fed member."""
    trees = StripeTrees(4, 4, extra_roots=1, stripe_chunks=[100] * 4)
    for m in range(64):
        trees.join(m)
    relay = next(m for m in range(64) if trees._nodes[m].home == 0 and trees.parent(m, 0) is not SEEDS
                 and trees.parent(trees.parent(m, 0), 0) is SEEDS and trees.children(m, 0))
    orphans = [c for c, s in trees.leave(relay) if s == 0]
    extra_root = trees.reparent(orphans[0], 0, lambda m, st: 0)[0]
    assert trees.parent(extra_root, 0) is SEEDS and trees.children(extra_root, 0)
    for c in orphans[1:]:
        trees.reparent(c, 0, lambda m, st: 0)
    trees.extra_root_chunks_left = budget
    had_all = lambda m, st: 100 if m == extra_root else 0  # noqa: E731 (the seeds had sent it the stripe)
    orphans = [c for c, s in trees.leave(extra_root) if s == 0]
    first = trees.reparent(orphans[0], 0, had_all)
    assert trees.children(orphans[0], 0), "the first orphan re-parented relays the stripe"
    assert (first[2] is SEEDS) == replaced
    assert trees.extra_root_chunks_left == (0 if replaced else budget)
    rest = [trees.reparent(c, 0, had_all) for c in orphans[1:]]
    assert all(p is not SEEDS for _, _, p in rest), "one replacement per dead relay, no extra root left"
    check_trees(trees, live(trees, 64), extra_roots=1)


def test_a_member_moves_with_its_subtree_to_a_given_parent_and_its_old_parent_reopens():
    trees = burst(64, stripes=4, fanout=4)
    relay = next(m for m in range(64) if trees.home(m) == 0 and trees.children(m, 0) and trees.parent(m, 0) is not SEEDS)
    old, below = trees.parent(relay, 0), trees.children(relay, 0)
    target = next(m for m in range(64) if m != relay and not trees.is_below(m, relay, 0) and m != old)
    assert trees.move(relay, 0, target) == (relay, 0, target)
    assert trees.parent(relay, 0) == target and relay in trees.children(target, 0)
    assert relay not in trees.children(old, 0) and trees.children(relay, 0) == below  # its subtree follows
    check_trees(trees, list(range(64)))
    # The old parent's freed slot takes the next orphan (a relay of its home stripe).
    assert (old, 0) in trees._is_open


def test_a_move_that_would_make_a_cycle_or_feed_from_the_gone_is_refused():
    trees = burst(64, stripes=4, fanout=4)
    relay = next(m for m in range(64) if trees.home(m) == 0 and trees.children(m, 0))
    child = next(iter(trees.children(relay, 0)))
    gone = next(m for m in range(64) if m not in (relay, child) and not trees.children(m, 0))
    trees.leave(gone)
    for parent in (relay, child, gone):
        with pytest.raises(ValueError, match="cannot feed"):
            trees.move(relay, 0, parent)
    assert trees.parent(child, 0) == relay  # nothing changed
    assert trees.is_below(child, relay, 0) and not trees.is_below(relay, child, 0)
