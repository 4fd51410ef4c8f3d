"""throttle.histogram: windows between scrapes, PromQL quantiles, tail fractions."""

from __future__ import annotations

import doctest
import math

import pytest

import throttle.histogram as histogram_module
from throttle.histogram import (
    CumulativeHistogram,
    HistogramError,
    Reset,
    WindowHistogram,
    empty_window,
    fraction_above,
    observations,
    pool,
    quantile,
    window,
)

INF = math.inf
B4 = (0.01, 0.02, 0.04, INF)


def cum(counts, bounds=B4, **kw) -> CumulativeHistogram:
    return CumulativeHistogram(bounds, counts, **kw)


def win(counts, bounds=B4) -> WindowHistogram:
    return WindowHistogram(bounds, counts)


def test_docstring_examples():
    assert doctest.testmod(histogram_module).failed == 0


# --- quantile: hand-computed PromQL histogram_quantile values -----------------

@pytest.mark.parametrize(
    "bounds, counts, q, expected",
    [
        # rank 50 = whole first bucket: exactly its upper bound
        (B4, (50, 80, 100, 100), 0.5, 0.01),
        # rank 25 in the first bucket: lower bound 0 since 0.01 > 0 -> 0.01*25/50
        (B4, (50, 80, 100, 100), 0.25, 0.005),
        # rank 80 = exactly le=0.02: 0.01 + 0.01*(30/30)
        (B4, (50, 80, 100, 100), 0.8, 0.02),
        # rank 90 in (0.02, 0.04]: 0.02 + 0.02*(10/20)
        (B4, (50, 80, 100, 100), 0.9, 0.03),
        # rank 99: 0.02 + 0.02*(19/20)
        (B4, (50, 80, 100, 100), 0.99, 0.039),
        # q = 1: rank N is reached at le=0.04
        (B4, (50, 80, 100, 100), 1.0, 0.04),
        # rank in the +Inf bucket: highest finite bound
        ((0.01, 0.02, INF), (10, 20, 100), 0.99, 0.02),
        ((0.01, 0.02, INF), (10, 20, 100), 0.5, 0.02),
        # empty lower buckets are skipped: rank 5 in (0.02, 0.04] -> 0.02 + 0.02*(5/10)
        (B4, (0, 0, 10, 10), 0.5, 0.03),
        # first bound <= 0: the bound itself, no interpolation
        ((0.0, 1.0, INF), (60, 100, 100), 0.5, 0.0),
        ((-1.0, 1.0, INF), (60, 100, 100), 0.5, -1.0),
        # interpolation right above a non-positive first bound: -1 + 2*(10/40)
        ((-1.0, 1.0, INF), (60, 100, 100), 0.7, -0.5),
        # q = 0 with observations in the first bucket -> its lower bound 0
        (B4, (5, 5, 5, 5), 0.0, 0.0),
        # SGLang's coarse ITL buckets: 1000 tokens, 98.5% <= 40 ms, rest in (40, 60]:
        # rank 990 -> 0.04 + 0.02*(5/15)
        ((0.035, 0.04, 0.06, 0.08, INF), (900, 985, 1000, 1000, 1000), 0.99, 0.04 + 0.02 * 5 / 15),
    ],
)
def test_quantile_matches_promql(bounds, counts, q, expected):
    assert quantile(win(counts, bounds), q) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "counts, q",
    [
        ((0, 0, 0, 0), 0.99),  # N = 0: no signal, never 0
        ((0, 0, 0, 0), 0.5),
        ((0, 3, 3, 3), 0.0),  # rank 0 in an empty first bucket: Go's 0/0
    ],
)
def test_quantile_without_signal_is_nan(counts, q):
    assert math.isnan(quantile(win(counts), q))


@pytest.mark.parametrize("q", [-0.1, 1.01, math.nan])
def test_quantile_rejects_out_of_range_q(q):
    with pytest.raises(HistogramError, match="q must be in"):
        quantile(win((1, 1, 1, 1)), q)


# --- window ------------------------------------------------------------------

def test_window_is_per_bucket_delta():
    w = window(cum((10, 20, 30, 30), count=30, sum=0.5), cum((60, 150, 200, 200), count=200, sum=3.0))
    assert isinstance(w, WindowHistogram)
    assert w.cumulative == (50, 130, 170, 170)
    assert observations(w) == 170
    assert w.sum == pytest.approx(2.5)


def test_window_of_label_sets_summed():
    # Two label sets (e.g. two model_name values) summed per bound before and after.
    a1, b1 = (1, 2, 3, 3), (10, 10, 20, 20)
    a2, b2 = (5, 8, 9, 9), (10, 30, 40, 40)
    prev = cum(tuple(x + y for x, y in zip(a1, b1)))
    cur = cum(tuple(x + y for x, y in zip(a2, b2)))
    assert window(prev, cur).cumulative == (4, 26, 26, 26)


