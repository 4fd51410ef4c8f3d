"""The agent as a real HTTP server (uvicorn on loopback) against a fake seed and a recording scheduler.

The fake seed serves SGLang's TE-info and server-info endpoints (either the
current or the deprecated paths); the scheduler stand-in records every
registration, heartbeat and deregistration and can "forget" the seed.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
import pytest

from rfork_agent import agent_cli
from tests.integration.agent_fakes import (  # noqa: F401 - the fakes this module's tests drive
    MB, FakeSeed, RecordingScheduler, Served, _socket, lease_body, manifest_for, post, registered, wait_until)

pytestmark = pytest.mark.timeout(60)

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


# --------------------------------------------------------------------------- leases


async def _take_leases(url: str, sizes: list[int]) -> list[float]:
    async with httpx.AsyncClient(timeout=30) as http:
        async def one(i: int, nbytes: int) -> float:
            await asyncio.sleep(0.01 * i)  # arrive in order
            response = await http.post(f"{url}/v1/leases", json=lease_body(nbytes, assignment=f"a{i}"))
            assert response.status_code == 200, response.text
            return time.monotonic()
        return await asyncio.gather(*(one(i, n) for i, n in enumerate(sizes)))


def test_leases_are_paced_at_the_cap_in_fifo_order(fleet):
    _, scheduler, agent, _ = fleet(rate_cap=10 * MB)
    wait_until(registered(scheduler), what="registration")
    started = time.monotonic()
    granted = asyncio.run(_take_leases(agent.url, [4 * MB] * 5))
    # Burst 2.5 MB (0.25 s of 10 MB/s), pay first: the 5th starts when 20 MB have accrued.
    expected_last = (20 * MB - 2.5 * MB) / (10 * MB)
    assert granted == sorted(granted), "FIFO"
    assert expected_last - 0.1 <= granted[-1] - started <= expected_last + 0.5
    gaps = [b - a for a, b in zip(granted, granted[1:])]
    assert all(0.3 <= g <= 0.55 for g in gaps), gaps
    status = httpx.get(f"{agent.url}/v1/status").json()
    assert status["in_flight_leases"] == 5 and status["in_flight_bytes"] == 20 * MB


def test_over_wait_is_429_with_retry_after_and_books_nothing(fleet):
    _, scheduler, agent, _ = fleet(rate_cap=10 * MB)
    wait_until(registered(scheduler), what="registration")
    response = post(f"{agent.url}/v1/leases", lease_body(100 * MB, wait=1.0))
    assert response.status_code == 429
    detail = response.json()["detail"]
    assert detail["error"] == "over_budget" and 7 < detail["retry_after_seconds"] < 10
    t0 = time.monotonic()
    assert post(f"{agent.url}/v1/leases", lease_body(2 * MB)).status_code == 200  # still within the burst
    assert time.monotonic() - t0 < 0.3


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
    # A slow refill and a roomy burst: the refund is never clipped at the burst, however slow
    # the machine (at 10 MB/s and a 2.5 MB burst, 0.2 s between two calls in a busy CI run let
    # the bucket refill to its burst, and the refund was cut short).
    _, scheduler, agent, _ = fleet(rate_cap=1 * MB, burst_bytes=3 * MB)
    wait_until(registered(scheduler), what="registration")
    available = lambda: httpx.get(f"{agent.url}/v1/status").json()["available_bytes"]  # noqa: E731
    lease = post(f"{agent.url}/v1/leases", lease_body(2 * MB)).json()
    assert set(lease) == {"lease_id", "ttl_seconds"} and lease["ttl_seconds"] == 30
    assert post(f"{agent.url}/v1/leases", lease_body(2 * MB, assignment="a2")).status_code == 200  # into debt
    before = available()
    assert post(f"{agent.url}/v1/leases/{lease['lease_id']}/release", {"used": False}).status_code == 200
    assert 2 * MB <= available() - before < 2.3 * MB   # refunded (plus a few ms of accrual)
    replay = post(f"{agent.url}/v1/leases/{lease['lease_id']}/release", {"used": False})
    assert replay.status_code == 404 and replay.json()["detail"]["error"] == "unknown_lease"
    used = post(f"{agent.url}/v1/leases", lease_body(1 * MB)).json()
    assert post(f"{agent.url}/v1/leases/{used['lease_id']}/release", {"used": True}).status_code == 200
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
