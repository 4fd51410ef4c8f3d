"""LeaseBook: pure bookkeeping, fake clock."""

from __future__ import annotations

import pytest

from rfork_agent.leases import LeaseBook, LeaseExpired, UnknownLease


@pytest.fixture
def book():
    return LeaseBook(ttl_seconds=10)


def test_grant_counts_in_flight(book):
    a = book.grant("j", "a1", 0, 100, now=0.0)
    b = book.grant("j", "a2", 1, 200, now=1.0)
    assert a.lease_id != b.lease_id
    assert (a.expires_at, b.expires_at) == (10.0, 11.0)
    assert book.in_flight() == 2 and book.in_flight_bytes() == 300
    assert book.get(b.lease_id) == b


@pytest.mark.parametrize("used, refund", [(True, 0), (False, 100)])
def test_release_refunds_only_unused_leases(book, used, refund):
    lease = book.grant("j", "a1", 0, 100, now=0.0)
    released = book.release(lease.lease_id, now=1.0, used=used)
    assert (released.nbytes, released.refund_bytes, released.used) == (100, refund, used)
    assert book.in_flight() == 0


@pytest.mark.parametrize("name, steps, error, left", [
    ("replayed release", ["release", "release"], UnknownLease, 0),
    ("release after the sweep expired it", ["expire", "release"], UnknownLease, 0),
    ("release after the ttl, before any sweep", ["release_late"], LeaseExpired, 0),
    ("never granted", ["release_unknown"], UnknownLease, 1),
])
def test_release_of_a_lease_not_held_is_a_typed_error(book, name, steps, error, left):
    lease = book.grant("j", "a1", 0, 100, now=0.0)
    actions = {
        "release": lambda: book.release(lease.lease_id, now=1.0),
        "expire": lambda: book.expire(now=10.0),
        "release_late": lambda: book.release(lease.lease_id, now=10.5),
        "release_unknown": lambda: book.release("nope-1", now=1.0),
    }
    for step in steps[:-1]:
        actions[step]()
    with pytest.raises(error) as info:
        actions[steps[-1]]()
    assert "lease" in str(info.value) and not str(info.value).startswith("'")  # a sentence, not a repr
    assert book.in_flight() == left, name


def test_expiry_frees_the_slot_and_returns_the_expired_leases(book):
    a = book.grant("j", "a1", 0, 100, now=0.0)
    b = book.grant("j", "a2", 0, 200, now=5.0)
    assert book.expire(now=9.9) == []
    assert book.expire(now=10.0) == [a]
    assert book.in_flight() == 1 and book.in_flight_bytes() == 200
    assert book.expire(now=15.0) == [b]


def test_late_release_carries_the_lease_for_metrics(book):
    lease = book.grant("j", "a1", 0, 100, now=0.0)
    with pytest.raises(LeaseExpired) as info:
        book.release(lease.lease_id, now=20.0, used=False)
    assert info.value.lease == lease     # no refund is offered for it


def test_ids_differ_between_books():
    one, two = LeaseBook(10), LeaseBook(10)
    a = one.grant("j", "a", 0, 1, now=0.0)
    with pytest.raises(UnknownLease):
        two.release(a.lease_id, now=0.0)


@pytest.mark.parametrize("ttl", [0, -1])
def test_bad_ttl(ttl):
    with pytest.raises(ValueError, match="ttl"):
        LeaseBook(ttl)


def test_zero_byte_lease_is_refused(book):
    with pytest.raises(ValueError, match="> 0 bytes"):
        book.grant("j", "a", 0, 0, now=0.0)


# --- the agent applies the book's decisions to its token bucket (fake clock, no I/O) ---------


def _agent_state(**overrides):
    from prometheus_client import CollectorRegistry

    from metrics.definitions import AgentMetrics
    from rfork_agent.agent import AgentConfig, AgentState, LeaseRequest, RankInfo, SeedDescription
    from rfork_api.models import ModelIdentity

    config = AgentConfig(**{"seed_id": "s", "sglang_url": "http://127.0.0.1:1", "scheduler_url": "http://127.0.0.1:2",
                            "rate_cap": 100.0, "burst_bytes": 100.0, "lease_ttl_seconds": 10, **overrides})
    registry = CollectorRegistry()
    state = AgentState(config, AgentMetrics(registry), clock=lambda: 0.0)
    state.seed = SeedDescription(ModelIdentity(model="m", dtype="auto", tp_size=1),
                                 {0: RankInfo(rank=0, session_id="127.0.0.1:1", manifest={})})
    return state, registry, lambda n, a="a": LeaseRequest(job_id="j", assignment_id=a, rank=0, bytes=n)


@pytest.mark.parametrize("name, finish, balance_after", [
    ("used: tokens stay spent", lambda st, lease: st.release(lease.lease_id, True, 1.0), 20.0),
    ("unused: tokens come back", lambda st, lease: st.release(lease.lease_id, False, 1.0), 100.0),
    ("expired: no refund, the bytes may have been read", lambda st, lease: st.expire_leases(10.0), 20.0),
])
def test_agent_state_release_and_expiry_against_the_bucket(name, finish, balance_after):
    state, registry, request = _agent_state()
    assert state.reserve(80, wait_seconds=0, now=0.0).start_at == 0.0   # balance 100 -> 20
    lease = state.grant(request(80), asked_at=0.0, now=0.0)
    state.set_allowed_rate(0.0, now=0.0)                                 # freeze accrual: compare balances only
    finish(state, lease)
    assert state.bucket.available(10.0) == pytest.approx(balance_after), name
    assert state.leases.in_flight() == 0
    assert registry.get_sample_value("rfork_agent_leases_in_flight", {"seed": "s"}) == 0


def test_agent_state_refusals():
    state, _, _ = _agent_state()
    assert state.check_lease(0) is None
    assert state.check_lease(3).status == 404
    state.seed_alive = False
    assert state.check_lease(0).code == "seed_unavailable"
    state.seed = None                                         # not read yet, then read and lost
    assert "has not read the seed's TransferEngine info" in state.check_lease(0).message
    state.seed_lost_because = "the seed stopped answering its /health"
    lost = state.check_lease(0)
    assert lost.status == 503 and "lost the seed at" in lost.message and "stopped answering" in lost.message
    fresh = _agent_state()[0]
    fresh.reserve(100, wait_seconds=1.0, now=0.0)             # the burst, spent
    denied = fresh.reserve(150, wait_seconds=1.0, now=0.0)    # paid first: could start in 1.5 s
    assert denied.status == 429 and denied.retry_after_seconds == pytest.approx(0.5)  # 150/100 - 1


def test_agent_state_rate_seam_never_exceeds_the_cap():
    state, registry, _ = _agent_state()
    state.set_allowed_rate(1e9, now=0.0)
    assert state.allowed_rate == 100.0
    state.set_allowed_rate(0.0, now=0.0)
    assert registry.get_sample_value("rfork_agent_allowed_rate_bytes_per_second", {"seed": "s"}) == 0.0
    assert state.heartbeat_body(0.0).allowed_rate_bytes_per_second == 0.0
    state.set_allowed_rate(None, now=0.0)                   # back to the cap
    assert state.allowed_rate == 100.0
