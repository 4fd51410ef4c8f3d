"""The A/B law (``ControllerConfig.law == "ab"``, the default): off windows, attribution, the error
budget, spikes, load changes, stepped over a fake clock with synthetic histograms."""

from __future__ import annotations

import doctest
import math
import random
from dataclasses import dataclass, replace
from typing import Callable

import pytest

import throttle.attribution as attribution_module
from sim.qos_plant import whole_chunks
from throttle.attribution import Estimate, Sample, estimate, one_interval_z, overall_share, safe_rate
from throttle.controller import (
    ControllerConfig,
    ControllerState,
    InvalidControllerConfig,
    Mode,
    Observation,
    SloConfig,
    _allowed_share,
    _raise_factor,
    decide,
    initial_state,
    with_seed_alone_evidence,
)
from throttle.histogram import WindowHistogram

CAP = 100e6
FLOOR = 0.05 * CAP
SLO = SloConfig(itl_threshold_seconds=0.04, violation_budget=0.01)
TTFT_SLO = SloConfig(itl_threshold_seconds=0.04, ttft_threshold_seconds=1.0, violation_budget=0.01)


def cfg(**overrides) -> ControllerConfig:
    return ControllerConfig(**{"cap_bytes_per_second": CAP, **overrides})


def window(tokens: float, slow: float) -> WindowHistogram:
    return WindowHistogram((0.04, math.inf), (tokens - slow, tokens))


@dataclass
class Tick:
    now: float
    applied: float  # the rate set for the next interval
    mode: Mode
    reason: str
    law_rate: float


#: (rate in force during the interval, second index) -> (tokens, slow tokens, running)
Plant = Callable[[float, int], tuple[float, float, float]]


def drive(config: ControllerConfig, plant: Plant, seconds: int, slo: SloConfig = SLO,
          ttft: Callable[[float, int], tuple[float, float]] | None = None, start_rate: float | None = None,
          start: ControllerState | None = None, **state_fields) -> list[Tick]:
    """Closed loop: the rate decided at t is in force during (t, t+1]; a rate of 0 is an off interval. ``start``:
    the law at t = 0 (default: :func:`initial_state`)."""
    from dataclasses import replace
    state = replace(initial_state(config, now=0.0) if start is None else start, **state_fields)
    if start_rate is not None:
        state = replace(state, rate_bytes_per_second=start_rate)
    applied = state.rate_bytes_per_second
    log: list[Tick] = []
    for k in range(seconds):
        tokens, slow, running = plant(applied, k)
        ttft_window = None
        if ttft is not None:
            n, over = ttft(applied, k)
            ttft_window = WindowHistogram((1.0, math.inf), (n - over, n))
        obs = Observation(itl=window(tokens, slow), ttft=ttft_window, running=running, queued=0.0,
                          transfer_active=applied > 0, span_seconds=1.0)
        d = decide(state, obs, config, slo, now=float(k + 1))
        state, applied = d.state, d.rate_bytes_per_second
        log.append(Tick(float(k + 1), applied, d.mode, d.reason, state.rate_bytes_per_second))
    return log


def linear(own: float, effect_at_cap: float, tokens: float = 2000.0, running: float = 8.0) -> Plant:
    """Exact (noise-free) shares: own + effect x rate/cap."""
    def plant(rate: float, k: int) -> tuple[float, float, float]:
        return tokens, tokens * min(1.0, own + effect_at_cap * rate / CAP), running
    return plant


def noisy(own: float, effect_at_cap: float, rng: random.Random, tokens: float = 2000.0, batch: int = 16) -> Plant:
    """Decode steps of ``batch`` tokens, each slow with the plant's probability (clustered noise)."""
    def plant(rate: float, k: int) -> tuple[float, float, float]:
        steps = int(tokens / batch)
        p = own + effect_at_cap * rate / CAP
        slow_steps = sum(1 for _ in range(steps) if rng.random() < p)
        return steps * batch, slow_steps * batch, float(batch)
    return plant


# --------------------------------------------------------------------------- the statistics


def test_attribution_docstring_examples():
    assert doctest.testmod(attribution_module).failed == 0


@pytest.mark.parametrize("slow, tokens, batch, budget, z", [
    (10, 1000, 1, 0.01, 0.0),          # exactly at budget
    (50, 1000, 1, 0.01, 12.6),          # 5 % of 1000 independent tokens
    (50, 1000, 8, 0.01, 4.5),           # the same share in clusters of 8: far less evidence
    (0, 0, 1, 0.01, 0.0),               # nothing seen: no evidence either way
])
def test_one_interval_z_accounts_for_clustered_tokens(slow, tokens, batch, budget, z):
    assert one_interval_z(slow, tokens, batch, budget) == pytest.approx(z, abs=0.05)


def test_estimate_pools_on_and_off_and_distrusts_a_thin_off_pool():
    on = [Sample(1.0, 20e6, True, 10, 1000), Sample(2.0, 40e6, True, 30, 1000)]
    off = [Sample(3.0, 0.0, False, 1, 100)]
    thin = estimate(on, off, min_tokens=200)
    assert (thin.p_on, thin.r_on, thin.off_known, thin.p_off) == (0.02, 30e6, False, 0.0)
    known = estimate(on, off * 3, min_tokens=200)
    assert known.off_known and known.p_off == pytest.approx(0.01)


def test_safe_rate_uses_the_off_share_as_the_seeds_own_part():
    # The seed alone 0.8 %, 1.0 % at 20 MB/s: the transfer adds 0.01 %/MB/s, so the budget allows 20 MB/s.
    seen = Estimate(p_on=0.010, var_on=0.0, tokens_on=1e6, r_on=20e6, p_off=0.008, var_off=0.0, tokens_off=1e5,
                    off_known=True)
    assert safe_rate(seen, budget=0.01, duty_off=0.0, z=0.0, floor=FLOOR, cap=CAP) == pytest.approx(20e6, rel=0.02)
    # Off windows a fifth of the time: the on rate may be higher for the same overall share.
    assert safe_rate(seen, budget=0.01, duty_off=0.2, z=0.0, floor=FLOOR, cap=CAP) == pytest.approx(25e6, rel=0.02)
    # Without the off share every slow token is blamed on the transfer: 4x less.
    blind = Estimate(0.010, 0.0, 1e6, 20e6, 0.0, 0.0, 0.0, False)
    assert safe_rate(blind, budget=0.01, duty_off=0.0, z=0.0, floor=FLOOR, cap=CAP) == pytest.approx(20e6, rel=0.02)
    assert safe_rate(blind, budget=0.008, duty_off=0.0, z=0.0, floor=FLOOR, cap=CAP) == pytest.approx(16e6, rel=0.02)
    # Uncertainty costs rate: a standard error of 0.05 % of the on share at z = 2 is 0.1 % of margin
    # at the measured rate: 0.8 % + x (0.2 % + 0.1 %) <= 1 % at x = 2/3 of 20 MB/s.
    unsure = Estimate(0.010, 0.0005 ** 2, 1e6, 20e6, 0.008, 0.0, 1e5, True)
    assert safe_rate(unsure, budget=0.01, duty_off=0.0, z=2.0, floor=FLOOR, cap=CAP) == pytest.approx(13.33e6, rel=0.01)
    # A seed that alone is over the budget leaves nothing: the floor.
    over = Estimate(0.02, 0.0, 1e6, 20e6, 0.015, 0.0, 1e5, True)
    assert safe_rate(over, budget=0.01, duty_off=0.0, z=0.0, floor=FLOOR, cap=CAP) == FLOOR


def test_overall_share_never_credits_the_transfer_with_speeding_the_seed_up():
    faster = Estimate(0.004, 0.0, 1e6, 20e6, 0.006, 0.0, 1e5, True)  # noise: on under off
    assert overall_share(faster, 80e6, 0.0, 0.0) == pytest.approx(0.006)


def test_pooling_the_seeds_own_share_lets_clean_on_intervals_outweigh_a_few_bad_off_seconds():
    # v25's near-slo run 3, seed 0: its first off window caught one second of its own at 7 %, so the off
    # share read ~0.97 % while 120,000 on tokens at the floor read 0.34 %. With the off share alone as the
    # seed's own the bound at the floor is 0.97 % + one standard error of the on share, over the 1 % budget:
    # the floor. Pooled (ab_pool_own_share), both read the seed's own share: 0.68 % + 0.15 %, the cap.
    on = [Sample(float(t), 5e6, True, 0.0034 * 12_000, 12_000.0, 64.0) for t in range(10)]
    off = [Sample(float(t), 0.0, False, 0.0097 * 12_000, 12_000.0, 64.0) for t in range(30)]
    est = estimate(on, off, min_tokens=200)
    assert est.excess == 0.0
    assert attribution_module.own_share(est) == pytest.approx(0.0068, abs=0.0001)
    assert safe_rate(est, budget=0.01, duty_off=0.05, z=1.0, floor=FLOOR, cap=CAP) == FLOOR
    assert safe_rate(est, budget=0.01, duty_off=0.05, z=1.0, floor=FLOOR, cap=CAP, pool_own=True) == CAP
    # Where the on share reads over the off share the transfer shows an excess: pooling changes nothing.
    worse = estimate([Sample(s.at, s.rate, True, 0.012 * 12_000, 12_000.0, 64.0) for s in on], off, min_tokens=200)
    assert attribution_module.own_share(worse) == worse.p_off
    assert overall_share(worse, 20e6, 0.05, 1.0, pool_own=True) == overall_share(worse, 20e6, 0.05, 1.0)


