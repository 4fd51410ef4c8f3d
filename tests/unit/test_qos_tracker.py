"""throttle/qos.py: the agent's QoS loop without I/O, stepped with a fake clock and synthetic scrapes."""

from __future__ import annotations

import math

import pytest

from throttle.controller import ControllerConfig, Mode, SloConfig
from throttle.histogram import CumulativeHistogram
from throttle.prom_text import ITL_HISTOGRAM, QUEUED_GAUGE, RUNNING_GAUGE, Scrape
from throttle.qos import (
    ACTION_BY_MODE,
    ACTIONS,
    FailureLogPolicy,
    QosTracker,
    ScrapeFailure,
    ThrottleMode,
    classify_body,
)

CAP = 100e6
BOUNDS = (0.02, 0.03, 0.04, math.inf)
SLO = SloConfig(itl_threshold_seconds=0.03, violation_budget=0.01)


def controller(**overrides) -> ControllerConfig:
    # The textbook AIMD law, as in test_throttle_controller.py (SWIFT): its steps are easy to predict,
    # and these tests check the wiring. The A/B law's wiring is checked at the end.
    return ControllerConfig(**{"cap_bytes_per_second": CAP, "probe_every_seconds": None, "law": "aimd",
                               "md_beta": 0.8, "max_cut": 0.5, "clear_miss_severity": 0.5,
                               "raise_evidence_seconds": 0.0, "max_step_multiplier": 1, **overrides})


class FakeSeed:
    """Cumulative SGLang-style ITL counters; each ``interval`` adds tokens split by latency bucket."""

    def __init__(self) -> None:
        self.counts = [0.0] * len(BOUNDS)  # cumulative per bound (le)

    def interval(self, fast: int = 0, slow: int = 0, running: float = 4.0) -> None:
        # fast: <= 20 ms; slow: > 40 ms (above the SLO).
        add = (fast, fast, fast, fast + slow)
        self.counts = [c + a for c, a in zip(self.counts, add)]
        self.running = running

    def restart(self) -> None:
        self.counts = [0.0] * len(BOUNDS)

    def scrape(self, t: float, running: float | None = None) -> Scrape:
        run = self.running if running is None else running
        return Scrape(t, {ITL_HISTOGRAM: CumulativeHistogram(BOUNDS, tuple(self.counts))},
                      {RUNNING_GAUGE: run, QUEUED_GAUGE: 0.0})


def run(tracker: QosTracker, seed: FakeSeed, start: float, seconds: int, *, fast=500, slow=0, running=4.0,
        active=True):
    reports = []
    for k in range(seconds):
        t = start + k
        seed.interval(fast, slow, running)
        reports.append(tracker.tick(t, seed.scrape(t), transfer_active=active))
    return reports


def adaptive(**overrides) -> QosTracker:
    return QosTracker(SLO, controller(**overrides), ThrottleMode.ADAPTIVE, now=0.0)


# --------------------------------------------------------------------------- parsing and logging


@pytest.mark.parametrize("body, reason", [
    ("<html>not metrics</html>", "parse_error"),
    ("sglang:inter_token_latency_seconds_bucket{le=\"0.1\"} 1\n", "parse_error"),  # no +Inf bucket
    ("process_cpu_seconds_total 3.2\n", "parse_error"),                            # no SGLang series
    ("sglang:num_running_reqs 2\n", None),                                         # gauges only: fresh seed
    ("sglang:num_running_reqs 2", "parse_error"),                                  # truncated (no newline)
])
def test_classify_body(body, reason):
    got = classify_body(body, taken_at=1.0)
    if reason is None:
        assert isinstance(got, Scrape)
    else:
        assert isinstance(got, ScrapeFailure) and got.reason == reason and got.message


def test_scrape_failure_reason_is_a_closed_set():
    with pytest.raises(ValueError, match="unreachable"):
        ScrapeFailure("timeout", "x")


def test_failure_log_policy_rate_limits_per_reason():
    p = FailureLogPolicy(every_seconds=60)
    assert [p.should_log("unreachable", t) for t in (0, 1, 2, 60)] == [0, None, None, 2]
    assert p.should_log("http_error", 61) == 0  # a new reason is logged at once
    assert p.recovered() is True and p.recovered() is False
    assert p.should_log("http_error", 62) == 0  # after recovery, the next failure is news again


def test_every_controller_mode_has_an_action():
    assert set(ACTION_BY_MODE) == set(Mode)
    assert set(ACTION_BY_MODE.values()) <= set(ACTIONS)


# --------------------------------------------------------------------------- adaptive


