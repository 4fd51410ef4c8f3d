"""The scheduler's gauges that are counts of its state, read when Prometheus scrapes.

Seeds registered, jobs running and peers serving already live in
``SchedulerState``; counting them at scrape time (prometheus_client's
Collector pattern) means no state change has to remember to push a gauge.
Names, labels and help are ``SchedulerMetrics``' (metrics/definitions.py).

    >>> registry.get_sample_value("rfork_scheduler_jobs_active")
    0.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client.metrics_core import Metric

if TYPE_CHECKING:
    from scheduler.service import SchedulerState


class SchedulerStateCollector:
    def __init__(self, state: "SchedulerState") -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state, m = self.state, self.state.metrics
        # Under the lock every reader and writer of these dicts takes.
        with state.lock:
            seeds, jobs, peers = len(state.seeds), state._active_jobs(), state.swarm.peers_serving()
        yield m.seeds_registered.family([((), seeds)])
        yield m.jobs_active.family([((), jobs)])
        yield m.peers_serving.family([((), peers)])
