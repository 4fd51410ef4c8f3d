"""A FIFO token bucket in virtual time: pure, clock passed in.

Reservations are served in arrival order. A reservation of N bytes starts when
the bucket has accrued N bytes after every earlier reservation ("pay first"),
so over any window the bytes granted are at most rate x window + burst. A
reservation larger than the burst is still served: it waits for its full
size to accrue (the balance is booked negative at once, so the cap can never
stop it from accruing), and later reservations queue behind it.

    >>> b = TokenBucket(rate=100.0, burst=50.0, now=0.0)
    >>> b.reserve(50, now=0.0, max_wait=10).start_at
    0.0
    >>> b.reserve(100, now=0.0, max_wait=10).start_at
    1.0
    >>> b.reserve(10, now=0.0, max_wait=0.5) is None
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Reservation:
    nbytes: float
    start_at: float


class TokenBucket:
    def __init__(self, rate: float | None, burst: float, now: float) -> None:
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be > 0 bytes/s or None (uncapped), got {rate}")
        if not burst > 0:
            raise ValueError(f"burst must be > 0 bytes, got {burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = burst  # start full: an idle seed may serve one burst at once
        self._at = now

    def _advance(self, now: float) -> None:
        if now > self._at:
            if self.rate is not None:
                self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now

    def available(self, now: float) -> float:
        """Tokens now (negative = debt from reservations still waiting)."""
        self._advance(now)
        return math.inf if self.rate is None else self._tokens

    def reserve(self, nbytes: float, now: float, max_wait: float) -> Reservation | None:
        """Book ``nbytes``; None (nothing consumed) if it could not start within ``max_wait``."""
        if nbytes < 0:
            raise ValueError(f"cannot reserve a negative byte count ({nbytes})")
        self._advance(now)
        if self.rate is None:
            return Reservation(nbytes, now)
        # Pay first: this reservation starts once the balance covers it.
        # (Balance already net of earlier reservations, so this is FIFO.)
        wait = max(0.0, (nbytes - self._tokens) / self.rate)
        if wait > max_wait:
            return None
        self._tokens -= nbytes
        return Reservation(nbytes, now + wait)

    def refund(self, nbytes: float, now: float) -> None:
        """Return tokens for bytes that were never read (never above the burst)."""
        self._advance(now)
        if self.rate is not None:
            self._tokens = min(self.burst, self._tokens + nbytes)

    def set_rate(self, rate: float | None, now: float, burst: float | None = None) -> None:
        """Change the rate from now on; tokens accrued so far are kept (the QoS controller's seam)."""
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be > 0 bytes/s or None (uncapped), got {rate}")
        self._advance(now)
        if self.rate is None and rate is not None:
            self._tokens = burst or self.burst  # from uncapped: start with one burst, no debt
        self.rate = rate
        if burst is not None:
            self.burst = burst
            self._tokens = min(self._tokens, burst)
