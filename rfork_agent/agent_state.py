"""The seed agent's state and decisions, with no I/O: ``AgentState``.

It holds the token bucket, the lease book, what discovery learned about the
seed (``SeedDescription``), the lifecycle ``Phase`` and the serving-QoS
tracker; every method takes ``now`` (or uses the injected clock). Its metrics
are read from this state at scrape time (``AgentStateCollector``); only events
(leases, bytes, decisions, failures) are counted as they happen.
``set_allowed_rate`` is the seam the serving-QoS controller drives.

    >>> state = AgentState(config, AgentMetrics(CollectorRegistry()), clock=lambda: 0.0)
    >>> state.set_allowed_rate(50e6, now=0.0)      # the QoS controller's seam
"""

from __future__ import annotations

import enum
import logging
import math
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

from fastapi.responses import JSONResponse
from prometheus_client.metrics_core import Metric

from metrics.definitions import AgentMetrics
from rfork_agent.agent_config import AgentConfig
from rfork_agent.leases import Lease, LeaseBook, LeaseExpired
from rfork_api import models as wire
from rfork_api.auth import GrantClaims, InvalidGrant, grant_key, verify_grant
from rfork_api.http import error_response
from throttle.controller import ControllerConfig, Mode, SloConfig, tuning_over
from throttle.qos import ACTIONS, SCRAPE_FAILURE_REASONS, THROTTLE_REASONS, QosReport, QosTracker, ThrottleMode
from throttle.token_bucket import Reservation, TokenBucket, default_burst

log = logging.getLogger("rfork.agent")

LEASE_OUTCOMES = ("granted", "denied", "expired", "released", "returned")
THROTTLE_MODE_LABELS = tuple(m.value for m in Mode) + (ThrottleMode.FIXED.value, ThrottleMode.OFF.value)
"""Values of the ``mode`` label of ``rfork_agent_throttle_mode``: the controller's modes, plus fixed/off."""
ADAPTIVE_REASONS = tuple(r for r in THROTTLE_REASONS if r != "not_adaptive")
"""Values of the ``reason`` label of ``rfork_agent_throttle_decisions_total`` (only adaptive mode decides)."""

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


RankInfo = wire.RankInfo
"""One served rank: its TransferEngine session and manifest (the registration's own model)."""


@dataclass(frozen=True)
class SeedDescription:
    """What discovery learned: the identity and each served rank's TE session and manifest."""

    identity: wire.ModelIdentity
    ranks: dict[int, RankInfo]
    te_info_digests: dict[int, str] = field(default_factory=dict)
    """Per rank, the digest of the TE-info answer this was read from (``rfork_api.seed_info``): the
    restart check compares these and reads the answers whole only when one changed."""

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
        return error_response(self.status, self.code, self.message, **extra)