def seconds_to_cap(config: ControllerConfig, on_share: float, off_share: float) -> float:
    """Through the law from the floor, a seed at 64 running (12,000 tokens/s) whose transfer-on seconds read
    ``on_share`` and off ones ``off_share``: the first second the law is at the cap."""
    def plant(rate: float, k: int) -> tuple[float, float, float]:
        return 12_000.0, 12_000.0 * (on_share if rate > 0 else off_share), 64.0

    return next(t.now for t in drive(config, plant, 40, start_rate=FLOOR) if t.law_rate >= CAP)


def test_pooling_the_seeds_own_share_is_a_tuning_the_law_reads():
    # The same seed through the law, from the floor: its off windows read 0.97 %, the transfer-on seconds
    # 0.34 %. With the off share alone as the seed's own the bound at the floor is over the budget until
    # the error budget's savings lift what it allows (the cap at 29 s, measured); pooled, at 13 s.
    # The law before session 43 (the signed bound, on since, reads the same case its own way: the cap at 12 s).
    assert seconds_to_cap(cfg(ab_signed_excess_bound=False), 0.0034, 0.0097) >= 25
    assert seconds_to_cap(cfg(ab_pool_own_share=True), 0.0034, 0.0097) <= 15


@pytest.mark.parametrize("slow, tokens, seconds, allowed", [
    (95, 10_000, 10, 0.0095),      # spent exactly the aim (0.95 x 1 %): the aim again
    (0, 10_000, 10, 0.0095 + 95 / 30_000),   # nothing spent: the slack spread over plan_seconds (30 s)
    (190, 10_000, 10, 0.0095 - 95 / 30_000),  # twice the aim: the overspend repaid over 30 s
    (1000, 10_000, 10, 0.0),       # far over: nothing allowed (not negative)
])
def test_error_budget_spreads_unspent_or_overspent_budget_over_the_plan(slow, tokens, seconds, allowed):
    samples = [Sample(float(k), 10e6, True, slow / seconds, tokens / seconds) for k in range(seconds)]
    assert _allowed_share(samples, 0.01, cfg()) == pytest.approx(allowed)


@pytest.mark.parametrize("slow, allowed", [
    (0, 0.0095 * 1.5),               # nothing spent: over 10 s the slack would double the aim; 1.5x at most
    (60, 0.0095 + 35 / 10_000),      # a little spent: the slack spread over the next 10 s, under the bound
    (190, 0.0095 - 95 / 10_000),     # twice the aim: the overspend repaid over 10 s, not limited
])
def test_a_short_plan_spends_at_most_allowed_max_aim_factor_of_the_aim(slow, allowed):
    samples = [Sample(float(k), 10e6, True, slow / 10, 1_000) for k in range(10)]
    assert _allowed_share(samples, 0.01, cfg(plan_seconds=10)) == pytest.approx(allowed)


# --------------------------------------------------------------------------- off windows


def off_windows(log: list[Tick]) -> list[float]:
    return [t.now for t in log if t.mode is Mode.PROBE_PAUSE]


def test_off_windows_pause_the_transfer_one_interval_and_keep_the_law_rate():
    log = drive(cfg(), linear(0.003, 0.0), 40)
    paused = [t for t in log if t.mode is Mode.PROBE_PAUSE]
    assert paused and all(t.applied == 0.0 and t.law_rate > 0 for t in paused)
    # Each window is one interval: the tick after one is never another.
    starts = off_windows(log)
    assert all(b - a > 1 for a, b in zip(starts, starts[1:]))


def test_no_off_windows_while_the_fork_reads_nothing():
    # A loaded seed whose fork is not reading: every interval is already the seed alone.
    state, log = initial_state(cfg(), 0.0), []
    for k in range(30):
        obs = Observation(itl=window(2000, 6), running=8.0, queued=0.0, transfer_active=False, span_seconds=1.0)
        d = decide(state, obs, cfg(), SLO, now=float(k + 1))
        state = d.state
        log.append(d.mode)
    assert Mode.PROBE_PAUSE not in log


def test_off_windows_are_dense_while_the_own_share_is_imprecise_then_sparse():
    # At 2000 tokens a second and 0.3 % own share, the off pool takes a few windows to be precise.
    # (The quiet schedule at the cap is off here: its own tests follow.)
    log = drive(cfg(off_every_quiet_seconds=20.0), linear(0.003, 0.0), 200)
    starts = off_windows(log)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps[0] == pytest.approx(5.0)           # dense: one window per off_every_min_seconds
    assert gaps[-1] == pytest.approx(20.0)         # sparse once the seed's own share is known
    assert sum(1 for t in log[100:] if t.applied == 0) <= 6  # <= 6 % of the time off later on


def test_at_the_cap_within_budget_off_windows_go_quiet():
    # The seed at 0.3 %, the transfer adding 0.2 % at the cap: the cap is safe, attribution cannot
    # change the rate, so after the climb an off window comes once a minute, not every 20 s.
    log = drive(cfg(), linear(0.003, 0.002), 400)
    assert seconds_to(log, CAP) is not None and seconds_to(log, CAP) < 30
    late = [t for t in off_windows(log) if t > 100]
    gaps = [b - a for a, b in zip(late, late[1:])]
    assert gaps and all(g == pytest.approx(60.0) for g in gaps), gaps
    assert sum(1 for t in log[100:] if t.applied == 0) <= 6  # <= 2 % of 300 s, against 5 % at 20 s


@pytest.mark.parametrize("own, effect_at_cap", [
    (0.003, 0.0065),   # over the aim at the cap (0.95 %): the law holds under it, off windows as before
    (0.003, 0.012),    # the cap misses the budget
])
def test_below_the_cap_or_near_the_budget_off_windows_stay_at_most_20_seconds_apart(own, effect_at_cap):
    log = drive(cfg(), linear(own, effect_at_cap), 400)
    starts = off_windows(log)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps and max(gaps) <= 20.0 + 1e-9, gaps


def test_quiet_ends_when_the_share_at_the_cap_rises():
    # Quiet at the cap; at t = 200 the transfer's effect grows (a heavier load): the law cuts on
    # transfer-on intervals alone, and its off windows are dense again within seconds.
    quiet, heavy = linear(0.003, 0.002), linear(0.003, 0.03)
    log = drive(cfg(), lambda rate, k: (quiet if k < 200 else heavy)(rate, k), 260)
    assert [t for t in off_windows(log) if 140 < t <= 200]  # quiet: one window in the minute before
    assert len([t for t in off_windows(log) if 140 < t <= 200]) == 1
    cut = next(t.now for t in log if t.now > 200 and t.mode is Mode.CUT)
    # The first confirmed rise at the same load is taken for the seed's own episode (left out, the older
    # evidence kept: ab_isolate_episodes); the rise confirmed again forgets the older evidence and cuts:
    # about two seconds later than forgetting at once did.
    assert cut <= 206
    after = [t for t in off_windows(log) if t > 200]
    assert after and after[0] <= 210 and len(after) >= 5, after
    at_once = drive(cfg(ab_isolate_episodes=False), lambda rate, k: (quiet if k < 200 else heavy)(rate, k), 260)
    assert next(t.now for t in at_once if t.now > 200 and t.mode is Mode.CUT) <= 203


def test_the_quiet_schedule_also_needs_ttft_within_budget_at_the_cap():
    # ITL far within budget at the cap; TTFT at 0.93 % there: the law reaches the cap (unspent budget
    # lets it), but the upper bound of TTFT's share there is over the 0.95 % aim: no quiet schedule.
    log = drive(cfg(), linear(0.003, 0.0), 300, slo=TTFT_SLO,
                ttft=lambda rate, k: (1000.0, 1000.0 * (0.0085 + 0.0008 * rate / CAP)))
    assert seconds_to(log, CAP) is not None
    starts = [t for t in off_windows(log) if t > 100]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps and max(gaps) <= 20.0 + 1e-9, gaps


def test_idle_seed_gets_the_cap_within_two_intervals():
    def idle(rate: float, k: int) -> tuple[float, float, float]:
        return 0.0, 0.0, 0.0
    log = drive(cfg(), idle, 5)
    assert log[1].applied == CAP and log[1].mode is Mode.IDLE_FULL


# --------------------------------------------------------------------------- the climb


def seconds_to(log: list[Tick], rate: float) -> float | None:
    return next((t.now for t in log if t.law_rate >= rate), None)


def raises(log: list[Tick], start: float = FLOOR) -> list[tuple[float, float]]:
    """(from, to) of every raise of the law's rate (a raise may land on an off window's tick)."""
    rates = [start] + [t.law_rate for t in log]
    return [(a, b) for a, b in zip(rates, rates[1:]) if b > a]


