"""Async clients for the scheduler and agent APIs, returning ``rfork_api.models``.

Every error reply becomes the exception of ``rfork_api.errors`` that the
service raised (one table of codes for both ends); a service that does not
answer at all is ``SchedulerUnreachable`` / ``AgentUnreachable``. Pass
``transport=httpx.ASGITransport(app)`` to talk to a real app in-process.

    >>> async with SchedulerClient("http://127.0.0.1:8700") as scheduler:
    ...     job = await scheduler.create_job(JobRequest(identity=identity, rank=0, manifest=manifest))
    ...     work = await scheduler.work(job.job_id, WorkRequest(max_assignments=8))
    >>> async with AgentClient(work.assignments[0].agent_url) as agent:
    ...     lease = await agent.acquire_lease(LeaseRequest(job_id=job.job_id, assignment_id="a1", rank=0, bytes=1 << 26))
    ...     await agent.release_lease(lease.lease_id, used=True)
"""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from rfork_api import models as m
from rfork_api.manifest import compact_manifest
from rfork_api.errors import (
    AgentError,
    AgentUnreachable,
    RforkApiError,
    SchedulerError,
    SchedulerUnreachable,
    UnknownLayout,
    UnknownModel,
    UnknownSeed,
    clip,
    error_from_reply,
)

R = TypeVar("R", bound=BaseModel)


