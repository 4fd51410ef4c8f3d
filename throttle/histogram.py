"""Classic (bucketed) Prometheus histograms: windows between two scrapes, PromQL quantiles.

Everything here is a pure function of its inputs: no clock, no I/O.

Vocabulary
----------
* A **cumulative histogram** is what one scrape shows: for each upper bound
  ``le`` the number of observations ``<= le`` since the process started, the
  last bound being ``+Inf``. :class:`CumulativeHistogram` holds one, already
  summed over label sets (see ``throttle.prom_text``).
* A **window** is the difference of two scrapes of the same histogram: what
  was observed between them. :func:`window` computes it, or returns a
  :class:`Reset` when the counters went backwards (the seed restarted) or the
  bucket layout changed; a caller must never act on such an interval.
* :func:`quantile` reproduces PromQL's ``histogram_quantile`` on a window and
  :func:`fraction_above` gives the fraction of observations above a bucket
  bound, the more robust signal for coarse buckets (docs/qos.md, "The signal").

Example::

    >>> b = (0.02, 0.04, 0.06, math.inf)
    >>> prev = CumulativeHistogram(b, (10, 20, 30, 30))
    >>> cur = CumulativeHistogram(b, (60, 150, 200, 200))
    >>> w = window(prev, cur)
    >>> w.cumulative, observations(w)
    ((50.0, 130.0, 170.0, 170.0), 170.0)
    >>> round(quantile(w, 0.5), 6)   # rank 85 is the 35th of 80 in (0.02, 0.04]
    0.02875
    >>> fraction_above(w, 0.04).fraction   # 1 - 130/170
    0.23529411764705882
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = [
    "HistogramError",
    "CumulativeHistogram",
    "WindowHistogram",
    "Reset",
    "Tail",
    "window",
    "pool",
    "quantile",
    "fraction_above",
    "observations",
    "empty_window",
]


class HistogramError(ValueError):
    """A histogram value is malformed (a programming or parsing error, not a runtime condition)."""


def _cummax(values: Sequence[float]) -> tuple[float, ...]:
    """Running maximum: the monotone "envelope" PromQL's ``ensureMonotonic`` computes."""
    out: list[float] = []
    running = -math.inf
    for v in values:
        running = v if v > running else running
        out.append(running)
    return tuple(out)


def _check_bounds(bounds: tuple[float, ...], what: str) -> None:
    if len(bounds) < 2:
        # PromQL returns NaN for fewer than two buckets; a lone +Inf bucket carries no shape.
        raise HistogramError(f"{what} needs at least one finite bound plus +Inf; got bounds {bounds!r}")
    if any(math.isnan(b) for b in bounds):
        raise HistogramError(f"{what} bounds must not be NaN; got {bounds!r}")
    if bounds[-1] != math.inf:
        raise HistogramError(f"{what} bounds must end with +Inf; got {bounds!r}")
    if any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise HistogramError(f"{what} bounds must be strictly ascending; got {bounds!r}")


@dataclass(frozen=True)
class CumulativeHistogram:
    """One scrape of a classic histogram, summed over label sets.

    ``counts[i]`` is the number of observations ``<= bounds[i]`` since the
    series began; ``bounds`` is strictly ascending and ends with ``+Inf``.
    Counts are floats because Prometheus samples are floats; integer inputs
    are fine. Counts are kept exactly as scraped, including non-monotone ones
    (a scrape is not atomic): :func:`window` repairs them.

    ``count``/``sum`` are the ``_count``/``_sum`` samples when present.
    ``created`` is the newest ``_created`` timestamp of the series summed in,
    when the exporter publishes it: a change means the process restarted even
    if the counters have already grown past their old values.

    Example::

        >>> CumulativeHistogram((0.1, math.inf), (3, 5), count=5, sum=0.7).total
        5.0
    """

    bounds: tuple[float, ...]
    counts: tuple[float, ...]
    count: float | None = None
    sum: float | None = None
    created: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bounds", tuple(float(b) for b in self.bounds))
        object.__setattr__(self, "counts", tuple(float(c) for c in self.counts))
        _check_bounds(self.bounds, "CumulativeHistogram")
        if len(self.counts) != len(self.bounds):
            raise HistogramError(
                f"CumulativeHistogram has {len(self.bounds)} bounds but {len(self.counts)} counts"
            )
        if any(math.isnan(c) or c < 0 for c in self.counts):
            raise HistogramError(f"CumulativeHistogram counts must be non-negative numbers; got {self.counts!r}")

    @property
    def total(self) -> float:
        """Observations so far: the ``+Inf`` bucket after monotone repair."""
        return max(self.counts)

    def monotone(self) -> tuple[float, ...]:
        """Counts repaired by cumulative max.

        A scrape reads bucket counters one by one while observations keep
        arriving, so ``le=0.06`` can be read before an observation that
        ``le=0.04`` already saw. Taking the running max gives counts that are
        monotone in ``le`` and, because each raw counter only grows, still
        monotone in time — so a later decrease really is a reset.
        """
        return _cummax(self.counts)


