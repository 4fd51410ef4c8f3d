"""Seed silence that does not count the scheduler's own stalls: a fake clock, no I/O."""

from __future__ import annotations

import pytest

from scheduler.liveness import LoopWatch, NoWatch


@pytest.mark.parametrize("ticks, heard_at, now, silence", [
    # The loop ticks on time: silence is the plain time since the heartbeat.
    ([0.1, 0.2, 0.3, 0.4, 0.5], 0.0, 0.5, 0.5),
    # A 4 s stall (one tick 4 s late) after the heartbeat is not silence.
    ([0.1, 4.2, 4.3], 0.0, 4.3, 0.3),
    # A stall still going on (no tick due since 0.2) is not silence either.
    ([0.1], 0.0, 6.0, 0.2),
    # A stall before the heartbeat (tick at 3.0 is 2.9 s late) changes nothing after it.
    ([round(3.0 + 0.1 * i, 6) for i in range(31)], 3.0, 6.0, 3.0),
    # A tick 10 ms late credits just those 10 ms.
    ([0.1, 0.21, 0.31, 0.41], 0.0, 0.41, 0.40),
])
def test_silence_excludes_stalls_of_the_loop(ticks, heard_at, now, silence):
    watch = LoopWatch(interval=0.1, now=0.0)
    stalled_then = None
    for t in ticks:
        if stalled_then is None and t > heard_at:
            stalled_then = watch.stalled(heard_at)
        watch.tick(t)
    if stalled_then is None:
        stalled_then = watch.stalled(heard_at)
    assert watch.silence(heard_at, stalled_then, now) == pytest.approx(silence)


def test_a_late_tick_reports_the_stall_it_ends():
    watch = LoopWatch(interval=0.1, now=0.0)
    assert watch.tick(0.1) == 0.0
    assert watch.tick(2.7) == pytest.approx(2.5)
    assert watch.stalled(2.7) == pytest.approx(2.5)


def test_without_ticks_silence_is_elapsed_time():
    watch = NoWatch()
    assert watch.silence(10.0, watch.stalled(10.0), 17.5) == 7.5


def test_the_interval_must_be_positive():
    with pytest.raises(ValueError, match="interval must be > 0"):
        LoopWatch(interval=0, now=0.0)
