"""AgentState's serving-QoS seam without I/O: transfer activity, applying a tick, run-time switches.

A fake clock and a fresh registry per test; the QoS loop's I/O (fetching
/metrics) is covered by tests/integration/test_agent_qos.py.
"""

from __future__ import annotations

import logging
import math

import pytest
from prometheus_client import CollectorRegistry

from metrics.definitions import AgentMetrics
from rfork_agent.agent import THROTTLE_MODE_LABELS, AgentConfig, AgentState, Denied, LeaseRequest
from throttle.controller import Mode
from throttle.histogram import CumulativeHistogram
from throttle.prom_text import ITL_HISTOGRAM, QUEUED_GAUGE, RUNNING_GAUGE, Scrape
from throttle.qos import QosReport, ThrottleMode
from throttle.token_bucket import Reservation

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
        for reason in ("seed_idle", "transfer_latency", "seed_over_slo", "metrics_stale"):
            assert sample(registry, "rfork_agent_throttle_decisions_total", action=action, reason=reason) == 0
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


def test_each_interval_tells_the_bytes_granted_in_it():
    state, _, clock = make_state()
    assert state.take_interval_transfer() == (False, 0)
    first = state.grant(lease(1), asked_at=0.0, now=0.0)
    second = state.grant(lease(2), asked_at=0.0, now=0.0)
    assert state.take_interval_transfer() == (True, 2 * 2**20)  # two leases of lease(n)'s 1 MiB
    clock.t = 1.0
    state.release(first.lease_id, used=True, now=1.0)
    assert state.take_interval_transfer() == (True, 0)  # one lease still held: on, nothing new granted
    state.release(second.lease_id, used=True, now=1.5)
    assert state.take_interval_transfer() == (True, 0)  # it was held at the previous tick
    assert state.take_interval_transfer() == (False, 0)


def report(rate, action="hold", mode=Mode.HOLD, **fields) -> QosReport:
    return QosReport(ThrottleMode.ADAPTIVE, rate, mode, action, "test", **{"throttle_reason": "transfer_latency",
                                                                          **fields})


def test_apply_qos_sets_the_rate_exports_the_report_and_flags_notable_changes():
    state, registry, _ = make_state()
    assert state.apply_qos(report(0.05 * CAP), now=1.0) is False  # unchanged
    assert state.apply_qos(report(0.07 * CAP, "raise", Mode.RECOVER), now=2.0) is True  # +40 %: tell the scheduler
    assert state.apply_qos(report(0.08 * CAP, "raise", Mode.RECOVER), now=3.0) is False  # +14 %: next heartbeat
    assert state.apply_qos(report(0.0, "probe", Mode.PROBE_PAUSE), now=4.0) is True  # a pause always is
    assert state.allowed_rate == 0.0
    assert state.apply_qos(report(2 * CAP, "cap", Mode.IDLE_FULL, observed_itl_p99_seconds=0.03,
                                  itl_slo_violation_ratio=0.002, metrics_age_seconds=0.5,
                                  baseline_itl_slo_violation_ratio=0.0015), now=5.0) is True
    assert state.allowed_rate == CAP  # never above the cap
    assert sample(registry, "rfork_agent_observed_itl_p99_seconds") == 0.03
    assert sample(registry, "rfork_agent_itl_slo_violation_ratio") == 0.002
    assert sample(registry, "rfork_agent_seed_alone_itl_slo_violation_ratio") == 0.0015
    assert sample(registry, "rfork_agent_seed_metrics_age_seconds") == 0.5
    assert sample(registry, "rfork_agent_throttle_decisions_total", action="raise", reason="transfer_latency") == 2
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


def test_the_throttle_reply_names_a_switched_mode_before_the_next_tick():
    # A client that switches the mode and reads it back (the QoS bench's watch) must see the mode it set, as
    # the throttle_mode gauge does, not the last tick's: under load the next tick can be seconds away.
    state, _, _ = make_state(throttle="off")
    assert state.throttle_reply().controller_mode == "off"
    state.set_throttle(ThrottleMode.FIXED, 0.0, now=1.0)
    reply = state.throttle_reply()
    assert (reply.mode.value, reply.controller_mode, reply.allowed_rate_bytes_per_second) == ("fixed", "fixed", 0.0)
    state.set_throttle(ThrottleMode.ADAPTIVE, None, now=2.0)
    assert state.throttle_reply().controller_mode == Mode.HOLD.value   # where the law starts


