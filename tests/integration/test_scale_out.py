"""Scale-out end to end: fork clients as separate processes feed each other (issue #14).

Real processes on loopback, real TransferEngine over TCP: a scheduler, seed
stand-ins and agents as `rfork testbed` starts them, and N client processes
(testbed.fleet_client) that each check their own bytes against an independent
regeneration of the weights. Rates are capped so the runs are network-bound.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testbed.chaos import SCENARIOS, ChaosOptions
from testbed.fleet import Fleet, FleetSpec
from testbed.scale_out import ScaleOutOptions, run_scale_out

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MiB = 1 << 20
RATE = 16e6
"""Seed and client upload caps: a 12 MiB model takes ~0.8 s from one seed."""


def fleet_spec(tmp_path, seeds: int = 1, size: int = 12 * MiB) -> FleetSpec:
    return FleetSpec(seeds=seeds, preset=None, size_bytes=size, seed_rates=(RATE,), log_dir=str(tmp_path))


def test_three_clients_feed_each_other_and_each_verifies_itself(tmp_path):
    with Fleet(fleet_spec(tmp_path)) as fleet:
        result = run_scale_out(fleet, ScaleOutOptions(clients=3, client_rate=RATE, chunk_size=512 * 1024))
    clients = result["clients"]
    assert [c["verified"] for c in clients] == [True] * 3, [c["mismatched_tensors"] for c in clients]
    assert result["bytes_from_peers"] > 0, clients
    assert all(c["bytes_from_seeds"] + c["bytes_from_peers"] >= result["model_bytes"] for c in clients)
    # The seed serves about one copy; reading every byte from it would be three.
    assert result["seed_bytes_served"] < 2 * result["model_bytes"], result["seeds"]
    assert all(c["withdraw_confirmed"] for c in clients), clients
    assert result["time_to_all_seconds"] > 0


@pytest.mark.parametrize("stripes", [8, 0])
def test_streaming_clients_follow_each_others_landed_maps_and_verify(stripes, tmp_path):
    spec = FleetSpec(seeds=1, preset=None, size_bytes=12 * MiB, seed_rates=(RATE,), log_dir=str(tmp_path),
                     scheduler_args=("--stream-stripes", str(stripes), "--stream-min-members", "1"))
    with Fleet(spec) as fleet:
        result = run_scale_out(fleet, ScaleOutOptions(clients=4, client_rate=RATE, chunk_size=512 * 1024))
    clients = result["clients"]
    assert [c["verified"] for c in clients] == [True] * 4, [c["mismatched_tensors"] for c in clients]
    assert all(c["withdraw_confirmed"] for c in clients), clients
    if stripes:
        assert result["streams"]["started"] >= 4, "every later member streams some stripes"
        assert result["seed_bytes_served"] < 2 * result["model_bytes"], result["seeds"]
    else:
        assert result["streams"]["started"] == 0
    assert result["streams"]["failed"] == 0


def test_paced_stream_reports_never_hold_up_a_fork(tmp_path):
    """The scheduler paces streaming members' progress reports to its rate: here to the ceiling, a third
    of a 90 s client timeout (30 s), far longer than the fork. A member still calls as soon as its
    streams end (or one fails), so the scale-out ends at its transfer's pace, not the report interval's."""
    spec = FleetSpec(seeds=1, preset=None, size_bytes=12 * MiB, seed_rates=(RATE,), log_dir=str(tmp_path),
                     scheduler_args=("--stream-min-members", "1", "--stream-reports-per-second", "0.01",
                                     "--client-timeout", "90"))
    with Fleet(spec) as fleet:
        result = run_scale_out(fleet, ScaleOutOptions(clients=4, client_rate=RATE, chunk_size=512 * 1024))
    clients = result["clients"]
    assert [c["verified"] for c in clients] == [True] * 4, [c["mismatched_tensors"] for c in clients]
    assert result["streams"]["started"] >= 4 and result["streams"]["failed"] == 0
    assert all(c["withdraw_confirmed"] for c in clients), clients
    assert result["time_to_all_seconds"] < 20, result["time_to_all_seconds"]  # a report interval would be 30 s


def test_without_peers_every_byte_comes_from_the_seeds(tmp_path):
    with Fleet(fleet_spec(tmp_path)) as fleet:
        result = run_scale_out(fleet, ScaleOutOptions(clients=2, peers=False, chunk_size=512 * 1024))
    clients = result["clients"]
    assert all(c["verified"] for c in clients)
    assert [c["bytes_from_peers"] for c in clients] == [0, 0]
    assert [c["bytes_from_seeds"] for c in clients] == [result["model_bytes"]] * 2
    assert result["seed_bytes_served"] >= 2 * result["model_bytes"]


@pytest.mark.parametrize("name", ["peer-kill-mid-fork", "peer-fail-fallback-50pct", "8-clients-seed-kill-50pct"])
def test_peer_faults_lose_nothing(name, tmp_path):
    result = SCENARIOS[name](ChaosOptions(size_bytes=24 * MiB, chunk_size=MiB, seed_rate=RATE,
                                          log_dir=str(tmp_path)))
    assert result.survived, (result.error, result.lost, result.detail)
    assert result.lost == []


# --------------------------------------------------------------------------- withdraw


def _job(fleet: Fleet, identity: dict, manifest: dict, base: int) -> str:
    """A hand-played reader: a job whose client never reads (its pointers are made up), only asks for work.
    It offers no peer session: what it 'lands' must not make it a source."""
    fake = {name: [base + i * 2**30, numel, esize] for i, (name, (_, numel, esize)) in enumerate(manifest.items())}
    r = httpx.post(f"{fleet.scheduler_url}/v1/jobs", timeout=10, json={
        "identity": identity, "rank": 0, "manifest": fake, "chunk_size_bytes": MiB})
    assert r.status_code == 201, r.text
    return r.json()["job_id"]


def _peer_reads(fleet: Fleet, job_id: str, reports=()) -> list[dict]:
    r = httpx.post(f"{fleet.scheduler_url}/v1/jobs/{job_id}/work", timeout=10,
                   json={"max_assignments": 4, "reports": list(reports)})
    assert r.status_code == 200, r.text
    return [a for a in r.json()["assignments"] if a["source_kind"] == "peer"]


@pytest.fixture
def served(tmp_path):
    """A fleet and a client (this process, real TransferEngine) whose finished fork still serves as a peer."""
    import torch

    from rfork_agent.destination import allocate_like
    from rfork_agent.fork import ForkClient, ForkOptions, register_tensors
    from rfork_agent.transport import MooncakeTransport
    from testbed.orchestrator import seed_te_info

    with Fleet(FleetSpec(seeds=1, preset=None, size_bytes=4 * MiB, log_dir=str(tmp_path))) as fleet:
        identity = fleet.identity().model_dump()
        _, manifest = seed_te_info(fleet.seeds[0].url, 0)
        tensors, _buffer = allocate_like(manifest, torch)
        transport = MooncakeTransport(protocol="tcp", local_ip="127.0.0.1")
        register_tensors(transport, tensors)
        client = ForkClient(fleet.scheduler_url, transport,
                            options=ForkOptions(withdraw_wait_seconds=3.0, withdraw_poll_seconds=0.02))
        loop = asyncio.new_event_loop()
        result = loop.run_until_complete(client.fork(identity, 0, tensors, chunk_size_bytes=MiB,
                                                     peer=client.peer_offer(), keep_serving=True))
        assert result.serving
        yield fleet, client, loop, identity, manifest
        loop.run_until_complete(client.stop_serving())
        loop.close()


def test_withdraw_waits_until_the_reads_from_the_peer_are_reported(served):
    fleet, client, loop, identity, manifest = served
    reader = _job(fleet, identity, manifest, base=1 << 44)
    reads = _peer_reads(fleet, reader)
    assert reads and all(a["seed_id"] == f"peer:{client.job_id}" for a in reads), reads
    stopping = loop.create_task(client.stop_serving())
    loop.run_until_complete(asyncio.wait([stopping], timeout=1.0))
    assert not stopping.done(), "stop_serving returned while reads from the peer were on the wire"
    # The reader reports its reads: only now may the peer's memory change.
    _peer_reads(fleet, reader, reports=[{"assignment_id": a["assignment_id"], "ok": True} for a in reads])
    withdrawal = loop.run_until_complete(asyncio.wait_for(stopping, 10))
    assert withdrawal.confirmed and withdrawal.reads_in_flight == 0 and withdrawal.seconds >= 1.0
    job_id = withdrawal.job_id
    assert httpx.get(f"{fleet.scheduler_url}/v1/jobs/{job_id}", timeout=5).status_code == 404  # deleted after
    # Nothing new comes from the withdrawn peer.
    assert not _peer_reads(fleet, _job(fleet, identity, manifest, base=1 << 45))


def test_a_read_reported_not_read_settles_too_and_fails_no_source(served):
    """A client says so of an assignment it never read (the scheduler cancelled it, or its fork
    ended first): the read stops counting on the peer at once, and is no failure of the peer."""
    fleet, client, loop, identity, manifest = served

    def peer_failures() -> float:
        text = httpx.get(f"{fleet.scheduler_url}/metrics", timeout=5).text
        return sum(s.value for f in text_string_to_metric_families(text) if f.name == "rfork_scheduler_chunk_failures"
                   for s in f.samples if s.name.endswith("_total") and s.labels.get("seed") == "peer")

    reader = _job(fleet, identity, manifest, base=1 << 44)
    reads = _peer_reads(fleet, reader)
    assert reads
    failures = peer_failures()
    _peer_reads(fleet, reader, reports=[{"assignment_id": a["assignment_id"], "ok": False, "reason": "not_read",
                                         "error": "not read: the fork ended first"} for a in reads])
    withdrawal = loop.run_until_complete(asyncio.wait_for(client.stop_serving(), 10))
    assert withdrawal.confirmed and withdrawal.reads_in_flight == 0 and withdrawal.seconds < 3.0
    assert peer_failures() == failures


def test_withdraw_gives_up_after_its_bound_and_says_so(served):
    fleet, client, loop, identity, manifest = served
    reader = _job(fleet, identity, manifest, base=1 << 44)
    assert _peer_reads(fleet, reader)  # and never reported
    withdrawal = loop.run_until_complete(client.stop_serving())
    assert not withdrawal.confirmed and withdrawal.reads_in_flight > 0
    assert withdrawal.seconds >= 3.0
    assert "without the scheduler's confirmation" in withdrawal.describe()


# --------------------------------------------------------------------------- rfork fork


def test_a_served_fork_feeds_a_later_one_and_sigint_withdraws(tmp_path):
    """`rfork fork --serve-seconds` keeps serving after its fork; a later `rfork fork` reads from it."""
    with Fleet(FleetSpec(seeds=1, preset=None, size_bytes=8 * MiB, seed_rates=(RATE,),
                         log_dir=str(tmp_path))) as fleet:
        def fork(name: str, *extra: str) -> subprocess.Popen:
            return subprocess.Popen(
                [sys.executable, "-m", "rfork_agent.cli", "fork", "--scheduler", fleet.scheduler_url,
                 "--like-seed", fleet.seeds[0].url, "--chunk-size", "1MiB", "--no-progress",
                 "--json", str(tmp_path / f"{name}.json"), *extra],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        first = fork("first", "--serve-seconds", "120", "--peer-rate", "200MB/s")
        for line in first.stderr:  # wait for the fork to be done and serving
            if "serving its chunks to other clients" in line:
                break
        else:
            pytest.fail(f"the first fork never served: exit {first.wait()}")
        second = fork("second", "--no-peers")
        assert second.wait(timeout=120) == 0, second.stderr.read()
        later = json.loads((tmp_path / "second.json").read_text())
        assert later["bytes_from_peers"] > 0 and later["bytes_from_peers"] + later["bytes_from_seeds"] == later["bytes"]
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=60) == 128 + signal.SIGINT
        err = first.stderr.read()
        assert "interrupted by SIGINT" in err and "stopped serving as a peer" in err, err
        assert "Traceback" not in err
