"""Planner, chunking and manifest matching: tables and a fake clock, no I/O."""

from __future__ import annotations

import pytest

from scheduler.chunking import MAX_SEGMENTS_PER_CHUNK, plan_chunks
from scheduler.errors import InvalidChunkSize, InvalidManifest, ManifestMismatch
from rfork_api.manifest import match_manifests, parse_manifest, parse_manifest_table
from scheduler.planner import DONE, FAILED, RUNNING, Job, PlannerConfig, Report, SourceView

KiB = 1024


def manifest(**sizes: int) -> dict:
    """{name: nbytes} -> a parsed manifest of 1-byte elements at distinct addresses."""
    raw, ptr = {}, 1 << 20
    for name, n in sizes.items():
        raw[name] = [ptr, n, 1]
        ptr += n + 4096
    return parse_manifest(raw)


def seed(seed_id: str, m, rate: float | None = 1e6) -> SourceView:
    return SourceView(seed_id, f"{seed_id}:1", f"http://{seed_id}", m, rate)


# -- manifests ---------------------------------------------------------------
@pytest.mark.parametrize("raw, needle", [
    ([1, 2], "must be an object"),
    ({"": [0, 1, 1]}, "non-empty strings"),
    ({"w": [0, -1, 2]}, "negative"),
    ({"w": ["0", 1, 2]}, "integers"),
    ({"w": [0, True, 2]}, "integers"),
    ({"w": [0, 1.5, 2]}, "integers"),
    ({"w": [0, 1, 0]}, "element_size"),
    ({"w": [0, 1, 32]}, "element_size"),
    ({"w": [-5, 1, 2]}, "64-bit address"),
    ({"w": [0, 2**60, 8]}, "larger than"),
    ({"w": [0, 1]}, "expected [ptr, numel, element_size]"),
])
def test_malformed_manifests_are_rejected_with_the_problem_named(raw, needle):
    with pytest.raises(InvalidManifest, match=None) as info:
        parse_manifest(raw)
    assert needle in str(info.value)


@pytest.mark.parametrize("client, seed_raw, needle", [
    ({"a": [0, 4, 2]}, {"a": [0, 4, 2]}, None),
    ({"a": [0, 4, 2]}, {"a": [9, 5, 2]}, "tensor 'a': client has numel=4 element_size=2, seed 's' has numel=5"),
    ({"a": [0, 4, 2]}, {"a": [9, 4, 4]}, "element_size=4"),
    ({"a": [0, 4, 2], "b": [0, 1, 1]}, {"a": [9, 4, 2]}, "tensor 'b': the client has it"),
    ({"a": [0, 4, 2]}, {"a": [9, 4, 2], "z": [0, 1, 1]}, "tensor 'z': seed 's' has it"),
])
def test_manifest_match_names_the_first_difference(client, seed_raw, needle):
    c, s = parse_manifest(client), parse_manifest(seed_raw)
    if needle is None:
        match_manifests(c, s, "s")
        return
    with pytest.raises(ManifestMismatch) as info:
        match_manifests(c, s, "s")
    assert needle in str(info.value)



@pytest.mark.parametrize("other, same", [
    ({"b": [7, 3, 1], "a": [9, 4, 2]}, True),   # other pointers, other order: the same shapes
    ({"a": [0, 4, 2], "b": [0, 3, 2]}, False),  # b's element size differs
    ({"a": [0, 4, 2], "c": [0, 3, 1]}, False),  # another name
    ({"a": [0, 4, 2]}, False),                  # one tensor fewer
])
def test_equal_shape_digests_mean_the_manifests_match(other, same):
    mine = parse_manifest_table({"a": [0, 4, 2], "b": [64, 3, 1]})
    theirs = parse_manifest_table(other)
    assert (mine.shapes_digest == theirs.shapes_digest) is same
    if same:
        match_manifests(mine.to_manifest(), theirs.to_manifest(), "s")
    else:
        with pytest.raises(ManifestMismatch):
            match_manifests(mine.to_manifest(), theirs.to_manifest(), "s")

# -- chunking ----------------------------------------------------------------
def test_chunking_doctests():
    import doctest

    import rfork_api.chunking

    assert doctest.testmod(rfork_api.chunking).failed == 0


@pytest.mark.parametrize("sizes, chunk, expected", [
    # big tensors split, the last piece shorter
    ({"a": 10 * KiB}, 4 * KiB, [[("a", 0, 4096)], [("a", 4096, 4096)], [("a", 8192, 2048)]]),
    # small neighbours coalesce up to the chunk size
    ({"a": 1 * KiB, "b": 2 * KiB, "c": 2 * KiB}, 4 * KiB, [[("a", 0, 1024), ("b", 0, 2048)], [("c", 0, 2048)]]),
    # exactly one chunk
    ({"a": 4 * KiB}, 4 * KiB, [[("a", 0, 4096)]]),
    # zero-byte tensors produce nothing, and do not break coalescing
    ({"a": 1 * KiB, "z": 0, "b": 1 * KiB}, 4 * KiB, [[("a", 0, 1024), ("b", 0, 1024)]]),
    # a big tensor closes the open small chunk
    ({"a": 1 * KiB, "big": 5 * KiB, "b": 1 * KiB}, 4 * KiB,
     [[("a", 0, 1024)], [("big", 0, 4096)], [("big", 4096, 1024)], [("b", 0, 1024)]]),
    # only zero-byte tensors: nothing to read
    ({"z": 0}, 4 * KiB, []),
])
def test_plan_chunks(sizes, chunk, expected):
    chunks = plan_chunks(manifest(**sizes), chunk)
    assert [list(c.segments) for c in chunks] == expected
    assert [c.chunk_id for c in chunks] == list(range(len(expected)))


@pytest.mark.parametrize("chunk", [0, -1, 100, 2**40, True, 1.5])
def test_absurd_chunk_sizes_are_rejected(chunk):
    with pytest.raises(InvalidChunkSize):
        plan_chunks(manifest(a=10), chunk)


def test_many_tiny_tensors_are_spread_over_chunks_of_bounded_segments():
    # A MoE rank: tens of thousands of tensors that all fit one 64 MiB chunk by bytes.
    n = 2 * MAX_SEGMENTS_PER_CHUNK + 5
    chunks = plan_chunks(parse_manifest({f"t{i}": [i * 64, 32, 2] for i in range(n)}), 64 * 2**20)
    assert [len(c.segments) for c in chunks] == [MAX_SEGMENTS_PER_CHUNK, MAX_SEGMENTS_PER_CHUNK, 5]
    assert [tensor for c in chunks for tensor, _, _ in c.segments] == [f"t{i}" for i in range(n)]


def test_chunk_count_is_bounded():
    with pytest.raises(InvalidChunkSize, match="larger chunk size"):
        plan_chunks(parse_manifest({"w": [0, 2**44, 1]}), 4096)


# -- planner -----------------------------------------------------------------
ONE_CHUNK_EACH = PlannerConfig(max_assignment_bytes=0)


def make_job(n_chunks=8, chunk=4 * KiB, config=ONE_CHUNK_EACH, now=0.0):
    """A job over one tensor of n_chunks chunks; merging is off unless a test turns it on."""
    m = manifest(w=n_chunks * chunk)
    return Job("j", m, plan_chunks(m, chunk), config, now), m


