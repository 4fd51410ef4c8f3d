"""Read a seed's TransferEngine info and server info over SGLang's HTTP API.

SGLang renamed its endpoints; each function tries the current path first and
falls back to the deprecated one when the seed answers 404:

- ``/remote_instance_transfer_engine_info?rank=N``, then
  ``/get_remote_instance_transfer_engine_info?rank=N`` ->
  ``{"rank": N, "remote_instance_transfer_engine_info": [session_id, {name: [ptr, numel, esize]}]}``
- ``/server_info``, then ``/get_server_info``.

Every failure is a ``SeedInfoUnavailable`` naming the URL and what was wrong.

``seed_http_client`` is the client to read a seed with, for whoever polls it
(the agent: its ``/metrics`` every second, ``/health`` every 0.25 s, its
identity every 5 s): kept-alive connections are not reused once idle for
``KEEPALIVE_REUSE_SECONDS`` (rfork_api/clients.py), and a GET whose connection the seed closed before
answering is sent once more, on another connection.

    >>> async with seed_http_client(timeout=5) as http:
    ...     session_id, manifest = await fetch_transfer_engine_info(http, "http://127.0.0.1:30000", rank=0)
"""

from __future__ import annotations

import hashlib
from typing import Any

import httpx

from rfork_api.clients import KEEPALIVE_REUSE_SECONDS
from rfork_api.errors import SeedInfoUnavailable, SeedRankMissing

TE_INFO_PATHS = ("/remote_instance_transfer_engine_info", "/get_remote_instance_transfer_engine_info")
SERVER_INFO_PATHS = ("/server_info", "/get_server_info")


__all__ = ["SeedInfoUnavailable", "SeedRankMissing", "ResendDroppedGets",
           "fetch_server_info", "fetch_transfer_engine_info", "fetch_transfer_engine_info_digested",
           "seed_http_client", "transfer_engine_info_digest"]


class ResendDroppedGets(httpx.AsyncBaseTransport):
    """Sends a GET or HEAD once more when the server closed the connection before answering it
    (``httpx.RemoteProtocolError``: a kept-alive connection the server had just closed; httpx drops
    it, so the second send goes on another). Both are idempotent and carry no body, so the second
    send is safe; anything else, and a second failure, is raised as it was."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(request)
        except httpx.RemoteProtocolError:
            if request.method not in ("GET", "HEAD"):
                raise
            return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def seed_http_client(timeout: float | httpx.Timeout,
                     keepalive_seconds: float = KEEPALIVE_REUSE_SECONDS) -> httpx.AsyncClient:
    """The client for a seed's HTTP API (see the module's docstring)."""
    limits = httpx.Limits(keepalive_expiry=keepalive_seconds)
    return httpx.AsyncClient(timeout=timeout, transport=ResendDroppedGets(httpx.AsyncHTTPTransport(limits=limits)))


async def _get_json(client: httpx.AsyncClient, seed_url: str, paths: tuple[str, ...],
                    params: dict[str, Any] | None = None) -> tuple[str, httpx.Response]:
    """GET the first of ``paths`` the seed does not 404 on; returns (url, response)."""
    base = seed_url.rstrip("/")
    tried = []
    for path in paths:
        url = f"{base}{path}"
        try:
            response = await client.get(url, params=params)
        except httpx.HTTPError as exc:
            raise SeedInfoUnavailable(
                seed_url, f"cannot reach the seed at {url}: {type(exc).__name__}: {exc or 'no detail'} — is it running?"
            ) from exc
        if response.status_code == 404:
            tried.append(path)
            continue  # an older or newer SGLang: try the other name
        return url, response
    raise SeedInfoUnavailable(
        seed_url,
        f"seed {base} answered 404 on every known path ({', '.join(tried)}); "
        "is this an SGLang server started with --remote-instance-weight-loader-start-seed-via-transfer-engine?",
    )


def _json(url: str, seed_url: str, response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise SeedInfoUnavailable(seed_url, f"seed {url} did not return JSON: {response.text[:200]!r}") from exc


def _check_manifest(url: str, seed_url: str, manifest: dict) -> None:
    for name, entry in manifest.items():
        ok = (
            isinstance(entry, (list, tuple)) and len(entry) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) for v in entry)
            and entry[0] >= 0 and entry[1] >= 0 and 1 <= entry[2] <= 16
        )
        if not ok:
            raise SeedInfoUnavailable(
                seed_url,
                f"seed {url}: tensor {name!r} has {entry!r}; expected [ptr >= 0, numel >= 0, element_size 1..16]",
            )


async def fetch_transfer_engine_info(client: httpx.AsyncClient, seed_url: str, rank: int) -> tuple[str, dict]:
    """``(session_id, manifest)`` of one rank; the manifest keeps the seed's tensor order."""
    session_id, manifest, _ = await fetch_transfer_engine_info_digested(client, seed_url, rank)
    return session_id, manifest


