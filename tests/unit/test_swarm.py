"""Peer bookkeeping (scheduler.swarm) with the real planner: tables and a fake clock, no I/O."""

from __future__ import annotations

import pytest

from rfork_api.manifest import parse_manifest
from scheduler.chunking import plan_chunks
from scheduler.planner import DONE, PEER, Job, PlannerConfig, Report, SourceView, stripe_start
from scheduler.swarm import PeerOffer, Swarm, group_key

KiB = 1024
CHUNK = 4 * KiB


def manifest(n_chunks: int, base: int) -> dict:
    return parse_manifest({"w": [base, n_chunks * CHUNK, 1]})


def seed(m, rate=None) -> SourceView:
    return SourceView("seed-0", "seed:1", "http://seed", m, rate)


class Fleet:
    """N jobs of one group on a fake clock; every read takes one tick."""

    def __init__(self, n_jobs: int, n_chunks: int, offer: PeerOffer | None = PeerOffer("x", None, 4),
                 config: PlannerConfig = PlannerConfig(max_assignment_bytes=0)) -> None:
        self.swarm = Swarm(read_deadline_seconds=5.0)
        self.seed_manifest = manifest(n_chunks, 1 << 40)
        self.jobs: list[Job] = []
        for k in range(n_jobs):
            m = manifest(n_chunks, (k + 1) << 30)
            key = group_key("model", 0, m, CHUNK)
            start = stripe_start(n_chunks, self.swarm.next_index(key))
            job = Job(f"j{k}", m, plan_chunks(m, CHUNK), config, 0.0, start=start)
            mine = None if offer is None else PeerOffer(f"s{k}", offer.rate, offer.max_in_flight)
            self.swarm.join(job, key, mine, 0.0)
            self.jobs.append(job)
        self.live: dict[str, tuple[Job, object]] = {}

    def tick(self, now: float, seed_rate=None) -> None:
        for job_id_a, (job, a) in list(self.live.items()):
            job.apply(Report(a.assignment_id, ok=True, seconds=1.0), now)
            self.swarm.settled(a.assignment_id)
            del self.live[job_id_a]
        for job in self.jobs:
            sources = [seed(self.seed_manifest, seed_rate), *self.swarm.sources_for(job.job_id, now)]
            out = job.next_assignments(sources, now, 8, covered=self.swarm.covered_for(job.job_id))
            self.swarm.assigned(out, job.job_id, now)
            for a in out:
                self.live[a.assignment_id] = (job, a)

    def run(self, max_ticks=1000, seed_rate=None) -> int:
        for t in range(1, max_ticks):
            self.tick(float(t), seed_rate)
            if all(j.state == DONE for j in self.jobs):
                return t
        raise AssertionError("the fleet did not finish")

    def seed_bytes(self) -> int:
        return sum(j.bytes_by_kind["seed"] for j in self.jobs)

    def land_from_seed(self, job: Job, max_in_flight: int = 8) -> None:
        """``job`` reads what one decision gives it from the seed, and every read lands at t = 0."""
        for a in job.next_assignments([seed(self.seed_manifest)], 0.0, max_in_flight):
            job.apply(Report(a.assignment_id, ok=True), 0.0)


def test_group_key_ignores_pointers_but_not_shapes_or_chunk_size():
    a, b = manifest(4, 1 << 30), manifest(4, 2 << 30)
    assert group_key("m", 0, a, CHUNK) == group_key("m", 0, b, CHUNK)
    assert group_key("m", 0, a, CHUNK) != group_key("m", 0, manifest(5, 1 << 30), CHUNK)
    assert group_key("m", 0, a, CHUNK) != group_key("m", 0, a, 2 * CHUNK)
    assert group_key("m", 0, a, CHUNK) != group_key("m", 1, a, CHUNK)


def test_group_key_counts_the_manifests_order():
    """Chunks are planned in manifest order: the same tensors listed in another order are other chunk ids."""
    ab = parse_manifest({"a": [1 << 30, 8192, 1], "b": [2 << 30, 8192, 1]})
    ba = parse_manifest({"b": [3 << 30, 8192, 1], "a": [4 << 30, 8192, 1]})
    assert group_key("m", 0, ab, CHUNK) != group_key("m", 0, ba, CHUNK)
    as_mapping = {name: ab[name] for name in ab}  # the same manifest as a plain mapping: the same key
    assert group_key("m", 0, as_mapping, CHUNK) == group_key("m", 0, ab, CHUNK)


