"""scheduler/stream_swarm.py: streams between members, the planner's share, reports, safety counts."""

from __future__ import annotations

import doctest

import pytest

import scheduler.stream_swarm as stream_swarm
from rfork_api.chunking import plan_chunks
from rfork_api.landed import LandedMapRef
from rfork_api.manifest import parse_manifest
from scheduler.planner import DONE, RUNNING, Job, PlannerConfig, Report, SourceView
from scheduler.stream_swarm import ENDED, FAILED, StreamReport, StreamSwarm, paced_report_seconds, stripe_ranges

CHUNK = 1 << 20
MANIFEST = parse_manifest({f"w{i}": [0x1000 + i * CHUNK, CHUNK // 2, 2] for i in range(16)})
PLAN = plan_chunks(MANIFEST, CHUNK, minimum=4096)  # 16 chunks
GROUP = "model/rank0"


def job(i: int) -> Job:
    return Job(f"j{i}", MANIFEST, PLAN, PlannerConfig(), now=0.0)


def ref(i: int) -> LandedMapRef:
    return LandedMapRef(f"10.0.0.{i}:1", 0x10_0000 * (i + 1), len(PLAN), len(MANIFEST))


def seed() -> SourceView:
    return SourceView("seed-0", "10.0.9.9:1", "http://agent", MANIFEST, None)


def swarm_of(n: int, stripes: int = 4, fanout: int = 4, **kw) -> tuple[StreamSwarm, list[Job]]:
    swarm = StreamSwarm(stripes=stripes, fanout=fanout, **kw)
    jobs = [job(i) for i in range(n)]
    for i, j in enumerate(jobs):
        swarm.join(j, GROUP, ref(i), now=0.0)
    return swarm, jobs


def test_doctests() -> None:
    assert doctest.testmod(stream_swarm, optionflags=doctest.ELLIPSIS).failed == 0


@pytest.mark.parametrize("chunks, stripes, sizes", [
    (16, 4, [4, 4, 4, 4]), (10, 4, [3, 3, 2, 2]), (3, 8, [1, 1, 1]), (1, 8, [1]), (0, 8, [0]),
])
def test_stripe_ranges_cover_the_plan_in_order(chunks: int, stripes: int, sizes: list[int]) -> None:
    ranges = stripe_ranges(chunks, stripes)
    assert [len(r) for r in ranges] == sizes
    assert [c for r in ranges for c in r] == list(range(chunks))


def test_the_first_member_reads_everything_from_the_seeds() -> None:
    swarm, (a,) = swarm_of(1)
    assert swarm.take("j0") == ([], [])
    got = a.next_assignments([seed()], 0.0, 64)
    assert sorted(c for x in got for c in x.chunk_ids) == list(range(16))


def test_later_members_stream_what_others_relay_and_the_planner_serves_only_their_seed_stripes() -> None:
    swarm, jobs = swarm_of(4)
    for i, j in enumerate(jobs):
        started, ended = swarm.take(j.job_id)
        streamed = {c for s in started for c in range(s.first_chunk, s.end_chunk)}
        assert ended == []
        assert streamed == set(j.streamed_chunks()), j.job_id
        assert all(s.parent_job_id != j.job_id and s.parent_map == ref(int(s.parent_job_id[1:])) for s in started)
        from_seeds = {c for x in j.next_assignments([seed()], 0.0, 64) for c in x.chunk_ids}
        assert from_seeds.isdisjoint(streamed) and from_seeds | streamed == set(range(16))
    # Each stripe leaves the seeds once: the four members' seed reads are the four stripes.
    assert sorted(len(j.chunks) - len(j.streamed_chunks()) for j in jobs) == [4, 4, 4, 4]


def test_reports_land_chunks_and_finish_the_job_and_free_the_parent() -> None:
    swarm, (a, b) = swarm_of(2, stripes=2, fanout=2)
    swarm.take("j0")
    started, _ = swarm.take("j1")
    assert len(started) == 1 and started[0].parent_job_id == "j0"
    s = started[0]
    assert swarm.readers_of("j0", now=1.0) == 1
    swarm.report("j1", [StreamReport(s.stream_id, landed=list(range(s.first_chunk, s.end_chunk)), state="done")], 1.0)
    assert swarm.readers_of("j0", now=1.0) == 0
    assert b.done_in(range(s.first_chunk, s.end_chunk)) == s.end_chunk - s.first_chunk
    assert b.progress()["bytes_from_peers"] == (s.end_chunk - s.first_chunk) * CHUNK
    rest = b.next_assignments([seed()], 1.0, 64)
    for x in rest:
        b.apply(Report(x.assignment_id, ok=True), 2.0)
    assert b.state == DONE


@pytest.mark.parametrize("landed", [[], [0, 1, 99]])
def test_a_done_report_lands_the_whole_stream_whatever_ids_it_carries(landed: list[int]) -> None:
    """Done means every chunk of the stream: clients leave the ids out, and any sent are not walked."""
    swarm, (_, b) = swarm_of(2, stripes=2, fanout=2)
    swarm.take("j0")
    (s,), _ = swarm.take("j1")
    swarm.report("j1", [StreamReport(s.stream_id, landed=[s.first_chunk])], 1.0)  # a progress report first
    swarm.report("j1", [StreamReport(s.stream_id, landed=landed, state="done")], 2.0)
    assert b.done_in(range(s.first_chunk, s.end_chunk)) == s.end_chunk - s.first_chunk
    assert b.progress()["bytes_from_peers"] == (s.end_chunk - s.first_chunk) * CHUNK
    assert (b.bytes_streaming, b.chunks_streaming) == (0, 0)  # the progress report's count went with it
    assert swarm.readers_of("j0", now=2.0) == 0


@pytest.mark.parametrize("members, rate, ceiling, seconds", [
    (1024, 256, 10.0, 4.0),       # a big scale-out: every 4 s, 256 reports a second in all
    (128, 256, 10.0, 0.5),        # under the client's own second: it keeps its own
    (0, 256, 10.0, 0.0),          # nobody streams
    (100_000, 256, 10.0, 10.0),   # never past the ceiling (a third of the client timeout)
    (1024, 0, 10.0, 0.0),         # pacing off
])
def test_paced_report_interval(members: int, rate: float, ceiling: float, seconds: float) -> None:
    assert paced_report_seconds(members, rate, ceiling) == seconds


def test_streaming_members_counts_the_members_reading_by_streams() -> None:
    swarm, jobs = swarm_of(9, stripes=4, fanout=4)
    streams = {j.job_id: swarm.take(j.job_id)[0] for j in jobs}
    assert swarm.streaming_members() == sum(len(ss) for ss in streams.values()) / 4
    assert 7 <= swarm.streaming_members() <= 9  # all but the roots' own stripes
    last = jobs[-1].job_id
    swarm.report(last, [StreamReport(s.stream_id, state="done") for s in streams[last]], 1.0)
    assert swarm.streaming_members() == (sum(len(ss) for ss in streams.values()) - len(streams[last])) / 4


def test_a_reader_that_left_counts_against_its_parent_until_the_read_deadline() -> None:
    swarm, _ = swarm_of(2, stripes=2, fanout=2, read_deadline_seconds=30.0)
    swarm.take("j1")
    swarm.leave("j1", now=10.0)
    assert swarm.withdraw("j0", now=20.0) == 1
    assert swarm.withdraw("j0", now=40.1) == 0


def test_a_parent_that_withdraws_moves_its_children_and_waits_for_their_confirmation() -> None:
    swarm, jobs = swarm_of(3, stripes=2, fanout=2)
    for j in jobs:
        swarm.take(j.job_id)
    children = [j for j in jobs if any(s.parent == "j0" for s in swarm._members[j.job_id].streams.values())]
    assert children, "someone streams from j0"
    in_flight = swarm.withdraw("j0", now=1.0)
    assert in_flight >= 1
    for child in children:
        started, ended = swarm.take(child.job_id)
        assert ended, "told to stop its stream from j0"
        assert all(s.parent_job_id != "j0" for s in started)
        swarm.report(child.job_id, [StreamReport(e, state=ENDED) for e in ended], 2.0)
    assert swarm.withdraw("j0", now=2.0) == 0


def test_a_parent_lost_report_takes_the_parent_out_and_moves_every_child() -> None:
    swarm, jobs = swarm_of(6, stripes=2, fanout=2)
    streams = {j.job_id: swarm.take(j.job_id)[0] for j in jobs}
    reader, stream = next((r, s) for r, ss in streams.items() for s in ss if s.parent_job_id != "j0")
    parent = stream.parent_job_id
    swarm.report(reader, [StreamReport(stream.stream_id, state=FAILED, reason="parent_lost", error="gone")], 1.0)
    trees = swarm._trees[GROUP]
    assert not trees._nodes[parent].alive
    for j in jobs:
        if j.job_id == parent:
            continue
        for s in range(trees.stripes):
            assert trees.parent(j.job_id, s) != parent
    started, _ = swarm.take(reader)
    assert [s.stripe for s in started] == [stream.stripe] or jobs[int(reader[1:])].pending


def test_a_stream_moved_back_to_the_seeds_gives_its_chunks_to_the_planner() -> None:
    swarm, (a, b) = swarm_of(2, stripes=2, fanout=2)
    (s,), _ = swarm.take("j1")
    swarm.leave("j0", now=1.0)
    _, ended = swarm.take("j1")
    assert ended == [s.stream_id]
    got = {c for x in b.next_assignments([seed()], 1.0, 64) for c in x.chunk_ids}
    assert set(range(s.first_chunk, s.end_chunk)) <= got


def test_a_failed_seed_read_of_a_streamed_chunk_is_not_queued_again() -> None:
    j = job(0)
    got = j.next_assignments([seed()], 0.0, 1)
    j.stream_chunks([range(min(got[0].chunk_ids), max(got[0].chunk_ids) + 1)])
    j.apply(Report(got[0].assignment_id, ok=False, reason="read_failed", error="x"), 1.0)
    assert not set(got[0].chunk_ids) & set(j.pending)
    assert j.state == RUNNING


def test_reports_of_unknown_or_foreign_streams_change_nothing() -> None:
    swarm, (a, b, c) = swarm_of(3, stripes=2, fanout=2)
    (s, *_), _ = swarm.take("j1")
    swarm.report("j2", [StreamReport(s.stream_id, landed=[0, 1], state="done")], 1.0)
    swarm.report("j1", [StreamReport("nope", landed=[0, 1], state="done")], 1.0)
    assert b.chunks_done == 0 and c.chunks_done == 0


def test_a_map_of_another_plan_is_refused() -> None:
    swarm = StreamSwarm()
    with pytest.raises(ValueError, match="chunks"):
        swarm.join(job(0), GROUP, LandedMapRef("h:1", 4096, 3, len(MANIFEST)), now=0.0)


def test_a_thousand_members_cost_one_decision_each_and_the_seeds_send_one_copy() -> None:
    swarm = StreamSwarm(stripes=4, fanout=4)
    jobs = [job(i) for i in range(1000)]
    for i, j in enumerate(jobs):
        swarm.join(j, GROUP, ref(i % 200), now=0.0)
    assert swarm.decisions == 1000
    assert sum(len(j.chunks) - len(j.streamed_chunks()) for j in jobs) == len(PLAN)


def test_a_capped_parent_shares_its_upload_cap_among_the_streams_reading_it():
    swarm = StreamSwarm(stripes=2, fanout=4)
    swarm.join(job(0), GROUP, ref(0), now=0.0, upload_rate=400e6)
    swarm.join(job(1), GROUP, ref(1), now=0.0)
    adopted, _ = swarm.take("j0")
    (from_j0,), _ = swarm.take("j1")
    assert from_j0.parent_job_id == "j0" and from_j0.max_rate == 400e6  # its only reader: the whole cap
    assert adopted and all(s.max_rate is None for s in adopted)  # from j1, which offered no cap
    swarm.join(job(2), GROUP, ref(2), now=0.0)
    new, _ = swarm.take("j2")
    shares = [s.max_rate for s in new if s.parent_job_id == "j0"]
    assert shares == [200e6]
    assert swarm.take_rates("j1") == {from_j0.stream_id: 200e6}  # told with its next /work reply
    assert swarm.take_rates("j1") == {}
    # A reader that finishes gives its share back to the others.
    swarm.report("j1", [StreamReport(from_j0.stream_id, state="done")], now=1.0)
    j2_from_j0 = next(s for s in new if s.parent_job_id == "j0")
    assert swarm.take_rates("j2") == {j2_from_j0.stream_id: 400e6}


def test_a_group_waits_for_min_members_then_joins_them_in_order():
    swarm = StreamSwarm(stripes=2, fanout=2, min_members=3)
    jobs = [job(i) for i in range(4)]
    swarm.join(jobs[0], GROUP, ref(0), now=0.0)
    swarm.join(jobs[1], GROUP, ref(1), now=0.0)
    assert not swarm.is_member("j0") and swarm.take("j1") == ([], [])
    swarm.leave("j1", now=0.5)  # a waiting member that goes is forgotten
    swarm.join(jobs[1], GROUP, ref(1), now=0.6)
    swarm.join(jobs[2], GROUP, ref(2), now=1.0)
    assert all(swarm.is_member(f"j{i}") for i in range(3))
    assert sum(len(swarm.take(f"j{i}")[0]) for i in range(3)) > 0
    swarm.join(jobs[3], GROUP, ref(3), now=2.0)  # the group streams: later members join at once
    assert swarm.is_member("j3")
    assert sum(len(j.chunks) - len(j.streamed_chunks()) for j in jobs) == len(PLAN)


# -- the endgame: finished members' idle uploads take over slow streams ------------------

MANIFEST_64 = parse_manifest({f"w{i}": [0x1000 + i * CHUNK, CHUNK // 2, 2] for i in range(64)})
PLAN_64 = plan_chunks(MANIFEST_64, CHUNK, minimum=4096)  # 64 chunks: 32 a stripe with 2 stripes


def endgame_swarm() -> tuple[StreamSwarm, list[Job], dict[str, dict[int, object]]]:
    """Six members, 2 stripes, fanout 4: j0 and j1 relay stripes 0 and 1 to four readers each, j3 reads
    both from them and nobody reads from j3, j4 reads stripe 0 from j0 (told streams by member and stripe)."""
    swarm = StreamSwarm(stripes=2, fanout=4)
    jobs = [Job(f"j{i}", MANIFEST_64, PLAN_64, PlannerConfig(), now=0.0) for i in range(6)]
    for i, j in enumerate(jobs):
        swarm.join(j, GROUP, LandedMapRef(f"10.0.0.{i}:1", 0x10_0000 * (i + 1), len(PLAN_64), len(MANIFEST_64)), 0.0)
    told = {j.job_id: {s.stripe: s for s in swarm.take(j.job_id)[0]} for j in jobs}
    assert told["j4"][0].parent_job_id == "j0" and swarm.readers_of("j0", 0.0) == 4
    assert {s.parent_job_id for s in told["j3"].values()} == {"j0", "j1"} and swarm.readers_of("j3", 0.0) == 0
    return swarm, jobs, told


def finish_by_streams(swarm: StreamSwarm, job_id: str, streams: dict, now: float) -> None:
    swarm.report(job_id, [StreamReport(s.stream_id, landed=list(range(s.first_chunk, s.end_chunk)), state="done")
                          for s in streams.values()], now)


def test_a_finished_member_with_idle_upload_takes_over_a_slow_stream_at_the_readers_report() -> None:
    swarm, jobs, told = endgame_swarm()
    finish_by_streams(swarm, "j3", told["j3"], 1.0)
    assert jobs[3].state == DONE
    slow = told["j4"][0]
    swarm.report("j4", [StreamReport(slow.stream_id, landed=[slow.first_chunk])], 1.5)  # 1 of 32 in 1.5 s
    started, ended = swarm.take("j4")
    assert ended == [slow.stream_id]
    assert [(s.stripe, s.parent_job_id, s.first_chunk, s.end_chunk) for s in started] == [
        (0, "j3", slow.first_chunk, slow.end_chunk)]
    assert started[0].parent_map == LandedMapRef("10.0.0.3:1", 0x10_0000 * 4, len(PLAN_64), len(MANIFEST_64))
    assert swarm.endgame_moves == 1 and swarm.readers_of("j3", 1.5) == 1
    # The old stream counts against j0 (j1, j2 and j4 read from it since j3 finished) until j4 confirms
    # it stopped; what it landed stays landed.
    assert swarm.readers_of("j0", 1.5) == 3
    swarm.report("j4", [StreamReport(slow.stream_id, state="ended")], 1.6)
    assert swarm.readers_of("j0", 1.6) == 2 and jobs[4].done_in(range(slow.first_chunk, slow.first_chunk + 1)) == 1
    # Its next report is not a second move: j3 is already its parent there.
    swarm.report("j4", [StreamReport(started[0].stream_id, landed=[slow.first_chunk + 1])], 1.7)
    assert swarm.take("j4") == ([], []) and swarm.endgame_moves == 1


def test_busy_finished_members_do_not_hide_an_idle_one_behind_them() -> None:
    swarm, jobs, told = endgame_swarm()
    swarm.candidates = 1  # (it looks at 4 x candidates in turn)
    seed_64 = SourceView("seed-0", "10.0.9.9:1", "http://agent", MANIFEST_64, None)
    for relay in ("j0", "j1"):  # finished first, each feeding fanout (4) streams: no upload to spare
        finish_by_streams(swarm, relay, told[relay], 0.8)
        for a in jobs[int(relay[1])].next_assignments([seed_64], 0.8, 64):
            jobs[int(relay[1])].apply(Report(a.assignment_id, ok=True), 0.8)
        assert jobs[int(relay[1])].state == DONE and swarm.take(relay) == ([], [])
    finish_by_streams(swarm, "j5", told["j5"], 0.9)  # finished too; j4 reads stripe 1 from it
    finish_by_streams(swarm, "j3", told["j3"], 1.0)  # finished last, nobody reading from it
    slow = told["j4"][0]
    swarm.report("j4", [StreamReport(slow.stream_id, landed=[slow.first_chunk])], 1.5)
    started, ended = swarm.take("j4")
    assert [(s.stripe, s.parent_job_id) for s in started] == [(0, "j3")] and ended == [slow.stream_id]


@pytest.mark.parametrize("case", ["nobody finished", "nearly done", "the finished member withdrew"])
def test_the_endgame_moves_nothing_without_a_finished_idle_upload_that_pays_off(case: str) -> None:
    swarm, jobs, told = endgame_swarm()
    left = {0: 31, 1: 31}  # chunks of each of j4's streams not landed yet
    if case != "nobody finished":
        finish_by_streams(swarm, "j3", told["j3"], 1.0)
    if case == "nearly done":
        left = {0: 3, 1: 3}  # of 32: under an eighth
    elif case == "the finished member withdrew":
        swarm.withdraw("j3", 1.2)
    swarm.report("j4", [StreamReport(s.stream_id, landed=list(range(s.first_chunk, s.end_chunk - left[stripe])))
                        for stripe, s in told["j4"].items()], 1.5)
    assert swarm.take("j4") == ([], []) and swarm.endgame_moves == 0


def test_the_endgame_never_feeds_a_stripe_from_a_member_below_the_reader_there() -> None:
    swarm, jobs, told = endgame_swarm()
    assert told["j5"][0].parent_job_id == "j2"  # j2 relays stripe 0 to j5
    finish_by_streams(swarm, "j5", told["j5"], 1.0)  # (as if j5 had its chunks from elsewhere)
    swarm.report("j2", [StreamReport(s.stream_id, landed=[s.first_chunk]) for s in told["j2"].values()], 1.5)
    started, ended = swarm.take("j2")
    # Stripe 1 may move to j5 (it reads that one from j1); stripe 0 may not: j5 is below j2 there.
    assert [s.stripe for s in started] == [1] and ended == [told["j2"][1].stream_id]
    assert started[0].parent_job_id == "j5"
