"""TokenBucket: pure, fake clock (every ``now`` is passed in). Tables first."""

from __future__ import annotations

import math

import pytest

from throttle.token_bucket import MIN_BURST_BYTES, TokenBucket, default_burst

MiB = 2**20


@pytest.mark.parametrize("name, rate, burst, requests, expected_starts", [
    # requests: (nbytes, now); every reservation may wait up to 100 s
    ("uncapped grants at once", None, 1.0, [(10**12, 0.0), (10**12, 0.0)], [0.0, 0.0]),
    ("steady rate, pay first", 100.0, 50.0, [(50, 0.0), (100, 0.0), (50, 0.0)], [0.0, 1.0, 1.5]),
    ("idle time refills, capped at burst", 100.0, 50.0, [(10, 0.0), (50, 10.0), (50, 10.0)], [0.0, 10.0, 10.5]),
    ("bigger than the burst is served", 100.0, 50.0, [(500, 0.0)], [4.5]),
    ("later ones pay the big one's debt", 100.0, 50.0, [(500, 0.0), (10, 0.0)], [4.5, 4.6]),
    ("arrivals later in time queue FIFO", 100.0, 50.0, [(100, 0.0), (100, 0.2), (10, 0.3)], [0.5, 1.5, 1.6]),
])
def test_reservations_start_in_fifo_virtual_time(name, rate, burst, requests, expected_starts):
    bucket = TokenBucket(rate, burst, now=0.0)
    starts = [bucket.reserve(n, now, max_wait=100).start_at for n, now in requests]
    assert starts == pytest.approx(expected_starts), name


@pytest.mark.parametrize("rate, burst, chunk", [(1000.0, 100.0, 64), (10e6, 2.5e6, 4e6), (1e9, 250e6, 64 * MiB)])
def test_bytes_started_by_any_time_never_exceed_rate_times_t_plus_burst(rate, burst, chunk):
    bucket = TokenBucket(rate, burst, now=0.0)
    starts = [bucket.reserve(chunk, now=0.0, max_wait=math.inf).start_at for _ in range(200)]
    assert starts == sorted(starts)  # FIFO
    for i, t in enumerate(starts):
        # pay first: the (i+1) chunks started by t were all accrued by t
        assert (i + 1) * chunk <= burst + rate * t + 1e-6 * chunk
    # ...and the long-run rate is the cap (not slower either)
    assert 200 * chunk / starts[-1] == pytest.approx(rate, rel=0.02)


def test_over_wait_is_refused_and_consumes_nothing():
    bucket = TokenBucket(100.0, 50.0, now=0.0)
    bucket.reserve(50, 0.0, max_wait=10)
    before = bucket.available(0.0)
    assert bucket.reserve(100, 0.0, max_wait=0.5) is None
    assert bucket.available(0.0) == before
    assert bucket.reserve(10, 0.0, max_wait=10).start_at == pytest.approx(0.1)


@pytest.mark.parametrize("name, booked, refund, expected", [
    ("refund of a never-read lease", 50, 30, 30.0),
    ("never above the burst", 50, 500, 50.0),
    ("pays back debt", 150, 100, 0.0),
])
def test_refund(name, booked, refund, expected):
    bucket = TokenBucket(100.0, 50.0, now=0.0)
    bucket.reserve(booked, 0.0, max_wait=10)
    bucket.refund(refund, 0.0)
    assert bucket.available(0.0) == pytest.approx(expected), name


def test_set_rate_mid_stream_conserves_tokens():
    bucket = TokenBucket(100.0, 1000.0, now=0.0)
    bucket.reserve(1000, 0.0, max_wait=10)     # empty
    bucket.set_rate(1000.0, now=0.5)           # 50 accrued at the old rate: kept, none invented
    assert bucket.available(0.5) == pytest.approx(50)
    assert bucket.available(0.6) == pytest.approx(150)
    bucket.reserve(500, 0.6, max_wait=10)      # debt 350: clears at 0.6 + 0.35 at 1000 B/s
    bucket.set_rate(100.0, now=0.6)            # lowering keeps that moment: debt 35 at 100 B/s
    assert bucket.available(0.6) == pytest.approx(-35)
    assert bucket.reserve(50, 0.6, max_wait=10).start_at == pytest.approx(0.95 + 0.5)  # new bytes: new rate


