"""A chunk bigger than a seed's rate x the lease wait is still served, paced at the rate.

Real processes on loopback (scheduler, seed stand-in, agent, as `rfork testbed`
starts them), real TransferEngine over TCP; the fork client runs in the test
process. Seen with `rfork testbed --seeds 2 --size 32MiB --throttle adaptive
--slo-itl 0.04`: the one 33.5 MB chunk needed 13 s of a 2.5 MB/s floor, the
lease wait is 5 s, and every lease was refused forever. Here the same shape
is small and fast: 2 MiB chunks, a 4 MB/s cap, a 64 KiB burst and a 0.25 s wait.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from rfork_api.seed_info import fetch_transfer_engine_info

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MiB = 2**20
RATE = 4e6
BURST = 64 * 1024
MAX_WAIT = 0.25
CHUNK = 2 * MiB


def test_chunks_bigger_than_rate_times_wait_complete_paced_at_the_rate(tmp_path):
    import torch
    from prometheus_client.parser import text_string_to_metric_families

    from rfork_agent.destination import allocate_like
    from rfork_agent.fork import ForkClient, ForkOptions, register_tensors
    from rfork_agent.transport import MooncakeTransport
    from testbed.fleet import Fleet, FleetSpec
    from testbed.orchestrator import verify_rank

    assert CHUNK > BURST + RATE * MAX_WAIT  # paying first, no chunk could ever start within the wait
    spec = FleetSpec(seeds=1, preset="tiny", seed_rates=(RATE,), log_dir=str(tmp_path),
                     agent_args=("--max-wait", str(MAX_WAIT), "--burst", str(BURST)))
    with Fleet(spec) as fleet:
        _, manifest = asyncio.run(_te_info(fleet.seeds[0].url))
        tensors, _buffer = allocate_like(manifest, torch)
        transport = MooncakeTransport(protocol="tcp")
        register_tensors(transport, tensors)
        # Before the fix every lease was refused: the client retried until its give-up, the scheduler
        # re-planned on the same seed, and so on forever; the timeout turns that hang into a failure.
        client = ForkClient(fleet.scheduler_url, transport, options=ForkOptions(lease_give_up_seconds=20))
        fork = asyncio.run(asyncio.wait_for(
            client.fork(fleet.identity(), 0, tensors, chunk_size_bytes=CHUNK), timeout=90))
        metrics = httpx.get(f"{fleet.seeds[0].agent_url}/metrics", timeout=10).text

    assert not verify_rank(spec, 0, tensors), "the forked bytes differ from the seed's"
    total = fork.bytes_total
    assert fork.chunks_total >= 3 and total > 3 * CHUNK, (fork.chunks_total, total)
    granted = next(s.value for f in text_string_to_metric_families(metrics) for s in f.samples
                   if s.name == "rfork_agent_granted_bytes_total")
    assert granted >= total
    # Paced at the rate: the first chunk started at once and paid after; each later one started
    # when the debt before it was repaid, so the last began no earlier than (total - it - burst) / rate.
    assert fork.transfer_seconds >= (total - CHUNK - BURST) / RATE, fork.transfer_seconds


async def _te_info(seed_url: str):
    """Rank 0's (session, manifest), as the seed serves them to any fork client."""
    async with httpx.AsyncClient(timeout=10) as http:
        return await fetch_transfer_engine_info(http, seed_url, 0)
