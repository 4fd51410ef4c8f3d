"""SLO gates for rollouts: may a deploy step that adds instances (forks) proceed?

Two PromQL queries, defined here once, answer it; ``rfork gate`` runs them,
and deploy/kubernetes/gates/ carries them into an Argo Rollouts
``AnalysisTemplate`` and a Flagger ``MetricTemplate`` (generated from this
module by deploy/kubernetes/generate.py, and checked against it by
tests/kubernetes):

* :data:`SEED_ITL_P99` — the worst seed's inter-token latency p99 over the
  window, from SGLang's own histogram on every seed (scrape job
  ``rfork-seed``). Compared with the ITL SLO (``--slo-itl``). NaN when the
  seeds served no tokens in the window: nothing to judge.
* :data:`FORK_LATENCY_IMPACT` — the worst latency-impact ratio (observed ITL
  p99 / the seed's no-transfer baseline, ``rfork_agent_latency_impact_ratio``,
  a 5 s window each) over the window, among seeds that forks read from in the
  window. Compared with ``--max-impact``. When no fork read from any seed in
  the window it is exactly 1 (no impact), as long as agents are scraped at
  all; with no agent series it is empty, so a gate whose agents are not
  scraped cannot pass by accident.

Each tool judges the same numbers the same way: proceed when every judged
value is within its bound, hold when one is over (the SLO is at risk), and
"cannot tell" when a value is missing or NaN. Argo Rollouts maps these to
Successful, Failed and Inconclusive (a paused rollout); Flagger halts the
canary's advancement on both hold and no data; ``rfork gate`` exits 0, 1 and 2.

    >>> decide(GateConfig(slo_itl_seconds=0.04, window="1m"), {SEED_ITL_P99.name: 0.031}).verdict
    <Verdict.PROCEED: 0>
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlparse

import httpx

from throttle.prom_text import ITL_HISTOGRAM

WINDOW = "$window"
"""Placeholder for the query window in the templates below (e.g. ``1m``)."""

SEED_SCRAPE_JOB = "rfork-seed"
AGENT_SCRAPE_JOB = "rfork-agent"
"""Scrape job names, as in grafana/prometheus/prometheus.yml and the PodMonitor (the alert rules use them too)."""


@dataclass(frozen=True)
class GateQuery:
    """One gate measurement: a PromQL template whose only parameter is the window."""

    name: str
    template: str
    bound_flag: str
    """The ``rfork gate`` flag holding this value's upper bound."""
    what: str
    """What the value is, for messages."""

    def render(self, window: str) -> str:
        return self.template.replace(WINDOW, window)


SEED_ITL_P99 = GateQuery(
    name="seed-itl-p99",
    template=(
        f"max(histogram_quantile(0.99, sum by (instance, le) "
        f"(rate({ITL_HISTOGRAM}_bucket{{job=\"{SEED_SCRAPE_JOB}\"}}[{WINDOW}]))))"
    ),
    bound_flag="--slo-itl",
    what="worst seed ITL p99",
)

FORK_LATENCY_IMPACT = GateQuery(
    name="fork-latency-impact",
    template=(
        f"max(max_over_time(rfork_agent_latency_impact_ratio[{WINDOW}]) "
        f"and on(seed) (increase(rfork_agent_granted_bytes_total[{WINDOW}]) > 0)) "
        # No fork in the window: 1 (no impact), but only when agents are scraped at all.
        f"or (count(rfork_agent_granted_bytes_total) * 0 + 1)"
    ),
    bound_flag="--max-impact",
    what="worst latency impact during forks",
)

QUERIES = (SEED_ITL_P99, FORK_LATENCY_IMPACT)

_DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")


class GateInputError(ValueError):
    """A gate setting is unusable; the message names it and the fix."""


class Verdict(enum.IntEnum):
    """The gate's answer, and ``rfork gate``'s exit status."""

    PROCEED = 0
    HOLD = 1
    CANNOT_TELL = 2