def test_idle_seed_gets_the_cap():
    t, seed = adaptive(), FakeSeed()
    reports = run(t, seed, 1.0, 4, fast=0, running=0, active=False)
    assert reports[-1].rate_bytes_per_second == CAP
    assert reports[-1].action == "cap" and reports[-1].mode_label == Mode.IDLE_FULL.value
    assert math.isnan(reports[-1].observed_itl_p99_seconds)  # no tokens: no signal, not 0


def test_good_load_raises_then_violations_cut():
    t, seed = adaptive(), FakeSeed()
    up = run(t, seed, 1.0, 6, fast=1000)
    assert [r.action for r in up[1:]] == ["raise"] * 5  # the first scrape has no window yet
    assert up[-1].rate_bytes_per_second == pytest.approx(CAP * (0.05 + 5 / 16))
    assert up[-1].itl_slo_violation_ratio == 0.0
    before = up[-1].rate_bytes_per_second
    spike = run(t, seed, 7.0, 1, fast=950, slow=50)[0]  # 5 % over the SLO against a 1 % budget
    assert spike.action == "cut"
    assert spike.rate_bytes_per_second == pytest.approx(before * 0.5)  # capped at max_cut
    assert spike.itl_slo_violation_ratio > 0.0


def test_stale_metrics_go_to_the_floor_and_log_once():
    t, seed = adaptive(), FakeSeed()
    run(t, seed, 1.0, 8, fast=1000)
    reports = [t.tick(9.0 + k, ScrapeFailure("unreachable", "connection refused"), transfer_active=True)
               for k in range(70)]
    assert [r.action for r in reports[:3]] == ["hold", "hold", "floor"]  # 3 s without a good scrape
    assert reports[2].rate_bytes_per_second == pytest.approx(0.05 * CAP)
    assert reports[2].metrics_age_seconds == pytest.approx(3.0)
    logged = [k for k, r in enumerate(reports) if r.log_failure]
    assert logged == [0, 60] and reports[60].unlogged_failures == 59
    # Metrics come back: logged once as recovered, and the age resets.
    seed.interval(1000)
    back = t.tick(79.0, seed.scrape(79.0), transfer_active=True)
    assert back.log_recovered and back.metrics_age_seconds == 0.0


def test_throttle_reason_changes_only_with_the_situation():
    t, seed = adaptive(), FakeSeed()
    changes = []

    def step(scrape_or_failure, t_now, active=True):
        r = t.tick(t_now, scrape_or_failure, transfer_active=active)
        if r.throttle_reason_changed:
            changes.append((t_now, r.throttle_reason))
        return r

    assert t.throttle_reason == "transfer_latency"  # where adaptive starts: not news
    for k in range(1, 5):  # idle: the cap
        seed.interval(0, running=0)
        step(seed.scrape(k), k, active=False)
    step(ScrapeFailure("unreachable", "timed out"), 5)  # one missed scrape: still idle as far as we know
    for k in range(6, 12):  # load, transfer running, SLO met
        seed.interval(1000)
        step(seed.scrape(k), k)
    for k in range(12, 16):  # the metrics stop: the floor after 3 s
        step(ScrapeFailure("unreachable", "connection refused"), k)
    assert changes == [(2, "seed_idle"), (6, "transfer_latency"), (14, "metrics_stale")]


def test_a_seed_over_its_slo_without_the_transfer_is_held_at_the_floor_with_that_reason():
    t, seed = adaptive(), FakeSeed()
    reports = run(t, seed, 1.0, 5, fast=400, slow=100, active=False)  # 20 % over the SLO, no chunk reads
    reports += run(t, seed, 6.0, 10, fast=400, slow=100, active=True)
    assert reports[-1].rate_bytes_per_second == pytest.approx(0.05 * CAP)
    assert reports[-1].baseline_itl_slo_violation_ratio == pytest.approx(0.2)
    assert [r.throttle_reason for r in reports if r.throttle_reason_changed] == ["seed_over_slo"]
    assert reports[-1].throttle_reason == "seed_over_slo"


def test_garbage_metrics_count_as_stale():
    t = adaptive()
    reports = [t.tick(1.0 + k, classify_body("garbage{", taken_at=1.0 + k), True) for k in range(4)]
    assert reports[-1].action == "floor" and reports[-1].scrape_failure.reason == "parse_error"


def test_counter_reset_never_cuts():
    t, seed = adaptive(), FakeSeed()
    up = run(t, seed, 1.0, 8, fast=1000)
    rate = up[-1].rate_bytes_per_second
    seed.restart()  # the seed restarted: its counters start from 0
    seed.interval(fast=10)
    r = t.tick(9.0, seed.scrape(9.0), transfer_active=True)
    assert r.action == "hold" and r.rate_bytes_per_second == rate
    nxt = run(t, seed, 10.0, 1, fast=1000)[0]  # the restarted counters are the new base
    assert nxt.action == "raise"


