"""Fault injection for the testbed: a transport whose reads fail now and then.

Wraps a real transport (the Mooncake one in `rfork chaos`): a chosen fraction
of submitted reads is reported FAILED without touching memory, the way TE
reports a read that hit a transient network error. Seeded, so a chaos run is
repeatable.

    >>> flaky = FlakyTransport(MooncakeTransport(protocol="tcp"), failure_rate=0.05, seed=7)
"""

from __future__ import annotations

import itertools
import random
import threading
from typing import Sequence

from rfork_agent.transport import ReadStatus, Transport

_FAILED_BASE = 1 << 62
"""Handles of injected failures live far above any real TE batch id."""


class FlakyTransport:
    """A Transport whose ``submit_read`` fails ``failure_rate`` of reads (seeded)."""

    def __init__(self, inner: Transport, failure_rate: float, seed: int = 0) -> None:
        if not 0 <= failure_rate < 1:
            raise ValueError(f"failure_rate must be in [0, 1), got {failure_rate}")
        self.inner = inner
        self.failure_rate = failure_rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._failed_ids = itertools.count(_FAILED_BASE)
        self.injected = 0
        self.submitted = 0

    @property
    def session_id(self) -> str:
        return self.inner.session_id

    @property
    def max_segments_per_batch(self) -> int:
        return self.inner.max_segments_per_batch

    @property
    def threads(self):
        return self.inner.threads  # the inner transport's calls block, or not, just the same here

    def register(self, ptr: int, length: int) -> None:
        self.inner.register(ptr, length)

    def unregister(self, ptr: int) -> None:
        self.inner.unregister(ptr)

    def submit_read(self, session_id: str, dst_ptrs: Sequence[int], src_ptrs: Sequence[int],
                    lengths: Sequence[int]) -> int:
        with self._lock:
            self.submitted += 1
            fail = self._rng.random() < self.failure_rate
            if fail:
                self.injected += 1
                return next(self._failed_ids)
        return self.inner.submit_read(session_id, dst_ptrs, src_ptrs, lengths)

    def poll(self, handle: int) -> ReadStatus:
        if handle >= _FAILED_BASE:
            return ReadStatus.FAILED
        return self.inner.poll(handle)

    def read_sync(self, session_id: str, dst_ptrs: Sequence[int], src_ptrs: Sequence[int],
                  lengths: Sequence[int]) -> int:
        return self.inner.read_sync(session_id, dst_ptrs, src_ptrs, lengths)