def finish(job, assignments, now, ok=True, seconds=0.1, reason=None):
    for a in assignments:
        job.apply(Report(a.assignment_id, ok=ok, seconds=seconds, reason=reason, error=None if ok else "boom"), now)


def test_reads_resolve_client_and_seed_pointers():
    job, m = make_job(n_chunks=2)
    other = parse_manifest({"w": [10**9, m["w"].numel, 1]})
    [a] = job.next_assignments([seed("s0", other)], 0.0, 1)
    assert a.reads[0].dst_ptr == m["w"].ptr and a.reads[0].src_ptr == 10**9 and a.reads[0].length == 4 * KiB
    [b] = job.next_assignments([seed("s0", other)], 0.0, 1)
    assert b.reads[0].dst_ptr == m["w"].ptr + 4 * KiB and b.reads[0].src_ptr == 10**9 + 4 * KiB


@pytest.mark.parametrize("rates, expected", [
    # depth = ceil(rate * pipeline_seconds / chunk), clamped to [1, 4]; rate 0 gets nothing
    ({"fast": 1e9, "slow": 4 * KiB, "paused": 0.0}, {"fast": 4, "slow": 1}),
    ({"a": None, "b": None}, {"a": 4, "b": 4}),
    ({"a": 16 * KiB, "b": 4 * KiB}, {"a": 2, "b": 1}),
])
def test_in_flight_depth_follows_each_seeds_budget(rates, expected):
    job, m = make_job(n_chunks=32)
    out = job.next_assignments([seed(s, m, r) for s, r in rates.items()], 0.0, 100)
    counts = {}
    for a in out:
        counts[a.seed_id] = counts.get(a.seed_id, 0) + 1
    assert counts == expected


def test_seed_with_most_free_budget_gets_work_first():
    job, m = make_job(n_chunks=32)
    seeds = [seed("slow", m, 4 * KiB), seed("fast", m, 1e9)]
    assert job.next_assignments(seeds, 0.0, 1)[0].seed_id == "fast"


def test_faster_seed_ends_up_with_more_chunks():
    job, m = make_job(n_chunks=40)
    seeds = [seed("fast", m, 1e9), seed("slow", m, 4 * KiB)]
    now = 0.0
    live = job.next_assignments(seeds, now, 100)
    while job.state == RUNNING:
        now += 0.01
        # fast finishes everything each tick; slow finishes one chunk every 10 ticks
        done = [a for a in live if a.seed_id == "fast" or round(now * 100) % 10 == 0]
        finish(job, done, now)
        live = [a for a in live if a not in done] + job.next_assignments(seeds, now, 100)
    assert job.state == DONE
    assert job.bytes_by_seed["fast"] > 3 * job.bytes_by_seed.get("slow", 0)


def test_failed_chunk_is_retried_on_a_different_seed():
    job, m = make_job(n_chunks=1)
    seeds = [seed("s0", m), seed("s1", m)]
    [a] = job.next_assignments(seeds, 0.0, 1)
    finish(job, [a], 1.0, ok=False, reason="read_failed")
    [b] = job.next_assignments(seeds, 1.0, 1)
    assert b.chunk_id == a.chunk_id and b.seed_id != a.seed_id and b.attempt == 2
    assert job.retried_chunks == 1


def test_seed_excluded_after_consecutive_failures_with_reason():
    job, m = make_job(n_chunks=8, config=PlannerConfig(max_assignment_bytes=0, seed_failure_threshold=2))
    seeds = [seed("bad", m, None), seed("good", m, 4 * KiB)]
    out = job.next_assignments(seeds, 0.0, 100)
    bad = [a for a in out if a.seed_id == "bad"]
    finish(job, bad[:2], 1.0, ok=False, reason="read_failed")
    assert "bad" in job.excluded and job.excluded["bad"].startswith("read_failed")
    assert set(job.take_cancellations()) == {a.assignment_id for a in bad[2:]}
    later = job.next_assignments(seeds, 1.0, 100)
    assert all(a.seed_id == "good" for a in later)


def test_all_seeds_excluded_fails_naming_each_seed():
    job, m = make_job(n_chunks=4, config=PlannerConfig(max_assignment_bytes=0, seed_failure_threshold=1))
    seeds = [seed("s0", m), seed("s1", m)]
    out = job.next_assignments(seeds, 0.0, 100)
    finish(job, out, 1.0, ok=False, reason="read_failed")
    job.next_assignments(seeds, 1.0, 100)
    assert job.state == FAILED
    assert "s0 (read_failed" in job.error and "s1 (read_failed" in job.error


def test_the_last_seed_excluded_fails_naming_the_seeds_that_left_before_it_too():
    # Every seed killed at once: the agents of s1 and s2 deregister theirs, while s0's reads fail
    # first. The error must still account for all three, not only the one still registered.
    job, m = make_job(n_chunks=6, config=PlannerConfig(max_assignment_bytes=0, seed_failure_threshold=1))
    seeds = [seed("s0", m), seed("s1", m), seed("s2", m)]
    out = job.next_assignments(seeds, 0.0, 100)
    job.seed_lost("s1", "seed_lost: deregistered", 1.0)
    job.seed_lost("s2", "seed_lost: deregistered", 1.0)
    finish(job, [a for a in out if a.seed_id == "s0"], 1.1, ok=False, reason="read_failed")
    job.next_assignments([seeds[0]], 1.2, 100)
    assert job.state == FAILED and job.error.startswith("no eligible seed left: s0 (read_failed")
    assert "lost: s1 (seed_lost: deregistered); s2 (seed_lost: deregistered)" in job.error


def test_no_live_seed_fails_after_grace():
    job, m = make_job(config=PlannerConfig(max_assignment_bytes=0, no_seed_grace_seconds=10))
    job.next_assignments([], 5.0, 8)
    assert job.state == RUNNING
    job.next_assignments([], 10.5, 8)
    assert job.state == FAILED and "no live seed" in job.error


def test_seed_lost_requeues_its_chunks_to_the_seeds_still_registered():
    job, m = make_job(n_chunks=2)
    [a, b] = job.next_assignments([seed("s0", m, None)], 0.0, 2)
    job.seed_lost("s0", "seed_lost: no heartbeat", 1.0)
    assert set(job.take_cancellations()) == {a.assignment_id, b.assignment_id}
    again = job.next_assignments([seed("s1", m, None)], 1.0, 8)
    assert {x.seed_id for x in again} == {"s1"} and len(again) == 2
    assert job.retried_chunks == 2


def test_a_lost_seed_that_re_registers_is_used_again_with_its_new_pointers():
    job, m = make_job(n_chunks=2)
    job.next_assignments([seed("s0", m, None)], 0.0, 2)
    job.seed_lost("s0", "seed_lost: no heartbeat", 1.0)
    assert "s0" not in job.excluded
    moved = manifest(**{name: spec.nbytes for name, spec in m.items()})
    moved = {name: type(spec)(spec.ptr + (1 << 30), spec.numel, spec.element_size) for name, spec in moved.items()}
    again = job.next_assignments([seed("s0", moved, None)], 2.0, 8)
    assert len(again) == 2 and all(a.seed_id == "s0" for a in again)
    assert all(r.src_ptr >= 1 << 30 for a in again for r in a.reads)
    assert job.lost == {}


