"""The agent's link to its seed and to the scheduler: ``SeedLink`` (and ``discover``).

Discovery reads the seed's identity and per-rank TransferEngine info over
SGLang's HTTP API; registration and heartbeats keep the scheduler's view of
this seed true; a liveness probe of the seed's ``/health`` deregisters a seed
that died so running jobs re-plan at once. All I/O; the decisions and the
lifecycle ``Phase`` are ``AgentState``'s.

Lifecycle (``Phase``)::

    discovering --seed answered--> registering --scheduler accepted--> registered
         ^                              ^                                  |
         |                              +---- heartbeat 404 / new TE session
         +---- seed down (liveness probe or failed refresh): deregister ---+
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Awaitable, Callable

import httpx

from rfork_agent.agent_config import AgentConfig
from rfork_agent.agent_state import AgentState, Phase, RankInfo, SeedDescription
from rfork_api.clients import SchedulerClient
from rfork_api.errors import InvalidIdentity, RforkApiError, SeedInfoUnavailable, UnknownSeed
from rfork_api.models import ModelIdentity
from rfork_api.seed_info import fetch_server_info, fetch_transfer_engine_info_digested, transfer_engine_info_digest

log = logging.getLogger("rfork.agent")


async def discover(config: AgentConfig, http: httpx.AsyncClient) -> SeedDescription:
    """The seed's identity and per-rank TE info; config overrides the seed's answers."""
    identity = await _identity(config, http)
    ranks, digests = {}, {}
    for rank in _served_ranks(config, identity):
        session_id, manifest, digests[rank] = await fetch_transfer_engine_info_digested(http, config.sglang_url, rank)
        ranks[rank] = RankInfo(rank=rank, session_id=session_id, manifest=manifest)
    return SeedDescription(identity, ranks, digests)


async def _identity(config: AgentConfig, http: httpx.AsyncClient) -> ModelIdentity:
    info = await fetch_server_info(http, config.sglang_url)
    try:
        return ModelIdentity.from_server_info(info, model=config.model, revision=config.revision,
                                              dtype=config.dtype, tp_size=config.tp_size)
    except InvalidIdentity as exc:
        raise SeedInfoUnavailable(config.sglang_url, f"seed {config.sglang_url}: {exc}") from None


def _served_ranks(config: AgentConfig, identity: ModelIdentity) -> range | tuple[int, ...]:
    return config.ranks if config.ranks is not None else range(identity.tp_size)


async def _unchanged(config: AgentConfig, http: httpx.AsyncClient, known: SeedDescription) -> bool:
    """The seed answers as when ``known`` was read: the same identity and, per rank, the same TE-info
    answer byte for byte (its digest; no parse of the megabytes of a big rank's manifest)."""
    identity = await _identity(config, http)
    if identity != known.identity or not known.te_info_digests:
        return False
    for rank in _served_ranks(config, identity):
        if await transfer_engine_info_digest(http, config.sglang_url, rank) != known.te_info_digests.get(rank):
            return False
    return True


class SeedLink:
    """Keeps the scheduler's view of this seed true: discovery, registration, heartbeats, liveness.

    ``step()`` is one heartbeat period's work and is safe to call from
    several tasks (a lock serialises it). Failures never escape: they are
    logged (once per distinct problem, then at debug) and retried with backoff.
    """

    def __init__(self, state: AgentState, http: httpx.AsyncClient, scheduler: SchedulerClient) -> None:
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
            self.state.seed_lost_because = None
        except SeedInfoUnavailable as exc:
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
        except RforkApiError as exc:
            self._problem(f"cannot register with the scheduler at {self.config.scheduler_url}", exc)
            self._backoff(time.monotonic())
            return
        assert state.seed is not None
        state.set_phase(Phase.REGISTERED)
        log.info("agent %s registered with %s: %s ranks %s sessions %s (scheduler expects a heartbeat every %s s)",
                 self.config.seed_id, self.config.scheduler_url, state.seed.identity.model,
                 sorted(state.seed.ranks), sorted(set(state.seed.sessions().values())),
                 answer.heartbeat_interval_seconds)
        self._recovered()

    async def _heartbeat(self) -> None:
        state, seed = self.state, self.config.seed_id
        try:
            await self.scheduler.heartbeat(seed, state.heartbeat_body(state.clock()))
        except UnknownSeed:
            # The scheduler restarted or dropped us (missed heartbeats): register again now.
            state.metrics.heartbeat_failures_total.labels(seed=seed).inc()
            log.warning("agent %s: the scheduler does not know this seed; re-registering", seed)
            state.set_phase(Phase.REGISTERING)
            await self._register()
        except RforkApiError as exc:
            state.metrics.heartbeat_failures_total.labels(seed=seed).inc()
            self._problem(f"heartbeat to {self.config.scheduler_url} failed (will keep trying)", exc)
        else:
            if self._last_problem:
                self._recovered()

    async def check_seed(self) -> None:
        """Re-read the seed's TE info; re-register if its sessions changed (it restarted).

        Its own job, beside the heartbeat and never ahead of it: on a seed with tens of
        thousands of tensors per rank the read takes about a second (the seed builds megabytes
        of JSON), several on a loaded host, and heartbeats that waited behind it arrived late
        enough for the scheduler to drop a live seed. Only the verdict is taken under the step
        lock. A read that times out is no verdict: a slow seed is not a dead one (the liveness
        probe owns that), so it keeps its registration. Answers the same byte for byte as the
        last read (their digests) are not parsed: that is ~0.15 s of CPU per 40,000-tensor rank.
        """
        state = self.state
        if state.phase is not Phase.REGISTERED:
            return
        known = state.seed
        lost = None
        try:
            if known is not None and await _unchanged(self.config, self.http, known):
                return
            fresh = await discover(self.config, self.http)
        except SeedInfoUnavailable as exc:
            if isinstance(exc.__cause__, httpx.TimeoutException):
                self._problem("re-reading the seed's TE info timed out (keeping its registration)", exc)
                return
            fresh, lost = None, str(exc)
        async with self._lock:
            if state.phase is not Phase.REGISTERED or state.seed is not known:
                return  # re-registered or lost meanwhile: that verdict is newer than this read
            if fresh is None:
                await self._seed_lost(lost)
                return
            if known is not None and fresh.sessions() == known.sessions() and fresh.identity == known.identity:
                # Not restarted, but answering other bytes: keep this answer's digests, or every later
                # check would find them changed and read the seed twice (digest, then whole).
                state.seed = dataclasses.replace(known, te_info_digests=fresh.te_info_digests)
                return
            log.warning("agent %s: the seed restarted (TE sessions %s -> %s); re-registering",
                        self.config.seed_id, known and known.sessions(), fresh.sessions())
            state.seed = fresh
            state.set_phase(Phase.REGISTERING)
            await self._register()

    async def _seed_lost(self, why: str) -> None:
        """The seed is gone: leave the scheduler at once so jobs re-plan, then wait for it to return."""
        state = self.state
        log.warning("agent %s: seed %s lost (%s); deregistering and waiting for it to come back",
                    self.config.seed_id, self.config.sglang_url, why)
        registered = state.phase is Phase.REGISTERED
        # Forget the seed before the await: a lease asked while the scheduler answers must be refused.
        state.seed, state.seed_lost_because = None, why
        state.set_phase(Phase.DISCOVERING)
        if registered:
            await self.deregister()

    async def deregister(self) -> None:
        try:
            await self.scheduler.deregister_seed(self.config.seed_id)
        except RforkApiError as exc:
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
