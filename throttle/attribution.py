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
from dataclasses import dataclass
from typing import Iterable

__all__ = ["Sample", "Estimate", "estimate", "overall_share", "safe_rate", "one_interval_z"]


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


@dataclass(frozen=True)
class Estimate:
    """Pooled on/off evidence. Variances are of the shares (``p * B / n`` with a one-step prior)."""

    p_on: float
    var_on: float
    tokens_on: float
    #: Token-weighted mean rate of the on intervals.
    r_on: float
    p_off: float
    var_off: float
    tokens_off: float
    #: Whether the off pool is large enough to trust (else p_off = 0: every slow token is blamed on
    #: the transfer, which overstates its effect: the safe side).
    off_known: bool


def _pool(samples: Iterable[Sample]) -> tuple[float, float, float, float]:
    """(slow, tokens, token-weighted batch, token-weighted rate)."""
    slow = tokens = batch_w = rate_w = 0.0
    for s in samples:
        slow += s.slow
        tokens += s.tokens
        batch_w += s.batch * s.tokens
        rate_w += s.rate * s.tokens
    if tokens <= 0:
        return 0.0, 0.0, 1.0, 0.0
    return slow, tokens, max(1.0, batch_w / tokens), rate_w / tokens


def _share_and_var(slow: float, tokens: float, batch: float) -> tuple[float, float]:
    if tokens <= 0:
        return 0.0, math.inf
    share = slow / tokens
    # One slow step as a prior keeps a run of zero-slow intervals from claiming zero variance.
    prior = (slow + batch) / (tokens + batch)
    return share, prior * batch / tokens


def estimate(on: Iterable[Sample], off: Iterable[Sample], *, min_tokens: float) -> Estimate:
    """Pool the on and off samples; an off pool under ``min_tokens`` is not trusted."""
    s_on, n_on, b_on, r_on = _pool(on)
    s_off, n_off, b_off, _ = _pool(off)
    p_on, v_on = _share_and_var(s_on, n_on, b_on)
    known = n_off >= min_tokens
    p_off, v_off = _share_and_var(s_off, n_off, b_off) if known else (0.0, 0.0)
    return Estimate(p_on, v_on, n_on, r_on, p_off, v_off, n_off, known)


def overall_share(est: Estimate, rate: float, duty_off: float, z: float) -> float:
    """Upper confidence bound (``z`` sigmas) of the seed's share over a run at ``rate`` with off duty ``duty_off``.

    >>> est = Estimate(0.01, 0.0, 1e5, 40e6, 0.005, 0.0, 1e4, True)
    >>> round(overall_share(est, 80e6, 0.0, 0.0), 4), round(overall_share(est, 80e6, 0.5, 0.0), 4)
    (0.015, 0.01)
    """
    if est.tokens_on <= 0 or est.r_on <= 0:
        return math.inf
    x = (1.0 - duty_off) * rate / est.r_on
    # The excess cannot be negative: the transfer does not speed the seed up. A p_on under p_off
    # is noise; the variance term still bounds how far it may be extrapolated.
    mean = est.p_off + x * max(est.p_on - est.p_off, 0.0)
    # The uncertainty is that of the evidence, not of the extrapolation: scaling the on variance by
    # x^2 above the measured rates would forbid every raise (the evidence is always at or below the
    # current rate). Raises are bounded in size instead (the controller's max_raise_factor, and
    # ab_fast_raise_factor far under the budget), and the evidence at the new rate corrects the slope.
    xv = min(x, 1.0)
    sigma = math.sqrt(max((1.0 - xv) ** 2 * est.var_off + xv * xv * est.var_on, 0.0))
    return mean + z * sigma


def safe_rate(est: Estimate, *, budget: float, duty_off: float, z: float, floor: float, cap: float,
              steps: int = 256) -> float:
    """The largest rate in [floor, cap] whose share bound is <= ``budget``; ``floor`` when none is.

    A grid search: the bound is not monotone in the rate where the off share's uncertainty
    dominates (it shrinks as the on share takes over), so no bisection.

    >>> est = Estimate(0.02, 0.0, 1e5, 100e6, 0.0, 0.0, 0.0, False)   # no off pool: all blamed
    >>> round(safe_rate(est, budget=0.01, duty_off=0.0, z=0.0, floor=5e6, cap=100e6) / 1e6)
    50
    """
    def ok(rate: float) -> bool:
        return overall_share(est, rate, duty_off, z) <= budget

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