def test_no_seed_grace_counts_from_when_the_last_seed_left_not_the_last_poll():
    job, m = make_job(config=PlannerConfig(max_assignment_bytes=0, no_seed_grace_seconds=10))
    job.next_assignments([seed("s0", m)], 0.0, 1)  # the last /work that saw a seed
    job.seed_lost("s0", "seed_lost: no heartbeat for 5.0 s", 20.0)
    job.next_assignments([], 25.0, 8)
    assert job.state == RUNNING  # only 5 s without a seed, though 25 s since a poll saw one
    job.next_assignments([], 30.5, 8)
    assert job.state == FAILED and "lost: s0 (seed_lost: no heartbeat" in job.error


def test_endgame_duplicates_a_straggler_and_counts_bytes_once():
    job, m = make_job(n_chunks=2)
    slow, fast = seed("slow", m, 100.0), seed("fast", m, 1e9)
    [s] = job.next_assignments([slow], 0.0, 1)
    [f] = job.next_assignments([fast], 0.0, 1)
    finish(job, [f], 0.01)
    [dup] = job.next_assignments([slow, fast], 0.02, 8)
    assert dup.chunk_id == s.chunk_id and dup.seed_id == "fast"
    finish(job, [dup], 0.03)
    assert job.state == DONE and job.bytes_done == job.bytes_total
    assert job.take_cancellations() == [s.assignment_id]
    finish(job, [s], 5.0)  # the straggler lands late: ignored
    assert job.bytes_done == job.bytes_total and job.chunks_done == 2


@pytest.mark.parametrize("decisions_between", range(6))
def test_a_decision_judges_a_straggler_by_its_own_rates_not_an_earlier_decisions(decisions_between):
    """The endgame's outlook (when each read in flight lands) is kept within a decision. A later
    decision at the same moment with the same reads in flight, after the holder's allowed rate
    dropped, must see the new rate. Keyed on the rates dict's ``id()``, the cache matched a new
    dict built at a freed one's address (here after two other jobs' decisions, as a scheduler
    interleaves them) and judged the straggler by the old rate."""
    job, m = make_job(n_chunks=1)
    other, other_manifest = make_job(n_chunks=64)
    [a] = job.next_assignments([seed("a", m, 1e9)], 0.0, 1)
    assert job.next_assignments([seed("a", m, 1e9), seed("b", m, 1e6)], 1.0, 8) == []  # a lands it first
    for _ in range(decisions_between):
        other.next_assignments([seed("c", other_manifest, 1e6)], 1.0, 1)
    [dup] = job.next_assignments([seed("a", m, 1.0), seed("b", m, 1e6)], 1.0, 8)  # a throttled to 1 B/s
    assert dup.chunk_id == a.chunk_id and dup.seed_id == "b"


def test_stale_and_unknown_reports_change_nothing():
    job, m = make_job(n_chunks=2)
    [a, b] = job.next_assignments([seed("s0", m, None)], 0.0, 2)
    finish(job, [a, a], 1.0)
    job.apply(Report("nope", ok=True), 1.0)
    assert job.chunks_done == 1 and job.bytes_done == 4 * KiB


def test_only_zero_byte_tensors_is_done_at_once():
    m = manifest(z=0)
    job = Job("j", m, plan_chunks(m, 4 * KiB), ONE_CHUNK_EACH, 0.0)
    assert job.state == DONE and job.next_assignments([seed("s", m)], 0.0, 8) == []


def test_chunk_failing_everywhere_fails_the_job():
    job, m = make_job(n_chunks=1, config=PlannerConfig(max_assignment_bytes=0, max_attempts_per_chunk=3, seed_failure_threshold=99))
    seeds = [seed("s0", m), seed("s1", m)]
    for t in range(3):
        finish(job, job.next_assignments(seeds, t, 1), t, ok=False, reason="read_failed")
    assert job.state == FAILED and "chunk 0 failed 3 times" in job.error


def test_progress_reports_totals():
    job, m = make_job(n_chunks=4)
    out = job.next_assignments([seed("s0", m, None)], 0.0, 2)
    finish(job, out, 1.0)
    p = job.progress()
    assert (p["bytes_done"], p["bytes_total"], p["chunks_done"], p["chunks_total"]) == (8 * KiB, 16 * KiB, 2, 4)


# -- merged assignments ---------------------------------------------------------
MERGE_16K = PlannerConfig(max_assignment_bytes=16 * KiB)


def test_an_uncapped_seed_gets_consecutive_chunks_as_one_assignment():
    job, m = make_job(n_chunks=8, config=MERGE_16K)
    out = job.next_assignments([seed("s0", m, None)], 0.0, 8)
    assert [a.chunk_ids for a in out] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert [a.nbytes for a in out] == [16 * KiB, 16 * KiB]
    # One read covering the four chunks of the one tensor, client and seed pointers resolved.
    first = out[0]
    assert [(r.dst_ptr - m["w"].ptr, r.length) for r in first.reads] == [(0, 16 * KiB)]
    finish(job, out, 1.0)
    assert job.state == DONE and job.bytes_done == 32 * KiB and job.bytes_by_seed == {"s0": 32 * KiB}


@pytest.mark.parametrize("rate, sizes", [
    (8 * KiB, [1]),          # budget 0.5 s x rate = one chunk: one in flight, no merging
    (16 * KiB, [1, 1]),      # two chunks: two in flight, still no merging
    (32 * KiB, [2, 2]),      # four chunks over two slots: pairs
    (64 * KiB, [4, 4]),      # eight chunks over two slots, up to max_assignment_bytes
    (None, [4, 4]),          # uncapped: up to max_assignment_bytes
])
def test_merging_follows_the_seeds_allowed_rate(rate, sizes):
    job, m = make_job(n_chunks=8, config=PlannerConfig(max_assignment_bytes=16 * KiB, max_in_flight_per_seed=2))
    out = job.next_assignments([seed("s0", m, rate)], 0.0, 8)
    assert [len(a.chunk_ids) for a in out] == sizes


def test_no_seed_takes_more_than_its_share_of_what_is_pending():
    job, m = make_job(n_chunks=8, config=PlannerConfig(max_assignment_bytes=64 * KiB))
    out = job.next_assignments([seed("s0", m, None), seed("s1", m, None)], 0.0, 8)
    assert {a.seed_id for a in out} == {"s0", "s1"}
    assert out[0].nbytes == 16 * KiB  # half of the 32 KiB pending, though 64 KiB were allowed
    assert sorted(c for a in out for c in a.chunk_ids) == list(range(8))


def test_a_failed_merged_assignment_requeues_its_chunks_in_order_and_counts_one_failure():
    job, m = make_job(n_chunks=8, config=PlannerConfig(max_assignment_bytes=16 * KiB, seed_failure_threshold=2))
    first, _second = job.next_assignments([seed("s0", m, None), seed("s1", m, None)], 0.0, 2)
    finish(job, [first], 1.0, ok=False, reason="read_failed")
    assert list(job.pending)[:len(first.chunk_ids)] == list(first.chunk_ids)
    assert job.consecutive_failures[first.seed_id] == 1 and first.seed_id not in job.excluded
    assert job.retried_chunks == len(first.chunk_ids)
    assert all(job.chunks[c].attempts == 1 for c in first.chunk_ids)


