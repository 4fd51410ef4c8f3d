"""Leases an agent has granted: pure bookkeeping, the clock is passed in.

A lease is permission to read N bytes from the seed now. The book decides what
happens to the tokens; the agent applies the decision to its token bucket:

- ``release(id, now, used=True)``: the read happened; the tokens stay spent.
- ``release(id, now, used=False)``: the read never happened; ``refund_bytes``
  says how many tokens to give back.
- ``expire(now)``: leases past their ttl free their in-flight slot, but their
  tokens are NOT refunded. The client may well have read the bytes before it
  crashed or lost the agent; refunding would let the seed exceed its cap.
- Releasing an unknown, already released or expired lease raises
  ``UnknownLease`` (``LeaseExpired`` when we know it timed out); the API maps
  both to 404 so a replayed release can never refund twice.

    >>> book = LeaseBook(ttl_seconds=30)
    >>> lease = book.grant("job-1", "a1", rank=0, nbytes=1024, now=0.0)
    >>> book.in_flight()
    1
    >>> book.release(lease.lease_id, now=1.0, used=False).refund_bytes
    1024
    >>> book.in_flight()
    0
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass


class UnknownLease(KeyError):
    """The lease is not held: released already, expired, or never granted here."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError's str() would quote the message
        return self.message


class LeaseExpired(UnknownLease):
    """The lease outlived its ttl before it was released; its tokens stay spent."""

    def __init__(self, message: str, lease: "Lease") -> None:
        super().__init__(message)
        self.lease = lease


@dataclass(frozen=True)
class Lease:
    """Permission to read ``nbytes`` of ``rank`` for one assignment, until ``expires_at``."""

    lease_id: str
    job_id: str
    assignment_id: str
    rank: int
    nbytes: int
    granted_at: float
    expires_at: float


@dataclass(frozen=True)
class Released:
    """Outcome of a release: the lease and how many tokens go back to the bucket."""

    lease: Lease
    used: bool

    @property
    def nbytes(self) -> int:
        return self.lease.nbytes

    @property
    def refund_bytes(self) -> int:
        return 0 if self.used else self.lease.nbytes


class LeaseBook:
    """Leases in flight, keyed by lease id. See the module docstring for the rules."""

    def __init__(self, ttl_seconds: float) -> None:
        if not ttl_seconds > 0:
            raise ValueError(f"lease ttl must be > 0 seconds, got {ttl_seconds}")
        self.ttl_seconds = ttl_seconds
        self._leases: dict[str, Lease] = {}
        self._ids = itertools.count(1)
        # A random prefix per book, so a release meant for a previous agent
        # process (same port, restarted) can never match a lease of this one.
        self._prefix = secrets.token_hex(4)

    def grant(self, job_id: str, assignment_id: str, rank: int, nbytes: int, now: float) -> Lease:
        if nbytes <= 0:
            raise ValueError(f"a lease covers > 0 bytes, got {nbytes}")
        lease = Lease(
            lease_id=f"{self._prefix}-{next(self._ids)}",
            job_id=job_id,
            assignment_id=assignment_id,
            rank=rank,
            nbytes=nbytes,
            granted_at=now,
            expires_at=now + self.ttl_seconds,
        )
        self._leases[lease.lease_id] = lease
        return lease

    def release(self, lease_id: str, now: float, used: bool = True) -> Released:
        """End a lease. Raises UnknownLease (LeaseExpired if it outlived its ttl)."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            raise UnknownLease(
                f"lease {lease_id!r} is not held by this agent: it was already released, "
                f"expired after {self.ttl_seconds:g} s, or was granted by another agent process"
            )
        if lease.expires_at <= now:
            # Same rule as expire(): late is late, even if no sweep ran yet.
            raise LeaseExpired(
                f"lease {lease_id!r} expired {now - lease.expires_at:.1f} s before it was released "
                f"(ttl {self.ttl_seconds:g} s); its bytes stay counted as read",
                lease,
            )
        return Released(lease, used)

    def expire(self, now: float) -> list[Lease]:
        """Drop leases whose ttl has passed; returns them (their tokens are not refunded)."""
        gone = [lease for lease in self._leases.values() if lease.expires_at <= now]
        for lease in gone:
            del self._leases[lease.lease_id]
        return gone

    def get(self, lease_id: str) -> Lease | None:
        return self._leases.get(lease_id)

    def in_flight(self) -> int:
        return len(self._leases)

    def in_flight_bytes(self) -> int:
        return sum(lease.nbytes for lease in self._leases.values())
