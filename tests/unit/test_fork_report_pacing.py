"""rfork fork's stream report interval: its own, or the scheduler's paced one when that is longer."""

from __future__ import annotations

import pytest

from rfork_agent.fork import ForkClient, ForkOptions
from rfork_api import models as m


def reply(paced: float, chunks_waiting: int = 1) -> m.WorkReply:
    progress = m.Progress(bytes_done=0, bytes_total=1, chunks_done=0, chunks_total=1, retried_chunks=0)
    return m.WorkReply(state=m.JobState.RUNNING, progress=progress, stream_report_seconds=paced,
                       chunks_waiting=chunks_waiting)


@pytest.mark.parametrize("own, paced, interval", [
    (1.0, 0.0, 1.0),    # no pacing: its own second
    (1.0, 0.4, 1.0),    # a small scale-out: the scheduler asks for less than the client's own
    (1.0, 4.0, 4.0),    # 1,024 members at 256 reports a second: every 4 s
    (5.0, 4.0, 5.0),    # a client configured to report less often keeps its own
])
def test_the_longer_of_its_own_and_the_schedulers_interval(own: float, paced: float, interval: float) -> None:
    client = ForkClient("http://scheduler", transport=None, options=ForkOptions(stream_report_seconds=own))
    assert client._report_seconds(reply(paced)) == interval
    assert client._report_seconds(None) == own  # before the first reply
    # With chunks waiting for a source, its long poll lasts no longer than a report interval.
    assert client._long_poll_seconds({"s": object()}, reply(paced)) == min(ForkOptions().long_poll_seconds, interval)
