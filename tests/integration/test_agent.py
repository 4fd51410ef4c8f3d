"""The agent as a real HTTP server (uvicorn on loopback) against a fake seed and a recording scheduler.

The fake seed serves SGLang's TE-info and server-info endpoints (either the
current or the deprecated paths); the scheduler stand-in records every
registration, heartbeat and deregistration and can "forget" the seed.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse

from rfork_agent import agent_cli
from rfork_agent.agent import AgentConfig, create_app

pytestmark = pytest.mark.timeout(60)

MB = 10**6


# --------------------------------------------------------------------------- servers in threads


def _socket() -> socket.socket:
    """A bound loopback socket: its port is ours until the server takes it (no port races)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class Served:
    """An ASGI app served by uvicorn in a thread; ``stop()`` runs its shutdown."""

    def __init__(self, app, sock: socket.socket | None = None) -> None:
        self.sock = sock or _socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def wait_until(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --------------------------------------------------------------------------- fake seed


def manifest_for(rank: int) -> dict:
    base = 0x7F0000000000 + rank * 0x10000000
    return {
        "model.embed_tokens.weight": [base, 1024 * 64, 2],
        "model.layers.0.mlp.down_proj.weight": [base + 0x100000, 4096, 2],
        "model.norm.weight": [base + 0x200000, 64, 4],
    }


@dataclass
class FakeSeed:
    deprecated_paths: bool = False
    tp_size: int = 2
    generation: int = 0
    healthy: bool = True
    info_ok: bool = True
    """False: the TE-info endpoints answer 503 while /health still answers (a seed restarting)."""
    health_probes: int = 0
    hits: list = field(default_factory=list)

    def session(self, rank: int) -> str:
        return f"127.0.0.1:{16000 + 100 * self.generation + rank}"

    def app(self) -> FastAPI:
        app = FastAPI()
        new_te, old_te = "/remote_instance_transfer_engine_info", "/get_remote_instance_transfer_engine_info"

        def te_info(path: str, rank: int | None):
            self.hits.append(path)
            if (path == new_te) == self.deprecated_paths:
                raise HTTPException(404)
            if not self.info_ok:
                raise HTTPException(503)
            if rank is None or not 0 <= rank < self.tp_size:
                return JSONResponse({"error": f"no rank {rank}"}, status_code=400)
            return {"rank": rank, "remote_instance_transfer_engine_info": [self.session(rank), manifest_for(rank)]}

        @app.get(new_te)
        def te_new(rank: int | None = Query(None)):
            return te_info(new_te, rank)

        @app.get(old_te)
        def te_old(rank: int | None = Query(None)):
            return te_info(old_te, rank)

        def server_info(path: str):
            self.hits.append(path)
            if (path == "/server_info") == self.deprecated_paths:
                raise HTTPException(404)
            return {"model_path": "Qwen/Qwen2.5-0.5B", "tp_size": self.tp_size, "dtype": "bfloat16"}

        @app.get("/server_info")
        def server_info_new():
            return server_info("/server_info")

        @app.get("/get_server_info")
        def server_info_old():
            return server_info("/get_server_info")

        @app.get("/health")
        def health():
            self.health_probes += 1
            if not self.healthy:
                raise HTTPException(503)
            return {}

        return app


# --------------------------------------------------------------------------- recording scheduler


@dataclass
class RecordingScheduler:
    registrations: list = field(default_factory=list)
    heartbeats: list = field(default_factory=list)
    deletes: list = field(default_factory=list)
    known: set = field(default_factory=set)
    delete_arrived: threading.Event = field(default_factory=threading.Event)
    hold_deletes: threading.Event | None = None
    """When set to an unset Event, each DELETE is answered only once it is set."""

    def forget(self, seed_id: str) -> None:
        self.known.discard(seed_id)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.put("/v1/seeds/{seed_id}")
        def register(seed_id: str, body: dict):
            self.registrations.append((seed_id, body))
            self.known.add(seed_id)
            return {"seed_id": seed_id, "heartbeat_interval_seconds": 1.0, "heartbeat_timeout_seconds": 5.0}

        @app.post("/v1/seeds/{seed_id}/heartbeat")
        def heartbeat(seed_id: str, body: dict):
            if seed_id not in self.known:
                return JSONResponse(status_code=404, content={"detail": {
                    "error": "unknown_seed", "message": f"seed {seed_id!r} is not registered; register it again"}})
            self.heartbeats.append((seed_id, body, time.monotonic()))
            return {}

        @app.delete("/v1/seeds/{seed_id}", status_code=204)
        def delete(seed_id: str):
            self.delete_arrived.set()
            if self.hold_deletes is not None:
                self.hold_deletes.wait(30)
            self.deletes.append(seed_id)
            self.known.discard(seed_id)

        return app


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def fleet():
    """Factory: start (seed, scheduler, agent) with config overrides; stops everything after."""
    started: list[Served] = []

    def start(seed: FakeSeed | None = None, scheduler: RecordingScheduler | None = None,
              scheduler_sock: socket.socket | None = None, clock=time.monotonic, **overrides):
        seed = seed or FakeSeed()
        scheduler = scheduler or RecordingScheduler()
        seed_server = Served(seed.app())
        started.append(seed_server)
        if scheduler_sock is None:
            scheduler_server = Served(scheduler.app())
            started.append(scheduler_server)
            scheduler_url = scheduler_server.url
        else:
            scheduler_url = f"http://127.0.0.1:{scheduler_sock.getsockname()[1]}"
        agent_sock = _socket()
        config = AgentConfig(**{
            "seed_id": "seed-0", "sglang_url": seed_server.url, "scheduler_url": scheduler_url,
            "port": agent_sock.getsockname()[1], "heartbeat_interval": 0.1, "liveness_interval_seconds": 0.1,
            **overrides,
        })
        app = create_app(config, clock=clock)
        agent_server = Served(app, agent_sock)
        started.insert(0, agent_server)  # stopped first, so it can deregister
        return seed, scheduler, agent_server, app

    yield start
    for server in started:
        server.stop()


def registered(scheduler: RecordingScheduler, n: int = 1):
    return lambda: len(scheduler.registrations) >= n


def post(url: str, json: dict | None = None, timeout: float = 30) -> httpx.Response:
    return httpx.post(url, json=json, timeout=timeout)


def lease_body(nbytes: int, rank: int = 0, wait: float = 5.0, assignment: str = "a1") -> dict:
    return {"job_id": "j1", "assignment_id": assignment, "rank": rank, "bytes": nbytes, "grant": "",
            "wait_seconds": wait}


# --------------------------------------------------------------------------- registration and heartbeats


def test_registration_matches_the_design_and_heartbeats_arrive(fleet):
    seed, scheduler, agent, app = fleet(rate_cap=100 * MB)
    wait_until(lambda: len(scheduler.heartbeats) >= 3, what="3 heartbeats")
    seed_id, body = scheduler.registrations[0]
    assert seed_id == "seed-0"
    assert body == {
        "identity": {"model": "Qwen/Qwen2.5-0.5B", "revision": "main", "dtype": "bfloat16", "tp_size": 2},
        "agent_url": agent.url,
        "rate_cap_bytes_per_second": 100 * MB,
        "ranks": [{"rank": r, "session_id": seed.session(r), "manifest": manifest_for(r)} for r in (0, 1)],
        "agent_instance_id": app.state.agent.instance_id,
    }
    assert list(body["ranks"][0]["manifest"]) == list(manifest_for(0))  # tensor order kept
    _, beat, _ = scheduler.heartbeats[-1]
    assert beat["allowed_rate_bytes_per_second"] == 100 * MB
    assert beat["in_flight_leases"] == 0 and beat["available_bytes"] > 0
    status = httpx.get(f"{agent.url}/v1/status").json()
    assert status["phase"] == "registered" and [r["rank"] for r in status["ranks"]] == [0, 1]
    assert httpx.get(f"{agent.url}/health").json()["status"] == "ok"


def test_deprecated_paths_and_identity_overrides(fleet):
    seed, scheduler, _, _ = fleet(seed=FakeSeed(deprecated_paths=True), model="my-model", revision="abc123",
                                  dtype="float16", ranks=(1,))
    wait_until(registered(scheduler), what="registration")
    body = scheduler.registrations[0][1]
    assert body["identity"] == {"model": "my-model", "revision": "abc123", "dtype": "float16", "tp_size": 2}
    assert [r["rank"] for r in body["ranks"]] == [1]
    assert body["ranks"][0]["session_id"] == seed.session(1)
    assert "/get_remote_instance_transfer_engine_info" in seed.hits and "/get_server_info" in seed.hits


def test_reregisters_when_the_scheduler_forgets_and_when_the_seed_restarts(fleet):
    seed, scheduler, _, _ = fleet(refresh_every_heartbeats=2)
    wait_until(registered(scheduler), what="registration")
    scheduler.forget("seed-0")                                  # heartbeat -> 404 unknown_seed
    wait_until(registered(scheduler, 2), what="re-registration after 404")
    seed.generation += 1                                        # restarted seed: new TE sessions
    wait_until(lambda: scheduler.registrations[-1][1]["ranks"][0]["session_id"] == seed.session(0),
               what="re-registration with the new session")
    # One agent process, one instance id: the scheduler must not take these for an agent restart.
    assert len({body["agent_instance_id"] for _, body in scheduler.registrations}) == 1


def test_keeps_trying_until_the_scheduler_comes_up(fleet):
    sock = _socket()          # bound, not listening: connection refused
    scheduler = RecordingScheduler()
    _, _, agent, _ = fleet(scheduler=scheduler, scheduler_sock=sock)
    time.sleep(0.5)
    assert httpx.get(f"{agent.url}/health").json()["phase"] == "registering"
    late = Served(scheduler.app(), sock)
    try:
        wait_until(registered(scheduler), what="registration once the scheduler is up")
    finally:
        late.stop()


def test_seed_down_refuses_leases_and_deregisters_then_comes_back(fleet):
    seed, scheduler, agent, _ = fleet()
    wait_until(registered(scheduler), what="registration")
    seed.healthy = False
    wait_until(lambda: scheduler.deletes == ["seed-0"], what="deregistration")
    response = post(f"{agent.url}/v1/leases", lease_body(1000))
    assert response.status_code == 503 and response.json()["detail"]["error"] == "seed_unavailable"
    seed.healthy = True
    wait_until(registered(scheduler, 2), what="re-registration after the seed came back")
    assert post(f"{agent.url}/v1/leases", lease_body(1000)).status_code == 200


def test_no_lease_is_granted_while_the_agent_deregisters_a_lost_seed(fleet):
    scheduler = RecordingScheduler(hold_deletes=threading.Event())
    seed, _, agent, _ = fleet(scheduler=scheduler, refresh_every_heartbeats=1)
    try:
        wait_until(registered(scheduler), what="registration")
        assert post(f"{agent.url}/v1/leases", lease_body(1000)).status_code == 200
        seed.info_ok = False                     # the next refresh finds the seed gone; /health still answers
        assert scheduler.delete_arrived.wait(10), "the agent never deregistered"
        # The agent is awaiting the scheduler's answer to its DELETE: it knows the seed is lost.
        response = post(f"{agent.url}/v1/leases", lease_body(1000, assignment="a2"))
        assert response.status_code == 503 and response.json()["detail"]["error"] == "seed_unavailable"
    finally:
        scheduler.hold_deletes.set()
    wait_until(lambda: scheduler.deletes == ["seed-0"], what="the deregistration to complete")
    seed.info_ok = True
    wait_until(registered(scheduler, 2), what="re-registration once the seed's TE info is back")
    assert post(f"{agent.url}/v1/leases", lease_body(1000, assignment="a3")).status_code == 200


def test_a_seed_whose_health_fails_is_not_registered_again_until_it_answers(fleet):
    # Its TE info still answers, so discovery alone succeeds. The agent used to register it again at
    # once and mark it alive until the next probe deregistered it: a flap, granting leases between.
    seed, scheduler, agent, _ = fleet()
    wait_until(registered(scheduler), what="registration")
    seed.healthy = False
    wait_until(lambda: scheduler.deletes, what="deregistration")
    probes = seed.health_probes
    wait_until(lambda: seed.health_probes >= probes + 5, what="five more liveness probes")
    assert len(scheduler.registrations) == 1 and scheduler.deletes == ["seed-0"]
    response = post(f"{agent.url}/v1/leases", lease_body(1000))
    assert response.status_code == 503 and response.json()["detail"]["error"] == "seed_unavailable"
    seed.healthy = True
    wait_until(registered(scheduler, 2), what="re-registration once /health answers")
    assert post(f"{agent.url}/v1/leases", lease_body(1000)).status_code == 200


# --------------------------------------------------------------------------- leases


class ManualClock:
    """The agent's clock (token bucket, lease ttl): it moves only when a test moves it, so what
    the agent books is exact however slow the machine. Its waits still sleep real seconds."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def record_bookings_and_grants(state) -> tuple[list, list]:
    """Spy on the agent's own decisions: (bytes, asked at, outcome) per booking in booking order,
    and (bytes, granted at) per lease in grant order."""
    booked, granted = [], []
    reserve, grant = state.reserve, state.grant

    def recording_reserve(nbytes, wait_seconds, now):
        outcome = reserve(nbytes, wait_seconds, now)
        booked.append((nbytes, now, outcome))
        return outcome

    def recording_grant(body, asked_at, now):
        granted.append((body.bytes, now))
        return grant(body, asked_at, now)

    state.reserve, state.grant = recording_reserve, recording_grant
    return booked, granted


async def _take_leases(url: str, sizes: list[int]) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        async def one(i: int, nbytes: int) -> None:
            response = await http.post(f"{url}/v1/leases", json=lease_body(nbytes, assignment=f"a{i}"))
            assert response.status_code == 200, response.text
        await asyncio.gather(*(one(i, n) for i, n in enumerate(sizes)))


def test_leases_are_paced_at_the_cap_in_fifo_order(fleet):
    # Asserts on what the agent booked and when it granted, by its own clock: on a loaded machine
    # requests arrive in any order and answers arrive late, but neither changes these.
    rate, burst = 10 * MB, 2.5 * MB                      # the default burst: 0.25 s of the rate
    _, scheduler, agent, app = fleet(rate_cap=rate)
    wait_until(registered(scheduler), what="registration")
    booked, granted = record_bookings_and_grants(app.state.agent)
    sizes = [4 * MB + i for i in range(5)]               # bigger than the burst; distinct, to tell them apart
    asyncio.run(_take_leases(agent.url, sizes))
    assert sorted(n for n, _, _ in booked) == sizes
    assert [n for n, _ in granted] == [n for n, _, _ in booked], "FIFO: granted in booking order"
    starts = [outcome.start_at for _, _, outcome in booked]
    # Pay first, at the cap: the first started once the idle (full) bucket had accrued its bytes;
    # each later one once its bytes had accrued after the one before started, or after its own
    # booking if that came later (the balance is capped at the burst).
    (n0, asked0, _), *rest = booked
    assert starts[0] == pytest.approx(asked0 + (n0 - burst) / rate)
    for (n, asked, _), before, start in zip(rest, starts, starts[1:]):
        assert start == pytest.approx(max(before + n / rate, asked + (n - burst) / rate))
    start_of = dict(zip((n for n, _, _ in booked), starts))
    assert all(at >= start_of[n] - 1e-3 for n, at in granted), "a lease answered before its bytes were paid"
    status = httpx.get(f"{agent.url}/v1/status").json()
    assert status["in_flight_leases"] == 5 and status["in_flight_bytes"] == sum(sizes)


def test_over_wait_is_429_with_retry_after_and_books_nothing(fleet):
    clock = ManualClock()
    _, scheduler, agent, _ = fleet(rate_cap=10 * MB, clock=clock)   # burst 2.5 MB
    wait_until(registered(scheduler), what="registration")
    available = lambda: httpx.get(f"{agent.url}/v1/status").json()["available_bytes"]  # noqa: E731
    assert post(f"{agent.url}/v1/leases", lease_body(6 * MB)).status_code == 200
    assert available() == pytest.approx(-3.5 * MB)       # 0.35 s of debt at 10 MB/s
    # 10 MB is paid first (a 1 s wait can pay for 2.5 + 10 MB): it could start in 1.35 s.
    response = post(f"{agent.url}/v1/leases", lease_body(10 * MB, wait=1.0, assignment="a2"))
    assert response.status_code == 429
    detail = response.json()["detail"]
    assert detail["error"] == "over_budget" and detail["retry_after_seconds"] == pytest.approx(0.35, abs=1e-3)
    assert available() == pytest.approx(-3.5 * MB)       # booked nothing
    # 100 MB no wait could pay for first: it starts only with no debt ahead, and is not held for it.
    response = post(f"{agent.url}/v1/leases", lease_body(100 * MB, wait=1.0, assignment="a3"))
    assert response.status_code == 429
    assert response.json()["detail"]["retry_after_seconds"] == pytest.approx(0.35, abs=1e-3)
    assert available() == pytest.approx(-3.5 * MB)
    clock.t += detail["retry_after_seconds"]              # asked again when told: granted
    assert post(f"{agent.url}/v1/leases", lease_body(10 * MB, wait=1.0, assignment="a2")).status_code == 200
    assert available() == pytest.approx(-10 * MB, abs=0.02 * MB)


@pytest.mark.parametrize("body, status, code", [
    (lease_body(1000, rank=7), 404, "unknown_rank"),
    (lease_body(0), 422, "invalid_request"),
    ({"job_id": "j1", "rank": 0, "bytes": 10}, 422, "invalid_request"),
])
def test_bad_lease_requests(fleet, body, status, code):
    _, scheduler, agent, _ = fleet()
    wait_until(registered(scheduler), what="registration")
    response = post(f"{agent.url}/v1/leases", body)
    assert response.status_code == status and response.json()["detail"]["error"] == code
    assert response.json()["detail"]["message"]


def test_release_refunds_unused_and_replay_is_404(fleet):
    # The agent's clock stands still: the balance moves only by what is booked and refunded (on a
    # busy machine, accrual between two status calls used to blur the refund it should show).
    _, scheduler, agent, _ = fleet(rate_cap=10 * MB, clock=ManualClock())   # burst 2.5 MB
    wait_until(registered(scheduler), what="registration")
    available = lambda: httpx.get(f"{agent.url}/v1/status").json()["available_bytes"]  # noqa: E731
    lease = post(f"{agent.url}/v1/leases", lease_body(2 * MB)).json()
    assert set(lease) == {"lease_id", "ttl_seconds"} and lease["ttl_seconds"] == 30
    assert post(f"{agent.url}/v1/leases", lease_body(2 * MB, assignment="a2")).status_code == 200  # into debt
    assert available() == pytest.approx(-1.5 * MB)
    assert post(f"{agent.url}/v1/leases/{lease['lease_id']}/release", {"used": False}).status_code == 200
    assert available() == pytest.approx(0.5 * MB)       # the 2 MB never read are back
    replay = post(f"{agent.url}/v1/leases/{lease['lease_id']}/release", {"used": False})
    assert replay.status_code == 404 and replay.json()["detail"]["error"] == "unknown_lease"
    assert available() == pytest.approx(0.5 * MB)       # refunded once
    used = post(f"{agent.url}/v1/leases", lease_body(1 * MB, assignment="a3")).json()
    assert post(f"{agent.url}/v1/leases/{used['lease_id']}/release", {"used": True}).status_code == 200
    assert available() == pytest.approx(-0.5 * MB)      # read: its tokens stay spent
    metrics = httpx.get(f"{agent.url}/metrics").text
    assert 'rfork_agent_leases_total{outcome="returned",seed="seed-0"} 1.0' in metrics
    assert 'rfork_agent_read_bytes_total{seed="seed-0"} 1e+06' in metrics


def test_unreleased_leases_expire_and_free_their_slot(fleet):
    _, scheduler, agent, _ = fleet(lease_ttl_seconds=0.3)
    wait_until(registered(scheduler), what="registration")
    lease = post(f"{agent.url}/v1/leases", lease_body(1000)).json()
    wait_until(lambda: scheduler.heartbeats and scheduler.heartbeats[-1][1]["in_flight_leases"] == 1,
               what="a heartbeat counting the lease")
    wait_until(lambda: httpx.get(f"{agent.url}/v1/status").json()["in_flight_leases"] == 0, what="expiry")
    assert post(f"{agent.url}/v1/leases/{lease['lease_id']}/release", {"used": True}).status_code == 404
    assert 'rfork_agent_leases_total{outcome="expired",seed="seed-0"} 1.0' in httpx.get(f"{agent.url}/metrics").text


def test_metrics_and_the_qos_seam(fleet):
    _, scheduler, agent, app = fleet(rate_cap=10 * MB)
    wait_until(registered(scheduler), what="registration")
    assert post(f"{agent.url}/v1/leases", lease_body(1000)).status_code == 200
    text = httpx.get(f"{agent.url}/metrics").text
    for series in ("rfork_agent_rate_cap_bytes_per_second", "rfork_agent_allowed_rate_bytes_per_second",
                   "rfork_agent_granted_bytes_total", "rfork_agent_leases_total", "rfork_agent_leases_in_flight",
                   "rfork_agent_lease_wait_seconds_bucket", "rfork_agent_registered",
                   "rfork_agent_heartbeat_failures_total", "rfork_agent_read_bytes_total"):
        assert f"{series}{{" in text, series
    state = app.state.agent
    state.set_allowed_rate(0.0, state.clock())     # a QoS probe pause
    paused = post(f"{agent.url}/v1/leases", lease_body(2 * MB, wait=0.5))
    assert paused.status_code == 429
    wait_until(lambda: scheduler.heartbeats[-1][1]["allowed_rate_bytes_per_second"] == 0.0,
               what="heartbeat reporting the paused rate")
    state.set_allowed_rate(50 * MB, state.clock())  # never above the cap
    assert state.allowed_rate == 10 * MB


# --------------------------------------------------------------------------- CLI validation


def _args(**overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    agent_cli.add_arguments(parser)
    argv = ["--sglang-url", "http://127.0.0.1:30000", "--scheduler", "http://127.0.0.1:8700"]
    for flag, value in overrides.items():
        argv += [f"--{flag.replace('_', '-')}", value]
    return parser.parse_args(argv)


@pytest.mark.parametrize("overrides, message", [
    ({"sglang_url": "127.0.0.1:30000"}, "--sglang-url"),
    ({"rate_cap": "fast"}, "--rate-cap"),
    ({"lease_ttl": "0"}, "--lease-ttl"),
    ({"host": "0.0.0.0"}, "--advertise-url"),
    ({"ranks": "0,x"}, "--ranks"),
    ({"log_level": "loud"}, "--log-level"),
])
def test_cli_rejects_bad_flags_without_a_traceback(overrides, message, capsys):
    assert agent_cli.main(_args(**overrides)) == 2
    err = capsys.readouterr().err
    assert err.startswith("rfork agent: error:") and message in err and "Traceback" not in err


def test_cli_builds_the_config_with_defaults():
    config = agent_cli.build_config(_args(rate_cap="100MB/s", tp_size="2", ranks="1"))
    assert (config.seed_id, config.rate_cap, config.tp_size, config.ranks) == ("seed-127.0.0.1-30000", 1e8, 2, (1,))
    assert config.advertised_url == "http://127.0.0.1:8800"
    assert agent_cli.build_config(_args(rate_cap="inf")).rate_cap is None