def _gauge(value: float | None) -> float:
    """A gauge's sample: NaN says "none" (uncapped, no SLO, no report yet)."""
    return math.nan if value is None else float(value)


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
    seed_lost_because: str | None = None
    """Why the seed was forgotten (it was read before and then lost); None before the first read
    and once it is read again. Lease refusals say which of the two it is."""
    phase: Phase = Phase.DISCOVERING
    seed_alive: bool = True
    """Last verdict of the liveness probe. Leases are refused while the seed is
    down: a read submitted to a dead peer only wastes the client's time."""
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
    throttle_mode_label: str = field(init=False, default=ThrottleMode.OFF.value)
    """The ``mode`` label at 1 in ``rfork_agent_throttle_mode``: the controller's mode, or fixed/off."""
    throttle_tuning: str = field(init=False, default="")
    """The control law's tuning over the start config, as ``PUT /v1/throttle`` last set it ("": none)."""
    read_pieces: wire.ReadPieces = field(init=False)
    """How fork clients are to read this seed's chunks: the start config's, then ``PUT /v1/read-pieces``'s."""
    instance_id: str = field(init=False, default_factory=lambda: uuid.uuid4().hex)
    """This agent process, in every registration: the scheduler tells a restarted agent (a new
    id: its seed is eligible again for jobs that had excluded it) from one registering again."""

    def __post_init__(self) -> None:
        cap = self.config.rate_cap
        self._grant_key = None if self.config.token is None else grant_key(self.config.token)
        self.read_pieces = self.config.read_pieces
        self.bucket = TokenBucket(cap, self._burst(cap), self.clock())
        self.leases = LeaseBook(self.config.lease_ttl_seconds)
        self.qos = QosTracker(self.config.slo, self.config.controller_config, ThrottleMode(self.config.throttle),
                              self.clock())
        seed = self.config.seed_id
        m = self.metrics
        m.registry.register(AgentStateCollector(self))
        # Touch every labelled series so dashboards see zeros, not gaps, before the first lease.
        m.granted_bytes_total.labels(seed=seed)
        m.read_bytes_total.labels(seed=seed)
        m.heartbeat_failures_total.labels(seed=seed)
        m.idle_watch_wakeups_total.labels(seed=seed)
        m.lease_wait.labels(seed=seed)
        for outcome in LEASE_OUTCOMES:
            m.leases_total.labels(seed=seed, outcome=outcome)
        self._init_qos_metrics()

    def _init_qos_metrics(self) -> None:
        seed, m = self.config.seed_id, self.metrics
        for action in ACTIONS:
            for reason in ADAPTIVE_REASONS:
                m.throttle_decisions_total.labels(seed=seed, action=action, reason=reason)
        for reason in SCRAPE_FAILURE_REASONS:
            m.seed_metrics_scrape_failures_total.labels(seed=seed, reason=reason)
        if self.qos.state is not None:  # adaptive: start where the controller starts (the floor)
            self.set_allowed_rate(self.qos.state.rate_bytes_per_second, self.clock())
            self.throttle_mode_label = self.qos.state.mode.value
        else:
            self.throttle_mode_label = self.qos.throttle.value

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

    # -- serving QoS ------------------------------------------------------------

    def take_transfer_activity(self) -> bool:
        """Whether chunk reads may have run since the last call: a lease was granted, or held.

        The controller learns the seed's no-transfer baseline from intervals
        where this is False, so a lease held across the tick counts as active.
        """
        return self.take_interval_transfer()[0]

    def take_interval_transfer(self) -> tuple[bool, int]:
        """(whether chunk reads may have run since the last call, as :meth:`take_transfer_activity`; the bytes
        granted leases for since then): what the QoS tick tells the controller about the interval."""
        in_flight = self.leases.in_flight()
        granted = self.granted_bytes - self._granted_at_tick
        active = granted != 0 or self._in_flight_at_tick > 0 or in_flight > 0
        self._granted_at_tick, self._in_flight_at_tick = self.granted_bytes, in_flight
        return active, granted

    def apply_qos(self, report: QosReport, now: float) -> bool:
        """Follow one QoS tick: set the bucket's rate and export the report.

        Returns True when the rate changed notably (paused, resumed, or by more
        than a quarter): worth telling the scheduler now rather than at the
        next heartbeat, since its planner sizes this seed's share from it.
        """
        seed, m = self.config.seed_id, self.metrics
        before = self.allowed_rate
        # The report, its counters and its mode first, the rate last: the QoS loop runs on the
        # agent's event loop while scrapes and tests read from other threads, and whoever sees
        # the new rate must also see the decision that set it (a scrape showing the floor with
        # the previous mode and age was a real, if brief, lie).
        self.last_qos = report
        if report.action is not None:
            m.throttle_decisions_total.labels(seed=seed, action=report.action, reason=report.throttle_reason).inc()
        if report.throttle_reason_changed and report.throttle_reason != "not_adaptive":
            log.info("agent %s: %s", seed, describe_throttle_reason(report, self.qos.slo, self.qos.controller))
        if report.scrape_failure is not None:
            m.seed_metrics_scrape_failures_total.labels(seed=seed, reason=report.scrape_failure.reason).inc()
        self.throttle_mode_label = report.mode_label
        if report.throttle is not ThrottleMode.OFF:
            self.set_allowed_rate(report.rate_bytes_per_second, now)
        after = self.allowed_rate
        if before == after:
            return False
        if before is None or after is None or before == 0 or after == 0:
            return True
        return abs(after - before) > 0.25 * before

    def set_throttle(self, mode: ThrottleMode, rate: float | None, now: float,
                     slo_itl_seconds: float | None = None, throttle_tuning: str | None = None) -> None:
        """Switch the throttle (and optionally the ITL SLO, and the law's tuning over the start config)
        at run time. A new tuning starts the adaptive law afresh.

        Raises InvalidTuning for a tuning the law does not take, ValueError saying why the config
        cannot do ``mode``; nothing changes then.
        """
        cap = self.config.rate_cap
        slo = self.qos.slo
        controller = self.qos.controller
        if throttle_tuning is not None:
            start = self.config.controller_config
            if start is None:
                raise ValueError("throttle_tuning tunes the adaptive law, which needs a link cap; "
                                 "start the agent with --rate-cap")
            controller = tuning_over(start, throttle_tuning)  # InvalidTuning: nothing changed
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
        if throttle_tuning is not None:
            if controller != self.qos.controller:
                self.qos.controller = controller
                self.qos.state = None  # the law starts afresh under its new tuning
            self.throttle_tuning = throttle_tuning.strip()
        self.qos.set_mode(mode, now, rate)
        if self.qos.state is not None:
            self.set_allowed_rate(self.qos.state.rate_bytes_per_second, now)
            self.throttle_mode_label = self.qos.state.mode.value
        else:
            self.set_allowed_rate(rate, now)  # None: back to the cap
            self.throttle_mode_label = mode.value
        log.info("agent %s: throttle %s%s%s", self.config.seed_id, mode.value,
                 "" if rate is None else f" at {rate / 1e6:.1f} MB/s",
                 "" if throttle_tuning is None else
                 f", the law's tuning {self.throttle_tuning!r}" if self.throttle_tuning else ", the law's start tuning")

    def health(self) -> wire.AgentHealth:
        return wire.AgentHealth(status="ok", phase=self.phase.value, seed_alive=self.seed_alive)

    def set_read_pieces(self, pieces: wire.ReadPieces) -> None:
        """From the next lease on, clients read this seed's chunks so (leases granted keep theirs)."""
        if pieces != self.read_pieces:
            log.info("agent %s: reads in pieces of %s, %g s apart", self.config.seed_id,
                     pieces.read_piece_bytes or "whole chunks", pieces.read_piece_gap_seconds)
        self.read_pieces = pieces

    def lease_read_pieces(self, nbytes: int) -> tuple[int, float]:
        """(piece bytes, gap seconds) a lease for ``nbytes`` tells its client (``wire.lease_read_pieces``)."""
        return wire.lease_read_pieces(self.read_pieces, nbytes, self.config.lease_ttl_seconds)

    def throttle_reply(self) -> wire.ThrottleStatus:
        """GET /v1/throttle: the throttle's mode, its last decision and the seed's latency (None: not known)."""
        report = self.last_qos

        def num(x: float | None) -> float | None:
            return None if x is None or math.isnan(x) else x

        return wire.ThrottleStatus(
            allowed_rate_bytes_per_second=self.allowed_rate,
            mode=wire.ThrottleMode(self.qos.throttle.value),
            # The label in force, as the throttle_mode gauge has it: a PUT sets it at once, not at the next
            # tick (the last report's label said "off" for a tick after a switch to fixed).
            controller_mode=self.throttle_mode_label,
            action=None if report is None else report.action,
            reason=None if report is None else report.reason,
            throttle_reason=self.qos.throttle_reason,
            baseline_itl_slo_violation_ratio=None if report is None else num(report.baseline_itl_slo_violation_ratio),
            slo_itl_seconds=None if self.qos.slo is None else self.qos.slo.itl_threshold_seconds,
            observed_itl_p99_seconds=None if report is None else num(report.observed_itl_p99_seconds),
            itl_slo_violation_ratio=None if report is None else num(report.itl_slo_violation_ratio),
            latency_impact_ratio=None if report is None else num(report.latency_impact_ratio),
            seed_metrics_age_seconds=None if report is None else num(report.metrics_age_seconds),
            throttle_tuning=self.throttle_tuning,
        )

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
            if self.seed_lost_because is not None:
                return Denied(503, "seed_unavailable",
                              f"agent for {seed} lost the seed at {self.config.sglang_url} "
                              f"({self.seed_lost_because}) and waits for it to come back; "
                              "read this chunk from another seed")
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

    # -- scheduler bodies -----------------------------------------------------

    def registration_body(self) -> wire.SeedRegistration:
        assert self.seed is not None, "register only after discovery"
        return wire.SeedRegistration(
            identity=self.seed.identity,
            agent_url=self.config.advertised_url,
            rate_cap_bytes_per_second=self.config.rate_cap,
            ranks=[info for _, info in sorted(self.seed.ranks.items())],
            agent_instance_id=self.instance_id,
        )

    def heartbeat_body(self, now: float) -> wire.Heartbeat:
        available = self.bucket.available(now)
        throttle = self.throttle_reply()

        def finite(x: float | None) -> float | None:  # the scheduler's API is strict JSON: no NaN or inf
            return x if x is not None and math.isfinite(x) else None

        return wire.Heartbeat(
            allowed_rate_bytes_per_second=self.allowed_rate,
            # Uncapped has no balance; JSON has no inf and allowed_rate null already says it.
            available_bytes=0.0 if math.isinf(available) else float(available),
            in_flight_leases=self.leases.in_flight(),
            # The seed's SLO state for the scheduler's GET /v1/fleet.
            qos=wire.SeedQos(throttle=throttle.mode.value, slo_itl_seconds=finite(throttle.slo_itl_seconds),
                             observed_itl_p99_seconds=finite(throttle.observed_itl_p99_seconds),
                             latency_impact_ratio=finite(throttle.latency_impact_ratio)),
        )

    def set_phase(self, phase: Phase) -> None:
        if phase is not self.phase:
            log.info("agent %s: %s -> %s", self.config.seed_id, self.phase.value, phase.value)
        self.phase = phase

    def status(self, now: float) -> wire.AgentStatus:
        ranks = [] if self.seed is None else [
            wire.ServedRank(rank=r, session_id=info.session_id, tensors=len(info.manifest), bytes=info.nbytes)
            for r, info in sorted(self.seed.ranks.items())
        ]
        available = self.bucket.available(now)
        return wire.AgentStatus(
            seed_id=self.config.seed_id,
            phase=self.phase.value,
            seed_alive=self.seed_alive,
            sglang_url=self.config.sglang_url,
            scheduler_url=self.config.scheduler_url,
            agent_url=self.config.advertised_url,
            identity=None if self.seed is None else self.seed.identity,
            ranks=ranks,
            rate_cap_bytes_per_second=self.config.rate_cap,
            allowed_rate_bytes_per_second=self.allowed_rate,
            available_bytes=None if math.isinf(available) else available,
            in_flight_leases=self.leases.in_flight(),
            in_flight_bytes=self.leases.in_flight_bytes(),
            granted_bytes=self.granted_bytes,
            throttle=self.throttle_reply(),
        )


