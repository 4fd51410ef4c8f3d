"""The seed agent: a sidecar beside one SGLang seed instance; this module is its app (routes, lifespan).

It reads the seed's TransferEngine session and manifest per rank over SGLang's
HTTP API, registers them with the scheduler, heartbeats every second (an
APScheduler job), and grants leases for chunk reads no faster than the seed's
allowed byte rate (a FIFO token bucket). It is not in the data path: fork
clients read the seed's memory with one-sided TE reads.

Modules, one concern each:

- ``agent_config`` — ``AgentConfig``: every knob, validated on construction.
- ``agent_state`` — ``AgentState``: the agent's state and decisions, no I/O:
  token bucket, lease book, identity/ranks, lifecycle ``Phase``; its gauges
  are read from it at scrape time (``AgentStateCollector``).
  ``set_allowed_rate`` is the seam the serving-QoS controller drives.
- ``seed_link`` — ``SeedLink``: discovery from the seed, registration and
  heartbeats with the scheduler, a liveness probe of the seed.
- ``qos_loop`` — ``QosLoop``: scrapes the seed's ``/metrics`` once per second
  and hands it to ``throttle.qos.QosTracker`` (pure), which runs the
  controller; the decided rate goes to the token bucket via ``set_allowed_rate``.
- here — ``create_app``: FastAPI routes (docs/DESIGN.md, "Agent HTTP API")
  mapping the state's outcomes to status codes, and the lifespan that runs
  the jobs above.

The names of those modules are re-exported here, so ``from rfork_agent.agent
import AgentConfig, AgentState, create_app`` keeps working.

    >>> app = create_app(AgentConfig(seed_id="seed-0", sglang_url="http://127.0.0.1:30000",
    ...                              scheduler_url="http://127.0.0.1:8700", port=8800, rate_cap=2e9))
    >>> uvicorn.run(app, host="127.0.0.1", port=8800)
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import Annotated, Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from fastapi import FastAPI
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from metrics.definitions import AgentMetrics
from rfork_agent.agent_config import AgentConfig
from rfork_agent.agent_state import (
    ADAPTIVE_REASONS,
    LEASE_OUTCOMES,
    THROTTLE_MODE_LABELS,
    AgentState,
    AgentStateCollector,
    Denied,
    LeaseRequest,
    Phase,
    RankInfo,
    SeedDescription,
    describe_throttle_reason,
)
from rfork_agent.leases import UnknownLease
from rfork_agent.qos_loop import QosLoop
from rfork_agent.seed_link import SeedLink, discover
from rfork_api import models as wire
from rfork_api.auth import bearer_header
from rfork_api.clients import SchedulerClient
from rfork_api.http import error_response, error_responses, install, service_app
from rfork_api.seed_info import seed_http_client
from throttle.controller import InvalidTuning
from throttle.qos import ThrottleMode

__all__ = [
    "ADAPTIVE_REASONS", "LEASE_OUTCOMES", "THROTTLE_MODE_LABELS", "AgentConfig", "AgentState", "AgentStateCollector",
    "Denied", "LeaseRequest", "Phase", "QosLoop", "RankInfo", "SeedDescription", "SeedLink", "create_app",
    "describe_throttle_reason", "discover",
]

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
        http = seed_http_client(config.http_timeout_seconds)
        scheduler = SchedulerClient(config.scheduler_url, timeout=config.http_timeout_seconds,
                                    headers=bearer_header(config.token))
        link = SeedLink(state, http, scheduler)
        app.state.link = link
        jobs = AsyncIOScheduler()
        jobs.add_job(link.job(link.step), "interval", seconds=config.heartbeat_interval, id="heartbeat",
                     max_instances=1, coalesce=True, misfire_grace_time=None)
        jobs.add_job(link.job(link.check_seed), "interval",
                     seconds=config.heartbeat_interval * config.refresh_every_heartbeats, id="seed-refresh",
                     max_instances=1, coalesce=True, misfire_grace_time=None)
        if config.liveness_interval_seconds > 0:
            jobs.add_job(link.job(link.probe_seed), "interval", seconds=config.liveness_interval_seconds, id="liveness",
                         max_instances=1, coalesce=True, misfire_grace_time=None)
        # Always scheduled, so PUT /v1/throttle can turn the throttle on at run time; in off mode a tick is free.
        qos = QosLoop(state, http, on_rate_change=link.push_rate)
        app.state.qos = qos
        jobs.add_job(link.job(qos.tick), "interval", seconds=config.qos_interval_seconds, id="qos",
                     max_instances=1, coalesce=True, misfire_grace_time=None)
        if 0 < config.qos_idle_watch_seconds < config.qos_interval_seconds:
            jobs.add_job(link.job(qos.watch), "interval", seconds=config.qos_idle_watch_seconds, id="qos-idle-watch",
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

    app = service_app(title="rfork agent", version="0.1.0", lifespan=lifespan, responses=error_responses())
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
        piece, gap = state.lease_read_pieces(body.bytes)
        return wire.LeaseGranted(lease_id=lease.lease_id, ttl_seconds=config.lease_ttl_seconds,
                                 read_piece_bytes=piece, read_piece_gap_seconds=gap)

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
        return state.status(clock())

    @app.get("/v1/read-pieces", response_model=wire.ReadPieces)
    async def get_read_pieces():
        return state.read_pieces

    @app.put("/v1/read-pieces", response_model=wire.ReadPieces)
    async def put_read_pieces(body: wire.ReadPieces):
        state.set_read_pieces(body)
        return state.read_pieces

    @app.get("/v1/throttle", response_model=wire.ThrottleStatus)
    async def get_throttle():
        return state.throttle_reply()

    @app.put("/v1/throttle", response_model=wire.ThrottleStatus)
    async def put_throttle(body: wire.ThrottleRequest):
        try:
            state.set_throttle(ThrottleMode(body.mode.value), body.rate_bytes_per_second, clock(), body.slo_itl_seconds,
                               body.throttle_tuning)
        except InvalidTuning as exc:
            return _error(422, "invalid_tuning", f"throttle_tuning: {exc}")
        except ValueError as exc:
            return _error(409, "throttle_unavailable", str(exc))
        link = getattr(app.state, "link", None)
        if link is not None:
            link.push_rate()
        return state.throttle_reply()

    return app