@dataclass(frozen=True)
class GateConfig:
    """What to judge. At least one bound; ``window`` is a Prometheus duration.

        >>> GateConfig(slo_itl_seconds=-1, window="1m")
        Traceback (most recent call last):
        ...
        rfork_agent.gate.GateInputError: --slo-itl must be a number of seconds > 0, got -1
    """

    slo_itl_seconds: float | None = None
    """Hold when the worst seed's ITL p99 is above this."""
    max_impact: float | None = None
    """Hold when a forked-from seed's ITL p99 is more than this many times its baseline."""
    window: str = "1m"

    def __post_init__(self) -> None:
        if self.slo_itl_seconds is not None and not (
                math.isfinite(self.slo_itl_seconds) and self.slo_itl_seconds > 0):
            raise GateInputError(f"--slo-itl must be a number of seconds > 0, got {self.slo_itl_seconds:g}")
        if self.max_impact is not None and not (math.isfinite(self.max_impact) and self.max_impact >= 1):
            raise GateInputError(f"--max-impact must be a ratio >= 1 (1.5 = 50% slower than the seed's "
                                 f"baseline), got {self.max_impact:g}")
        if self.slo_itl_seconds is None and self.max_impact is None:
            raise GateInputError("nothing to judge: give --slo-itl SECONDS, --max-impact RATIO, or both")
        if not _DURATION.match(self.window):
            raise GateInputError(f"--window {self.window!r} is not a Prometheus duration like 30s, 1m or 1m30s")

    def bounds(self) -> dict[str, float]:
        """Query name -> the bound its value is judged against (only the judged queries)."""
        out = {}
        if self.slo_itl_seconds is not None:
            out[SEED_ITL_P99.name] = self.slo_itl_seconds
        if self.max_impact is not None:
            out[FORK_LATENCY_IMPACT.name] = self.max_impact
        return out


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    """One line: every judged value against its bound, or why it could not be judged."""

    def line(self) -> str:
        label = {Verdict.PROCEED: "proceed", Verdict.HOLD: "hold", Verdict.CANNOT_TELL: "cannot tell"}[self.verdict]
        return f"{label}: {self.reason}"


def _why_missing(query: GateQuery, window: str, value: float | None) -> str:
    if query is SEED_ITL_P99:
        if value is None:
            return (f"no seed ITL series ({ITL_HISTOGRAM}_bucket with job=\"{SEED_SCRAPE_JOB}\"): scrape every "
                    f"seed's SGLang /metrics (--enable-metrics) as job {SEED_SCRAPE_JOB}")
        return f"the seeds served no tokens in the last {window}, so their ITL p99 is unknown: gate under traffic or widen --window"
    if value is None:
        return (f"no rfork agent series (rfork_agent_granted_bytes_total): scrape every agent's /metrics "
                f"as job {AGENT_SCRAPE_JOB}")
    return (f"a seed forks read from has no latency baseline yet (rfork_agent_latency_impact_ratio is NaN): "
            f"run its agent with --throttle fixed or adaptive and let it serve a while before forking")


def _describe(query: GateQuery, value: float) -> str:
    if query is SEED_ITL_P99:
        return f"{value:.4g} s"
    return f"{value:.3g}x"


def decide(config: GateConfig, values: Mapping[str, float | None]) -> Decision:
    """Judge the measured values (query name -> value; None = empty result).

    Any value over its bound holds, even when another could not be judged: the
    SLO is at risk either way. Otherwise any missing or NaN value means
    "cannot tell"; otherwise proceed.

        >>> decide(GateConfig(slo_itl_seconds=0.04, max_impact=1.5),
        ...        {"seed-itl-p99": 0.05, "fork-latency-impact": None}).line()
        'hold: worst seed ITL p99 0.05 s > 0.04 s (--slo-itl) over the last 1m'
    """
    over, unknown, within = [], [], []
    for query in QUERIES:
        bound = config.bounds().get(query.name)
        if bound is None:
            continue
        value = values.get(query.name)
        if value is None or math.isnan(value):
            unknown.append(_why_missing(query, config.window, value))
        elif value > bound:
            over.append(f"{query.what} {_describe(query, value)} > {_describe(query, bound)} ({query.bound_flag})")
        else:
            within.append(f"{query.what} {_describe(query, value)} <= {_describe(query, bound)}")
    suffix = f" over the last {config.window}"
    if over:
        return Decision(Verdict.HOLD, "; ".join(over) + suffix)
    if unknown:
        return Decision(Verdict.CANNOT_TELL, "; ".join(unknown))
    return Decision(Verdict.PROCEED, "; ".join(within) + suffix)


