"""The agent as a real HTTP server (uvicorn on loopback) against a fake seed and a recording scheduler.

The fake seed serves SGLang's TE-info and server-info endpoints (either the
current or the deprecated paths); the scheduler stand-in records every
registration, heartbeat and deregistration and can "forget" the seed.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
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


def test_a_slow_seed_refresh_never_holds_up_the_heartbeats(fleet):
    # A seed with tens of thousands of tensors per rank takes seconds to answer its TE info under
    # load; heartbeats that waited behind that re-read reached the scheduler late enough for it to
    # drop a live seed. Each refresh here reads two ranks at 1 s each (a 2 s step before).
    seed, scheduler, _, _ = fleet(refresh_every_heartbeats=1)
    wait_until(registered(scheduler), what="registration")
    seed.info_delay_seconds = 1.0
    wait_until(lambda: seed.hits.count("/remote_instance_transfer_engine_info") >= 4, what="a slow refresh")
    start = len(scheduler.heartbeats)
    time.sleep(2.0)
    beats = len(scheduler.heartbeats) - start
    assert beats >= 8, f"{beats} heartbeats at a 0.1 s period in 2 s while the seed was slow to answer"
    seed.info_delay_seconds = 0.0


def test_a_refresh_of_an_unchanged_seed_does_not_parse_its_te_info(fleet, monkeypatch):
    # Each refresh compares digests of the seed's answers; only a changed one is read whole.
    from rfork_agent import seed_link

    parsed = []
    real = seed_link.discover

    async def counting(config, http):
        parsed.append(time.monotonic())
        return await real(config, http)

    monkeypatch.setattr(seed_link, "discover", counting)
    seed, scheduler, _, _ = fleet(refresh_every_heartbeats=1)
    wait_until(registered(scheduler), what="registration")
    reads = seed.hits.count("/remote_instance_transfer_engine_info")
    wait_until(lambda: seed.hits.count("/remote_instance_transfer_engine_info") >= reads + 6,
               what="three refreshes of both ranks")
    assert len(parsed) == 1, "only discovery parsed the TE info"
    seed.info_extra = {"served_at": 1}  # other bytes, same sessions: read whole once, then by digest again
    wait_until(lambda: len(parsed) == 2, what="the changed answer read whole")
    reads = seed.hits.count("/remote_instance_transfer_engine_info")
    wait_until(lambda: seed.hits.count("/remote_instance_transfer_engine_info") >= reads + 6,
               what="three more refreshes")
    assert len(parsed) == 2 and len(scheduler.registrations) == 1
    seed.generation += 1  # restarted: new sessions, a different answer
    wait_until(lambda: scheduler.registrations[-1][1]["ranks"][0]["session_id"] == seed.session(0),
               what="re-registration with the new session")
    assert len(parsed) == 3


def test_a_refresh_that_times_out_keeps_the_registration(fleet):
    # Slow is not dead: the liveness probe (its /health still answers) owns that verdict.
    seed, scheduler, agent, _ = fleet(refresh_every_heartbeats=1, http_timeout_seconds=0.3)
    wait_until(registered(scheduler), what="registration")
    seed.info_delay_seconds = 1.0
    reads = seed.hits.count("/remote_instance_transfer_engine_info")
    wait_until(lambda: seed.hits.count("/remote_instance_transfer_engine_info") >= reads + 3,
               what="three refreshes that time out")
    assert scheduler.deletes == [] and len(scheduler.registrations) == 1
    assert post(f"{agent.url}/v1/leases", lease_body(1000)).status_code == 200
    seed.info_delay_seconds = 0.0


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
        assert "lost the seed at" in response.json()["detail"]["message"], response.text  # not "not read yet"
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


def test_a_lease_tells_the_client_to_read_in_the_seeds_pieces(fleet):
    _, scheduler, agent, _ = fleet(rate_cap=100 * MB, read_piece_bytes=2**20, read_piece_gap_seconds=0.005,
                                   lease_ttl_seconds=2.0)
    wait_until(registered(scheduler), what="registration")
    pieces = lambda nbytes, i: post(f"{agent.url}/v1/leases", lease_body(nbytes, assignment=f"a{i}")).json()  # noqa: E731
    many = pieces(8 * 2**20, 1)
    assert (many["read_piece_bytes"], many["read_piece_gap_seconds"]) == (2**20, 0.005)
    one = pieces(2**20, 2)                                  # one piece: nothing to wait between
    assert (one["read_piece_bytes"], one["read_piece_gap_seconds"]) == (2**20, 0.0)
    # 1,001 pieces: their 1,000 gaps kept within half the 2 s ttl.
    long = pieces(1001 * 2**20, 3)
    assert long["read_piece_gap_seconds"] == pytest.approx(0.001)


def test_read_pieces_switch_at_run_time_for_the_next_lease(fleet):
    _, scheduler, agent, app = fleet(rate_cap=100 * MB, read_piece_bytes=2**20)
    wait_until(registered(scheduler), what="registration")
    assert httpx.get(f"{agent.url}/v1/read-pieces").json() == {"read_piece_bytes": 2**20, "read_piece_gap_seconds": 0}
    scrape = lambda: httpx.get(f"{agent.url}/metrics").text  # noqa: E731
    assert 'rfork_agent_read_piece_bytes{seed="seed-0"} 1.048576e+06' in scrape()
    switched = httpx.put(f"{agent.url}/v1/read-pieces", json={"read_piece_bytes": 65536, "read_piece_gap_seconds": 0.01})
    assert switched.status_code == 200 and switched.json() == {"read_piece_bytes": 65536, "read_piece_gap_seconds": 0.01}
    lease = post(f"{agent.url}/v1/leases", lease_body(2**20)).json()
    assert (lease["read_piece_bytes"], lease["read_piece_gap_seconds"]) == (65536, 0.01)
    assert httpx.put(f"{agent.url}/v1/read-pieces", json={}).json() == {"read_piece_bytes": 0,
                                                                         "read_piece_gap_seconds": 0}
    assert 'rfork_agent_read_piece_bytes{seed="seed-0"} 0.0' in scrape()
    lease = post(f"{agent.url}/v1/leases", lease_body(2**20, assignment="a2")).json()
    assert (lease["read_piece_bytes"], lease["read_piece_gap_seconds"]) == (0, 0)


@pytest.mark.parametrize("body, says", [
    ({"read_piece_bytes": 1000}, "at least 65536 bytes"),
    ({"read_piece_gap_seconds": 0.01}, "needs read_piece_bytes"),
    ({"read_piece_bytes": 2**20, "read_piece_gap_seconds": 5}, "less than or equal to 1"),
    ({"read_piece_bytes": "1MiB"}, "valid integer"),
    ({"read_piece_bytes": 2**20, "pieces": 3}, "Extra inputs are not permitted"),
])
def test_bad_read_pieces_are_422_and_change_nothing(fleet, body, says):
    _, scheduler, agent, _ = fleet(read_piece_bytes=2**20)
    wait_until(registered(scheduler), what="registration")
    response = httpx.put(f"{agent.url}/v1/read-pieces", json=body)
    assert response.status_code == 422 and says in response.text, response.text
    assert httpx.get(f"{agent.url}/v1/read-pieces").json()["read_piece_bytes"] == 2**20


def test_release_refunds_unused_and_replay_is_404(fleet):
    # The agent's clock stands still: the balance moves only by what is booked and refunded (on a
    # busy machine, accrual between two status calls used to blur the refund it should show).
    _, scheduler, agent, _ = fleet(rate_cap=10 * MB, clock=ManualClock())   # burst 2.5 MB
    wait_until(registered(scheduler), what="registration")
    available = lambda: httpx.get(f"{agent.url}/v1/status").json()["available_bytes"]  # noqa: E731
    lease = post(f"{agent.url}/v1/leases", lease_body(2 * MB)).json()
    assert set(lease) == {"lease_id", "ttl_seconds", "read_piece_bytes", "read_piece_gap_seconds"}
    assert (lease["ttl_seconds"], lease["read_piece_bytes"], lease["read_piece_gap_seconds"]) == (30, 0, 0)
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
    ({"read_piece": "1KiB"}, "--read-piece must be 0 (whole reads) or at least 64KiB"),
    ({"read_piece": "lots"}, "--read-piece: cannot read size"),
    ({"read_piece": "1MiB", "read_piece_gap": "2"}, "--read-piece-gap must be 0 to 1 seconds"),
    ({"read_piece": "1MiB", "read_piece_gap": "nan"}, "--read-piece-gap must be 0 to 1 seconds"),
    ({"read_piece_gap": "0.01"}, "--read-piece-gap needs --read-piece"),
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
    assert (config.read_piece_bytes, config.read_piece_gap_seconds) == (0, 0.0)
    config = agent_cli.build_config(_args(read_piece="1MiB", read_piece_gap="0.005"))
    assert (config.read_piece_bytes, config.read_piece_gap_seconds) == (2**20, 0.005)
