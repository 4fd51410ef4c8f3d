"""The seed agent's configuration: one validated, frozen object (``AgentConfig``).

Every check runs on construction and a bad config raises one ``ValueError``
naming each wrong field and the fix, so ``rfork agent`` fails before it binds
a port. The QoS fields derive the SLO and the control law's tuning
(``slo``, ``controller_config``); see docs/qos.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from urllib.parse import urlparse

from pydantic import ValidationError

from rfork_api.models import ReadPieces
from throttle.controller import ControllerConfig, InvalidConfig, SloConfig
from throttle.qos import ThrottleMode


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
    read_piece_bytes: int = 0
    """Leases tell clients to read in pieces of at most this many bytes, one after another; 0: each
    chunk in one read. For a seed whose reads stall its own work the longer they are (a GPU seed over
    TCP, whose TransferEngine stages every read through host memory with copies on the GPU)."""
    read_piece_gap_seconds: float = 0.0
    """And to wait this long between two pieces (at most 1 s; a lease's pieces and gaps are kept
    within half its ttl by shortening the gap)."""
    heartbeat_interval: float = 1.0
    refresh_every_heartbeats: int = 5
    """Re-read the seed's TE info every this many heartbeat periods, to notice a restarted seed
    (a job of its own: a slow read never delays a heartbeat)."""
    liveness_interval_seconds: float = 0.25
    """Probe the seed's /health this often; 0 disables the probe."""
    liveness_timeout_seconds: float = 2.0
    http_timeout_seconds: float = 5.0
    """Timeout of each call to the seed and the scheduler."""
    token: str | None = field(default=None, repr=False)
    """Shared bearer token (None = auth off): required on the lease API, sent to the
    scheduler, and the key that lease grants are verified with."""
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
    qos_idle_watch_seconds: float = 0.25
    """While the adaptive law gives an idle seed the cap, the seed's /metrics are also scraped this
    often, and a returning load is decided on at once instead of up to a whole interval later
    (docs/qos.md "Load returning to an idle seed"). 0, or not under qos_interval_seconds: only at the interval."""
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
        try:
            self.read_pieces
        except ValidationError as exc:
            problems += [(f"{error['loc'][0]}: " if error["loc"] else "") + error["msg"].removeprefix("Value error, ")
                         for error in exc.errors()]
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
        watch = self.qos_idle_watch_seconds
        if not (watch >= 0 and math.isfinite(watch)):
            problems.append(f"qos_idle_watch_seconds must be 0 (off) or a number of seconds > 0, got {watch}")
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
        # The law's defaults assume a 1 s interval. A longer one stretches what must span at least
        # one interval (an off window shorter than a scrape measures nothing), and scales the
        # schedules and horizons counted in intervals; at 1 s and under, the defaults stand.
        defaults = {f.name: f.default for f in fields(ControllerConfig)}
        spans = ("judge_window_seconds", "off_window_seconds", "change_window_seconds", "plan_seconds")
        scaled = ("stale_after_seconds", "pool_max_seconds", "off_every_min_seconds", "off_every_max_seconds",
                  "off_every_quiet_seconds", "evidence_horizon_seconds", "off_horizon_seconds", "ab_gap_seconds")
        return ControllerConfig(cap_bytes_per_second=self.rate_cap, interval_seconds=interval,
                                **{name: max(defaults[name], interval) for name in spans},
                                **{name: max(defaults[name], defaults[name] * interval) for name in scaled})

    @property
    def read_pieces(self) -> ReadPieces:
        """How fork clients are to read this seed's chunks at start (``PUT /v1/read-pieces`` changes it).
        Raises pydantic's ValidationError."""
        return ReadPieces(read_piece_bytes=self.read_piece_bytes, read_piece_gap_seconds=self.read_piece_gap_seconds)

    @property
    def seed_metrics_url(self) -> str:
        return self.metrics_url or f"{self.sglang_url.rstrip('/')}/metrics"

    @property
    def advertised_url(self) -> str:
        return (self.agent_url or f"http://{self.host}:{self.port}").rstrip("/")