async def fetch_transfer_engine_info_digested(client: httpx.AsyncClient, seed_url: str,
                                              rank: int) -> tuple[str, dict, str]:
    """``(session_id, manifest, digest)``: ``digest`` is :func:`transfer_engine_info_digest`'s for this answer."""
    url, response = await _te_info_response(client, seed_url, rank)
    body = _json(url, seed_url, response)
    info = body.get("remote_instance_transfer_engine_info") if isinstance(body, dict) else None
    if not (isinstance(info, (list, tuple)) and len(info) == 2 and isinstance(info[0], str) and info[0]
            and isinstance(info[1], dict)):
        raise SeedInfoUnavailable(
            seed_url,
            f"seed {url}?rank={rank}: expected {{'remote_instance_transfer_engine_info': "
            f"[session_id, {{name: [ptr, numel, element_size]}}]}}, got {str(body)[:200]}",
        )
    session_id, manifest = info
    _check_manifest(url, seed_url, manifest)
    return session_id, manifest, _digest(response)


async def transfer_engine_info_digest(client: httpx.AsyncClient, seed_url: str, rank: int) -> str:
    """A digest of one rank's TE-info answer as the seed sent it, not parsed: the same digest means the
    same sessions and tensors (for a 40,000-tensor rank the answer is ~3 MB of JSON, and parsing and
    checking it costs ~0.15 s of CPU, hashing it ~5 ms). A seed that orders its answer differently
    each time only gives a different digest; the caller then reads it whole."""
    _, response = await _te_info_response(client, seed_url, rank)
    return _digest(response)


def _digest(response: httpx.Response) -> str:
    return hashlib.blake2b(response.content, digest_size=16).hexdigest()


async def _te_info_response(client: httpx.AsyncClient, seed_url: str, rank: int) -> tuple[str, httpx.Response]:
    url, response = await _get_json(client, seed_url, TE_INFO_PATHS, params={"rank": rank})
    if response.status_code == 400:
        raise SeedRankMissing(
            seed_url,
            f"seed {url}?rank={rank} has no TransferEngine info for rank {rank} (HTTP 400: {response.text[:200]}); "
            "check --tp-size / the ranks this seed serves, that its weights finished loading, and that it was "
            "started with --remote-instance-weight-loader-start-seed-via-transfer-engine (SGLang answers 400, "
            "not 404, when it was not)",
        )
    if response.status_code != 200:
        raise SeedInfoUnavailable(seed_url, f"seed {url}?rank={rank} answered HTTP {response.status_code}: "
                                        f"{response.text[:200]}")
    return url, response


async def fetch_server_info(client: httpx.AsyncClient, seed_url: str) -> dict:
    """The seed's server info (``model_path``, ``tp_size``, ``dtype``, maybe ``revision``)."""
    url, response = await _get_json(client, seed_url, SERVER_INFO_PATHS)
    if response.status_code != 200:
        raise SeedInfoUnavailable(seed_url, f"seed {url} answered HTTP {response.status_code}: {response.text[:200]}")
    body = _json(url, seed_url, response)
    if not isinstance(body, dict):
        raise SeedInfoUnavailable(seed_url, f"seed {url} returned {type(body).__name__}, expected a JSON object")
    return body
