"""End to end: real processes on loopback, real TransferEngine over TCP.

Scheduler, seed stand-ins and agents run as separate processes exactly as
`rfork testbed` starts them; the fork client runs in the test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time

import pytest

from testbed.orchestrator import TestbedOptions, run_testbed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MiB = 2**20


def test_three_seed_fork_is_byte_exact_and_uses_every_seed(tmp_path):
    result = run_testbed(TestbedOptions(
        seeds=3, model=None, size_bytes=48 * MiB, chunk_size=2 * MiB, seed_rates=(200e6,),
        include_zero_byte=True, progress=False, log_dir=str(tmp_path),
    ))
    assert result["verified"], result["ranks"][0]["mismatched_tensors"]
    assert result["bytes"] >= 45 * MiB
    assert all(s["bytes"] > 0 for s in result["seeds"]), result["seeds"]
    assert sum(s["bytes"] for s in result["seeds"]) >= result["bytes"]


def test_seed_killed_mid_fork_is_retried_elsewhere_and_verified(tmp_path):
    # The kill must land mid-fork: while chunks are still pending, which the scheduler hands
    # to seed-1 as long as it believes seed-1 alive, so the job cannot end before a failed
    # lease or read, or the agent's deregistration, tells it seed-1 is gone. The planner
    # keeps about cap x 0.5 s in flight per seed (PlannerConfig.pipeline_seconds): at
    # 40 MB/s that was 20 MB per seed, the whole 48 MiB model from the first second, so the
    # kill "at 30%" came after seed-1 had been handed - and often had sent - its whole share,
    # and whether the job heard of the death before its last chunk landed was a race. At
    # 3.5 MB/s a seed holds one 2 MiB chunk at a time (no merging): at the kill at most 3 of
    # the 26 chunks are in flight and at least 12 are still pending, seconds of work for the
    # two survivors.
    result = run_testbed(TestbedOptions(
        seeds=3, model=None, size_bytes=48 * MiB, chunk_size=2 * MiB, seed_rates=(3.5e6,),
        kill_seed_at=0.3, kill_seed_index=1, progress=False, log_dir=str(tmp_path),
    ))
    rank = result["ranks"][0]
    # What a failure here needs to be told apart (a lost byte, a kill that missed, a job that never
    # heard of the death): the rank's record and the seeds', and the logs under tmp_path.
    record = {k: rank.get(k) for k in ("mismatched_tensors", "failed_seeds", "retried_chunks", "bytes_by_seed",
                                       "kill_at_bytes")}
    assert result["verified"], (record, tmp_path)
    killed = [s for s in result["seeds"] if s["killed"]]
    assert [s["id"] for s in killed] == ["seed-1"], (result["seeds"], record)
    assert rank["failed_seeds"].get("seed-1"), (record, tmp_path)


def test_two_ranks_fork_independently(tmp_path):
    result = run_testbed(TestbedOptions(
        seeds=2, model="tiny", tp_size=2, progress=False, log_dir=str(tmp_path), compare_baseline=True,
    ))
    assert result["verified"] and result["baseline_verified"]
    assert [r["rank"] for r in result["ranks"]] == [0, 1]


def test_an_agent_restarted_mid_fork_serves_the_same_fork_again(tmp_path):
    """Its seed is excluded while the agent is down (agent_unreachable), then used again."""
    import threading

    import httpx

    from rfork_agent.fork import ForkClient, register_tensors
    from rfork_agent.transport import MooncakeTransport
    from testbed.fleet import Fleet, FleetSpec
    from testbed.orchestrator import verify_rank

    # seed-0 alone would take ~25 s; seed-1 (10x faster) is worth getting back.
    spec = FleetSpec(seeds=2, preset=None, size_bytes=48 * MiB, seed_rates=(2e6, 40e6), log_dir=str(tmp_path))
    with Fleet(spec) as fleet:
        tensors, _buffer = _client_tensors(fleet)
        transport = MooncakeTransport(protocol="tcp")
        register_tensors(transport, tensors)
        seed1 = fleet.seeds[1]
        old_agent = seed1.agent_process
        killed, restarted = threading.Event(), threading.Event()

        def restart_agent() -> None:
            old_agent.wait()
            fleet.start_agent(seed1)  # a new process on a new port: a new agent instance
            restarted.set()

        def kill_once(progress) -> None:
            if not killed.is_set() and progress.bytes_done > 0:
                killed.set()
                fleet.kill_agent(1)
                threading.Thread(target=restart_agent, daemon=True).start()

        client = ForkClient(fleet.scheduler_url, transport, progress=kill_once)
        result = asyncio.run(client.fork(fleet.identity(), 0, tensors, chunk_size_bytes=2 * MiB))
        assert restarted.is_set(), "the fork ended before the agent was restarted: nothing was tested"
        assert result.failed_seeds.get("seed-1", "").startswith("agent_unreachable"), result.failed_seeds
        granted = httpx.get(f"{seed1.agent_url}/v1/status", timeout=5).json()["granted_bytes"]
        assert granted > 0, "the restarted agent's seed never served this fork again"
        assert verify_rank(spec, 0, tensors) == []


def _counting_transport():
    """A real TCP MooncakeTransport that records the bytes of every TE batch it submits (on its submit
    threads) and sets ``first`` at the first."""
    from rfork_agent.transport import MooncakeTransport

    class CountingTransport(MooncakeTransport):
        def __init__(self) -> None:
            super().__init__(protocol="tcp")
            self.batches: list[int] = []
            self.first = threading.Event()

        def submit_read(self, session_id, dst_ptrs, src_ptrs, lengths):
            self.batches.append(sum(lengths))
            self.first.set()
            return super().submit_read(session_id, dst_ptrs, src_ptrs, lengths)

    return CountingTransport()


@contextlib.contextmanager
def _fleet_in_pieces(tmp_path, size_bytes: int, piece: str, gap: str):
    """Two seeds at 200 MB/s whose agents ask for reads in pieces; (fleet, spec, tensors, counting transport)."""
    from rfork_agent.fork import register_tensors
    from testbed.fleet import Fleet, FleetSpec

    spec = FleetSpec(seeds=2, preset=None, size_bytes=size_bytes, seed_rates=(200e6,), log_dir=str(tmp_path),
                     agent_args=("--read-piece", piece, "--read-piece-gap", gap))
    with Fleet(spec) as fleet:
        tensors, _buffer = _client_tensors(fleet)
        transport = _counting_transport()
        register_tensors(transport, tensors)
        yield fleet, spec, tensors, transport


def test_a_seed_that_asks_for_pieces_is_read_in_pieces_and_the_fork_is_byte_exact(tmp_path):
    """Agents started with --read-piece: every read of a chunk from a seed is a TE batch of at most that many
    bytes, over the real TransferEngine, and the rank lands byte for byte."""
    from rfork_agent.fork import ForkClient
    from testbed.orchestrator import verify_rank

    piece = 256 * 2**10
    with _fleet_in_pieces(tmp_path, 24 * MiB, "256KiB", "0.001") as (fleet, spec, tensors, transport):
        result = asyncio.run(ForkClient(fleet.scheduler_url, transport).fork(
            fleet.identity(), 0, tensors, chunk_size_bytes=2 * MiB))
        assert verify_rank(spec, 0, tensors) == []
    assert not result.failed_seeds, result.failed_seeds
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    assert max(transport.batches) <= piece and len(transport.batches) >= total // piece
    # Every byte landed once, and whole chunks again where the endgame duplicated a slow read (pieces with
    # gaps make reads slower); a read that failed on a loaded machine was submitted but did not land.
    landed = sum(result.bytes_by_seed.values())
    assert sum(transport.batches) >= landed >= total
    assert (result.duplicate_reads > 0) == (landed > total), result


def test_a_fork_cancelled_mid_read_stops_its_reads_in_pieces_at_the_next_gap(tmp_path):
    """Ctrl-C while chunks are read in pieces 0.4 s apart (12 s a chunk): the reads stop at their next gap
    instead of reading every piece first, and every lease is released."""
    from rfork_agent.fork import ForkClient

    pieces_a_chunk = 2 * MiB // (64 * 2**10)
    with _fleet_in_pieces(tmp_path, 8 * MiB, "64KiB", "0.4") as (fleet, _spec, tensors, transport):
        client = ForkClient(fleet.scheduler_url, transport)

        async def fork_then_cancel() -> None:
            fork = asyncio.ensure_future(client.fork(fleet.identity(), 0, tensors, chunk_size_bytes=2 * MiB))
            while not transport.first.is_set():
                await asyncio.sleep(0.01)
            fork.cancel()
            with pytest.raises(asyncio.CancelledError):
                await fork

        asyncio.run(fork_then_cancel())
    assert client.cancellation is not None and client.cancellation.leases_unconfirmed == 0, client.cancellation
    assert client.cancellation.leases_released >= 1
    # Each read in flight stopped after a piece or two, far short of its chunk's 32.
    assert 1 <= len(transport.batches) < pieces_a_chunk, transport.batches


def test_moe_rank_of_40000_tensors_is_byte_exact(tmp_path):
    # Tens of thousands of tiny tensors: chunks of thousands of segments, reads
    # split into TE batches, one registration for the client's buffer.
    from testbed.presets import get_preset

    tensors_per_rank = len(get_preset("tiny-moe").rank_tensors(0))
    assert tensors_per_rank >= 40_000
    result = run_testbed(TestbedOptions(seeds=2, model="tiny-moe", progress=False, log_dir=str(tmp_path)))
    assert result["verified"], result["ranks"][0]["mismatched_tensors"]
    assert result["ranks"][0]["chunks"] >= tensors_per_rank // 2048


@pytest.fixture(scope="module")
def small_fleet(tmp_path_factory):
    from testbed.fleet import Fleet, FleetSpec

    with Fleet(FleetSpec(seeds=2, preset="tiny", log_dir=str(tmp_path_factory.mktemp("fleet")))) as fleet:
        yield fleet


def _client_tensors(fleet, rank=0):
    import torch

    from rfork_agent.destination import allocate_like
    from testbed.orchestrator import seed_te_info

    _, manifest = seed_te_info(fleet.seeds[0].url, rank)
    tensors, _buffer = allocate_like(manifest, torch)
    return tensors, _buffer


def test_manifest_mismatch_is_rejected_naming_the_tensor(small_fleet):
    import torch

    from rfork_api import errors
    from rfork_agent.fork import ForkClient
    from rfork_agent.transport import MooncakeTransport

    tensors, _buffer = _client_tensors(small_fleet)
    name = next(n for n, t in tensors.items() if t.numel() > 1)
    tensors = dict(tensors)
    tensors[name] = torch.zeros(tensors[name].numel() - 1, dtype=tensors[name].dtype)
    client = ForkClient(small_fleet.scheduler_url, MooncakeTransport(protocol="tcp"))
    with pytest.raises(errors.ManifestMismatch) as info:
        asyncio.run(client.fork(small_fleet.identity(), 0, tensors))
    assert name in str(info.value)


def test_unknown_model_is_a_clear_error(small_fleet):
    from rfork_api import errors
    from rfork_agent.fork import ForkClient
    from rfork_agent.transport import MooncakeTransport

    tensors, _buffer = _client_tensors(small_fleet)
    identity = dict(small_fleet.identity(), model="no-such-model")
    client = ForkClient(small_fleet.scheduler_url, MooncakeTransport(protocol="tcp"))
    with pytest.raises(errors.UnknownModel) as info:
        asyncio.run(client.fork(identity, 0, tensors))
    assert "no-such-model" in str(info.value)


def test_unreachable_scheduler_names_the_url():
    from rfork_api import errors
    from rfork_agent.fork import ForkClient
    from rfork_agent.transport import InMemoryTransport
    from testbed.fleet import free_port

    url = f"http://127.0.0.1:{free_port()}"
    client = ForkClient(url, InMemoryTransport())
    with pytest.raises(errors.SchedulerUnreachable) as info:
        asyncio.run(client.fork({"model": "m", "revision": "main", "dtype": "bfloat16", "tp_size": 1}, 0, {}))
    assert url in str(info.value)


def test_all_seeds_gone_fails_fast_with_a_clear_message(tmp_path):
    from rfork_agent.fork import ForkClient, ForkError, ForkOptions, register_tensors
    from rfork_agent.transport import MooncakeTransport
    from testbed.fleet import Fleet, FleetSpec

    with Fleet(FleetSpec(seeds=2, size_bytes=32 * MiB, preset=None, seed_rates=(20e6,),
                         log_dir=str(tmp_path))) as fleet:
        tensors, _buffer = _client_tensors(fleet)
        transport = MooncakeTransport(protocol="tcp")
        register_tensors(transport, tensors)
        killed = []

        def kill_all(progress):
            if not killed and progress.bytes_done > 0:
                for i in range(len(fleet.seeds)):
                    fleet.kill_seed(i)
                killed.append(time.monotonic())

        client = ForkClient(fleet.scheduler_url, transport, progress=kill_all,
                            options=ForkOptions(read_timeout_base_seconds=5))
        with pytest.raises(ForkError) as info:
            asyncio.run(client.fork(fleet.identity(), 0, tensors, chunk_size_bytes=2 * MiB))
        assert killed and time.monotonic() - killed[0] < 30
        message = str(info.value)
        assert "seed-0" in message and "seed-1" in message


@pytest.mark.parametrize("argv, needle", [
    (["--kill-seed-at", "1.5"], "--kill-seed-at"),
    (["--seeds", "0"], "--seeds"),
    (["--seed-rate", "fast"], "cannot read rate"),
    (["--seeds", "3", "--seed-rate", "1MB/s,2MB/s"], "--seed-rate"),
    (["--size", "lots"], "cannot read size"),
])
def test_testbed_cli_rejects_bad_input_clearly(argv, needle):
    proc = subprocess.run([sys.executable, "-m", "rfork_agent.cli", "testbed", *argv],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