def test_latency_impact_against_the_no_transfer_baseline():
    t, seed = adaptive(), FakeSeed()
    # No transfer: every token under 20 ms -> baseline p99 in (0, 20 ms].
    base = run(t, seed, 1.0, 6, fast=1000, active=False)
    assert math.isfinite(base[-1].latency_impact_ratio)
    # The transfer pushes 5 % of tokens over 40 ms: p99 lands in the +Inf bucket (reported as 40 ms).
    hit = run(t, seed, 7.0, 6, fast=950, slow=50, active=True)
    assert hit[-1].observed_itl_p99_seconds == pytest.approx(0.04)
    assert hit[-1].latency_impact_ratio > 1.9


def test_report_window_covers_the_last_five_seconds():
    t, seed = QosTracker(SLO, controller(), ThrottleMode.FIXED, now=0.0), FakeSeed()
    run(t, seed, 1.0, 3, fast=900, slow=100)
    calm = run(t, seed, 4.0, 5, fast=1000)
    assert calm[-1].itl_slo_violation_ratio == 0.0  # the bad seconds have left the 5 s window
    assert calm[0].itl_slo_violation_ratio > 0.0


# --------------------------------------------------------------------------- fixed / off / switching


def test_fixed_mode_reports_but_never_decides():
    t, seed = QosTracker(SLO, controller(), ThrottleMode.FIXED, now=0.0, fixed_rate_bytes_per_second=30e6), FakeSeed()
    reports = run(t, seed, 1.0, 3, fast=900, slow=100)
    assert {r.rate_bytes_per_second for r in reports} == {30e6}
    assert {r.action for r in reports} == {None} and reports[-1].mode_label == "fixed"
    assert reports[-1].itl_slo_violation_ratio == pytest.approx(0.1)


def test_fixed_mode_without_a_rate_uses_the_cap_and_off_does_not_scrape():
    fixed = QosTracker(None, controller(), ThrottleMode.FIXED, now=0.0)
    assert fixed.tick(1.0, None, False).rate_bytes_per_second == CAP
    off = QosTracker(None, None, ThrottleMode.OFF, now=0.0)
    assert off.scrapes is False
    report = off.tick(1.0, None, True)
    assert report.rate_bytes_per_second is None and report.mode_label == "off"


def test_adaptive_needs_a_cap_and_an_slo():
    with pytest.raises(ValueError, match="SLO"):
        QosTracker(None, controller(), ThrottleMode.ADAPTIVE, now=0.0)
    off = QosTracker(SLO, None, ThrottleMode.OFF, now=0.0)
    with pytest.raises(ValueError, match="cap"):
        off.set_mode(ThrottleMode.ADAPTIVE, 1.0)


def test_entering_adaptive_starts_at_the_floor_staying_keeps_state():
    t, seed = QosTracker(SLO, controller(), ThrottleMode.FIXED, now=0.0), FakeSeed()
    t.set_mode(ThrottleMode.ADAPTIVE, 1.0)
    assert t.state is not None and t.state.rate_bytes_per_second == pytest.approx(0.05 * CAP)
    run(t, seed, 2.0, 4, fast=1000)
    climbed = t.state.rate_bytes_per_second
    t.set_mode(ThrottleMode.ADAPTIVE, 6.0)
    assert t.state.rate_bytes_per_second == climbed


def test_docstring_examples():
    import doctest

    import throttle.qos
    import throttle.token_bucket

    for module in (throttle.qos, throttle.token_bucket):
        assert doctest.testmod(module).failed == 0, module.__name__


# --------------------------------------------------------------------------- the A/B law's wiring


def ab_tracker() -> QosTracker:
    return QosTracker(SLO, ControllerConfig(cap_bytes_per_second=CAP), ThrottleMode.ADAPTIVE, now=0.0)