@dataclass(frozen=True)
class WindowHistogram:
    """Observations between two scrapes: per-bound cumulative deltas.

    ``cumulative[i]`` is the number of observations ``<= bounds[i]`` seen in
    the window (monotone in ``i``); ``cumulative[-1]`` is N. ``sum`` is the
    ``_sum`` delta when both scrapes had one.

    Example::

        >>> w = WindowHistogram((0.1, math.inf), (9, 10))
        >>> observations(w), fraction_above(w, 0.1).fraction
        (10.0, 0.1)
    """

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    sum: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bounds", tuple(float(b) for b in self.bounds))
        object.__setattr__(self, "cumulative", tuple(float(c) for c in self.cumulative))
        _check_bounds(self.bounds, "WindowHistogram")
        if len(self.cumulative) != len(self.bounds):
            raise HistogramError(
                f"WindowHistogram has {len(self.bounds)} bounds but {len(self.cumulative)} counts"
            )
        if any(math.isnan(c) or c < 0 for c in self.cumulative):
            raise HistogramError(f"WindowHistogram counts must be non-negative; got {self.cumulative!r}")
        if any(a > b for a, b in zip(self.cumulative, self.cumulative[1:])):
            raise HistogramError(f"WindowHistogram counts must be cumulative (non-decreasing); got {self.cumulative!r}")


@dataclass(frozen=True)
class Reset:
    """Why two scrapes cannot be differenced. Callers must not cut on such an interval.

    Example::

        >>> b = (0.1, math.inf)
        >>> window(CumulativeHistogram(b, (5, 9)), CumulativeHistogram(b, (1, 2)))
        Reset(reason='counter went backwards (le=0.1: 5 -> 1); the seed probably restarted')
    """

    reason: str


@dataclass(frozen=True)
class Tail:
    """Result of :func:`fraction_above`.

    ``fraction`` is the share of the window's observations above ``bound``
    (NaN when the window is empty); ``bound`` is the bucket bound actually
    used; ``exact`` says whether it equals the requested threshold.
    """

    fraction: float
    bound: float
    exact: bool
    observations: float


def empty_window(bounds: Sequence[float]) -> WindowHistogram:
    """A window with no observations in the given layout."""
    return WindowHistogram(tuple(bounds), (0.0,) * len(bounds), 0.0)


def _fmt(x: float) -> str:
    return "+Inf" if x == math.inf else f"{x:g}"


def window(prev: CumulativeHistogram, cur: CumulativeHistogram) -> WindowHistogram | Reset:
    """What was observed between scrape ``prev`` and the later scrape ``cur``.

    Each scrape is first repaired by cumulative max (scrapes are not atomic);
    the per-bound deltas are then repaired the same way, because a bucket read
    just before an observation in one scrape and just after it in the next can
    leave the *deltas* non-monotone even when both scrapes are.

    Returns a :class:`Reset` instead of a window when:

    * the bucket layout differs (reconfigured or restarted seed): the deltas
      would be meaningless;
    * any repaired bucket, ``_count`` or ``+Inf`` decreased: a counter reset
      (seed restart, a label set disappearing) — a negative delta is not a
      measurement;
    * both scrapes carry ``_created`` and it changed: a restart whose new
      counters already exceed the old ones would otherwise pass as a window.

    Example::

        >>> b = (0.1, math.inf)
        >>> window(CumulativeHistogram(b, (1, 2)), CumulativeHistogram(b, (4, 9))).cumulative
        (3.0, 7.0)
    """
    if prev.bounds != cur.bounds:
        return Reset(
            f"bucket layout changed ({len(prev.bounds)} -> {len(cur.bounds)} bounds, "
            f"top finite bound {_fmt(prev.bounds[-2])} -> {_fmt(cur.bounds[-2])})"
        )
    if prev.created is not None and cur.created is not None and cur.created != prev.created:
        return Reset(f"series re-created (_created {prev.created:.3f} -> {cur.created:.3f}); the seed restarted")
    p, c = prev.monotone(), cur.monotone()
    for bound, before, after in zip(cur.bounds, p, c):
        if after < before:
            return Reset(
                f"counter went backwards (le={_fmt(bound)}: {before:g} -> {after:g}); the seed probably restarted"
            )
    if prev.count is not None and cur.count is not None and cur.count < prev.count:
        return Reset(f"_count went backwards ({prev.count:g} -> {cur.count:g}); the seed probably restarted")
    deltas = _cummax([after - before for before, after in zip(p, c)])
    total_sum = None
    if prev.sum is not None and cur.sum is not None:
        # A latency _sum only grows; clamp float noise rather than reporting a reset on it.
        total_sum = max(0.0, cur.sum - prev.sum)
    return WindowHistogram(cur.bounds, deltas, total_sum)