# --------------------------------------------------------------------------- I/O


class PrometheusError(Exception):
    """Prometheus could not answer a query; the message says why and what to check."""


def check_prometheus_url(url: str) -> str:
    """The server root without a trailing slash; raises GateInputError for anything but http(s)://HOST[:PORT][/path]."""
    try:
        parsed = urlparse(url)
        host, _ = parsed.hostname, parsed.port  # .port raises for a port that is not a number in range
    except ValueError as exc:
        raise GateInputError(f"--prometheus {url!r} is not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not host:
        raise GateInputError(f"--prometheus {url!r} is not an http(s) URL like http://prometheus:9090")
    return url.rstrip("/")


class PrometheusClient:
    """Instant queries against Prometheus's HTTP API (``/api/v1/query``), one scalar each::

        with PrometheusClient("http://127.0.0.1:9090", timeout=5) as prom:
            prom.value("max(up)")   # 1.0; None when no series; NaN when Prometheus says NaN
    """

    def __init__(self, base_url: str, timeout: float = 10.0, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = check_prometheus_url(base_url)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def __enter__(self) -> "PrometheusClient":
        return self

    def __exit__(self, *exc) -> None:
        self._http.close()

    def value(self, query: str, at: float | None = None) -> float | None:
        """The query's single value (NaN possible) at ``at`` (Unix seconds; None: now); None when it
        returned no series."""
        params: dict[str, str] = {"query": query}
        if at is not None:
            params["time"] = f"{at:.3f}"
        try:
            response = self._http.get("/api/v1/query", params=params)
        except httpx.HTTPError as exc:
            raise PrometheusError(f"cannot reach Prometheus at {self.base_url} ({type(exc).__name__}: {exc}); "
                                  "check --prometheus and that Prometheus is up") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "status" not in body:
            raise PrometheusError(
                f"{self.base_url} answered HTTP {response.status_code} with no Prometheus API response: "
                "give --prometheus the server's root URL, e.g. http://prometheus:9090")
        if body["status"] != "success":
            raise PrometheusError(f"Prometheus at {self.base_url} rejected the query "
                                  f"({body.get('errorType')}: {body.get('error')}): {query}")
        try:
            return _single_value(body["data"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise PrometheusError(f"Prometheus at {self.base_url} sent a result rfork cannot read "
                                  f"({type(exc).__name__}: {exc}) for {query}") from exc


def _single_value(data: dict) -> float | None:
    """The one value of an instant query's ``data``; None for an empty vector."""
    result = data["result"]
    if data["resultType"] == "scalar":
        return float(result[1])
    if data["resultType"] != "vector":
        raise ValueError(f"a {data['resultType']} result, expected a vector")
    if len(result) > 1:
        raise ValueError(f"{len(result)} series, expected one")
    return float(result[0]["value"][1]) if result else None  # Prometheus sends NaN as "NaN"; float() reads it


def run_gate(config: GateConfig, prometheus: PrometheusClient, at: float | None = None) -> Decision:
    """Query the judged values over the window ending at ``at`` (Unix seconds; None: now) and decide.
    Prometheus failures are "cannot tell", never an exception."""
    values: dict[str, float | None] = {}
    try:
        for query in QUERIES:
            if query.name in config.bounds():
                values[query.name] = prometheus.value(query.render(config.window), at)
    except PrometheusError as exc:
        return Decision(Verdict.CANNOT_TELL, str(exc))
    return decide(config, values)