def test_ab_off_windows_reach_the_bucket_as_rate_0_and_their_interval_is_the_baseline():
    # The agent reports no chunk reads for an interval in which its bucket was at 0; the tracker
    # counts such intervals as the no-transfer baseline (exported) and the law as its off share.
    t, seed = ab_tracker(), FakeSeed()
    reports, active = [], True
    for k in range(1, 41):
        slow = 10 if active else 2  # 1 % with the transfer, 0.2 % without it
        seed.interval(fast=1000 - slow, slow=slow, running=4.0)
        r = t.tick(float(k), seed.scrape(float(k)), transfer_active=active)
        reports.append(r)
        active = r.rate_bytes_per_second != 0
    paused = [r for r in reports if r.rate_bytes_per_second == 0]
    assert paused and all(r.action == "probe" for r in paused)
    assert reports[-1].baseline_itl_slo_violation_ratio == pytest.approx(0.002)
    # The law saw the same split: its off pool holds only the paused intervals' tokens.
    off = [s for s in t.state.ab_itl if not s.on]
    assert len(off) == len(paused) - (1 if reports[-1].rate_bytes_per_second == 0 else 0)
    assert all(s.slow / s.tokens == pytest.approx(0.002) for s in off)


def test_ab_seed_over_its_slo_on_its_own_is_held_at_the_floor_with_that_reason():
    t, seed = ab_tracker(), FakeSeed()
    reports = run(t, seed, 1.0, 5, fast=400, slow=100, active=False)  # 20 % over the SLO, no chunk reads
    reports += run(t, seed, 6.0, 10, fast=400, slow=100, active=True)
    assert reports[-1].rate_bytes_per_second in (0.0, pytest.approx(0.05 * CAP))
    assert t.state.rate_bytes_per_second == pytest.approx(0.05 * CAP)
    assert reports[-1].throttle_reason == "seed_over_slo"


def test_ab_seed_over_its_slo_is_counted_as_such_when_leases_are_held_through_the_off_windows():
    # CI saw this: a client held its lease across the law's off windows, so the agent reported every
    # interval active and the tracker's own no-transfer baseline stayed empty, while the law's off
    # windows (paused intervals) showed the seed missing alone and held the floor. The floor's
    # decisions were counted under transfer_latency; the law's verdict must set the reason.
    t, seed = ab_tracker(), FakeSeed()
    reports = run(t, seed, 1.0, 5, fast=1000, slow=0, active=True)     # within the SLO: the law climbs
    reports += run(t, seed, 6.0, 40, fast=400, slow=100, active=True)  # 20 % over, on or off
    assert all(r.baseline_itl_slo_violation_ratio != r.baseline_itl_slo_violation_ratio for r in reports)  # NaN
    verdicts = [r for r in reports if r.controller_mode is Mode.NOT_OUR_FAULT]
    assert verdicts, [r.reason for r in reports]
    assert all(r.throttle_reason == "seed_over_slo" for r in verdicts)
    assert t.state.rate_bytes_per_second == pytest.approx(0.05 * CAP)
    assert reports[-1].throttle_reason == "seed_over_slo"
    changes = [r.throttle_reason for r in reports if r.throttle_reason_changed]
    assert changes == ["seed_over_slo"], changes


def test_ab_entering_adaptive_starts_with_the_seed_alone_as_off_evidence():
    # Watched in fixed mode at rate 0 (no chunk reads), the seed alone is what an off window
    # measures: entering adaptive mode, the law has that evidence from its first tick.
    t = QosTracker(SLO, ControllerConfig(cap_bytes_per_second=CAP), ThrottleMode.FIXED, now=0.0,
                   fixed_rate_bytes_per_second=0.0)
    seed = FakeSeed()
    run(t, seed, 1.0, 30, fast=995, slow=5, running=8.0, active=False)
    run(t, seed, 31.0, 3, fast=990, slow=10, running=8.0, active=True)  # reads at a fixed rate: not the seed alone
    t.set_mode(ThrottleMode.ADAPTIVE, 33.5)
    off = [s for s in t.state.ab_itl if not s.on]
    assert not [s for s in t.state.ab_itl if s.on]
    # The first scrape has no window; the other 29 seconds are the seed alone, the last 60 s kept.
    assert len(off) == 29 and {(s.slow, s.tokens, s.batch, s.rate) for s in off} == {(5.0, 1000.0, 8.0, 0.0)}
    # 0.5 % alone, 0.62 % by a standard error: past half the budget, so under half the cap (the
    # start falls to the floor at the aim, 0.95 %).
    assert 0.25 * CAP < t.state.rate_bytes_per_second < 0.5 * CAP