def pool(windows: Iterable[WindowHistogram]) -> WindowHistogram:
    """Sum consecutive windows of one layout into one (the "pool up to 5 s" rule).

    Raises :class:`HistogramError` for an empty input or mixed layouts (a
    layout change is a :class:`Reset`, so a caller never has to pool across one).

    Example::

        >>> b = (0.1, math.inf)
        >>> pool([WindowHistogram(b, (1, 2), 0.1), WindowHistogram(b, (3, 3), 0.2)]).cumulative
        (4.0, 5.0)
    """
    items = list(windows)
    if not items:
        raise HistogramError("pool() needs at least one window")
    bounds = items[0].bounds
    for w in items[1:]:
        if w.bounds != bounds:
            raise HistogramError("pool() got windows with different bucket layouts; a layout change is a reset")
    cumulative = tuple(sum(col) for col in zip(*(w.cumulative for w in items)))
    sums = [w.sum for w in items]
    total = None if any(s is None for s in sums) else sum(s for s in sums if s is not None)
    return WindowHistogram(bounds, cumulative, total)


def observations(w: WindowHistogram) -> float:
    """N: observations in the window (the ``+Inf`` delta)."""
    return w.cumulative[-1]


def quantile(w: WindowHistogram, q: float) -> float:
    """PromQL ``histogram_quantile(q, ...)`` on a window, with the same interpolation.

    Mirrors Prometheus' ``bucketQuantile`` (promql/quantile.go):

    * rank = q·N; the answer lies in the first bucket whose cumulative count
      is ``>= rank``, interpolated linearly between its lower and upper bound;
    * the lowest bucket's lower bound is 0 when its upper bound is positive
      (if that bound is ``<= 0``, the bound itself is returned);
    * a rank in the ``+Inf`` bucket returns the highest finite bound;
    * N = 0 returns NaN — no signal, never 0.

    ``q`` must be in [0, 1] (PromQL returns ±Inf outside; here that is a
    caller bug and raises :class:`HistogramError`). For ``q = 0`` with an
    empty first bucket PromQL divides 0 by 0; this returns NaN likewise.

    Example::

        >>> w = WindowHistogram((0.01, 0.02, math.inf), (50, 100, 100))
        >>> quantile(w, 0.75)        # rank 75: halfway through (0.01, 0.02]
        0.015
        >>> quantile(WindowHistogram((0.01, math.inf), (0, 0)), 0.99)
        nan
    """
    if math.isnan(q) or not 0.0 <= q <= 1.0:
        raise HistogramError(f"quantile q must be in [0, 1]; got {q!r}")
    counts = w.cumulative  # already monotone (validated)
    n = counts[-1]
    if n == 0:
        return math.nan
    rank = q * n
    # sort.Search over all but the +Inf bucket: first i with counts[i] >= rank.
    b = bisect.bisect_left(counts, rank, 0, len(counts) - 1)
    if b == len(counts) - 1:
        return w.bounds[-2]
    if b == 0 and w.bounds[0] <= 0:
        return w.bounds[0]
    start, end, count = 0.0, w.bounds[b], counts[b]
    if b > 0:
        start = w.bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    if count == 0:
        return math.nan  # only reachable for rank 0 in an empty first bucket; Go yields 0/0 = NaN
    return start + (end - start) * (rank / count)


def fraction_above(w: WindowHistogram, threshold: float) -> Tail:
    """Fraction of the window's observations above ``threshold``: ``1 − Δ(le=T)/N``.

    This is exact only when ``threshold`` is a bucket bound. Otherwise the
    largest bound ``<= threshold`` is used and ``exact`` is False: that counts
    some observations between the bound and the threshold as above it, so the
    fraction can only be overstated — the conservative side for a throttle.
    A threshold below the first bound uses bound 0 (every positive observation
    counts as above). N = 0 gives NaN.

    Example::

        >>> w = WindowHistogram((0.04, 0.06, math.inf), (90, 98, 100))
        >>> fraction_above(w, 0.06)
        Tail(fraction=0.02, bound=0.06, exact=True, observations=100.0)
        >>> fraction_above(w, 0.05).bound   # not a bound: falls back to 0.04
        0.04
    """
    if math.isnan(threshold):
        raise HistogramError("fraction_above threshold must be a number; got NaN")
    n = observations(w)
    i = bisect.bisect_right(w.bounds, threshold) - 1  # index of the largest bound <= threshold
    if i < 0:
        bound, below = 0.0, 0.0
    else:
        bound, below = w.bounds[i], w.cumulative[i]
    # (N − below)/N rather than 1 − below/N: exact at budget boundaries (10/2000 is 0.005, not 0.005000000000000004).
    fraction = math.nan if n == 0 else (n - below) / n
    return Tail(fraction, bound, bound == threshold, n)
