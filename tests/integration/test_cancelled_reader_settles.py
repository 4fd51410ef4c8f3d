"""A fork cancelled while its reads from a peer are on the wire frees that peer's withdraw at once.

The real scheduler app served over HTTP in-process, the real ForkClient, and
the in-memory transport holding every read on the wire until the test lets it
end (``settle_when``). The peer is a job run to done through ``/work`` (it
serves its landed chunks). The reader is cancelled as Ctrl-C would cancel it:
it deletes its job, waits for its reads on the wire, then says they ended
(``POST /v1/jobs/{job_id}/settled``). Without that call the peer's withdraw
would count those reads for the scheduler's whole ``--peer-read-deadline``.
"""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
import torch
from prometheus_client import CollectorRegistry

from rfork_agent.fork import ForkClient, ForkOptions, register_tensors
from rfork_agent.transport import InMemoryFabric, InMemoryTransport
from scheduler.service import SchedulerConfig, create_app
from tests.integration.agent_fakes import Served, _socket

pytestmark = pytest.mark.timeout(60)

IDENTITY = {"model": "m", "revision": "main", "dtype": "uint8", "tp_size": 1}
CHUNK = 4096
N_CHUNKS = 8
DEADLINE = 30.0


@pytest.fixture
def silent_agent():
    """The seed's agent: a socket that listens and never answers, so the reader's lease requests to
    the seed (the planner's endgame duplicates of the held reads) wait, neither granted nor failed."""
    sock = _socket()
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture
def scheduler():
    app = create_app(SchedulerConfig(peer_read_deadline_seconds=DEADLINE), registry=CollectorRegistry(),
                     run_reaper=False)
    served = Served(app)
    yield served.url
    served.stop()


def _peer_done(http: httpx.Client, agent_url: str, transport: InMemoryTransport, weights: torch.Tensor) -> str:
    """A seed, and a peer job (``weights`` on ``transport``) that landed every chunk: it serves them."""
    r = http.put("/v1/seeds/seed-0", json={
        "identity": IDENTITY, "agent_url": agent_url, "rate_cap_bytes_per_second": None,
        "ranks": [{"rank": 0, "session_id": "seed:1", "manifest": {"w": [1 << 40, N_CHUNKS * CHUNK, 1]}}]})
    assert r.status_code == 200, r.text
    r = http.post("/v1/jobs", json={"identity": IDENTITY, "rank": 0, "chunk_size_bytes": CHUNK,
                                     "manifest": {"w": [weights.data_ptr(), N_CHUNKS * CHUNK, 1]},
                                     "peer": {"session_id": transport.session_id}})
    assert r.status_code == 201, r.text
    peer = r.json()["job_id"]
    reply = http.post(f"/v1/jobs/{peer}/work", json={"max_assignments": N_CHUNKS}).json()
    while reply["state"] == "running":
        reports = [{"assignment_id": a["assignment_id"], "ok": True} for a in reply["assignments"]]
        reply = http.post(f"/v1/jobs/{peer}/work", json={"max_assignments": N_CHUNKS, "reports": reports}).json()
    assert reply["state"] == "done", reply
    return peer


def test_a_cancelled_readers_reads_stop_counting_on_the_peer_once_they_end(scheduler, silent_agent):
    http = httpx.Client(base_url=scheduler, timeout=10)
    fabric = InMemoryFabric()
    peer_transport, peer_weights = InMemoryTransport(fabric), torch.arange(N_CHUNKS * CHUNK).to(torch.uint8)
    peer_transport.register(peer_weights.data_ptr(), N_CHUNKS * CHUNK)
    peer = _peer_done(http, silent_agent, peer_transport, peer_weights)
    on_the_wire = threading.Event()
    transport = InMemoryTransport(fabric, settle_when=on_the_wire)
    weights = {"w": torch.zeros(N_CHUNKS * CHUNK, dtype=torch.uint8)}
    register_tensors(transport, weights)
    # Per chunk (no streams): the planner sends the reader's reads to the peer.
    client = ForkClient(scheduler, transport, options=ForkOptions(cleanup_seconds=10.0, streams=False))

    async def cancelled_mid_read() -> None:
        fork = asyncio.ensure_future(client.fork(IDENTITY, 0, weights, chunk_size_bytes=CHUNK,
                                                 peer=client.peer_offer()))
        while not transport._handles:  # until the reader's reads from the peer are on the wire
            await asyncio.sleep(0.01)
            assert not fork.done(), fork
        in_flight = (await asyncio.to_thread(http.post, f"/v1/jobs/{peer}/withdraw")).json()["reads_in_flight"]
        assert in_flight > 0, "no read from the peer counted while on the wire"
        fork.cancel()
        await asyncio.sleep(0.3)  # the cancel reaches the scheduler while the reads are on the wire
        on_the_wire.set()  # the reads land
        with pytest.raises(asyncio.CancelledError):
            await fork

    try:
        asyncio.run(cancelled_mid_read())
    finally:
        on_the_wire.set()  # a failed check must not leave the transport's threads waiting
    assert http.get(f"/v1/jobs/{client.job_id}").status_code == 404  # deleted first
    in_flight = http.post(f"/v1/jobs/{peer}/withdraw").json()["reads_in_flight"]
    assert in_flight == 0, f"{in_flight} reads of the cancelled fork still count on the peer"
    http.close()
