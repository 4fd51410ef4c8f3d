"""A fleet scale-out on the testbed: N fork clients, each its own process, start at once.

`rfork testbed --clients N` (and `rfork bench fleet`, `rfork chaos`) run this
against a ``Fleet`` (scheduler, seeds, agents). Each client is a
``testbed.fleet_client`` process with its own TransferEngine and destination
memory; it forks with the fork client `rfork fork` uses, serves the chunks it
has landed to the others (unless ``peers`` is off), and checks its own bytes
against digests of an independent regeneration of the weights after it has
withdrawn as a peer.

The clients start together: each sets up (torch, TransferEngine) and says
``ready``; the orchestrator then sends ``go`` to all of them and times the
scale-out from there to the last client done (``time_to_all_seconds``).
Finished clients keep serving until every client is done, then all are told to
``stop``. Faults for `rfork chaos` (``kill_client``, ``fail_client``,
``kill_seed``) fire from the clients' own progress reports.

    >>> with Fleet(FleetSpec(seeds=1, size_bytes=8 << 20, seed_rates=(50e6,))) as fleet:
    ...     result = run_scale_out(fleet, ScaleOutOptions(clients=3, chunk_size=1 << 20))
    >>> result["time_to_all_seconds"], [c["verified"] for c in result["clients"]]
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx

from rfork_api import models as wire
from testbed.fleet import Fleet, FleetError

log = logging.getLogger("rfork.testbed")


@dataclass(frozen=True)
class ScaleOutOptions:
    clients: int
    peers: bool = True
    """Clients serve their landed chunks to each other; False: every byte comes from the seeds."""
    client_rate: float | None = None
    """Each client's upload cap as a peer (its ``--peer-rate``), bytes/s; None = unlimited."""
    peer_max_in_flight: int = 8
    chunk_size: int | None = None
    device: str = "cpu"
    kill_client: tuple[int, float] | None = None
    """(client index, fraction of ITS bytes landed): SIGKILL that client there."""
    fail_client: tuple[int, float] | None = None
    """(client index, fraction): that client's fork fails there; it withdraws, then falls back."""
    kill_seed: tuple[int, float] | None = None
    """(seed index, fraction of ALL the clients' bytes landed): SIGKILL that seed there."""
    start_timeout_seconds: float = 300.0
    """Setting up N clients at once on a small host (torch, TransferEngine, memory) takes a while."""
    fork_timeout_seconds: float = 600.0
    stop_timeout_seconds: float = 120.0
    """After ``stop``: withdrawing (bounded by the clients' withdraw wait) and checking the bytes."""


@dataclass
class _Client:
    index: int
    id: str
    process: subprocess.Popen
    events: dict[str, dict] = field(default_factory=dict)
    """The latest event of each kind the client sent."""
    bytes_done: int = 0
    killed: bool = False
    killed_at_bytes: int | None = None

    def finished_fork(self) -> bool:
        return "forked" in self.events or "fell_back" in self.events

    def gone(self) -> bool:
        return self.process.poll() is not None