def test_a_merged_read_that_never_started_costs_no_attempt():
    job, m = make_job(n_chunks=4, config=MERGE_16K)
    [a] = job.next_assignments([seed("s0", m, None)], 0.0, 8)
    finish(job, [a], 1.0, ok=False, reason="seed_lost")
    assert all(job.chunks[c].attempts == 0 for c in a.chunk_ids)
    assert job.consecutive_failures["s0"] == 0 and len(job.pending) == 4


def test_a_duplicate_landing_first_does_not_cancel_the_merged_assignment_and_bytes_count_once():
    job, m = make_job(n_chunks=4, config=MERGE_16K)
    [merged] = job.next_assignments([seed("slow", m, None)], 0.0, 1)
    assert merged.chunk_ids == (0, 1, 2, 3)
    job.observed_rate["slow"] = 1.0 * KiB  # it turned out slow: 16 s for its 16 KiB
    [dup] = job.next_assignments([seed("slow", m, None), seed("fast", m, 1e9)], 0.01, 1)
    assert dup.seed_id == "fast" and len(dup.chunk_ids) == 1
    finish(job, [dup], 0.02)
    assert merged.assignment_id not in job.take_cancellations()
    assert job.chunks_done == 1 and job.state == RUNNING
    finish(job, [merged], 0.5)
    assert job.state == DONE and job.bytes_done == job.bytes_total == 16 * KiB
    assert job.bytes_by_seed == {"fast": 4 * KiB, "slow": 12 * KiB}


def test_a_lost_seed_cancels_its_merged_assignment_once_and_requeues_every_chunk():
    job, m = make_job(n_chunks=8, config=MERGE_16K)
    out = job.next_assignments([seed("s0", m, None)], 0.0, 8)
    job.seed_lost("s0", "gone", 1.0)
    assert sorted(job.take_cancellations()) == sorted(a.assignment_id for a in out)
    assert list(job.pending) == list(range(8))


# -- sources: seeds and peers (the swarm) ------------------------------------
from scheduler.planner import PEER, ChunkSet, PendingQueue, stripe_start, striped_order  # noqa: E402


def peer(job_id: str, m, holds, rate: float | None = None, free_slots=None, budget=None) -> SourceView:
    return SourceView(f"peer:{job_id}", f"{job_id}:1", "", m, rate, kind=PEER, holds=frozenset(holds),
                      free_slots=free_slots, budget_bytes=budget)


def test_a_peer_is_preferred_to_a_seed_for_a_chunk_it_holds():
    job, m = make_job(n_chunks=4)
    out = job.next_assignments([seed("s0", m, None), peer("p", m, {2})], 0.0, 1)
    assert [(a.seed_id, a.chunk_ids, a.source_kind) for a in out] == [("peer:p", (2,), PEER)]
    assert out[0].agent_url == ""  # no agent, no lease: the scheduler keeps a peer's budget


def test_a_peer_only_serves_what_it_holds():
    job, m = make_job(n_chunks=4)
    out = job.next_assignments([peer("p", m, {1, 3})], 0.0, 8)
    assert sorted(a.chunk_id for a in out) == [1, 3]


@pytest.mark.parametrize("covered, expected_seed_chunks", [
    ({}, [0, 1, 2, 3]),                                   # nobody covers anything: the seed serves all
    ({0: {"peer:p"}, 1: {"peer:p"}}, [2, 3]),             # p holds or fetches 0 and 1: not the seed's job
    ({0: {"peer:gone"}}, [0, 1, 2, 3]),                   # covered by a peer this job cannot use
    ({c: {"peer:p"} for c in range(4)}, []),              # all covered: the seed waits for the peers
])
def test_a_seed_is_not_asked_for_chunks_an_eligible_peer_covers(covered, expected_seed_chunks):
    job, m = make_job(n_chunks=4)
    sources = [seed("s0", m, None), peer("p", m, set(), free_slots=0)]
    out = job.next_assignments(sources, 0.0, 8, covered=covered)
    assert sorted(c for a in out if a.seed_id == "s0" for c in a.chunk_ids) == expected_seed_chunks


def test_an_excluded_peer_does_not_cover_chunks_for_the_seeds():
    job, m = make_job(n_chunks=2, config=PlannerConfig(max_assignment_bytes=0, seed_failure_threshold=1))
    p = peer("p", m, {0, 1})
    [a, b] = job.next_assignments([p], 0.0, 8)
    finish(job, [a], 1.0, ok=False, reason="read_failed")
    assert "peer:p" in job.excluded
    out = job.next_assignments([seed("s0", m, None), p], 1.0, 8, covered={0: {"peer:p"}, 1: {"peer:p"}})
    assert sorted(c for x in out for c in x.chunk_ids) == [0, 1] and all(x.seed_id == "s0" for x in out)


@pytest.mark.parametrize("free_slots, budget, expected", [
    (None, None, 4),   # uncapped peer: the planner's own depth (max_in_flight_per_seed)
    (1, None, 1),      # one read slot left across all its readers
    (0, None, 0),
    (None, 8 * KiB, 2),  # an upload bucket with two chunks' worth
    (None, 1 * KiB, 1),  # a positive balance buys one read; its debt is paid before the next
    (None, 0.0, 0),      # in debt or empty: nothing
])
def test_a_peers_in_flight_limit_and_upload_budget_bound_what_it_is_given(free_slots, budget, expected):
    job, m = make_job(n_chunks=8)
    out = job.next_assignments([peer("p", m, range(8), free_slots=free_slots, budget=budget)], 0.0, 8)
    assert sum(len(a.chunk_ids) for a in out) == expected
    assert len(job.pending) == 8 - expected  # what a peer could not take stays pending


def test_a_merged_peer_read_stays_within_the_chunks_it_holds():
    job, m = make_job(n_chunks=8, config=MERGE_16K)
    out = job.next_assignments([peer("p", m, {0, 1, 2, 5, 6})], 0.0, 8)
    assert [a.chunk_ids for a in out] == [(0, 1, 2), (5, 6)]


def test_a_dead_peers_reads_are_retried_from_a_seed_and_count_as_peer_failures():
    job, m = make_job(n_chunks=2)
    p = peer("p", m, {0, 1})
    out = job.next_assignments([p, seed("s0", m, None)], 0.0, 8, covered={0: {"peer:p"}, 1: {"peer:p"}})
    assert {a.seed_id for a in out} == {"peer:p"}
    job.seed_lost("peer:p", "peer withdrew", 1.0)  # the service drops a peer that withdrew or died
    again = job.next_assignments([seed("s0", m, None)], 1.0, 8)
    assert sorted(c for a in again for c in a.chunk_ids) == [0, 1] and job.retried_chunks == 2


def test_peers_holding_nothing_needed_do_not_keep_a_job_without_seeds_alive():
    job, m = make_job(n_chunks=2, config=PlannerConfig(max_assignment_bytes=0, no_seed_grace_seconds=10))
    useless = peer("p", m, set())  # another client, also waiting for the seeds that died
    job.next_assignments([useless], 5.0, 8)
    assert job.state == RUNNING
    job.next_assignments([useless], 10.5, 8)
    assert job.state == FAILED and "no live seed" in job.error