def test_set_throttle_retunes_the_law_over_the_start_config_and_starts_it_afresh():
    from throttle.controller import InvalidTuning

    state, _, _ = make_state()
    start = state.qos.controller
    state.set_throttle(ThrottleMode.ADAPTIVE, None, now=1.0, throttle_tuning="ab_pool_own_share=true, plan_seconds=20")
    assert state.qos.controller.ab_pool_own_share and state.qos.controller.plan_seconds == 20
    assert state.qos.controller.cap == start.cap and state.qos.state is not None
    assert state.throttle_reply().throttle_tuning == "ab_pool_own_share=true, plan_seconds=20"
    # A bad tuning changes nothing: not the law, not the mode, not what is reported.
    for bad in ("ab_pool_own_share=maybe", "speed=9", "plan_seconds=-1"):
        with pytest.raises(InvalidTuning):
            state.set_throttle(ThrottleMode.FIXED, 1e6, now=2.0, throttle_tuning=bad)
    assert state.qos.throttle is ThrottleMode.ADAPTIVE and state.qos.controller.ab_pool_own_share
    # "" is the start config again; leaving the field out keeps the tuning in force.
    state.set_throttle(ThrottleMode.ADAPTIVE, None, now=3.0, throttle_tuning="")
    assert state.qos.controller == start and state.throttle_reply().throttle_tuning == ""
    state.set_throttle(ThrottleMode.FIXED, 1e6, now=4.0)
    assert state.qos.controller == start


def test_a_new_tuning_restarts_an_adaptive_law_and_the_same_one_does_not():
    state, _, _ = make_state()
    state.set_throttle(ThrottleMode.ADAPTIVE, None, now=1.0, throttle_tuning="plan_seconds=20")
    law = state.qos.state
    state.set_throttle(ThrottleMode.ADAPTIVE, None, now=2.0, throttle_tuning="plan_seconds=20")
    assert state.qos.state is law
    state.set_throttle(ThrottleMode.ADAPTIVE, None, now=3.0, throttle_tuning="plan_seconds=25")
    assert state.qos.state is not law and state.qos.state.rate_bytes_per_second == pytest.approx(0.05 * CAP)


def test_a_tuning_needs_a_law_to_tune():
    state, _, _ = make_state(throttle="off", rate_cap=None, slo_itl_seconds=None)
    with pytest.raises(ValueError, match="needs a link cap"):
        state.set_throttle(ThrottleMode.OFF, None, now=0.0, throttle_tuning="plan_seconds=20")


# --------------------------------------------------------------------------- a seed over its SLO on its own

ITL_BOUNDS = (0.02, 0.04, math.inf)


class OwnLatencySeed:
    """Cumulative SGLang ITL counters: each second ``tokens`` tokens, ``slow_share`` of them over 40 ms."""

    def __init__(self) -> None:
        self.fast = self.slow = 0.0

    def scrape(self, t: float, tokens: int, slow_share: float) -> Scrape:
        self.slow += round(tokens * slow_share)
        self.fast += tokens - round(tokens * slow_share)
        counts = (self.fast, self.fast, self.fast + self.slow)
        return Scrape(t, {ITL_HISTOGRAM: CumulativeHistogram(ITL_BOUNDS, counts)}, {RUNNING_GAUGE: 8.0, QUEUED_GAUGE: 0.0})


def qos_seconds(state: AgentState, clock: Clock, seed: OwnLatencySeed, seconds: int, slow_share: float,
                active: bool) -> list[QosReport]:
    """What the agent's QoS job does each second (rfork_agent.qos_loop.QosLoop.tick), minus the HTTP fetch."""
    reports = []
    for _ in range(seconds):
        clock.t += 1.0
        report = state.qos.tick(clock.t, seed.scrape(clock.t, 500, slow_share), transfer_active=active)
        state.apply_qos(report, clock.t)
        reports.append(report)
    return reports