@pytest.mark.parametrize("n_jobs", [1, 2, 4, 8])
def test_with_peers_the_seed_serves_about_one_copy_whatever_the_number_of_jobs(n_jobs):
    fleet = Fleet(n_jobs, n_chunks=64)
    fleet.run()
    model = 64 * CHUNK
    assert all(j.bytes_done == model for j in fleet.jobs)
    assert fleet.seed_bytes() <= 1.5 * model


def test_without_peer_offers_every_job_reads_everything_from_the_seed():
    fleet = Fleet(4, n_chunks=32, offer=None)
    fleet.run()
    assert fleet.seed_bytes() == 4 * 32 * CHUNK


def test_a_capped_seed_with_peers_finishes_the_fleet_near_one_forks_time():
    # The seed moves 4 chunks per tick; alone, one job needs 64/4 = 16 ticks, 8 jobs direct 128.
    rate_for_4_chunks = 4 * CHUNK / PlannerConfig().pipeline_seconds
    one = Fleet(1, n_chunks=64).run(seed_rate=rate_for_4_chunks)
    eight = Fleet(8, n_chunks=64).run(seed_rate=rate_for_4_chunks)
    assert eight <= 1.5 * one + 4


def test_a_peers_reads_are_outstanding_until_reported_and_withdraw_counts_them():
    fleet = Fleet(2, n_chunks=4)
    a, b = fleet.jobs
    seed_view = seed(fleet.seed_manifest)
    for x in a.next_assignments([seed_view], 0.0, 8):
        a.apply(Report(x.assignment_id, ok=True), 0.0)
    assert a.state == DONE
    reads = b.next_assignments([seed_view, *fleet.swarm.sources_for("j1", 0.0)], 0.0, 8,
                               covered=fleet.swarm.covered_for("j1"))
    assert reads and all(r.source_kind == PEER and r.seed_id == "peer:j0" for r in reads)
    fleet.swarm.assigned(reads, "j1", 0.0)
    assert fleet.swarm.withdraw("j0", 1.0) == len(reads)  # still on the wire: keep the memory
    assert fleet.swarm.sources_for("j1", 1.0) == []       # withdrawn: no new reads from it
    for r in reads:
        fleet.swarm.settled(r.assignment_id)
    assert fleet.swarm.withdraw("j0", 2.0) == 0            # now it may free or rewrite


def test_a_silent_readers_reads_hold_the_peer_until_their_deadline():
    fleet = Fleet(2, n_chunks=2)
    a, b = fleet.jobs
    fleet.land_from_seed(a)
    reads = b.next_assignments(fleet.swarm.sources_for("j1", 0.0), 0.0, 8, covered=fleet.swarm.covered_for("j1"))
    fleet.swarm.assigned(reads, "j1", 0.0)
    fleet.swarm.leave("j1", now=10.0)  # the reader was abandoned without reporting
    assert fleet.swarm.withdraw("j0", 14.9) == len(reads)
    assert fleet.swarm.withdraw("j0", 15.1) == 0


@pytest.mark.parametrize("max_in_flight, rate, expected", [
    (2, None, 2),            # two read slots, shared by every reader
    (8, 4 * CHUNK / 0.5, 4),  # the bucket's burst (0.5 s of rate = 4 chunks) buys 4 reads; the other reader waits
])
def test_a_peers_upload_limits_hold_across_all_its_readers(max_in_flight, rate, expected):
    fleet = Fleet(3, n_chunks=8, offer=PeerOffer("x", rate, max_in_flight))
    server, r1, r2 = fleet.jobs
    fleet.land_from_seed(server, max_in_flight=100)
    given = 0
    for reader in (r1, r2):
        peers = [p for p in fleet.swarm.sources_for(reader.job_id, 0.0) if p.source_id == "peer:j0"]
        out = reader.next_assignments(peers, 0.0, 100)
        fleet.swarm.assigned(out, reader.job_id, 0.0)
        given += len(out)
    assert given == expected


def test_a_peer_that_left_is_no_source_and_its_readers_are_returned():
    fleet = Fleet(2, n_chunks=2)
    a, b = fleet.jobs
    fleet.land_from_seed(a)
    assert [j.job_id for j in fleet.swarm.leave("j0", 1.0)] == ["j1"]
    assert fleet.swarm.sources_for("j1", 1.0) == [] and not fleet.swarm.is_member("j0")