class _ScaleOut:
    def __init__(self, fleet: Fleet, options: ScaleOutOptions) -> None:
        self.fleet, self.options = fleet, options
        self.clients: list[_Client] = []
        self.changed = threading.Condition()
        self.model_bytes = 0
        self.seed_killed_at_bytes: int | None = None

    # -- processes ---------------------------------------------------------
    def start(self, identity: wire.ModelIdentity, digests_path: str) -> None:
        o, fleet = self.options, self.fleet
        for i in range(o.clients):
            cmd = [sys.executable, "-m", "testbed.fleet_client", "--scheduler", fleet.scheduler_url,
                   "--like-seed", fleet.seeds[0].url, "--identity", identity.model_dump_json(),
                   "--client-id", f"client-{i}", "--expected-digests", digests_path, "--device", o.device,
                   "--peer-max-in-flight", str(o.peer_max_in_flight),
                   "--peer-rate", "unlimited" if o.client_rate is None else repr(float(o.client_rate))]
            if not o.peers:
                cmd.append("--no-peers")
            if o.chunk_size:
                cmd += ["--chunk-size", str(o.chunk_size)]
            if fleet.spec.token:
                cmd += ["--token-file", str(fleet.log_dir / "token")]
            if o.fail_client is not None and o.fail_client[0] == i:
                cmd += ["--fail-at", repr(o.fail_client[1])]
            process = fleet.spawn(cmd, f"client-{i}", stdout=subprocess.PIPE, stdin=subprocess.PIPE)
            client = _Client(i, f"client-{i}", process)
            self.clients.append(client)
            threading.Thread(target=self._read_events, args=(client,), daemon=True, name=client.id).start()

    def _read_events(self, client: _Client) -> None:
        assert client.process.stdout is not None
        for line in client.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # not ours (a library printing to stdout): its log has the rest
            with self.changed:
                client.events[event.get("event", "?")] = event
                if event.get("event") == "progress":
                    client.bytes_done = int(event.get("bytes_done", 0))
                    self._faults(client)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def _faults(self, client: _Client) -> None:
        """Fire the faults whose moment this progress report reached (under ``changed``)."""
        o = self.options
        if o.kill_client is not None and o.kill_client[0] == client.index and not client.killed \
                and client.bytes_done >= o.kill_client[1] * self.model_bytes and not client.finished_fork():
            client.process.send_signal(signal.SIGKILL)
            client.killed, client.killed_at_bytes = True, client.bytes_done
            log.info("SIGKILLed %s at %d bytes", client.id, client.bytes_done)
        if o.kill_seed is not None and self.seed_killed_at_bytes is None:
            landed = sum(c.bytes_done for c in self.clients)
            if landed >= o.kill_seed[1] * self.model_bytes * len(self.clients):
                self.fleet.kill_seed(o.kill_seed[0])
                self.seed_killed_at_bytes = landed

    def wait(self, done, timeout: float, what: str) -> None:
        """Wait until ``done()`` holds (checked under ``changed``); a client that exits early is an error."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done():
                crashed = [c for c in self.clients if c.gone() and not c.killed and "result" not in c.events]
                if crashed:
                    c = crashed[0]
                    raise FleetError(f"{c.id} exited with code {c.process.returncode} before {what}; "
                                     f"see {self.fleet.log_dir / (c.id + '.log')}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FleetError(f"the clients did not finish {what} within {timeout:.0f} s; "
                                     f"logs in {self.fleet.log_dir}")
                self.changed.wait(min(left, 0.5))

    def tell(self, word: str) -> None:
        for c in self.clients:
            if c.gone() or c.process.stdin is None:
                continue
            try:
                c.process.stdin.write(f"{word}\n".encode())
                c.process.stdin.flush()
            except (BrokenPipeError, OSError):
                pass  # it exited meanwhile: wait() reports why


def run_scale_out(fleet: Fleet, options: ScaleOutOptions) -> dict:
    """Fork rank 0 into ``options.clients`` client processes at once; the result record (see module doc)."""
    from testbed.verify import expected_digests

    if fleet.spec.tp_size != 1:
        raise FleetError("a scale-out forks rank 0 into each client; start the fleet with tp_size 1")
    run = _ScaleOut(fleet, options)
    identity = fleet.identity()
    digests_path = str(fleet.log_dir / "expected-rank0.json")
    try:
        run.start(identity, digests_path)
        # Regenerate the weights here while the clients set up (each needs seconds for torch and TE).
        with open(digests_path, "w") as f:
            json.dump(expected_digests(fleet.spec, 0), f)
        run.wait(lambda: all("ready" in c.events for c in run.clients), options.start_timeout_seconds,
                 "setting up")
        run.model_bytes = int(run.clients[0].events["ready"]["bytes"])
        granted_before = _granted_bytes(fleet)
        go_at = time.time()
        run.tell("go")
        run.wait(lambda: all(c.finished_fork() or c.killed for c in run.clients), options.fork_timeout_seconds,
                 "their forks")
        granted_after = _granted_bytes(fleet)
        run.tell("stop")
        run.wait(lambda: all("result" in c.events or c.killed for c in run.clients), options.stop_timeout_seconds,
                 "withdrawing and checking their bytes")
    finally:
        for c in run.clients:  # whatever happened, no client outlives the run (fleet.stop would end them too)
            if c.process.stdin is not None:
                try:
                    c.process.stdin.close()
                except OSError:
                    pass
    for c in run.clients:
        try:
            c.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            c.process.kill()
    return _record(fleet, options, run, go_at, granted_before, granted_after)


def _record(fleet: Fleet, options: ScaleOutOptions, run: _ScaleOut, go_at: float,
            granted_before: dict[str, int], granted_after: dict[str, int]) -> dict:
    clients = []
    for c in run.clients:
        result = c.events.get("result", {})
        done = c.events.get("forked") or c.events.get("fell_back") or {}
        clients.append({
            "id": c.id,
            "transfer_seconds": result.get("transfer_seconds"),
            "fork_seconds": done["at"] - go_at if "at" in done else None,
            "verified": result.get("verified"),
            "bytes_from_seeds": result.get("bytes_from_seeds"),
            "bytes_from_peers": result.get("bytes_from_peers"),
            "job_id": result.get("job_id") or done.get("job_id") or c.events.get("progress", {}).get("job_id"),
            "bytes_by_source": result.get("bytes_by_seed", {}),
            "retried_chunks": result.get("retried_chunks"),
            "failed_seeds": result.get("failed_seeds", {}),
            "killed": c.killed, "killed_at_bytes": c.killed_at_bytes,
            "fell_back": bool(result.get("fell_back")), "error": result.get("error"),
            "withdraw_confirmed": result.get("withdraw_confirmed"),
            "withdraw_seconds": result.get("withdraw_seconds"),
            "mismatched_tensors": result.get("mismatched_tensors", []),
        })
    survivors = [c for c in clients if not c["killed"]]
    finished = [c["fork_seconds"] for c in survivors if c["fork_seconds"] is not None]
    served = {s.seed_id: max(granted_after.get(s.seed_id, granted_before.get(s.seed_id, 0))
                             - granted_before.get(s.seed_id, 0), 0) for s in fleet.seeds}
    model_bytes = run.model_bytes
    return {
        "clients_count": options.clients,
        "peers": options.peers,
        "client_rate_bytes_per_second": options.client_rate,
        "model_bytes": model_bytes,
        "time_to_all_seconds": max(finished) if len(finished) == len(survivors) and finished else None,
        "seed_bytes_served": sum(served.values()),
        "seed_bytes_served_per_model": sum(served.values()) / model_bytes if model_bytes else None,
        "bytes_from_peers": sum(c["bytes_from_peers"] or 0 for c in survivors),
        "verified": bool(survivors) and all(c["verified"] is True for c in survivors),
        "clients": clients,
        "seeds": [{"id": s.seed_id, "rate_cap_bytes_per_second": s.rate_cap, "killed": s.killed,
                   "bytes_served": served[s.seed_id]} for s in fleet.seeds],
        "kill_seed_at_bytes": run.seed_killed_at_bytes,
        "streams": _scheduler_streams(fleet),
    }


def _scheduler_streams(fleet: Fleet) -> dict:
    """Streams the scheduler handed out and those its clients reported failed (None: no answer)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(f"{fleet.scheduler_url}/metrics", headers=fleet.headers, timeout=5).text
    except httpx.HTTPError:
        return {"started": None, "failed": None}
    totals = {"rfork_scheduler_streams_started": 0.0, "rfork_scheduler_stream_failures": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name in totals:
            totals[family.name] = sum(s.value for s in family.samples if s.name.endswith("_total"))
    return {"started": int(totals["rfork_scheduler_streams_started"]),
            "failed": int(totals["rfork_scheduler_stream_failures"])}


def _granted_bytes(fleet: Fleet) -> dict[str, int]:
    """Bytes each seed's agent has granted in leases so far: what the seeds served (their agents count it)."""
    out = {}
    for seed in fleet.seeds:
        try:
            response = httpx.get(f"{seed.agent_url}/v1/status", headers=fleet.headers, timeout=5)
            out[seed.seed_id] = wire.AgentStatus.model_validate_json(response.content).granted_bytes
        except (httpx.HTTPError, ValueError):
            pass  # its agent is gone (chaos): counted as 0 more
    return out
