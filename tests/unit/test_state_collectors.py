"""Gauges whose value lives in a component's state are read from that state when Prometheus scrapes.

Each test changes the state directly, behind the back of every method that
used to push a gauge, and reads the registry: the scrape sees the state as it is.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from metrics.definitions import AgentMetrics, SchedulerMetrics, catalog
from rfork_agent.agent import AgentConfig, AgentState, Phase
from scheduler.service import SchedulerConfig, SchedulerState

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
    state.seeds["seed-0"] = None  # type: ignore[assignment]  # only counted
    assert registry.get_sample_value("rfork_scheduler_seeds_registered") == 1.0
    assert registry.get_sample_value("rfork_scheduler_jobs_active") == 0.0
    assert registry.get_sample_value("rfork_scheduler_peers_serving") == 0.0


def test_every_state_gauge_is_in_the_catalog_as_a_gauge():
    families = {f.name: f for f in catalog()}
    for name in ("rfork_agent_registered", "rfork_agent_leases_in_flight", "rfork_agent_throttle_mode",
                 "rfork_scheduler_seeds_registered", "rfork_scheduler_jobs_active", "rfork_scheduler_peers_serving"):
        assert families[name].type == "gauge"
    assert families["rfork_agent_throttle_mode"].labels == ("seed", "mode")
