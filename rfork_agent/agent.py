"""The seed agent: a sidecar beside one SGLang seed instance.

It reads the seed's TransferEngine session and manifest per rank over SGLang's
HTTP API, registers them with the scheduler, heartbeats every second (an
APScheduler job), and grants leases for chunk reads no faster than the seed's
allowed byte rate (a FIFO token bucket). It is not in the data path: fork
clients read the seed's memory with one-sided TE reads.

Layers, one concern each:

- ``AgentState`` — the agent's state and decisions, no I/O: token bucket,
  lease book, identity/ranks, lifecycle ``Phase``, metrics. ``set_allowed_rate``
  is the seam the serving-QoS controller drives.
- ``SeedLink`` — the I/O loop: discovery from the seed, registration and
  heartbeats with the scheduler, a liveness probe of the seed.
- ``QosLoop`` — the serving-QoS job: scrapes the seed's ``/metrics`` once per
  second and hands it to ``throttle.qos.QosTracker`` (pure), which runs the
  controller; the decided rate goes to the token bucket via ``set_allowed_rate``.
- ``create_app`` — FastAPI routes (docs/DESIGN.md, "Agent HTTP API") mapping
  the state's outcomes to status codes.

Lifecycle (``Phase``)::

    discovering --seed answered--> registering --scheduler accepted--> registered
         ^                              ^                                  |
         |                              +---- heartbeat 404 / new TE session
         +---- seed down (liveness probe or failed refresh): deregister ---+

    >>> app = create_app(AgentConfig(seed_id="seed-0", sglang_url="http://127.0.0.1:30000",
    ...                              scheduler_url="http://127.0.0.1:8700", port=8800, rate_cap=2e9))
    >>> uvicorn.run(app, host="127.0.0.1", port=8800)
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Annotated, Awaitable, Callable
from urllib.parse import urlparse

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from fastapi import FastAPI
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from metrics.definitions import AgentMetrics
from rfork_agent import clients
from rfork_api.errors import InvalidIdentity
from rfork_api.models import ModelIdentity
from rfork_api.auth import GrantClaims, InvalidGrant, bearer_header, grant_key, verify_grant
from rfork_api import models as wire
from rfork_api.http import error_response, error_responses, install
from rfork_agent.leases import Lease, LeaseBook, LeaseExpired, UnknownLease
from rfork_api.seed_info import SeedUnavailable, fetch_server_info, fetch_transfer_engine_info
from throttle.controller import ControllerConfig, InvalidConfig, Mode, SloConfig
from throttle.prom_text import Scrape
from throttle.qos import (
    ACTIONS,
    SCRAPE_FAILURE_REASONS,
    THROTTLE_REASONS,
    QosReport,
    QosTracker,
    ScrapeFailure,
    ThrottleMode,
    classify_body,
)
from throttle.token_bucket import Reservation, TokenBucket, default_burst

log = logging.getLogger("rfork.agent")

LEASE_OUTCOMES = ("granted", "denied", "expired", "released", "returned")
THROTTLE_MODE_LABELS = tuple(m.value for m in Mode) + (ThrottleMode.FIXED.value, ThrottleMode.OFF.value)
"""Values of the ``mode`` label of ``rfork_agent_throttle_mode``: the controller's modes, plus fixed/off."""
ADAPTIVE_REASONS = tuple(r for r in THROTTLE_REASONS if r != "not_adaptive")
"""Values of the ``reason`` label of ``rfork_agent_throttle_decisions_total`` (only adaptive mode decides)."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class AgentConfig:
    """Everything one agent needs; validated on construction (ValueError names the field).

        >>> AgentConfig(seed_id="seed-0", sglang_url="http://127.0.0.1:30000",
        ...             scheduler_url="http://127.0.0.1:8700", rate_cap=100e6)
    """

    seed_id: str
    sglang_url: str
    """The seed's SGLang (or stand-in) HTTP URL."""
    scheduler_url: str
    host: str = "127.0.0.1"
    port: int = 8800
    agent_url: str = ""
    """URL fork clients use to reach this agent; default http://host:port."""
    rate_cap: float | None = None
    """Bytes/s this seed may serve to forks (the link cap); None = uncapped, 0 = paused (no
    lease is granted; the scheduler plans nothing on this seed)."""
    burst_bytes: float | None = None
    """Token bucket burst; default max(0.25 s x rate, 1 MiB)."""
    model: str | None = None
    """Identity overrides; defaults come from the seed's /server_info
    (model_path, revision or "main", dtype, tp_size)."""
    revision: str | None = None
    dtype: str | None = None
    tp_size: int | None = None
    ranks: tuple[int, ...] | None = None
    """Ranks to serve; default all of 0..tp_size-1."""
    lease_ttl_seconds: float = 30.0
    max_wait_seconds: float = 5.0
    """Longest a lease request is held waiting for budget (the client's wait_seconds is capped to it)."""
    heartbeat_interval: float = 1.0
    refresh_every_heartbeats: int = 5
    """Re-read the seed's TE info every this many heartbeats, to notice a restarted seed."""
    liveness_interval_seconds: float = 0.25
    """Probe the seed's /health this often; 0 disables the probe."""
    liveness_timeout_seconds: float = 2.0
    http_timeout_seconds: float = 5.0
    token: str | None = field(default=None, repr=False)
    """Shared bearer token (None = auth off): required on the lease API, sent to the
    scheduler, and the key that lease grants are verified with."""
    """Timeout of each call to the seed and the scheduler."""
    max_backoff_seconds: float = 2.0
    """Longest pause between attempts to reach the seed or the scheduler while not registered."""
    throttle: str = "off"
    """Serving-QoS throttle: "adaptive" (the controller follows the seed's latency; needs
    rate_cap and slo_itl_seconds), "fixed" (pace at rate_cap, export the seed's latency) or "off"."""
    slo_itl_seconds: float | None = None
    """Inter-token latency SLO threshold; best one of SGLang's ITL bucket bounds (..0.03, 0.035, 0.04, 0.06..)."""
    slo_ttft_seconds: float | None = None
    """Time-to-first-token SLO threshold, or None to ignore TTFT."""
    slo_budget: float = 0.01
    """Fraction of tokens (and of first tokens) allowed above the thresholds."""
    qos_interval_seconds: float = 1.0
    """How often the QoS job scrapes the seed's /metrics and decides."""
    metrics_url: str = ""
    """The seed's Prometheus endpoint; default sglang_url + /metrics."""
    metrics_timeout_seconds: float = 0.8
    """Timeout of one scrape: below the interval, so a hung seed cannot stack scrapes."""
    controller: ControllerConfig | None = None
    """Control-law tuning; default ControllerConfig(cap=rate_cap) (throttle/controller.py)."""

    def __post_init__(self) -> None:
        problems = []
        if not self.seed_id or len(self.seed_id) > 128:
            problems.append(f"seed_id {self.seed_id!r} must be 1..128 characters")
        for name in ("sglang_url", "scheduler_url") + (("agent_url",) if self.agent_url else ()):
            url = getattr(self, name)
            parsed = urlparse(url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                problems.append(f"{name} {url!r} is not an http(s) URL like http://127.0.0.1:30000")
        if not 0 < self.port < 65536:
            problems.append(f"port {self.port} is not in 1..65535")
        if self.rate_cap is not None and not (self.rate_cap >= 0 and math.isfinite(self.rate_cap)):
            problems.append(f"rate_cap {self.rate_cap} must be >= 0 bytes/s (0 = paused), or None for uncapped")
        if self.burst_bytes is not None and not self.burst_bytes > 0:
            problems.append(f"burst_bytes {self.burst_bytes} must be > 0")
        if self.tp_size is not None and self.tp_size < 1:
            problems.append(f"tp_size {self.tp_size} must be >= 1")
        if self.ranks is not None and (not self.ranks or any(r < 0 for r in self.ranks)):
            problems.append(f"ranks {self.ranks} must be a non-empty list of ranks >= 0")
        for name in ("lease_ttl_seconds", "heartbeat_interval", "http_timeout_seconds",
                     "liveness_timeout_seconds", "max_backoff_seconds"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_wait_seconds < 0 or self.liveness_interval_seconds < 0:
            problems.append("max_wait_seconds and liveness_interval_seconds must be >= 0")
        if self.refresh_every_heartbeats < 1:
            problems.append(f"refresh_every_heartbeats must be >= 1, got {self.refresh_every_heartbeats}")
        problems += self._qos_problems()
        if problems:
            raise ValueError("invalid agent config: " + "; ".join(problems))

    def _qos_problems(self) -> list[str]:
        modes = [m.value for m in ThrottleMode]
        if self.throttle not in modes:
            return [f"throttle {self.throttle!r} must be one of {', '.join(modes)}"]
        problems = []
        if self.metrics_url:
            parsed = urlparse(self.metrics_url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                problems.append(f"metrics_url {self.metrics_url!r} is not an http(s) URL like "
                                "http://127.0.0.1:30000/metrics")
        for name in ("qos_interval_seconds", "metrics_timeout_seconds"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                problems.append(f"{name} must be a number of seconds > 0, got {value}")
        if self.throttle == ThrottleMode.ADAPTIVE.value:
            if self.rate_cap is None:
                problems.append("adaptive throttling needs a link cap (rate_cap, --rate-cap): its floor (5% of "
                                "the cap) and step (cap/16) are fractions of it; measure the link, or use "
                                "--throttle fixed")
            if self.slo_itl_seconds is None:
                problems.append("adaptive throttling needs an ITL SLO (slo_itl_seconds, --slo-itl), e.g. 0.04")
        if self.throttle == ThrottleMode.FIXED.value and self.rate_cap is None:
            problems.append("fixed throttling paces at the link cap; give rate_cap (--rate-cap), e.g. 200MB/s")
        if self.throttle != ThrottleMode.OFF.value and self.rate_cap == 0:
            problems.append(f"{self.throttle} throttling has nothing to pace on a paused seed (rate_cap 0, "
                            "--rate-cap 0); give the link's rate, or --throttle off")
        try:
            self.slo
        except InvalidConfig as exc:
            problems.append(str(exc))
        if self.controller is not None and self.rate_cap is not None and self.controller.cap != self.rate_cap:
            problems.append(f"controller cap {self.controller.cap} differs from rate_cap {self.rate_cap}; "
                            "use the same value")
        return problems

    @property
    def slo(self) -> SloConfig | None:
        """The SLO, or None when no ITL threshold is configured. Raises InvalidSloConfig."""
        if self.slo_itl_seconds is None:
            if self.slo_ttft_seconds is not None:
                raise InvalidConfig("slo_itl_seconds", "a TTFT SLO needs an ITL SLO too (slo_itl_seconds, --slo-itl)")
            return None
        return SloConfig(itl_threshold_seconds=self.slo_itl_seconds, ttft_threshold_seconds=self.slo_ttft_seconds,
                         violation_budget=self.slo_budget)

    @property
    def controller_config(self) -> ControllerConfig | None:
        """The control law's config: ``controller`` or the defaults at ``rate_cap``; None when uncapped."""
        if self.controller is not None:
            return self.controller
        if not self.rate_cap:  # uncapped or paused: no law to run
            return None
        interval = self.qos_interval_seconds
        return ControllerConfig(cap_bytes_per_second=self.rate_cap, interval_seconds=interval,
                                stale_after_seconds=max(3.0, 3 * interval), pool_max_seconds=max(5.0, 5 * interval))

    @property
    def seed_metrics_url(self) -> str:
        return self.metrics_url or f"{self.sglang_url.rstrip('/')}/metrics"

    @property
    def advertised_url(self) -> str:
        return (self.agent_url or f"http://{self.host}:{self.port}").rstrip("/")


# The wire models (LeaseRequest, LeaseGranted, ...) are rfork_api.models: one definition for both ends.
LeaseRequest = wire.LeaseRequest  # the name AgentState.grant and its tests use


# --------------------------------------------------------------------------- state (no I/O)


class Phase(str, enum.Enum):
    DISCOVERING = "discovering"
    """Reading the seed's server info and TE info (at start, or after the seed went down)."""
    REGISTERING = "registering"
    """Seed known; the scheduler has not accepted the registration yet."""
    REGISTERED = "registered"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RankInfo:
    rank: int
    session_id: str
    manifest: dict

    @property
    def nbytes(self) -> int:
        return sum(numel * esize for _, numel, esize in self.manifest.values())


@dataclass(frozen=True)
class SeedDescription:
    """What discovery learned: the identity and each served rank's TE session and manifest."""

    identity: dict
    ranks: dict[int, RankInfo]

    def sessions(self) -> dict[int, str]:
        return {r: info.session_id for r, info in self.ranks.items()}


@dataclass(frozen=True)
class Denied:
    """A lease request the agent refuses: HTTP status, error code, message, extras."""

    status: int
    code: str
    message: str
    retry_after_seconds: float | None = None

    def response(self) -> JSONResponse:
        extra = {} if self.retry_after_seconds is None else {"retry_after_seconds": self.retry_after_seconds}
        return _error(self.status, self.code, self.message, **extra)


def _gauge(rate: float | None) -> float:
    return math.nan if rate is None else rate


@dataclass
class AgentState:
    """The agent's state and decisions; every method takes ``now`` or uses ``clock``, none does I/O.

        >>> state = AgentState(config, AgentMetrics(CollectorRegistry()), clock=lambda: 0.0)
        >>> state.set_allowed_rate(50e6, now=0.0)      # the QoS controller's seam
    """

    config: AgentConfig
    metrics: AgentMetrics
    clock: Callable[[], float] = time.monotonic
    bucket: TokenBucket = field(init=False)
    leases: LeaseBook = field(init=False)
    seed: SeedDescription | None = None
    phase: Phase = Phase.DISCOVERING
    seed_alive: bool = True
    """Last verdict of the liveness probe. Leases are refused while the seed is
    down: a read submitted to a dead peer only wastes the client's time."""
    heartbeats: int = 0
    qos: QosTracker = field(init=False)
    """The serving-QoS state (throttle/qos.py); ``QosLoop`` ticks it."""
    last_qos: QosReport | None = None
    granted_bytes: int = 0
    """Bytes granted in leases since start (the QoS loop's "transfer active" signal)."""
    _granted_at_tick: int = 0
    _in_flight_at_tick: int = 0
    _grant_key: bytes | None = field(init=False, default=None, repr=False)
    _grants_used: dict[tuple[str, str], float] = field(init=False, default_factory=dict, repr=False)
    """(job, assignment) -> grant expiry: a grant buys one lease, never two."""
    instance_id: str = field(init=False, default_factory=lambda: uuid.uuid4().hex)
    """This agent process, in every registration: the scheduler tells a restarted agent (a new
    id: its seed is eligible again for jobs that had excluded it) from one registering again."""

    def __post_init__(self) -> None:
        cap = self.config.rate_cap
        self._grant_key = None if self.config.token is None else grant_key(self.config.token)
        self.bucket = TokenBucket(cap, self._burst(cap), self.clock())
        self.leases = LeaseBook(self.config.lease_ttl_seconds)
        self.qos = QosTracker(self.config.slo, self.config.controller_config, ThrottleMode(self.config.throttle),
                              self.clock())
        seed = self.config.seed_id
        m = self.metrics
        m.rate_cap.labels(seed=seed).set(_gauge(cap))
        m.allowed_rate.labels(seed=seed).set(_gauge(cap))
        m.registered.labels(seed=seed).set(0)
        m.leases_in_flight.labels(seed=seed).set(0)
        # Touch every labelled series so dashboards see zeros, not gaps, before the first lease.
        m.granted_bytes_total.labels(seed=seed)
        m.read_bytes_total.labels(seed=seed)
        m.heartbeat_failures_total.labels(seed=seed)
        m.lease_wait.labels(seed=seed)
        for outcome in LEASE_OUTCOMES:
            m.leases_total.labels(seed=seed, outcome=outcome)
        self._init_qos_metrics()

    def _init_qos_metrics(self) -> None:
        seed, m, slo = self.config.seed_id, self.metrics, self.config.slo
        m.slo_itl.labels(seed=seed).set(math.nan if slo is None else slo.itl_threshold_seconds)
        ttft = None if slo is None else slo.ttft_threshold_seconds
        m.slo_ttft.labels(seed=seed).set(math.nan if ttft is None else ttft)
        for gauge in (m.observed_itl_p99, m.observed_ttft_p99, m.itl_slo_violation_ratio, m.latency_impact_ratio,
                      m.seed_metrics_age):
            gauge.labels(seed=seed).set(math.nan)
        for action in ACTIONS:
            for reason in ADAPTIVE_REASONS:
                m.throttle_decisions_total.labels(seed=seed, action=action, reason=reason)
        for reason in SCRAPE_FAILURE_REASONS:
            m.seed_metrics_scrape_failures_total.labels(seed=seed, reason=reason)
        if self.qos.state is not None:  # adaptive: start where the controller starts (the floor)
            self.set_allowed_rate(self.qos.state.rate_bytes_per_second, self.clock())
            self._set_mode_gauge(self.qos.state.mode.value)
        else:
            self._set_mode_gauge(self.qos.throttle.value)

    def _set_mode_gauge(self, current: str) -> None:
        gauge = self.metrics.throttle_mode
        for label in THROTTLE_MODE_LABELS:
            gauge.labels(seed=self.config.seed_id, mode=label).set(1 if label == current else 0)

    def _burst(self, rate: float | None) -> float:
        return self.config.burst_bytes or default_burst(rate)

    # -- rate ---------------------------------------------------------------

    @property
    def allowed_rate(self) -> float | None:
        return self.bucket.rate

    def set_allowed_rate(self, rate: float | None, now: float) -> None:
        """Pace leases at ``rate`` bytes/s from ``now`` on: the QoS controller's seam.

        Never above the configured cap (None with a cap means "back to the
        cap"); 0 pauses new leases (a probe pause). The bucket keeps its
        balance and any debt; the burst follows the rate (a lower rate also
        allows a smaller burst), except that a pause keeps it unchanged.
        """
        cap = self.config.rate_cap
        if rate is not None and (math.isnan(rate) or rate < 0):
            raise ValueError(f"allowed rate must be >= 0 bytes/s or None, got {rate}")
        if cap is not None:
            rate = cap if rate is None else min(rate, cap)
        burst = None if rate == 0 else self._burst(rate)
        self.bucket.set_rate(rate, now, burst=burst)
        self.metrics.allowed_rate.labels(seed=self.config.seed_id).set(_gauge(rate))

    # -- serving QoS ------------------------------------------------------------

    def take_transfer_activity(self) -> bool:
        """Whether chunk reads may have run since the last call: a lease was granted, or held.

        The controller learns the seed's no-transfer baseline from intervals
        where this is False, so a lease held across the tick counts as active.
        """
        in_flight = self.leases.in_flight()
        active = self.granted_bytes != self._granted_at_tick or self._in_flight_at_tick > 0 or in_flight > 0
        self._granted_at_tick, self._in_flight_at_tick = self.granted_bytes, in_flight
        return active

    def apply_qos(self, report: QosReport, now: float) -> bool:
        """Follow one QoS tick: set the bucket's rate and export the report.

        Returns True when the rate changed notably (paused, resumed, or by more
        than a quarter): worth telling the scheduler now rather than at the
        next heartbeat, since its planner sizes this seed's share from it.
        """
        seed, m = self.config.seed_id, self.metrics
        before = self.allowed_rate
        if report.throttle is not ThrottleMode.OFF:
            self.set_allowed_rate(report.rate_bytes_per_second, now)
        after = self.allowed_rate
        self.last_qos = report
        m.observed_itl_p99.labels(seed=seed).set(report.observed_itl_p99_seconds)
        m.observed_ttft_p99.labels(seed=seed).set(report.observed_ttft_p99_seconds)
        m.itl_slo_violation_ratio.labels(seed=seed).set(report.itl_slo_violation_ratio)
        m.latency_impact_ratio.labels(seed=seed).set(report.latency_impact_ratio)
        m.seed_metrics_age.labels(seed=seed).set(report.metrics_age_seconds)
        if report.action is not None:
            m.throttle_decisions_total.labels(seed=seed, action=report.action, reason=report.throttle_reason).inc()
        if report.throttle_reason_changed and report.throttle_reason != "not_adaptive":
            log.info("agent %s: %s", seed, describe_throttle_reason(report, self.qos.slo, self.qos.controller))
        if report.scrape_failure is not None:
            m.seed_metrics_scrape_failures_total.labels(seed=seed, reason=report.scrape_failure.reason).inc()
        self._set_mode_gauge(report.mode_label)
        if before == after:
            return False
        if before is None or after is None or before == 0 or after == 0:
            return True
        return abs(after - before) > 0.25 * before

    def set_throttle(self, mode: ThrottleMode, rate: float | None, now: float,
                     slo_itl_seconds: float | None = None) -> None:
        """Switch the throttle (and optionally the ITL SLO) at run time.

        Raises ValueError saying why the config cannot do ``mode``; nothing changes then.
        """
        cap = self.config.rate_cap
        slo = self.qos.slo
        if slo_itl_seconds is not None:
            slo = (SloConfig(itl_threshold_seconds=slo_itl_seconds, violation_budget=self.config.slo_budget)
                   if slo is None else replace(slo, itl_threshold_seconds=slo_itl_seconds))
        if mode is not ThrottleMode.FIXED and rate is not None:
            raise ValueError("rate_bytes_per_second applies to fixed mode only; leave it out")
        if mode is not ThrottleMode.OFF and cap is None:
            raise ValueError(f"{mode.value} throttling needs a link cap; start the agent with --rate-cap")
        if mode is not ThrottleMode.OFF and cap == 0:
            raise ValueError(f"this seed is paused (--rate-cap 0): {mode.value} throttling has nothing to pace; "
                             "restart the agent with the link's rate")
        if mode is ThrottleMode.ADAPTIVE and slo is None:
            raise ValueError("adaptive throttling needs an ITL SLO; give slo_itl_seconds or start with --slo-itl")
        if rate is not None and cap is not None and rate > cap:
            raise ValueError(f"fixed rate {rate:.4g} B/s is above this agent's cap {cap:.4g} B/s; lower it")
        if slo is not self.qos.slo:
            self.qos.slo = slo
            self.metrics.slo_itl.labels(seed=self.config.seed_id).set(slo.itl_threshold_seconds)
        self.qos.set_mode(mode, now, rate)
        if self.qos.state is not None:
            self.set_allowed_rate(self.qos.state.rate_bytes_per_second, now)
            self._set_mode_gauge(self.qos.state.mode.value)
        else:
            self.set_allowed_rate(rate, now)  # None: back to the cap
            self._set_mode_gauge(mode.value)
        log.info("agent %s: throttle %s%s", self.config.seed_id, mode.value,
                 "" if rate is None else f" at {rate / 1e6:.1f} MB/s")

    def health(self) -> wire.AgentHealth:
        return wire.AgentHealth(status="ok", phase=self.phase.value, seed_alive=self.seed_alive)

    def throttle_reply(self) -> wire.ThrottleStatus:
        return wire.ThrottleStatus(allowed_rate_bytes_per_second=self.allowed_rate, **self.throttle_status())

    def throttle_status(self) -> dict:
        report = self.last_qos

        def num(x: float | None) -> float | None:
            return None if x is None or math.isnan(x) else x

        return {
            "mode": self.qos.throttle.value,
            "controller_mode": None if report is None else report.mode_label,
            "action": None if report is None else report.action,
            "reason": None if report is None else report.reason,
            "throttle_reason": self.qos.throttle_reason,
            "baseline_itl_slo_violation_ratio": None if report is None else num(report.baseline_itl_slo_violation_ratio),
            "slo_itl_seconds": None if self.qos.slo is None else self.qos.slo.itl_threshold_seconds,
            "observed_itl_p99_seconds": None if report is None else num(report.observed_itl_p99_seconds),
            "itl_slo_violation_ratio": None if report is None else num(report.itl_slo_violation_ratio),
            "latency_impact_ratio": None if report is None else num(report.latency_impact_ratio),
            "seed_metrics_age_seconds": None if report is None else num(report.metrics_age_seconds),
        }

    # -- leases -------------------------------------------------------------

    def check_grant(self, job_id: str, assignment_id: str, rank: int, nbytes: int, grant: str,
                    wall_now: float) -> Denied | None:
        """With auth on, a lease needs the scheduler's grant for exactly this read, used once."""
        if self._grant_key is None:
            return None
        for key, expires in list(self._grants_used.items()):
            if expires <= wall_now:
                del self._grants_used[key]
        expected = GrantClaims(job_id, assignment_id, self.config.seed_id, rank, nbytes, expires_at=0)
        try:
            claims = verify_grant(self._grant_key, grant, expected, wall_now)
        except InvalidGrant as exc:
            return Denied(403, "invalid_grant", f"lease refused: {exc}")
        if (job_id, assignment_id) in self._grants_used:
            return Denied(403, "invalid_grant",
                          f"lease refused: assignment {assignment_id} of job {job_id} already had its lease "
                          "(a grant buys one lease); ask the scheduler for work again")
        self._grants_used[(job_id, assignment_id)] = claims.expires_at
        return None

    def forget_grant(self, job_id: str, assignment_id: str) -> None:
        self._grants_used.pop((job_id, assignment_id), None)

    def check_lease(self, rank: int) -> Denied | None:
        """Refusals that do not depend on the budget (seed down, unknown rank)."""
        seed = self.config.seed_id
        if self.seed is None:
            return Denied(503, "seed_unavailable",
                          f"agent for {seed} has not read the seed's TransferEngine info from "
                          f"{self.config.sglang_url} yet; read this chunk from another seed")
        if not self.seed_alive:
            return Denied(503, "seed_unavailable",
                          f"seed {seed} at {self.config.sglang_url} is not answering; "
                          "read this chunk from another seed")
        if rank not in self.seed.ranks:
            return Denied(404, "unknown_rank",
                          f"seed {seed} serves ranks {sorted(self.seed.ranks)}, not rank {rank}; "
                          "ask the scheduler for work again")
        return None

    def reserve(self, nbytes: int, wait_seconds: float, now: float) -> Reservation | Denied:
        """A bucket reservation, or a 429 ``Denied`` with the time to ask again."""
        max_wait = min(wait_seconds, self.config.max_wait_seconds)
        reservation = self.bucket.reserve(nbytes, now, max_wait)
        if reservation is not None:
            return reservation
        self.metrics.leases_total.labels(seed=self.config.seed_id, outcome="denied").inc()
        needed = self.bucket.wait_for(nbytes, now, max_wait)
        rate = self.allowed_rate
        if math.isinf(needed):  # paused: the controller decides again within a heartbeat or so
            retry, pace = self.config.heartbeat_interval, (
                "paused by its operator (--rate-cap 0); read elsewhere" if self.config.rate_cap == 0
                else "paused (allowed rate 0)")
        else:
            # Ask again when it would be granted. Rounded up to the ms (asking a little early is a
            # second refusal, not a grant), except float noise under 0.1 us, which the bucket's
            # WAIT_TOLERANCE_SECONDS absorbs.
            retry = min(max(self.bucket.retry_after(nbytes, now, max_wait), 0.05), 30.0)
            retry, pace = math.ceil(retry * 1000 - 1e-4) / 1000, f"paced at {rate / 1e6:.1f} MB/s"
        if not math.isinf(needed) and self.bucket.pays_after(nbytes, max_wait):
            why = (f"{nbytes} bytes are more than the {max_wait:.2f} s wait can pay for first, so they start "
                   f"when no bytes are booked ahead of them, in {needed:.2f} s")
        else:
            why = f"{nbytes} bytes could start in {needed:.2f} s, more than the {max_wait:.2f} s wait"
        return Denied(
            429, "over_budget", f"seed {self.config.seed_id} is {pace}; {why}; retry in {retry:.3f} s",
            retry_after_seconds=retry,
        )

    def grant(self, body: LeaseRequest, asked_at: float, now: float) -> Lease:
        lease = self.leases.grant(body.job_id, body.assignment_id, body.rank, body.bytes, now)
        seed, m = self.config.seed_id, self.metrics
        m.leases_total.labels(seed=seed, outcome="granted").inc()
        m.granted_bytes_total.labels(seed=seed).inc(body.bytes)
        self.granted_bytes += body.bytes
        m.lease_wait.labels(seed=seed).observe(max(now - asked_at, 0.0))
        m.leases_in_flight.labels(seed=seed).set(self.leases.in_flight())
        return lease

    def release(self, lease_id: str, used: bool, now: float) -> int:
        """End a lease; returns the bytes refunded. Raises UnknownLease (LeaseExpired)."""
        seed, m = self.config.seed_id, self.metrics
        self.expire_leases(now)
        try:
            released = self.leases.release(lease_id, now, used=used)
        except LeaseExpired as exc:
            self._expired([exc.lease])
            raise
        if released.refund_bytes:
            self.bucket.refund(released.refund_bytes, now)
            m.leases_total.labels(seed=seed, outcome="returned").inc()
        else:
            m.read_bytes_total.labels(seed=seed).inc(released.nbytes)
            m.leases_total.labels(seed=seed, outcome="released").inc()
        m.leases_in_flight.labels(seed=seed).set(self.leases.in_flight())
        return released.refund_bytes

    def expire_leases(self, now: float) -> None:
        self._expired(self.leases.expire(now))

    def _expired(self, gone: list[Lease]) -> None:
        seed = self.config.seed_id
        for lease in gone:
            # Tokens are not refunded: the client may have read the bytes.
            self.metrics.leases_total.labels(seed=seed, outcome="expired").inc()
            log.warning("lease %s (job %s, assignment %s, %d bytes) expired unreleased after %g s",
                        lease.lease_id, lease.job_id, lease.assignment_id, lease.nbytes, self.config.lease_ttl_seconds)
        self.metrics.leases_in_flight.labels(seed=seed).set(self.leases.in_flight())

    # -- scheduler bodies -----------------------------------------------------

    def registration_body(self) -> dict:
        assert self.seed is not None, "register only after discovery"
        return {
            "identity": dict(self.seed.identity),
            "agent_url": self.config.advertised_url,
            "rate_cap_bytes_per_second": self.config.rate_cap,
            "ranks": [
                {"rank": info.rank, "session_id": info.session_id, "manifest": info.manifest}
                for _, info in sorted(self.seed.ranks.items())
            ],
            "agent_instance_id": self.instance_id,
        }

    def heartbeat_body(self, now: float) -> dict:
        available = self.bucket.available(now)
        throttle = self.throttle_status()

        def finite(x: float | None) -> float | None:  # the scheduler's API is strict JSON: no NaN or inf
            return x if x is not None and math.isfinite(x) else None

        return {
            "allowed_rate_bytes_per_second": self.allowed_rate,
            # Uncapped has no balance; JSON has no inf and allowed_rate null already says it.
            "available_bytes": 0.0 if math.isinf(available) else float(available),
            "in_flight_leases": self.leases.in_flight(),
            # The seed's SLO state for the scheduler's GET /v1/fleet.
            "qos": {"throttle": throttle["mode"], "slo_itl_seconds": finite(throttle["slo_itl_seconds"]),
                    "observed_itl_p99_seconds": finite(throttle["observed_itl_p99_seconds"]),
                    "latency_impact_ratio": finite(throttle["latency_impact_ratio"])},
        }

    def set_phase(self, phase: Phase) -> None:
        if phase is not self.phase:
            log.info("agent %s: %s -> %s", self.config.seed_id, self.phase.value, phase.value)
        self.phase = phase
        self.metrics.registered.labels(seed=self.config.seed_id).set(1 if phase is Phase.REGISTERED else 0)

    def status(self, now: float) -> dict:
        ranks = [] if self.seed is None else [
            {"rank": r, "session_id": info.session_id, "tensors": len(info.manifest), "bytes": info.nbytes}
            for r, info in sorted(self.seed.ranks.items())
        ]
        available = self.bucket.available(now)
        return {
            "seed_id": self.config.seed_id,
            "phase": self.phase.value,
            "seed_alive": self.seed_alive,
            "sglang_url": self.config.sglang_url,
            "scheduler_url": self.config.scheduler_url,
            "agent_url": self.config.advertised_url,
            "identity": None if self.seed is None else self.seed.identity,
            "ranks": ranks,
            "rate_cap_bytes_per_second": self.config.rate_cap,
            "allowed_rate_bytes_per_second": self.allowed_rate,
            "available_bytes": None if math.isinf(available) else available,
            "in_flight_leases": self.leases.in_flight(),
            "in_flight_bytes": self.leases.in_flight_bytes(),
            "granted_bytes": self.granted_bytes,
            "throttle": self.throttle_status(),
        }


# --------------------------------------------------------------------------- I/O


async def discover(config: AgentConfig, http: httpx.AsyncClient) -> SeedDescription:
    """The seed's identity and per-rank TE info; config overrides the seed's answers."""
    info = await fetch_server_info(http, config.sglang_url)
    try:
        identity = ModelIdentity.from_server_info(info, model=config.model, revision=config.revision,
                                                  dtype=config.dtype, tp_size=config.tp_size).model_dump()
    except InvalidIdentity as exc:
        raise SeedUnavailable(config.sglang_url, f"seed {config.sglang_url}: {exc}") from None
    tp_size = identity["tp_size"]
    ranks = {}
    for rank in config.ranks if config.ranks is not None else range(tp_size):
        session_id, manifest = await fetch_transfer_engine_info(http, config.sglang_url, rank)
        ranks[rank] = RankInfo(rank, session_id, manifest)
    return SeedDescription(identity, ranks)


class SeedLink:
    """Keeps the scheduler's view of this seed true: discovery, registration, heartbeats, liveness.

    ``step()`` is one heartbeat period's work and is safe to call from
    several tasks (a lock serialises it). Failures never escape: they are
    logged (once per distinct problem, then at debug) and retried with backoff.
    """

    def __init__(self, state: AgentState, http: httpx.AsyncClient, scheduler: clients.SchedulerClient) -> None:
        self.state = state
        self.config = state.config
        self.http = http
        self.scheduler = scheduler
        self._lock = asyncio.Lock()
        self._retry_at = 0.0
        self._attempts = 0
        self._last_problem = ""
        self._probe_failures = 0
        self._tasks: set[asyncio.Task] = set()

    # -- logging / backoff --------------------------------------------------

    def _problem(self, what: str, exc: Exception) -> None:
        message = f"{what}: {exc}"
        # Log a problem once when it starts or changes, not every second.
        if message != self._last_problem:
            log.warning("agent %s: %s", self.config.seed_id, message)
            self._last_problem = message
        else:
            log.debug("agent %s: %s", self.config.seed_id, message)

    def _backoff(self, now: float) -> None:
        self._attempts += 1
        delay = min(0.1 * 2 ** (self._attempts - 1), self.config.max_backoff_seconds)
        self._retry_at = now + delay

    def _recovered(self) -> None:
        if self._last_problem:
            log.info("agent %s: recovered (%s)", self.config.seed_id, self.state.phase.value)
        self._attempts, self._retry_at, self._last_problem = 0, 0.0, ""

    @property
    def retry_in(self) -> float:
        return max(self._retry_at - time.monotonic(), 0.0)

    # -- the loop -------------------------------------------------------------

    async def step(self) -> None:
        async with self._lock:
            state = self.state
            state.expire_leases(state.clock())
            if state.phase is Phase.STOPPED:
                return
            if not state.seed_alive and state.phase is not Phase.DISCOVERING:
                await self._seed_lost("the seed stopped answering its /health")
            if time.monotonic() < self._retry_at:
                return
            if state.phase is Phase.DISCOVERING and not state.seed_alive:
                return  # the liveness probe says down: wait for it to say up (it calls step() then)
            if state.phase is Phase.DISCOVERING and not await self._discover():
                return
            if state.phase is Phase.REGISTERING:
                await self._register()
                return  # a registration counts as this period's heartbeat
            if state.phase is Phase.REGISTERED:
                await self._heartbeat()

    async def _discover(self) -> bool:
        try:
            self.state.seed = await discover(self.config, self.http)
        except SeedUnavailable as exc:
            self._problem(f"waiting for the seed at {self.config.sglang_url}", exc)
            self._backoff(time.monotonic())
            return False
        # Not `seed_alive = True`: the liveness probe owns that verdict. A seed that serves its TE
        # info while its /health fails was registered here, marked alive, then found down by the
        # next probe: a register/deregister flap during which leases for a down seed were granted.
        self.state.set_phase(Phase.REGISTERING)
        return True

    async def _register(self) -> None:
        state = self.state
        try:
            answer = await self.scheduler.register_seed(self.config.seed_id, state.registration_body())
        except clients.ClientError as exc:
            self._problem(f"cannot register with the scheduler at {self.config.scheduler_url}", exc)
            self._backoff(time.monotonic())
            return
        assert state.seed is not None
        state.set_phase(Phase.REGISTERED)
        state.heartbeats = 0
        log.info("agent %s registered with %s: %s ranks %s sessions %s (scheduler expects a heartbeat every %s s)",
                 self.config.seed_id, self.config.scheduler_url, state.seed.identity["model"],
                 sorted(state.seed.ranks), sorted(set(state.seed.sessions().values())),
                 answer.get("heartbeat_interval_seconds") if isinstance(answer, dict) else "?")
        self._recovered()

    async def _heartbeat(self) -> None:
        state, seed = self.state, self.config.seed_id
        state.heartbeats += 1
        if state.heartbeats % self.config.refresh_every_heartbeats == 0 and await self._seed_changed():
            return
        try:
            await self.scheduler.heartbeat(seed, state.heartbeat_body(state.clock()))
        except clients.UnknownSeed:
            # The scheduler restarted or dropped us (missed heartbeats): register again now.
            state.metrics.heartbeat_failures_total.labels(seed=seed).inc()
            log.warning("agent %s: the scheduler does not know this seed; re-registering", seed)
            state.set_phase(Phase.REGISTERING)
            await self._register()
        except clients.ClientError as exc:
            state.metrics.heartbeat_failures_total.labels(seed=seed).inc()
            self._problem(f"heartbeat to {self.config.scheduler_url} failed (will keep trying)", exc)
        else:
            if self._last_problem:
                self._recovered()

    async def _seed_changed(self) -> bool:
        """Re-read the seed; re-register if its TE sessions changed (it restarted). True if handled."""
        state = self.state
        try:
            fresh = await discover(self.config, self.http)
        except SeedUnavailable as exc:
            await self._seed_lost(str(exc))
            return True
        old = state.seed
        if old is not None and fresh.sessions() == old.sessions() and fresh.identity == old.identity:
            return False
        log.warning("agent %s: the seed restarted (TE sessions %s -> %s); re-registering",
                    self.config.seed_id, old and old.sessions(), fresh.sessions())
        state.seed = fresh
        state.set_phase(Phase.REGISTERING)
        await self._register()
        return True

    async def _seed_lost(self, why: str) -> None:
        """The seed is gone: leave the scheduler at once so jobs re-plan, then wait for it to return."""
        state = self.state
        log.warning("agent %s: seed %s lost (%s); deregistering and waiting for it to come back",
                    self.config.seed_id, self.config.sglang_url, why)
        registered = state.phase is Phase.REGISTERED
        # Forget the seed before the await: a lease asked while the scheduler answers must be refused.
        state.seed = None
        state.set_phase(Phase.DISCOVERING)
        if registered:
            await self.deregister()

    async def deregister(self) -> None:
        try:
            await self.scheduler.deregister_seed(self.config.seed_id)
        except clients.ClientError as exc:
            log.info("agent %s: could not deregister (%s); the scheduler drops silent seeds by itself",
                     self.config.seed_id, exc)

    async def bootstrap(self) -> None:
        """Discover and register as fast as backoff allows; the heartbeat job takes over after."""
        while self.state.phase not in (Phase.REGISTERED, Phase.STOPPED):
            await self.step()
            await asyncio.sleep(max(self.retry_in, 0.05))

    async def probe_seed(self) -> None:
        """Liveness of the seed's HTTP server. Connection refused counts at once; timeouts twice."""
        state = self.state
        try:
            response = await self.http.get(f"{self.config.sglang_url}/health",
                                           timeout=self.config.liveness_timeout_seconds)
            failed, hard = response.status_code != 200, False
        except httpx.ConnectError:
            failed, hard = True, True  # nothing listens: the process is gone
        except httpx.HTTPError:
            failed, hard = True, False  # slow under load is not dead
        self._probe_failures = self._probe_failures + 1 if failed else 0
        alive = not (hard or self._probe_failures >= 2)
        if alive == state.seed_alive:
            return
        state.seed_alive = alive
        if alive:
            log.warning("agent %s: seed %s answers again; re-reading its TE info", self.config.seed_id,
                        self.config.sglang_url)
            self._attempts, self._retry_at = 0, 0.0
        else:
            log.warning("agent %s: seed %s is DOWN; refusing leases", self.config.seed_id, self.config.sglang_url)
        # Act now, not at the next heartbeat; keep a reference so the task is not collected.
        task = asyncio.ensure_future(self.step())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def push_rate(self) -> None:
        """Heartbeat now (not at the next period): the allowed rate changed a lot and the
        scheduler's planner sizes this seed's in-flight depth from it."""
        if self.state.phase is not Phase.REGISTERED:
            return
        task = asyncio.ensure_future(self.step())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def job(self, body: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """``body`` as an APScheduler job that ends quietly when shutdown cancels it mid-flight."""

        async def run() -> None:
            try:
                await body()
            except asyncio.CancelledError:
                if self.state.phase is not Phase.STOPPED:
                    raise

        run.__name__ = run.__qualname__ = f"SeedLink.{body.__name__}"
        return run


class QosLoop:
    """The serving-QoS job's I/O: fetch the seed's ``/metrics``, tick the tracker, apply the rate.

    Everything it decides lives in ``throttle.qos.QosTracker`` (pure); this
    class only classifies what the fetch returned (unreachable, HTTP error,
    unparseable) and logs scrape failures at most once a minute per reason.
    One ``tick()`` per ``qos_interval_seconds`` (an APScheduler job).
    """

    def __init__(self, state: AgentState, http: httpx.AsyncClient,
                 on_rate_change: Callable[[], None] | None = None) -> None:
        self.state = state
        self.config = state.config
        self.http = http
        self.on_rate_change = on_rate_change

    async def scrape(self) -> Scrape | ScrapeFailure:
        url = self.config.seed_metrics_url
        try:
            response = await self.http.get(url, timeout=self.config.metrics_timeout_seconds)
        except httpx.TimeoutException:
            return ScrapeFailure("unreachable", f"GET {url} timed out after {self.config.metrics_timeout_seconds:g} s")
        except httpx.HTTPError as exc:
            return ScrapeFailure("unreachable", f"GET {url} failed: {exc.__class__.__name__}: {exc}")
        if response.status_code != 200:
            return ScrapeFailure("http_error", f"GET {url} answered HTTP {response.status_code}")
        return classify_body(response.text, taken_at=self.state.clock())

    async def tick(self) -> None:
        state, tracker = self.state, self.state.qos
        active = state.take_transfer_activity()
        scrape = await self.scrape() if tracker.scrapes else None
        now = state.clock()
        report = tracker.tick(now, scrape, active)
        before = state.allowed_rate
        notable = state.apply_qos(report, now)
        seed = self.config.seed_id
        if report.scrape_failure is not None and report.log_failure:
            unlogged = report.unlogged_failures
            log.warning("agent %s: cannot use the seed's metrics (%s: %s); allowed rate now %s%s", seed,
                        report.scrape_failure.reason, report.scrape_failure.message, _rate_text(state.allowed_rate),
                        f" ({unlogged} more failures since the last line)" if unlogged else "")
        elif report.log_recovered:
            log.info("agent %s: the seed's metrics are readable again", seed)
        # One INFO line per notable change of rate. Not per tick (an idle seed decides "cap" every
        # second), not for probes (a pause and a resume every 30 s), and not twice: a new
        # throttle reason already got its line in apply_qos.
        probe_edge = 0 in (before, state.allowed_rate)
        level = logging.INFO if notable and not probe_edge and not report.throttle_reason_changed else logging.DEBUG
        log.log(level, "agent %s: throttle %s -> %s: %s", seed, report.action or report.mode_label,
                _rate_text(state.allowed_rate), report.reason)
        if notable and self.on_rate_change is not None:
            self.on_rate_change()


def describe_throttle_reason(report: QosReport, slo: SloConfig | None, controller: ControllerConfig | None) -> str:
    """The one log line for a new ``report.throttle_reason`` (throttle/qos.py: THROTTLE_REASONS)."""
    reason, share = report.throttle_reason, report.baseline_itl_slo_violation_ratio
    floor = None if controller is None else controller.floor_bytes_per_second
    own = "" if slo is None or math.isnan(share) else (
        f"{share:.1%} of its tokens over {slo.itl_threshold_seconds:g} s with no chunk reads; "
        f"budget {slo.violation_budget:.1%}")
    if reason == "seed_over_slo":
        return (f"holding forks at the floor ({_rate_text(floor)}): the seed misses its ITL SLO without the "
                f"transfer ({own}), so the transfer is not the cause; this seed serves forks at the floor until "
                "its own latency is back within the SLO (lower its load, or set an SLO it can meet)")
    if reason == "seed_idle":
        return f"the seed is idle: forks get the full rate ({_rate_text(controller and controller.cap)})"
    if reason == "metrics_stale":
        return f"no usable scrape of the seed's metrics: forks get the floor ({_rate_text(floor)}) until they return"
    rate = report.rate_bytes_per_second
    return ("the throttle follows the latency the transfer adds"
            + ("" if rate is None or rate == 0 else f", now {_rate_text(rate)}")
            + ("" if not own else f" (the seed on its own: {own})"))


def _rate_text(rate: float | None) -> str:
    return "uncapped" if rate is None else f"{rate / 1e6:.1f} MB/s"


# --------------------------------------------------------------------------- app


def _error(status: int, code: str, message: str, **extra) -> JSONResponse:
    return error_response(status, code, message, **extra)


def create_app(config: AgentConfig, registry: CollectorRegistry | None = None,
               clock: Callable[[], float] = time.monotonic) -> FastAPI:
    """The agent's FastAPI app; its lifespan runs discovery, registration and heartbeats.

    ``registry`` receives the agent's metrics (a fresh one by default);
    ``clock`` drives the token bucket and lease ttl. ``app.state.agent`` is
    the ``AgentState`` (``set_allowed_rate`` is the QoS seam) and
    ``app.state.link`` the ``SeedLink`` while the app runs.
    """
    registry = registry if registry is not None else CollectorRegistry()
    state = AgentState(config, AgentMetrics(registry), clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        http = httpx.AsyncClient(timeout=config.http_timeout_seconds)
        scheduler = clients.SchedulerClient(config.scheduler_url, timeout=config.http_timeout_seconds,
                                            headers=bearer_header(config.token))
        link = SeedLink(state, http, scheduler)
        app.state.link = link
        jobs = AsyncIOScheduler()
        jobs.add_job(link.job(link.step), "interval", seconds=config.heartbeat_interval, id="heartbeat",
                     max_instances=1, coalesce=True, misfire_grace_time=None)
        if config.liveness_interval_seconds > 0:
            jobs.add_job(link.job(link.probe_seed), "interval", seconds=config.liveness_interval_seconds, id="liveness",
                         max_instances=1, coalesce=True, misfire_grace_time=None)
        # Always scheduled, so PUT /v1/throttle can turn the throttle on at run time; in off mode a tick is free.
        qos = QosLoop(state, http, on_rate_change=link.push_rate)
        app.state.qos = qos
        jobs.add_job(link.job(qos.tick), "interval", seconds=config.qos_interval_seconds, id="qos",
                     max_instances=1, coalesce=True, misfire_grace_time=None)
        jobs.start()
        # Register at once (with backoff) instead of one heartbeat interval later,
        # without holding up startup: /health answers while the seed warms up.
        boot = asyncio.create_task(link.bootstrap())
        try:
            yield
        finally:
            registered = state.phase is Phase.REGISTERED
            state.set_phase(Phase.STOPPED)  # before cancelling, so the jobs know it is shutdown
            jobs.shutdown(wait=False)
            boot.cancel()
            if registered:
                await link.deregister()
            await scheduler.aclose()
            await http.aclose()

    app = FastAPI(title="rfork agent", version="0.1.0", lifespan=lifespan, responses=error_responses())
    install(app, registry=registry, health=state.health, health_model=wire.AgentHealth, token=config.token,
            max_body_bytes=1 << 20, what="request")  # lease bodies are ~200 bytes
    app.state.agent = state

    @app.post("/v1/leases", response_model=wire.LeaseGranted)
    async def acquire_lease(body: wire.LeaseRequest):
        asked = clock()
        denied = state.check_lease(body.rank)
        if denied is not None:
            if denied.status != 404:
                state.metrics.leases_total.labels(seed=config.seed_id, outcome="denied").inc()
            return denied.response()
        denied = state.check_grant(body.job_id, body.assignment_id, body.rank, body.bytes, body.grant, time.time())
        if denied is not None:
            state.metrics.leases_total.labels(seed=config.seed_id, outcome="denied").inc()
            return denied.response()
        reservation = state.reserve(body.bytes, body.wait_seconds, asked)
        if isinstance(reservation, Denied):
            state.forget_grant(body.job_id, body.assignment_id)  # a 429 is not a use: the client asks again
            return reservation.response()
        # FIFO: start times increase in booking order, so sleepers wake in order.
        try:
            delay = reservation.delay(clock())
            if delay > 0:
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            state.bucket.refund(body.bytes, clock())  # the client is gone; nobody will read
            raise
        denied = state.check_lease(body.rank)  # the seed may have died while we waited
        if denied is not None:
            state.bucket.refund(body.bytes, clock())
            state.metrics.leases_total.labels(seed=config.seed_id, outcome="denied").inc()
            return denied.response()
        lease = state.grant(body, asked, clock())
        return wire.LeaseGranted(lease_id=lease.lease_id, ttl_seconds=config.lease_ttl_seconds)

    @app.post("/v1/leases/{lease_id}/release", response_model=wire.ReleaseReply)
    async def release_lease(lease_id: Annotated[str, PathParam(min_length=1, max_length=128)],
                            body: wire.ReleaseRequest | None = None):
        used = True if body is None else body.used
        try:
            refunded = state.release(lease_id, used, clock())
        except UnknownLease as exc:  # a KeyError: str() would quote the message
            return _error(404, "unknown_lease", exc.args[0])
        return wire.ReleaseReply(lease_id=lease_id, refunded_bytes=refunded)

    @app.get("/v1/status", response_model=wire.AgentStatus)
    async def status():
        return wire.AgentStatus.model_validate(state.status(clock()))

    @app.get("/v1/throttle", response_model=wire.ThrottleStatus)
    async def get_throttle():
        return state.throttle_reply()

    @app.put("/v1/throttle", response_model=wire.ThrottleStatus)
    async def put_throttle(body: wire.ThrottleRequest):
        try:
            state.set_throttle(ThrottleMode(body.mode.value), body.rate_bytes_per_second, clock(), body.slo_itl_seconds)
        except ValueError as exc:
            return _error(409, "throttle_unavailable", str(exc))
        link = getattr(app.state, "link", None)
        if link is not None:
            link.push_rate()
        return state.throttle_reply()

    return app