@pytest.mark.parametrize("own, effect_at_cap", [
    (0.0, 0.0),        # the transfer costs the seed nothing
    (0.003, 0.0),      # the seed's own slow tokens, none of them the transfer's
    (0.003, 0.002),    # the transfer adds 0.2 % at the cap: 0.5 % there, half the budget
])
def test_with_headroom_the_law_climbs_from_the_floor_to_0_9_of_the_cap_within_12_seconds(own, effect_at_cap):
    # The bench's throttled phases start at the floor and last 25 s; raising x1.25 per 2 s took
    # ~25-30 s to the cap there. Evidence far under the budget doubles the rate per raise.
    log = drive(cfg(), linear(own, effect_at_cap), 30)
    assert seconds_to(log, 0.9 * CAP) <= 12.0, [round(t.law_rate / 1e6, 1) for t in log]
    # Before the fast climb (every raise x1.25) the same plant is still under half the cap at 12 s.
    slow = drive(cfg(ab_fast_raise_factor=1.25, max_raise_factor=1.25), linear(own, effect_at_cap), 30)
    assert max(t.law_rate for t in slow[:12]) < 0.5 * CAP


def test_raises_shrink_to_max_raise_factor_as_the_bound_nears_the_budget():
    # Own 0.5 %, +2 % at the cap: 1 % at 25 MB/s. Far from it the law doubles; within reach of the
    # safe rate every raise is at most x max_raise_factor (or the additive step), never a jump over.
    config = cfg()
    log = drive(config, linear(0.005, 0.02), 60)
    assert max(b / a for a, b in raises(log)) > config.max_raise_factor  # fast far under the budget
    near = [(a, b) for a, b in raises(log) if a >= 15e6]
    assert near and all(b <= max(a * config.max_raise_factor, a + config.step_bytes_per_second) + 1 for a, b in near), near
    assert max(t.law_rate for t in log) <= 30e6


def test_after_a_cut_fast_raises_stop_at_the_rate_the_cut_came_from():
    # Like TCP's slow-start threshold: a rate once shown too high (perhaps after a lucky stretch of
    # evidence) is approached again by near-budget steps only. The transfer costs nothing over 60
    # MB/s and 3 % above (a knee the linear model cannot see coming): the fast climb overshoots once,
    # the cut cascade records where it came from, and later raises never jump past that rate.
    def knee(rate: float, k: int) -> tuple[float, float, float]:
        return 2000.0, 2000.0 * (0.002 + (0.03 if rate > 60e6 else 0.0)), 8.0

    config = cfg()
    log = drive(config, knee, 60)
    first_cut = next(i for i, t in enumerate(log) if t.mode is Mode.CUT)
    cut_from = log[first_cut - 1].law_rate
    assert cut_from > 60e6 and first_cut <= 12

    # A clean seed with a cut remembered at 20 MB/s: doubling up to it, then the near-budget step
    # (x1.25 or + cap/16), though the evidence would allow doubling.
    steps = raises(drive(config, linear(0.002, 0.0), 20, ab_cut_from=20e6, last_cut_at=-100.0))
    assert max(b for a, b in steps if a < 20e6) == pytest.approx(20e6)
    above = [(a, b) for a, b in steps if a >= 20e6]
    assert len(above) >= 3 and all(
        b <= max(a * config.max_raise_factor, a + config.step_bytes_per_second) + 1 for a, b in above), steps


def test_raise_factor_scales_with_the_headroom_left_at_the_current_rate():
    config = cfg()
    far = Estimate(0.004, 0.0, 1e5, 5e6, 0.003, 0.0, 1e5, True)     # +0.1 % at 5 MB/s, 0.65 % left
    mid = Estimate(0.0055, 0.0, 1e5, 5e6, 0.003, 0.0, 1e5, True)    # +0.25 %: sqrt(2.6) = 1.61
    near = Estimate(0.0085, 0.0, 1e5, 5e6, 0.003, 0.0, 1e5, True)   # +0.55 %: the near-budget step
    own_over = Estimate(0.011, 0.0, 1e5, 5e6, 0.0096, 0.0, 1e5, True)  # no headroom left
    assert _raise_factor(far, 5e6, 0.0095, 0.0, config) == 2.0
    assert _raise_factor(mid, 5e6, 0.0095, 0.0, config) == pytest.approx(math.sqrt(0.0065 / 0.0025))
    assert _raise_factor(near, 5e6, 0.0095, 0.0, config) == config.max_raise_factor
    assert _raise_factor(own_over, 5e6, 0.0095, 0.0, config) == config.max_raise_factor
    # Uncertainty counts as excess: the same means with a wide on-share interval step less.
    unsure = Estimate(0.004, 0.002 ** 2, 1e5, 5e6, 0.003, 0.0, 1e5, True)
    assert _raise_factor(unsure, 5e6, 0.0095, 0.0, cfg(confidence_z=1.0)) < 2.0


# --------------------------------------------------------------------------- attribution


def test_the_seeds_own_slow_tokens_are_not_blamed_on_the_transfer():
    # The seed alone uses 80 % of the budget and the transfer adds nothing: the A/B law learns that
    # from its off windows and climbs to the cap. Blaming the seed's own share on the transfer
    # (what a law without the off share does: p_off = 0) would hold it near 0.95/0.8 of the floor.
    log = drive(cfg(), linear(0.008, 0.0), 120)
    assert max(t.law_rate for t in log) == CAP
    assert min(t.law_rate for t in log[60:]) == CAP


def test_the_rate_settles_where_the_transfers_own_excess_fits_the_budget():
    # Own 0.5 %, +2 % at the cap: 1 % at 25 MB/s. With exact shares the law settles near the
    # aim (0.95 x budget) less its off duty's saving, and no higher.
    log = drive(cfg(), linear(0.005, 0.02), 240)
    late = [t.law_rate for t in log[150:] if t.mode is not Mode.PROBE_PAUSE]
    assert 20e6 <= min(late) and max(late) <= 30e6
    applied = [t.applied for t in log[150:]]
    share = sum(0.005 + 0.02 * r / CAP for r in applied) / len(applied)
    assert share <= 0.01


@pytest.mark.parametrize("hold", [True, False])
def test_a_seed_over_its_slo_on_its_own_is_held_at_the_floor(hold):
    # With ab_hold_without_excess too: a seed far over its SLO (3 %, or a stall's 100 %) reads as high with the
    # transfer on as off whatever the transfer costs, so "no excess" is no evidence there.
    log = drive(cfg(ab_hold_without_excess=hold), linear(0.03, 0.0), 30, start_rate=50e6)
    assert log[-1].law_rate == FLOOR and log[-1].mode in (Mode.NOT_OUR_FAULT, Mode.PROBE_PAUSE)
    assert any("with the transfer off" in t.reason for t in log)


# Under the floor (yield_floor_fraction): a GPU seed where even the floor costs more than the budget leaves.
# Own 0.6 %, +12 % at the cap (linear): the floor (5 MB/s) puts the seed at 1.2 %; 2.9 MB/s meets the aim.
GPU_SEED = {"tokens": 40000.0, "running": 64.0}


def share_of(log: list[Tick], own: float, effect_at_cap: float) -> float:
    """The seed's share over the intervals of ``log`` (noise-free, each second's applied rate)."""
    return sum(own + effect_at_cap * t.applied / CAP for t in log) / len(log)


@pytest.mark.parametrize("config, own, effect, under_the_floor, within_budget", [
    ({}, 0.006, 0.12, True, True),                        # the default (0.01)
    ({"yield_floor_fraction": 0.0}, 0.006, 0.12, False, False),   # off: the floor, over the budget
    ({"yield_floor_fraction": 0.05}, 0.006, 0.12, False, False),  # at the floor: off too
    # The floor costs a little (1.2 % -> 0.9 %): no reason to go under it.
    ({"yield_floor_fraction": 0.01}, 0.006, 0.06, False, True),
    # The seed alone over its SLO: the floor (not_our_fault), not under it.
    ({"yield_floor_fraction": 0.01}, 0.012, 0.12, False, False),
])
def test_the_law_goes_under_the_floor_only_where_the_floor_itself_is_clearly_over_the_budget(
        config, own, effect, under_the_floor, within_budget):
    log = drive(cfg(**config), linear(own, effect, **GPU_SEED), 240, start_rate=50e6)
    late = log[60:]
    under = sum(t.law_rate < FLOOR for t in late) / len(late)
    # Under it most of the time (unspent error budget lifts it over the floor now and then), never under 1 %.
    assert (under > 0.5) is under_the_floor and (under == 0) is not under_the_floor
    assert min(t.law_rate for t in late) >= 0.01 * CAP
    assert (share_of(late, own, effect) <= 0.01) is within_budget


@pytest.mark.parametrize("config, lowest", [({"yield_floor_fraction": 0.0}, FLOOR), ({}, 0.01 * CAP)])
def test_a_cut_from_just_over_the_floor_stops_at_the_laws_lowest_rate(config, lowest):
    # +100 % at the cap: the first on interval at 6 MB/s is a clear miss (6.2 % of tokens), and x0.7
    # from 6 MB/s is under the floor. Without yield_floor_fraction the floor holds; with it, the law may
    # go under the floor but never under the yield floor.
    log = drive(cfg(**config), linear(0.002, 1.0, **GPU_SEED), 60, start_rate=6e6)
    assert min(t.law_rate for t in log) >= lowest * (1 - 1e-9)
    assert (min(t.law_rate for t in log) < FLOOR) is (lowest < FLOOR)


