"""Gauges whose value lives in a component's state are read from that state when Prometheus scrapes.

Each test changes the state directly, behind the back of every method that
used to push a gauge, and reads the registry: the scrape sees the state as it is.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from metrics.definitions import AgentMetrics, SchedulerMetrics, catalog
from rfork_agent.agent import AgentConfig, AgentState, Phase
from scheduler.service import JobRecord, SchedulerConfig, SchedulerState

SEED = {"seed": "seed-0"}


def _agent() -> tuple[AgentState, CollectorRegistry]:
    registry = CollectorRegistry()
    config = AgentConfig(seed_id="seed-0", sglang_url="http://127.0.0.1:30000", scheduler_url="http://127.0.0.1:8700",
                         rate_cap=100e6)
    return AgentState(config, AgentMetrics(registry), clock=lambda: 0.0), registry


def test_the_agent_exports_its_phase_leases_and_rate_as_they_are():
    state, registry = _agent()
    assert registry.get_sample_value("rfork_agent_registered", SEED) == 0.0
    state.phase = Phase.REGISTERED
    assert registry.get_sample_value("rfork_agent_registered", SEED) == 1.0
    state.leases.grant("j", "a", 0, 1000, now=0.0)
    assert registry.get_sample_value("rfork_agent_leases_in_flight", SEED) == 1.0
    state.bucket.set_rate(5e6, 0.0)
    assert registry.get_sample_value("rfork_agent_allowed_rate_bytes_per_second", SEED) == 5e6
    state.throttle_mode_label = "fixed"
    assert registry.get_sample_value("rfork_agent_throttle_mode", {**SEED, "mode": "fixed"}) == 1.0
    assert registry.get_sample_value("rfork_agent_throttle_mode", {**SEED, "mode": "off"}) == 0.0


def test_the_scheduler_exports_its_seed_job_and_peer_counts_as_they_are():
    registry = CollectorRegistry()
    state = SchedulerState(SchedulerConfig(), SchedulerMetrics(registry), clock=lambda: 0.0)
    assert registry.get_sample_value("rfork_scheduler_seeds_registered") == 0.0
    state.seeds["seed-0"] = SimpleNamespace(allowed_rate=None)  # type: ignore[assignment]  # only read
    assert registry.get_sample_value("rfork_scheduler_seeds_registered") == 1.0
    assert registry.get_sample_value("rfork_scheduler_jobs_active") == 0.0
    assert registry.get_sample_value("rfork_scheduler_peers_serving") == 0.0


def test_the_scheduler_exports_each_seed_and_each_running_job_as_they_are_and_forgets_them_when_gone():
    registry = CollectorRegistry()
    state = SchedulerState(SchedulerConfig(), SchedulerMetrics(registry), clock=lambda: 0.0)
    seed = SimpleNamespace(allowed_rate=None)
    state.seeds["seed-0"] = seed  # type: ignore[assignment]
    job = SimpleNamespace(state="running", bytes_total=400, bytes_reported=100, live_by_seed=lambda: {"seed-0": 3})
    state.jobs["j1"] = JobRecord(job, None, 0, last_poll=0.0, last_progress_wall=1700000000.0)  # type: ignore[arg-type]
    rate = registry.get_sample_value("rfork_scheduler_seed_allowed_rate_bytes_per_second", {"seed": "seed-0"})
    assert math.isnan(rate)  # uncapped
    seed.allowed_rate = 5e7
    assert registry.get_sample_value("rfork_scheduler_seed_allowed_rate_bytes_per_second", {"seed": "seed-0"}) == 5e7
    assert registry.get_sample_value("rfork_scheduler_assignments_in_flight", {"seed": "seed-0"}) == 3
    job_labels = {"job_id": "j1"}
    assert registry.get_sample_value("rfork_scheduler_jobs_active") == 1.0
    assert registry.get_sample_value("rfork_scheduler_job_size_bytes", job_labels) == 400
    assert registry.get_sample_value("rfork_scheduler_job_landed_bytes", job_labels) == 100
    assert registry.get_sample_value("rfork_scheduler_job_progress_ratio", job_labels) == 0.25
    assert registry.get_sample_value("rfork_scheduler_job_last_progress_timestamp_seconds", job_labels) == 1.7e9
    job.state = "done"  # an ended job's series are gone: job_id stays bounded by running jobs
    del state.seeds["seed-0"]
    for name in ("rfork_scheduler_job_size_bytes", "rfork_scheduler_job_landed_bytes",
                 "rfork_scheduler_job_progress_ratio", "rfork_scheduler_job_last_progress_timestamp_seconds"):
        assert registry.get_sample_value(name, job_labels) is None
    assert registry.get_sample_value("rfork_scheduler_seed_allowed_rate_bytes_per_second", {"seed": "seed-0"}) is None
    assert registry.get_sample_value("rfork_scheduler_assignments_in_flight", {"seed": "seed-0"}) is None


def test_every_state_gauge_is_in_the_catalog_as_a_gauge():
    families = {f.name: f for f in catalog()}
    for name in ("rfork_agent_registered", "rfork_agent_leases_in_flight", "rfork_agent_throttle_mode",
                 "rfork_scheduler_seeds_registered", "rfork_scheduler_jobs_active", "rfork_scheduler_peers_serving",
                 "rfork_scheduler_seed_allowed_rate_bytes_per_second", "rfork_scheduler_assignments_in_flight",
                 "rfork_scheduler_job_progress_ratio", "rfork_scheduler_job_last_progress_timestamp_seconds"):
        assert families[name].type == "gauge"
    assert families["rfork_agent_throttle_mode"].labels == ("seed", "mode")