def test_a_peer_whose_job_ended_still_counts_the_reads_from_it_until_they_are_reported():
    fleet = Fleet(2, n_chunks=2)
    a, b = fleet.jobs
    fleet.land_from_seed(a)
    reads = b.next_assignments(fleet.swarm.sources_for("j1", 0.0), 0.0, 8, covered=fleet.swarm.covered_for("j1"))
    fleet.swarm.assigned(reads, "j1", 0.0)
    fleet.swarm.leave("j0", 1.0)  # its job failed at the scheduler; its client will fall back and rewrite memory
    assert fleet.swarm.withdraw("j0", 1.0) == len(reads)  # so it must wait: the reads are still on the wire
    for r in reads:
        fleet.swarm.settled(r.assignment_id)
    assert fleet.swarm.withdraw("j0", 2.0) == 0


def _uncovered_truth(fleet: Fleet) -> set[int]:
    n = len(fleet.jobs[0].chunks)
    truth = {c for c in range(n) if not any(j.chunks[c].done or j.chunks[c].live for j in fleet.jobs)}
    # The per-chunk counts behind it too (a merged assignment updates them in one bulk call).
    key = fleet.swarm._members[fleet.jobs[0].job_id].key
    assert fleet.swarm._cover_count[key] == [sum(j.covers(c) for j in fleet.jobs) for c in range(n)]
    assert fleet.swarm._uncovered[key].mask == sum(1 << c for c in fleet.swarm._uncovered[key])
    return truth


def test_the_uncovered_set_follows_assignments_landings_failures_and_leaving():
    fleet = Fleet(n_jobs=3, n_chunks=12)
    key = fleet.swarm._members["j0"].key
    assert fleet.swarm._uncovered[key] == set(range(12))
    fleet.tick(1.0)
    assert fleet.swarm._uncovered[key] == _uncovered_truth(fleet)
    job, a = next(iter(fleet.live.values()))
    job.apply(Report(a.assignment_id, ok=False, reason="read_failed", error="boom"), 1.5)
    assert fleet.swarm._uncovered[key] == _uncovered_truth(fleet)
    fleet.swarm.leave("j1", 2.0)
    fleet.jobs = [j for j in fleet.jobs if j.job_id != "j1"]
    assert fleet.swarm._uncovered[key] == _uncovered_truth(fleet)
    fleet.live = {k: v for k, v in fleet.live.items() if v[0].job_id != "j1"}
    fleet.run()
    assert fleet.swarm._uncovered[key] == set()


def test_over_a_few_decisions_a_job_meets_every_serving_peer():
    swarm = Swarm(read_deadline_seconds=5.0, max_peers_per_decision=2)
    m = manifest(4, 1 << 30)
    key = group_key("model", 0, m, CHUNK)
    jobs = []
    for k in range(10):
        job = Job(f"j{k}", m, plan_chunks(m, CHUNK), PlannerConfig(), 0.0)
        job.done_chunks.add(0)  # each holds something, so each may be offered
        swarm.join(job, key, PeerOffer(f"s{k}"), 0.0)
        jobs.append(job)
    seen = {v.source_id for _ in range(50) for v in swarm.sources_for("j0", 0.0)}
    assert seen == {f"peer:j{k}" for k in range(1, 10)}


def test_a_job_that_lost_a_seed_still_counts_peers_outside_its_sample_and_discounts_peers_it_excluded():
    fleet = Fleet(n_jobs=3, n_chunks=8)
    j0, j1, j2 = fleet.jobs
    j1.resume([0, 1], now=0.0)  # j1 holds chunks 0 and 1; j2 holds chunk 1 too
    j2.resume([1], now=0.0)
    j0.seed_lost("seed-9", "seed_lost: no heartbeat", 0.5)  # a seed left: says nothing about peers
    out = j0.next_assignments([seed(fleet.seed_manifest)], 1.0, 8, covered=fleet.swarm.covered_for("j0"))
    assert not {0, 1} & {c for a in out for c in a.chunk_ids}  # peers (none of them sampled here) cover them
    finish = [Report(a.assignment_id, ok=False, reason="seed_lost") for a in out]
    for r in finish:
        j0.apply(r, 1.5)
    j0.exclude("peer:j1", "read_failed: boom", 2.0)
    covered = fleet.swarm.covered_for("j0")
    assert covered.get(0) is None and covered.get(1) is not None  # only j1 had 0; j2 still covers 1