def test_debt_keeps_its_deadline_across_a_pause_and_big_cuts():
    bucket = TokenBucket(60e6, 1.0, now=0.0)
    for _ in range(8):
        bucket.reserve(8e6, 0.0, max_wait=10)  # 64 MB booked ahead at 60 MB/s: clears at ~1.07 s
    booked_until = -bucket.available(0.0) / 60e6
    bucket.set_rate(0.0, now=0.0)              # pause: frozen
    bucket.set_rate(5e6, now=0.0)              # the floor: the old bookings still clear at ~1.07 s
    assert bucket.wait_for(0.0 + 1e-9, 0.0) == pytest.approx(booked_until, rel=1e-6)
    assert bucket.reserve(5e6, 0.0, max_wait=10).start_at == pytest.approx(booked_until + 1.0, rel=1e-6)
    bucket.set_rate(10e6, now=booked_until)    # raising keeps the deadline too: the 5 MB booked at 5 MB/s
    assert bucket.wait_for(1e-9, booked_until) == pytest.approx(1.0, rel=1e-6)  # still clears 1 s later


def test_set_rate_zero_pauses_and_resume_keeps_the_balance():
    bucket = TokenBucket(100.0, 50.0, now=0.0)
    bucket.reserve(40, 0.0, max_wait=1)        # 10 left
    bucket.set_rate(0.0, now=0.0)
    assert bucket.reserve(20, 5.0, max_wait=1000) is None
    assert bucket.reserve(5, 5.0, max_wait=1000) is None  # a pause stops even what the balance covers
    assert bucket.wait_for(20, 5.0) == math.inf
    assert bucket.available(5.0) == pytest.approx(10)  # frozen, not lost
    bucket.set_rate(100.0, now=5.0)
    assert bucket.reserve(20, 5.0, max_wait=1).start_at == pytest.approx(5.1)


def test_set_rate_between_capped_and_uncapped():
    bucket = TokenBucket(100.0, 50.0, now=0.0)
    bucket.set_rate(None, now=0.0)
    assert bucket.reserve(10**9, 0.0, max_wait=0).start_at == 0.0
    assert bucket.available(0.0) == math.inf
    bucket.set_rate(100.0, now=1.0)            # uncapped booked nothing: start with one burst
    assert bucket.available(1.0) == pytest.approx(50)


def test_set_rate_with_smaller_burst_clips_the_balance_but_keeps_debt():
    bucket = TokenBucket(100.0, 50.0, now=0.0)
    bucket.set_rate(100.0, now=0.0, burst=20.0)
    assert bucket.available(0.0) == pytest.approx(20)
    bucket.reserve(60, 0.0, max_wait=10)
    bucket.set_rate(100.0, now=0.0, burst=5.0)
    assert bucket.available(0.0) == pytest.approx(-40)


def test_a_clock_step_back_accrues_nothing():
    bucket = TokenBucket(100.0, 50.0, now=10.0)
    bucket.reserve(50, 10.0, max_wait=1)
    assert bucket.available(9.0) == 0.0


def test_a_bucket_created_at_rate_zero_is_paused_until_given_a_rate():
    bucket = TokenBucket(0.0, 50.0, now=0.0)   # a seed started with --rate-cap 0
    assert bucket.rate == 0.0
    assert bucket.reserve(1, 0.0, max_wait=1000) is None  # not even what the full balance covers
    assert bucket.wait_for(1, 10.0) == math.inf
    bucket.set_rate(100.0, now=10.0)
    assert bucket.reserve(50, 10.0, max_wait=0).start_at == 10.0


@pytest.mark.parametrize("rate, burst", [(-1.0, 1.0), (math.nan, 1.0), (math.inf, 1.0), (1.0, 0.0)])
def test_bad_parameters_are_refused_with_a_reason(rate, burst):
    with pytest.raises(ValueError, match="rate|burst"):
        TokenBucket(rate, burst, now=0.0)


def test_negative_reservation_is_refused():
    with pytest.raises(ValueError, match=">= 0"):
        TokenBucket(1.0, 1.0, now=0.0).reserve(-1, 0.0, 1.0)


@pytest.mark.parametrize("rate, expected", [(None, MIN_BURST_BYTES), (1e6, MIN_BURST_BYTES), (1e9, 2.5e8)])
def test_default_burst(rate, expected):
    assert default_burst(rate) == expected


# --------------------------------------------------------------------------- bigger than the wait can pay for


