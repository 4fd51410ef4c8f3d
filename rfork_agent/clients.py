"""Small async clients for the scheduler and agent APIs (docs/DESIGN.md).

Each maps HTTP outcomes onto one exception tree so callers branch on types,
not status codes. Messages come from the server's ``detail.message``.

    >>> async with SchedulerClient("http://127.0.0.1:8700") as s:
    ...     job = await s.create_job(identity, 0, manifest)
"""

from __future__ import annotations

from typing import Any

import httpx


class ClientError(Exception):
    """Base of every error these clients raise."""


class SchedulerError(ClientError):
    pass


class SchedulerUnreachable(SchedulerError):
    def __init__(self, url: str, cause: Exception) -> None:
        super().__init__(f"cannot reach the rfork scheduler at {url}: {cause} — is `rfork scheduler` running there?")
        self.url = url


class UnknownModel(SchedulerError):
    pass


class ManifestMismatch(SchedulerError):
    pass


class InvalidRequest(SchedulerError):
    pass


class UnknownJob(SchedulerError):
    pass


class UnknownSeed(SchedulerError):
    pass


class AgentError(ClientError):
    pass


class AgentUnreachable(AgentError):
    def __init__(self, url: str, cause: Exception) -> None:
        super().__init__(f"cannot reach the rfork agent at {url}: {cause}")
        self.url = url


class LeaseDenied(AgentError):
    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class UnknownLease(AgentError):
    pass


class SeedUnavailable(AgentError):
    """The agent says its seed is down: read elsewhere."""


_SCHEDULER_ERRORS = {
    "unknown_model": UnknownModel,
    "manifest_mismatch": ManifestMismatch,
    "unknown_job": UnknownJob,
    "unknown_seed": UnknownSeed,
}


def _detail(response: httpx.Response) -> tuple[str, str, dict]:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return "http_error", f"HTTP {response.status_code}: {response.text[:200]}", {}
    if isinstance(detail, dict):
        return str(detail.get("error", "http_error")), str(detail.get("message", detail)), detail
    return "http_error", f"HTTP {response.status_code}: {detail}", {}


class _Base:
    def __init__(self, base_url: str, timeout: float, headers: dict[str, str] | None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=headers or {})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


class SchedulerClient(_Base):
    """The scheduler's /v1 API. Methods return the JSON bodies as dicts."""

    def __init__(self, base_url: str, timeout: float = 10.0, headers: dict[str, str] | None = None) -> None:
        super().__init__(base_url, timeout, headers)

    async def _call(self, method: str, path: str, json: Any = None) -> Any:
        try:
            response = await self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise SchedulerUnreachable(self.base_url, exc) from exc
        if response.status_code >= 400:
            code, message, _ = _detail(response)
            if response.status_code >= 500:
                raise SchedulerError(f"scheduler at {self.base_url} failed: {message}")
            raise _SCHEDULER_ERRORS.get(code, InvalidRequest)(message)
        return response.json() if response.content else None

    async def register_seed(self, seed_id: str, body: dict) -> dict:
        return await self._call("PUT", f"/v1/seeds/{seed_id}", body)

    async def heartbeat(self, seed_id: str, body: dict) -> dict:
        return await self._call("POST", f"/v1/seeds/{seed_id}/heartbeat", body)

    async def deregister_seed(self, seed_id: str) -> None:
        await self._call("DELETE", f"/v1/seeds/{seed_id}")

    async def list_seeds(self) -> list[dict]:
        return await self._call("GET", "/v1/seeds")

    async def create_job(self, identity: dict, rank: int, manifest: dict, chunk_size_bytes: int | None = None) -> dict:
        return await self._call("POST", "/v1/jobs", {
            "identity": identity, "rank": rank, "manifest": manifest, "chunk_size_bytes": chunk_size_bytes,
        })

    async def work(self, job_id: str, max_assignments: int, reports: list[dict]) -> dict:
        return await self._call("POST", f"/v1/jobs/{job_id}/work",
                                {"max_assignments": max(max_assignments, 0), "reports": reports})

    async def get_job(self, job_id: str) -> dict:
        return await self._call("GET", f"/v1/jobs/{job_id}")

    async def delete_job(self, job_id: str) -> None:
        await self._call("DELETE", f"/v1/jobs/{job_id}")


class AgentClient(_Base):
    """A seed agent's lease API."""

    def __init__(self, base_url: str, timeout: float = 30.0, headers: dict[str, str] | None = None) -> None:
        super().__init__(base_url, timeout, headers)

    async def _call(self, path: str, json: dict) -> httpx.Response:
        try:
            return await self._http.post(path, json=json)
        except httpx.HTTPError as exc:
            raise AgentUnreachable(self.base_url, exc) from exc

    async def acquire_lease(self, *, job_id: str, assignment_id: str, rank: int, nbytes: int,
                            grant: str = "", wait_seconds: float = 5.0) -> dict:
        """``{"lease_id", "ttl_seconds"}``; raises LeaseDenied (with retry_after_seconds)."""
        response = await self._call("/v1/leases", {
            "job_id": job_id, "assignment_id": assignment_id, "rank": rank, "bytes": nbytes,
            "grant": grant, "wait_seconds": wait_seconds,
        })
        if response.status_code == 200:
            return response.json()
        code, message, detail = _detail(response)
        if response.status_code == 429:
            raise LeaseDenied(message, float(detail.get("retry_after_seconds", 0.5)))
        if code == "seed_unavailable":
            raise SeedUnavailable(message)
        raise AgentError(f"agent at {self.base_url} refused the lease: {message}")

    async def release_lease(self, lease_id: str, used: bool = True) -> None:
        response = await self._call(f"/v1/leases/{lease_id}/release", {"used": used})
        if response.status_code == 404:
            raise UnknownLease(_detail(response)[1])
        if response.status_code >= 400:
            raise AgentError(_detail(response)[1])
