"""The scheduler's gauges, read from its state when Prometheus scrapes.

Seeds registered, jobs running, peers serving, each seed's allowed rate and
assignments in flight, and each running job's size, progress and last
progress time already live in ``SchedulerState``; reading them at scrape time
(prometheus_client's Collector pattern) means no state change has to remember
to push or remove a series: a removed seed's and an ended job's series are
simply not there at the next scrape, so ``job_id`` stays bounded by running
jobs. Names, labels and help are ``SchedulerMetrics``' (metrics/definitions.py).

    >>> registry.get_sample_value("rfork_scheduler_jobs_active")
    0.0
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator

from prometheus_client.metrics_core import Metric

from scheduler.planner import RUNNING

if TYPE_CHECKING:
    from scheduler.service import SchedulerState


class SchedulerStateCollector:
    def __init__(self, state: "SchedulerState") -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state, m = self.state, self.state.metrics
        # Under the lock every reader and writer of these dicts takes. The in-flight count scans
        # every job's chunks: once a scrape, not once a /work call.
        with state.lock:
            seeds = {seed_id: seed.allowed_rate for seed_id, seed in state.seeds.items()}
            live = state.live_by_seed()
            running = [(job_id, r.job.bytes_total, r.job.bytes_reported, r.last_progress_wall)
                       for job_id, r in state.jobs.items() if r.job.state == RUNNING]
            jobs, peers = len(running), state.swarm.peers_serving()
            streaming, report_interval = state.stream_pacing()
        yield m.seeds_registered.family([((), len(seeds))])
        yield m.jobs_active.family([((), jobs)])
        yield m.peers_serving.family([((), peers)])
        yield m.streaming_members.family([((), streaming)])
        yield m.stream_report_interval_seconds.family([((), report_interval)])
        yield m.seed_allowed_rate.family(
            ((seed_id,), math.nan if rate is None else rate) for seed_id, rate in seeds.items())
        yield m.assignments_in_flight.family(((seed_id,), live.get(seed_id, 0)) for seed_id in seeds)
        yield m.job_bytes_total.family(((job_id,), total) for job_id, total, _, _ in running)
        yield m.job_bytes_done.family(((job_id,), done) for job_id, _, done, _ in running)
        yield m.job_progress_ratio.family(
            ((job_id,), done / total if total else 1.0) for job_id, total, done, _ in running)
        yield m.job_last_progress_timestamp.family(((job_id,), wall) for job_id, _, _, wall in running)