def test_bytes_are_counted_by_source_kind():
    job, m = make_job(n_chunks=2)
    out = job.next_assignments([peer("p", m, {0}), seed("s0", m, None)], 0.0, 8, covered={0: {"peer:p"}})
    finish(job, out, 1.0)
    progress = job.progress()
    assert job.state == DONE and progress["bytes_from_peers"] == 4 * KiB and progress["bytes_from_seeds"] == 4 * KiB


@pytest.mark.parametrize("members, chunks", [(2, 100), (8, 1000), (128, 22500)])
def test_stripe_starts_spread_concurrent_jobs_over_the_chunks(members, chunks):
    starts = sorted(stripe_start(chunks, k) for k in range(members))
    gaps = [b - a for a, b in zip(starts, [*starts[1:], starts[0] + chunks])]
    assert len(set(starts)) == members and max(gaps) <= 3 * chunks / members
    assert striped_order(5, 3) == [3, 4, 0, 1, 2]


def test_jobs_with_different_starts_ask_the_seed_for_different_chunks_first():
    m = manifest(w=8 * 4 * KiB)
    a = Job("a", m, plan_chunks(m, 4 * KiB), ONE_CHUNK_EACH, 0.0, start=0)
    b = Job("b", m, plan_chunks(m, 4 * KiB), ONE_CHUNK_EACH, 0.0, start=4)
    [x] = a.next_assignments([seed("s0", m, None)], 0.0, 1)
    [y] = b.next_assignments([seed("s0", m, None)], 0.0, 1)
    assert (x.chunk_id, y.chunk_id) == (0, 4)


def test_pending_queue_removal_is_lazy_and_order_is_kept():
    q = PendingQueue(range(6))
    q.remove(0)
    q.remove(3)
    q.appendleft(3)
    assert list(q) == [3, 1, 2, 4, 5] and len(q) == 5 and 0 not in q and 3 in q
    for c in [1, 2, 4, 5, 3]:
        q.remove(c)
    assert list(q) == [] and not q


# -- restarted seeds (a new incarnation) ---------------------------------------
def incarnated(seed_id: str, m, incarnation: str, rate: float | None = None) -> SourceView:
    return SourceView(seed_id, f"{seed_id}:1", f"http://{seed_id}", m, rate, incarnation=incarnation)


EXCLUDE_AFTER_TWO = PlannerConfig(max_assignment_bytes=0, seed_failure_threshold=2)


def exclude_s0(job, m, reason="agent_unreachable"):
    """s0 (agent A, session 1) fails two reads while s1 works: s0 is excluded."""
    seeds = [incarnated("s0", m, "agent-A/s0:1"), incarnated("s1", m, "agent-X/s1:1", rate=4 * KiB)]
    out = job.next_assignments(seeds, 0.0, 100)
    s0 = [a for a in out if a.seed_id == "s0"]
    finish(job, s0, 1.0, ok=False, reason=reason)
    assert "s0" in job.excluded
    return s0, seeds[1]


@pytest.mark.parametrize("incarnation, eligible", [
    ("agent-A/s0:1", False),  # the same agent registering again (e.g. after the scheduler dropped it)
    ("agent-B/s0:1", True),   # the agent restarted: a new instance id
    ("agent-A/s0:2", True),   # the seed restarted: a new TransferEngine session
])
def test_an_excluded_seed_is_eligible_again_only_in_a_new_incarnation(incarnation, eligible):
    job, m = make_job(n_chunks=16, config=EXCLUDE_AFTER_TWO)
    _, s1 = exclude_s0(job, m)
    again = job.next_assignments([incarnated("s0", m, incarnation), s1], 2.0, 100)
    assert any(a.seed_id == "s0" for a in again) is eligible
    assert ("s0" in job.excluded) is not eligible
    assert job.readmissions.get("s0", 0) == (1 if eligible else 0)
    if eligible:  # the user still sees what happened to it
        assert job.progress()["failed_seeds"]["s0"].startswith("agent_unreachable")


def test_a_readmitted_seed_that_fails_again_is_excluded_again():
    job, m = make_job(n_chunks=16, config=EXCLUDE_AFTER_TWO)
    _, s1 = exclude_s0(job, m)
    restarted = incarnated("s0", m, "agent-B/s0:1")
    again = [a for a in job.next_assignments([restarted, s1], 2.0, 100) if a.seed_id == "s0"]
    assert all(a.incarnation == "agent-B/s0:1" for a in again)
    finish(job, again[:1], 3.0, ok=False, reason="read_failed")
    assert "s0" not in job.excluded  # a fresh count: one failure is not two
    finish(job, again[1:2], 3.5, ok=False, reason="read_failed")
    assert job.excluded["s0"].startswith("read_failed")
    assert job.excluded_incarnation["s0"] == "agent-B/s0:1"
    assert all(a.seed_id == "s1" for a in job.next_assignments([restarted, s1], 4.0, 100))


def test_late_failures_of_the_previous_incarnation_do_not_exclude_the_restarted_one():
    job, m = make_job(n_chunks=16, config=PlannerConfig(max_assignment_bytes=0, seed_failure_threshold=3))
    seeds = [incarnated("s0", m, "agent-A/s0:1"), incarnated("s1", m, "agent-X/s1:1", rate=4 * KiB)]
    old = [a for a in job.next_assignments(seeds, 0.0, 100) if a.seed_id == "s0"]
    assert len(old) == 4
    finish(job, old[:3], 1.0, ok=False, reason="agent_unreachable")  # excluded in incarnation A
    restarted = incarnated("s0", m, "agent-B/s0:1")
    new = [a for a in job.next_assignments([restarted, seeds[1]], 2.0, 100) if a.seed_id == "s0"]
    assert new, "the restarted agent's seed gets work again"
    # The old agent's last read (cancelled at the exclusion) reports its failure late: no effect.
    finish(job, old[3:], 2.5, ok=False, reason="agent_unreachable")
    assert "s0" not in job.excluded and job.consecutive_failures["s0"] == 0
    finish(job, new, 3.0)
    assert job.bytes_by_seed["s0"] == sum(a.nbytes for a in new)


def test_a_seed_whose_reads_keep_failing_stays_excluded_across_drops_and_re_registrations():
    job, m = make_job(n_chunks=16, config=EXCLUDE_AFTER_TWO)
    _, s1 = exclude_s0(job, m, reason="read_failed")
    same = incarnated("s0", m, "agent-A/s0:1")
    for t in (2.0, 3.0, 4.0):  # dropped for missed heartbeats, then back: the same agent, the same seed
        job.seed_lost("s0", "seed_lost: no heartbeat for 5.0 s", t)
        assert all(a.seed_id == "s1" for a in job.next_assignments([same, s1], t + 0.5, 100))
    assert job.excluded["s0"].startswith("read_failed") and job.readmissions == {}


# -- performance paths (#15): the same decisions, found without walking the queue ------
class _Covered(dict):
    """A swarm-like ``covered``: per-chunk peers plus the set of chunks no peer covers."""

    def __init__(self, covered: dict, n_chunks: int) -> None:
        super().__init__(covered)
        self.uncovered = {c for c in range(n_chunks) if c not in covered}


