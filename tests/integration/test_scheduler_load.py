"""The scheduler under large, legal job requests: a real scheduler process, real HTTP.

Many forks of a MoE model starting at once is the normal fleet case: each job
request carries a manifest of hundreds of thousands of tensors. Creating them
must not hold up heartbeats (issue 12, item 4).
"""

from __future__ import annotations

import pytest

from bench.scheduler_load import SchedulerProcess, measure

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_heartbeats_keep_flowing_while_large_jobs_are_created(tmp_path):
    # A tight heartbeat timeout (1 s, heartbeats every 0.2 s): a scheduler that stops hearing
    # heartbeats while it parses and plans drops the seeds, and the later job requests get 404.
    with SchedulerProcess(str(tmp_path / "scheduler.log"), heartbeat_timeout=1.0) as scheduler:
        result = measure(scheduler.url, jobs=4, tensors=260_000, heartbeat_interval=0.2)
    summary = result.summary()
    print(summary)
    assert result.job_status == [201] * 4, summary
    assert result.heartbeat_failures == [], summary
    assert result.seeds_dropped == 0 and result.seeds_registered_after == 2, summary
    # Heartbeats are answered while jobs are created, not queued behind them.
    assert result.heartbeat_max_seconds < max(result.job_seconds) / 4, summary