def test_a_seed_that_missed_on_its_own_does_not_take_the_law_under_the_floor_when_it_recovers():
    # The agent's view of a seed that misses alone (tests/unit/test_agent_qos_state.py): 20 s at 20 % of its
    # tokens over the SLO with no chunk reads, 20 s more with the fork reading at the floor (not_our_fault),
    # then 70 s back at 0.5 % while the fork reads nothing. The on intervals of the miss read 20 % at the
    # floor; taken for the transfer's cost they took the law under the floor for the seed's own past.
    config = cfg()
    state, law_rates = initial_state(config, now=0.0), []
    for k, (share, reading) in enumerate([(0.2, False)] * 20 + [(0.2, True)] * 20 + [(0.005, False)] * 70):
        obs = Observation(itl=window(2000.0, 2000.0 * share), ttft=None, running=8.0, queued=0.0,
                          transfer_active=reading, span_seconds=1.0)
        state = decide(state, obs, config, SLO, now=float(k + 1)).state
        law_rates.append(state.rate_bytes_per_second)
    assert state.ab_seed_over_at > 20
    assert min(law_rates) >= FLOOR * (1 - 1e-9)


def test_under_the_floor_the_rate_climbs_back_when_the_seed_has_room_again():
    # 120 s where the floor itself is over the budget, then the transfer's effect drops to +1 % at the cap
    # (the decode load lightened; 35 MB/s meets the aim): the law leaves the yield floor and climbs past
    # the floor again.
    heavy, light = linear(0.006, 0.12, **GPU_SEED), linear(0.006, 0.01, **GPU_SEED)
    log = drive(cfg(yield_floor_fraction=0.01), lambda rate, k: (heavy if k < 120 else light)(rate, k), 300,
                start_rate=50e6)
    assert sum(t.law_rate < FLOOR for t in log[60:120]) > 30 and min(t.law_rate for t in log[260:]) > 3 * FLOOR


def test_ttft_over_its_budget_with_the_transfer_limits_the_rate_too():
    # ITL is clean; TTFT requests miss only with the transfer on: the TTFT model sets the rate.
    def ttft(rate: float, k: int) -> tuple[float, float]:
        return 400.0, 400.0 * (0.002 + 0.05 * rate / CAP)
    log = drive(cfg(), linear(0.001, 0.0), 150, slo=TTFT_SLO, ttft=ttft)
    late = [t.law_rate for t in log[100:]]
    # 1 % of requests at 16 MB/s; the ITL alone would allow the cap.
    assert max(late) < 25e6
    assert any(t.reason.startswith("TTFT") or "TTFT" in t.reason for t in log[100:])


# --------------------------------------------------------------------------- reaction


def test_a_clear_spike_cuts_on_its_first_interval_and_an_off_window_follows():
    base = linear(0.002, 0.005)

    def plant(rate: float, k: int) -> tuple[float, float, float]:
        tokens, slow, running = base(rate, k)
        return (tokens, 0.3 * tokens, running) if k >= 60 else (tokens, slow, running)

    log = drive(cfg(), plant, 63)
    before, spike = log[59], log[60]
    assert before.law_rate > 2 * FLOOR
    assert spike.mode is Mode.CUT and spike.applied <= 0.5 * before.law_rate  # the tick that sees it
    assert "clear miss" in spike.reason
    assert log[61].mode is Mode.PROBE_PAUSE  # then learn whether the seed misses on its own


def test_a_load_change_that_is_no_spike_forgets_the_old_evidence_within_the_change_window():
    # Own 0.3 %, a small effect; then the transfer's effect jumps tenfold (a heavier load): the share
    # at the current rate rises to ~3 %, each second only a few sigmas over budget.
    def plant(rate: float, k: int) -> tuple[float, float, float]:
        effect = 0.01 if k < 90 else 0.1
        return linear(0.003, effect, tokens=2000, running=16)(rate, k)

    log = drive(cfg(), plant, 110)
    before = log[89].law_rate
    reacted = [t for t in log[90:] if t.mode is Mode.CUT]
    assert reacted and reacted[0].now - 90 <= cfg().change_window_seconds + 1
    assert min(t.law_rate for t in log[95:]) < 0.5 * before


def one_bad_second(at: int, base: Plant, share: float = 0.12) -> Plant:
    """``base`` with one second of the seed's own at ``at``: ``share`` of its tokens slow, whatever the rate."""
    def plant(rate: float, k: int) -> tuple[float, float, float]:
        tokens, slow, running = base(rate, k)
        return (tokens, max(slow, share * tokens), running) if k == at else (tokens, slow, running)
    return plant


def test_an_isolated_spike_cuts_at_once_then_is_left_out_of_the_attribution():
    # The seed's own bad second (v10's bursty seed: 12 % in one second at 82 MB/s): the law cuts on
    # it, and once the change window shows the old load, it keeps its evidence and climbs back.
    log = drive(cfg(), one_bad_second(60, linear(0.002, 0.002, running=16)), 90)
    before, spike = log[59], log[60]
    assert before.law_rate >= 0.9 * CAP
    assert spike.mode is Mode.CUT and spike.applied <= 0.5 * before.law_rate
    assert not any(t.mode is Mode.NOT_OUR_FAULT for t in log[60:])
    # No raise while it may be a new load (the change window, 5 s), then back to the cap at once.
    assert not raises(log[60:65], start=spike.law_rate)
    assert seconds_to(log[60:], 0.9 * CAP) == 66.0
    # The rule until session 25 forgets everything on the spike and stays lower for longer.
    old = drive(cfg(ab_confirm_spikes=False, ab_isolate_episodes=False), one_bad_second(60, linear(0.002, 0.002,
                                                                                                 running=16)), 90)
    assert sum(t.law_rate for t in log[60:]) > 1.2 * sum(t.law_rate for t in old[60:])


def test_an_isolated_spike_stays_in_the_error_budget():
    from throttle.controller import _ab_target
    law = cfg()
    steady = [Sample(float(t), 0.0 if t % 5 == 0 else 40e6, t % 5 != 0, 14.0 if t % 5 == 0 else 16.0, 2000.0, 16.0)
              for t in range(1, 61)]  # the seed alone at 0.7 %, 0.8 % with the transfer at 40 MB/s
    spiked = steady + [Sample(61.0, 40e6, True, 240.0, 2000.0, 16.0)]  # 12 % in one second

    def allowed_and_rate(samples, isolated):
        rate, summary, _, _ = _ab_target(tuple(samples), 0.01, law, 0.05, law.min_observations, 61.0, 40e6,
                                         tuple(samples), isolated=isolated)
        return float(summary.split("allowed ")[1].split("%")[0]), rate

    (clean_allowed, clean_rate), (kept_allowed, kept_rate), (left_out_allowed, left_out_rate) = (
        allowed_and_rate(steady, ()), allowed_and_rate(spiked, ()), allowed_and_rate(spiked, (61.0,)))
    # Left out of the attribution: the safe rate is the one without the spike, not the one blaming it.
    # Blamed on the transfer, the spike sends the rate to the floor; left out, the rate is the one the
    # evidence supports, lowered only by the budget the spike spent (measured: cap, floor, 44 MB/s).
    assert kept_rate == FLOOR < 4 * FLOOR < left_out_rate < clean_rate
    assert left_out_allowed == kept_allowed < clean_allowed  # its slow tokens still spend the budget


@pytest.mark.parametrize("follow", ["second spike", "heavier load"])
def test_a_spike_that_a_new_load_follows_forgets_the_old_evidence(follow):
    # A spike then a heavier load: another clear miss within the window, or on intervals the old
    # model cannot explain. The law forgets the old evidence, as it did on every spike before.
    def plant(rate: float, k: int) -> tuple[float, float, float]:
        if k < 60:
            return linear(0.002, 0.002, running=16)(rate, k)
        if k == 60 or (follow == "second spike" and k == 61):
            return 2000.0, 0.3 * 2000, 16.0
        return linear(0.003, 0.1, running=16)(rate, k)

    log = drive(cfg(), plant, 80)
    assert log[60].mode is Mode.CUT
    assert max(t.law_rate for t in log[66:80]) < 0.5 * log[59].law_rate
    assert not any(t.mode is Mode.RECOVER and t.law_rate > log[60].law_rate for t in log[60:70])


def test_when_a_seed_over_its_slo_on_its_own_recovers_the_rate_climbs_again():
    # A stall makes every token slow, transfer or not (the integration test's injected stall):
    # the law cuts, then learns from an off window that the seed misses alone and holds the floor.
    # When the stall ends the change is detected and the old (bad) evidence forgotten.
    def plant(rate: float, k: int) -> tuple[float, float, float]:
        own = 1.0 if 40 <= k < 60 else 0.003
        return linear(own, 0.005)(rate, k)

    log = drive(cfg(), plant, 110)
    assert log[39].law_rate > 3 * FLOOR
    assert log[40].mode is Mode.CUT
    assert log[58].law_rate == FLOOR and any(t.mode is Mode.NOT_OUR_FAULT for t in log[40:60])
    assert max(t.law_rate for t in log[60:100]) >= 3 * FLOOR