def test_a_peer_finds_a_chunk_it_holds_far_past_the_queues_front():
    job, m = make_job(n_chunks=200)
    out = job.next_assignments([peer("p", m, {150, 151})], 0.0, 8)
    assert [a.chunk_ids for a in out] == [(150,), (151,)]


def test_a_seed_in_a_swarm_takes_the_first_uncovered_chunk_past_the_front_and_merges_the_run_after_it():
    job, m = make_job(n_chunks=200, config=MERGE_16K)
    covered = _Covered({c: {"peer:p"} for c in range(200) if not 120 <= c < 126}, 200)
    sources = [seed("s0", m, None), peer("p", m, set(), free_slots=0)]
    out = job.next_assignments(sources, 0.0, 8, covered=covered)
    assert [a.chunk_ids for a in out] == [(120, 121, 122, 123), (124, 125)]


def test_a_seed_in_a_swarm_with_nothing_uncovered_gets_nothing():
    job, m = make_job(n_chunks=40)
    everything = _Covered({c: {"peer:p"} for c in range(40)}, 40)
    assert job.next_assignments([seed("s0", m, None), peer("p", m, set(), free_slots=0)], 0.0, 8,
                                covered=everything) == []


def test_a_chunk_a_seed_failed_goes_to_it_again_only_when_no_other_source_can_take_it():
    job, m = make_job(n_chunks=40, config=PlannerConfig(max_assignment_bytes=0, seed_failure_threshold=99))
    [a] = job.next_assignments([seed("s0", m, None)], 0.0, 1)
    finish(job, [a], 1.0, ok=False, reason="read_failed")
    out = job.next_assignments([seed("s0", m, None), seed("s1", m, None)], 2.0, 2, covered=_Covered({}, 40))
    assert sorted((x.chunk_id, x.seed_id) for x in out) == [(0, "s1"), (1, "s0")]
    job2, m = make_job(n_chunks=40, config=PlannerConfig(max_assignment_bytes=0, seed_failure_threshold=99))
    [a] = job2.next_assignments([seed("s0", m, None)], 0.0, 1)
    finish(job2, [a], 1.0, ok=False, reason="read_failed")
    for t in range(3, 30):  # the failed chunk too, in the end: no one else has it
        finish(job2, job2.next_assignments([seed("s0", m, None)], float(t), 8, covered=_Covered({}, 40)), t + 0.5)
    assert job2.state == DONE


def test_no_peer_duplicates_an_in_flight_chunk_while_chunks_still_wait():
    job, m = make_job(n_chunks=4)
    [slow] = job.next_assignments([seed("slow", m, 100.0)], 0.0, 1)
    holder = peer("p", m, {slow.chunk_id})  # holds only the chunk in flight; chunks 1-3 wait
    assert job.next_assignments([holder], 5.0, 8) == []


def test_an_in_flight_read_from_a_peer_missing_from_this_decision_is_not_taken_for_dead():
    job, m = make_job(n_chunks=2)
    p, q = peer("p", m, {0, 1}), peer("q", m, {0, 1})
    a, b = job.next_assignments([p], 0.0, 8)
    finish(job, [a], 0.1)  # p is measured: one chunk in 0.1 s
    # p is not among this decision's (sampled) sources; q holds the chunk p is reading.
    assert job.next_assignments([q], 0.15, 8) == []


def mask_bits(mask: int) -> set[int]:
    return {c for c in range(mask.bit_length()) if mask >> c & 1}


def test_the_pending_queue_keeps_its_mask_through_every_change():
    q = PendingQueue([4, 0, 2, 7], sizes=[1] * 8)
    assert mask_bits(q.mask) == {0, 2, 4, 7}
    q.remove(2)
    q.appendleft(5)
    q.append(2)
    q.discard(7)
    q.remove_all([0, 5])
    assert mask_bits(q.mask) == set(q.ids()) == {2, 4} and q.nbytes == 2 and list(q) == [4, 2]


@pytest.mark.parametrize("change", [
    lambda s: s.add(9), lambda s: s.add(1), lambda s: s.discard(1), lambda s: s.discard(4),
    lambda s: s.remove(2), lambda s: s.pop(), lambda s: s.clear(), lambda s: s.add_new([5, 6]),
    lambda s: s.update({3, 70}), lambda s: s.difference_update([1, 2]), lambda s: s.intersection_update({1, 9}),
    lambda s: s.symmetric_difference_update({1, 4}), lambda s: s.__ior__({8}), lambda s: s.__iand__({2}),
    lambda s: s.__isub__({2}), lambda s: s.__ixor__({2, 3}), lambda s: s.discard_all([64, 5, 1]),
])
def test_a_chunk_set_keeps_its_mask_equal_to_its_members(change):
    chunks = ChunkSet([1, 2, 64])
    result = change(chunks)
    assert mask_bits(chunks.mask) == set(chunks)
    if result is not None and not isinstance(result, int):
        assert result is chunks  # in-place operators return the set itself


def test_the_pending_queue_keeps_its_byte_count():
    q = PendingQueue([0, 1, 2], sizes=[10, 20, 40])
    assert q.nbytes == 70
    q.remove(1)
    q.appendleft(1)
    q.appendleft(1)  # re-queued twice: counted once
    q.discard(2)
    assert q.nbytes == 30 and list(q) == [1, 0] and set(q.ids()) == {0, 1}


