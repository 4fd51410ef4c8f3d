"""Small async clients for the scheduler and agent APIs (docs/DESIGN.md).

Each maps HTTP outcomes onto one exception tree, so callers branch on types,
not status codes. Messages are the server's ``detail.message`` (a sentence
saying what was wrong and how to fix it). Successful calls return the JSON
body as a plain dict, exactly the shapes DESIGN.md lists — no wrapper types,
so a new field on the wire needs no client change.

Exception tree::

    ClientError
     ├── SchedulerError                 scheduler answered 5xx / something unexpected
     │    ├── SchedulerUnreachable      connect/timeout; .url
     │    ├── Unauthorized              401: no token, or not the fleet's token
     │    ├── UnknownModel              404 unknown_model
     │    ├── ManifestMismatch          409 manifest_mismatch
     │    ├── InvalidRequest            422 and other 4xx
     │    ├── UnknownJob                404 unknown_job
     │    └── UnknownSeed               404 unknown_seed (agent: re-register)
     ├── AgentError                     agent refused for another reason
     │    ├── AgentUnreachable          connect/timeout; .url
     │    ├── LeaseDenied               429; .retry_after_seconds
     │    ├── UnknownRank               404 unknown_rank
     │    ├── UnknownLease              404 on release (replayed or expired)
     │    └── SeedUnavailable           503 seed_unavailable (read elsewhere)
     └── rfork_api.seed_info.SeedUnavailable   the seed's own HTTP API failed

    >>> async with SchedulerClient("http://127.0.0.1:8700") as scheduler:
    ...     job = await scheduler.create_job(identity, 0, manifest)
    ...     work = await scheduler.work(job["job_id"], max_assignments=8, reports=[])
    >>> async with AgentClient(work["assignments"][0]["agent_url"]) as agent:
    ...     lease = await agent.acquire_lease(job_id=..., assignment_id=..., rank=0, nbytes=2**26)
    ...     await agent.release_lease(lease["lease_id"], used=True)
"""

from __future__ import annotations

from typing import Any

import httpx

from rfork_api import models as m


class ClientError(Exception):
    """Base of every error these clients raise. ``code``/``status`` are the server's, if any."""

    def __init__(self, message: str, *, code: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class SchedulerError(ClientError):
    """The scheduler answered with an error not covered by a subclass (e.g. 5xx)."""


class SchedulerUnreachable(SchedulerError):
    def __init__(self, url: str, cause: BaseException | str = "") -> None:
        why = f"{type(cause).__name__}: {cause}" if isinstance(cause, BaseException) else str(cause)
        super().__init__(
            f"cannot reach the rfork scheduler at {url}: {why or 'no answer'} — is `rfork scheduler` running there?"
        )
        self.url = url


class Unauthorized(SchedulerError):
    """The scheduler refused the bearer token (or its absence): 401."""


class UnknownModel(SchedulerError):
    """No live seed serves that identity and rank."""


class ManifestMismatch(SchedulerError):
    """The client's manifest differs from the seeds'; the message names the first tensor."""


class InvalidRequest(SchedulerError):
    """The request was malformed (422 and other 4xx)."""


class UnknownJob(SchedulerError):
    """The job id is not known (finished, abandoned, or never created)."""


class UnknownSeed(SchedulerError):
    """The scheduler does not know this seed; an agent must re-register."""


class AgentError(ClientError):
    """An agent refused a request for a reason not covered by a subclass."""


class AgentUnreachable(AgentError):
    def __init__(self, url: str, cause: BaseException | str = "") -> None:
        why = f"{type(cause).__name__}: {cause}" if isinstance(cause, BaseException) else str(cause)
        super().__init__(f"cannot reach the rfork agent at {url}: {why or 'no answer'}")
        self.url = url


class LeaseDenied(AgentError):
    """The seed's budget could not cover the bytes within the wait; ask again later."""

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message, code="over_budget", status=429)
        self.retry_after_seconds = retry_after_seconds

    @property
    def retry_after(self) -> float:
        return self.retry_after_seconds


class UnknownRank(AgentError):
    """The agent's seed does not serve that rank."""


class UnknownLease(AgentError):
    """Release of a lease the agent does not hold (already released or expired)."""


class SeedUnavailable(AgentError):
    """The agent says its seed is down: read this chunk from another seed."""


_SCHEDULER_ERRORS: dict[str, type[SchedulerError]] = {
    "unknown_model": UnknownModel,
    "manifest_mismatch": ManifestMismatch,
    "unknown_job": UnknownJob,
    "unknown_seed": UnknownSeed,
}

_AGENT_ERRORS: dict[str, type[AgentError]] = {
    "unknown_rank": UnknownRank,
    "unknown_lease": UnknownLease,
    "seed_unavailable": SeedUnavailable,
}


