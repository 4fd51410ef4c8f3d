"""Seed liveness that does not count the scheduler's own stalls. Pure: no I/O, no clock.

A heartbeat sent while the scheduler's event loop is stalled (a long request,
the GIL held, the host starved of CPU) waits in a socket until the loop runs
again, so "no heartbeat for N seconds" may say more about the scheduler than
about the seed. The event loop ticks a ``LoopWatch`` every ``interval``; a tick
that comes late measures a stall, and a seed's silence is the time since its
last heartbeat minus the stalls since then.

    >>> watch = LoopWatch(interval=0.5, now=0.0)
    >>> heard_at, stalled_then = 0.0, watch.stalled(0.0)
    >>> watch.tick(0.5)
    0.0
    >>> watch.tick(5.0)                            # the loop stalled for 4 s
    4.0
    >>> watch.silence(heard_at, stalled_then, now=5.0)
    1.0
"""

from __future__ import annotations


class LoopWatch:
    """Seconds the event loop was stalled, from ticks it sends every ``interval`` when it runs."""

    def __init__(self, interval: float, now: float) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self.interval = interval
        # One tuple, replaced whole: the reaper reads it from another thread.
        self._state = (now, 0.0)
        """(last tick, stalled seconds before it)."""

    def tick(self, now: float) -> float:
        """The loop ran at ``now``; returns how late this tick was (the stall it ends), >= 0."""
        last, stalled = self._state
        late = max(0.0, now - last - self.interval)
        self._state = (now, stalled + late)
        return late

    def stalled(self, now: float) -> float:
        """Stalled seconds so far, including a stall still going on (no tick for over an interval)."""
        last, stalled = self._state
        return stalled + max(0.0, now - last - self.interval)

    def silence(self, heard_at: float, stalled_then: float, now: float) -> float:
        """Seconds since ``heard_at`` during which the loop could have received a heartbeat.

        ``stalled_then`` is ``stalled(heard_at)``, kept with the heartbeat.
        """
        return max(0.0, now - heard_at - (self.stalled(now) - stalled_then))


class NoWatch(LoopWatch):
    """No ticks (the reaper is driven by hand, e.g. in tests): silence is plain elapsed time."""

    def __init__(self) -> None:
        super().__init__(interval=1.0, now=0.0)

    def tick(self, now: float) -> float:
        return 0.0

    def stalled(self, now: float) -> float:
        return 0.0
