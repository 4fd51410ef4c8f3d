"""A FIFO token bucket in virtual time: pure, the clock is passed in.

The agent paces chunk reads with it: a lease for N bytes is granted when the
bucket allows N bytes. Nothing here sleeps or reads a clock; ``reserve`` says
*when* the bytes may start and the caller waits until then.

Rules (why each one):

- **Pay first.** A reservation of N bytes starts once the bucket has accrued N
  bytes after every earlier reservation. Over any window of length T the bytes
  started are therefore at most ``rate * T + burst``: a chunk's bytes are paid
  for before it begins, never after (except a read too big for the wait, below).
- **FIFO in virtual time.** The balance is booked at once (it may go
  negative); the next reservation waits until the debt of those before it is
  repaid. Arrival order is service order, and no caller needs a lock or queue.
- **Bigger than the burst is still served.** The balance is capped at
  ``burst`` from above only, so a reservation larger than the burst books its
  full size as debt and starts when the debt reaches zero — at
  ``(nbytes - balance) / rate`` — instead of waiting forever for a balance the
  cap can never reach. Later reservations pay off that debt first, which keeps
  the long-run rate exact.
- **Bigger than the wait can pay for pays after.** A reservation that could
  not start within ``max_wait`` even from a full bucket (``nbytes > burst +
  rate * max_wait``) would be refused forever under pay first: no balance the
  cap allows ever makes its wait short enough (a 33.5 MB chunk at a 2.5 MB/s
  floor with a 5 s wait: every lease refused, the fork hung). Such a
  reservation instead starts at once when no debt is booked ahead of it (the
  balance is >= 0) and books its whole size as debt, which the reservations
  after it repay: nothing is created, the long-run rate stays exact, and any
  window's bytes are at most ``rate * T + burst`` plus the last such read.
  While debt is booked ahead it is refused, not held: holding it could not
  make it pay first anyway, and a held request keeps its caller waiting (a
  fork that is done still settles its lease requests). ``retry_after`` says
  when that debt is repaid. It does not queue: while reads that pay first
  keep the seed booked ahead, it is served in the first gap they leave.
- **Rate changes conserve tokens; debt keeps its deadline.** ``set_rate``
  settles accrual at the old rate up to ``now`` and accrues at the new rate
  after it, so the adaptive QoS controller can move the rate every tick
  without creating or losing bytes. Reservations already booked keep their
  start times, and a debt (bytes booked ahead) is rescaled so that it clears
  at the same moment it would have at the rate it was booked at: what was
  granted before the change runs on its schedule, what is asked after it is
  paced at the new rate. Charging the old bookings at a much lower new rate
  instead would stall the seed for (debt / new rate): measured on the
  testbed, 13 s of no transfer at all after a drop from 60 MB/s to the
  5 MB/s floor, where the controller meant "slowly", not "stop".
- **Rate 0 pauses.** ``set_rate(0.0)`` (a QoS probe pause), or a bucket
  created at rate 0 (a seed started with ``--rate-cap 0``), denies every new
  reservation of a positive size; the balance is frozen, not lost.
- **Uncapped** (``rate=None``) grants at once and keeps no balance.

    >>> b = TokenBucket(rate=100.0, burst=50.0, now=0.0)
    >>> b.reserve(50, now=0.0, max_wait=10).start_at
    0.0
    >>> b.reserve(100, now=0.0, max_wait=10).start_at   # FIFO: after the first
    1.0
    >>> b.reserve(10, now=0.0, max_wait=0.5) is None     # over the wait: nothing booked
    True
    >>> b.set_rate(200.0, now=0.5)                       # 50 accrued at 100 B/s, kept
    >>> b.available(0.5)                                 # the 50 B of debt left still clears at t=1.0
    -100.0
    >>> b.reserve(1000, now=1.0, max_wait=2).start_at    # over 50 B + 2 s x 200 B/s: no debt
    1.0
    >>> b.reserve(1000, now=1.0, max_wait=2) is None     # ahead, it starts now and pays after;
    True
    >>> b.retry_after(1000, now=1.0, max_wait=2)         # the next one, once that is repaid
    5.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MiB = 2**20

DEFAULT_BURST_SECONDS = 0.25
"""The agent's burst is this many seconds of the rate (at least ``MIN_BURST_BYTES``)."""

MIN_BURST_BYTES = 1 * MiB

WAIT_TOLERANCE_SECONDS = 1e-6
"""A wait this close to the longest allowed is within it: a caller that asks again after exactly
``retry_after(...)`` must be granted, not refused by float rounding of that sum."""


def default_burst(rate: float | None) -> float:
    """The agent's burst for ``rate``: max(0.25 s x rate, 1 MiB).

    Big enough that a steady stream of chunks is not paced finer than the
    HTTP round trip of a lease, small enough that an idle seed cannot be hit by
    more than a quarter second of its cap at once.

        >>> default_burst(1e9)
        250000000.0
        >>> default_burst(None) == MIN_BURST_BYTES
        True
    """
    if rate is None or not rate > 0:
        return float(MIN_BURST_BYTES)
    return max(DEFAULT_BURST_SECONDS * rate, float(MIN_BURST_BYTES))


@dataclass(frozen=True)
class Reservation:
    """``nbytes`` may start at ``start_at`` (the caller's clock); already paid for."""

    nbytes: float
    start_at: float

    def delay(self, now: float) -> float:
        """Seconds from ``now`` until the reservation may start (0 if due)."""
        return max(0.0, self.start_at - now)