@pytest.mark.parametrize("z, climbs", [(3.0, True), (0.0, False)])
def test_a_seed_back_from_its_own_spell_over_the_slo_is_no_longer_held_at_the_floor(z, climbs):
    # v34 steady run 4: the seeds at 3.5 % on their own for a minute (a slowed host), then back at 0.5 %. The
    # spell's slow tokens stayed in the pools for the evidence horizon: "the seed misses its SLO with the
    # transfer off" for ~50 s, then an error budget repaying them. Noise-free, 12,000 tokens/s at batch 64.
    def plant(rate: float, k: int) -> tuple[float, float, float]:
        return linear(0.035 if k < 60 else 0.005, 0.002, tokens=12000.0, running=64.0)(rate, k)

    log = drive(cfg(ab_own_spell_over_z=z), plant, 150, start_rate=50e6)
    assert log[59].law_rate == FLOOR and log[59].mode in (Mode.NOT_OUR_FAULT, Mode.PROBE_PAUSE)
    back = [t for t in log[60:] if "the seed back within its SLO after its own spell" in t.reason]
    if climbs:
        assert back and back[0].now <= 66
        assert log[89].law_rate >= 0.95 * CAP
    else:
        assert not back and max(t.law_rate for t in log[60:]) == FLOOR   # 90 s after the spell: still the floor


def new_load(effect_after: float) -> Plant:
    """v21's load-change seeds: 32 requests (7,000 tokens/s, 0.05 % alone), then from t = 40 96 requests
    (10,000 tokens/s) whose first 8 s are 4 % slow on their own (the new requests' prefills), then 0.2 %.
    The transfer adds 0.1 % at the cap before the change and ``effect_after`` at the cap after it."""
    def plant(rate: float, k: int) -> tuple[float, float, float]:
        if k < 40:
            tokens, running, own, effect = 7000.0, 32.0, 0.0005, 0.001
        else:
            tokens, running, own, effect = 10000.0, 96.0, 0.04 if k < 48 else 0.002, effect_after
        return tokens, tokens * (own + effect * rate / CAP), running
    return plant


@pytest.mark.parametrize("settle, spell_z, mean_rate_at_least, mean_rate_under", [
    (10.0, 3.0, 0.8 * CAP, math.inf),   # the default: back at the cap once the new load has settled
    (0.0, 0.0, 0.0, 0.4 * CAP),         # the first seconds attributed: on 2-3 % against off 1.5-2 %, near the floor
    (0.0, 3.0, 0.6 * CAP, math.inf),    # attributed, but forgotten as the seed's own spell once it reads 0.2 %
])
def test_a_new_loads_own_first_slow_seconds_are_not_taken_for_the_transfers_cost(settle, spell_z, mean_rate_at_least,
                                                                                 mean_rate_under):
    log = drive(cfg(ab_settle_seconds=settle, ab_own_spell_over_z=spell_z), new_load(0.001), 100)
    assert log[39].law_rate == CAP
    assert min(t.applied for t in log[40:50]) < CAP / 2          # the spike rule still cuts at once
    mean = sum(t.applied for t in log[50:100]) / 50
    assert mean_rate_at_least <= mean < mean_rate_under


def test_where_the_transfer_costs_more_at_the_new_load_the_law_still_finds_its_rate_after_settling():
    # 3 % at the cap at the new load with the seed at 0.2 % alone: the best fixed rate is ~25 MB/s.
    plant = new_load(0.03)
    log = drive(cfg(), plant, 140)
    assert 0.1 * CAP < sum(t.applied for t in log[80:140]) / 60 < 0.4 * CAP
    slow = tokens = 0.0
    for k in range(60, 140):
        n, s, _ = plant(log[k - 1].applied, k)
        slow, tokens = slow + s, tokens + n
    assert slow / tokens <= 0.01


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_on_clustered_noise_near_the_slo_the_share_stays_within_budget(seed):
    # The hard case of issue 16: the seed alone uses 80 % of the budget, every slow step is 16 slow
    # tokens. The A/B law keeps the seed's realized share under budget.
    rng = random.Random(seed)
    plant = noisy(0.008, 0.01, rng)
    slow = tokens = 0.0
    state = initial_state(cfg(), 0.0)
    applied = state.rate_bytes_per_second
    for k in range(300):
        n, s, running = plant(applied, k)
        if k >= 30:
            slow, tokens = slow + s, tokens + n
        d = decide(state, Observation(window(n, s), running=running, queued=0.0, transfer_active=applied > 0,
                                      span_seconds=1.0), cfg(), SLO, now=float(k + 1))
        state, applied = d.state, d.rate_bytes_per_second
    assert slow / tokens <= 0.01


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("field, value", [
    ("law", "pid"),
    ("off_window_seconds", 0.5),
    ("off_every_min_seconds", 1.0),
    ("off_every_max_seconds", 2.0),
    ("off_every_quiet_seconds", 10.0),
    ("quiet_min_tokens_factor", 0.5),
    ("evidence_horizon_seconds", 10.0),
    ("off_horizon_seconds", 60.0),
    ("confidence_z", -1.0),
    ("spike_z", 0.0),
    ("max_raise_factor", 1.0),
    ("ab_fast_raise_factor", 1.1),
    ("ab_max_cut", 1.0),
    ("ab_start_cap_fraction", 1.5),
    ("ab_start_cap_fraction", -0.1),
    ("ab_start_headroom_fraction", 0.0),
    ("budget_aim_fraction", 0.0),
    ("plan_seconds", 0.5),
    ("change_window_seconds", 0.5),
    ("ab_settle_seconds", -1.0),
    ("ab_settle_seconds", 120.0),        # the whole evidence horizon: nothing would ever be attributed
    ("yield_floor_fraction", 1.0),       # at or over floor_fraction is never, but a whole cap is a mistake
    ("yield_floor_fraction", -0.01),
    ("yield_floor_z", -1.0),
])
def test_ab_fields_are_checked_and_named(field, value):
    with pytest.raises(InvalidControllerConfig) as exc:
        cfg(**{field: value})
    assert exc.value.field == field and field in str(exc.value)


# --------------------------------------------------------------------------- where the law starts


def seed_alone(seconds: int, own: float, tokens: float = 2000.0, running: float = 8.0,
               ttft: tuple[float, float] | None = None) -> list[tuple[float, Observation]]:
    """``seconds`` watched intervals of the seed alone (no chunk reads), ending at t = 0."""
    ttft_window = None if ttft is None else WindowHistogram((1.0, math.inf), (ttft[0] - ttft[1], ttft[0]))
    return [(float(k + 1 - seconds), Observation(itl=window(tokens, tokens * own), ttft=ttft_window, running=running,
                                                 queued=0.0, transfer_active=False, span_seconds=1.0))
            for k in range(seconds)]


@pytest.mark.parametrize("watched, own, config, slo, ttft, start", [
    (15, 0.001, {}, SLO, None, 0.5 * CAP),                  # a tenth of the budget alone: cap/2
    (15, 0.0, {}, SLO, None, 0.5 * CAP),                    # nothing slow at all
    (15, 0.0028, {}, SLO, None, 0.5 * CAP),                 # under half of it by a standard error
    # Graded between half the budget and the aim (0.95 %), by the share's upper bound:
    (15, 0.0045, {}, SLO, None, 43.0e6),                    # 0.45 %, 0.58 % by a standard error
    (15, 0.006, {}, SLO, None, 24.5e6),                     # 0.6 %, 0.73 %
    (15, 0.0075, {}, SLO, None, 6.23e6),                    # three quarters of it, 0.89 %: near the floor
    (15, 0.0085, {}, SLO, None, FLOOR),                     # 0.85 %, past the aim by a standard error
    (15, 0.0045, {"ab_start_headroom_fraction": 0.6}, SLO, None, 0.5 * CAP),
    (15, 0.0028, {"ab_start_headroom_fraction": 0.3}, SLO, None, 44.6e6),
    # The rule before 2026-12-05 (session 23): the floor past the headroom fraction; 0.3 before that day.
    (15, 0.0045, {"ab_start_graded": False}, SLO, None, FLOOR),
    (15, 0.0028, {"ab_start_headroom_fraction": 0.3, "ab_start_graded": False}, SLO, None, FLOOR),
    (0, 0.0, {}, SLO, None, FLOOR),                         # never watched: nothing known
    (15, 0.0, {"ab_start_cap_fraction": 0.0}, SLO, None, FLOOR),        # turned off
    (15, 0.0, {"ab_start_cap_fraction": 1.0}, SLO, None, CAP),
    (15, 0.0, {"ab_start_headroom_fraction": 1.0}, SLO, None, 0.5 * CAP),
    (15, 0.0, {}, TTFT_SLO, (40.0, 0.0), 0.5 * CAP),          # TTFT within half its budget too
    (15, 0.0, {}, TTFT_SLO, (40.0, 1.0), FLOOR),              # 2.5 % of first tokens over: the floor
    (15, 0.0, {}, TTFT_SLO, (40.0, 0.2), 13.0e6),             # 0.5 % (0.83 % by a standard error): graded
    (15, 0.0, {"law": "aimd"}, SLO, None, FLOOR),             # the AIMD law starts at the floor
])
def test_entering_adaptive_starts_at_half_the_cap_where_the_seed_alone_leaves_headroom_and_lower_as_it_leaves_less(
        watched, own, config, slo, ttft, start):
    c = cfg(**config)
    state = with_seed_alone_evidence(initial_state(c, now=0.0), seed_alone(watched, own, ttft=ttft), c, slo, now=0.0)
    assert state.rate_bytes_per_second == pytest.approx(start, rel=0.01)


