"""The A/B law's statistics: what the transfer adds to a seed's slow-token share, and the safe rate.

Pure maths, no clock, no I/O (docs/qos.md, "The law"). The controller keeps one
:class:`Sample` per judged interval: transfer-on intervals (at the rate then in
force) and transfer-off intervals (the law's short off windows, or no chunk
reads). This module pools them into a model of the seed's share of slow tokens
(ITL over the threshold, or TTFT over its threshold) as a function of the rate::

    share(r) = p_off + (p_on - p_off) * r / r_on

``p_off`` is the share with the transfer off (the seed's own part), ``p_on``
the share over the on intervals and ``r_on`` their token-weighted mean rate:
the transfer's excess is taken to grow in proportion to its rate. Over a run
with a fraction ``d`` of the time in off windows the seed's overall share is
``p_off + (1 - d) * (p_on - p_off) * r / r_on``; :func:`safe_rate` returns the
largest rate whose *upper confidence bound* of that share is within the budget.

Slow tokens come in clusters: one slow decode step delays every running
request at once, so a seed at batch 32 makes 32 slow tokens per slow step. The
variance of a share is therefore ``p * B / n`` with ``B`` the batch (the
``running`` gauge), not the binomial ``p / n``; with no batch known, ``B = 1``.

Example (a seed whose own share is 0.5 %, 1.0 % with the transfer at 40 MB/s)::

    >>> on = [Sample(at=1.0, rate=40e6, on=True, slow=100.0, tokens=10_000.0, batch=1.0)] * 20
    >>> off = [Sample(at=1.0, rate=0.0, on=False, slow=50.0, tokens=10_000.0, batch=1.0)] * 5
    >>> est = estimate(on, off, min_tokens=200)
    >>> round(est.p_on, 4), round(est.p_off, 4), est.r_on
    (0.01, 0.005, 40000000.0)
    >>> round(safe_rate(est, budget=0.01, duty_off=0.0, z=0.0, floor=5e6, cap=100e6) / 1e6, 1)
    40.0
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = ["Sample", "Estimate", "PooledCounts", "batch_class", "estimate", "evidence_summary", "mean_batch",
           "overall_share", "own_share", "parse_evidence_summary", "recent_off", "safe_rate", "one_interval_z"]


@dataclass(frozen=True)
class Sample:
    """One judged interval of one signal (ITL tokens or TTFT requests)."""

    at: float
    #: The law's rate in force during the interval (bytes/s); 0 for an off interval.
    rate: float
    #: Whether the transfer ran during the interval.
    on: bool
    #: Tokens (requests, for TTFT) over the threshold, and all of them.
    slow: float
    tokens: float
    #: Tokens that are slow together (the running batch); 1 for TTFT.
    batch: float = 1.0
    #: Bytes per second the transfer granted in the interval, where the law reads it
    #: (``ControllerConfig.ab_rate_of_granted``); None: ``rate``. They differ under one chunk a second: an on
    #: interval then carries a whole chunk whatever the rate, and only every (chunk / rate)-th interval is on.
    moved: float | None = None

    @property
    def model_rate(self) -> float:
        """The rate the attribution's linear model charges this interval's excess to: ``moved``, else ``rate``."""
        return self.rate if self.moved is None else self.moved


@dataclass(frozen=True)
class Estimate:
    """Pooled on/off evidence. Variances are of the shares (``p * B / n`` with a one-step prior)."""

    p_on: float
    var_on: float
    tokens_on: float
    #: Token-weighted mean rate of the on intervals (each its :attr:`Sample.model_rate`).
    r_on: float
    p_off: float
    var_off: float
    tokens_off: float
    #: Whether the off pool is large enough to trust (else p_off = 0: every slow token is blamed on
    #: the transfer, which overstates its effect: the safe side).
    off_known: bool
    #: The seed's own share at the load the on intervals saw: the off share per batch class,
    #: weighted by the on tokens in each class (:func:`estimate`); None = ``p_off``. The transfer's
    #: excess is ``p_on`` less this, not less the pooled ``p_off``.
    p_off_matched: float | None = None
    #: Variance of ``p_off_matched - p_off`` (the matching's own uncertainty).
    var_matching: float = 0.0

    @property
    def p_off_at_on_load(self) -> float:
        """The seed's own share at the on intervals' load: ``p_off_matched``, else ``p_off``."""
        return self.p_off if self.p_off_matched is None else self.p_off_matched

    @property
    def excess(self) -> float:
        """What the transfer adds at ``r_on``, never negative (it does not speed the seed up)."""
        return max(self.p_on - self.p_off_at_on_load, 0.0)


def _pool(samples: Iterable[Sample]) -> tuple[float, float, float, float]:
    """(slow, tokens, token-weighted batch, token-weighted rate)."""
    slow = tokens = batch_w = rate_w = 0.0
    for s in samples:
        slow += s.slow
        tokens += s.tokens
        batch_w += s.batch * s.tokens
        rate_w += s.model_rate * s.tokens
    if tokens <= 0:
        return 0.0, 0.0, 1.0, 0.0
    return slow, tokens, max(1.0, batch_w / tokens), rate_w / tokens


def mean_batch(samples: Iterable[Sample]) -> float | None:
    """The samples' token-weighted batch (at least 1), as :func:`estimate` pools it; None without tokens.

        >>> mean_batch([Sample(1.0, 0.0, False, 0.0, 3000.0, 32.0), Sample(2.0, 0.0, False, 0.0, 1000.0, 96.0)])
        48.0
        >>> mean_batch([]) is None
        True
    """
    _, tokens, batch, _ = _pool(samples)
    return batch if tokens > 0 else None


def _share_and_var(slow: float, tokens: float, batch: float) -> tuple[float, float]:
    if tokens <= 0:
        return 0.0, math.inf
    share = slow / tokens
    # One slow step as a prior keeps a run of zero-slow intervals from claiming zero variance.
    prior = (slow + batch) / (tokens + batch)
    return share, prior * batch / tokens


def recent_off(off: Sequence[Sample], since: float, standard_error: float) -> Sequence[Sample]:
    """The off intervals (in time order) after ``since``, and older ones only as far back as it takes for
    their pooled share to have a standard error of at most ``standard_error``; all of ``off`` where even
    that is too few.

    Older off intervals are kept only for precision (off windows are few at the cap). Where the recent
    ones are already precise, older ones are a bias, not evidence: a seed's own bad minutes long past
    (a load's first seconds back after idle, an episode between two forks) stand for its share now.

        >>> bad = [Sample(float(t), 0.0, False, 300.0, 10_000.0, 64.0) for t in range(0, 100)]     # 3 %
        >>> good = [Sample(float(t), 0.0, False, 50.0, 10_000.0, 64.0) for t in range(100, 160)]   # 0.5 %
        >>> len(recent_off(bad + good, 99.5, 0.00125))      # 60 s at 0.5 %, to within 0.074 %: the old left out
        60
        >>> len(recent_off(bad + good, 155.5, 0.00125))     # 4 s are 0.32 %: back to 22 s (0.124 %), all at 0.5 %
        22
        >>> len(recent_off(bad + good, 155.5, 1e-6))        # never precise enough: all
        160
    """
    start = next((i for i, s in enumerate(off) if s.at > since), len(off))
    slow = tokens = batch_w = 0.0
    for s in off[start:]:
        slow, tokens, batch_w = slow + s.slow, tokens + s.tokens, batch_w + s.batch * s.tokens
    while start > 0:
        if tokens > 0 and _share_and_var(slow, tokens, max(1.0, batch_w / tokens))[1] <= standard_error ** 2:
            break
        start -= 1
        s = off[start]
        slow, tokens, batch_w = slow + s.slow, tokens + s.tokens, batch_w + s.batch * s.tokens
    return off[start:]


def batch_class(batch: float) -> int:
    """The load class of an interval: its batch (running requests) to within a factor of two, each
    class centred on a power of two (from 2 ** (k - 0.5) to 2 ** (k + 0.5)).

    Centred, not starting there: seeds are run at a power of two in flight or capped at one
    (``--max-running-requests`` 64, 128), and the running gauge at a scrape misses the requests a
    step just finished until their replacements join: a seed at 64 reads 61-64. With classes from
    each power of two up, those scrapes fell either side of 64, so one steady load read as two.

        >>> [batch_class(b) for b in (1.0, 6.0, 8.0, 24.0, 32.0, 61.0, 64.0, 90.0, 96.0)]
        [0, 3, 3, 5, 5, 6, 6, 6, 7]
    """
    return round(math.log2(max(batch, 1.0)))


def estimate(on: Iterable[Sample], off: Iterable[Sample], *, min_tokens: float) -> Estimate:
    """Pool the on and off samples; an off pool under ``min_tokens`` is not trusted.

    The seed's own share depends on its load, and which intervals carry chunk reads need not be
    independent of it: at a low rate a chunk read is granted every second or two, and one slowed
    by a busy seed holds its lease into the next interval, so busy intervals count as "on" more
    often than quiet ones. Comparing the on share with the pooled off share would then blame the
    busy spells' own slow tokens on the transfer. So the excess is measured against the off
    share *at the on intervals' load*: per :func:`batch_class`, weighted by the on tokens in each
    (a class with fewer than ``min_tokens`` off tokens uses the pooled off share).

        >>> busy_on = [Sample(1.0, 5e6, True, 60.0, 10_000.0, 24.0)] * 8      # busy: 0.6 % alone
        >>> quiet_on = [Sample(1.0, 5e6, True, 6.0, 2_000.0, 6.0)] * 2        # quiet: 0.3 % alone
        >>> off = ([Sample(1.0, 0.0, False, 60.0, 10_000.0, 24.0)] * 2
        ...        + [Sample(1.0, 0.0, False, 6.0, 2_000.0, 6.0)] * 8)
        >>> est = estimate(busy_on + quiet_on, off, min_tokens=1000)
        >>> round(est.p_on - est.p_off, 4), round(est.excess, 4)   # pooled: +0.12 %; matched: none
        (0.0012, 0.0)
    """
    on, off = list(on), list(off)
    s_on, n_on, b_on, r_on = _pool(on)
    s_off, n_off, b_off, _ = _pool(off)
    p_on, v_on = _share_and_var(s_on, n_on, b_on)
    known = n_off >= min_tokens
    if not known:
        return Estimate(p_on, v_on, n_on, r_on, 0.0, 0.0, n_off, False)
    p_off, v_off = _share_and_var(s_off, n_off, b_off)
    on_classes: dict[int, float] = {}
    for s in on:
        cls = batch_class(s.batch)
        on_classes[cls] = on_classes.get(cls, 0.0) + s.tokens
    if len(on_classes) <= 1 and {batch_class(s.batch) for s in off} <= set(on_classes):
        return Estimate(p_on, v_on, n_on, r_on, p_off, v_off, n_off, True)
    matched = var_matched = 0.0
    for cls, tokens in on_classes.items():
        weight = tokens / n_on
        s_c, n_c, b_c, _ = _pool(s for s in off if batch_class(s.batch) == cls)
        p_c, v_c = _share_and_var(s_c, n_c, b_c) if n_c >= min_tokens else (p_off, v_off)
        matched += weight * p_c
        var_matched += weight * weight * v_c
    return Estimate(p_on, v_on, n_on, r_on, p_off, v_off, n_off, True, matched, max(var_matched - v_off, 0.0))


def overall_share(est: Estimate, rate: float, duty_off: float, z: float, *, pool_own: bool = False,
                  signed: bool = False) -> float:
    """Upper confidence bound (``z`` sigmas) of the seed's share over a run at ``rate`` with off duty ``duty_off``.

    ``pool_own``: where the on share reads under the seed's own share at the on intervals' load (no
    excess), the seed's own share is the inverse-variance mean of the two, not the off share alone
    (:func:`own_share`).

    ``signed`` (an upper bound, ``z >= 0``; ``pool_own`` reads the same case its own way): where the on
    share reads under the off share, the bound is that of the linear fit itself, the on share's shortfall
    included (up to the on intervals' rate), never under the off share: the transfer does not speed a seed
    up, but an on pool that reads under the off pool is evidence against an excess, not merely none for one.
    Clamping the excess at 0 first and adding the on pool's sigma to that bounds a share the evidence already
    rules out.

    >>> est = Estimate(0.01, 0.0, 1e5, 40e6, 0.005, 0.0, 1e4, True)
    >>> round(overall_share(est, 80e6, 0.0, 0.0), 4), round(overall_share(est, 80e6, 0.5, 0.0), 4)
    (0.015, 0.01)
    >>> under = Estimate(0.0044, 0.0022 ** 2, 6e4, 5e6, 0.0081, 0.0005 ** 2, 2.2e5, True)  # on 0.44 %, off 0.81 %
    >>> round(overall_share(under, 5e6, 0.0, 1.0), 4), round(overall_share(under, 5e6, 0.0, 1.0, signed=True), 4)
    (0.0103, 0.0081)
    >>> round(overall_share(under, 5e6, 0.0, 2.0, signed=True), 4)   # 0.44 % + 2 SE: over the off share
    0.0088
    """
    if est.tokens_on <= 0 or est.r_on <= 0:
        return math.inf
    x = (1.0 - duty_off) * rate / est.r_on
    # The excess cannot be negative: the transfer does not speed the seed up. A p_on under p_off
    # is noise; the variance term still bounds how far it may be extrapolated.
    mean = own_share(est) if pool_own and est.excess <= 0 else est.p_off + x * est.excess
    # The uncertainty is that of the evidence, not of the extrapolation: scaling the on variance by
    # x^2 above the measured rates would forbid every raise (the evidence is always at or below the
    # current rate). Raises are bounded in size instead (the controller's max_raise_factor, and
    # ab_fast_raise_factor far under the budget), and the evidence at the new rate corrects the slope.
    xv = min(x, 1.0)
    sigma = math.sqrt(max((1.0 - xv) ** 2 * est.var_off + xv * xv * (est.var_on + est.var_matching), 0.0))
    shortfall = est.p_on - est.p_off_at_on_load
    if signed and z >= 0 and est.off_known and shortfall < 0 and not pool_own:
        # Above the on intervals' rate the shortfall is not extrapolated (xv): the fit's slope is not negative.
        return min(mean + z * sigma, max(est.p_off + xv * shortfall + z * sigma, est.p_off))
    return mean + z * sigma


def own_share(est: Estimate) -> float:
    """The seed's own share where the transfer shows no excess: the on share and the off share at the
    on intervals' load, each weighted by its inverse variance.

    The model is ``share(r) = p_own + slope x r`` with ``slope >= 0`` (the transfer does not speed the
    seed up). Where the on share reads under the off share the best fit within that constraint is
    ``slope = 0``, and then the on intervals measure the seed's own share as well as the off ones do:
    both pools are its evidence. The off share alone throws the on intervals away, so a few bad off
    seconds (the seed's own) hold the transfer down however many on tokens read clean.

        >>> est = Estimate(0.004, 0.01e-6, 1e5, 5e6, 0.010, 0.01e-6, 1e5, True)   # on 0.4 %, off 1.0 %
        >>> round(own_share(est), 4)
        0.007
        >>> round(own_share(Estimate(0.004, 0.01e-6, 1e5, 5e6, 0.010, 0.03e-6, 1e5, True)), 4)   # off less sure
        0.0055
    """
    base = est.p_off_at_on_load
    if not est.off_known or est.p_on >= base:
        return est.p_off
    w_on = 1.0 / max(est.var_on, 1e-12)
    w_off = 1.0 / max(est.var_off + est.var_matching, 1e-12)
    return (est.p_on * w_on + base * w_off) / (w_on + w_off)


def safe_rate(est: Estimate, *, budget: float, duty_off: float, z: float, floor: float, cap: float,
              steps: int = 256, pool_own: bool = False, signed: bool = False) -> float:
    """The largest rate in [floor, cap] whose share bound is <= ``budget``; ``floor`` when none is.

    A grid search: the bound is not monotone in the rate where the off share's uncertainty
    dominates (it shrinks as the on share takes over), so no bisection.

    >>> est = Estimate(0.02, 0.0, 1e5, 100e6, 0.0, 0.0, 0.0, False)   # no off pool: all blamed
    >>> round(safe_rate(est, budget=0.01, duty_off=0.0, z=0.0, floor=5e6, cap=100e6) / 1e6)
    50
    """
    def ok(rate: float) -> bool:
        return overall_share(est, rate, duty_off, z, pool_own=pool_own, signed=signed) <= budget

    grid = [floor + (cap - floor) * i / steps for i in range(steps + 1)]
    feasible = [i for i, rate in enumerate(grid) if ok(rate)]
    if not feasible:
        return floor
    i = feasible[-1]
    if i == steps:
        return cap
    lo, hi = grid[i], grid[i + 1]  # refine between the last feasible grid point and the next
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def one_interval_z(slow: float, tokens: float, batch: float, budget: float) -> float:
    """How many sigmas one interval's share is over ``budget`` (under "share = budget", clustered noise).

    >>> round(one_interval_z(50.0, 1000.0, 1.0, 0.01), 1)    # 5 % of 1000 independent tokens
    12.6
    >>> round(one_interval_z(50.0, 1000.0, 8.0, 0.01), 1)    # the same at batch 8: 125 steps, less evidence
    4.5
    """
    if tokens <= 0:
        return 0.0
    sigma = math.sqrt(budget * max(batch, 1.0) / tokens)
    return (slow / tokens - budget) / sigma


@dataclass(frozen=True)
class PooledCounts:
    """The pools an :func:`evidence_summary` names: slow and all tokens with the transfer on and off."""

    slow_on: float
    tokens_on: float
    rate_on: float
    #: None where the off pool was too small to trust ("off unknown").
    slow_off: float | None
    tokens_off: float


def evidence_summary(est: Estimate, budget: float) -> str:
    """The law's evidence in the words its reasons use; :func:`parse_evidence_summary` reads it back.

        >>> text = evidence_summary(Estimate(0.0085, 0.0, 152768.0, 2.44e7, 0.0038, 0.0, 350848.0, True), 0.01)
        >>> text
        'on 0.85% of 152768 at 2.44e+07 B/s, off 0.38% of 350848, budget 1.00%'
        >>> parse_evidence_summary("pooling: " + text)
        PooledCounts(slow_on=1298.528, tokens_on=152768.0, rate_on=24400000.0, slow_off=1333.2224, tokens_off=350848.0)
    """
    off_text = (f"off {est.p_off:.2%} of {est.tokens_off:.0f}" if est.off_known
                else f"off unknown ({est.tokens_off:.0f})")
    return f"on {est.p_on:.2%} of {est.tokens_on:.0f} at {est.r_on:.3g} B/s, {off_text}, budget {budget:.2%}"


_SUMMARY = re.compile(r"on (?P<p_on>[0-9.]+)% of (?P<n_on>[0-9]+) at (?P<r_on>[0-9.e+-]+) B/s, "
                      r"off (?:(?P<p_off>[0-9.]+)% of (?P<n_off>[0-9]+)|unknown \((?P<n_unknown>[0-9]+)\))")


def parse_evidence_summary(reason: str) -> PooledCounts | None:
    """The pools of the first :func:`evidence_summary` in ``reason`` (a decision's reason); None if it has none.

    The shares are printed to 0.01 %, so ``slow_on`` and ``slow_off`` are within 0.005 % of their pools'
    tokens: enough to follow the pools over many intervals, not to read one interval's slow tokens.

        >>> parse_evidence_summary("fixed rate") is None
        True
        >>> parse_evidence_summary("on 1.00% of 9000 at 5e+06 B/s, off unknown (120), budget 1.00%").slow_off is None
        True
    """
    m = _SUMMARY.search(reason)
    if m is None:
        return None
    tokens_on = float(m["n_on"])
    slow_on = float(m["p_on"]) / 100 * tokens_on
    if m["n_unknown"] is not None:
        return PooledCounts(slow_on, tokens_on, float(m["r_on"]), None, float(m["n_unknown"]))
    tokens_off = float(m["n_off"])
    return PooledCounts(slow_on, tokens_on, float(m["r_on"]), float(m["p_off"]) / 100 * tokens_off, tokens_off)
