"""Token bucket, lease book and the in-memory transport: pure, fake clock."""

from __future__ import annotations

import ctypes

import pytest

from rfork_agent.leases import LeaseBook, UnknownLease
from rfork_agent.transport import InMemoryTransport, ReadStatus
from throttle.token_bucket import TokenBucket


@pytest.mark.parametrize("rate, burst, requests, expected_starts", [
    (None, 1.0, [(10**9, 0.0)], [0.0]),                              # uncapped: always now
    (100.0, 50.0, [(50, 0.0), (100, 0.0), (50, 0.0)], [0.0, 1.0, 1.5]),  # FIFO, pay first
    (100.0, 50.0, [(10, 0.0), (10, 10.0)], [0.0, 10.0]),              # idle refills, capped at burst
    (100.0, 50.0, [(500, 0.0)], [4.5]),                               # bigger than the burst still served
])
def test_reservations_start_in_fifo_virtual_time(rate, burst, requests, expected_starts):
    bucket = TokenBucket(rate, burst, now=0.0)
    starts = [bucket.reserve(n, now, max_wait=100).start_at for n, now in requests]
    assert starts == pytest.approx(expected_starts)


def test_rate_is_never_exceeded_over_a_window():
    bucket, granted = TokenBucket(1000.0, 100.0, now=0.0), []
    for _ in range(200):
        r = bucket.reserve(64, now=0.0, max_wait=1000)
        granted.append(r.start_at)
    # bytes started by time t <= burst + rate * t
    for i, t in enumerate(granted):
        assert (i + 1) * 64 <= 100 + 1000 * t + 64


def test_over_wait_consumes_nothing():
    bucket = TokenBucket(100.0, 50.0, now=0.0)
    bucket.reserve(50, 0.0, 10)
    assert bucket.reserve(100, 0.0, max_wait=0.5) is None
    assert bucket.reserve(10, 0.0, max_wait=10).start_at == pytest.approx(0.1)


def test_refund_returns_tokens_but_never_above_burst():
    bucket = TokenBucket(100.0, 50.0, now=0.0)
    bucket.reserve(50, 0.0, 10)
    bucket.refund(500, 0.0)
    assert bucket.available(0.0) == 50


def test_set_rate_keeps_accrued_tokens():
    bucket = TokenBucket(100.0, 1000.0, now=0.0)
    bucket.reserve(1000, 0.0, 10)             # empty
    bucket.set_rate(1000.0, now=0.5)          # 50 accrued at the old rate
    assert bucket.available(0.5) == pytest.approx(50)
    assert bucket.available(0.6) == pytest.approx(150)


@pytest.mark.parametrize("rate, burst", [(-1.0, 1.0), (1.0, 0.0)])  # rate 0 is a paused bucket, not an error
def test_bad_bucket_parameters(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, now=0.0)


def test_lease_lifecycle():
    book = LeaseBook(ttl_seconds=10)
    a = book.grant("j", "a1", 0, 100, now=0.0)
    b = book.grant("j", "a2", 0, 200, now=1.0)
    assert book.in_flight() == 2 and book.in_flight_bytes() == 300
    assert book.release(a.lease_id, now=2.0).nbytes == 100
    with pytest.raises(UnknownLease):
        book.release(a.lease_id, now=2.0)      # replayed release
    assert [l.lease_id for l in book.expire(now=11.0)] == [b.lease_id]
    with pytest.raises(UnknownLease):
        book.release(b.lease_id, now=12.0)     # expired
    assert book.in_flight() == 0


def _buffer(n, fill):
    buf = (ctypes.c_ubyte * n)(*([fill] * n))
    return buf, ctypes.addressof(buf)


def test_in_memory_transport_copies_and_fails_like_the_real_one():
    seed, client = InMemoryTransport(), InMemoryTransport()
    src, src_ptr = _buffer(64, 7)
    dst, dst_ptr = _buffer(64, 0)
    seed.register(src_ptr, 64)
    client.register(dst_ptr, 64)
    handle = client.submit_read(seed.session_id, [dst_ptr], [src_ptr], [64])
    assert client.poll(handle) == ReadStatus.DONE and bytes(dst) == bytes([7] * 64)
    assert client.read_sync("inmem:nope", [dst_ptr], [src_ptr], [64]) == -1         # unknown peer
    assert client.read_sync(seed.session_id, [dst_ptr], [src_ptr + 32], [64]) == -1  # outside the region
    flaky = InMemoryTransport(fail_when=lambda session, lengths: True)
    flaky.register(dst_ptr, 64)
    assert flaky.poll(flaky.submit_read(seed.session_id, [dst_ptr], [src_ptr], [64])) == ReadStatus.FAILED