class AgentStateCollector:
    """The agent's gauges, read from ``AgentState`` at scrape time (prometheus_client's Collector pattern).

    The values live in the state already (the bucket's rate, the lease book, the
    phase, the last QoS report), so nothing pushes a gauge when they change;
    names, labels and help are ``AgentMetrics``' (metrics/definitions.py).

        >>> registry.get_sample_value("rfork_agent_leases_in_flight", {"seed": "seed-0"})
        0.0
    """

    def __init__(self, state: "AgentState") -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state, m = self.state, self.state.metrics
        seed = (state.config.seed_id,)
        report, slo = state.last_qos, state.qos.slo

        def one(gauge, value: float | None) -> Metric:
            return gauge.family([(seed, _gauge(value))])

        yield one(m.rate_cap, state.config.rate_cap)
        yield one(m.allowed_rate, state.allowed_rate)
        yield one(m.leases_in_flight, state.leases.in_flight())
        yield one(m.read_piece_bytes, state.read_pieces.read_piece_bytes)
        yield one(m.registered, 1 if state.phase is Phase.REGISTERED else 0)
        yield one(m.observed_itl_p99, None if report is None else report.observed_itl_p99_seconds)
        yield one(m.observed_ttft_p99, None if report is None else report.observed_ttft_p99_seconds)
        yield one(m.slo_itl, None if slo is None else slo.itl_threshold_seconds)
        yield one(m.slo_ttft, None if slo is None else slo.ttft_threshold_seconds)
        yield one(m.itl_slo_violation_ratio, None if report is None else report.itl_slo_violation_ratio)
        yield one(m.seed_alone_itl_slo_violation_ratio,
                  None if report is None else report.baseline_itl_slo_violation_ratio)
        yield one(m.itl_slo_violation_budget_ratio, None if slo is None else slo.violation_budget)
        yield one(m.latency_impact_ratio, None if report is None else report.latency_impact_ratio)
        yield m.throttle_mode.family([((*seed, label), 1.0 if label == state.throttle_mode_label else 0.0)
                                      for label in THROTTLE_MODE_LABELS])
        yield one(m.seed_metrics_age, None if report is None else report.metrics_age_seconds)


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