def test_watched_seed_alone_evidence_does_not_force_dense_off_windows():
    # 15 s of 2,000 tokens a second pin the seed's share down: the sparse schedule applies at once.
    c = cfg()
    state = with_seed_alone_evidence(initial_state(c, now=0.0), seed_alone(15, 0.002), c, SLO, now=0.0)
    assert state.dense_until is None
    log = drive(c, linear(0.002, 0.0), 30, ab_ledger_itl=state.ab_ledger_itl, ab_budget_from=0.0,
                start_rate=state.rate_bytes_per_second)
    off = [t.now for t in log if t.mode is Mode.PROBE_PAUSE]
    assert len(off) <= 2, off


def closed_loop(config: ControllerConfig, reads: Callable[[int], bool], own: float, effect_at_cap: float,
                seconds: int, tokens: float = 2000.0) -> list[Tick]:
    """Like :func:`drive`, but the transfer only runs in the seconds where ``reads(k)`` (a fork may not
    have arrived yet): elsewhere the interval is the seed alone, whatever the law's rate."""
    state = initial_state(config, now=0.0)
    applied = state.rate_bytes_per_second
    log: list[Tick] = []
    for k in range(seconds):
        moving = applied if reads(k) else 0.0
        obs = Observation(itl=window(tokens, tokens * min(1.0, own + effect_at_cap * moving / CAP)), running=8.0,
                          queued=0.0, transfer_active=moving > 0, span_seconds=1.0)
        d = decide(state, obs, config, SLO, now=float(k + 1))
        state, applied = d.state, d.rate_bytes_per_second
        log.append(Tick(float(k + 1), applied, d.mode, d.reason, state.rate_bytes_per_second))
    return log


def test_an_agent_adaptive_before_any_fork_starts_the_first_one_at_half_the_cap():
    # Adaptive since boot beside a seed at 0.1 % alone: once min_observations tokens show the
    # headroom, the rate waiting for the first fork is cap/2, not the floor.
    log = closed_loop(cfg(), lambda k: k >= 10, own=0.001, effect_at_cap=0.0, seconds=20)
    assert log[9].law_rate == pytest.approx(0.5 * CAP), [(t.now, t.law_rate, t.reason) for t in log[:10]]
    assert "start at" in next(t.reason for t in log if t.law_rate == 0.5 * CAP)
    assert max(t.law_rate for t in log) >= 0.9 * CAP        # and it climbs on from there


def test_a_start_too_high_is_cut_within_two_intervals_and_never_restarted():
    # The transfer hurts: own 0.1 %, +8 % at the cap (1 % at 11 MB/s). Starting at cap/2 reads
    # 4.1 % in the first interval: a clear miss, halved at once (an off window may follow, to learn
    # whether the seed misses on its own) and again on the next clear miss.
    log = closed_loop(cfg(), lambda k: 10 <= k < 30 or k >= 40, own=0.001, effect_at_cap=0.08, seconds=60)
    first = log[10:13]
    assert first[0].law_rate <= 0.25 * CAP and first[1].law_rate <= 0.125 * CAP, [(t.now, t.law_rate) for t in first]
    # The fork pauses (k 30-39): with no transfer-on evidence in the last seconds, the start rule
    # must not jump back to cap/2; the law has cut since it entered adaptive.
    assert all(t.law_rate < 0.5 * CAP for t in log[11:]), [round(t.law_rate / 1e6, 1) for t in log]


# --------------------------------------------------------------------------- the seed's own share at the on intervals' load


def bursty_samples(confounded: bool) -> tuple[list[Sample], list[Sample]]:
    """A bursty seed (busy: batch 24, 0.6 % alone; quiet: batch 6, 0.3 % alone) and a transfer at
    5 MB/s that adds nothing. Confounded: 80 % of the on intervals fall in busy spells and 80 % of
    the off ones in quiet spells (a chunk read slowed by a busy seed holds its lease into the next
    interval); else both see the same mix."""
    busy_on, quiet_on = (8, 2) if confounded else (5, 5)
    busy_off, quiet_off = (2, 8) if confounded else (5, 5)
    on = ([Sample(1.0, 5e6, True, 60.0, 10_000.0, 24.0)] * (busy_on * 10)
          + [Sample(1.0, 5e6, True, 6.0, 2_000.0, 6.0)] * (quiet_on * 10))
    off = ([Sample(1.0, 0.0, False, 60.0, 10_000.0, 24.0)] * (busy_off * 10)
           + [Sample(1.0, 0.0, False, 6.0, 2_000.0, 6.0)] * (quiet_off * 10))
    return on, off


def unmatched(samples: list[Sample]) -> list[Sample]:
    from dataclasses import replace
    return [replace(s, batch=16.0) for s in samples]   # one load class: the pooled comparison


@pytest.mark.parametrize("confounded", [True, False])
def test_the_transfer_is_not_blamed_for_the_busy_spells_its_reads_fell_in(confounded):
    on, off = bursty_samples(confounded)
    est = estimate(on, off, min_tokens=1000)
    assert est.excess == pytest.approx(0.0, abs=1e-4)
    safe = safe_rate(est, budget=0.0095, duty_off=0.05, z=1.0, floor=FLOOR, cap=CAP)
    assert safe >= 0.5 * CAP
    if confounded:
        # Against the pooled off share the same evidence reads as +0.12 % at 5 MB/s, and the law
        # would stop at a fifth of the cap.
        pooled = estimate(unmatched(on), unmatched(off), min_tokens=1000)
        assert pooled.excess > 0.001
        assert safe_rate(pooled, budget=0.0095, duty_off=0.05, z=1.0, floor=FLOOR, cap=CAP) < 0.25 * CAP


def test_one_load_class_is_the_plain_pooled_comparison():
    on = [Sample(1.0, 5e6, True, 15.0, 2_000.0, 16.0)] * 10
    off = [Sample(1.0, 0.0, False, 10.0, 2_000.0, 17.0)] * 10
    est = estimate(on, off, min_tokens=1000)
    assert est.p_off_matched is None and est.var_matching == 0.0
    assert est.excess == pytest.approx(0.0075 - 0.005)


def test_a_load_class_with_too_few_off_tokens_falls_back_to_the_pooled_off_share():
    on = [Sample(1.0, 5e6, True, 30.0, 2_000.0, 64.0)] * 10       # on at batch 64: no off evidence there
    off = [Sample(1.0, 0.0, False, 10.0, 2_000.0, 8.0)] * 10
    est = estimate(on, off, min_tokens=1000)
    assert est.p_off_matched == pytest.approx(est.p_off) and est.excess == pytest.approx(0.015 - 0.005)


def _first_fork(config: ControllerConfig) -> ControllerState:
    """A fork at 4,000 tokens/s (batch 12, 0.4 % alone, the transfer harmless) from t = 0 for 60 s: the law at
    t = 60."""
    state = initial_state(config, now=0.0)
    applied = state.rate_bytes_per_second
    for k in range(60):
        obs = Observation(itl=window(4000.0, 16.0), running=12.0, queued=0.0, transfer_active=applied > 0,
                          span_seconds=1.0)
        d = decide(state, obs, config, SLO, now=float(k + 1))
        state, applied = d.state, d.rate_bytes_per_second
    return state


def _two_forks(config: ControllerConfig, gap_load: tuple[float, float, float], gap_seconds: int = 15):
    """:func:`_first_fork`, ``gap_seconds`` of the seed alone at ``gap_load`` (tokens, slow, running) with the law
    ticking, then the next fork's first reads at that load: (the law's rate at the end of the first fork, the
    state before the second, the second's first decision)."""
    state = _first_fork(config)
    end_of_first = state.rate_bytes_per_second
    tokens, slow, running = gap_load
    for k in range(60, 60 + gap_seconds):
        obs = Observation(itl=window(tokens, slow), running=running, queued=0.0, transfer_active=False,
                          span_seconds=1.0)
        state = decide(state, obs, config, SLO, now=float(k + 1)).state
    now = float(60 + gap_seconds + 1)
    first = decide(state, Observation(itl=window(tokens, slow), running=running, queued=0.0, transfer_active=True,
                                      span_seconds=1.0), config, SLO, now=now)
    return end_of_first, state, first


def test_a_fork_after_a_gap_at_another_load_forgets_the_older_evidence_and_starts_as_on_entering():
    # An agent that stays adaptive keeps its evidence across forks; where the seed's load changed in the gap (the
    # batch tripled) the older load's rate is no start for the new one (docs/qos.md "A second fork").
    end_of_first, before, first = _two_forks(cfg(), (12000.0, 72.0, 36.0))
    assert end_of_first == CAP
    assert first.mode is Mode.CUT and first.rate_bytes_per_second < 0.5 * CAP
    assert "a fork after 15 s without reads, the seed at another load" in first.reason
    assert first.state.ab_evidence_from == 60.0 and first.state.ab_budget_from == 75.0
    # The rule off (ab_gap_seconds=0): the second fork starts at the cap, on the first fork's evidence.
    _, _, unchecked = _two_forks(cfg(ab_gap_seconds=0), (12000.0, 72.0, 36.0))
    assert unchecked.rate_bytes_per_second == CAP and "a fork after" not in unchecked.reason