def test_ab_entering_adaptive_after_the_seed_went_idle_forgets_the_load_before_it():
    # v24's load-change run 4: the seed's own bad seconds before an idle spell read as the seed alone
    # 40 s later and held it at the floor. What came back after idle is another load, as the law
    # itself forgets at a load back after idle: only the seconds since are the seed alone.
    t = QosTracker(SLO, ControllerConfig(cap_bytes_per_second=CAP), ThrottleMode.FIXED, now=0.0,
                   fixed_rate_bytes_per_second=0.0)
    seed = FakeSeed()
    run(t, seed, 1.0, 10, fast=600, slow=400, running=96.0, active=False)   # 40 % slow on its own
    run(t, seed, 11.0, 3, fast=0, slow=0, running=0.0, active=False)        # idle
    run(t, seed, 14.0, 20, fast=1000, slow=0, running=32.0, active=False)   # back, and well
    t.set_mode(ThrottleMode.ADAPTIVE, 33.5)
    off = [s for s in t.state.ab_itl if not s.on]
    assert len(off) == 20 and {s.slow for s in off} == {0.0} and {s.batch for s in off} == {32.0}
    run(t, seed, 34.0, 1, fast=1000, slow=0, running=32.0, active=True)
    assert t.throttle_reason == "transfer_latency" and t.state.mode is not Mode.NOT_OUR_FAULT


def test_aimd_entering_adaptive_ignores_the_seed_alone_evidence():
    t = QosTracker(SLO, controller(), ThrottleMode.FIXED, now=0.0, fixed_rate_bytes_per_second=0.0)
    run(t, FakeSeed(), 1.0, 10, fast=995, slow=5, active=False)
    t.set_mode(ThrottleMode.ADAPTIVE, 11.0)
    assert t.state.ab_itl == ()


# --------------------------------------------------------------------------- load returning to an idle seed


@pytest.mark.parametrize("fast, running, queued, restart, wakes", [
    (0, 0.0, 0.0, False, False),       # still idle
    (0, 2.0, 0.0, False, True),        # requests running (prefill: no tokens yet)
    (0, 0.0, 3.0, False, True),        # requests queued
    (40, 0.0, 0.0, False, True),       # tokens since the last tick's scrape, the batch already done
    (0, 0.0, 0.0, True, False),        # a counter reset: the next tick judges it, not the watch
])
def test_a_scrape_between_ticks_wakes_the_law_only_when_an_idle_seed_serves_again(fast, running, queued, restart,
                                                                                   wakes):
    t = adaptive()
    seed = FakeSeed()
    run(t, seed, 1.0, 3, fast=0, running=0.0)
    assert t.idle_at_cap and t.state.rate_bytes_per_second == CAP
    seed.interval(fast, 0, running)
    if restart:
        seed.restart()
    between = seed.scrape(3.25)
    between.gauges[QUEUED_GAUGE] = queued
    assert t.wakes_on(between) is wakes
    # Pure: asking changes nothing; the woken tick decides from the last tick's scrape.
    assert t.idle_at_cap
    if wakes:
        report = t.tick(3.25, between, transfer_active=True)
        assert report.rate_bytes_per_second < CAP and "load returned after idle" in report.reason


@pytest.mark.parametrize("make", [
    lambda: QosTracker(SLO, controller(), ThrottleMode.FIXED, now=0.0),     # fixed: nothing to wake
    lambda: adaptive(),                                                      # adaptive but never idle
])
def test_only_an_adaptive_law_at_the_cap_for_an_idle_seed_is_watched(make):
    t = make()
    seed = FakeSeed()
    run(t, seed, 1.0, 3, fast=500, running=4.0)
    assert not t.idle_at_cap and not t.wakes_on(seed.scrape(3.25, running=8.0))


def test_ab_a_window_after_a_failed_scrape_counts_the_reads_and_bytes_of_every_tick_it_spans():
    # Chunk reads (8 MB granted) ran in a tick whose scrape failed, none in the next: the next good scrape's
    # window spans both, so it is a transfer-on window, charged with the 8 MB over its 2 s.
    t = QosTracker(SLO, ControllerConfig(cap_bytes_per_second=CAP, ab_rate_of_granted=True), ThrottleMode.ADAPTIVE,
                   now=0.0)
    seed = FakeSeed()
    for k in range(1, 4):
        seed.interval(fast=990, slow=10)
        t.tick(float(k), seed.scrape(float(k)), transfer_active=True, granted_bytes=4e6)
    seed.interval(fast=990, slow=10)
    t.tick(4.0, ScrapeFailure("unreachable", "timed out"), transfer_active=True, granted_bytes=8e6)
    seed.interval(fast=990, slow=10)
    t.tick(5.0, seed.scrape(5.0), transfer_active=False, granted_bytes=0)
    last = t.state.ab_itl[-1]
    assert (last.at, last.on, last.tokens) == (5.0, True, 2000)
    assert last.model_rate == pytest.approx(4e6)                      # 8 MB over the window's 2 s
    assert {s.model_rate for s in t.state.ab_itl[:-1] if s.on} == {4e6}   # one tick each: 4 MB over 1 s