def _check_rate(rate: float | None) -> None:
    if rate is not None and (math.isnan(rate) or rate < 0 or math.isinf(rate)):
        raise ValueError(
            f"rate must be a finite number of bytes/s >= 0 (0 pauses), or None for uncapped; got {rate}"
        )


class TokenBucket:
    """FIFO, pay-first token bucket; see the module docstring for the rules.

    ``available(now)`` is the balance: positive = bytes that may start at
    once, negative = debt booked by reservations still waiting to start.
    """

    def __init__(self, rate: float | None, burst: float, now: float) -> None:
        _check_rate(rate)  # 0 starts paused: a seed whose operator gave it --rate-cap 0
        if not burst > 0 or math.isinf(burst):
            raise ValueError(f"burst must be a finite number of bytes > 0, got {burst}")
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)  # start full: an idle seed may serve one burst at once
        self._at = now
        # The rate any debt drains at (the last positive rate; a pause freezes it).
        self._debt_rate = rate

    @property
    def rate(self) -> float | None:
        """Bytes/s accrued now; None = uncapped, 0 = paused."""
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    def _advance(self, now: float) -> None:
        # A clock that steps back (or callers racing) must not un-accrue tokens.
        if now > self._at:
            if self._rate is not None:
                self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
            self._at = now

    def available(self, now: float) -> float:
        """Balance at ``now`` in bytes (``math.inf`` when uncapped; negative = debt)."""
        self._advance(now)
        return math.inf if self._rate is None else self._tokens

    def wait_for(self, nbytes: float, now: float, max_wait: float = math.inf) -> float:
        """Seconds until ``nbytes`` could start if reserved at ``now`` (inf when paused). Books nothing.

        ``max_wait`` is the wait the reservation would be given: one too big
        to be paid for within it, even from a full bucket, waits only for the
        debt ahead of it (see "pays after" in the module docstring).
        """
        self._advance(now)
        if self._rate is None or nbytes <= 0:
            return 0.0
        if self._rate == 0:
            return math.inf  # paused: not even a positive balance may be spent
        if self.pays_after(nbytes, max_wait):
            return max(0.0, -self._tokens) / self._rate
        if nbytes <= self._tokens:
            return 0.0
        return (nbytes - self._tokens) / self._rate

    def pays_after(self, nbytes: float, max_wait: float) -> bool:
        """Whether ``nbytes`` could never be paid for first within ``max_wait`` (see the rules)."""
        rate = self._rate
        return bool(rate) and nbytes > self._burst + rate * max_wait  # type: ignore[operator]

    def retry_after(self, nbytes: float, now: float, max_wait: float) -> float:
        """Seconds from ``now`` after which the same ``reserve`` is granted, if nothing else is
        booked meanwhile (0: it would be granted now; inf: paused). Books nothing."""
        wait = self.wait_for(nbytes, now, max_wait)
        return max(0.0, wait - self._longest_wait(nbytes, max_wait))

    def _longest_wait(self, nbytes: float, max_wait: float) -> float:
        # A read that pays after is never held: it starts now or not at all (see the rules).
        return 0.0 if self.pays_after(nbytes, max_wait) else max_wait

    def reserve(self, nbytes: float, now: float, max_wait: float) -> Reservation | None:
        """Book ``nbytes`` to start no earlier than the rate allows.

        Returns the reservation, or None — with nothing booked — if it could
        not start within ``max_wait`` seconds of ``now`` (or, for a read that
        pays after, at once).
        """
        if nbytes < 0 or math.isnan(nbytes):
            raise ValueError(f"cannot reserve {nbytes} bytes; give a byte count >= 0")
        wait = self.wait_for(nbytes, now, max_wait)
        if wait > self._longest_wait(nbytes, max_wait) + WAIT_TOLERANCE_SECONDS:
            return None
        if self._rate is not None:
            self._tokens -= nbytes  # booked now: later reservations queue behind this debt
        return Reservation(nbytes, now + wait)

    def refund(self, nbytes: float, now: float) -> None:
        """Return tokens for bytes that were never read (the balance never exceeds the burst)."""
        if nbytes < 0:
            raise ValueError(f"cannot refund {nbytes} bytes; give a byte count >= 0")
        self._advance(now)
        if self._rate is not None:
            self._tokens = min(self._burst, self._tokens + nbytes)

    def set_rate(self, rate: float | None, now: float, burst: float | None = None) -> None:
        """Accrue at ``rate`` from ``now`` on; the balance accrued so far is kept.

        ``burst`` optionally replaces the burst (a positive balance is clipped
        to it; debt is kept). Coming from uncapped, the bucket starts with the
        burst and no debt: uncapped grants booked nothing, so there is no
        history to honour.
        """
        _check_rate(rate)
        if burst is not None and (not burst > 0 or math.isinf(burst)):
            raise ValueError(f"burst must be a finite number of bytes > 0, got {burst}")
        self._advance(now)
        if burst is not None:
            self._burst = float(burst)
        if self._rate is None and rate is not None:
            self._tokens = self._burst
        if self._tokens < 0 and rate and self._debt_rate:
            # Keep the moment the debt clears: debt/old == new_debt/new.
            self._tokens *= rate / self._debt_rate
        self._tokens = min(self._tokens, self._burst)
        self._rate = rate
        if rate:
            self._debt_rate = rate