@pytest.mark.parametrize("name, requests, expected_starts", [
    # rate 100 B/s, burst 50 B; requests: (nbytes, now, max_wait). 50 + 100 x 1 = 150 B is the most a
    # 1 s wait can pay for first, so 500 B with a 1 s wait "pays after".
    ("on a full bucket it starts at once", [(500, 0.0, 1.0)], [0.0]),
    ("those after it repay its debt", [(500, 0.0, 1.0), (10, 0.0, 100.0)], [0.0, 4.6]),
    ("once the debt ahead is repaid (FIFO)", [(100, 0.0, 1.0), (500, 0.5, 1.0), (10, 0.5, 100.0)],
     [0.5, 0.5, 5.6]),
    ("a partial balance is no debt", [(30, 0.0, 1.0), (500, 0.0, 1.0)], [0.0, 0.0]),
    ("what the wait can pay for still pays first", [(150, 0.0, 1.0)], [1.0]),
    ("a longer wait pays first", [(500, 0.0, 10.0)], [4.5]),
])
def test_a_read_the_wait_can_never_pay_for_pays_after(name, requests, expected_starts):
    bucket = TokenBucket(100.0, 50.0, now=0.0)
    reservations = [bucket.reserve(n, now, max_wait=w) for n, now, w in requests]
    assert None not in reservations, name
    assert [r.start_at for r in reservations] == pytest.approx(expected_starts), name


def test_pay_after_is_refused_not_held_while_debt_is_ahead_and_retry_after_says_when():
    bucket = TokenBucket(100.0, 50.0, now=0.0)
    bucket.reserve(250, 0.0, max_wait=10)                       # 200 B of debt: repaid at 2.0
    assert bucket.wait_for(500, 0.0, max_wait=3.0) == pytest.approx(2.0)
    assert bucket.reserve(500, 0.0, max_wait=3.0) is None       # within the wait, but never held
    assert bucket.available(0.0) == pytest.approx(-200)         # nothing booked
    assert bucket.retry_after(500, 0.0, max_wait=3.0) == pytest.approx(2.0)
    assert bucket.retry_after(250, 0.0, max_wait=3.0) == pytest.approx(1.5)  # pays first: 4.5 s - 3 s
    retry_at = bucket.retry_after(500, 0.0, max_wait=3.0)       # what the agent's 429 says
    assert bucket.reserve(500, retry_at, max_wait=3.0).start_at == pytest.approx(2.0)
    bucket.set_rate(0.0, now=2.0)
    assert bucket.retry_after(500, 2.0, max_wait=3.0) == math.inf  # paused


@pytest.mark.parametrize("rate, burst, chunk, max_wait", [
    (2.5e6, 1 * MiB, 33.5e6, 5.0),     # the hung fork: a 32 MiB model's one chunk at the QoS floor
    (1e6, 64 * 1024, 3e6, 0.5),
    (100.0, 50.0, 10_000, 0.0),        # a client that will not wait at all
])
def test_a_client_that_honours_the_retry_is_served_every_chunk(rate, burst, chunk, max_wait):
    """Any size is served: ask, and on a refusal ask again after retry_after (the 429's retry)."""
    bucket, now, starts = TokenBucket(rate, burst, now=0.0), 0.0, []
    for _ in range(20):
        for _attempt in range(2):  # one refusal at most per chunk: the retry is exact
            reservation = bucket.reserve(chunk, now, max_wait)
            if reservation is not None:
                break
            now += bucket.retry_after(chunk, now, max_wait)
        assert reservation is not None, "starved: refused after honouring the retry"
        starts.append(reservation.start_at)
        now = reservation.start_at
    assert starts == sorted(starts)  # FIFO
    # The long-run rate is the cap: the first chunk started at once (on the full burst), every
    # later one when the debt before it was repaid, chunk / rate apart.
    assert starts[0] == 0.0 and starts[1] == pytest.approx((chunk - burst) / rate)
    assert (len(starts) - 2) * chunk / (starts[-1] - starts[1]) == pytest.approx(rate, rel=1e-6)
    for i, t in enumerate(starts):
        # Bytes started by t: at most rate x t + burst, plus the one that paid after.
        assert (i + 1) * chunk <= burst + rate * t + chunk + 1e-6 * chunk


def test_pays_after_threshold():
    bucket = TokenBucket(100.0, 50.0, now=0.0)
    assert not bucket.pays_after(150, max_wait=1.0) and bucket.pays_after(151, max_wait=1.0)
    assert not bucket.pays_after(10**12, max_wait=math.inf)
    bucket.set_rate(0.0, now=0.0)
    assert not bucket.pays_after(10**12, max_wait=1.0)  # a pause pays nothing, before or after
    bucket.set_rate(None, now=0.0)
    assert not bucket.pays_after(10**12, max_wait=1.0)  # uncapped: nothing to pay
