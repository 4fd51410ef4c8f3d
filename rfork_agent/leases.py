"""Leases an agent has granted: pure bookkeeping, clock passed in.

A lease is permission to read N bytes from the seed now. Releasing with
``used=False`` returns its tokens (the read never happened). A lease that
expires unreleased frees its in-flight slot but does NOT return tokens: the
client may have read the bytes before it vanished, and refunding would let the
seed exceed its cap.

    >>> book = LeaseBook(ttl_seconds=30)
    >>> lease = book.grant("job", "a1", 0, 1024, now=0.0)
    >>> book.release(lease.lease_id, now=1.0).nbytes
    1024
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass


class UnknownLease(KeyError):
    """Released twice, expired, or never granted."""


@dataclass(frozen=True)
class Lease:
    lease_id: str
    job_id: str
    assignment_id: str
    rank: int
    nbytes: int
    granted_at: float
    expires_at: float


class LeaseBook:
    def __init__(self, ttl_seconds: float) -> None:
        if not ttl_seconds > 0:
            raise ValueError(f"lease ttl must be > 0 s, got {ttl_seconds}")
        self.ttl_seconds = ttl_seconds
        self._leases: dict[str, Lease] = {}
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(4)  # ids from a restarted agent never collide

    def grant(self, job_id: str, assignment_id: str, rank: int, nbytes: int, now: float) -> Lease:
        lease = Lease(f"{self._prefix}-{next(self._ids)}", job_id, assignment_id, rank, nbytes, now,
                      now + self.ttl_seconds)
        self._leases[lease.lease_id] = lease
        return lease

    def release(self, lease_id: str, now: float) -> Lease:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            raise UnknownLease(f"lease {lease_id!r} is not held (already released, expired, or never granted)")
        return lease

    def expire(self, now: float) -> list[Lease]:
        gone = [l for l in self._leases.values() if l.expires_at <= now]
        for lease in gone:
            del self._leases[lease.lease_id]
        return gone

    def in_flight(self) -> int:
        return len(self._leases)

    def in_flight_bytes(self) -> int:
        return sum(l.nbytes for l in self._leases.values())