def test_a_fork_after_a_gap_at_the_same_load_keeps_the_evidence_but_not_the_gaps_savings():
    # The gap's seconds are the seed alone, not budget the transfer saved: the error budget counts from the fork.
    _, before, first = _two_forks(cfg(), (4000.0, 16.0, 12.0))
    assert first.rate_bytes_per_second == CAP and "a fork after" not in first.reason
    assert first.state.ab_evidence_from == before.ab_evidence_from
    assert before.ab_budget_from < 60.0 and first.state.ab_budget_from == 75.0
    # A gap shorter than ab_gap_seconds is the law's own: nothing restarts.
    _, before, first = _two_forks(cfg(), (4000.0, 16.0, 12.0), gap_seconds=5)
    assert first.state.ab_budget_from == before.ab_budget_from
    # Nor under the floor, where the law's own reads may come a minute apart and its budget repays an overspend.
    from dataclasses import replace
    _, before, _ = _two_forks(cfg(), (4000.0, 16.0, 12.0))
    yielding = replace(before, rate_bytes_per_second=0.5 * FLOOR)
    reads = Observation(itl=window(4000.0, 16.0), running=12.0, queued=0.0, transfer_active=True, span_seconds=1.0)
    assert decide(yielding, reads, cfg(), SLO, now=76.0).state.ab_budget_from == before.ab_budget_from


def _fork_over_a_lull(config: ControllerConfig, back_load: tuple[float, float, float], idle_seconds: int = 6,
                      ramp: tuple[int, float] = (0, 0.0), reasons: list[str] | None = None):
    """:func:`_first_fork`, the seed idle for ``idle_seconds`` (the fork reading at the cap), its load back at
    ``back_load`` (tokens, slow, running) for 15 s with no fork, then the next fork's first reads: (the state 4 s
    and 5 s after the load came back, at t = 67, the state before the next fork, the next fork's first decision).
    ``ramp``: (seconds, slow): the load's first seconds back have that many slow tokens instead. ``reasons``: gets
    every decision's reason from the idle spell on."""
    state, t = _first_fork(config), 60.0

    def tick(tokens: float, slow: float, running: float, active: bool):
        nonlocal state, t
        t += 1.0
        d = decide(state, Observation(itl=window(tokens, slow), running=running, queued=0.0, transfer_active=active,
                                      span_seconds=1.0), config, SLO, now=t)
        state = d.state
        if reasons is not None:
            reasons.append(d.reason)
        return d

    assert state.rate_bytes_per_second == CAP
    for _ in range(idle_seconds):
        tick(0.0, 0.0, 0.0, True)
    judged = []
    tokens, slow, running = back_load
    for k in range(15):
        tick(tokens, ramp[1] if k < ramp[0] else slow, running, False)
        if k in (4, 5):
            judged.append(state)
    before = state
    return judged, before, tick(*back_load, True)


def test_a_lull_of_the_same_load_gives_the_evidence_back_and_a_new_load_does_not():
    # A load back after idle is first a new load (the evidence forgotten at the return, at t = 67); once the
    # change window (5 s) of it is seen at the batch the evidence had, it was a lull, and the evidence comes back
    # less the seconds since the return (docs/qos.md "A lull").
    (waiting, judged), before, first = _fork_over_a_lull(cfg(), (4000.0, 16.0, 12.0))
    assert waiting.ab_evidence_from == 67.0 and waiting.ab_lull is not None
    assert judged.ab_evidence_from == -math.inf and judged.ab_lull is None
    assert judged.ab_isolated == (68.0, 69.0, 70.0, 71.0, 72.0)
    assert min(s.at for s in first.state.ab_itl) < 60.0 and first.state.ab_budget_from == 81.0
    # The rule off: the evidence stays forgotten.
    (_, judged), _, first = _fork_over_a_lull(cfg(ab_keep_evidence_over_lulls=False), (4000.0, 16.0, 12.0))
    assert judged.ab_evidence_from == 67.0 and min(s.at for s in first.state.ab_itl) > 67.0
    # Another batch class back (36 running, not 12): a new load, forgotten for good; the next fork starts as
    # after a gap at another load.
    (_, judged), _, first = _fork_over_a_lull(cfg(), (12000.0, 72.0, 36.0))
    assert judged.ab_evidence_from == 67.0 and judged.ab_lull is None and judged.ab_isolated == ()
    assert "a fork after 21 s without reads, the seed at another load" in first.reason


def test_a_load_ramping_up_after_a_lull_is_left_out_until_it_reads_as_the_seed_again():
    # A load back after idle arrives at once and is slow for longer than the change window the lull is judged
    # in (v29 near-slo: ~7 % for 11 s, the seeds' steady share 0.3-0.5 %). Its seconds after the judgment were
    # the seed alone in the off pool, and held the next fork at the floor. Here: 11 s at 7 % (0.4 % steady).
    ramp, reasons = (11, 280.0), []
    _, before, first = _fork_over_a_lull(cfg(), (4000.0, 16.0, 12.0), ramp=ramp, reasons=reasons)
    # The agent's reason says so while it lasts (t = 73-81).
    assert sum("the load back after idle still ramping up" in r and "SE over the evidence): left out" in r
               for r in reasons) == 9
    # Left out up to the first change window that reads as the seed before the idle spell (the ramp's last
    # second is t = 77; the window to t = 81 still holds it); the next fork's law reads the seed at 0.4 % alone
    # and climbs (the ramp's first 5 s, before the judgment, had put it at the floor).
    assert before.ab_isolated == tuple(float(t) for t in range(68, 82)) and before.ab_ramp_until == 97.0
    assert first.mode is Mode.PROBE_PAUSE and first.state.ab_ramp_until == -math.inf
    assert "off 0.40% of 16000" in first.reason and "-> 1.12e+07 B/s" in first.reason
    # Without the ramp rule: the floor, the seed taken to miss its SLO on its own (and without
    # ab_own_spell_over_z, which forgets the ramp once the load reads 0.4 % again: the ramp rule's case alone).
    _, before, first = _fork_over_a_lull(cfg(ab_lull_ramp_seconds=0, ab_own_spell_over_z=0), (4000.0, 16.0, 12.0),
                                         ramp=ramp)
    assert before.ab_isolated == (68.0, 69.0, 70.0, 71.0, 72.0)
    assert "the seed misses its SLO with the transfer off" in first.reason and "off 2.94% of 52000" in first.reason
    assert first.state.rate_bytes_per_second == cfg().floor_bytes_per_second
    # No ramp: the judgment's seconds only, as before the rule.
    _, before, _ = _fork_over_a_lull(cfg(), (4000.0, 16.0, 12.0))
    assert before.ab_isolated == (68.0, 69.0, 70.0, 71.0, 72.0)


def test_a_fork_after_a_lull_restarts_the_error_budget_with_the_rule_on_or_off():
    # The gap is sought in the ledger: the load back after idle forgot the evidence, and with it the first
    # fork's last reads, so the gap's seconds alone were spent as savings by the next fork (plant model: within
    # the budget 523 of 780 second forks, against 764 with the gap found).
    for keep in (True, False):
        _, before, first = _fork_over_a_lull(cfg(ab_keep_evidence_over_lulls=keep), (4000.0, 16.0, 12.0))
        assert before.ab_budget_from < 60.0 and first.state.ab_budget_from == 81.0


def test_ab_gap_seconds_is_0_or_longer_than_an_off_window():
    assert cfg(ab_gap_seconds=0).ab_gap_seconds == 0
    with pytest.raises(InvalidControllerConfig, match="ab_gap_seconds"):
        cfg(ab_gap_seconds=1.5)


def _fork_after_a_stale_bad_watch(config: ControllerConfig) -> list[Tick]:
    """240 s of the seed alone watched (10,000 tokens/s at 64 in flight): the first 180 s at 3 % over the SLO (its
    bad minutes), the last 60 s at 0.4 %; then an 80 s fork, the seed at 0.4 % whatever the rate: every tick."""
    watched = [(float(k - 239), Observation(itl=window(10000.0, 300.0 if k < 180 else 40.0), running=64.0, queued=0.0,
                                            transfer_active=False, span_seconds=1.0)) for k in range(240)]
    state = with_seed_alone_evidence(initial_state(config, now=0.0), watched, config, SLO, now=0.0)
    return drive(config, lambda rate, k: (10000.0, 40.0, 64.0), 80, start=state)