# -- reads of a merged assignment ---------------------------------------------------
@pytest.mark.parametrize("sizes, expected", [
    # (tensor sizes in KiB) -> reads as (tensor, offset KiB, length KiB), 4 KiB chunks merged up to 16 KiB
    ({"w": 16}, [("w", 0, 16)]),                              # one tensor over four chunks: one read
    ({"a": 6, "b": 10}, [("a", 0, 6), ("b", 0, 10)]),         # never across tensors (registered apart)
    ({"a": 2, "b": 2, "c": 12}, [("a", 0, 2), ("b", 0, 2), ("c", 0, 12)]),
])
def test_a_merged_assignment_reads_each_tensor_once(sizes, expected):
    m = manifest(**{k: v * KiB for k, v in sizes.items()})
    job = Job("j", m, plan_chunks(m, 4 * KiB), MERGE_16K, 0.0)
    [a] = job.next_assignments([seed("s0", m, None)], 0.0, 1)
    by_ptr = {m[name].ptr: name for name in sizes}
    got = []
    for r in a.reads:
        name = max((p for p in by_ptr if p <= r.dst_ptr))
        got.append((by_ptr[name], (r.dst_ptr - name) // KiB, r.length // KiB))
        assert r.src_ptr == r.dst_ptr  # same manifest on both sides here
    assert got == expected


# -- merges sized by link time (merge_seconds) ---------------------------------------
LINK_TIME = PlannerConfig(max_assignment_bytes=8 * KiB, merge_seconds=0.1, max_merged_bytes=64 * KiB)


def _chunks_of(job, source, now):
    [a] = job.next_assignments([source], now, 1)
    return a


@pytest.mark.parametrize("observed_rate, expected_chunks", [
    (None, 2),              # nothing measured yet: the bytes cap (8 KiB = 2 chunks)
    (40 * KiB, 2),          # 0.1 s at 40 KiB/s = 4 KiB: below the bytes cap, which wins
    (160 * KiB, 4),         # 0.1 s at 160 KiB/s = 16 KiB = 4 chunks
    (10 * 1024 * KiB, 16),  # 1 MiB in 0.1 s: capped at max_merged_bytes (64 KiB = 16 chunks)
])
def test_a_seed_merges_about_merge_seconds_of_its_measured_rate(observed_rate, expected_chunks):
    job, m = make_job(n_chunks=200, config=LINK_TIME)
    if observed_rate is not None:
        job.observed_rate["s0"] = observed_rate
    a = _chunks_of(job, seed("s0", m, None), 0.0)
    assert len(a.chunk_ids) == expected_chunks


def test_merge_size_follows_the_rate_the_reports_measure():
    job, m = make_job(n_chunks=400, config=LINK_TIME)
    s0 = seed("s0", m, None)
    first = _chunks_of(job, s0, 0.0)
    assert len(first.chunk_ids) == 2                    # 8 KiB: nothing measured yet
    finish(job, [first], 1.0, seconds=8 * KiB / (320 * KiB))  # landed at 320 KiB/s
    second = _chunks_of(job, s0, 1.0)
    assert second.nbytes == 32 * KiB                    # 0.1 s x 320 KiB/s


def test_a_fresh_peer_merges_at_the_best_peer_rate_this_job_saw():
    m = manifest(w=400 * 4 * KiB)
    chunks = plan_chunks(m, 4 * KiB)
    job = Job("j", m, chunks, LINK_TIME, 0.0)
    everything = range(len(chunks))
    old = peer("old", m, everything)
    [a] = job.next_assignments([old], 0.0, 1)
    finish(job, [a], 1.0, seconds=a.nbytes / (160 * KiB))
    [b] = job.next_assignments([peer("fresh", m, everything)], 1.0, 1)
    assert b.nbytes == 16 * KiB                         # 0.1 s x 160 KiB/s, never measured itself


def test_link_time_merges_still_leave_the_others_their_share_near_the_end():
    job, m = make_job(n_chunks=8, config=LINK_TIME)
    job.observed_rate.update({"s0": 10 * 1024 * KiB, "s1": 10 * 1024 * KiB})
    out = job.next_assignments([seed("s0", m, None), seed("s1", m, None)], 0.0, 2)
    # 16 chunks' worth of link time each, but each takes at most its share of what is pending:
    # 32 KiB over two seeds, then 16 KiB over two.
    assert [len(a.chunk_ids) for a in out] == [4, 2]


def test_merging_off_stays_off_whatever_the_link_time():
    config = PlannerConfig(max_assignment_bytes=0, merge_seconds=1.0)
    job, m = make_job(n_chunks=8, config=config)
    job.observed_rate["s0"] = 1e12
    a = _chunks_of(job, seed("s0", m, None), 0.0)
    assert a.chunk_ids == (0,)


def test_a_failed_link_time_merge_retries_only_what_did_not_land():
    """A merged read that fails is retried whole (the client reports it as one read), chunk by
    chunk from the queue's front, and from another source first; a chunk that an endgame
    duplicate landed meanwhile is not read again."""
    job, m = make_job(n_chunks=64, config=LINK_TIME)
    job.observed_rate.update({"s0": 10 * 1024 * KiB, "s1": 10 * 1024 * KiB})
    [a] = job.next_assignments([seed("s0", m, None)], 0.0, 1)
    assert len(a.chunk_ids) == 16
    job.chunks[a.chunk_ids[3]].done = True  # landed through another read meanwhile (as an endgame copy does)
    job.done_chunks.add(a.chunk_ids[3])
    finish(job, [a], 1.0, ok=False, reason="read_failed")
    requeued = list(job.pending)[:15]
    assert requeued == [c for c in a.chunk_ids if c != a.chunk_ids[3]]
    out = job.next_assignments([seed("s0", m, None), seed("s1", m, None)], 1.0, 2)
    by_seed = {b.seed_id: b.chunk_ids for b in out}
    assert by_seed["s1"][0] == a.chunk_ids[0]            # the retry goes to the other seed
    assert not set(by_seed["s0"]) & set(a.chunk_ids)    # the seed that failed them gets other chunks


@pytest.mark.parametrize("holds, expected", [
    (range(0, 64), list(range(0, 4))),                 # a run: the first 16 KiB of it
    (range(0, 64, 2), [0, 2, 4, 6]),                   # every other chunk: gathered across the gaps
    ([5, 40, 41, 63], [5, 40, 41, 63]),                # scattered: still one assignment
    ([7], [7]),
])
def test_a_link_time_merge_from_a_peer_gathers_what_it_holds_across_gaps(holds, expected):
    m = manifest(w=64 * 4 * KiB)
    job = Job("j", m, plan_chunks(m, 4 * KiB), LINK_TIME, 0.0)
    job.observed_rate["peer:p"] = 160 * KiB            # 0.1 s = 16 KiB = 4 chunks
    [a] = job.next_assignments([peer("p", m, holds)], 0.0, 1)
    assert list(a.chunk_ids) == expected
    # Each chunk is one read here (one tensor, but not consecutive chunks unless the run is).
    assert sum(r.length for r in a.reads) == 4 * KiB * len(expected)


def test_without_merge_seconds_a_peer_merges_only_its_run():
    m = manifest(w=64 * 4 * KiB)
    job = Job("j", m, plan_chunks(m, 4 * KiB), MERGE_16K, 0.0)
    [a] = job.next_assignments([peer("p", m, range(0, 64, 2))], 0.0, 1)
    assert a.chunk_ids == (0,)


def test_a_gathered_merge_is_in_chunk_order_so_a_tensors_chunks_are_one_read():
    m = manifest(w=64 * 4 * KiB)
    job = Job("j", m, plan_chunks(m, 4 * KiB), LINK_TIME, 0.0)
    job.observed_rate["peer:p"] = 160 * KiB            # 4 chunks
    for c in (0, 1, 2):
        job.pending.remove(c)                          # landed already (or taken)
    job.pending.appendleft(1)                          # ... but chunk 1 is back at the front, as a retry is
    [a] = job.next_assignments([peer("p", m, [1, 3, 4, 5, 9])], 0.0, 1)
    assert a.chunk_ids == (1, 3, 4, 5)
    assert [(r.dst_ptr - m["w"].ptr, r.length) for r in a.reads] == [(4 * KiB, 4 * KiB), (12 * KiB, 12 * KiB)]


def test_a_peer_set_aside_while_chunks_were_pending_serves_the_endgame_once_they_run_out():
    """A decision sets aside at once a peer holding no pending chunk (it would find nothing). When
    a source asked before it takes the last pending chunk, the endgame starts within the same
    decision, and that peer may duplicate a straggler it holds: it must be asked then, as it
    would have been had it waited its turn in the decision's order."""
    job, m = make_job(n_chunks=3)
    [straggler] = job.next_assignments([seed("slow", m, 100.0)], 0.0, 1)
    [fast] = job.next_assignments([seed("fast", m, 1e9)], 0.0, 1)
    finish(job, [fast], 0.01, seconds=0.01)  # the job measured a fast source: a peer's estimate
    last = ({0, 1, 2} - {straggler.chunk_id, fast.chunk_id}).pop()
    first = SourceView("peer:a", "a:1", "", m, None, kind=PEER, holds=ChunkSet({last}), free_slots=4)
    holder = SourceView("peer:b", "b:1", "", m, None, kind=PEER, holds=ChunkSet({straggler.chunk_id}), free_slots=1)
    out = job.next_assignments([seed("slow", m, 100.0), first, holder], 0.02, 8)  # slow: no free slot
    assert [(a.seed_id, a.chunk_ids) for a in out] == [("peer:a", (last,)), ("peer:b", (straggler.chunk_id,))]


@pytest.mark.parametrize("start, streamed, resumed", [
    (0, [range(2, 5)], []),
    (6, [range(0, 3), range(7, 10)], []),
    (9, [range(0, 12)], []),
    (4, [range(3, 6)], [0, 7, 11]),
    (5, [], [1, 2]),
])
def test_a_queue_built_after_streams_withheld_chunks_is_the_queue_they_were_taken_from(start, streamed, resumed):
    """The pending queue is built on first use; withholding stripes (and resuming chunks) before or
    after it is built gives the same queue, in the job's striped order."""
    m = manifest(w=12 * 4 * KiB)
    plan = plan_chunks(m, 4 * KiB)
    eager, lazy = (Job(name, m, plan, ONE_CHUNK_EACH, 0.0, start=start) for name in ("eager", "lazy"))
    assert len(eager.pending) == 12  # built now
    for job in (eager, lazy):
        job.resume(resumed, 0.0) if resumed else None
        job.stream_chunks(streamed)
    assert list(lazy.pending) == list(eager.pending)
    assert (lazy.pending.mask, lazy.pending.nbytes) == (eager.pending.mask, eager.pending.nbytes)
    withheld = {c for r in streamed for c in r}
    assert list(lazy.pending) == [c for c in [*range(start, 12), *range(start)] if c not in withheld | set(resumed)]


# -- a silent job's check (the reaper's) ---------------------------------------
def _scenario(name: str):
    """(job, sources at t=20, config) for each case of the reaper's check."""
    config = PlannerConfig(max_assignment_bytes=0, no_seed_grace_seconds=10, seed_failure_threshold=1)
    job, m = make_job(n_chunks=4, config=config)
    if name == "a seed":
        return job, [seed("s0", m)]
    if name == "no source":
        return job, []
    if name == "every seed excluded":
        finish(job, job.next_assignments([seed("s0", m)], 0.0, 1), 1.0, ok=False, reason="read_failed")
        return job, [seed("s0", m)]
    if name == "a peer holding a chunk it lacks":
        return job, [peer("p", m, {2})]
    if name == "a peer holding only what it has":
        finish(job, job.next_assignments([seed("s0", m)], 0.0, 1), 1.0)
        return job, [peer("p", m, {0})]
    if name == "every chunk left comes by a stream":
        job.stream_chunks([range(0, 4)])
        return job, []
    raise AssertionError(name)


@pytest.mark.parametrize("name, fails", [
    ("a seed", False),
    ("no source", True),
    ("every seed excluded", True),
    ("a peer holding a chunk it lacks", False),
    ("a peer holding only what it has", True),
    ("every chunk left comes by a stream", False),
])
def test_a_silent_jobs_check_decides_as_a_decision_handing_out_nothing(name, fails):
    decided, sources = _scenario(name)
    decided.next_assignments(sources, 20.0, 0)
    checked, sources = _scenario(name)
    checked.check_sources(sources, 20.0)
    assert (checked.state, checked.error) == (decided.state, decided.error)
    assert (checked.state == FAILED) == fails


def test_a_silent_jobs_check_builds_no_queue_and_asks_for_peers_only_without_a_seed():
    job, m = make_job(n_chunks=4)
    asked = []
    job.check_sources([seed("s0", m)], 1.0, lambda: asked.append(1) or [])
    assert job._pending is None and asked == []  # a seed: its queue waits for its first real decision
    job.check_sources([], 1.0, lambda: asked.append(1) or [peer("p", m, {1})])
    assert asked == [1] and job.state == RUNNING and job.last_seed_seen_at == 1.0


# -- chunks landed by streams ------------------------------------------------
def test_a_ranges_bytes_come_from_the_plans_running_total_and_match_its_chunks_sizes():
    # Uneven chunks (tensors smaller and larger than a chunk, a short last chunk): a stripe's bytes
    # are a difference of the plan's running total, a list's the sum of its chunks.
    m = parse_manifest({"a": [1 << 30, 3000, 2], "b": [2 << 30, 10_000, 1], "c": [3 << 30, 1, 4],
                        "d": [4 << 30, 2500, 4]})
    job = Job("j", m, plan_chunks(m, 4 * KiB), ONE_CHUNK_EACH, 0.0)
    sizes = [chunk.nbytes for chunk in job._plan]
    assert len(set(sizes)) > 2 and job.bytes_total == sum(sizes) == 6000 + 10_000 + 4 + 10_000
    n = len(sizes)
    for start in range(n + 1):
        for stop in range(start, n + 1):
            assert job.chunk_bytes(range(start, stop)) == sum(sizes[start:stop]) == job.chunk_bytes(
                list(range(start, stop)))
    assert job.chunk_bytes(range(3, 1)) == 0 and job.chunk_bytes(range(0, n, 2)) == sum(sizes[0::2])
    assert job.landed_by_stream(range(1, n - 1), "peer:a", 0.0) == sum(sizes[1:n - 1]) == job.bytes_done


@pytest.mark.parametrize("landed, earlier, in_flight", [
    (range(0, 8), [], []),                       # a stream's whole stripe, none of it here yet
    (range(0, 8), [0, 1, 2, 3], []),             # its end: the first half came with a progress report
    ([5, 3, 3, 7, 5], [], []),                   # a client's list: out of order, repeated ids
    ([1, 2, 3, 6], [2], [3]),                    # one landed already, one in flight from a seed here
    ([], [], []),
    (range(2, 6), [2, 3, 4, 5], []),             # nothing new
])
def test_landed_by_stream_counts_each_new_chunk_once_and_covers_what_was_not_covered(landed, earlier, in_flight):
    job, m = make_job(n_chunks=8)
    covered: list[int] = []
    job.on_cover = lambda chunk_id, delta: covered.append(chunk_id * delta)
    job.on_cover_all = lambda chunk_ids: covered.extend(chunk_ids)
    job.landed_by_stream(earlier, "peer:a", 0.0)
    job.pending.remove_all([c for c in range(8) if c not in in_flight and c in job.pending])
    assert [c for a in job.next_assignments([seed("s0", m, None)], 0.0, 8) for c in a.chunk_ids] == in_flight
    covered.clear()
    before = (job.bytes_done, job.chunks_done, set(job.done_chunks))
    nbytes = job.landed_by_stream(landed, "peer:b", 1.0)
    new = set(landed) - before[2]
    assert nbytes == 4 * KiB * len(new) == job.bytes_done - before[0] == job.bytes_by_seed.get("peer:b", 0)
    assert job.chunks_done - before[1] == len(new)
    assert set(job.done_chunks) == before[2] | new and job.done_chunks.mask == sum(1 << c for c in job.done_chunks)
    assert sorted(covered) == sorted(new - set(in_flight))  # one in flight here counted as covered already
    assert not set(job.pending.ids()) & set(job.done_chunks)
