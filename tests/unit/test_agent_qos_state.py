"""AgentState's serving-QoS seam without I/O: transfer activity, applying a tick, run-time switches.

A fake clock and a fresh registry per test; the QoS loop's I/O (fetching
/metrics) is covered by tests/integration/test_agent_qos.py.
"""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from metrics.definitions import AgentMetrics
from rfork_agent.agent import THROTTLE_MODE_LABELS, AgentConfig, AgentState, LeaseRequest
from throttle.controller import Mode
from throttle.qos import QosReport, ThrottleMode

CAP = 100e6


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make_state(**overrides) -> tuple[AgentState, CollectorRegistry, Clock]:
    clock, registry = Clock(), CollectorRegistry()
    config = AgentConfig(**{
        "seed_id": "seed-0", "sglang_url": "http://127.0.0.1:30000", "scheduler_url": "http://127.0.0.1:8700",
        "rate_cap": CAP, "throttle": "adaptive", "slo_itl_seconds": 0.04, **overrides,
    })
    return AgentState(config, AgentMetrics(registry), clock), registry, clock


def sample(registry: CollectorRegistry, name: str, **labels) -> float | None:
    return registry.get_sample_value(name, {"seed": "seed-0", **labels})


def lease(n: int) -> LeaseRequest:
    return LeaseRequest(job_id="j", assignment_id=f"a{n}", rank=0, bytes=2**20)


def test_adaptive_starts_at_the_floor_with_every_qos_series_exported():
    state, registry, _ = make_state(slo_ttft_seconds=2.0)
    assert state.allowed_rate == pytest.approx(0.05 * CAP)
    assert sample(registry, "rfork_agent_allowed_rate_bytes_per_second") == pytest.approx(0.05 * CAP)
    assert sample(registry, "rfork_agent_slo_itl_seconds") == 0.04
    assert sample(registry, "rfork_agent_slo_ttft_seconds") == 2.0
    assert math.isnan(sample(registry, "rfork_agent_observed_itl_p99_seconds"))
    assert {label: sample(registry, "rfork_agent_throttle_mode", mode=label) for label in THROTTLE_MODE_LABELS} == {
        label: (1.0 if label == Mode.HOLD.value else 0.0) for label in THROTTLE_MODE_LABELS}
    for action in ("cut", "raise", "hold", "floor", "cap", "probe"):
        assert sample(registry, "rfork_agent_throttle_decisions_total", action=action) == 0
    for reason in ("unreachable", "http_error", "parse_error"):
        assert sample(registry, "rfork_agent_seed_metrics_scrape_failures_total", reason=reason) == 0


def test_off_mode_keeps_the_cap_and_exports_no_slo():
    state, registry, _ = make_state(throttle="off", slo_itl_seconds=None)
    assert state.allowed_rate == CAP
    assert math.isnan(sample(registry, "rfork_agent_slo_itl_seconds"))
    assert sample(registry, "rfork_agent_throttle_mode", mode="off") == 1


def test_transfer_activity_counts_grants_and_leases_held_across_a_tick():
    state, _, clock = make_state()
    assert state.take_transfer_activity() is False  # nothing granted yet
    granted = state.grant(lease(1), asked_at=0.0, now=0.0)
    assert state.take_transfer_activity() is True  # granted this interval (and still held)
    clock.t = 1.0
    assert state.take_transfer_activity() is True  # held across the tick: bytes may still be moving
    state.release(granted.lease_id, used=True, now=1.5)
    assert state.take_transfer_activity() is True  # it was held at the previous tick
    assert state.take_transfer_activity() is False  # a whole interval with no lease at all


def report(rate, action="hold", mode=Mode.HOLD, **fields) -> QosReport:
    return QosReport(ThrottleMode.ADAPTIVE, rate, mode, action, "test", **fields)


def test_apply_qos_sets_the_rate_exports_the_report_and_flags_notable_changes():
    state, registry, _ = make_state()
    assert state.apply_qos(report(0.05 * CAP), now=1.0) is False  # unchanged
    assert state.apply_qos(report(0.07 * CAP, "raise", Mode.RECOVER), now=2.0) is True  # +40 %: tell the scheduler
    assert state.apply_qos(report(0.08 * CAP, "raise", Mode.RECOVER), now=3.0) is False  # +14 %: next heartbeat
    assert state.apply_qos(report(0.0, "probe", Mode.PROBE_PAUSE), now=4.0) is True  # a pause always is
    assert state.allowed_rate == 0.0
    assert state.apply_qos(report(2 * CAP, "cap", Mode.IDLE_FULL, observed_itl_p99_seconds=0.03,
                                  itl_slo_violation_ratio=0.002, metrics_age_seconds=0.5), now=5.0) is True
    assert state.allowed_rate == CAP  # never above the cap
    assert sample(registry, "rfork_agent_observed_itl_p99_seconds") == 0.03
    assert sample(registry, "rfork_agent_itl_slo_violation_ratio") == 0.002
    assert sample(registry, "rfork_agent_seed_metrics_age_seconds") == 0.5
    assert sample(registry, "rfork_agent_throttle_decisions_total", action="raise") == 2
    assert sample(registry, "rfork_agent_throttle_mode", mode="idle_full") == 1
    assert sample(registry, "rfork_agent_throttle_mode", mode="probe_pause") == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": ThrottleMode.FIXED, "rate": 2 * CAP}, "above this agent's cap"),
    ({"mode": ThrottleMode.ADAPTIVE, "rate": 1e6}, "fixed mode only"),
])
def test_set_throttle_refuses_what_the_config_cannot_do(kwargs, message):
    state, _, _ = make_state()
    with pytest.raises(ValueError, match=message):
        state.set_throttle(now=0.0, **kwargs)
    assert state.qos.throttle is ThrottleMode.ADAPTIVE  # nothing changed


def test_set_throttle_switches_modes_and_the_slo():
    state, registry, _ = make_state(throttle="off", slo_itl_seconds=None)
    with pytest.raises(ValueError, match="SLO"):
        state.set_throttle(ThrottleMode.ADAPTIVE, None, now=0.0)
    state.set_throttle(ThrottleMode.FIXED, 30e6, now=0.0)
    assert state.allowed_rate == 30e6 and sample(registry, "rfork_agent_throttle_mode", mode="fixed") == 1
    state.set_throttle(ThrottleMode.ADAPTIVE, None, now=1.0, slo_itl_seconds=0.06)
    assert state.allowed_rate == pytest.approx(0.05 * CAP)
    assert sample(registry, "rfork_agent_slo_itl_seconds") == 0.06
    state.set_throttle(ThrottleMode.OFF, None, now=2.0)
    assert state.allowed_rate == CAP and sample(registry, "rfork_agent_throttle_mode", mode="off") == 1