@pytest.mark.parametrize(
    "prev, cur, reason",
    [
        (cum((5, 9, 9, 9)), cum((1, 2, 2, 2)), "counter went backwards"),
        (cum((5, 9, 9, 9)), cum((5, 9, 9, 8)), None),  # +Inf raw dip is repaired (scrape not atomic): not a reset
        (cum((5, 9, 9, 9), count=9), cum((5, 9, 9, 9), count=7), "_count went backwards"),
        (cum((5, 9, 9, 9)), cum((5, 9, 9), bounds=(0.01, 0.02, INF)), "bucket layout changed"),
        (cum((5, 9, 9, 9), created=100.0), cum((50, 90, 90, 90), created=200.0), "re-created"),
    ],
)
def test_window_reset_or_repair(prev, cur, reason):
    w = window(prev, cur)
    if reason is None:
        assert isinstance(w, WindowHistogram)
    else:
        assert isinstance(w, Reset)
        assert reason in w.reason


def test_window_repairs_non_monotone_scrape_by_cumulative_max():
    # le=0.02 read before an observation that le=0.01 already saw: raw (5, 4, ...)
    prev = cum((5, 4, 9, 9))
    assert prev.monotone() == (5, 5, 9, 9)
    w = window(prev, cum((7, 9, 12, 12)))
    assert w.cumulative == (2, 4, 4, 4)


def test_window_repairs_non_monotone_deltas():
    # Both scrapes monotone, but an observation landed in le=0.02 between its
    # reads of le=0.01 and le=0.02 in the first scrape: deltas (1, 0, ...).
    w = window(cum((4, 11, 11, 11)), cum((5, 11, 11, 11)))
    assert w.cumulative == (1, 1, 1, 1)


def test_window_with_identical_scrapes_is_empty_not_reset():
    w = window(cum((1, 2, 3, 3)), cum((1, 2, 3, 3)))
    assert observations(w) == 0
    assert math.isnan(quantile(w, 0.99))


# --- fraction_above -------------------------------------------------------------

@pytest.mark.parametrize(
    "threshold, fraction, bound, exact",
    [
        (0.02, 0.2, 0.02, True),  # 1 - 80/100
        (0.04, 0.0, 0.04, True),
        (0.01, 0.5, 0.01, True),
        (0.03, 0.2, 0.02, False),  # not a bound: largest bound below, overstates
        (0.005, 1.0, 0.0, False),  # below the first bound: every observation counts
        (INF, 0.0, INF, True),
    ],
)
def test_fraction_above(threshold, fraction, bound, exact):
    tail = fraction_above(win((50, 80, 100, 100)), threshold)
    assert tail.fraction == pytest.approx(fraction)
    assert (tail.bound, tail.exact, tail.observations) == (bound, exact, 100)


def test_fraction_above_empty_window_is_nan():
    assert math.isnan(fraction_above(empty_window(B4), 0.02).fraction)


# --- pool ------------------------------------------------------------------------

def test_pool_sums_windows():
    p = pool([WindowHistogram(B4, (1, 2, 3, 3), 0.1), WindowHistogram(B4, (0, 5, 5, 6), 0.2), empty_window(B4)])
    assert p.cumulative == (1, 7, 8, 9)
    assert p.sum == pytest.approx(0.3)


def test_pool_without_sum_has_no_sum():
    assert pool([WindowHistogram(B4, (1, 1, 1, 1)), WindowHistogram(B4, (1, 1, 1, 1), 0.1)]).sum is None


@pytest.mark.parametrize(
    "windows, match",
    [
        ([], "at least one"),
        ([win((1, 1, 1, 1)), win((1, 1, 1), bounds=(0.01, 0.02, INF))], "different bucket layouts"),
    ],
)
def test_pool_rejects(windows, match):
    with pytest.raises(HistogramError, match=match):
        pool(windows)


# --- validation --------------------------------------------------------------------

@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: CumulativeHistogram((INF,), (1,)), "at least one finite bound"),
        (lambda: CumulativeHistogram((0.1, 0.2), (1, 2)), "end with \\+Inf"),
        (lambda: CumulativeHistogram((0.2, 0.1, INF), (1, 2, 3)), "strictly ascending"),
        (lambda: CumulativeHistogram((0.1, math.nan, INF), (1, 2, 3)), "NaN"),
        (lambda: CumulativeHistogram((0.1, INF), (1,)), "2 bounds but 1 counts"),
        (lambda: CumulativeHistogram((0.1, INF), (-1, 2)), "non-negative"),
        (lambda: WindowHistogram((0.1, INF), (3, 2)), "non-decreasing"),
        (lambda: WindowHistogram((0.1, INF), (math.nan, 2)), "non-negative"),
    ],
)
def test_malformed_histograms_raise(make, match):
    with pytest.raises(HistogramError, match=match):
        make()