def error_detail(response: httpx.Response) -> tuple[dict[str, Any], str]:
    """(detail dict, message) of an error reply, whatever its shape."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return {}, f"HTTP {response.status_code}: {clip(response.text, 200)}"
    if isinstance(detail, dict):
        return detail, str(detail.get("message", detail))
    return {}, f"HTTP {response.status_code}: {clip(str(detail), 200)}"


def seeds_serving(seeds: list[m.SeedSummary], identity: m.ModelIdentity, rank: int) -> list[m.SeedSummary]:
    """The seeds of a ``list_seeds`` answer that serve ``identity`` and ``rank``, by the rule the
    scheduler matches jobs with (equal identity, rank among the seed's ranks). Raises
    ``UnknownModel`` naming what is registered when none does.

        >>> [s.seed_id for s in seeds_serving(await scheduler.list_seeds(), identity, rank=0)]
        ['seed-0']
    """
    serving = [s for s in seeds if s.identity == identity and rank in s.ranks]
    if serving:
        return serving
    other_ranks = sorted({r for s in seeds if s.identity == identity for r in s.ranks})
    if other_ranks:
        raise UnknownModel(
            f"the live seeds of {identity.describe()} serve ranks {other_ranks}, not rank {rank}; fork one of "
            "those ranks, or start a seed (and its rfork agent) that serves this one")
    known = sorted({s.identity.describe() for s in seeds})
    raise UnknownModel(
        f"no live seed serves {identity.describe()} rank {rank}; registered: {', '.join(known) or 'none'}. "
        "Start a seed (and its rfork agent) for this exact identity, or fix the model/revision/dtype/"
        "tp_size to match one above")


KEEPALIVE_REUSE_SECONDS = 2.0
"""A kept-alive connection idle for longer than this is closed, not reused. The scheduler, the agent
and SGLang serve with uvicorn, which closes its idle connections after 5 s; a request written as it
does so fails with "Server disconnected without sending a response". httpx's own limit is 5 s too,
so a client that calls every 5 s (the agent's check of its seed) raced it: on an H200 host in ~1 in 350
of the agent's scrapes of its seed (docs/benchmarks.md, "v11")."""


def blocking_http_client(timeout: float) -> httpx.Client:
    """A sync client that never reuses a connection idle for ``KEEPALIVE_REUSE_SECONDS`` (the bench's and
    the testbed's calls to our uvicorn servers, spaced by phases and waits)."""
    return httpx.Client(timeout=timeout, limits=httpx.Limits(keepalive_expiry=KEEPALIVE_REUSE_SECONDS))


class _Client:
    service = "service"
    unreachable: type = RforkApiError
    fallback: type[RforkApiError] = RforkApiError

    def __init__(self, base_url: str, timeout: float = 10.0, headers: dict[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=headers or {},
                                       limits=httpx.Limits(keepalive_expiry=KEEPALIVE_REUSE_SECONDS),
                                       transport=transport)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, body: BaseModel | None, reply: type[R] | None,
                    timeout: float | None = None, what: str = "") -> R | None:
        try:
            response = await self._http.request(
                method, path, timeout=timeout or self.timeout,
                content=None if body is None else body.model_dump_json(),
                headers=None if body is None else {"content-type": "application/json"})
        except httpx.HTTPError as exc:
            raise self.unreachable(self.base_url, exc) from exc
        if response.status_code >= 400:
            detail, message = error_detail(response)
            if what:
                message = f"the {self.service} at {self.base_url} refused {what}: {message}"
            elif response.status_code >= 500:
                message = f"the {self.service} at {self.base_url} failed ({response.status_code}): {message}"
            raise error_from_reply(response.status_code, detail, message, self.fallback)
        if reply is None:
            return None
        try:
            return reply.model_validate_json(response.content or b"{}")
        except ValidationError as exc:
            raise self.fallback(f"the {self.service} at {self.base_url} answered {method} {path} with a body that "
                                f"is not a {reply.__name__} (a different rfork version?): {clip(str(exc), 300)}",
                                status=response.status_code) from exc


class SchedulerClient(_Client):
    """The scheduler's ``/v1`` API."""

    service, unreachable, fallback = "scheduler", SchedulerUnreachable, SchedulerError

    async def register_seed(self, seed_id: str, body: m.SeedRegistration) -> m.RegistrationReply:
        return await self._call("PUT", f"/v1/seeds/{seed_id}", body, m.RegistrationReply)

    async def heartbeat(self, seed_id: str, body: m.Heartbeat) -> m.HeartbeatReply:
        """Raises ``UnknownSeed`` when the agent must re-register."""
        return await self._call("POST", f"/v1/seeds/{seed_id}/heartbeat", body, m.HeartbeatReply)

    async def deregister_seed(self, seed_id: str) -> None:
        """An already unknown seed is not an error."""
        try:
            await self._call("DELETE", f"/v1/seeds/{seed_id}", None, None)
        except UnknownSeed:
            pass

    async def list_seeds(self) -> list[m.SeedSummary]:
        return (await self._call("GET", "/v1/seeds", None, m.SeedList)).root

    async def create_job(self, body: m.JobRequest, by_reference: bool = True) -> m.JobCreated:
        """Sends a whole manifest by reference first (its layout's digest and the pointers): in a
        scale-out the scheduler holds the layout already, and a member's creation costs it a
        fraction of checking the whole manifest. The manifest goes whole when the scheduler does
        not hold its layout (``409 unknown_layout``) or it cannot be sent by reference, or at once
        with ``by_reference=False`` (a caller that sent it by reference itself and was told 409:
        asking again by reference would wait for a manifest nobody sends). A request that carries
        its layout already goes as it is (``UnknownLayout`` if the scheduler does not hold it)."""
        compact = compact_manifest(body.manifest) if by_reference and body.manifest and body.layout is None else None
        if compact is not None:
            digest, pointers = compact
            by_reference = body.model_copy(update={"manifest": {}, "layout": m.ManifestLayout(
                digest=digest, pointers=pointers)})
            try:
                return await self._call("POST", "/v1/jobs", by_reference, m.JobCreated)
            except UnknownLayout:
                pass
        return await self._call("POST", "/v1/jobs", body, m.JobCreated)

    async def work(self, job_id: str, body: m.WorkRequest) -> m.WorkReply:
        """``body.wait_seconds`` > 0 long-polls: the scheduler may hold the call that long before answering."""
        return await self._call("POST", f"/v1/jobs/{job_id}/work", body, m.WorkReply,
                                timeout=self.timeout + max(body.wait_seconds, 0.0))

    async def withdraw(self, job_id: str) -> m.WithdrawReply:
        """Stop serving as a peer; returns the reads from us that may still be on the wire."""
        return await self._call("POST", f"/v1/jobs/{job_id}/withdraw", None, m.WithdrawReply)

    async def settle_reads(self, job_id: str, body: m.ReadsSettled) -> m.ReadsSettledReply:
        """Say these reads and streams of ``job_id``'s are off the wire, after its job was deleted (or at any time)."""
        return await self._call("POST", f"/v1/jobs/{job_id}/settled", body, m.ReadsSettledReply)

    async def get_job(self, job_id: str) -> m.JobStatus:
        return await self._call("GET", f"/v1/jobs/{job_id}", None, m.JobStatus)

    async def delete_job(self, job_id: str) -> None:
        await self._call("DELETE", f"/v1/jobs/{job_id}", None, None)

    async def health(self) -> m.SchedulerHealth:
        return await self._call("GET", "/health", None, m.SchedulerHealth)


class AgentClient(_Client):
    """A seed agent's lease and throttle API."""

    service, unreachable, fallback = "agent", AgentUnreachable, AgentError

    async def acquire_lease(self, body: m.LeaseRequest) -> m.LeaseGranted:
        """Raises ``LeaseDenied`` (with ``retry_after_seconds``) when the budget cannot cover it in time."""
        # The agent may hold the request up to wait_seconds before answering.
        return await self._call("POST", "/v1/leases", body, m.LeaseGranted,
                                timeout=self.timeout + max(body.wait_seconds, 0.0),
                                what=f"a lease for {body.bytes} bytes")

    async def release_lease(self, lease_id: str, used: bool = True) -> m.ReleaseReply:
        """Raises ``UnknownLease`` when it was already released or expired."""
        return await self._call("POST", f"/v1/leases/{lease_id}/release", m.ReleaseRequest(used=used),
                                m.ReleaseReply, what=f"the release of lease {lease_id}")

    async def health(self) -> m.AgentHealth:
        return await self._call("GET", "/health", None, m.AgentHealth)

    async def seed_alive(self) -> bool:
        """The agent's latest liveness verdict on its seed; False if the agent is unreachable."""
        try:
            return (await self.health()).seed_alive
        except RforkApiError:
            return False

    async def status(self) -> m.AgentStatus:
        return await self._call("GET", "/v1/status", None, m.AgentStatus)

    async def throttle(self) -> m.ThrottleStatus:
        return await self._call("GET", "/v1/throttle", None, m.ThrottleStatus)

    async def set_throttle(self, body: m.ThrottleRequest) -> m.ThrottleStatus:
        return await self._call("PUT", "/v1/throttle", body, m.ThrottleStatus, what="the throttle change")
