"""The seed agent: a sidecar beside one SGLang seed instance.

It reads the seed's TransferEngine session and manifest per rank over SGLang's
HTTP API, registers them with the scheduler, heartbeats every second (an
APScheduler job), and grants leases for chunk reads no faster than the seed's
allowed byte rate. It is not in the data path: reads are one-sided TE reads.

The allowed rate is the configured cap for now; ``set_allowed_rate`` is the
seam the serving-QoS controller drives.

    >>> app = create_app(AgentConfig(seed_id="seed-0", sglang_url="http://127.0.0.1:30000",
    ...                              scheduler_url="http://127.0.0.1:8700", rate_cap=2e9))
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Callable

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from metrics.definitions import AgentMetrics
from rfork_agent import clients
from rfork_agent.leases import LeaseBook, UnknownLease
from rfork_agent.seed_info import SeedUnavailable, fetch_server_info, fetch_transfer_engine_info
from throttle.token_bucket import TokenBucket

log = logging.getLogger("rfork.agent")

MiB = 2**20


@dataclass(frozen=True)
class AgentConfig:
    seed_id: str
    sglang_url: str
    scheduler_url: str
    agent_url: str = ""
    """URL clients use to reach this agent (default http://host:port)."""
    host: str = "127.0.0.1"
    port: int = 8800
    rate_cap: float | None = None
    """Bytes/s this seed may serve to forks; None = uncapped."""
    burst_seconds: float = 0.25
    model: str | None = None
    revision: str | None = None
    dtype: str | None = None
    tp_size: int | None = None
    ranks: tuple[int, ...] | None = None
    lease_ttl_seconds: float = 30.0
    max_wait_seconds: float = 5.0
    heartbeat_interval_seconds: float = 1.0
    liveness_interval_seconds: float = 0.25
    liveness_timeout_seconds: float = 0.5
    refresh_every_heartbeats: int = 5
    """Re-read the seed's TE info this often, to notice a restarted seed."""


class LeaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_id: str = Field(min_length=1, max_length=128)
    assignment_id: str = Field(min_length=1, max_length=128)
    rank: int = Field(ge=0, le=4095)
    bytes: int = Field(gt=0, le=2**40)
    grant: str = Field(default="", max_length=4096)
    wait_seconds: float = Field(default=5.0, ge=0, le=60, allow_inf_nan=False)


class ReleaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    used: bool = True


@dataclass
class AgentState:
    config: AgentConfig
    metrics: AgentMetrics
    clock: Callable[[], float]
    bucket: TokenBucket = field(init=False)
    leases: LeaseBook = field(init=False)
    ranks: dict[int, tuple[str, dict]] = field(default_factory=dict)
    identity: dict | None = None
    registered: bool = False
    heartbeats: int = 0
    seed_alive: bool = True
    """Last liveness probe of the seed. Leases are refused while it is down: a
    TransferEngine read submitted to a dead TCP peer can block its caller (we
    measured get_batch_transfer_status holding the GIL for over a minute)."""

    def __post_init__(self) -> None:
        self.bucket = TokenBucket(self.config.rate_cap, self._burst(self.config.rate_cap), self.clock())
        self.leases = LeaseBook(self.config.lease_ttl_seconds)
        self.metrics.rate_cap.labels(seed=self.config.seed_id).set(_gauge(self.config.rate_cap))
        self.metrics.allowed_rate.labels(seed=self.config.seed_id).set(_gauge(self.config.rate_cap))

    def _burst(self, rate: float | None) -> float:
        return max((rate or 0) * self.config.burst_seconds, 1 * MiB)

    @property
    def allowed_rate(self) -> float | None:
        return self.bucket.rate

    def set_allowed_rate(self, rate: float | None, now: float) -> None:
        """The QoS seam: pace leases at ``rate`` from now on (never above the cap)."""
        cap = self.config.rate_cap
        if rate is not None and cap is not None:
            rate = min(rate, cap)
        if rate is None and cap is not None:
            rate = cap
        self.bucket.set_rate(rate, now, burst=self._burst(rate))
        self.metrics.allowed_rate.labels(seed=self.config.seed_id).set(_gauge(rate))

    def expire_leases(self) -> None:
        for lease in self.leases.expire(self.clock()):
            self.metrics.leases_total.labels(seed=self.config.seed_id, outcome="expired").inc()
            log.warning("lease %s (job %s, %d bytes) expired unreleased", lease.lease_id, lease.job_id, lease.nbytes)
        self.metrics.leases_in_flight.labels(seed=self.config.seed_id).set(self.leases.in_flight())

    def heartbeat_body(self) -> dict:
        now = self.clock()
        available = self.bucket.available(now)
        return {
            "allowed_rate_bytes_per_second": self.allowed_rate,
            "available_bytes": 0.0 if math.isinf(available) else available,
            "in_flight_leases": self.leases.in_flight(),
        }


def _gauge(rate: float | None) -> float:
    return math.nan if rate is None else rate


def _error(status: int, code: str, message: str, **extra) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": {"error": code, "message": message, **extra}})


async def discover(config: AgentConfig, http: httpx.AsyncClient) -> tuple[dict, dict[int, tuple[str, dict]]]:
    """The seed's identity and per-rank (session, manifest), flags overriding the seed's answers."""
    info = await fetch_server_info(http, config.sglang_url)
    identity = {
        "model": config.model or info.get("model_path") or info.get("served_model_name"),
        "revision": config.revision or info.get("revision") or "main",
        "dtype": config.dtype or str(info.get("dtype", "auto")),
        "tp_size": config.tp_size or int(info.get("tp_size", 1)),
    }
    if not identity["model"]:
        raise SeedUnavailable(f"seed {config.sglang_url} /server_info has no model_path; pass --model")
    ranks = {}
    for rank in config.ranks if config.ranks is not None else range(identity["tp_size"]):
        ranks[rank] = await fetch_transfer_engine_info(http, config.sglang_url, rank)
    return identity, ranks


def create_app(config: AgentConfig, registry: CollectorRegistry | None = None,
               clock: Callable[[], float] = time.monotonic) -> FastAPI:
    registry = registry if registry is not None else CollectorRegistry()
    state = AgentState(config, AgentMetrics(registry), clock)
    seed = config.seed_id
    agent_url = config.agent_url or f"http://{config.host}:{config.port}"

    async def register(scheduler: clients.SchedulerClient, http: httpx.AsyncClient) -> None:
        identity, ranks = await discover(config, http)
        body = {
            "identity": identity, "agent_url": agent_url, "rate_cap_bytes_per_second": config.rate_cap,
            "ranks": [{"rank": r, "session_id": s, "manifest": m} for r, (s, m) in sorted(ranks.items())],
        }
        await scheduler.register_seed(seed, body)
        state.identity, state.ranks, state.registered = identity, ranks, True
        state.metrics.registered.labels(seed=seed).set(1)
        log.info("registered %s with %s: %s ranks %s", seed, config.scheduler_url, identity["model"], sorted(ranks))

    async def tick(scheduler: clients.SchedulerClient, http: httpx.AsyncClient) -> None:
        state.expire_leases()
        try:
            if not state.registered:
                await register(scheduler, http)
                return
            state.heartbeats += 1
            if state.heartbeats % config.refresh_every_heartbeats == 0:
                _, ranks = await discover(config, http)
                if {r: s for r, (s, _) in ranks.items()} != {r: s for r, (s, _) in state.ranks.items()}:
                    log.warning("seed %s restarted (new TE session); re-registering", seed)
                    await register(scheduler, http)
                    return
            await scheduler.heartbeat(seed, state.heartbeat_body())
        except clients.UnknownSeed:
            log.warning("scheduler forgot %s; re-registering", seed)
            state.registered = False
            state.metrics.registered.labels(seed=seed).set(0)
            state.metrics.heartbeat_failures_total.labels(seed=seed).inc()
        except (clients.ClientError, SeedUnavailable, httpx.HTTPError) as exc:
            state.metrics.heartbeat_failures_total.labels(seed=seed).inc()
            if isinstance(exc, SeedUnavailable):
                # A dead seed must stop receiving forks: stop heartbeating so the scheduler drops it.
                state.registered = False
                state.metrics.registered.labels(seed=seed).set(0)
            log.warning("%s: %s", "seed unavailable" if isinstance(exc, SeedUnavailable) else "heartbeat failed", exc)

    async def probe_seed(http: httpx.AsyncClient) -> None:
        try:
            alive = (await http.get(f"{config.sglang_url}/health", timeout=config.liveness_timeout_seconds)).status_code == 200
        except httpx.HTTPError:
            alive = False
        if alive != state.seed_alive:
            log.warning("seed %s at %s is %s", seed, config.sglang_url, "back" if alive else "DOWN: refusing leases")
        state.seed_alive = alive

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        http = httpx.AsyncClient(timeout=5)
        scheduler = clients.SchedulerClient(config.scheduler_url, timeout=5)
        jobs = AsyncIOScheduler()
        await tick(scheduler, http)  # register at once, not one interval later
        jobs.add_job(tick, "interval", seconds=config.heartbeat_interval_seconds, args=(scheduler, http),
                     id="heartbeat", max_instances=1, coalesce=True)
        jobs.add_job(probe_seed, "interval", seconds=config.liveness_interval_seconds, args=(http,),
                     id="liveness", max_instances=1, coalesce=True)
        jobs.start()
        try:
            yield
        finally:
            jobs.shutdown(wait=False)
            if state.registered:
                try:
                    await scheduler.deregister_seed(seed)
                except clients.ClientError:
                    pass
            await scheduler.aclose()
            await http.aclose()

    app = FastAPI(title="rfork agent", version="0.1.0", lifespan=lifespan)
    app.state.agent = state

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        return _error(422, "invalid_request", f"request body is not valid: {problems}")

    @app.post("/v1/leases")
    async def acquire(body: LeaseRequest):
        if not state.seed_alive:
            state.metrics.leases_total.labels(seed=seed, outcome="denied").inc()
            return _error(503, "seed_unavailable", f"seed {seed} at {config.sglang_url} is not answering; "
                          "read this chunk from another seed")
        if state.ranks and body.rank not in state.ranks:
            return _error(404, "unknown_rank", f"this seed serves ranks {sorted(state.ranks)}, not {body.rank}")
        asked = clock()
        reservation = state.bucket.reserve(body.bytes, asked, min(body.wait_seconds, config.max_wait_seconds))
        if reservation is None:
            state.metrics.leases_total.labels(seed=seed, outcome="denied").inc()
            rate = state.allowed_rate or math.inf
            retry = min(max(body.bytes / rate, 0.05), 5.0)
            return _error(429, "over_budget", f"seed {seed} cannot serve {body.bytes} bytes within "
                          f"{body.wait_seconds:.1f} s at {rate:.0f} B/s", retry_after_seconds=retry)
        delay = reservation.start_at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if not state.seed_alive:  # it may have died while this lease waited for budget
            state.bucket.refund(body.bytes, clock())
            state.metrics.leases_total.labels(seed=seed, outcome="denied").inc()
            return _error(503, "seed_unavailable", f"seed {seed} at {config.sglang_url} stopped answering; "
                          "read this chunk from another seed")
        lease = state.leases.grant(body.job_id, body.assignment_id, body.rank, body.bytes, clock())
        state.metrics.leases_total.labels(seed=seed, outcome="granted").inc()
        state.metrics.granted_bytes_total.labels(seed=seed).inc(body.bytes)
        state.metrics.lease_wait.labels(seed=seed).observe(clock() - asked)
        state.metrics.leases_in_flight.labels(seed=seed).set(state.leases.in_flight())
        return {"lease_id": lease.lease_id, "ttl_seconds": config.lease_ttl_seconds}

    @app.post("/v1/leases/{lease_id}/release")
    async def release(lease_id: str, body: ReleaseRequest):
        try:
            lease = state.leases.release(lease_id, clock())
        except UnknownLease as exc:
            return _error(404, "unknown_lease", str(exc.args[0]))
        if body.used:
            state.metrics.read_bytes_total.labels(seed=seed).inc(lease.nbytes)
            state.metrics.leases_total.labels(seed=seed, outcome="released").inc()
        else:
            state.bucket.refund(lease.nbytes, clock())
            state.metrics.leases_total.labels(seed=seed, outcome="returned").inc()
        state.metrics.leases_in_flight.labels(seed=seed).set(state.leases.in_flight())
        return {}

    @app.get("/v1/status")
    async def status():
        return {
            "seed_id": seed, "sglang_url": config.sglang_url, "identity": state.identity,
            "ranks": sorted(state.ranks), "registered": state.registered,
            "rate_cap_bytes_per_second": config.rate_cap, "allowed_rate_bytes_per_second": state.allowed_rate,
            "leases_in_flight": state.leases.in_flight(),
        }

    @app.get("/health")
    async def health():
        return {"status": "ok", "registered": state.registered}

    @app.get("/metrics")
    async def metrics_endpoint():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