def _detail(response: httpx.Response) -> tuple[str, str, dict]:
    """(error code, message, detail dict) of an error response, whatever its shape."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return "http_error", f"HTTP {response.status_code}: {response.text[:200]}", {}
    if isinstance(detail, dict):
        return str(detail.get("error", "http_error")), str(detail.get("message", detail)), detail
    # FastAPI's own 422 body: a list of {loc, msg}.
    if isinstance(detail, list):
        parts = [f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in detail[:5]
                 if isinstance(d, dict)]
        return "invalid_request", "request is not valid: " + "; ".join(parts), {}
    return "http_error", f"HTTP {response.status_code}: {detail}", {}


def seeds_serving(seeds: list[dict], identity: dict, rank: int) -> list[dict]:
    """The seeds of a ``list_seeds`` answer that serve ``identity`` and ``rank``, by the rule the
    scheduler matches jobs with (equal identity, rank among the seed's ranks). Raises
    ``UnknownModel`` naming what is registered when none does.

        >>> seeds_serving(await scheduler.list_seeds(), identity, rank=0)
        [{'seed_id': 'seed-0', 'identity': {...}, 'ranks': [0], ...}]
    """
    serving = [s for s in seeds if s.get("identity") == identity and rank in s.get("ranks", ())]
    if serving:
        return serving
    wanted = _describe_identity(identity)
    other_ranks = sorted({r for s in seeds if s.get("identity") == identity for r in s.get("ranks", ())})
    if other_ranks:
        raise UnknownModel(
            f"the live seeds of {wanted} serve ranks {other_ranks}, not rank {rank}; fork one of those "
            "ranks, or start a seed (and its rfork agent) that serves this one", code="unknown_model")
    known = sorted({_describe_identity(s["identity"]) for s in seeds if isinstance(s.get("identity"), dict)})
    raise UnknownModel(
        f"no live seed serves {wanted} rank {rank}; registered: {', '.join(known) or 'none'}. "
        "Start a seed (and its rfork agent) for this exact identity, or fix the model/revision/dtype/"
        "tp_size to match one above", code="unknown_model")


def _describe_identity(identity: dict) -> str:
    return (f"{identity.get('model')}@{identity.get('revision')} {identity.get('dtype')} "
            f"tp={identity.get('tp_size')}")


def _body(response: httpx.Response) -> Any:
    if not response.content:
        return {}
    try:
        return response.json()
    except ValueError:
        return {}


class _Base:
    def __init__(self, base_url: str, timeout: float, headers: dict[str, str] | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=headers or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


class SchedulerClient(_Base):
    """The scheduler's ``/v1`` API. Methods return the JSON bodies as dicts.

        >>> async with SchedulerClient("http://127.0.0.1:8700", timeout=5) as s:
        ...     await s.register_seed("seed-0", registration)
        {'seed_id': 'seed-0', 'heartbeat_interval_seconds': 1.0, 'heartbeat_timeout_seconds': 5.0}
    """

    def __init__(self, base_url: str, timeout: float = 10.0, headers: dict[str, str] | None = None) -> None:
        super().__init__(base_url, timeout, headers)

    async def _call(self, method: str, path: str, json: Any = None, timeout: float | None = None) -> Any:
        try:
            response = await self._http.request(method, path, json=json, timeout=timeout or self.timeout)
        except httpx.HTTPError as exc:
            raise SchedulerUnreachable(self.base_url, exc) from exc
        if response.status_code < 400:
            return _body(response)
        code, message, _ = _detail(response)
        status = response.status_code
        if status >= 500:
            raise SchedulerError(f"the scheduler at {self.base_url} failed ({status}): {message}",
                                 code=code, status=status)
        if status == 401:
            raise Unauthorized(f"the rfork scheduler at {self.base_url} refused this client: {message}",
                               code=code, status=status)
        raise _SCHEDULER_ERRORS.get(code, InvalidRequest)(message, code=code, status=status)

    async def register_seed(self, seed_id: str, body: dict) -> dict:
        """PUT /v1/seeds/{id} -> {seed_id, heartbeat_interval_seconds, heartbeat_timeout_seconds}."""
        return await self._call("PUT", f"/v1/seeds/{seed_id}", body)

    async def heartbeat(self, seed_id: str, body: dict) -> dict:
        """POST /v1/seeds/{id}/heartbeat -> {}; raises UnknownSeed when the agent must re-register."""
        return await self._call("POST", f"/v1/seeds/{seed_id}/heartbeat", body)

    async def deregister_seed(self, seed_id: str) -> None:
        """DELETE /v1/seeds/{id}; an already unknown seed is not an error."""
        try:
            await self._call("DELETE", f"/v1/seeds/{seed_id}")
        except UnknownSeed:
            pass

    deregister = deregister_seed

    async def list_seeds(self) -> list[dict]:
        """GET /v1/seeds -> [{seed_id, identity, agent_url, ranks, ...}] (live seeds only)."""
        return await self._call("GET", "/v1/seeds")

    async def create_job(self, identity: dict, rank: int, manifest: dict,
                         chunk_size_bytes: int | None = None, resume: dict | None = None,
                         peer: m.PeerOffer | None = None) -> dict:
        """POST /v1/jobs -> {job_id, total_bytes, num_chunks, chunk_size_bytes, seed_ids}.

        ``resume`` = {"previous_job_id", "chunks_done"} re-creates a job the scheduler lost.
        ``peer`` offers this client's landed chunks to the other clients of the same weights.
        """
        body = {"identity": identity, "rank": rank, "manifest": manifest, "chunk_size_bytes": chunk_size_bytes}
        if resume is not None:
            body["resume"] = resume
        if peer is not None:
            body["peer"] = peer.model_dump()
        return await self._call("POST", "/v1/jobs", body)

    async def work(self, job_id: str, max_assignments: int, reports: list[dict], wait_seconds: float = 0.0) -> dict:
        """POST /v1/jobs/{id}/work -> {state, error, assignments, cancel, retry_after_seconds, progress}.

        ``wait_seconds`` > 0 long-polls: a call that would get no assignment waits up to that long for one.
        """
        body = {"max_assignments": max(max_assignments, 0), "reports": reports}
        if wait_seconds > 0:
            body["wait_seconds"] = wait_seconds
        return await self._call("POST", f"/v1/jobs/{job_id}/work", body, timeout=self.timeout + max(wait_seconds, 0.0))

    async def withdraw(self, job_id: str) -> m.WithdrawReply:
        """POST /v1/jobs/{id}/withdraw: stop serving as a peer; says how many reads from us may still be
        on the wire (call again to poll). Raises UnknownJob when the scheduler does not know the job."""
        return m.WithdrawReply.model_validate(await self._call("POST", f"/v1/jobs/{job_id}/withdraw"))

    async def get_job(self, job_id: str) -> dict:
        """GET /v1/jobs/{id} -> {state, error, progress...}."""
        return await self._call("GET", f"/v1/jobs/{job_id}")

    async def delete_job(self, job_id: str) -> None:
        await self._call("DELETE", f"/v1/jobs/{job_id}")


class AgentClient(_Base):
    """A seed agent's lease API.

        >>> async with AgentClient("http://127.0.0.1:8800") as agent:
        ...     lease = await agent.acquire_lease(job_id="j1", assignment_id="a1", rank=0, nbytes=1 << 26)
        ...     await agent.release_lease(lease["lease_id"], used=True)
    """

    def __init__(self, base_url: str, timeout: float = 10.0, headers: dict[str, str] | None = None) -> None:
        super().__init__(base_url, timeout, headers)

    async def _post(self, path: str, json: dict, timeout: float | None = None) -> httpx.Response:
        try:
            return await self._http.post(path, json=json, timeout=timeout or self.timeout)
        except httpx.HTTPError as exc:
            raise AgentUnreachable(self.base_url, exc) from exc

    def _raise(self, response: httpx.Response, what: str) -> None:
        code, message, detail = _detail(response)
        status = response.status_code
        if status == 429:
            retry = detail.get("retry_after_seconds")
            raise LeaseDenied(message, float(retry) if isinstance(retry, (int, float)) else 0.5)
        cls = _AGENT_ERRORS.get(code, AgentError)
        raise cls(f"agent at {self.base_url} refused {what}: {message}", code=code, status=status)

    async def acquire_lease(self, *, job_id: str, assignment_id: str, rank: int, nbytes: int,
                            grant: str = "", wait_seconds: float = 5.0) -> dict:
        """POST /v1/leases -> {lease_id, ttl_seconds}; raises LeaseDenied (with retry_after_seconds)."""
        response = await self._post(
            "/v1/leases",
            {"job_id": job_id, "assignment_id": assignment_id, "rank": rank, "bytes": nbytes,
             "grant": grant, "wait_seconds": wait_seconds},
            # The agent may hold the request up to wait_seconds before answering.
            timeout=self.timeout + max(wait_seconds, 0.0),
        )
        if response.status_code == 200:
            return response.json()
        self._raise(response, f"a lease for {nbytes} bytes")
        raise AssertionError("unreachable")  # pragma: no cover

    async def seed_alive(self) -> bool:
        """The agent's latest liveness verdict on its seed (GET /health); False if the agent is unreachable."""
        try:
            response = await self._http.get("/health", timeout=self.timeout)
            return response.status_code == 200 and bool(response.json().get("seed_alive", False))
        except (httpx.HTTPError, ValueError, AttributeError):
            return False

    async def release_lease(self, lease_id: str, used: bool = True) -> None:
        """POST /v1/leases/{id}/release; raises UnknownLease when it was already released or expired."""
        response = await self._post(f"/v1/leases/{lease_id}/release", {"used": used})
        if response.status_code >= 400:
            self._raise(response, f"the release of lease {lease_id}")