def test_off_intervals_the_on_intervals_contradict_give_way_to_the_recent_ones():
    # The transfer does not speed a seed up, so on intervals far under the off pool say the pool is not the seed
    # as it is now: the seed's bad minutes, long past but inside the off horizon, held a kept law at the floor
    # for a whole run (v29 near-slo run 3). With ab_stale_off_z the off pool shrinks to the on pool's span.
    shrunk = _fork_after_a_stale_bad_watch(cfg())
    assert shrunk[0].mode is Mode.NOT_OUR_FAULT   # the last 120 s still hold 60 s of the bad minutes
    assert "off from the last 120 s only (the whole off pool read 2.35%" in shrunk[0].reason
    assert all(d.mode is not Mode.NOT_OUR_FAULT for d in shrunk[45:])
    assert shrunk[-1].applied >= 0.95 * CAP
    assert sum(d.applied for d in shrunk) / len(shrunk) > 0.4 * CAP
    # The rule off: the whole off horizon (300 s) says the seed misses its SLO on its own, the fork through
    # (ab_own_spell_over_z off too: it forgets the bad minutes once the seed reads as it is).
    whole = _fork_after_a_stale_bad_watch(cfg(ab_stale_off_z=0, ab_own_spell_over_z=0))
    assert all(d.mode is Mode.NOT_OUR_FAULT and d.applied <= cfg().floor_bytes_per_second
               for d in whole if d.applied > 0)


UNDER = Estimate(0.0044, 0.0022 ** 2, 6e4, 5e6, 0.0081, 0.0005 ** 2, 2.2e5, True)   # on 0.44 % at the floor, off 0.81 %


@pytest.mark.parametrize("est, rate, z, pool_own, expected", [
    (UNDER, 5e6, 1.0, False, 0.0081),            # the fit's bound (0.44 + 0.22 %) is under the off share: that
    (UNDER, 100e6, 1.0, False, 0.0081),          # above the on rate the shortfall is not extrapolated
    (UNDER, 5e6, 2.0, False, 0.0088),            # 0.44 + 2 x 0.22 %: the fit's bound, over the off share
    (UNDER, 5e6, -1.0, False, None),             # a lower bound (the yield check's) is the clamped one
    (UNDER, 5e6, 1.0, True, None),               # ab_pool_own_share's own reading of the same case
    (Estimate(0.012, 0.0022 ** 2, 6e4, 5e6, 0.0081, 0.0005 ** 2, 2.2e5, True), 5e6, 1.0, False, None),  # an excess
    (Estimate(0.0044, 0.0022 ** 2, 6e4, 5e6, 0.0, 0.0, 10.0, False), 5e6, 1.0, False, None),  # no off pool
])
def test_the_signed_bound_reads_an_on_pool_under_the_off_pool_as_evidence(est, rate, z, pool_own, expected):
    clamped = overall_share(est, rate, 0.0, z, pool_own=pool_own)
    signed = overall_share(est, rate, 0.0, z, pool_own=pool_own, signed=True)
    assert signed == pytest.approx(clamped if expected is None else expected, abs=1e-9)
    assert signed <= clamped


def test_the_signed_bound_is_a_tuning_the_law_reads_on_by_default():
    # A seed at 0.8 % on its own whose transfer-on seconds read 0.5 %, from the floor. Clamped, the bound
    # at the floor is the off share plus the on pool's sigma, over what the error budget allows until
    # enough on tokens shrink that sigma (the cap at 22 s, measured); signed, the on pool's shortfall
    # counts against an excess from the first seconds (at 12 s).
    assert seconds_to_cap(cfg(ab_signed_excess_bound=False), 0.005, 0.008) >= 20
    assert seconds_to_cap(cfg(), 0.005, 0.008) <= 14


@pytest.mark.parametrize("own, effect_at_cap, hold, lowest", [
    (0.0097, 0.0, False, FLOOR),     # under the budget, over its aim (0.95 %): the floor's bound is over it
    (0.0097, 0.0, True, 40e6),       # ... but the transfer shows no excess: held at its rate
    (0.0097, 0.004, True, FLOOR),    # an excess (0.16 % at 40 MB/s): cut to the floor with the flag too
    (0.013, 0.0, True, FLOOR),       # the seed clearly over its budget alone: the floor, with the flag too
])
def test_the_law_holds_its_rate_where_the_seeds_own_share_binds_and_the_transfer_shows_none(
        own, effect_at_cap, hold, lowest):
    # Noise-free shares, the seed watched alone for 15 s before a fork at 40 MB/s: where the transfer adds
    # nothing the on intervals read exactly the off share.
    config = cfg(ab_hold_without_excess=hold)
    start = with_seed_alone_evidence(initial_state(config, now=0.0), seed_alone(15, own), config, SLO, now=0.0)
    ticks = drive(config, linear(own, effect_at_cap), 60, start=start, start_rate=40e6)
    assert min(t.law_rate for t in ticks[10:]) == pytest.approx(lowest, rel=1e-6)
    assert max(t.law_rate for t in ticks) <= 40e6 + 1e-6   # held, never raised: the seed's own share binds


# --------------------------------------------------------------------------- whole chunks under one a second


def drive_chunks(config: ControllerConfig, own: float, effect_at_cap: float, chunk: float, seconds: int,
                 tokens: float = 20_000.0, running: float = 64.0,
                 tell_granted: bool = True) -> tuple[list[float], list[float]]:
    """Closed loop with whole chunks, as the agent's pay-first bucket grants them (the plant model's
    :func:`~sim.qos_plant.whole_chunks`): a chunk when the rate has paid for it, so under one chunk a second
    most intervals read nothing (transfer-off) and the others a whole chunk, whose cost (noise-free:
    ``effect_at_cap`` x bytes moved / cap) falls in that interval. Returns the bytes moved and the share of slow
    tokens, per second."""
    state = initial_state(config, now=0.0)
    applied, credit = state.rate_bytes_per_second, 0.0
    moved_each, shares = [], []
    for k in range(seconds):
        credit, chunks = whole_chunks(credit, applied, chunk)
        moved = chunks * chunk
        share = min(1.0, own + effect_at_cap * moved / CAP)
        obs = Observation(itl=window(tokens, tokens * share), running=running, queued=0.0,
                          transfer_active=moved > 0, span_seconds=1.0, granted_bytes=moved if tell_granted else None)
        d = decide(state, obs, config, SLO, now=float(k + 1))
        state, applied = d.state, d.rate_bytes_per_second
        moved_each.append(moved)
        shares.append(share)
    return moved_each, shares


def test_estimate_charges_the_excess_to_the_bytes_moved_where_the_sample_tells_them():
    # 1 MB/s in force, an 8 MiB chunk every ~8 s: each on interval moved 8.4 MB.
    on = [Sample(float(t), 1e6, True, 30.0, 1000.0, 8.0, moved=8.4e6) for t in range(5)]
    off = [Sample(float(t), 0.0, False, 5.0, 1000.0, 8.0) for t in range(5, 40)]
    by_moved = estimate(on, off, min_tokens=200)
    by_rate = estimate([replace(s, moved=None) for s in on], off, min_tokens=200)
    assert (by_moved.r_on, by_rate.r_on) == (8.4e6, 1e6)
    # The same excess (+2.5 %) per interval: charged to 8.4 MB/s it allows 8.4x the rate that 1 MB/s does.
    allowed = [safe_rate(e, budget=0.01, duty_off=0.0, z=0.0, floor=1e5, cap=CAP) for e in (by_moved, by_rate)]
    assert allowed[0] == pytest.approx(8.4 * allowed[1], rel=0.01)


@pytest.mark.parametrize("effect_at_cap", [0.05, 0.025])
def test_under_one_chunk_a_second_the_law_charged_with_the_bytes_granted_finds_the_rate_the_budget_allows(
        effect_at_cap):
    # The seed alone 0.5 %, the transfer +effect_at_cap at the cap: the budget's 0.5 % of headroom allows
    # 0.005 / effect_at_cap of the cap (10 and 20 MB/s), which 32 MiB chunks move one every 3.4 and 1.7 s.
    chunk = 32 * 2**20
    best = 0.005 / effect_at_cap * CAP
    runs = {"rate": drive_chunks(cfg(), 0.005, effect_at_cap, chunk, 300),
            "bytes": drive_chunks(cfg(ab_rate_of_granted=True), 0.005, effect_at_cap, chunk, 300)}
    rate = {name: sum(moved) / len(moved) for name, (moved, _) in runs.items()}
    share = {name: sum(shares) / len(shares) for name, (_, shares) in runs.items()}
    # Charged to the rate in force, every on interval reads a whole chunk's cost as if the run paid it every
    # second: the law holds a fraction of the rate the budget allows (0.17-0.24x here).
    assert rate["rate"] < 0.3 * best
    # Charged to the bytes granted, it moves most of it (0.86-0.87x here), and the seed stays within the budget.
    assert rate["bytes"] >= 0.8 * best
    assert share["bytes"] <= SLO.violation_budget


def test_the_bytes_granted_are_read_only_where_the_law_is_told_to():
    chunk = 32 * 2**20
    # Off (the default), the law decides the same whether the agent tells the bytes or not ...
    assert cfg().ab_rate_of_granted is False
    assert (drive_chunks(cfg(), 0.005, 0.05, chunk, 120)
            == drive_chunks(cfg(), 0.005, 0.05, chunk, 120, tell_granted=False))
    # ... and on, without them it has nothing to read and charges the rate in force, as off.
    assert (drive_chunks(cfg(ab_rate_of_granted=True), 0.005, 0.05, chunk, 120, tell_granted=False)
            == drive_chunks(cfg(), 0.005, 0.05, chunk, 120))
    assert drive_chunks(cfg(ab_rate_of_granted=True), 0.005, 0.05, chunk, 120) != drive_chunks(cfg(), 0.005, 0.05,
                                                                                                 chunk, 120)