def test_a_seed_missing_its_slo_on_its_own_is_said_once_at_info_and_counted_by_reason(caplog):
    # The README's --slo-itl 0.04 on a seed that misses it without any transfer: the agent holds
    # the fork at the floor. Before, only GET /v1/throttle said why (every tick, in the mode/reason);
    # the log was silent at INFO and no series named the situation.
    state, registry, clock = make_state(slo_itl_seconds=0.04, controller=None)
    seed = OwnLatencySeed()
    floor = 0.05 * CAP
    caplog.set_level(logging.DEBUG, logger="rfork.agent")

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.levelno == logging.INFO and "without the transfer" in r.getMessage()]

    # 20 % of the seed's tokens over 40 ms with no chunk reads, then with the fork reading at the floor.
    reports = qos_seconds(state, clock, seed, 20, slow_share=0.2, active=False)
    reports += qos_seconds(state, clock, seed, 20, slow_share=0.2, active=True)
    # The law holds the floor; its off windows (rate 0 for an interval) keep checking the seed alone.
    assert state.qos.state.rate_bytes_per_second == pytest.approx(floor)
    assert state.allowed_rate in (0.0, pytest.approx(floor))
    assert reports[-1].throttle_reason == "seed_over_slo"
    assert len(said()) == 1, said()
    assert "holding forks at the floor (5.0 MB/s)" in said()[0] and "20.0% of its tokens over 0.04 s" in said()[0]
    assert state.throttle_reply().throttle_reason == "seed_over_slo"
    assert state.throttle_reply().baseline_itl_slo_violation_ratio == pytest.approx(0.2)
    # Grafana's view of the same: the seed alone at 20 % against its budget.
    assert sample(registry, "rfork_agent_seed_alone_itl_slo_violation_ratio") == pytest.approx(0.2)
    assert sample(registry, "rfork_agent_itl_slo_violation_budget_ratio") == state.qos.slo.violation_budget
    over = sum(sample(registry, "rfork_agent_throttle_decisions_total", action=a, reason="seed_over_slo")
               for a in ("cut", "raise", "hold", "floor", "cap", "probe"))
    assert over >= 35  # every decision from the first judged baseline on names the reason

    # The seed's own latency comes back; once the bad no-transfer minute has aged out, one more line.
    caplog.clear()
    reports = qos_seconds(state, clock, seed, 70, slow_share=0.0, active=False)
    assert reports[-1].throttle_reason == "transfer_latency"
    changes = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(changes) == 1, changes
    # It changes as soon as the no-transfer share is within the budget (the bad seconds age out one by one).
    assert changes[0] == ("agent seed-0: the throttle follows the latency the transfer adds, now 5.0 MB/s "
                          "(the seed on its own: 1.0% of its tokens over 0.04 s with no chunk reads; budget 1.0%)")


def test_a_seed_within_its_slo_never_reports_seed_over_slo(caplog):
    state, registry, clock = make_state(slo_itl_seconds=0.04)
    seed = OwnLatencySeed()
    caplog.set_level(logging.INFO, logger="rfork.agent")
    reports = qos_seconds(state, clock, seed, 10, slow_share=0.0, active=False)
    reports += qos_seconds(state, clock, seed, 20, slow_share=0.002, active=True)
    assert {r.throttle_reason for r in reports} == {"transfer_latency"}
    assert [r for r in caplog.records if "without the transfer" in r.getMessage()] == []
    assert sample(registry, "rfork_agent_throttle_decisions_total", action="hold", reason="seed_over_slo") == 0


def test_a_chunk_bigger_than_the_floor_times_the_wait_is_leased_and_the_retry_after_leads_to_a_grant():
    # `rfork testbed --seeds 2 --size 32MiB --throttle adaptive --slo-itl 0.04` with a seed missing its SLO:
    # one 33.5 MB chunk, seeds held at the 2.5 MB/s floor, a 5 s wait. Paying first needs 13 s > 5 s,
    # so every lease was refused forever and the fork hung.
    state, _, clock = make_state(rate_cap=50e6)
    floor, chunk = state.allowed_rate, 32 * 2**20
    assert floor == pytest.approx(2.5e6) and chunk > state.bucket.burst + floor * 5.0
    first = state.reserve(chunk, wait_seconds=5.0, now=clock())
    assert isinstance(first, Reservation) and first.start_at == 0.0  # nobody ahead: starts now, pays after
    second = state.reserve(chunk, wait_seconds=5.0, now=clock())     # 13 s of debt ahead: refused,
    assert isinstance(second, Denied) and second.status == 429         # not held
    debt_repaid_at = (chunk - state.bucket.burst) / floor
    assert second.retry_after_seconds == pytest.approx(debt_repaid_at, abs=1e-3)
    clock.t = second.retry_after_seconds                             # asked again when told: granted
    third = state.reserve(chunk, wait_seconds=5.0, now=clock())
    assert isinstance(third, Reservation) and third.start_at == clock.t


def test_whoever_sees_a_new_rate_also_sees_the_decision_that_set_it():
    """apply_qos publishes the rate last: a reader on another thread (a scrape, the integration tests'
    waits) that sees the new rate must not read the previous mode, age or decision counts beside it."""
    state, registry, _ = make_state()
    seen = {}
    set_rate = state.set_allowed_rate

    def spy(rate, now):
        seen.update(mode=state.throttle_mode_label, report=state.last_qos,
                    floors=sample(registry, "rfork_agent_throttle_decisions_total", action="floor",
                                  reason="transfer_latency"))
        set_rate(rate, now)

    state.set_allowed_rate = spy
    stale = report(0.05 * CAP, "floor", Mode.STALE_FLOOR, metrics_age_seconds=3.5)
    state.apply_qos(stale, now=1.0)
    assert seen == {"mode": Mode.STALE_FLOOR.value, "report": stale, "floors": 1.0}
